"""scheduler.cluster: device names, the cluster they form, and the names scheduler.runtime
still re-exports from it and from scheduler.signature."""
from __future__ import annotations

import pytest
import torch

from executors import profiles
from executors.devices import DEFAULT_LINK
from graphs.errors import UnknownNameError
from scheduler import cluster, runtime, signature
from scheduler.cluster import (DEVICE_FORMS, HOST_COPY_LATENCY, _parse_device, build_cluster,
                               host_copy_link, host_spec)
from scheduler.errors import RuntimeConfigError

BAD_CPU_NAMES = ["cpu:x", "cpu:-1", "cpu:", "cpu:1.5", "cpu:²", "cpu:0:1"]


class TestParseDevice:
    @pytest.mark.parametrize("name, parsed", [
        ("cpu", ("cpu", "")), ("cpu:0", ("cpu", "0")), ("cpu:12", ("cpu", "12")),
        ("cuda:1", ("cuda", "1")), ("npu", ("npu", "")), ("sim:host-cpu", ("sim", "host-cpu")),
    ])
    def test_valid_forms(self, name, parsed):
        assert _parse_device(name) == parsed

    @pytest.mark.parametrize("name", BAD_CPU_NAMES)
    def test_bad_cpu_index_lists_the_valid_forms(self, name):
        with pytest.raises(UnknownNameError, match=rf"unknown device '{name}'; valid choices: cpu, "
                                                   r"cpu:<N>, cuda:<N>, npu:<N>, sim:<profile"):
            _parse_device(name)

    def test_not_a_string(self):
        with pytest.raises(RuntimeConfigError, match=r"non-empty string, got 3; valid forms: cpu, cpu:<N>"):
            _parse_device(3)

    def test_forms_name_cpu_n(self):
        assert "cpu:<N>" in DEVICE_FORMS


class TestBuildCluster:
    def test_named_cpus_get_the_host_spec_under_their_own_names(self):
        c = build_cluster(["cpu:0", "cpu:1"])
        host = host_spec()
        assert c.names == ("cpu:0", "cpu:1")
        for d in c.names:
            s = c.spec(d)
            assert s.name == d and s.kind == "cpu"
            assert dict(s.peak_flops) == dict(host.peak_flops)
            assert (s.mem_bandwidth, s.mem_capacity) == (host.mem_bandwidth, host.mem_capacity)

    def test_link_between_named_cpus_is_a_host_memory_copy(self):
        c = build_cluster(["cpu:0", "cpu:1", "cpu:7"])
        host = host_spec()
        link = c.link("cpu:0", "cpu:1")
        assert link == host_copy_link(host)
        assert link.bandwidth == host.mem_bandwidth / 2 and link.latency == HOST_COPY_LATENCY
        assert "host memory copy" in link.source
        assert c.link("cpu:1", "cpu:0") == link and c.link("cpu:0", "cpu:7") == link

    def test_cpu_and_cpu_0_are_distinct_devices(self):
        c = build_cluster(["cpu", "cpu:0"])
        assert c.names == ("cpu", "cpu:0")
        assert c.spec("cpu").name == "cpu" and c.spec("cpu:0").name == "cpu:0"
        assert c.link("cpu", "cpu:0") == host_copy_link(host_spec())

    @pytest.mark.parametrize("cpu", ["cpu", "cpu:3"])
    def test_links_to_other_devices_as_for_cpu(self, cpu):
        c = build_cluster([cpu, "sim:atlas-200i-a2", "sim:edge-cpu-a76"])
        assert c.link(cpu, "sim:atlas-200i-a2") == profiles.host_link("atlas-200i-a2")
        assert c.link(cpu, "sim:edge-cpu-a76") == DEFAULT_LINK  # two hosts: the default link

    @pytest.mark.parametrize("name", BAD_CPU_NAMES)
    def test_bad_cpu_names_rejected(self, name):
        with pytest.raises(UnknownNameError, match=r"valid choices: cpu, cpu:<N>, cuda:<N>"):
            build_cluster(["cpu:0", name])


class TestRuntimeReExports:
    def test_moved_names_still_import_from_runtime(self):
        assert runtime.InputSignature is signature.InputSignature
        assert runtime.TensorSpec is signature.TensorSpec
        for name in ("DEVICE_FORMS", "build_cluster", "host_spec", "_parse_device", "_init_loopback_ray"):
            assert getattr(runtime, name) is getattr(cluster, name)
        assert set(runtime.__all__) >= {"InputSignature", "TensorSpec", "DEVICE_FORMS", "host_spec",
                                        "build_cluster"}


class TestRuntimeDeviceNames:
    """Device names are checked before any capture or Ray start."""

    def test_literal_duplicate_rejected(self):
        from scheduler.runtime import Runtime

        with pytest.raises(RuntimeConfigError, match="listed twice: cpu:1"):
            Runtime(torch.nn.Linear(2, 2), torch.zeros(1, 2), devices=["cpu:0", "cpu:1", "cpu:1"])

    @pytest.mark.parametrize("name", ["cpu:x", "cpu:-1"])
    def test_bad_cpu_index_rejected(self, name):
        from scheduler.runtime import Runtime

        with pytest.raises(UnknownNameError, match=rf"unknown device '{name}'.*cpu:<N>"):
            Runtime(torch.nn.Linear(2, 2), torch.zeros(1, 2), devices=["cpu:0", name])
