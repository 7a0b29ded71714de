"""The exit-model interface: any layered model with early exits, through a small adapter.

An :class:`ExitModel` runs as **stem, stages, heads**, and every piece sees one **state**:

* ``embed(x) -> state`` -- the stem: embeddings, patch projection, or nothing (the default:
  the state at depth 0 is the input itself);
* ``stages: nn.ModuleList`` -- run in order; the state after depth ``d`` is the output of
  stage ``d - 1``;
* ``exits: nn.ModuleDict`` -- exit heads keyed by ``str(depth)`` (``1 <= depth < num_stages``)
  mapping the state after that depth to logits; ``head`` -- the final head.

A **state** is a tensor (the hidden state) or a tuple ``(hidden, *extras)``, where the extras
(an attention mask, positions, ...) ride along unchanged: stage ``i`` is called as
``stages[i](hidden, *extras)`` and returns the new hidden; heads are called as
``head(hidden, *extras)``. A model whose state carries a padding mask names its index in
``state_mask``; gates then see ``(hidden, mask)`` (:meth:`ExitModel.gate_view`) and pool over
real positions only (:func:`policies.gating.pool_hidden`).

What a model must define (its **adapter**): ``stages``, ``exits``, ``head``,
``num_classes``, :meth:`~ExitModel.check_input` (what a valid input is, with an error naming
the bad value) and :meth:`~ExitModel.example_input` (an input for cost counting and the
Runtime's capture); ``embed`` when the model has a stem. :func:`check_adapter` names any
missing piece. :class:`LayeredExits` builds an adapter from parts, for a model that is not
written as an :class:`ExitModel` (a pretrained encoder, say).

Everything else derives from the adapter: ``forward_until(x, depth) -> state``;
``forward_from(state, depth) -> final logits`` (continues where the shallow path left off:
``forward_from(forward_until(x, d), d)`` equals ``forward(x)`` with no recomputation);
``exit_logits(state, depth)``; ``forward_all(x) -> [exit logits..., final logits]`` and
``forward_hidden(x)`` (the states at the exits as well). :func:`count_costs` counts the
FLOPs of the stem, every stage and every head with
:class:`torch.utils.flop_counter.FlopCounterMode` (counted, not estimated; it counts matmuls,
convolutions and attention, not element-wise ops). The gating policy (``run_gated``,
training, calibration) and the Runtime's gated deployment all go through this interface.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Union

import torch
import torch.fx
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .errors import HetschedError

__all__ = ["ExitModelError", "ExitAdapterError", "ExitModel", "LayeredExits", "ExitCosts", "State",
           "check_adapter", "count_costs", "hidden_of", "select_state", "state_tensors"]

#: A hidden tensor, or ``(hidden, *extras)``.
State = Union[torch.Tensor, tuple]


class ExitModelError(HetschedError, ValueError):
    """Bad input to an exit model: wrong input shape, or a depth with no stage or exit.

    Example:
        >>> from graphs.vision import ExitCNN
        >>> ExitCNN().forward_until(torch.zeros(1, 28, 28), 1)
        Traceback (most recent call last):
        ...
        graphs.exits.ExitModelError: ExitCNN expects input of shape (batch, 1, 28, 28); got (1, 28, 28)
    """


class ExitAdapterError(ExitModelError, TypeError):
    """A model's exit-model adapter is incomplete: a required piece is missing.

    Example:
        >>> check_adapter(nn.Linear(2, 2))
        Traceback (most recent call last):
        ...
        graphs.exits.ExitAdapterError: Linear is not an exit model; wrap it with graphs.exits.LayeredExits or subclass graphs.exits.ExitModel
    """


def hidden_of(state: State) -> torch.Tensor:
    """The hidden tensor of a state (the state itself, or its first element).

    Example:
        >>> h = torch.zeros(2, 3)
        >>> hidden_of(h) is h, hidden_of((h, torch.ones(2, 3, dtype=torch.bool))) is h
        (True, True)
    """
    return state[0] if isinstance(state, tuple) else state


def state_tensors(state: State) -> tuple:
    """A state as a flat tuple of tensors (what travels between partitions).

    Example:
        >>> len(state_tensors(torch.zeros(1))), len(state_tensors((torch.zeros(1), torch.zeros(1))))
        (1, 2)
    """
    return tuple(state) if isinstance(state, tuple) else (state,)


def select_state(state: State, index: torch.Tensor) -> State:
    """The rows ``index`` (a bool mask or indices over the batch) of every tensor in a state.

    Example:
        >>> s = (torch.arange(3.0), torch.tensor([True, False, True]))
        >>> [t.tolist() for t in select_state(s, torch.tensor([0, 2]))]
        [[0.0, 2.0], [True, True]]
    """
    if isinstance(state, tuple):
        return tuple(t[index] for t in state)
    return state[index]


def _call(module: nn.Module, state: State) -> Any:
    return module(*state) if isinstance(state, tuple) else module(state)


class ExitModel(nn.Module):
    """Base class of layered models with exits (see the module docstring for the contract).

    Subclasses set ``stages``, ``exits``, ``head`` and ``num_classes`` and define
    :meth:`check_input` and :meth:`example_input` (and :meth:`embed` if they have a stem).

    Example:
        >>> from graphs.vision import ExitCNN
        >>> m = ExitCNN().eval()
        >>> x = m.example_input(2)
        >>> h = m.forward_until(x, 1)
        >>> torch.allclose(m.forward_from(h, 1), m(x), atol=1e-5)
        True
        >>> [tuple(o.shape) for o in m.forward_all(x)]
        [(2, 10), (2, 10), (2, 10), (2, 10)]
    """

    stages: nn.ModuleList
    exits: nn.ModuleDict
    head: nn.Module
    num_classes: int = 10
    #: index of a padding mask ``(batch, positions)`` (True = real) in the state tuple, if any
    state_mask: int | None = None

    # ---- the adapter: what a model defines -------------------------------------------------
    def check_input(self, x: Any) -> None:
        """Raise :class:`ExitModelError` naming the bad value if ``x`` is not a valid input."""
        raise ExitAdapterError(_missing(self, "check_input(x)", "what a valid input is, raising "
                                        "ExitModelError with the bad value and the valid form"))

    def example_input(self, batch: int = 1) -> Any:
        """A valid input of ``batch`` samples (for cost counting and the Runtime's capture)."""
        raise ExitAdapterError(_missing(self, "example_input(batch)", "a valid input for cost counting "
                                        "and capture"))

    def embed(self, x: Any) -> State:
        """The stem: the state at depth 0 (default: the input itself)."""
        return x

    # ---- derived ------------------------------------------------------------------------
    @property
    def num_stages(self) -> int:
        """How many stages the full model runs."""
        return len(self.stages)

    @property
    def exit_depths(self) -> list[int]:
        """Depths that have an exit head, ascending."""
        return sorted(int(k) for k in self.exits.keys())

    def _check_depth(self, depth: int, exit_needed: bool = False) -> None:
        if exit_needed:
            if depth not in self.exit_depths:
                raise ExitModelError(f"no exit head at depth {depth!r}; exits at {self.exit_depths}")
        elif isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= self.num_stages:
            raise ExitModelError(f"depth {depth!r} out of range; valid depths are 0..{self.num_stages}")

    def run_stages(self, state: State, start: int, stop: int) -> State:
        """Stages ``start .. stop-1`` applied to the state after ``start`` stages."""
        for stage in self.stages[start:stop]:
            if isinstance(state, tuple):
                state = (stage(*state), *state[1:])
            else:
                state = stage(state)
        return state

    def gate_view(self, state: State) -> State:
        """What a gate reads: the hidden tensor, or ``(hidden, mask)`` if the state has a mask."""
        if isinstance(state, tuple):
            return (state[0], state[self.state_mask]) if self.state_mask is not None else state[0]
        return state

    def forward_until(self, x: Any, depth: int) -> State:
        """The state after the first ``depth`` stages (the shallow path; depth 0: the stem's output).

        The input is checked with :meth:`check_input`, except while torch.fx traces the model
        (the check reads concrete shapes and values; a tracer has none)."""
        if not isinstance(x, torch.fx.Proxy):
            self.check_input(x)
        self._check_depth(depth)
        return self.run_stages(self.embed(x), 0, depth)

    def forward_from(self, state: State, depth: int) -> torch.Tensor:
        """Final logits from the state after ``depth`` stages (the deep path)."""
        self._check_depth(depth)
        return _call(self.head, self.run_stages(state, depth, self.num_stages))

    def exit_logits(self, state: State, depth: int) -> torch.Tensor:
        """Logits of the exit head at ``depth`` applied to the state after ``depth`` stages."""
        self._check_depth(depth, exit_needed=True)
        return _call(self.exits[str(depth)], state)

    def forward_all(self, x: Any) -> list[torch.Tensor]:
        """Logits of every exit (ascending depth) followed by the final logits."""
        return self.forward_hidden(x)[1]

    def forward_hidden(self, x: Any) -> tuple[list, list[torch.Tensor]]:
        """``(states at exit depths, logits of every exit + final)`` in one pass."""
        h, done, hid, outs = self.forward_until(x, 0), 0, [], []
        for d in self.exit_depths:
            h, done = self.run_stages(h, done, d), d
            hid.append(h)
            outs.append(_call(self.exits[str(d)], h))
        outs.append(self.forward_from(h, done))
        return hid, outs

    def forward(self, x: Any) -> torch.Tensor:
        """Final logits of the full model."""
        return self.forward_from(self.forward_until(x, 0), 0)


def _missing(model: Any, piece: str, what: str) -> str:
    return (f"{type(model).__name__}'s exit-model adapter is incomplete: it does not define {piece} "
            f"({what}); see graphs.exits.ExitModel")


def check_adapter(model: Any) -> None:
    """Raise :class:`ExitAdapterError` naming every piece ``model``'s adapter lacks.

    Example:
        >>> from graphs.vision import ExitCNN
        >>> check_adapter(ExitCNN())
        >>> class Half(ExitModel):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.stages, self.exits = nn.ModuleList([nn.Identity()]), nn.ModuleDict()
        >>> check_adapter(Half())
        Traceback (most recent call last):
        ...
        graphs.exits.ExitAdapterError: Half's exit-model adapter is incomplete: missing head (the final head), check_input(x) (what a valid input is), example_input(batch) (a valid input for cost counting and capture); see graphs.exits.ExitModel
    """
    missing = []
    if not isinstance(model, ExitModel):
        raise ExitAdapterError(f"{type(model).__name__} is not an exit model; wrap it with "
                               "graphs.exits.LayeredExits or subclass graphs.exits.ExitModel")
    if not isinstance(getattr(model, "stages", None), nn.ModuleList) or len(model.stages) == 0:
        missing.append("stages (an nn.ModuleList of at least one stage)")
    if not isinstance(getattr(model, "exits", None), nn.ModuleDict):
        missing.append("exits (an nn.ModuleDict of exit heads keyed by str(depth))")
    if not isinstance(getattr(model, "head", None), nn.Module):
        missing.append("head (the final head)")
    if not isinstance(getattr(model, "num_classes", None), int):
        missing.append("num_classes")
    for name, what in (("check_input", "check_input(x) (what a valid input is)"),
                       ("example_input", "example_input(batch) (a valid input for cost counting and capture)")):
        if isinstance(model, LayeredExits):
            absent = getattr(model, f"_{name}", None) is None
        else:
            absent = getattr(type(model), name) is getattr(ExitModel, name)
        if absent:
            missing.append(what)
    if missing:
        raise ExitAdapterError(f"{type(model).__name__}'s exit-model adapter is incomplete: missing "
                               f"{', '.join(missing)}; see graphs.exits.ExitModel")
    bad = [k for k in getattr(model, "exits", {}).keys()
           if not k.isdigit() or not 1 <= int(k) < len(model.stages)]
    if bad:
        raise ExitAdapterError(f"{type(model).__name__} has exit heads at {bad}; exit keys are str(depth) "
                               f"with 1 <= depth < {len(model.stages)}")


class LayeredExits(ExitModel):
    """An adapter from parts: any layered model becomes an :class:`ExitModel`.

    ``layers`` are the stages (called as ``layer(hidden, *extras)``), ``exits`` maps depths to
    exit heads, ``head`` is the final head, ``stem`` maps the input to the depth-0 state (a
    tensor or ``(hidden, *extras)``), ``check`` validates an input (raise
    :class:`ExitModelError`) and ``example`` returns a valid input of a given batch size.

    Example:
        >>> torch.manual_seed(0) is not None
        True
        >>> layers = [nn.Sequential(nn.Linear(4, 4), nn.ReLU()) for _ in range(3)]
        >>> def check(x):
        ...     if x.dim() != 2 or x.shape[1] != 4:
        ...         raise ExitModelError(f"expects (batch, 4); got {tuple(x.shape)}")
        >>> m = LayeredExits(layers, nn.Linear(4, 2), {1: nn.Linear(4, 2)}, num_classes=2,
        ...                  check=check, example=lambda b: torch.zeros(b, 4)).eval()
        >>> m.exit_depths, tuple(m(m.example_input(3)).shape)
        ([1], (3, 2))
        >>> m(torch.zeros(3, 5))
        Traceback (most recent call last):
        ...
        graphs.exits.ExitModelError: expects (batch, 4); got (3, 5)
    """

    def __init__(self, layers: Any, head: nn.Module, exits: Mapping[int, nn.Module], *,
                 num_classes: int, stem: nn.Module | None = None,
                 check: Callable[[Any], None] | None = None,
                 example: Callable[[int], Any] | None = None, state_mask: int | None = None):
        super().__init__()
        self.stages = nn.ModuleList(layers)
        self.head = head
        self.exits = nn.ModuleDict({str(int(d)): m for d, m in sorted(exits.items())})
        self.stem = stem
        self.num_classes = int(num_classes)
        self.state_mask = state_mask
        self._check_input, self._example_input = check, example
        check_adapter(self)

    def check_input(self, x: Any) -> None:
        if self._check_input is None:
            raise ExitAdapterError(_missing(self, "check_input(x)", "pass check=... to LayeredExits"))
        self._check_input(x)

    def example_input(self, batch: int = 1) -> Any:
        if self._example_input is None:
            raise ExitAdapterError(_missing(self, "example_input(batch)", "pass example=... to LayeredExits"))
        return self._example_input(batch)

    def embed(self, x: Any) -> State:
        return x if self.stem is None else self.stem(x)


@dataclass(frozen=True)
class ExitCosts:
    """Counted FLOPs of one input (batch 1) through each part of an exit model.

    Example:
        >>> c = ExitCosts(stage_flops=(10, 20, 30), exit_flops={1: 2}, head_flops=5, embed_flops=1)
        >>> c.full, c.until(1)
        (66, 11)
    """

    stage_flops: tuple[int, ...]  # FLOPs of stages[i]
    exit_flops: dict[int, int]  # depth -> FLOPs of the exit head at that depth
    head_flops: int  # FLOPs of the final head
    embed_flops: int = 0  # FLOPs of the stem (embed)

    @property
    def full(self) -> int:
        """FLOPs of the full model (stem, all stages and the final head; no exit heads)."""
        return self.embed_flops + sum(self.stage_flops) + self.head_flops

    def until(self, depth: int) -> int:
        """FLOPs of the stem and the first ``depth`` stages."""
        return self.embed_flops + sum(self.stage_flops[:depth])


def _flops(fn, *args) -> int:
    with FlopCounterMode(display=False) as fc:
        fn(*args)
    return int(fc.get_total_flops())


@torch.no_grad()
def count_costs(model: ExitModel, example: Any = None) -> ExitCosts:
    """Count the FLOPs of the stem, every stage and every head of ``model`` on one input
    (``example``, or the model's own ``example_input(1)``).

    Example:
        >>> from graphs.vision import ExitViT
        >>> c = count_costs(ExitViT(depth=2))
        >>> len(c.stage_flops), sorted(c.exit_flops), c.full == sum(c.stage_flops) + c.head_flops
        (2, [1], True)
    """
    check_adapter(model)
    was_training = model.training
    model.eval()
    x = model.example_input(1) if example is None else example
    model.check_input(x)
    embed = _flops(model.embed, x)
    state = model.embed(x)
    stages, exits = [], {}
    for d in range(1, model.num_stages + 1):
        stages.append(_flops(model.run_stages, state, d - 1, d))
        state = model.run_stages(state, d - 1, d)
        if str(d) in model.exits:
            exits[d] = _flops(model.exit_logits, state, d)
    head = _flops(_call, model.head, state)
    model.train(was_training)
    return ExitCosts(tuple(stages), exits, head, embed)
