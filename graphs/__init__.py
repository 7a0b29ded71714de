"""What the model *is*: capture into a cost-annotated op graph, coarsening, partitioning,
reference models, synthetic task graphs, JSON import/export."""
from .errors import (CaptureError, CyclicGraphError, GraphError, GraphFormatError, HetschedError,
                     UnknownNameError)
from .opgraph import GRANULARITIES, NODE_ATTRS, OP_KINDS, OpGraph

__all__ = ["OpGraph", "OP_KINDS", "NODE_ATTRS", "GRANULARITIES", "HetschedError", "GraphError",
           "CyclicGraphError", "CaptureError", "GraphFormatError", "UnknownNameError"]
