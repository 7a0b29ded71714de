"""Gating for any layered model: the adapter, masks and batch invariance, a sound learned
gate, heads-only seeded cached training, net-loss and per-exit calibration."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.testing import assert_close

from graphs.exits import ExitAdapterError, ExitModel, ExitModelError, LayeredExits, count_costs
from graphs.text import ExitTextClassifier
from graphs.vision import ExitCNN
from policies.gating import (Cascade, CalibrationError, CalibrationWarning, EntropyGate, LearnedGate,
                             MaxSoftmaxGate, PatienceGate, TrainConfig, attach_exits, calibrate_cascade,
                             calibrate_exits, cascade_route, exit_losses, fit_exits, pool_hidden, run_gated)
from policies.gating.bounds import _net_tail, net_p_value, net_union_bound, net_upper_bound
from policies.gating.calibrate import _greedy_path, _net_margin, _passes, calibrate_threshold, min_samples
from policies.gating.window import _window_means, window_budget, window_levels, window_test


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _texts(n: int, seed: int, max_len: int = 24) -> list[torch.Tensor]:
    """``n`` random byte-id texts of random lengths 1..max_len (no padding)."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, max_len + 1, (n,), generator=g)
    return [torch.randint(1, 257, (1, int(k)), generator=g) for k in lens]


def _pad(texts: list[torch.Tensor], length: int) -> torch.Tensor:
    out = torch.zeros(len(texts), length, dtype=torch.long)
    for i, t in enumerate(texts):
        out[i, :t.shape[1]] = t[0]
    return out


