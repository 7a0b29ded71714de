"""Tests of policies.gating: gates, cascades, gated execution, calibration, training."""
from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import binom
from torch.testing import assert_close

from graphs.datasets import MEAN, STD, FashionMNIST, fashion_mnist_available, load_fashion_mnist
from graphs.errors import UnknownNameError
from graphs.vision import ExitCNN, ExitViT
from policies.gating import (Cascade, CalibrationError, CalibrationWarning, EntropyGate, GatingError, LearnedGate,
                             MaxSoftmaxGate, OracleGate, PatienceGate, TrainConfig, available_gates, budget_for_ratio,
                             calibrate_cascade, calibrate_threshold, cascade_route, evaluate_exits,
                             exit_losses, gate_flops, load_or_train, make_gate, pool_hidden, run_gated,
                             softmax_stats, train_exit_model, upper_bound)
from policies.gating.calibrate import _candidates

GEN = torch.Generator().manual_seed(0)
X = torch.randn(12, 1, 28, 28, generator=GEN)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a shared, oversubscribed CPU two threads spin and run ~10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    return ExitCNN().eval().requires_grad_(False)


class TestBasicGates:
    def test_max_softmax_and_entropy_hand_values(self):
        logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])  # softmax (0.75, 0.25) and (0.5, 0.5)
        assert_close(MaxSoftmaxGate().scores(None, logits), torch.tensor([0.75, 0.5]))
        h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
        assert_close(EntropyGate().scores(None, logits), torch.tensor([-h, -math.log(2)]))
        assert_close(softmax_stats(logits)[:, 1], torch.tensor([0.5, 0.0]))

    def test_decide_is_threshold_on_scores(self):
        logits = torch.randn(50, 10, generator=GEN)
        g = MaxSoftmaxGate(threshold=0.4)
        assert torch.equal(g.decide(None, logits), g.scores(None, logits) >= 0.4)
        assert not MaxSoftmaxGate().decide(None, logits).any()  # uncalibrated: never exits

    def test_patience_counts_consecutive_agreement(self):
        a, b = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[0.0, 2.0, 0.0]])
        p = PatienceGate()
        assert p.scores(None, a, previous=[]).item() == 0
        assert p.scores(None, a, previous=[a, a, a]).item() == 3
        assert p.scores(None, a, previous=[a, b]).item() == 0  # nearest earlier exit disagrees
        assert p.scores(None, a, previous=[b, a, a]).item() == 2

    def test_oracle_needs_labels(self):
        with pytest.raises(GatingError, match="needs labels"):
            OracleGate().scores(None, torch.zeros(1, 10))
        assert OracleGate.needs_labels and not MaxSoftmaxGate.needs_labels

    def test_registry(self):
        assert available_gates() == ["entropy", "learned", "max_softmax", "oracle", "patience"]
        assert isinstance(make_gate("patience", threshold=2), PatienceGate)
        with pytest.raises(UnknownNameError, match="unknown gate 'softmax'; valid choices: entropy, learned, "
                                                   "max_softmax, oracle, patience"):
            make_gate("softmax")

    def test_bad_logits_shape(self):
        with pytest.raises(GatingError, match=r"exit logits must have shape \(batch, classes>=2\); got \(4,\)"):
            MaxSoftmaxGate().scores(None, torch.zeros(4))

    def test_pool_hidden_bad_shape(self):
        with pytest.raises(GatingError, match=r"got \(1, 2, 3, 4, 5\)"):
            pool_hidden(torch.zeros(1, 2, 3, 4, 5))


