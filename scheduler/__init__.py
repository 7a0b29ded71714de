"""scheduler package (public names re-exported here)."""
from .errors import DeadlockError, PlanMismatchError, SchedulerError, SimulationError, TraceError
from .simulate import (SimResult, StreamResult, Transfer, bottleneck_bound, periodic_arrivals,
                       poisson_arrivals, simulate, simulate_stream)
from .trace import TraceEvent, events_from_sim, gantt, to_chrome_trace

# results as dicts, rows, DataFrames and text tables (helper "cli")
from .tables import (compare_rows, device_rows, format_table, node_rows, partition_rows,  # noqa: E402
                     sim_rows, stats_rows, to_dict, to_frame)

# the Runtime: request lifecycle, dispatch over the partition DAG, statistics (helper "runtime")
from .errors import (InputSignatureError, RequestFailed, RequestTimeout,  # noqa: E402
                     RuntimeClosedError, RuntimeConfigError, SubmitTimeout)
from .dispatch import Dispatcher, Stage  # noqa: E402
from .runtime import InputSignature, Runtime, TensorSpec, build_cluster, host_spec  # noqa: E402
from .stats import Measurement, RequestRecord, RuntimeStats, StatsRecorder  # noqa: E402

# the adaptive loop: drift detection, health, re-planning, lossless plan switching (helper "adaptive")
from .errors import AdaptiveError, PlanSwitchError  # noqa: E402
from .adaptive import (AdaptiveConfig, AdaptiveEvent, DriftAlarm, DriftDetector,  # noqa: E402
                       HealthTracker, PlanVersion, ReplanController, VersionLedger)
