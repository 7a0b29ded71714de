"""Profiles reject absurd numbers at load (hardening item 12): each number must lie in its
sane range, and the error names the field, the value and the range."""
from __future__ import annotations

import re

import pytest

import executors.profiles as profiles
from executors.errors import ProfileError

BASE = {
    "mem_bandwidth": "1e9",
    "mem_capacity": "2e9",
    "launch_overhead": "1e-5",
    "active_power": "10.0",
    "idle_power": "2.0",
}


def profile(tmp_path, flops="4e12", dtype="float16", link=None, **numbers):
    lines = ['name = "toy"', 'kind = "npu"']
    for k, v in {**BASE, **numbers}.items():
        lines.append(f"{k} = {{ value = {v}, source = \"test\" }}")
    lines += ["[peak_flops]", f'{dtype} = {{ value = {flops}, source = "test" }}']
    if link:
        lines += ["[host_link]"] + [f"{k} = {v}" for k, v in link.items()]
    p = tmp_path / "p.toml"
    p.write_text("\n".join(lines) + "\n")
    return str(p)


def test_a_sane_profile_loads(tmp_path):
    spec = profiles.load(profile(tmp_path))
    assert spec.peak_flops["float16"] == 4e12 and spec.launch_overhead == 1e-5


@pytest.mark.parametrize("field, value, rng", [
    ("mem_bandwidth", "1e-3", r"\[1e\+06, 1e\+14\] bytes/s"),
    ("mem_bandwidth", "1e20", r"\[1e\+06, 1e\+14\] bytes/s"),
    ("mem_capacity", "10.0", r"\[1e\+06, 1e\+15\] bytes"),
    ("launch_overhead", "1e300", r"\[0, 1\] s"),
    ("launch_overhead", "-1e-6", r"\[0, 1\] s"),
    ("active_power", "1e9", r"\[0, 100000\] W"),
    ("idle_power", "-1.0", r"\[0, 100000\] W"),
])
def test_out_of_range_number(tmp_path, field, value, rng):
    with pytest.raises(ProfileError, match=rf"p\.toml: field '{field}' = {re.escape(repr(float(value)))} .* is "
                                           rf"outside the sane range {rng}"):
        profiles.load(profile(tmp_path, **{field: value}))


@pytest.mark.parametrize("flops", ["1e-300", "10.0", "1e19"])
def test_peak_flops_out_of_range(tmp_path, flops):
    with pytest.raises(ProfileError, match=r"field 'peak_flops.float16' = .* FLOP/s is outside the sane range "
                                           r"\[1e\+06, 1e\+18\] FLOP/s"):
        profiles.load(profile(tmp_path, flops=flops))


def test_peak_flops_unknown_dtype(tmp_path):
    with pytest.raises(ProfileError, match=r"field 'peak_flops' has unknown dtype 'float99'; valid dtypes: .*float16"):
        profiles.load(profile(tmp_path, dtype="float99"))


def test_host_link_ranges(tmp_path):
    with pytest.raises(ProfileError, match=r"field 'host_link.latency' = 1e\+300 s is outside the sane range"):
        profiles.load(profile(tmp_path, link={"bandwidth": "1e10", "latency": "1e300"}))
    with pytest.raises(ProfileError, match=r"field 'host_link.bandwidth' = 5.0 bytes/s is outside"):
        profiles.host_link(profile(tmp_path, link={"bandwidth": "5.0"}))


def test_every_builtin_profile_is_in_range():
    for name in profiles.available():
        spec = profiles.load(name)
        for dt, v in spec.peak_flops.items():
            lo, hi, _ = profiles.SANE_RANGES["peak_flops"]
            assert lo <= v <= hi, (name, dt)


def test_json_profile_is_checked_too(tmp_path):
    import json

    p = tmp_path / "p.json"
    p.write_text(json.dumps({"name": "j", "kind": "gpu", "peak_flops": {"float32": 1e-300},
                             "mem_bandwidth": 5e10, "mem_capacity": 1e9}))
    with pytest.raises(ProfileError, match=r"'peak_flops.float32' = 1e-300 FLOP/s is outside the sane range"):
        profiles.load(str(p))
