"""Tests of graphs.textdata (the fortunes language-id set) and graphs.text (ExitTextClassifier)."""
from __future__ import annotations

import os

import pytest
import torch
from torch.testing import assert_close
from torch.utils.flop_counter import FlopCounterMode

from graphs.datasets import DatasetError
from graphs.text import ExitModelError, ExitTextClassifier, count_costs
from graphs.textdata import (LANGUAGES, MANIFEST, SPLIT_FRACTIONS, SPLITS, decode, encode,
                             fortunes_available, fortunes_root, language_files, load_language_id,
                             load_texts, normalise, read_fortunes, split_of)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a shared, oversubscribed CPU two threads spin and run ~10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---- a tiny fake /usr/share/games/fortunes ----------------------------------------------------

WORDS = {
    "en": "the quick brown fox jumps over a lazy dog while singing",
    "de": "der schnelle braune Fuchs springt über den faulen Hund",
    "it": "la volpe veloce salta sopra il cane pigro mentre canta",
    "es": "el rápido zorro marrón salta sobre el perro perezoso",
    "pt": "a raposa rápida pula sobre o cão preguiçoso cantando",
    "cs": "příliš žluťoučký kůň úpěl ďábelské ódy nad psem",
    "pl": "zażółć gęślą jaźń szybki lis skacze nad leniwym psem",
}
ITALIAN_TOP = "Questo file italiano sta al livello superiore, non è inglese"
SHARED = "This sentence appears under two languages and is dropped."
PICTURE = "  ||||  ----  ====  ////  \\\\\\\\  oo  "  # long enough, but mostly not letters
N_PER_FILE = 30


def _entries(lang: str, tag: str, n: int = N_PER_FILE) -> list[str]:
    return [f"{WORDS[lang]} {tag}\n  {i}" for i in range(n)]


def _write(path, entries):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n%\n".join(entries) + "\n%\n")


@pytest.fixture
def fake_root(tmp_path):
    """A fortunes tree with each pitfall of the real one, and 60 (pt: 30) texts per language."""
    r = tmp_path / "fortunes"
    _write(r / "computers", _entries("en", "computers") + [SHARED, "too short", PICTURE])
    _write(r / "fortunes", _entries("en", "fortunes") + [_entries("en", "computers")[0]])  # a duplicate
    _write(r / "ascii-art", ["  /\\_/\\\n ( o.o )\n  > ^ <  ~~~~~ ||||| ===="])
    # fortunes-it's top-level Italian files and symlinks: not English
    _write(r / "adams", [ITALIAN_TOP + f" {i}" for i in range(5)])
    _write(r / "formiche", [ITALIAN_TOP + " formiche"])
    (r / "computers.dat").write_bytes(b"\x00\x00\x00\x02garbage index")
    os.symlink("computers", r / "computers.u8")
    _write(r / "brasil", _entries("pt", "brasil"))
    _write(r / "de" / "zitate", _entries("de", "zitate") + [SHARED])
    _write(r / "de" / "witze", _entries("de", "witze"))
    _write(r / "de" / "asciiart", ["Ein Bild mit Wörtern darin, aber in de/asciiart"])
    _write(r / "it" / "italia", _entries("it", "italia"))
    _write(r / "it" / "norm", _entries("it", "norm"))
    _write(r / "it" / "banner", ["Un banner con parole, escluso dal manifesto"])
    _write(r / "es" / "refranes.fortunes", _entries("es", "refranes"))
    _write(r / "es" / "vida.fortunes", _entries("es", "vida"))
    _write(r / "es" / "off" / "varios.fortunes", ["Ry bgeb qín zr yynzó n pnfn qrfqr ha ubgry."])
    _write(r / "cs" / "klasik-cz", _entries("cs", "klasik"))
    _write(r / "cs" / "market", _entries("cs", "market"))
    _write(r / "cs" / "klasik-sk", ["Slovenský text, ktorý nie je česky, a preto chýba"])
    _write(r / "pl" / "dowcipy", _entries("pl", "dowcipy"))
    _write(r / "pl" / "zen", _entries("pl", "zen"))
    _write(r / "pl" / "cows", ["Krowa z grupą inwalidzką, obrazek z literami"])
    return str(r)


