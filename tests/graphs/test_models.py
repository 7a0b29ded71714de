"""The reference decoder: configs, analytic counts, KV-cache decode equivalence."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from graphs import UnknownNameError
from graphs.models import (PanguConfig, configs, decode_flops, decode_inputs, example_inputs,
                           get_config, pangu_embedded, param_count, prefill_flops)


class TestConfigs:
    def test_lists_the_named_configs(self):
        assert configs() == ("tiny", "small", "1b", "smollm2-135m", "tiny-llama")
        assert all(isinstance(get_config(n), PanguConfig) for n in configs())

    def test_1b_matches_the_published_architecture(self):
        c = get_config("1b")
        assert (c.num_layers, c.hidden, c.num_heads, c.num_kv_heads, c.head_dim) == (26, 1536, 12, 6, 128)
        assert (c.vocab, c.max_position, c.intermediate, c.qkv_bias) == (153376, 32768, 6144, True)
        assert c.num_heads * c.head_dim == c.hidden

    def test_smollm2_is_llama_style(self):
        c = get_config("smollm2-135m")
        assert (c.num_layers, c.hidden, c.num_heads, c.num_kv_heads, c.head_dim) == (30, 576, 9, 3, 64)
        assert (c.qkv_bias, c.tie_embeddings, c.rope_theta, c.norm_eps) == (False, True, 1e5, 1e-5)
        m = pangu_embedded("smollm2-135m", device="meta")
        assert m.lm_head.weight is m.embed_tokens.weight
        assert sum(p.numel() for p in m.parameters()) == param_count(c) == 134_515_008

    def test_configs_are_frozen(self):
        with pytest.raises(Exception, match="cannot assign"):
            get_config("tiny").hidden = 3

    def test_unknown_name_lists_valid_ones(self):
        with pytest.raises(UnknownNameError, match=r"unknown model config '7b'; valid choices: 1b, small, smollm2-135m, tiny, tiny-llama"):
            pangu_embedded("7b")

    def test_bad_head_split_is_rejected(self):
        with pytest.raises(ValueError, match="num_heads 5 is not a multiple of num_kv_heads 2"):
            PanguConfig("bad", 1, 64, 5, 2, 16, 64, 32, 64)


class TestModel:
    @pytest.mark.parametrize("name", ["tiny", "small", "1b"])
    def test_param_count_formula_matches_the_module(self, name):
        m = pangu_embedded(name, device="meta")
        assert sum(p.numel() for p in m.parameters()) == param_count(name)
        assert list(m.buffers()) == []  # rotary tables are computed, not stored

    def test_1b_is_about_1_4b_parameters_and_1b_without_embeddings(self):
        c = get_config("1b")
        total = param_count(c)
        assert 1.35e9 < total < 1.45e9
        assert 0.85e9 < total - 2 * c.vocab * c.hidden < 1.0e9

    def test_meta_model_allocates_nothing(self):
        m = pangu_embedded("1b", device="meta")
        assert all(p.is_meta for p in m.parameters())
        assert m.config is get_config("1b")

    def test_lm_head_is_untied_and_qkv_have_bias(self):
        m = pangu_embedded("tiny")
        assert m.lm_head.weight is not m.embed_tokens.weight
        att = m.layers[0].self_attn
        assert att.q_proj.bias is not None and att.k_proj.bias is not None
        assert att.o_proj.bias is None and m.layers[0].mlp.up_proj.bias is None

    def test_seeded_init_is_reproducible(self):
        a, b = pangu_embedded("tiny", seed=3), pangu_embedded("tiny", seed=3)
        torch.testing.assert_close(a.lm_head.weight, b.lm_head.weight)

    def test_forward_is_causal(self):
        m = pangu_embedded("tiny")
        (ids,) = example_inputs(m, seq_len=10)
        full = m(ids)
        changed = ids.clone()
        changed[0, 7:] = (changed[0, 7:] + 1) % m.config.vocab
        out = m(changed)
        torch.testing.assert_close(out[:, :7], full[:, :7])
        assert not torch.allclose(out[:, 7:], full[:, 7:])

    def test_decode_step_with_kv_cache_equals_prefill(self):
        """Prefill T tokens collecting the cache via hooks; one decode step for token T must
        give the same logits as a prefill over T + 1 tokens."""
        m = pangu_embedded("tiny", dtype=torch.float64)
        c = m.config
        (ids,) = example_inputs(m, batch=2, seq_len=9)
        t = ids.shape[1] - 1
        ks, vs = [], []
        hooks = []
        for layer in m.layers:
            hooks.append(layer.self_attn.k_proj.register_forward_hook(lambda mod, i, o: ks.append(o)))
            hooks.append(layer.self_attn.v_proj.register_forward_hook(lambda mod, i, o: vs.append(o)))
        m(ids[:, :t])
        for h in hooks:
            h.remove()
        inv = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.float32) / c.head_dim))
        f = torch.outer(torch.arange(t, dtype=torch.float32), inv)
        emb = torch.cat((f, f), -1)
        cos, sin = emb.cos().double(), emb.sin().double()

        def heads(x):
            return x.view(2, t, c.num_kv_heads, c.head_dim).transpose(1, 2)

        def rot(x):
            x1, x2 = x.chunk(2, -1)
            return x * cos + torch.cat((-x2, x1), -1) * sin

        pk = torch.stack([rot(heads(k)) for k in ks])
        pv = torch.stack([heads(v) for v in vs])
        step = m(ids[:, t:], pk, pv)
        full = m(ids)
        torch.testing.assert_close(step[:, 0], full[:, t])


class TestInputs:
    def test_example_inputs_shape_and_range(self):
        m = pangu_embedded("small")
        (ids,) = example_inputs(m, batch=3, seq_len=20)
        assert ids.shape == (3, 20) and ids.dtype == torch.long
        assert int(ids.min()) >= 0 and int(ids.max()) < m.config.vocab

    def test_example_inputs_follow_meta(self):
        m = pangu_embedded("tiny", device="meta")
        assert example_inputs(m, seq_len=4)[0].is_meta

    def test_decode_inputs_layout(self):
        m = pangu_embedded("1b", device="meta")
        ids, pk, pv = decode_inputs(m, context_len=100, batch=2)
        assert ids.shape == (2, 1)
        assert pk.shape == pv.shape == (26, 2, 6, 100, 128)
        assert m(ids, pk, pv).shape == (2, 1, 153376)

    def test_too_long_is_rejected(self):
        m = pangu_embedded("tiny", device="meta")
        with pytest.raises(ValueError, match=r"seq_len must be an int in \[1, 512\].*got 513"):
            example_inputs(m, seq_len=513)
        with pytest.raises(ValueError, match=r"context_len \+ 1 must be an int in \[1, 512\]"):
            decode_inputs(m, context_len=512)


class TestAnalyticFlops:
    """The formulas agree with torch's own FlopCounterMode on the meta model (run directly,
    not through graphs.capture); on meta, sdpa decomposes to counted bmm's."""

    @pytest.mark.parametrize("name,seq,batch", [("tiny", 16, 2), ("small", 64, 1), ("1b", 128, 1)])
    def test_prefill(self, name, seq, batch):
        m = pangu_embedded(name, device="meta")
        with FlopCounterMode(display=False) as fc:
            m(*example_inputs(m, batch=batch, seq_len=seq))
        assert fc.get_total_flops() == prefill_flops(name, seq, batch)

    @pytest.mark.parametrize("name,ctx,batch", [("tiny", 30, 2), ("1b", 4096, 1)])
    def test_decode(self, name, ctx, batch):
        m = pangu_embedded(name, device="meta")
        with FlopCounterMode(display=False) as fc:
            m(*decode_inputs(m, context_len=ctx, batch=batch))
        assert fc.get_total_flops() == decode_flops(name, ctx, batch)

    def test_prefill_is_about_two_flops_per_param_per_token(self):
        c = get_config("1b")
        per_token = prefill_flops(c, 1)
        weights = param_count(c) - c.vocab * c.hidden  # the embedding lookup costs no FLOPs
        assert abs(per_token - 2 * weights) / per_token < 0.001