@pytest.fixture(scope="module")
def text_model():
    """A small text classifier briefly trained to tell text lengths apart (so its exits mean
    something and often agree), seeded."""
    from policies.gating import train_exit_model

    torch.manual_seed(0)
    m = ExitTextClassifier(dim=32, heads=4, depth=3, max_len=32, num_classes=5)
    texts = _texts(400, 50, max_len=32)
    y = torch.tensor([(t.shape[1] - 1) * 5 // 32 for t in texts])
    return train_exit_model(m, _pad(texts, 32), y, TrainConfig("text", epochs=3, batch_size=32))


class TestAdapter:
    def test_incomplete_adapter_names_every_missing_piece(self):
        class NoChecks(ExitModel):
            def __init__(self):
                super().__init__()
                self.stages = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
                self.exits = nn.ModuleDict({"1": nn.Linear(4, 2)})
                self.head = nn.Linear(4, 2)
                self.num_classes = 2

        m = NoChecks()
        with pytest.raises(ExitAdapterError, match=r"NoChecks's exit-model adapter is incomplete: missing "
                                                    r"check_input\(x\).*example_input\(batch\)"):
            run_gated(m, MaxSoftmaxGate(0.5), torch.zeros(2, 4), depth=1)
        with pytest.raises(ExitAdapterError, match="example_input"):
            count_costs(m)

    def test_layered_adapter_without_check_is_refused_at_construction(self):
        with pytest.raises(ExitAdapterError, match=r"missing check_input\(x\)"):
            LayeredExits([nn.Linear(4, 4)] * 2, nn.Linear(4, 2), {1: nn.Linear(4, 2)}, num_classes=2,
                         example=lambda b: torch.zeros(b, 4))

    def test_layered_adapter_runs_gated_and_counts(self):
        torch.manual_seed(0)

        def check(x):
            if x.dim() != 2 or x.shape[1] != 4:
                raise ExitModelError(f"expects (batch, 4); got {tuple(x.shape)}")
        m = LayeredExits([nn.Sequential(nn.Linear(4, 4), nn.ReLU()) for _ in range(3)], nn.Linear(4, 3),
                         {1: nn.Linear(4, 3), 2: nn.Linear(4, 3)}, num_classes=3, check=check,
                         example=lambda b: torch.zeros(b, 4)).eval()
        x = torch.randn(6, 4)
        out = run_gated(m, Cascade({1: MaxSoftmaxGate(2.0), 2: MaxSoftmaxGate(2.0)}), x)
        assert_close(out.logits, m(x))  # nothing passes a threshold above 1
        c = count_costs(m)
        assert c.stage_flops == (32, 32, 32) and c.head_flops == 24 and c.exit_flops == {1: 24, 2: 24}
        with pytest.raises(ExitModelError, match=r"expects \(batch, 4\); got \(6, 5\)"):
            run_gated(m, MaxSoftmaxGate(0.5), torch.zeros(6, 5), depth=1)


def _local(model, gates: Cascade, x) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample reference: run each sample alone through the exits in order."""
    logits, where = [], []
    for i in range(x.shape[0]):
        xi = x[i:i + 1]
        out = None
        previous = []
        for d, g in gates.gates.items():
            state = model.forward_until(xi, d)
            e = model.exit_logits(state, d)
            last = e[:, -1] if e.dim() == 3 else e
            if bool(g.decide(model.gate_view(state) if e.dim() == 2 else state[:, -1], last, previous=previous)):
                out = (e, d)
                break
            previous.append(last)
        if out is None:
            out = (model(xi), 0)
        logits.append(out[0])
        where.append(out[1])
    return torch.cat(logits), torch.tensor(where)


class TestDecoderAndText:
    def test_decoder_runs_gated_equal_to_local_evaluation(self):
        from graphs.models import pangu_embedded

        torch.manual_seed(0)
        dm = attach_exits(pangu_embedded("tiny"), [1]).eval()
        ids = torch.randint(0, dm.num_classes, (6, 5), generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            conf = dm.exit_logits(dm.forward_until(ids, 1), 1)[:, -1].softmax(-1).amax(-1)
        thr = float(conf.sort().values[2:4].mean())  # between two samples' confidences: a mixed routing
        gates = Cascade({1: MaxSoftmaxGate(thr)})
        out = run_gated(dm, gates, ids)
        with torch.inference_mode():
            ref, where = _local(dm, gates, ids)
        assert where.tolist() == out.exit_depth.tolist() and 0 < int((where == 1).sum()) < 6
        assert_close(out.logits, ref)

    def test_decoder_input_check_names_the_bad_id(self):
        from graphs.models import pangu_embedded

        dm = attach_exits(pangu_embedded("tiny"), [1]).eval()
        bad = torch.full((1, 3), dm.num_classes)
        with pytest.raises(Exception, match=rf"token id {dm.num_classes} out of range; valid ids are 0..{dm.num_classes - 1}"):
            run_gated(dm, MaxSoftmaxGate(0.5), bad, depth=1)

    def test_text_classifier_runs_gated_equal_to_local_evaluation(self, text_model):
        x = _pad(_texts(10, 3, max_len=32), 32)
        with torch.inference_mode():
            conf = [text_model.exit_logits(text_model.forward_until(x[i:i + 1], 1), 1).softmax(-1).amax()
                    for i in range(10)]
        thr = float(torch.stack(conf).sort().values[4:6].mean())
        gates = Cascade({1: MaxSoftmaxGate(thr), 2: MaxSoftmaxGate(thr)})
        out = run_gated(text_model, gates, x)
        with torch.inference_mode():
            ref, where = _local(text_model, gates, x)
        assert out.exit_depth.tolist() == where.tolist()
        assert_close(out.logits, ref)


def _learned(model, depths, seed=0) -> Cascade:
    """Learned gates fitted (seeded) on random texts the model never saw."""
    x = _pad(_texts(300, 100 + seed, max_len=32), 32)
    with torch.inference_mode():
        hid, outs = model.forward_hidden(x)
    gates = {}
    for j, d in enumerate(model.exit_depths):
        if d in depths:
            view = model.gate_view(hid[j])
            g = LearnedGate(pool_hidden(view).shape[1], model.num_classes)
            gates[d] = g.fit(view, outs[j], outs[-1], epochs=5, seed=seed)
    return Cascade(gates)


def _midpoint_thresholds(scores: torch.Tensor, quantiles=(0.3, 0.6)) -> list[float]:
    """Thresholds halfway between two neighbouring solo scores (as far from any score as the
    data allows), so float noise of batching cannot flip a route at them."""
    s = scores.unique().sort().values
    out = []
    for q in quantiles:
        i = max(1, min(len(s) - 1, int(q * len(s))))
        out.append(float((s[i - 1] + s[i]) / 2))
    return out


class TestBatchInvariance:
    """An input's route and answer are the same alone (unpadded) and inside padded batches of
    any composition, for every gate."""

    @pytest.mark.parametrize("kind", ["max_softmax", "entropy", "patience", "learned"])
    def test_route_and_answer_alone_equal_in_any_padded_batch(self, text_model, kind):
        texts = _texts(24, 7, max_len=20)
        depths = text_model.exit_depths
        if kind == "learned":
            gates = _learned(text_model, depths)
        else:
            cls = {"max_softmax": MaxSoftmaxGate, "entropy": EntropyGate, "patience": PatienceGate}[kind]
            gates = Cascade({d: cls() for d in depths})
        if kind == "patience":
            gates.set_threshold(1.0)  # integer scores: exit once one earlier exit agrees
        else:  # thresholds placed between the solo scores
            with torch.inference_mode():
                solo = []
                for t in texts:
                    hid, outs = text_model.forward_hidden(t)
                    solo.append(torch.stack([gates.gates[d].scores(text_model.gate_view(h), o)[0]
                                             for d, h, o in zip(depths, hid, outs)]))
            solo = torch.stack(solo)  # (texts, exits)
            gates.set_threshold([_midpoint_thresholds(solo[:, j])[j % 2] for j in range(len(depths))])
        alone = [run_gated(text_model, gates, t) for t in texts]
        routes = torch.cat([a.exit_depth for a in alone])
        assert len(set(routes.tolist())) > 1, "a mixed routing is needed for the test to mean anything"
        g = torch.Generator().manual_seed(11)
        for _ in range(4):  # random compositions, random padded lengths
            idx = torch.randperm(len(texts), generator=g)[:int(torch.randint(2, len(texts), (1,), generator=g))]
            length = int(torch.randint(20, 33, (1,), generator=g))
            out = run_gated(text_model, gates, _pad([texts[i] for i in idx], length))
            assert out.exit_depth.tolist() == routes[idx].tolist()
            assert_close(out.logits, torch.cat([alone[i].logits for i in idx]), rtol=1e-4, atol=1e-5)

    def test_masked_pooling_ignores_padding(self):
        h = torch.randn(1, 5, 8)
        padded = torch.cat([h, torch.full((1, 3, 8), 1e6)], 1)
        mask = torch.tensor([[True] * 5 + [False] * 3])
        assert_close(pool_hidden((padded, mask)), pool_hidden(h))


class TestLearnedGateNumerics:
    def test_scores_stable_under_fp16_rounding_with_degenerate_features(self):
        """A nearly constant feature (large mean, tiny spread) used to be magnified by a 1e-4
        std floor folded into the first layer; rounding features to fp16 then moved scores by
        several log-odds. Now the scale is floored relative to the feature's size: the stated
        tolerance is 0.05 log-odds."""
        g = torch.Generator().manual_seed(0)
        n = 2000
        f = torch.randn(n, 16, generator=g)
        f[:, 0] = 100.0 + 1e-5 * torch.randn(n, generator=g)  # nearly constant
        f[:, 1] = 30.0 * f[:, 1]  # large scale
        logits = torch.randn(n, 10, generator=g) * 2
        final = logits.clone()
        flip = f[:, 2] < 0  # agreement depends on a feature
        final[flip] = final[flip].roll(1, dims=1)
        gate = LearnedGate(16, 10).fit(f, logits, final, epochs=10)
        s32 = gate.scores(f, logits)
        s16 = gate.scores(f.half().float(), logits.half().float())
        assert float((s32 - s16).abs().max()) < 0.05
        assert all(p.abs().max() < 50 for p in gate.net.parameters())  # no folded, exploding weights
        # the fit learned something: agreeing samples score higher on average
        assert float(s32[~flip].mean()) > float(s32[flip].mean())

    def test_fit_is_seeded(self):
        g = torch.Generator().manual_seed(1)
        f, lo = torch.randn(400, 8, generator=g), torch.randn(400, 4, generator=g)
        fin = lo.roll(1, dims=0)
        a = LearnedGate(8, 4).fit(f, lo, fin, epochs=3, seed=5).scores(f, lo)
        b = LearnedGate(8, 4).fit(f, lo, fin, epochs=3, seed=5).scores(f, lo)
        assert torch.equal(a, b)


def _pretrained() -> ExitCNN:
    """Stands for a pretrained backbone: the same weights every call."""
    torch.manual_seed(0)
    return ExitCNN().eval()


class TestTraining:
    def test_heads_only_keeps_the_backbone_seeded_and_cached_by_model_and_data(self, tmp_path):
        x = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(2))
        y = torch.arange(32) % 10
        cfg = TrainConfig("pretrained-cnn", mode="heads", epochs=1, batch_size=16)
        base = _pretrained()
        backbone = {k: v.clone() for k, v in base.state_dict().items() if not k.startswith("exits.")}
        heads = {k: v.clone() for k, v in base.state_dict().items() if k.startswith("exits.")}
        m1, i1 = fit_exits(base, x, y, cfg, str(tmp_path))
        assert not i1["cached"]
        assert all(torch.equal(v, m1.state_dict()[k]) for k, v in backbone.items())  # backbone untouched
        assert any(not torch.equal(v, m1.state_dict()[k]) for k, v in heads.items())  # heads trained
        m2, i2 = fit_exits(_pretrained(), x, y, cfg, str(tmp_path / "fresh"))  # a fresh run: same weights
        assert not i2["cached"]
        assert all(torch.equal(v, m2.state_dict()[k]) for k, v in m1.state_dict().items())
        m3, i3 = fit_exits(_pretrained(), x, y, cfg, str(tmp_path))  # same model and data: the cache
        assert i3["cached"] and i3["path"] == i1["path"]
        assert all(torch.equal(v, m3.state_dict()[k]) for k, v in m1.state_dict().items())
        _, i4 = fit_exits(_pretrained(), x, (y + 1) % 10, cfg, str(tmp_path))  # other labels: retrain
        assert not i4["cached"] and i4["path"] != i1["path"]
        other = _pretrained()
        with torch.no_grad():
            other.head[-1].bias.add_(1.0)  # another backbone: retrain
        _, i5 = fit_exits(other, x, y, cfg, str(tmp_path))
        assert not i5["cached"] and i5["path"] != i1["path"]

    def test_unknown_mode_is_named(self, tmp_path):
        with pytest.raises(Exception, match="unknown training mode 'warm'; valid choices: joint, frozen, heads"):
            fit_exits(ExitCNN(), torch.zeros(2, 1, 28, 28), torch.zeros(2, dtype=torch.long),
                      TrainConfig("x", mode="warm"), str(tmp_path))


class TestCalibration:
    def test_net_loss_credits_help(self):
        e = torch.tensor([0, 1, 1, 2])
        f = torch.tensor([0, 0, 1, 1])
        y = torch.tensor([0, 1, 1, 2])
        assert exit_losses(e, f, y, risk="net").tolist() == [0, -1, 0, -1]

    def test_net_certification_exits_more_when_deeper_exits_help(self):
        g = torch.Generator().manual_seed(0)
        n = 5000
        s = torch.rand(n, generator=g)
        harm = (torch.rand(n, generator=g) < 0.02).long()
        help_ = ((torch.rand(n, generator=g) < 0.02) & (harm == 0)).long()
        net = harm - help_
        c_h = calibrate_threshold_(s, harm)
        c_n = calibrate_threshold_(s, net)
        assert c_n.kind == "net" and c_h.kind == "harm"
        assert c_n.exit_rate > c_h.exit_rate + 0.3

    @pytest.mark.parametrize("sequences", [("path",), ("path", "shared")])
    def test_per_exit_thresholds_hold_their_budget_on_fresh_data(self, sequences):
        """Monte Carlo: the true net risk of the returned vector exceeds the budget in at most
        about delta of the runs (the guarantee), also when the learning part chooses between
        the greedy path and a shared threshold."""
        budget, delta, fails, runs = 0.02, 0.1, 0, 40
        g = torch.Generator().manual_seed(3)

        def draw(n):
            s1, s2 = torch.rand(n, generator=g), torch.rand(n, generator=g)
            l1 = ((torch.rand(n, generator=g) < 0.25 * (1 - s1)) * 1).long()  # risk falls with the score
            l2 = ((torch.rand(n, generator=g) < 0.05 * (1 - s2)) * 1).long()
            return [s1, s2], [l1, l2]
        big_s, big_l = draw(200_000)  # the "population"
        exited_any = 0
        for _ in range(runs):
            s, l = draw(2000)
            c = calibrate_exits(s, l, budget, costs=[1.0, 2.0, 4.0], delta=delta, sequences=sequences)
            first = cascade_route(big_s, c.vector)
            L = torch.stack([*big_l, torch.zeros_like(big_l[0])])
            true = L.gather(0, first[None]).double().mean().item()
            fails += int(true > budget)
            exited_any += int(c.certified)
        assert fails / runs <= delta + 0.1
        assert exited_any == runs  # and it is not vacuous: every run certified some exits

    def test_uncertifiable_budget_says_why(self):
        s, l = torch.rand(50), torch.zeros(50, dtype=torch.long)
        with pytest.warns(CalibrationWarning, match=r"with n=50 calibration samples .* at least 460 samples"):
            c = calibrate_cascade([s], [l], 0.005)
        assert not c.certified and math.isinf(c.threshold) and "at least 460" in c.note
        with pytest.raises(CalibrationError, match="at least 460 samples"):
            calibrate_cascade([s], [l], 0.005, strict=True)
        bad = torch.ones(5000, dtype=torch.long)
        # enough samples for the budget, but even the single highest-scoring sample is a loss
        with pytest.raises(CalibrationError, match="most conservative candidate threshold already has an "
                                                   "upper bound of 0.000"):
            calibrate_cascade([torch.rand(5000)], [bad], 0.0005, strict=True)

    @pytest.mark.parametrize("kwargs, match", [
        ({"costs": [1.0, 2.0]}, r"costs needs 3 finite numbers"),
        ({"costs": [1.0, 2.0, 3.0], "learn_fraction": 1.0}, r"learn_fraction must be in \(0, 1\)"),
        ({"costs": [1.0, 2.0, 3.0], "grid": 1}, "grid must be an integer >= 2"),
        ({"costs": [1.0, 2.0, 3.0], "sequences": "path"}, r"sequences must be a non-empty list"),
    ])
    def test_bad_per_exit_settings(self, kwargs, match):
        s = [torch.rand(100), torch.rand(100)]
        l = [torch.zeros(100, dtype=torch.long)] * 2
        with pytest.raises(CalibrationError, match=match):
            calibrate_exits(s, l, 0.1, **kwargs)

    def test_unknown_sequence_is_named(self):
        from graphs.errors import UnknownNameError
        s = [torch.rand(100), torch.rand(100)]
        l = [torch.zeros(100, dtype=torch.long)] * 2
        with pytest.raises(UnknownNameError, match=r"unknown sequence 'greedy'; valid choices: path, shared"):
            calibrate_exits(s, l, 0.1, costs=[1.0, 2.0, 3.0], sequences=("path", "greedy"))

    def test_net_bound_sign(self):
        assert net_upper_bound(0, 0, 1000, 0.1) > 0
        assert net_upper_bound(5, 50, 1000, 0.1) < 0


class TestExactNetTest:
    """The exact unconditional (Berger-Boos) test of "net loss > budget"."""

    @pytest.mark.parametrize("harm_rate", [0.006, 0.02, 0.05])
    def test_level_holds_at_the_null_boundary(self, harm_rate):
        """Monte Carlo at net loss == budget (the least favourable null): the test rejects
        in at most delta of the draws, up to 3 binomial standard errors."""
        n, budget, delta, runs = 2000, 0.005, 0.1, 3000
        rng = np.random.default_rng(int(harm_rate * 1e4))
        counts = rng.multinomial(n, [harm_rate, harm_rate - budget, 1 - 2 * harm_rate + budget], size=runs)
        rejected = sum(net_p_value(int(a), int(b), n, budget, delta) <= delta for a, b, _ in counts)
        assert rejected / runs <= delta + 3 * math.sqrt(delta * (1 - delta) / runs)
        assert rejected > 0  # not vacuous: it does reject at the boundary sometimes

    @pytest.mark.parametrize("t, n, alpha", [(20, 5000, 0.0044), (0, 800, 0.005), (-10, 3000, 0.002),
                                             (3, 500, 0.02), (50, 10000, 0.01)])
    def test_tail_grows_with_the_discordance(self, t, n, alpha):
        """Why the p-value's grid maximum is the supremum: the tail is non-decreasing in the
        nuisance over the confidence set, so it peaks at the set's upper end (included)."""
        psi = np.linspace(alpha, 0.2, 400)
        tail = _net_tail(t, n, alpha, psi)
        assert np.all(np.diff(tail) >= -1e-12), tail

    @pytest.mark.parametrize("harm, help_", [(60, 40), (30, 10), (100, 20), (200, 180), (20, 60)])
    def test_bound_is_valid_inversion_and_tighter_than_the_union(self, harm, help_):
        n, delta = 5000, 0.1
        u = net_upper_bound(harm, help_, n, delta)
        assert (harm - help_) / n < u < net_union_bound(harm, help_, n, delta)
        assert net_p_value(harm, help_, n, u, delta) <= delta < net_p_value(harm, help_, n, u - 1e-4, delta)

    def test_calibration_certifies_more_than_the_union_bound(self):
        g = torch.Generator().manual_seed(5)
        n = 5000
        s = torch.rand(n, generator=g)
        harm = (torch.rand(n, generator=g) < 0.03 * s.lt(0.5)).long()
        help_ = ((torch.rand(n, generator=g) < 0.02 * s.lt(0.5)) & (harm == 0)).long()
        c = calibrate_cascade([s], [harm - help_], 0.005)
        assert c.kind == "net" and c.ucb <= 0.005
        # the union bound at the exact test's threshold is above the budget: it would stop earlier
        first = cascade_route([s], c.threshold)
        exited = first == 0
        a, b = int((harm * exited).sum()), int((help_ * exited).sum())
        assert net_union_bound(a, b, n, 0.1) > 0.005
        union = calibrate_cascade([s], [harm - help_], 0.005, method="clopper-pearson-union")
        assert union.ucb <= 0.005 and union.exit_rate < c.exit_rate
        assert union.ucb == net_upper_bound(int((harm * (cascade_route([s], union.threshold) == 0)).sum()),
                                            int((help_ * (cascade_route([s], union.threshold) == 0)).sum()),
                                            n, 0.1, "clopper-pearson-union")

    @pytest.mark.parametrize("args, match", [((-1, 0, 10, 0.01), "harm -1 and help 0 must be counts"),
                                             ((6, 5, 10, 0.01), r"harm \+ help <= n=10"),
                                             ((0, 0, 0, 0.01), "need at least one calibration sample")])
    def test_bad_counts(self, args, match):
        with pytest.raises(CalibrationError, match=match):
            net_p_value(*args)

    def test_net_needs_more_samples_when_nothing_is_lost(self):
        need = min_samples(0.005, 0.1, kind="net")
        assert net_p_value(0, 0, need, 0.005) <= 0.1 < net_p_value(0, 0, need - 1, 0.005)
        assert need > min_samples(0.005, 0.1, "clopper-pearson-union", "net") > min_samples(0.005, 0.1)


class TestWindowCertificate:
    """``window=m``: the loss counted over the next ``m`` inputs stays within the budget with
    probability at least ``1 - delta`` (the population certificate bounds only the mean)."""

    @staticmethod
    def _draw(rng, n):
        # one exit; below-average scores are more often harmful, and often helpful too (a noisy net loss)
        s, u = rng.random(n), rng.random(n)
        harm, help_ = 0.16 * (1 - s) + 0.01, 0.14 * (1 - s)
        return s, np.where(u < harm, 1, np.where(u < harm + help_, -1, 0))

    def test_windows_hold_the_budget_where_the_population_certificate_does_not(self):
        """Monte Carlo of the whole procedure: calibrate on 4000 samples, count the net loss
        over a fresh window of 500. Certified for the population, the window exceeds the
        budget far more often than delta; certified for the window, at most delta."""
        n, m, budget, delta, runs = 4000, 500, 0.01, 0.1, 150
        over, exit_rates = {}, []
        for window in (None, m):
            rng = np.random.default_rng(3)
            bad = 0
            for _ in range(runs):
                s, loss = self._draw(rng, n)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", CalibrationWarning)
                    c = calibrate_threshold(torch.tensor(s), torch.tensor(loss), budget, delta, max_candidates=40,
                                            window=window)
                assert c.window == window
                s2, loss2 = self._draw(rng, m)
                bad += int((loss2 * (s2 >= c.threshold)).sum() > budget * m)
                if window:
                    exit_rates.append(c.exit_rate)
            over[window] = bad / runs
        se = math.sqrt(delta * (1 - delta) / runs)
        assert over[m] <= delta + 3 * se, over
        assert over[None] > delta + 3 * se, over  # why the window certificate exists
        assert np.median(exit_rates) > 0.1  # not vacuous: it does let samples exit

    @pytest.mark.parametrize("delta, n, m", [(0.1, 5000, 5000), (0.05, 4000, 500), (0.2, 1000, 20000)])
    def test_levels_spend_exactly_delta(self, delta, n, m):
        u, rho = window_levels(delta, n, m)
        spent = u[0] + sum((b - a) * r for a, b, r in zip(u, u[1:] + (1.0,), rho))
        assert delta - 1e-9 <= spent + 1e-9 and spent <= delta + 1e-12
        assert all(a < b for a, b in zip(u, u[1:])) and all(a > b for a, b in zip(rho, rho[1:]))

    @pytest.mark.parametrize("m, budget, u", [(5000, 0.0044, 0.05), (500, 0.01, 0.3), (100, 0.05, 0.01)])
    def test_window_budget_is_the_binomial_boundary(self, m, budget, u):
        from scipy.stats import binom
        b = window_budget(m, budget, u)
        t = math.floor(budget * m + 1e-9)
        assert binom.sf(t, m, b) <= u + 1e-12 and u < binom.sf(t, m, b + 1e-6)

    @pytest.mark.parametrize("m, budget", [(5000, 0.0044), (500, 0.01)])
    def test_window_means_are_at_most_one_step_below_the_boundary(self, m, budget):
        """Every boundary returned has the window's exact tail within ``u`` (valid), and a
        quarter of the window's noise above it the tail exceeds ``u`` (tight)."""
        psi = np.array([0.005, 0.013, 0.05, 0.2])
        u = np.array([0.02, 0.1, 0.3, 0.6])
        mu = _window_means(psi, m, budget, u)
        t = math.floor(budget * m + 1e-9)
        for p, q, v in zip(psi, u, mu):
            if not math.isfinite(v):  # no null at this discordance: even all-harm stays within
                assert _net_tail(t, m, p, np.array([p]))[0] >= 1 - q
                continue
            assert _net_tail(t, m, v, np.array([p]))[0] >= 1 - q
            above = min(v + 0.3 * math.sqrt(p / m), p)
            assert _net_tail(t, m, above, np.array([p]))[0] < 1 - q

    def test_a_window_asks_more_than_the_population(self):
        assert net_p_value(30, 20, 5000, 0.0044) <= 0.1 and not window_test(30, 20, 5000, 0.0044, 5000)
        assert window_test(0, 0, 5000, 0.0044, 5000)
        assert window_test(0, 0, 5000, 0.0044, 5000, kind="harm")
        need = min_samples(0.0044, 0.1, kind="net", window=5000)
        assert window_test(0, 0, need, 0.0044, 5000) and not window_test(0, 0, need - 1, 0.0044, 5000)
        assert need > min_samples(0.0044, 0.1, kind="net")

    def test_the_net_null_reaches_below_the_budget(self):
        """A net rate of 0.7 % against a 1 % budget (140 harms in 20 000 samples) exceeds the
        budget on a window of 2000 with probability 4.5 % at the point estimate, and more
        within the rate's uncertainty: the window's null holds discordances below the budget,
        and the net test must look there (looking from the budget up, it certified these
        counts). Over a window of 200 000 the same counts are certified."""
        assert not window_test(140, 0, 20_000, 0.01, 2000)
        assert window_test(140, 0, 20_000, 0.01, 200_000)

    def test_uncertified_note_names_the_window(self):
        s = torch.rand(300, generator=torch.Generator().manual_seed(0))
        with pytest.warns(CalibrationWarning, match="over a window of 1000 inputs"):
            c = calibrate_threshold(s, torch.zeros(300, dtype=torch.long), 0.005, window=1000)
        assert not c.certified and c.window == 1000

    @pytest.mark.parametrize("kwargs, match", [
        (dict(window=0), "window must be a positive whole number of inputs.*got 0"),
        (dict(window=2.5), "window must be a positive whole number.*got 2.5"),
        (dict(window=True), "window must be a positive whole number.*got True"),
        (dict(window=100, method="hoeffding"), "method must be 'clopper-pearson' with window=100, got 'hoeffding'")])
    def test_bad_window(self, kwargs, match):
        s = torch.rand(100)
        with pytest.raises(CalibrationError, match=match):
            calibrate_threshold(s, torch.zeros(100, dtype=torch.long), 0.05, **kwargs)
        with pytest.raises(CalibrationError, match="window"):
            calibrate_exits([s], [torch.zeros(100, dtype=torch.long)], 0.05, [1.0, 2.0], **kwargs)

    def test_window_test_needs_a_window(self):
        with pytest.raises(CalibrationError, match="use net_p_value for the population risk"):
            window_test(0, 0, 100, 0.05, None)


class TestNoiseAwarePath:
    """The per-exit path ranks steps by the risk the test will see: the mean net loss plus
    the margin the test demands at the vector's discordance (``_net_margin``)."""

    @pytest.mark.parametrize("window", [None, 1000])
    def test_margin_is_the_tests_own_boundary(self, window):
        """At each discordance it was measured at, the margin puts the net rate exactly on
        the test's boundary: that harm count passes, one more harm (one fewer help) fails."""
        hits = 0
        n, budget, delta = 2000, 0.01, 0.1
        margin = _net_margin(n, budget, delta, "clopper-pearson", window)
        for d in (10, 20, 40, 80, 160, 320):
            rate = budget - float(margin(np.array(d / n)))
            h = (rate * n + d) / 2
            assert abs(h - round(h)) < 1e-6, (d, h)
            h = round(h)
            assert _passes(h, d - h, n, budget, delta, "clopper-pearson", "net", window)
            hits += h < d
            if h < d:  # (at h == d even an all-harm count passes: the margin is what is left of the budget)
                assert not _passes(h + 1, d - h - 1, n, budget, delta, "clopper-pearson", "net", window)
        assert hits >= 4  # most points are on a boundary inside the range
        psi = np.array([0.005, 0.02, 0.08])
        population = _net_margin(n, budget, delta, "clopper-pearson")
        if window is not None:  # the window's own noise needs more margin
            assert (margin(psi) > population(psi)).all()
        assert np.all(np.diff(margin(psi)) > 0)  # more discordance, more margin

    def test_path_prefers_a_clean_step_to_a_noisy_one_of_zero_mean(self):
        """Exit 0's first step lets half the samples out with 10 % harms and 10 % helps (net
        loss 0); exit 1's lets half out with 1 % harms. The plain path takes the zero-mean
        step first; with the test's margin, the noisy step is the riskier one."""
        n = 1000
        S = np.zeros((2, n))
        S[0, :500] = S[1, :500] = 1.0  # the first 500 pass either exit's first step
        L = np.zeros((3, n), dtype=np.int64)
        L[0, :50], L[0, 50:100] = 1, -1  # exit 0 on the first 500: 10 % harm, 10 % help
        L[1, :5] = 1  # exit 1 on the first 500: 1 % harm
        C = np.array([1.0, 2.0, 4.0])
        plain = _greedy_path(S, L, C, grid=2)
        noisy = _greedy_path(S, L, C, grid=2, margin=_net_margin(n, 0.02, 0.1, "clopper-pearson", 1000))
        assert plain[0] == (1.0, math.inf) and noisy[0] == (math.inf, 1.0)


def calibrate_threshold_(s, losses):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        return calibrate_cascade([s], [losses], 0.01, 0.1)


def test_per_exit_path_learned_on_other_data_tests_on_every_calibration_sample():
    g = torch.Generator().manual_seed(4)

    def draw(n):
        s1, s2 = torch.rand(n, generator=g), torch.rand(n, generator=g)
        return [s1, s2], [(s1 < 0.5).long(), (s2 < 0.1).long()]
    s, l = draw(3000)
    ls, ll = draw(1000)
    c = calibrate_exits(s, l, 0.02, costs=[1.0, 2.0, 4.0], learn=(ls, ll))
    assert c.n == 3000 and c.certified and c.ucb <= 0.02
    with pytest.raises(CalibrationError, match="learn has scores for 1 exits; the calibration data for 2"):
        calibrate_exits(s, l, 0.02, costs=[1.0, 2.0, 4.0], learn=(ls[:1], ll[:1]))


def test_learning_data_choose_between_the_path_and_a_shared_threshold():
    """Two synthetic exits whose loss rate jumps below a score cut. In the first setting
    the greedy path, myopic, stops at a costlier vector than one shared threshold does; in
    the second the path is much cheaper. The learning data (drawn like the calibration data)
    choose the sequence each time, the choice is the one that is cheaper on the calibration
    data too, and the thresholds are those of that sequence alone."""
    costs = [1.0, 2.0, 4.0]

    def draw(g, n, a1, c1, a2, c2):  # exit j is wrong with probability a_j below score c_j
        s = [torch.rand(n, generator=g), torch.rand(n, generator=g)]
        return s, [(torch.rand(n, generator=g) < a * (x < c).double()).long() for x, a, c in zip(s, (a1, a2), (c1, c2))]

    def mean_cost(c, s):
        return torch.tensor(costs)[cascade_route(s, c.vector)].mean().item()
    for setting, want in (((0.2, 0.3, 0.05, 0.9), "shared"), ((0.2, 0.6, 0.05, 0.3), "path")):
        g = torch.Generator().manual_seed(5)
        s, l = draw(g, 4000, *setting)
        learn = draw(g, 2000, *setting)
        both = calibrate_exits(s, l, 0.02, costs=costs, learn=learn)
        only = {q: calibrate_exits(s, l, 0.02, costs=costs, learn=learn, sequences=(q,)) for q in ("path", "shared")}
        assert both.sequence == want and both.thresholds == only[want].thresholds and both.ucb <= 0.02
        other = "path" if want == "shared" else "shared"
        assert mean_cost(both, s) < mean_cost(only[other], s) - 0.1
        assert len(set(only["shared"].thresholds)) == 1 and only[other].sequence == other


def test_learned_gate_on_a_language_model_reads_the_top_probabilities():
    """A vocabulary of thousands: the gate reads the top-k softmax probabilities, not all."""
    from graphs.models import pangu_embedded
    from policies.gating import decision_inputs

    torch.manual_seed(0)
    dm = attach_exits(pangu_embedded("tiny"), [1]).eval()
    ids = torch.randint(0, dm.num_classes, (64, 6), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        hid, outs = dm.forward_hidden(ids)
    view, last = decision_inputs(dm.gate_view(hid[0]), outs[0])
    _, final = decision_inputs(dm.gate_view(hid[0]), outs[1])
    gate = LearnedGate(pool_hidden(view).shape[1], dm.num_classes, top_k=16)
    assert gate.net[0].in_features == pool_hidden(view).shape[1] + 16 + 3
    gate.fit(view, last, final, epochs=2)
    gate.threshold = float(gate.scores(view, last).median())
    out = run_gated(dm, Cascade({1: gate}), ids)
    assert 0 < int((out.exit_depth == 1).sum()) < 64