class TestParsing:
    def test_read_fortunes_splits_on_percent_lines(self, tmp_path):
        p = tmp_path / "f"
        p.write_text("first\nline two\n%\n\n%\nsecond 50% off\n%\n")
        assert read_fortunes(str(p)) == ["first\nline two\n", "second 50% off\n"]

    def test_normalise_collapses_whitespace(self):
        assert normalise("\tA  b\n\n  c \u00a0d ") == "A b c d"

    def test_manifest_files_per_language(self, fake_root):
        names = {lang: sorted(os.path.relpath(p, fake_root) for p in language_files(lang, fake_root))
                 for lang in LANGUAGES}
        assert names == {"en": ["computers", "fortunes"], "de": ["de/witze", "de/zitate"],
                         "it": ["it/italia", "it/norm"],
                         "es": ["es/refranes.fortunes", "es/vida.fortunes"], "pt": ["brasil"],
                         "cs": ["cs/klasik-cz", "cs/market"], "pl": ["pl/dowcipy", "pl/zen"]}

    def test_manifest_leaves_out_top_level_italian(self):
        for name in ("adams", "banner", "computer", "definizioni", "formiche", "italia", "itatrek",
                     "jackfr", "leggi", "luke", "luttazzi", "norm", "paolotedeschi", "zuse",
                     "ascii-art", "brasil"):
            assert name not in MANIFEST["en"].files

    def test_texts_cleaned_deduplicated_and_labelled(self, fake_root):
        t = load_texts(fake_root)
        assert {k: len(v) for k, v in t.items()} == {
            "en": 60, "de": 60, "it": 60, "es": 60, "pt": 30, "cs": 60, "pl": 60}
        assert "the quick brown fox jumps over a lazy dog while singing computers 0" in t["en"]
        every = [x for v in t.values() for x in v]
        assert len(every) == len(set(every))
        assert not any(ITALIAN_TOP in x for x in every)
        assert SHARED not in every  # under en and de: ambiguous, dropped from both
        assert "too short" not in every and normalise(PICTURE) not in every
        assert not any("Bild" in x or "banner" in x or "Slovenský" in x or "Krowa" in x or "Ry bgeb" in x
                       for x in every)
        assert all(x == normalise(x) for x in every)

    def test_cap_is_a_deterministic_prefix(self, fake_root):
        small, large = load_texts(fake_root, cap=5), load_texts(fake_root, cap=20)
        for lang in LANGUAGES:
            assert len(small[lang]) == 5 and small[lang] == large[lang][:5]


class TestSplits:
    def test_disjoint_complete_and_deterministic(self, fake_root):
        s = load_language_id(fake_root, max_len=32)
        assert tuple(s) == SPLITS
        texts = [set(s[k].texts) for k in SPLITS]
        for i in range(len(texts)):
            for j in range(i + 1, len(texts)):
                assert not texts[i] & texts[j]
        every = {x for v in load_texts(fake_root).values() for x in v}
        assert set().union(*texts) == every
        again = load_language_id(fake_root, max_len=32)
        for k in SPLITS:
            assert again[k].texts == s[k].texts
            assert torch.equal(again[k].x, s[k].x) and torch.equal(again[k].y, s[k].y)

    def test_split_is_a_function_of_the_text(self, fake_root):
        s = load_language_id(fake_root)
        for k in SPLITS:
            assert all(split_of(t) == k for t in s[k].texts)

    def test_split_fractions(self):
        n = 20000
        counts = {k: 0 for k in SPLITS}
        for i in range(n):
            counts[split_of(f"text number {i}")] += 1
        for k in SPLITS:
            assert abs(counts[k] / n - SPLIT_FRACTIONS[k]) < 0.015

    def test_tensors(self, fake_root):
        s = load_language_id(fake_root, max_len=16)
        for k in SPLITS:
            sp = s[k]
            assert sp.x.dtype == torch.int64 and sp.y.dtype == torch.int64
            assert tuple(sp.x.shape) == (len(sp), 16) and len(sp.texts) == len(sp)
            assert torch.equal(sp.x, encode(sp.texts, 16))
            assert int(sp.x.min()) >= 0 and int(sp.x.max()) <= 256
            for t, y in zip(sp.texts, sp.y.tolist()):
                assert WORDS[LANGUAGES[y]].split()[0] == t.split()[0]
        assert len(s["train"].subset(3)) == 3

    def test_encode(self):
        x = encode(["ab", "žluť", ""], max_len=5)
        assert x.tolist() == [[98, 99, 0, 0, 0], [198, 191, 109, 118, 198], [0, 0, 0, 0, 0]]
        assert decode(encode(["žluť"], 8)[0]) == "žluť"
        with pytest.raises(DatasetError, match="max_len must be >= 1; got 0"):
            encode(["a"], 0)


