"""Built-in device profiles: loading, sources, errors, save/load round trips, clusters."""
from __future__ import annotations

import json
import math

import pytest

import executors.profiles as profiles
from executors.devices import DeviceSpec
from executors.errors import ProfileError
from graphs.errors import UnknownNameError

GOOD = """
name = "toy"
kind = "npu"
description = "a toy"
mem_bandwidth = { value = 1e9, source = "made up" }
mem_capacity = 2e9
[peak_flops]
float16 = { value = 4e12, source = "made up too" }
"""


def write(tmp_path, text, name="p.toml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


class TestBuiltins:
    def test_available_lists_the_five_profiles(self):
        assert set(profiles.available()) >= {"atlas-200i-a2", "jetson-orin-nx", "edge-cpu-a76",
                                              "a100-pcie", "host-cpu"}

    @pytest.mark.parametrize("name", profiles.available())
    def test_every_number_has_a_source(self, name):
        spec = profiles.load(name)
        keys = [f"peak_flops.{dt}" for dt in spec.peak_flops] + [
            "mem_bandwidth", "mem_capacity", "launch_overhead", "active_power", "idle_power"]
        if profiles.host_link(name) is not None:
            keys += ["host_link.bandwidth", "host_link.latency"]
        for k in keys:
            assert spec.sources.get(k, "").strip(), f"{name}: {k} has no source"

    def test_host_cpu_is_measured_here(self):
        spec = profiles.load("host-cpu")
        assert spec.kind == "cpu"
        assert "measured here with command" in spec.sources["peak_flops.float32"]
        assert "python -m executors.calibrate" in spec.sources["mem_bandwidth"]

    def test_spec_sheet_values(self):
        a100 = profiles.load("a100-pcie")
        assert a100.flops_for("bfloat16") == 312e12 and a100.mem_bandwidth == 1.935e12
        atlas = profiles.load("atlas-200i-a2")
        assert atlas.kind == "npu" and atlas.peak_flops["int8"] == 20e12
        # no bfloat16 on the 310B cube: falls back to float32 (documented in the file)
        assert atlas.flops_for("bfloat16") == atlas.peak_flops["float32"]

    def test_rename(self):
        assert profiles.load("edge-cpu-a76", name="cpu1").name == "cpu1"

    def test_show_lists_sources(self):
        text = profiles.show("jetson-orin-nx")
        assert "102.4 GB/s" in text and "spec sheet: Jetson Orin NX 16GB" in text


class TestErrors:
    def test_unknown_name_lists_available(self):
        with pytest.raises(UnknownNameError, match=r"unknown profile 'tpu-v9'; valid choices: .*atlas-200i-a2"):
            profiles.load("tpu-v9")

    def test_missing_file(self, tmp_path):
        with pytest.raises(ProfileError, match=r"profile file .*nope.toml' does not exist"):
            profiles.load(str(tmp_path / "nope.toml"))

    def test_malformed_toml(self, tmp_path):
        p = write(tmp_path, 'name = "x"\nkind = \n')
        with pytest.raises(ProfileError, match=r"p\.toml: cannot parse"):
            profiles.load(p)

    def test_missing_field_names_field_and_file(self, tmp_path):
        p = write(tmp_path, GOOD.replace("mem_capacity = 2e9\n", ""))
        with pytest.raises(ProfileError, match=r"p\.toml: missing required field 'mem_capacity'"):
            profiles.load(p)

    def test_wrong_type(self, tmp_path):
        p = write(tmp_path, GOOD.replace("mem_capacity = 2e9", 'mem_capacity = "lots"'))
        with pytest.raises(ProfileError, match=r"field 'mem_capacity' must be a finite number.*'lots'"):
            profiles.load(p)

    def test_wrong_type_inside_peak_flops(self, tmp_path):
        p = write(tmp_path, GOOD.replace("value = 4e12", "value = true"))
        with pytest.raises(ProfileError, match=r"field 'peak_flops.float16' must be a finite number"):
            profiles.load(p)

    def test_unknown_field(self, tmp_path):
        p = write(tmp_path, "mem_bandwith = 1.0\n" + GOOD)
        with pytest.raises(ProfileError, match=r"unknown field\(s\) mem_bandwith; valid fields: .*mem_bandwidth"):
            profiles.load(p)

    def test_bad_value_from_devicespec_names_file(self, tmp_path):
        p = write(tmp_path, GOOD.replace('kind = "npu"', 'kind = "fpga"'))
        with pytest.raises(ProfileError, match=r"p\.toml: device 'toy': unknown kind 'fpga'; valid kinds: cpu, gpu, npu"):
            profiles.load(p)

    def test_unknown_op_kind(self, tmp_path):
        p = write(tmp_path, 'supported_kinds = ["matmul", "fft"]\n' + GOOD)
        with pytest.raises(ProfileError, match=r"unknown op kind\(s\) \['fft'\]"):
            profiles.load(p)

    def test_host_link_without_bandwidth(self, tmp_path):
        p = write(tmp_path, GOOD + "[host_link]\nlatency = 1e-6\n")
        with pytest.raises(ProfileError, match=r"missing required field 'host_link.bandwidth'"):
            profiles.load(p)


class TestFormats:
    def test_toml_minimal_loads(self, tmp_path):
        spec = profiles.load(write(tmp_path, GOOD))
        assert spec.peak_flops["float16"] == 4e12 and spec.mem_capacity == 2e9
        assert spec.sources["mem_bandwidth"] == "made up"
        assert spec.sources["mem_capacity"] == ""  # a bare number carries no source
        assert spec.launch_overhead == 0.0

    def test_json_loads(self, tmp_path):
        d = {"name": "j", "kind": "gpu", "peak_flops": {"float32": {"value": 1e12, "source": "s"}},
             "mem_bandwidth": 5e10, "mem_capacity": 1e9, "supported_kinds": ["matmul"]}
        spec = profiles.load(write(tmp_path, json.dumps(d), "j.json"))
        assert spec.kind == "gpu" and spec.supports("matmul") and not spec.supports("norm")

    @pytest.mark.parametrize("ext", ["toml", "json"])
    def test_save_round_trip(self, tmp_path, ext):
        spec = profiles.load("jetson-orin-nx")
        link = profiles.host_link("jetson-orin-nx")
        p = str(tmp_path / f"copy.{ext}")
        profiles.save(spec.replace(supported_kinds=frozenset({"matmul", "norm"})), p, link=link)
        back = profiles.load(p)
        for f in ("name", "kind", "mem_bandwidth", "mem_capacity", "launch_overhead",
                  "active_power", "idle_power", "description"):
            assert getattr(back, f) == getattr(spec, f)
        assert dict(back.peak_flops) == dict(spec.peak_flops)
        assert dict(back.sources) == dict(spec.sources)
        assert back.supported_kinds == frozenset({"matmul", "norm"})
        assert profiles.host_link(p).bandwidth == link.bandwidth


class TestCluster:
    def test_links_are_host_links_in_series(self):
        c = profiles.cluster({"npu": "atlas-200i-a2", "gpu": "jetson-orin-nx", "cpu": "edge-cpu-a76"})
        a, b = profiles.host_link("atlas-200i-a2"), profiles.host_link("jetson-orin-nx")
        l = c.link("npu", "gpu")
        # 1/bw = 1/10e9 + 1/20e9 -> 6.667e9; latencies 50 us + 10 us
        assert l.bandwidth == pytest.approx(1 / (1 / 10e9 + 1 / 20e9))
        assert l.latency == pytest.approx(60e-6)
        assert l.time(1e6) == pytest.approx(a.time(1e6) + b.time(1e6))
        assert c.link("cpu", "npu").bandwidth == a.bandwidth  # the host adds nothing
        assert c.spec("npu").name == "npu"

    def test_two_hosts_use_default_link(self):
        c = profiles.cluster(["edge-cpu-a76", "host-cpu"])
        assert c.link("edge-cpu-a76", "host-cpu") is c.default_link
        assert math.isfinite(c.link("host-cpu", "edge-cpu-a76").time(1.0))


def test_loaded_spec_is_a_devicespec():
    assert all(isinstance(profiles.load(n), DeviceSpec) for n in profiles.available())
