"""Tests of graphs.vision: the exit-model interface and counted costs."""
from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close
from torch.utils.flop_counter import FlopCounterMode

from graphs.errors import UnknownNameError
from graphs.vision import ExitCNN, ExitModelError, ExitViT, count_costs, vision_model

MODELS = [lambda: ExitCNN(), lambda: ExitViT(depth=4)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a shared, oversubscribed CPU two threads spin and run ~10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(params=[0, 1], ids=["cnn", "vit"])
def model(request):
    torch.manual_seed(0)
    m = MODELS[request.param]()
    # a few train-mode steps so batch-norm statistics are not trivial
    m.train()
    with torch.no_grad():
        for _ in range(2):
            m(torch.randn(8, 1, 28, 28))
    return m.eval()


X = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(1))


class TestInterface:
    def test_split_equals_full_at_every_depth(self, model):
        full = model(X)
        for d in range(model.num_stages + 1):
            assert_close(model.forward_from(model.forward_until(X, d), d), full)

    def test_forward_all_matches_heads(self, model):
        outs = model.forward_all(X)
        assert len(outs) == len(model.exit_depths) + 1
        assert_close(outs[-1], model(X))
        for d, o in zip(model.exit_depths, outs):
            assert_close(o, model.exit_logits(model.forward_until(X, d), d))

    def test_forward_hidden(self, model):
        hid, outs = model.forward_hidden(X)
        for d, h in zip(model.exit_depths, hid):
            assert_close(h, model.forward_until(X, d))
        assert_close(outs[-1], model(X))

    def test_bad_input_shape(self, model):
        with pytest.raises(ExitModelError, match=r"expects input of shape \(batch, 1, 28, 28\); got \(5, 28, 28\)"):
            model(X[:, 0])

    def test_bad_depth(self, model):
        with pytest.raises(ExitModelError, match=rf"depth 99 out of range; valid depths are 0..{model.num_stages}"):
            model.forward_until(X, 99)
        with pytest.raises(ExitModelError, match=r"no exit head at depth 0; exits at \["):
            model.exit_logits(X, 0)


class TestCosts:
    def test_cnn_first_stage_hand_computed(self):
        c = count_costs(ExitCNN())
        assert c.stage_flops[0] == 2 * 9 * 16 * 28 * 28  # conv 1->16, 3x3, 28x28 output
        assert c.head_flops == 2 * 96 * 9 * 10  # linear 864 -> 10

    @pytest.mark.parametrize("make", MODELS, ids=["cnn", "vit"])
    def test_parts_sum_to_counted_total(self, make):
        m = make().eval()
        c = count_costs(m)
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            m.forward_all(torch.zeros(1, 1, 28, 28))
        assert fc.get_total_flops() == c.full + sum(c.exit_flops.values())
        assert c.until(0) == 0 and c.until(m.num_stages) == sum(c.stage_flops)

    def test_vit_block_flops(self):
        c = count_costs(ExitViT(patch=7, dim=64, depth=2, mlp_ratio=2))
        n, d = 16, 64
        block = 2 * n * (3 * d * d + d * d + 2 * 2 * d * d) + 2 * 2 * n * n * d  # linears + attention
        assert c.stage_flops[1] == block
        assert c.stage_flops[0] == block + 2 * n * 49 * d


class TestConstruction:
    def test_unknown_model(self):
        with pytest.raises(UnknownNameError, match="unknown vision model 'mlp'; valid choices: cnn, vit"):
            vision_model("mlp")

    def test_bad_exits(self):
        with pytest.raises(ExitModelError, match=r"ExitCNN exit depth 4 invalid; valid depths: \[1, 2, 3\]"):
            ExitCNN(exits=(4,))
        with pytest.raises(ExitModelError, match="valid depths: 1..2"):
            ExitViT(depth=3, exits=(3,))
        with pytest.raises(ExitModelError, match="patch 5 must divide 28"):
            ExitViT(patch=5)
