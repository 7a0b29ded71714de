"""How a Runtime gets its Ray: devices the cluster cannot host fail fast, an unreachable
``ray_address`` fails fast, and the embedded Ray never joins a cluster it was not asked to.

The checks themselves (:func:`scheduler.cluster.check_placeable`,
:func:`scheduler.cluster.warn_unpinned_sim`, :func:`scheduler.cluster.probe_ray_address`)
are tested on hand-built node lists; the Runtime paths use the session's shared Ray, or a
subprocess where the test needs a Ray of its own.
"""
from __future__ import annotations

import importlib.util  # noqa: F401  (skipif conditions)
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings

import pytest
import torch

from scheduler.cluster import (CONNECT_TIMEOUT, actor_demand, check_client_support,
                               check_placeable, probe_ray_address, warn_unpinned_sim)
from scheduler.errors import RuntimeConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _node(ip: str, alive: bool = True, **resources: float) -> dict:
    """One entry of ``ray.nodes()``, as Ray reports it."""
    res = {f"node:{ip}": 1.0, "memory": 8e9, "object_store_memory": 2e9, **resources}
    return {"NodeManagerAddress": ip, "Alive": alive, "Resources": res}


def _within(seconds: float, fn):
    """``fn()``'s result or exception, or a failed test if it has not returned in
    ``seconds`` (the call is left running in a daemon thread: a regression fails, not hangs)."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        pytest.fail(f"did not return within {seconds} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = ROOT
    return env


# ------------------------------------------------------------ resources the cluster lacks
class TestActorDemand:
    def test_resources_an_actor_asks_for(self):
        assert actor_demand({"num_cpus": 0, "num_gpus": 1}) == {"GPU": 1}
        assert actor_demand({"num_cpus": 0, "resources": {"NPU": 1}}) == {"NPU": 1}
        assert actor_demand({"num_cpus": 2, "resources": {"sim_x": 0.01}}) == {"CPU": 2,
                                                                                 "sim_x": 0.01}
        assert actor_demand({"num_cpus": 0}) == {}


class TestCheckPlaceable:
    def test_a_gpu_device_on_cpu_only_nodes_names_device_resource_and_nodes(self):
        nodes = [_node("10.0.0.1", CPU=4.0), _node("10.0.0.2", CPU=8.0, sim_x=1.0)]
        with pytest.raises(RuntimeConfigError,
                           match=r"device cuda:0 needs Ray resource GPU=1.*no node has it.*"
                                 r"10\.0\.0\.1: CPU=4; 10\.0\.0\.2: CPU=8, sim_x=1") as e:
            check_placeable({"cpu": {}, "cuda:0": {"GPU": 1}}, nodes)
        assert "memory" not in str(e.value) and "node:" not in str(e.value)

    def test_an_npu_device_without_the_npu_resource(self):
        with pytest.raises(RuntimeConfigError, match=r"device npu:0 needs Ray resource NPU=1"):
            check_placeable({"npu:0": {"NPU": 1}}, [_node("127.0.0.1", CPU=4.0)])

    def test_more_devices_than_the_cluster_has_of_a_resource(self):
        nodes = [_node("10.0.0.1", CPU=4.0, GPU=1.0)]
        check_placeable({"cuda:0": {"GPU": 1}}, nodes)  # one fits
        with pytest.raises(RuntimeConfigError,
                           match=r"cuda:0, cuda:1 need GPU=2 together.*the cluster has GPU=1"):
            check_placeable({"cuda:0": {"GPU": 1}, "cuda:1": {"GPU": 1}}, nodes)

    def test_dead_nodes_do_not_count(self):
        nodes = [_node("10.0.0.1", CPU=4.0), _node("10.0.0.2", alive=False, GPU=1.0)]
        with pytest.raises(RuntimeConfigError, match=r"cuda:0 needs Ray resource GPU=1"):
            check_placeable({"cuda:0": {"GPU": 1}}, nodes)

    def test_placeable_devices_pass(self):
        nodes = [_node("10.0.0.1", CPU=4.0, GPU=2.0, NPU=1.0, sim_x=1.0)]
        check_placeable({"cpu": {}, "cuda:0": {"GPU": 1}, "cuda:1": {"GPU": 1},
                         "npu:0": {"NPU": 1}, "sim:x": {"sim_x": 0.01}}, nodes)


class TestWarnUnpinnedSim:
    def test_joined_cluster_without_the_sim_resource_warns(self):
        with pytest.warns(UserWarning, match=r"sim:atlas-200i-a2: no node of the Ray cluster "
                                             r"declares.*"
                                             r"sim_atlas-200i-a2.*arbitrary node"):
            warn_unpinned_sim(["cpu", "sim:atlas-200i-a2"], {"CPU": 4.0}, joined=True, n_nodes=1)

    def test_multi_node_cluster_without_the_sim_resource_warns(self):
        with pytest.warns(UserWarning, match=r"arbitrary node"):
            warn_unpinned_sim(["sim:edge-cpu-a76"], {"CPU": 4.0}, joined=False, n_nodes=2)

    @pytest.mark.parametrize("res, joined, n_nodes", [
        ({"CPU": 4.0, "sim_atlas-200i-a2": 1.0}, True, 3),  # declared: pinned
        ({"CPU": 4.0}, False, 1),                            # one local node: nowhere else to go
    ])
    def test_no_warning(self, res, joined, n_nodes):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            warn_unpinned_sim(["sim:atlas-200i-a2", "cpu"], res, joined=joined, n_nodes=n_nodes)


@pytest.fixture(scope="module")
def tiny_decoder():
    import graphs.models as M

    m = M.decoder("tiny")
    return m, M.example_inputs(m, seq_len=8)


@pytest.mark.ray
class TestRuntimeOnAClusterWithoutTheDevice:
    # ids: a bare "npu" keyword would make conftest skip the test as needing an NPU
    @pytest.mark.parametrize("device", [pytest.param("npu:0", id="indexed"),
                                        pytest.param("npu", id="bare")])
    def test_npu_fails_fast(self, ray_session, tiny_decoder, device):
        from scheduler import Runtime

        m, x = tiny_decoder
        t0 = time.monotonic()
        with pytest.raises(RuntimeConfigError,
                           match=rf"device {device} needs Ray resource NPU=1.*127\.0\.0\.1: CPU="):
            _within(60, lambda: Runtime(m, x, devices=[device, "cpu"]))
        assert time.monotonic() - t0 < 30

    @pytest.mark.skipif("torch.cuda.is_available()", reason="this process sees a CUDA device")
    def test_cuda_without_a_cuda_device_here_fails_fast(self, ray_session, tiny_decoder):
        from scheduler import Runtime

        m, x = tiny_decoder
        with pytest.raises(RuntimeConfigError,
                           match=r"device cuda:0: CUDA is not available in this process"):
            _within(60, lambda: Runtime(m, x, devices=["cuda:0"]))


# ----------------------------------------------------------------- an unreachable address
class TestProbeRayAddress:
    def test_nothing_listening_fails_at_once_with_what_to_do(self):
        t0 = time.monotonic()
        with pytest.raises(RuntimeConfigError,
                           match=r"could not reach a Ray cluster at 127\.0\.0\.1:1 within 5 s.*"
                                 r"`ray start --head`.*omit ray_address"):
            probe_ray_address("127.0.0.1:1")
        assert time.monotonic() - t0 < CONNECT_TIMEOUT + 1

    def test_client_address_is_probed_too(self):
        with pytest.raises(RuntimeConfigError, match=r"ray://127\.0\.0\.1:1"):
            probe_ray_address("ray://127.0.0.1:1")

    def test_a_listening_port_passes(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen(1)
            probe_ray_address(f"127.0.0.1:{s.getsockname()[1]}")
            probe_ray_address(f"ray://127.0.0.1:{s.getsockname()[1]}")

    @pytest.mark.parametrize("address", ["auto", "local", "not-an-address"])
    def test_forms_ray_resolves_itself_are_left_to_ray(self, address):
        probe_ray_address(address)  # no host:port to probe: Ray reports its own error


class TestCheckClientSupport:
    @pytest.mark.skipif("importlib.util.find_spec('grpc') is not None",
                        reason="Ray Client's grpcio is installed here")
    def test_ray_client_address_without_ray_client_names_the_extra(self):
        with pytest.raises(RuntimeConfigError,
                           match=r"ray://head:10001 .*ray\[client\].*"
                                 r"pip install 'hetsched\[cluster\]'"):
            check_client_support("ray://head:10001")

    def test_other_addresses_need_no_client(self):
        check_client_support("head:6379")
        check_client_support("auto")


_UNREACHABLE = r"""
import os, time
import graphs.models as M
from scheduler import Runtime
from scheduler.errors import RuntimeConfigError
m = M.decoder("tiny"); x = M.example_inputs(m, seq_len=8)
for how in ("argument", "RAY_ADDRESS"):
    t0 = time.monotonic()
    try:
        if how == "argument":
            Runtime(m, x, devices=["cpu"], ray_address="127.0.0.1:1")
        else:
            os.environ["RAY_ADDRESS"] = "127.0.0.1:1"
            Runtime(m, x, devices=["cpu"])
    except RuntimeConfigError as e:
        print(how, "FAILED FAST", round(time.monotonic() - t0, 1), "|", e)