class TestLearnedGate:
    def test_reads_hidden_features(self):
        torch.manual_seed(0)
        g = LearnedGate(feature_dim=48, num_classes=10)
        logits = torch.randn(4, 10, generator=GEN)
        h1, h2 = torch.randn(4, 8, 7, 7, generator=GEN), torch.randn(4, 8, 7, 7, generator=GEN)
        s1, s2 = g.scores(h1, logits), g.scores(h2, logits)
        assert (s1 - s2).abs().min() > 0  # same softmax statistics, different features -> different scores

    def test_fit_learns_agreement_from_features_alone(self):
        # agreement is decided by a hidden feature that the logits do not reveal
        n = 2000
        g = torch.Generator().manual_seed(3)
        feats = torch.randn(n, 6, generator=g)
        final = torch.randn(n, 4, generator=g)
        agree = feats[:, 0] > 0
        exit_ = final.clone()
        exit_[~agree] = exit_[~agree].roll(1, dims=1)  # same softmax statistics, other argmax
        gate = LearnedGate(6, num_classes=4, width=16).fit(feats, exit_, final, epochs=15, seed=0)
        s = gate.scores(feats, exit_)
        acc = ((s > 0) == agree).float().mean().item()  # log-odds > 0: predicted agreement
        assert acc > 0.9, acc
        # Platt-scaled log-odds are calibrated: mean predicted agreement ~ actual agreement rate
        assert abs(torch.sigmoid(s).mean().item() - agree.float().mean().item()) < 0.05
        # a softmax-only gate cannot separate them: its scores are identical under the roll
        assert_close(MaxSoftmaxGate().scores(None, exit_), MaxSoftmaxGate().scores(None, final))

    def test_feature_dim_checked(self):
        g = LearnedGate(feature_dim=5, num_classes=10)
        with pytest.raises(GatingError, match="pooled hidden features have 48 values; this gate was built "
                                              "for feature_dim=5"):
            g.scores(torch.zeros(1, 8, 7, 7), torch.zeros(1, 10))
        with pytest.raises(GatingError, match="reads the hidden state"):
            g.scores(None, torch.zeros(1, 10))

    def test_gate_flops_counted(self):
        g = LearnedGate(feature_dim=48, num_classes=10, width=16)
        assert gate_flops(g, torch.zeros(1, 8, 7, 7), torch.zeros(1, 10)) == 2 * (61 * 16 + 16 * 16 + 16)


class TestRunGated:
    def test_routing_matches_decisions_and_heads(self, cnn):
        hid, outs = cnn.forward_hidden(X)
        gate = MaxSoftmaxGate(threshold=float(MaxSoftmaxGate().scores(None, outs[0]).median()))
        want = gate.decide(hid[0], outs[0])
        assert 0 < int(want.sum()) < len(X)
        out = run_gated(cnn, gate, X, depth=1)
        assert torch.equal(out.exit_depth == 1, want)
        assert_close(out.logits[want], outs[0][want])  # exit results are the head's output
        assert_close(out.logits[~want], cnn(X)[~want])  # the rest: the full model, continued

    def test_cascade_routes_to_first_passing_exit(self, cnn):
        hid, outs = cnn.forward_hidden(X)
        gates = {d: LearnedGate(pool_hidden(h).shape[1], 10) for d, h in zip(cnn.exit_depths, hid)}
        c = Cascade(gates)
        scores = [g.scores(h, o) for g, h, o in zip(gates.values(), hid, outs)]
        t = float(torch.cat(scores).median())
        c.set_threshold(t)
        first = cascade_route(scores, t)
        out = run_gated(cnn, c, X)
        depth = torch.tensor([cnn.exit_depths[j] if j < 3 else 0 for j in first.tolist()])
        assert torch.equal(out.exit_depth, depth)
        for j in range(4):
            sel = first == j
            assert_close(out.logits[sel], outs[j][sel])

    def test_batch_one_path_matches_batched(self, cnn):
        _, outs = cnn.forward_hidden(X)
        q = {1: 0.7, 2: 0.6, 3: 0.5}  # per-exit thresholds at these score quantiles
        c = Cascade({d: MaxSoftmaxGate(float(MaxSoftmaxGate().scores(None, o).quantile(q[d])))
                     for d, o in zip(cnn.exit_depths, outs)})
        batched = run_gated(cnn, c, X)
        assert len(set(batched.exit_depth.tolist())) >= 3
        for i in range(len(X)):
            one = run_gated(cnn, c, X[i:i + 1])
            assert one.exit_depth.tolist() == batched.exit_depth[i:i + 1].tolist()
            assert_close(one.logits, batched.logits[i:i + 1])

    def test_patience_cascade_on_vit(self):
        torch.manual_seed(0)
        vit = ExitViT(depth=4).eval()
        outs = vit.forward_all(X)
        c = Cascade({d: PatienceGate(threshold=1) for d in vit.exit_depths})
        out = run_gated(vit, c, X)
        preds = [o.argmax(1) for o in outs]
        for i in range(len(X)):  # first exit whose prediction equals the previous exit's
            j = next((k for k in range(1, 3) if preds[k][i] == preds[k - 1][i]), None)
            assert out.exit_depth[i].item() == (0 if j is None else vit.exit_depths[j])

    def test_never_exit_equals_full_model(self, cnn):
        out = run_gated(cnn, Cascade({1: MaxSoftmaxGate(), 3: EntropyGate()}), X)
        assert (out.exit_depth == 0).all()
        assert_close(out.logits, cnn(X))

    def test_errors(self, cnn):
        with pytest.raises(GatingError, match="needs the exit depth"):
            run_gated(cnn, MaxSoftmaxGate(0.5), X)
        with pytest.raises(GatingError, match=r"cascade gates at depths \[4\] but the model's exits are at \[1, 2, 3\]"):
            run_gated(cnn, Cascade({4: MaxSoftmaxGate(0.5)}), X)
        with pytest.raises(GatingError, match="at least one"):
            Cascade({})


