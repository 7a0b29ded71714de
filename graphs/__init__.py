"""What the model *is*: capture into a cost-annotated op graph, coarsening, partitioning,
reference models, synthetic task graphs, JSON import/export."""
from .errors import (CaptureError, CyclicGraphError, GraphError, GraphFormatError, HetschedError,
                     UnknownNameError)
from .opgraph import GRANULARITIES, NODE_ATTRS, OP_KINDS, OpGraph

__all__ = ["OpGraph", "OP_KINDS", "NODE_ATTRS", "GRANULARITIES", "HetschedError", "GraphError",
           "CyclicGraphError", "CaptureError", "GraphFormatError", "UnknownNameError"]

# capture, coarsening, JSON, reference models
from . import models
from .capture import capture
from .coarsen import coarsen
from .io import from_json, load, save, summary, to_json

__all__ += ["capture", "coarsen", "to_json", "from_json", "save", "load", "summary", "models"]

# partitioning into same-device fx submodules
from .partition import Partition, PartitionedModel, partition  # noqa: E402

__all__ += ["partition", "Partition", "PartitionedModel"]

# vision models with early exits and the Fashion-MNIST loader
from .datasets import (DatasetError, FashionMNIST, fashion_mnist_available, fashion_mnist_splits,  # noqa: E402
                       load_fashion_mnist)
from .exits import (ExitAdapterError, ExitCosts, ExitModel, ExitModelError, LayeredExits,  # noqa: E402
                    check_adapter, count_costs)
from .vision import ExitCNN, ExitViT, vision_model  # noqa: E402

__all__ += ["ExitModel", "LayeredExits", "ExitAdapterError", "check_adapter", "ExitCNN", "ExitViT",
            "ExitCosts", "ExitModelError", "count_costs", "vision_model",
            "DatasetError", "FashionMNIST", "load_fashion_mnist", "fashion_mnist_splits",
            "fashion_mnist_available"]

# a byte-level text classifier with early exits and the fortunes language-id set
from .text import ExitTextClassifier  # noqa: E402
from .textdata import fortunes_available, load_language_id  # noqa: E402

__all__ += ["ExitTextClassifier", "load_language_id", "fortunes_available"]