"""


@pytest.mark.ray
def test_unreachable_ray_address_fails_in_seconds():
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", _UNREACHABLE], capture_output=True, text=True,
                         timeout=60, env=_env(), cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert [ln.split()[0] for ln in lines if "FAILED FAST" in ln] == ["argument", "RAY_ADDRESS"]
    for ln in lines:
        assert float(ln.split()[3]) < CONNECT_TIMEOUT + 2
        assert "could not reach a Ray cluster at 127.0.0.1:1 within 5 s" in ln
    assert "omit ray_address" in lines[0]
    assert "unset RAY_ADDRESS (where this address came from)" in lines[1]
    assert time.monotonic() - t0 < 45


# ---------------------------------------------------- a Ray cluster already running here
_BESIDE_A_CLUSTER = r"""
import os, sys, warnings
import ray, torch
import graphs.models as M
from scheduler import Runtime
assert "RAY_ADDRESS" not in os.environ
address = sys.argv[1]
m = M.decoder("tiny"); x = M.example_inputs(m, seq_len=8)
with torch.no_grad():
    ref = m(*x)
# no ray_address, no RAY_ADDRESS: an embedded Ray of its own, not the running cluster
with Runtime(m, x, devices=["cpu"]) as rt:
    torch.testing.assert_close(rt.run(*x, timeout=60), ref)
    print("EMBEDDED CPUS", ray.cluster_resources()["CPU"],
          "GCS", ray._private.worker.global_worker.node.gcs_address)