class TestMissing:
    def test_error_names_directory_and_install(self, tmp_path):
        with pytest.raises(DatasetError, match=r"no 'en' fortune files found in '.*empty'.*apt-get install "
                                               r"fortunes fortunes-de"):
            load_language_id(str(tmp_path / "empty"))
        assert not fortunes_available(str(tmp_path / "empty"))

    def test_env_override(self, fake_root, monkeypatch):
        monkeypatch.setenv("HETSCHED_FORTUNES", fake_root)
        assert fortunes_root() == fake_root and fortunes_available()
        assert len(load_language_id()["train"]) > 0

    def test_unknown_language(self):
        with pytest.raises(DatasetError, match="unknown language 'fr'; valid choices: en, de"):
            language_files("fr")


@pytest.fixture(scope="module")
def splits():
    """The real language-id splits (read once)."""
    return load_language_id()


@pytest.mark.skipif(not fortunes_available(), reason="needs the Debian fortunes packages (`make data`)")
class TestRealData:
    def test_sizes_per_language(self, splits):
        n = sum(len(v) for v in splits.values())
        assert 20000 <= n <= 7 * 4000
        for y, lang in enumerate(LANGUAGES):
            per = {k: int((v.y == y).sum()) for k, v in splits.items()}
            total = sum(per.values())
            assert (2000 if lang == "pt" else 3500) <= total <= 4000, (lang, per)
            for k in SPLITS:
                assert abs(per[k] / total - SPLIT_FRACTIONS[k]) < 0.04, (lang, k, per)

    def test_no_italian_in_english(self, splits):
        en = {t for v in splits.values() for t, y in zip(v.texts, v.y.tolist()) if y == 0}
        it_top = [p for p in read_fortunes(os.path.join(fortunes_root(), "it", "formiche"))]
        assert not {normalise(t) for t in it_top} & en


# ---- the model ------------------------------------------------------------------------------

TINY = dict(dim=32, heads=2, mlp_ratio=2, depth=3, max_len=24, num_classes=7)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return ExitTextClassifier(**TINY).eval()


def _texts(n: int, seed: int, max_len: int = 24) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (n,), generator=g)
    return [torch.randint(1, 257, (int(L),), generator=g) for L in lengths]


def _pad(rows: list[torch.Tensor], width: int) -> torch.Tensor:
    x = torch.zeros(len(rows), width, dtype=torch.int64)
    for i, r in enumerate(rows):
        x[i, :len(r)] = r
    return x


X = _pad(_texts(6, seed=1), 24)


class TestInterface:
    def test_split_equals_full_at_every_depth(self, model):
        full = model(X)
        for d in range(model.num_stages + 1):
            assert_close(model.forward_from(model.forward_until(X, d), d), full)

    def test_forward_all_matches_heads(self, model):
        outs = model.forward_all(X)
        assert model.exit_depths == [1, 2] and len(outs) == 3
        assert_close(outs[-1], model(X))
        for d, o in zip(model.exit_depths, outs):
            assert o.shape == (6, 7)
            assert_close(o, model.exit_logits(model.forward_until(X, d), d))

    def test_state_and_gate_view(self, model):
        h, mask = model.forward_until(X, 1)
        assert h.shape == (6, 24, 32) and mask.dtype == torch.bool
        assert torch.equal(mask, X != 0) and torch.isfinite(h).all()
        hv, mv = model.gate_view((h, mask))
        assert hv is h and mv is mask

    def test_given_exits(self):
        m = ExitTextClassifier(**{**TINY, "depth": 4}, exits=(2,))
        assert m.exit_depths == [2] and len(m.forward_all(X)) == 2
        with pytest.raises(ExitModelError, match=r"exit depth 4 invalid; valid depths: 1..3"):
            ExitTextClassifier(**{**TINY, "depth": 4}, exits=(4,))


