"""The host CPU's numbers (hardening item 8): enough timed work, a median over batches
with outliers rejected, the calibrated profile used where one exists, and a warning when a
measurement is more than 3x away from it."""
from __future__ import annotations

import itertools
import warnings

import pytest

import executors.profiles as profiles
from executors.devices import DeviceSpec
from executors.errors import ExecutorError
from executors.measure import (HOST_MIN_SECONDS, HOST_PROFILE_ENV, ProfileMismatchWarning, check_against_profile,
                               host_profile_path, measure_host, measure_rate, robust_median)


class FakeClock:
    """A clock that advances by a scripted duration per timed region: each call to
    ``work`` advances it by the next duration."""

    def __init__(self, durations):
        self.t = 0.0
        self.durations = iter(durations)

    def now(self):
        return self.t

    def work(self):
        self.t += next(self.durations)


class TestRobustMedian:
    def test_rejects_the_reported_outlier(self):
        # the five start-up measurements of the issue, GFLOP/s
        med, kept, rejected = robust_median([128, 110, 104, 129, 2.3])
        assert rejected == [2.3] and med == pytest.approx(119.0)

    def test_rejects_a_high_outlier_too(self):
        med, _, rejected = robust_median([10, 10.2, 9.9, 10.1, 500])
        assert rejected == [500] and med == pytest.approx(10.05)

    def test_keeps_identical_samples(self):
        assert robust_median([5.0] * 6) == (5.0, [5.0] * 6, [])

    def test_rejects_empty_or_non_finite(self):
        with pytest.raises(ExecutorError, match="finite samples"):
            robust_median([])
        with pytest.raises(ExecutorError, match="finite samples"):
            robust_median([1.0, float("nan")])


class TestMeasureRate:
    def test_outlier_batch_is_rejected(self):
        # warm-up, one probe call, then 7 batches of one call: the third is preempted (100x)
        clock = FakeClock([0.01, 0.01] + [0.01, 0.01, 1.0, 0.01, 0.01, 0.01, 0.01] + [0.01] * 50)
        r = measure_rate(clock.work, 1e9, min_seconds=0.07, samples=7, now=clock.now)
        assert r.batch == 1 and r.rejected == 1
        assert r.value == pytest.approx(1e11)
        assert min(r.samples) == pytest.approx(1e9)  # the slow batch was timed, then rejected

    def test_times_at_least_min_seconds(self):
        clock = FakeClock(itertools.repeat(0.001))
        r = measure_rate(clock.work, 1.0, min_seconds=0.05, samples=5, now=clock.now)
        assert r.seconds >= 0.05 - 1e-12 and r.batch == 10
        assert r.value == pytest.approx(1000.0)

    def test_keeps_adding_batches_when_the_probe_was_slow(self):
        # the probe call is 20x slower than the rest, so batches come out short: more are run
        clock = FakeClock([0.02, 0.02] + [0.001] * 500)
        r = measure_rate(clock.work, 1.0, min_seconds=0.05, samples=5, now=clock.now)
        assert r.batch == 1 and len(r.samples) == 20  # capped at 4 x samples
        assert r.value == pytest.approx(1000.0)

    def test_default_budget_is_at_least_50ms(self):
        assert HOST_MIN_SECONDS >= 0.05

    def test_bad_arguments(self):
        with pytest.raises(ExecutorError, match="samples must be an int >= 3"):
            measure_rate(lambda: None, 1.0, samples=1)
        with pytest.raises(ExecutorError, match="units must be a finite number > 0"):
            measure_rate(lambda: None, 0.0)


def _stored(tmp_path, flops: float, bw: float):
    spec = DeviceSpec("host-cpu", "cpu", {"float32": flops}, bw, 8e9,
                      sources={"peak_flops.float32": "test profile"})
    path = tmp_path / "host-cpu.toml"
    profiles.save(spec, path)
    return str(path)


class TestMeasureHost:
    def test_measured_spec_says_how(self):
        s = measure_host("cpu", profile=False, min_seconds=0.01)
        assert s.name == "cpu" and s.kind == "cpu" and s.peak_flops["float32"] > 1e6
        assert "median of" in s.sources["peak_flops.float32"]
        assert "outliers rejected" in s.sources["mem_bandwidth"]

    def test_uses_the_calibrated_profile(self, tmp_path):
        m = measure_host(profile=False, min_seconds=0.01)
        path = _stored(tmp_path, m.peak_flops["float32"] * 1.5, m.mem_bandwidth)
        with warnings.catch_warnings():
            warnings.simplefilter("error", ProfileMismatchWarning)
            s = measure_host("cpu:1", profile=path, min_seconds=0.01)
        assert s.name == "cpu:1" and s.peak_flops["float32"] == pytest.approx(m.peak_flops["float32"] * 1.5)
        assert s.sources["peak_flops.float32"] == "test profile"

    def test_warns_when_far_from_the_profile(self, tmp_path):
        m = measure_host(profile=False, min_seconds=0.01)
        path = _stored(tmp_path, m.peak_flops["float32"] * 50, m.mem_bandwidth)
        with pytest.warns(ProfileMismatchWarning, match=r"host CPU peak_flops.float32 measured .* is \d+\.\dx below "
                                                        r"the calibrated profile .*more than 3x apart"):
            s = measure_host(profile=path, min_seconds=0.01)
        assert s.peak_flops["float32"] == pytest.approx(m.peak_flops["float32"] * 50)

    def test_profile_found_through_the_environment(self, tmp_path, monkeypatch):
        path = _stored(tmp_path, 1e11, 2e10)
        monkeypatch.setenv(HOST_PROFILE_ENV, path)
        assert host_profile_path() == path
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ProfileMismatchWarning)
            assert measure_host(min_seconds=0.01).mem_bandwidth == 2e10

    def test_default_profile_location(self, tmp_path, monkeypatch):
        monkeypatch.delenv(HOST_PROFILE_ENV, raising=False)
        monkeypatch.chdir(tmp_path)
        assert host_profile_path() is None
        (tmp_path / "out").mkdir()
        _stored(tmp_path / "out", 1e11, 2e10)
        assert host_profile_path() == "out/host-cpu.toml"

    def test_restores_torch_threads(self):
        import torch

        before = torch.get_num_threads()
        measure_host(profile=False, threads=1, min_seconds=0.01)
        assert torch.get_num_threads() == before


class TestCheckAgainstProfile:
    spec = DeviceSpec("cpu", "cpu", {"float32": 1e11}, 2e10, 8e9)

    def test_within_3x_is_quiet(self):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert check_against_profile({"peak_flops.float32": 0.4e11, "mem_bandwidth": 5e10}, self.spec) == []

    def test_both_directions_warn(self):
        with pytest.warns(ProfileMismatchWarning) as rec:
            msgs = check_against_profile({"peak_flops.float32": 2.3e9, "mem_bandwidth": 7e10}, self.spec)
        assert len(msgs) == 2 and len(rec) == 2
        assert "43.5x below" in msgs[0] and "3.5x above" in msgs[1]

    def test_unknown_dtype_is_skipped(self):
        assert check_against_profile({"peak_flops.float16": 1.0}, self.spec) == []
