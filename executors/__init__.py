"""*Where* work runs: device specs and profiles, the executor interface, CPU / CUDA / NPU /
simulated executors, and the Ray actor that hosts one (imported lazily, so Ray stays optional).

Example:
    >>> import executors
    >>> executors.create("cpu").kind, "cpu" in executors.detect()
    ('cpu', True)
    >>> executors.DeviceSpec is executors.devices.DeviceSpec
    True
"""
from .base import ExecutionResult, Executor, StepMeta
from .cpu import CPUExecutor
from .cuda import CUDAExecutor  # imports no CUDA state until constructed
from .devices import Cluster, DeviceSpec, LinkSpec
from .factory import create, detect
from .npu import NPUExecutor, npu_available  # torch_npu imported only when used
from .simulated import SimulatedExecutor, shard_step_time

# device profiles and CPU measurement
from . import devices, profiles
from .measure import PartitionTiming, measure_host, measure_nodes, measure_partitions

__all__ = ["Executor", "ExecutionResult", "StepMeta", "CPUExecutor", "CUDAExecutor", "NPUExecutor",
           "SimulatedExecutor", "shard_step_time", "npu_available", "create", "detect", "Cluster",
           "DeviceSpec", "LinkSpec", "devices", "profiles", "PartitionTiming", "measure_host",
           "measure_nodes", "measure_partitions",
           "ExecutorActor", "ExecutorHost", "actor_options", "sim_resource"]


def __getattr__(name: str):
    # ray is imported only when the actor wrapper is asked for
    if name in ("ExecutorActor", "ExecutorHost", "actor_options", "sim_resource"):
        from . import ray_actor

        return getattr(ray_actor, name)
    raise AttributeError(f"module 'executors' has no attribute {name!r}")
