"""Language identification on the fortune cookies that Debian ships: 7 languages, byte-level.

Nothing is downloaded: the texts are the ``fortune`` databases of the Debian packages
``fortunes`` (with ``fortunes-min``), ``fortunes-de``, ``fortunes-it``, ``fortunes-es``,
``fortunes-br``, ``fortunes-cs`` and ``fortunes-pl``, read from ``/usr/share/games/fortunes``
(``make data`` installs them) or from a directory given as ``root`` or in the
``HETSCHED_FORTUNES`` environment variable. A database is a text file whose entries are
separated by lines holding only ``%``; the ``.dat`` files beside them are ``strfile``
indexes and the ``.u8`` files symlinks to the same text, so both are ignored.

**The manifest** (:data:`MANIFEST`) says which file belongs to which language; nothing is
inferred from where a file happens to lie. The top level holds two packages' files and
more: ``fortunes-it`` drops symlinks to Italian files there (``adams``, ``banner``,
``computer``, ``definizioni``, ``formiche``, ``italia``, ...), ``fortunes-br`` puts its one
Portuguese file ``brasil`` there, and ``cz``, ``sk`` and ``off`` are compatibility
directories. So English is a fixed list of file names: the categories of the Debian
``fortunes`` package (``dpkg -L fortunes``) plus ``fortunes``, ``literature`` and
``riddles`` from ``fortunes-min``; ``ascii-art`` is left out (pictures, not text), while
``art`` is kept (it is sayings *about* art, prose). Portuguese is ``brasil``. The other
languages are every regular file of their directory (``de``, ``it``, ``es``, ``cs``, ``pl``)
except: pictures (``de/asciiart``, ``it/banner``, ``pl/cows``) and ``cs/klasik-sk``
(Slovak, not Czech); subdirectories are not read, which leaves out ``es/off`` (offensive
fortunes, ROT13-encoded).

**Cleaning**: whitespace runs collapse to one space; entries shorter than ``min_chars``
(20) characters or with fewer than half letters among their non-space characters (residual
pictures) are dropped; identical texts are kept once, and a text found under two languages
is dropped from both (its label is ambiguous). Each language is then capped at ``cap``
(4000) texts, chosen deterministically (the ``cap`` smallest hashes of the text).

**Splits** are by a hash of the text (BLAKE2b), not by position, so they do not move when
files are added or reordered: ``train`` 55 %, ``gate`` 10 % (for fitting learned exit gates;
never seen by the model's training), ``val`` 15 % (calibration), ``test`` 20 %. Within a
split the texts are ordered by the same hash (languages interleaved).

**Encoding**: the UTF-8 bytes of a text plus one (so ids are 1..256 and 0 is padding),
truncated to ``max_len`` (64) bytes, right-padded with 0 into a ``(N, max_len)`` int64
tensor (:func:`encode`).

Sizes with the Debian 12 (bookworm) packages -- fortunes 1:1.99.1-7.3, fortunes-de 0.35-1,
fortunes-it 1.99-4.1, fortunes-es 1.36, fortunes-br 20220821, fortunes-cs 2.0.9-1.1,
fortunes-pl 0.0.20130525-3 -- with ``cap=4000`` (measured):

==========  =====  =====  =====  =====  =====
language    train  gate   val    test   total
==========  =====  =====  =====  =====  =====
en          2241   384    575    800    4000
de          2201   378    598    823    4000
it          2192   394    601    813    4000
es          2200   392    596    812    4000
pt          1372   244    364    514    2494
cs          2173   407    625    795    4000
pl          2250   392    591    767    4000
all         14629  2591   3950   5324   26494
==========  =====  =====  =====  =====  =====

Before the cap there are 14 889 English, 18 557 German, 8 400 Italian, 10 750 Spanish,
2 494 Portuguese, 6 993 Czech and 7 885 Polish texts. The texts are short sayings and
jokes (median 103 UTF-8 bytes; 78 % are longer than 64 bytes, so ``max_len`` truncates
them); some carry English quotations or IRC logs inside a non-English file, which is label
noise the set keeps. Reading and encoding everything takes about 2 s.

Reference:
    Baldwin and Lui, "Language Identification: The Long and the Short of the Matter",
    NAACL 2010 (byte n-gram language identification of short texts).
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

import torch

from .datasets import DatasetError

__all__ = ["DatasetError", "DEFAULT_ROOT", "LANGUAGES", "SPLITS", "SPLIT_FRACTIONS", "MANIFEST",
           "PACKAGES", "Source", "TextSplit", "fortunes_root", "fortunes_available",
           "read_fortunes", "normalise", "language_files", "load_texts", "split_of", "encode",
           "decode", "load_language_id"]

DEFAULT_ROOT = "/usr/share/games/fortunes"
#: class index -> ISO 639-1 code
LANGUAGES = ("en", "de", "it", "es", "pt", "cs", "pl")
SPLITS = ("train", "gate", "val", "test")
#: split -> fraction of each language's texts (by hash of the text)
SPLIT_FRACTIONS = {"train": 0.55, "gate": 0.10, "val": 0.15, "test": 0.20}
#: the Debian packages holding the texts (what ``make data`` installs)
PACKAGES = ("fortunes", "fortunes-de", "fortunes-it", "fortunes-es", "fortunes-br", "fortunes-cs",
            "fortunes-pl")
_INSTALL = "sudo apt-get install " + " ".join(PACKAGES)
PAD = 0  # the padding id; a byte b is encoded as b + 1
VOCAB = 257


@dataclass(frozen=True)
class Source:
    """Where one language's texts live: files of one directory under the fortunes root.

    Example:
        >>> Source("de", exclude=("asciiart",), package="fortunes-de").directory
        'de'
    """

    directory: str  # relative to the root ("." = the top level)
    files: tuple[str, ...] | None = None  # exactly these file names; None = every regular file
    exclude: tuple[str, ...] = ()  # file names left out when ``files`` is None
    package: str = ""  # the Debian package that ships them


_ENGLISH = (
    # the Debian package `fortunes` (dpkg -L fortunes), without ascii-art
    "art", "computers", "cookie", "debian", "definitions", "disclaimer", "drugs", "education",
    "ethnic", "food", "goedel", "humorists", "kids", "knghtbrd", "law", "linux", "linuxcookie",
    "love", "magic", "medicine", "men-women", "miscellaneous", "news", "paradoxum", "people",
    "perl", "pets", "platitudes", "politics", "pratchett", "science", "songs-poems", "sports",
    "startrek", "tao", "translate-me", "wisdom", "work", "zippy",
    # the Debian package `fortunes-min` (a dependency of `fortunes`)
    "fortunes", "literature", "riddles",
)

#: language -> where its texts are (see the module docstring for why)
MANIFEST: dict[str, Source] = {
    "en": Source(".", files=_ENGLISH, package="fortunes"),
    "de": Source("de", exclude=("asciiart",), package="fortunes-de"),
    "it": Source("it", exclude=("banner",), package="fortunes-it"),
    "es": Source("es", package="fortunes-es"),
    "pt": Source(".", files=("brasil",), package="fortunes-br"),
    "cs": Source("cs", exclude=("klasik-sk",), package="fortunes-cs"),
    "pl": Source("pl", exclude=("cows",), package="fortunes-pl"),
}

_INDEX_SUFFIXES = (".dat", ".u8")
_SEPARATOR = re.compile(r"^%[ \t]*$", re.M)
_SPACE = re.compile(r"\s+")


def fortunes_root(root: str | None = None) -> str:
    """The fortunes directory: ``root``, ``$HETSCHED_FORTUNES`` or ``/usr/share/games/fortunes``.

    Example:
        >>> fortunes_root("/tmp/f")
        '/tmp/f'
    """
    return root or os.environ.get("HETSCHED_FORTUNES") or DEFAULT_ROOT


def language_files(language: str, root: str | None = None) -> list[str]:
    """The paths of ``language``'s files that exist under the root, in manifest order.

    Raises:
        DatasetError: ``language`` is not one of :data:`LANGUAGES`.

    Example:
        >>> language_files("pt", "/nonexistent")
        []
    """
    if language not in MANIFEST:
        raise DatasetError(f"unknown language {language!r}; valid choices: {', '.join(LANGUAGES)}")
    src, r = MANIFEST[language], fortunes_root(root)
    d = os.path.normpath(os.path.join(r, src.directory))
    if src.files is not None:
        names = list(src.files)
    elif os.path.isdir(d):
        names = sorted(n for n in os.listdir(d)
                       if not n.endswith(_INDEX_SUFFIXES) and n not in src.exclude)
    else:
        names = []
    paths = [os.path.join(d, n) for n in names]
    # regular files only: subdirectories (es/off) and symlinks (duplicates of other files) are skipped
    return [p for p in paths if os.path.isfile(p) and not os.path.islink(p)]


def fortunes_available(root: str | None = None) -> bool:
    """Whether every language has at least one file under the root.

    Example:
        >>> fortunes_available("/nonexistent")
        False
    """
    return all(language_files(lang, root) for lang in LANGUAGES)


def read_fortunes(path: str) -> list[str]:
    """The raw entries of one fortune file (separated by lines holding only ``%``), non-blank.

    Example:
        >>> import tempfile
        >>> p = os.path.join(tempfile.mkdtemp(), "f")
        >>> _ = open(p, "w").write("one\\n  two\\n%\\n\\n%\\nthree\\n")
        >>> read_fortunes(p)
        ['one\\n  two\\n', 'three\\n']
    """
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    return [e.lstrip("\n") for e in _SEPARATOR.split(text) if e.strip()]


def normalise(text: str) -> str:
    """Collapse every whitespace run to one space and strip the ends.

    Example:
        >>> normalise("  Eine  Million\\n\\tSteuerzahler ")
        'Eine Million Steuerzahler'
    """
    return _SPACE.sub(" ", text).strip()


def _is_text(text: str, min_chars: int) -> bool:
    if len(text) < min_chars:
        return False
    # text is normalised: its only whitespace is single spaces
    return sum(map(str.isalpha, text)) >= 0.5 * (len(text) - text.count(" "))


def _hash(text: str, salt: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8,
                                          person=salt.encode()).digest(), "big")


def split_of(text: str) -> str:
    """The split a (normalised) text belongs to, by a hash of its UTF-8 bytes.

    Example:
        >>> split_of("A celebrity is a person who is known for his well-knownness.") in SPLITS
        True
    """
    u = _hash(text, "split") / 2.0 ** 64
    acc = 0.0
    for name in SPLITS:
        acc += SPLIT_FRACTIONS[name]
        if u < acc:
            return name
    return SPLITS[-1]


def load_texts(root: str | None = None, cap: int | None = 4000, min_chars: int = 20
               ) -> dict[str, list[str]]:
    """Cleaned, deduplicated texts of every language (at most ``cap`` each), language -> texts.

    Texts are ordered by hash; see the module docstring for the cleaning rules.

    Raises:
        DatasetError: a language has no file under the root (the message names the directory
            and the packages to install).

    Example:
        >>> t = load_texts()  # doctest: +SKIP
        >>> {k: len(v) for k, v in t.items()}  # doctest: +SKIP
        {'en': 4000, 'de': 4000, 'it': 4000, 'es': 4000, 'pt': 2494, 'cs': 4000, 'pl': 4000}
    """
    r = fortunes_root(root)
    seen: dict[str, set[str]] = {}  # text -> languages it occurs in
    per_lang: dict[str, list[str]] = {}
    for lang in LANGUAGES:
        paths = language_files(lang, r)
        if not paths:
            src = MANIFEST[lang]
            where = os.path.normpath(os.path.join(r, src.directory))
            raise DatasetError(
                f"no {lang!r} fortune files found in {where!r} (expected "
                f"{'the files ' + ', '.join(src.files[:3]) + ', ...' if src.files else 'its fortune files'}"
                f" from the Debian package {src.package}); install the packages with `{_INSTALL}` "
                "(`make data`) or set HETSCHED_FORTUNES to a directory laid out like "
                f"{DEFAULT_ROOT}")
        texts = []
        for p in paths:
            for entry in read_fortunes(p):
                t = normalise(entry)
                if _is_text(t, min_chars):
                    texts.append(t)
                    seen.setdefault(t, set()).add(lang)
        per_lang[lang] = texts
    out = {}
    for lang, texts in per_lang.items():
        unique = sorted({t for t in texts if len(seen[t]) == 1}, key=lambda t: _hash(t, "order"))
        out[lang] = unique if cap is None else unique[:cap]
    return out


def encode(texts: list[str], max_len: int = 64) -> torch.Tensor:
    """UTF-8 bytes + 1, truncated to ``max_len``, right-padded with 0: ``(len(texts), max_len)`` int64.

    Example:
        >>> encode(["hi", "añ"], max_len=4).tolist()
        [[105, 106, 0, 0], [98, 196, 178, 0]]
    """
    if max_len < 1:
        raise DatasetError(f"max_len must be >= 1; got {max_len!r}")
    x = torch.zeros(len(texts), max_len, dtype=torch.int64)
    for i, t in enumerate(texts):
        b = t.encode("utf-8")[:max_len]
        if b:
            x[i, :len(b)] = torch.frombuffer(bytearray(b), dtype=torch.uint8).to(torch.int64) + 1
    return x


def decode(ids: torch.Tensor) -> str:
    """The text of one encoded row (padding dropped; a truncated character becomes U+FFFD).

    Example:
        >>> decode(encode(["añ"], max_len=8)[0])
        'añ'
    """
    return bytes(int(i) - 1 for i in ids.tolist() if int(i) != PAD).decode("utf-8", errors="replace")


@dataclass(frozen=True)
class TextSplit:
    """One split: encoded texts ``x``, labels ``y`` (indices into :data:`LANGUAGES`), raw ``texts``.

    Example:
        >>> s = TextSplit(encode(["hallo welt", "ciao"], 8), torch.tensor([1, 2]), ["hallo welt", "ciao"])
        >>> len(s), tuple(s.subset(1).x.shape)
        (2, (1, 8))
    """

    x: torch.Tensor  # (N, max_len) int64 byte ids (UTF-8 byte + 1), 0 = padding
    y: torch.Tensor  # (N,) int64 language index into LANGUAGES
    texts: list  # N normalised texts (untruncated)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, n: int) -> "TextSplit":
        """The first ``n`` examples."""
        return TextSplit(self.x[:n], self.y[:n], self.texts[:n])


def load_language_id(root: str | None = None, max_len: int = 64, cap: int | None = 4000,
                     min_chars: int = 20) -> dict[str, TextSplit]:
    """The ``train``, ``gate``, ``val`` and ``test`` splits of the language-identification set.

    Raises:
        DatasetError: the fortune files are missing (install the Debian packages, see
            :data:`PACKAGES`) or ``max_len`` is below 1.

    Example:
        >>> s = load_language_id()  # doctest: +SKIP
        >>> {k: len(v) for k, v in s.items()}  # doctest: +SKIP
        {'train': 14629, 'gate': 2591, 'val': 3950, 'test': 5324}
        >>> tuple(s["train"].x.shape), LANGUAGES[int(s["train"].y[0])]  # doctest: +SKIP
        ((14629, 64), ...)
    """
    if max_len < 1:
        raise DatasetError(f"max_len must be >= 1; got {max_len!r}")
    by_lang = load_texts(root, cap=cap, min_chars=min_chars)
    rows: dict[str, list[tuple[int, str, int]]] = {s: [] for s in SPLITS}
    for y, lang in enumerate(LANGUAGES):
        for t in by_lang[lang]:
            rows[split_of(t)].append((_hash(t, "order"), t, y))
    out = {}
    for s in SPLITS:
        items = sorted(rows[s])
        texts = [t for _, t, _ in items]
        out[s] = TextSplit(encode(texts, max_len), torch.tensor([y for *_, y in items], dtype=torch.int64),
                           texts)
    return out
