"""What to *decide*: cost models, placement policies behind one interface, the registry.

Importing the package imports every policy module, so each registers itself.

Example:
    >>> import policies
    >>> {"heft", "cpop", "peft", "single", "round-robin", "met", "mct"} <= set(policies.available())
    True
"""
from .base import COMMON_OPTIONS, Policy, available, get, register
from .cost import CostModel, check_dag, plan_energy
from .errors import CostModelError, InfeasiblePlacement, InvalidPlan, PolicyError
from .plan import OBJECTIVES, Plan
from .schedule import ScheduleContext, list_schedule
from .validate import validate

# policy modules: importing them registers the policies
from .baselines import MCT, MET, RoundRobin, Single
from .cpop import CPOP
from .heft import HEFT
from .peft import PEFT
from .exact import Exact
from .search import Search
from .pipeline import Pipeline, split_chain
from .auto import Auto

# cost models
from .abstract import RelatedMachines, TableCostModel, graph_from_table  # noqa: E402
from .calibrated import CalibratedCostModel, Measurement  # noqa: E402
from .roofline import RooflineCostModel  # noqa: E402

__all__ = [
    "Policy", "available", "get", "register", "COMMON_OPTIONS", "CostModel", "check_dag",
    "plan_energy", "PolicyError", "InfeasiblePlacement", "InvalidPlan", "CostModelError", "Plan",
    "OBJECTIVES", "ScheduleContext", "list_schedule", "validate",
    "HEFT", "CPOP", "PEFT", "Single", "RoundRobin", "MET", "MCT",
    "Exact", "Search", "Pipeline", "split_chain", "Auto",
    "RooflineCostModel", "RelatedMachines", "TableCostModel", "graph_from_table",
    "CalibratedCostModel", "Measurement",
]

# early-exit gating: gates, cascades, calibration
from . import gating  # noqa: E402
from .gating import (Cascade, Gate, LearnedGate, available_gates, calibrate_cascade,  # noqa: E402
                     calibrate_threshold, make_gate, run_gated)

__all__ += ["gating", "Gate", "LearnedGate", "Cascade", "available_gates", "make_gate",
            "calibrate_threshold", "calibrate_cascade", "run_gated"]