print("AFTER", ray.is_initialized())
# asked to join it: joins; a sim device no node declares lands anywhere, and says so
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    with Runtime(m, x, devices=["sim:atlas-200i-a2"], ray_address=address) as rt:
        torch.testing.assert_close(rt.run(*x, timeout=60), ref)
        print("JOINED CPUS", ray.cluster_resources()["CPU"])
print("WARNED", [str(w.message) for w in caught if "arbitrary node" in str(w.message)])
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.ray
@pytest.mark.slow
def test_embedded_ray_starts_beside_a_running_cluster_and_joins_it_only_when_asked():
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    if not os.path.exists(ray_cli):
        pytest.skip(f"no ray CLI beside {sys.executable}")
    # RAY_TMPDIR keeps this cluster's address file (ray_current_cluster, which a bare
    # ray.init() reads) out of /tmp/ray, so other Ray users on this machine never see it;
    # a short path, because Ray's unix sockets live under it
    tmp = tempfile.mkdtemp(prefix="hsray", dir="/tmp")
    env = _env()
    env["RAY_TMPDIR"] = tmp
    port = _free_port()
    # --block: this one process owns the cluster; ending it (its process group) stops the
    # cluster, and nothing else (`ray stop` would stop every Ray on the machine)
    head = subprocess.Popen([ray_cli, "start", "--head", "--block", f"--port={port}",
                             "--num-cpus=1", "--num-gpus=0", "--include-dashboard=false",
                             "--node-ip-address=127.0.0.1", "--disable-usage-stats"],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        address_file = os.path.join(tmp, "ray", "ray_current_cluster")
        deadline = time.monotonic() + 60
        while not os.path.exists(address_file):
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start did not come up:\n{head.stdout.read()[-2000:]}")
            time.sleep(0.2)
        time.sleep(0.5)  # the file is written just before ray start reports success
        address = open(address_file).read().strip()
        out = subprocess.run([sys.executable, "-c", _BESIDE_A_CLUSTER, address],
                             capture_output=True, text=True, timeout=150, env=env, cwd=ROOT)
    finally:
        _stop(head)
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "EMBEDDED CPUS 2.0 GCS 127.0.0.1:" in out.stdout  # its own Ray (the cluster has 1)
    assert f"GCS {address}" not in out.stdout
    assert "AFTER False" in out.stdout
    assert "JOINED CPUS 1.0" in out.stdout
    assert "WARNED ['" in out.stdout and "sim_atlas-200i-a2" in out.stdout


def _stop(head: subprocess.Popen) -> None:
    """End the ``ray start --block`` process and every process of its group (the cluster's)."""
    import signal

    try:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(head.pid, signal.SIGKILL)  # whatever is left of the group
    except ProcessLookupError:
        pass
    head.wait(10)
    head.stdout.close()