class TestPaddingInvariance:
    @pytest.mark.parametrize("seed", range(4))
    def test_alone_unpadded_equals_in_padded_batch(self, model, seed):
        rows = _texts(7, seed=100 + seed)
        g = torch.Generator().manual_seed(seed)
        width = int(torch.randint(max(len(r) for r in rows), 25, (1,), generator=g))
        batch = model.forward_all(_pad(rows, width))
        for i, r in enumerate(rows):
            alone = model.forward_all(r[None])
            for a, b in zip(alone, batch):
                assert_close(a[0], b[i], rtol=1e-4, atol=1e-5)

    def test_random_compositions(self, model):
        rows = _texts(12, seed=7)
        ref = [model(r[None])[0] for r in rows]
        g = torch.Generator().manual_seed(3)
        for _ in range(5):
            pick = torch.randperm(12, generator=g)[: int(torch.randint(1, 13, (1,), generator=g))].tolist()
            out = model(_pad([rows[i] for i in pick], 24))
            for j, i in enumerate(pick):
                assert_close(out[j], ref[i], rtol=1e-4, atol=1e-5)

    def test_gradients_finite_with_padding(self, model):
        model.train()
        loss = sum(o.sum() for o in model.forward_all(X))
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


class TestCheckInput:
    @pytest.mark.parametrize("x, match", [
        (torch.ones(2, 4), r"expects a \(batch, T\) int64/int32 tensor of byte ids, 1 <= T <= 24; "
                           r"got dtype torch.float32"),
        (torch.full((2, 4), 300), r"expects ids in 0..256 \(UTF-8 byte \+ 1, 0 = padding\); got id 300"),
        (torch.full((2, 4), -1), r"got id -1"),
        (torch.tensor([[5, 6, 0], [0, 0, 0]]), r"at least one non-padding id .*; rows \[1\] are all padding"),
        (torch.ones(2, 25, dtype=torch.int64), r"1 <= T <= 24; got shape \(2, 25\)"),
        (torch.ones(2, 0, dtype=torch.int64), r"got shape \(2, 0\)"),
        (torch.ones(4, dtype=torch.int64), r"got shape \(4,\)"),
        ([[1, 2]], r"got list"),
    ])
    def test_errors(self, model, x, match):
        with pytest.raises(ExitModelError, match=match):
            model.forward_until(x, 0)

    def test_valid_inputs(self, model):
        model.check_input(model.example_input(3))
        assert model.example_input(3).shape == (3, 24)
        assert_close(model(X.to(torch.int32)), model(X))


class TestCosts:
    def test_hand_computed(self):
        c = count_costs(ExitTextClassifier(dim=32, heads=2, mlp_ratio=2, depth=3, max_len=24))
        t, d = 24, 32
        block = 2 * t * d * (3 * d + d + 2 * 2 * d) + 2 * 2 * t * t * d  # linears + attention
        assert c.stage_flops == (block,) * 3
        assert c.exit_flops == {1: 2 * d * 7, 2: 2 * d * 7} and c.head_flops == 2 * d * 7
        assert c.embed_flops == 0

    def test_default_block(self):
        c = count_costs(ExitTextClassifier())
        assert c.stage_flops[0] == 5242880 and len(c.stage_flops) == 4

    def test_grow_with_depth(self, model):
        c = count_costs(model)
        assert all(f > 0 for f in c.stage_flops)
        assert [c.until(d) for d in range(4)] == sorted(set(c.until(d) for d in range(4)))
        deeper = count_costs(ExitTextClassifier(**{**TINY, "depth": 5}))
        assert deeper.full > c.full

    def test_parts_sum_to_counted_total(self, model):
        c = count_costs(model)
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            model.forward_all(model.example_input(1))
        assert fc.get_total_flops() == c.full + sum(c.exit_flops.values())
