"""Layered vision models with early exits for 28x28 grayscale inputs (Fashion-MNIST).

**The exit-model interface** (what the gating policy and the Runtime build on). An
:class:`ExitModel` is a sequence of stages plus heads:

* ``stages: nn.ModuleList`` -- run in order; the *hidden state after depth d* is the output
  of ``stages[d - 1]`` (depth 0 is the input itself);
* ``exits: nn.ModuleDict`` -- exit heads keyed by ``str(depth)``, each mapping the hidden
  state after that depth to class logits (``1 <= depth < num_stages``);
* ``head`` -- the final head, applied after the last stage.

Methods: ``forward_until(x, depth) -> hidden``; ``forward_from(hidden, depth) -> final
logits`` (continues where the shallow path left off: ``forward_from(forward_until(x, d), d)``
equals ``forward(x)`` with no recomputation); ``exit_logits(hidden, depth)``;
``forward_all(x) -> [exit logits in depth order..., final logits]`` (for training and
evaluation) and ``forward_hidden(x)`` (the hidden states at the exits as well). :func:`count_costs` counts the FLOPs of every stage and head with
:class:`torch.utils.flop_counter.FlopCounterMode` (counted, not estimated; it counts
matmuls, convolutions and attention, not element-wise ops).

Models: :class:`ExitCNN` (a small VGG-style CNN with conv exit heads, as in BranchyNet) and
:class:`ExitViT` (a small patch transformer with an exit after every block).

References:
    Teerapittayanon, McDanel and Kung, "BranchyNet: Fast Inference via Early Exiting from
    Deep Neural Networks", ICPR 2016.
    Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition
    at Scale", ICLR 2021 (the ViT).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .errors import HetschedError

__all__ = ["ExitModelError", "ExitModel", "ExitCNN", "ExitViT", "ExitCosts", "count_costs",
           "VISION_MODELS", "vision_model"]

INPUT_SHAPE = (1, 28, 28)


class ExitModelError(HetschedError, ValueError):
    """Bad input to an exit model: wrong input shape, or a depth with no stage or exit."""


class ExitModel(nn.Module):
    """Base class of layered models with exits; subclasses set ``stages``, ``exits``, ``head``.

    Example:
        >>> m = ExitCNN().eval()
        >>> x = torch.randn(2, 1, 28, 28)
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

    @property
    def num_stages(self) -> int:
        """How many stages the full model runs."""
        return len(self.stages)

    @property
    def exit_depths(self) -> list[int]:
        """Depths that have an exit head, ascending."""
        return sorted(int(k) for k in self.exits.keys())

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != INPUT_SHAPE:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ExitModelError(f"{type(self).__name__} expects input of shape (batch, 1, 28, 28); "
                                 f"got {shape}")

    def _check_depth(self, depth: int, exit_needed: bool = False) -> None:
        if exit_needed:
            if depth not in self.exit_depths:
                raise ExitModelError(f"no exit head at depth {depth!r}; exits at {self.exit_depths}")
        elif not isinstance(depth, int) or not 0 <= depth <= self.num_stages:
            raise ExitModelError(f"depth {depth!r} out of range; valid depths are 0..{self.num_stages}")

    def forward_until(self, x: torch.Tensor, depth: int) -> torch.Tensor:
        """The hidden state after the first ``depth`` stages (the shallow path)."""
        self._check_input(x)
        self._check_depth(depth)
        return self.run_stages(x, 0, depth)

    def run_stages(self, hidden: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Stages ``start .. stop-1`` applied to the hidden state after ``start`` stages."""
        for stage in self.stages[start:stop]:
            hidden = stage(hidden)
        return hidden

    def forward_from(self, hidden: torch.Tensor, depth: int) -> torch.Tensor:
        """Final logits from the hidden state after ``depth`` stages (the deep path)."""
        self._check_depth(depth)
        return self.head(self.run_stages(hidden, depth, self.num_stages))

    def exit_logits(self, hidden: torch.Tensor, depth: int) -> torch.Tensor:
        """Logits of the exit head at ``depth`` applied to the hidden state after ``depth``."""
        self._check_depth(depth, exit_needed=True)
        return self.exits[str(depth)](hidden)

    def forward_all(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every exit (ascending depth) followed by the final logits."""
        return self.forward_hidden(x)[1]

    def forward_hidden(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``(hiddens at exit depths, logits of every exit + final)`` in one pass."""
        h, done, hid, outs = self.forward_until(x, 0), 0, [], []
        for d in self.exit_depths:
            h, done = self.run_stages(h, done, d), d
            hid.append(h)
            outs.append(self.exits[str(d)](h))
        outs.append(self.forward_from(h, done))
        return hid, outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Final logits of the full model."""
        self._check_input(x)
        return self.forward_from(x, 0)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _ConvHead(nn.Sequential):
    def __init__(self, cin: int, width: int, pool: int, num_classes: int, stride: int):
        super().__init__(_conv(cin, width, stride), nn.AdaptiveAvgPool2d(pool), nn.Flatten(),
                         nn.Linear(width * pool * pool, num_classes))


class ExitCNN(ExitModel):
    """A small VGG-style CNN with four stages and BranchyNet-style conv exit heads.

    Stages: ``conv(1->c0)+pool`` (14x14), ``conv(c0->c1)+pool`` (7x7), ``2 x conv(c1->c2)``,
    ``conv(c2->c3)+pool`` (3x3). Exit heads after ``exits`` depths: one strided conv, a
    small average pool and a linear layer. About 0.2M parameters with the defaults.

    Example:
        >>> m = ExitCNN()
        >>> m.num_stages, m.exit_depths
        (4, [1, 2, 3])
        >>> tuple(m.forward_until(torch.zeros(1, 1, 28, 28), 1).shape)
        (1, 16, 14, 14)
    """

    def __init__(self, channels: tuple[int, int, int, int] = (16, 32, 64, 96),
                 exits: tuple[int, ...] = (1, 2, 3), head_width: int = 32, num_classes: int = 10):
        super().__init__()
        c0, c1, c2, c3 = channels
        self.num_classes = num_classes
        self.stages = nn.ModuleList([
            nn.Sequential(_conv(1, c0), nn.MaxPool2d(2)),
            nn.Sequential(_conv(c0, c1), nn.MaxPool2d(2)),
            nn.Sequential(_conv(c1, c2), _conv(c2, c2)),
            nn.Sequential(_conv(c2, c3), nn.MaxPool2d(2)),
        ])
        widths = {1: c0, 2: c1, 3: c2}
        for d in exits:
            if d not in widths:
                raise ExitModelError(f"ExitCNN exit depth {d!r} invalid; valid depths: {sorted(widths)}")
        self.exits = nn.ModuleDict({
            str(d): _ConvHead(widths[d], head_width, 3, num_classes, stride=2)
            for d in exits})
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Linear(c3 * 9, num_classes))


class _Block(nn.Module):
    """A pre-norm transformer block: multi-head self-attention and an MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        # explicit matmuls (not F.scaled_dot_product_attention) so FlopCounterMode counts them on CPU
        att = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
        a = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
        x = x + self.proj(a)
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.patch = patch
        self.proj = nn.Linear(patch * patch, dim)
        self.pos = nn.Parameter(torch.randn(1, (28 // patch) ** 2, dim) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch
        b = x.shape[0]
        x = x.reshape(b, 28 // p, p, 28 // p, p).permute(0, 1, 3, 2, 4).reshape(b, -1, p * p)
        return self.proj(x) + self.pos


class _TokenHead(nn.Module):
    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x).mean(1))


class ExitViT(ExitModel):
    """A small ViT: non-overlapping ``patch x patch`` patches, ``depth`` pre-norm blocks,
    an exit (LayerNorm, token mean, linear) after every block but the last.

    Stage 0 is the patch embedding plus the first block; stage ``i`` is block ``i``.

    Example:
        >>> m = ExitViT(depth=3)
        >>> m.num_stages, m.exit_depths
        (3, [1, 2])
        >>> tuple(m.forward_until(torch.zeros(1, 1, 28, 28), 2).shape)
        (1, 16, 64)
    """

    def __init__(self, patch: int = 7, dim: int = 64, depth: int = 6, heads: int = 4,
                 mlp_ratio: int = 2, exits: tuple[int, ...] | None = None, num_classes: int = 10):
        super().__init__()
        if patch not in (2, 4, 7, 14):
            raise ExitModelError(f"patch {patch!r} must divide 28; valid choices: 2, 4, 7, 14")
        if dim % heads:
            raise ExitModelError(f"dim {dim} is not divisible by heads {heads}")
        self.num_classes = num_classes
        blocks = [_Block(dim, heads, mlp_ratio) for _ in range(depth)]
        self.stages = nn.ModuleList([nn.Sequential(_PatchEmbed(patch, dim), blocks[0]), *blocks[1:]])
        exits = tuple(range(1, depth)) if exits is None else exits
        for d in exits:
            if not 1 <= d < depth:
                raise ExitModelError(f"ExitViT exit depth {d!r} invalid; valid depths: 1..{depth - 1}")
        self.exits = nn.ModuleDict({str(d): _TokenHead(dim, num_classes) for d in exits})
        self.head = _TokenHead(dim, num_classes)


@dataclass(frozen=True)
class ExitCosts:
    """Counted FLOPs of one input (batch 1) through each part of an exit model."""

    stage_flops: tuple[int, ...]  # FLOPs of stages[i]
    exit_flops: dict[int, int]  # depth -> FLOPs of the exit head at that depth
    head_flops: int  # FLOPs of the final head

    @property
    def full(self) -> int:
        """FLOPs of the full model (all stages and the final head; no exit heads)."""
        return sum(self.stage_flops) + self.head_flops

    def until(self, depth: int) -> int:
        """FLOPs of the first ``depth`` stages."""
        return sum(self.stage_flops[:depth])


def _flops(fn, *args) -> int:
    with FlopCounterMode(display=False) as fc:
        fn(*args)
    return int(fc.get_total_flops())


@torch.no_grad()
def count_costs(model: ExitModel) -> ExitCosts:
    """Count the FLOPs of every stage and head of ``model`` on one 28x28 input.

    Example:
        >>> c = count_costs(ExitViT(depth=2))
        >>> len(c.stage_flops), sorted(c.exit_flops), c.full == sum(c.stage_flops) + c.head_flops
        (2, [1], True)
    """
    was_training = model.training
    model.eval()
    x = torch.zeros(1, *INPUT_SHAPE)
    stages, exits = [], {}
    for d, stage in enumerate(model.stages, start=1):
        stages.append(_flops(stage, x))
        x = stage(x)
        if str(d) in model.exits:
            exits[d] = _flops(model.exits[str(d)], x)
    head = _flops(model.head, x)
    model.train(was_training)
    return ExitCosts(tuple(stages), exits, head)


VISION_MODELS = {"cnn": ExitCNN, "vit": ExitViT}


def vision_model(name: str, **kwargs) -> ExitModel:
    """Build a vision exit model by name (``"cnn"`` or ``"vit"``).

    Example:
        >>> type(vision_model("vit", depth=2)).__name__
        'ExitViT'
    """
    if name not in VISION_MODELS:
        from .errors import UnknownNameError
        raise UnknownNameError("vision model", name, VISION_MODELS)
    return VISION_MODELS[name](**kwargs)
