"""The signature a runtime's requests must match, taken from the example inputs.

:class:`InputSignature` records each positional input's dtype, rank and static dimensions
(:class:`TensorSpec`); :meth:`InputSignature.check` raises
:class:`~scheduler.errors.InputSignatureError` naming the first mismatch, so a bad request
fails at submit and never reaches an executor actor.

Index inputs (token ids feeding an embedding) can also carry an exclusive upper bound
(``index_bounds``, e.g. the vocabulary size, found by :func:`embedding_index_bounds`), so an
out-of-range id fails at submit with the value and the valid range instead of as an
``IndexError`` inside an executor actor.

Example:
    >>> sig = InputSignature(torch.zeros(1, 8, dtype=torch.long), dynamic_dims={0: [1]})
    >>> sig.describe()
    '(int64[1, *])'
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch

from .errors import InputSignatureError, RuntimeConfigError

__all__ = ["InputSignature", "TensorSpec", "embedding_index_bounds"]


@dataclass(frozen=True)
class TensorSpec:
    """What an input tensor must look like: dtype, rank, and the static dimensions.

    Example:
        >>> s = TensorSpec(dtype=torch.int64, shape=(1, 16), dynamic=frozenset({1}))
        >>> s.describe()
        'int64[1, *]'
    """

    dtype: torch.dtype  # exact dtype required
    shape: tuple[int, ...]  # the example's shape
    dynamic: frozenset[int] = frozenset()  # dimensions (non-negative) that may differ

    def describe(self) -> str:
        """``dtype[d0, *, ...]`` with ``*`` for dynamic dimensions."""
        dims = ", ".join("*" if i in self.dynamic else str(d) for i, d in enumerate(self.shape))
        return f"{str(self.dtype).replace('torch.', '')}[{dims}]"


class InputSignature:
    """The signature of a model's positional inputs, taken from example inputs.

    Args:
        example_inputs: a tensor or a tuple of tensors (as given to ``graphs.capture``).
        dynamic_dims: input index -> dimensions allowed to vary (e.g. ``{0: [1]}`` for a
            variable sequence length); negative dimensions count from the end.
        allow_meta: accept meta tensors (timing-only runs); otherwise they are rejected.
        index_bounds: input index -> exclusive upper bound of its values (an integer input
            that indexes an embedding table: its number of rows). :meth:`check` then
            rejects a value outside ``[0, bound)``, naming the input, the value, where it
            is and the valid range. Meta tensors (no data) are not checked.

    Example:
        >>> sig = InputSignature((torch.zeros(1, 8, dtype=torch.long),), dynamic_dims={0: [-1]})
        >>> sig.check((torch.zeros(1, 5, dtype=torch.long),))
        >>> sig.check((torch.zeros(2, 5, dtype=torch.long),))
        Traceback (most recent call last):
        ...
        scheduler.errors.InputSignatureError: input 0: dimension 0 is 2, expected 1 (signature int64[1, *]); ...
    """

    def __init__(self, example_inputs: Any, dynamic_dims: Mapping[int, Iterable[int]] | None = None,
                 allow_meta: bool = False, index_bounds: Mapping[int, int] | None = None):
        self.allow_meta = bool(allow_meta)
        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        if not isinstance(example_inputs, (tuple, list)) or not example_inputs:
            raise RuntimeConfigError(
                f"example_inputs must be a non-empty tuple of tensors (or one tensor), got "
                f"{type(example_inputs).__name__}")
        specs = []
        dyn = dict(dynamic_dims or {})
        for k in dyn:
            if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < len(example_inputs):
                raise RuntimeConfigError(
                    f"dynamic_dims names input {k!r}; valid input indices: 0..{len(example_inputs) - 1}")
        for i, x in enumerate(example_inputs):
            if not isinstance(x, torch.Tensor):
                raise RuntimeConfigError(f"example_inputs[{i}] is a {type(x).__name__}, not a torch.Tensor")
            dims = set()
            for d in dyn.get(i, ()):
                if not isinstance(d, int) or isinstance(d, bool) or not -x.dim() <= d < x.dim():
                    raise RuntimeConfigError(
                        f"dynamic_dims[{i}] names dimension {d!r}; input {i} has rank {x.dim()} "
                        f"(valid: {-x.dim()}..{x.dim() - 1})")
                dims.add(d % x.dim())
            specs.append(TensorSpec(dtype=x.dtype, shape=tuple(x.shape), dynamic=frozenset(dims)))
        self.specs: tuple[TensorSpec, ...] = tuple(specs)
        bounds: dict[int, int] = {}
        for k, b in dict(index_bounds or {}).items():
            if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < len(specs):
                raise RuntimeConfigError(
                    f"index_bounds names input {k!r}; valid input indices: 0..{len(specs) - 1}")
            dt = specs[k].dtype
            if dt.is_floating_point or dt.is_complex or dt == torch.bool:
                raise RuntimeConfigError(
                    f"index_bounds[{k}]: input {k} is {str(dt).replace('torch.', '')}, not an integer "
                    "tensor; only integer (index) inputs can have bounds")
            if isinstance(b, bool) or not isinstance(b, int) or b < 1:
                raise RuntimeConfigError(f"index_bounds[{k}] must be an int >= 1 (exclusive upper bound), "
                                         f"got {b!r}")
            bounds[k] = int(b)
        self.index_bounds: Mapping[int, int] = bounds  # input index -> exclusive upper bound

    def describe(self) -> str:
        """The signature as text, e.g. ``(int64[1, *])``."""
        return "(" + ", ".join(s.describe() for s in self.specs) + ")"

    def check(self, inputs: Sequence[Any]) -> None:
        """Raise :class:`~scheduler.errors.InputSignatureError` naming the first mismatch."""
        if len(inputs) != len(self.specs):
            raise InputSignatureError(
                f"expected {len(self.specs)} input(s) {self.describe()}, got {len(inputs)}")
        for i, (x, s) in enumerate(zip(inputs, self.specs)):
            if not isinstance(x, torch.Tensor):
                raise InputSignatureError(
                    f"input {i}: expected a torch.Tensor {s.describe()}, got {type(x).__name__}")
            if x.device.type == "meta" and not self.allow_meta:
                raise InputSignatureError(
                    f"input {i}: is a meta tensor (no data); submit real tensors {s.describe()}")
            if x.dtype != s.dtype:
                raise InputSignatureError(
                    f"input {i}: dtype {str(x.dtype).replace('torch.', '')}, expected "
                    f"{str(s.dtype).replace('torch.', '')} (signature {s.describe()})")
            if x.dim() != len(s.shape):
                raise InputSignatureError(
                    f"input {i}: rank {x.dim()} (shape {tuple(x.shape)}), expected rank "
                    f"{len(s.shape)} (signature {s.describe()})")
            for d, (got, want) in enumerate(zip(x.shape, s.shape)):
                if d in s.dynamic:
                    if got < 1:
                        raise InputSignatureError(
                            f"input {i}: dynamic dimension {d} is {got}; it must be >= 1")
                elif got != want:
                    raise InputSignatureError(
                        f"input {i}: dimension {d} is {got}, expected {want} (signature "
                        f"{s.describe()}); declare it in dynamic_dims={{{i}: [{d}]}} if it may vary")
            bound = self.index_bounds.get(i)
            if bound is not None and x.device.type != "meta" and x.numel():
                bad = (x < 0) | (x >= bound)
                if bool(bad.any()):
                    pos = tuple(int(p) for p in bad.nonzero()[0])
                    n = int(bad.sum())
                    raise InputSignatureError(
                        f"input {i}: value {int(x[pos])} at position {list(pos)} is out of range; valid "
                        f"values are 0..{bound - 1} (index bound {bound}, e.g. the vocabulary size)"
                        + (f"; {n} values are out of range" if n > 1 else ""))

    def with_index_bounds(self, index_bounds: Mapping[int, int] | None) -> "InputSignature":
        """A copy of this signature with ``index_bounds`` (see the class docstring).

        Example:
            >>> sig = InputSignature(torch.zeros(1, 4, dtype=torch.long)).with_index_bounds({0: 10})
            >>> sig.check((torch.tensor([[1, 2, 10, 3]]),))
            Traceback (most recent call last):
            ...
            scheduler.errors.InputSignatureError: input 0: value 10 at position [0, 2] is out of range; valid values are 0..9 (index bound 10, e.g. the vocabulary size)
        """
        out = object.__new__(InputSignature)
        out.allow_meta, out.specs = self.allow_meta, self.specs
        examples = tuple(torch.empty(s.shape, dtype=s.dtype, device="meta") for s in self.specs)
        out.index_bounds = InputSignature(examples, allow_meta=True, index_bounds=index_bounds).index_bounds
        return out



def embedding_index_bounds(model: Any) -> dict[int, int]:
    """Input index -> number of rows of the embedding table that the input indexes directly.

    ``model`` is a captured :class:`~graphs.opgraph.OpGraph` (its fx module), a
    ``torch.fx.GraphModule``, or an ``nn.Module`` (symbolically traced here; a model fx
    cannot trace gives ``{}``). An input counts when one of its direct users is an
    ``nn.Embedding`` call, ``torch.nn.functional.embedding(input, weight)`` or
    ``torch.embedding`` / ``aten.embedding(weight, input)``; with several, the smallest
    table bounds it. Inputs are numbered as the model's positional inputs (placeholders
    in order).

    Example:
        >>> class M(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.emb = torch.nn.Embedding(100, 4)
        ...     def forward(self, ids, scale):
        ...         return self.emb(ids) * scale
        >>> embedding_index_bounds(M())
        {0: 100}
    """
    import torch.fx as fx

    gm = model
    try:
        from graphs.opgraph import OpGraph

        if isinstance(model, OpGraph):
            gm = model.graph.get("module")
    except ImportError:  # pragma: no cover
        pass
    if gm is None:
        return {}
    if not isinstance(gm, fx.GraphModule):
        if not isinstance(gm, torch.nn.Module):
            raise RuntimeConfigError(f"embedding_index_bounds needs an nn.Module, a GraphModule or a captured "
                                     f"OpGraph, got {type(model).__name__}")
        try:
            gm = fx.symbolic_trace(gm)
        except Exception:  # noqa: BLE001  (any tracing failure: no bound known)
            return {}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    out: dict[int, int] = {}
    for i, ph in enumerate(placeholders):
        for user in ph.users:
            rows = _embedding_rows(gm, user, ph)
            if rows is not None:
                out[i] = min(rows, out.get(i, rows))
    return out


def _embedding_rows(gm: Any, node: Any, index_arg: Any) -> int | None:
    """Rows of the table ``node`` looks ``index_arg`` up in, if ``node`` is an embedding."""
    if node.op == "call_module":
        try:
            mod = gm.get_submodule(node.target)
        except AttributeError:
            return None
        if isinstance(mod, torch.nn.Embedding) and node.args and node.args[0] is index_arg:
            return int(mod.num_embeddings)
        return None
    if node.op != "call_function":
        return None
    tgt, args = node.target, node.args
    if tgt is torch.nn.functional.embedding:  # (input, weight, ...)
        idx = args[0] if args else node.kwargs.get("input")
        weight_arg = args[1] if len(args) > 1 else node.kwargs.get("weight")
    elif tgt in (torch.embedding, torch.ops.aten.embedding, torch.ops.aten.embedding.default):  # (weight, input)
        weight_arg = args[0] if args else None
        idx = args[1] if len(args) > 1 else None
    else:
        return None
    if idx is not index_arg or getattr(weight_arg, "op", None) != "get_attr":
        return None
    obj: Any = gm
    try:
        for part in str(weight_arg.target).split("."):
            obj = getattr(obj, part)
    except AttributeError:
        return None
    return int(obj.shape[0]) if isinstance(obj, torch.Tensor) and obj.dim() >= 1 else None

