"""executors package (public names re-exported here)."""

# --- executors (helper "executors"): interface, implementations, factory; Ray wrapper lazily
from .base import ExecutionResult, Executor  # noqa: E402
from .cpu import CPUExecutor  # noqa: E402
from .cuda import CUDAExecutor  # noqa: E402  (imports no CUDA state until constructed)
from .factory import create, detect  # noqa: E402
from .npu import NPUExecutor, npu_available  # noqa: E402  (torch_npu imported only when used)
from .simulated import SimulatedExecutor  # noqa: E402

# --- device profiles and CPU measurement (helper "profiles")
from . import profiles  # noqa: E402
from .measure import PartitionTiming, measure_nodes, measure_partitions  # noqa: E402


def __getattr__(name: str):
    # ray is imported only when the actor wrapper is asked for
    if name in ("ExecutorActor", "ExecutorHost", "actor_options", "sim_resource"):
        from . import ray_actor

        return getattr(ray_actor, name)
    raise AttributeError(f"module 'executors' has no attribute {name!r}")
