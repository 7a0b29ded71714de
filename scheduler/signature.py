"""The signature a runtime's requests must match, taken from the example inputs.

:class:`InputSignature` records each positional input's dtype, rank and static dimensions
(:class:`TensorSpec`); :meth:`InputSignature.check` raises
:class:`~scheduler.errors.InputSignatureError` naming the first mismatch, so a bad request
fails at submit and never reaches an executor actor.

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

__all__ = ["InputSignature", "TensorSpec"]


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

    Example:
        >>> sig = InputSignature((torch.zeros(1, 8, dtype=torch.long),), dynamic_dims={0: [-1]})
        >>> sig.check((torch.zeros(1, 5, dtype=torch.long),))
        >>> sig.check((torch.zeros(2, 5, dtype=torch.long),))
        Traceback (most recent call last):
        ...
        scheduler.errors.InputSignatureError: input 0: dimension 0 is 2, expected 1 (signature int64[1, *]); ...
    """

    def __init__(self, example_inputs: Any, dynamic_dims: Mapping[int, Iterable[int]] | None = None,
                 allow_meta: bool = False):
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

