"""*When* work runs: the Runtime (submit, generate, futures, retries, early exits, adaptive
re-planning), the discrete-event simulator and the generation replay, traces and Gantt
charts, statistics, tables, and the ``hetsched`` command line (:mod:`scheduler.cli`).

Example:
    >>> import scheduler
    >>> "Runtime" in scheduler.__all__ and scheduler.Runtime.close is not None
    True
"""
from .errors import DeadlockError, PlanMismatchError, SchedulerError, SimulationError, TraceError
from .simulate import (SimResult, StreamResult, Transfer, bottleneck_bound, periodic_arrivals,
                       poisson_arrivals, simulate, simulate_stream)
from .trace import TraceEvent, events_from_sim, gantt, to_chrome_trace

# results as dicts, rows, DataFrames and text tables
from .tables import (compare_rows, device_rows, format_table, node_rows, partition_rows,  # noqa: E402
                     sim_rows, stats_rows, to_dict, to_frame)

# the Runtime: request lifecycle, dispatch over the partition DAG, statistics
from .errors import (InputSignatureError, RequestFailed, RequestTimeout,  # noqa: E402
                     RuntimeClosedError, RuntimeConfigError, SubmitTimeout)
from .cluster import DEVICE_FORMS, build_cluster, host_spec  # noqa: E402
from .dispatch import Dispatcher, Stage  # noqa: E402
from .runtime import Runtime  # noqa: E402
from .signature import InputSignature, TensorSpec  # noqa: E402
from .stats import CallRecord, RequestRecord, RuntimeStats, StatsRecorder  # noqa: E402

# generation: sessions with KV caches in the executors, continuous batching, the replay
from .generation import (GenerationConfig, GenerationFuture, GenerationResult,  # noqa: E402
                         GenerationStats, GenStage)
from .generation_sim import GenerationSimResult, simulate_generation  # noqa: E402

# the adaptive loop: drift detection, health, re-planning, lossless plan switching
from .errors import AdaptiveError, PlanSwitchError  # noqa: E402
from .adaptive import (AdaptiveConfig, AdaptiveEvent, DriftAlarm, DriftDetector,  # noqa: E402
                       HealthTracker, PlanVersion, ReplanController, VersionLedger)

__all__ = [
    "SchedulerError", "SimulationError", "PlanMismatchError", "DeadlockError", "TraceError",
    "simulate", "simulate_stream", "bottleneck_bound", "poisson_arrivals", "periodic_arrivals",
    "SimResult", "StreamResult", "Transfer", "TraceEvent", "events_from_sim", "gantt",
    "to_chrome_trace", "compare_rows", "device_rows", "format_table", "node_rows",
    "partition_rows", "sim_rows", "stats_rows", "to_dict", "to_frame",
    "InputSignatureError", "RequestFailed", "RequestTimeout", "RuntimeClosedError",
    "RuntimeConfigError", "SubmitTimeout", "DEVICE_FORMS", "build_cluster", "host_spec",
    "Dispatcher", "Stage", "Runtime", "InputSignature", "TensorSpec", "CallRecord",
    "RequestRecord", "RuntimeStats", "StatsRecorder",
    "GenerationConfig", "GenerationFuture", "GenerationResult", "GenerationStats", "GenStage",
    "GenerationSimResult", "simulate_generation",
    "AdaptiveError", "PlanSwitchError", "AdaptiveConfig", "AdaptiveEvent", "DriftAlarm",
    "DriftDetector", "HealthTracker", "PlanVersion", "ReplanController", "VersionLedger",
]


def __getattr__(name: str):
    # deprecated alias: scheduler.Measurement was renamed CallRecord (policies.Measurement is the
    # cost model's measured time); kept, with a warning, for code written against the old name
    if name == "Measurement":
        import warnings

        warnings.warn("scheduler.Measurement is deprecated; use scheduler.CallRecord",
                      DeprecationWarning, stacklevel=2)
        return CallRecord
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