class TestCalibration:
    def test_clopper_pearson_hand_values(self):
        # k = 0: the bound solves (1 - p)^n = delta
        assert upper_bound(0, 200, 0.1) == pytest.approx(1 - 0.1 ** (1 / 200), rel=1e-9)
        # k > 0: P(Binom(n, ucb) <= k) = delta
        u = upper_bound(7, 500, 0.05)
        assert binom.cdf(7, 500, u) == pytest.approx(0.05, rel=1e-6)
        assert upper_bound(3, 100, 0.1, "hoeffding") == pytest.approx(0.03 + math.sqrt(math.log(10) / 200))
        assert upper_bound(5, 5, 0.1) == 1.0

    def test_meets_budget_on_its_calibration_data(self):
        g = torch.Generator().manual_seed(5)
        n = 3000
        scores = torch.rand(n, generator=g)
        losses = (torch.rand(n, generator=g) < 0.3 * (1 - scores) ** 2).long()  # low scores err more
        budget, delta = 0.02, 0.1
        c = calibrate_threshold(scores, losses, budget, delta)
        exited = scores >= c.threshold
        risk = (losses * exited).sum().item() / n
        assert risk == pytest.approx(c.risk) and c.exit_rate == pytest.approx(exited.float().mean().item())
        assert risk <= budget and c.ucb <= budget
        assert c.ucb == pytest.approx(upper_bound(int((losses * exited).sum()), n, delta))
        assert 0.1 < c.exit_rate < 1.0
        # fixed-sequence maximality: the next candidate down fails the test
        cands = _candidates(scores.double().numpy(), 400)
        nxt = cands[list(cands).index(c.threshold) + 1]
        k = int((losses * (scores >= nxt)).sum())
        assert upper_bound(k, n, delta) > budget

    def test_no_safe_threshold_never_exits(self):
        with pytest.warns(CalibrationWarning, match="at least 230 samples are needed"):
            c = calibrate_threshold(torch.rand(100, generator=GEN), torch.ones(100, dtype=torch.long), 0.01)
        assert c.threshold == math.inf and c.exit_rate == 0.0 and "n=100" in c.note

    def test_cascade_loss_is_first_exit_loss(self):
        s1 = torch.tensor([0.9, 0.2, 0.2, 0.9])
        s2 = torch.tensor([0.9, 0.9, 0.1, 0.1])
        assert cascade_route([s1, s2], 0.5).tolist() == [0, 1, 2, 0]
        # all losses at exit 1, none at exit 2: only route-0 samples count
        n = 400
        s1, s2 = s1.repeat(n // 4), s2.repeat(n // 4)
        l1, l2 = torch.tensor([0, 1, 1, 0]).repeat(n // 4), torch.zeros(n, dtype=torch.long)
        c = calibrate_cascade([s1, s2], [l1, l2], budget=0.05)
        assert c.risk == 0.0 and c.exit_rate == pytest.approx(0.75) and 0.2 < c.threshold <= 0.9

    def test_exit_losses(self):
        e, f, y = torch.tensor([1, 1, 0]), torch.tensor([0, 1, 1]), torch.tensor([0, 0, 0])
        assert exit_losses(e, f, y).tolist() == [1, 0, 0]
        assert exit_losses(e, f, risk="disagreement").tolist() == [1, 0, 1]
        with pytest.raises(CalibrationError, match="needs labels"):
            exit_losses(e, f)
        with pytest.raises(UnknownNameError, match="unknown risk 'acc'; valid choices: disagreement, harm"):
            exit_losses(e, f, y, risk="acc")

    @pytest.mark.parametrize("budget", [0.0, 1.0, -0.1, 2])
    def test_budget_out_of_range(self, budget):
        with pytest.raises(CalibrationError, match=rf"budget must be in the open interval \(0, 1\); got {budget}"):
            calibrate_threshold(torch.rand(10), torch.zeros(10, dtype=torch.long), budget)

    def test_other_bad_input(self):
        with pytest.raises(CalibrationError, match="delta must be in the open interval"):
            calibrate_threshold(torch.rand(10), torch.zeros(10, dtype=torch.long), 0.1, delta=1.5)
        with pytest.raises(UnknownNameError, match="unknown bound 'bonferroni'; valid choices: clopper-pearson, "
                                                   "clopper-pearson-union, hoeffding"):
            upper_bound(1, 10, 0.1, "bonferroni")
        with pytest.raises(CalibrationError, match="must all be 1-D of length 10"):
            calibrate_threshold(torch.rand(10), torch.zeros(9, dtype=torch.long), 0.1)
        with pytest.raises(CalibrationError, match="ratio must be in the open interval"):
            budget_for_ratio(0.9, 1.0)
        assert budget_for_ratio(0.9, 0.995) == pytest.approx(0.0045)


class TestTraining:
    def test_unknown_mode(self):
        with pytest.raises(Exception, match="unknown training mode 'x'; valid choices: joint, frozen"):
            train_exit_model(ExitViT(depth=2), X, torch.zeros(12, dtype=torch.long), TrainConfig("vit", mode="x"))

    def test_frozen_mode_keeps_final_path_of_phase_one(self):
        # with exit_weight=0 in joint mode nothing trains the exits; in frozen mode the second
        # phase changes only exits: the final head's output equals a backbone-only run's
        y = torch.arange(12) % 10
        cfg = TrainConfig("vit", model_kwargs=(("depth", 2),), mode="frozen", epochs=2, batch_size=4)
        a = cfg.build()
        before = {k: v.clone() for k, v in a.exits.state_dict().items()}
        train_exit_model(a, X, y, cfg)
        b = cfg.build()
        train_exit_model(b, X, y, TrainConfig("vit", model_kwargs=(("depth", 2),), mode="joint", epochs=2,
                                              batch_size=4, exit_weight=0.0))
        assert_close(a(X), b(X))
        assert any(not torch.equal(before[k], v) for k, v in a.exits.state_dict().items())

    def test_cache_roundtrip(self, tmp_path):
        y = torch.arange(12) % 10
        cfg = TrainConfig("vit", model_kwargs=(("depth", 2),), epochs=1, batch_size=6)
        m1, i1 = load_or_train(cfg, X, y, cache_dir=str(tmp_path))
        m2, i2 = load_or_train(cfg, X, y, cache_dir=str(tmp_path))
        assert not i1["cached"] and i2["cached"] and i2["train_seconds"] == i1["train_seconds"]
        assert_close(m1(X), m2(X))


@pytest.mark.data
@pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST IDX files missing: "
                                                          "apt-get install dataset-fashion-mnist")
def test_small_real_pipeline():
    """Train a small CNN on 3k real images; calibrate on 1k held-out; the budget holds there."""
    torch.manual_seed(0)
    x, y = load_fashion_mnist("test")  # the smaller file: this is a unit test, not the benchmark
    x = ((x.float() / 255 - MEAN) / STD).unsqueeze(1)
    tr, va = FashionMNIST(x[:3000], y[:3000]), FashionMNIST(x[3000:4000], y[3000:4000])
    cfg = TrainConfig("cnn", model_kwargs=(("channels", (8, 16, 16, 16)),), epochs=2, batch_size=64)
    m = train_exit_model(cfg.build(), tr.x, tr.y, cfg)
    accs = evaluate_exits(m, va.x, va.y)
    assert accs[-1] > 0.6  # far above chance (0.1)
    with torch.no_grad():
        hid, outs = m.forward_hidden(va.x)
    scores = MaxSoftmaxGate().scores(None, outs[0])
    losses = exit_losses(outs[0].argmax(1), outs[-1].argmax(1), va.y)
    budget = budget_for_ratio(accs[-1], 0.97)
    c = calibrate_threshold(scores, losses, budget)
    out = run_gated(m, MaxSoftmaxGate(c.threshold), va.x, depth=1)
    acc = (out.logits.argmax(1) == va.y).float().mean().item()
    assert acc >= accs[-1] - c.ucb - 1e-9  # gated accuracy loses at most the certified harm
    assert (out.exit_depth == 1).float().mean().item() == pytest.approx(c.exit_rate)


class TestDecoderExits:
    def test_tiny_decoder_split_and_exit(self):
        from graphs.models import example_inputs, pangu_embedded
        from policies.gating import attach_exits
        base = pangu_embedded("tiny")
        m = attach_exits(base, [1])
        ids, = example_inputs(base, seq_len=6)
        with torch.no_grad():
            full = base(ids)
            for d in range(3):
                assert_close(m.forward_from(m.forward_until(ids, d), d), full)
            outs = m.forward_all(ids)
            h1 = m.forward_until(ids, 1)
            assert_close(outs[0], base.lm_head(base.norm(h1)))  # shared final norm + lm_head
            assert_close(outs[-1], full)
        own = attach_exits(base, [1], share_head=False)
        assert own.exits["1"].lm_head is not base.lm_head
        with pytest.raises(GatingError, match=r"exit depths \[0\] invalid for a 2-layer decoder; valid depths: 1..1"):
            attach_exits(base, [0])
        with pytest.raises(GatingError, match="input_ids must be an integer tensor"):
            m.forward_until(torch.zeros(1, 4), 1)
