"""Layered vision models with early exits for 28x28 grayscale inputs (Fashion-MNIST).

Both are :class:`graphs.exits.ExitModel` s (the exit-model interface the gating policy and
the Runtime build on; its base class, :func:`count_costs` and :class:`ExitCosts` are
re-exported here): the state is the image or feature map itself, there is no stem, and the
input check and example are a ``(batch, 1, 28, 28)`` float image.

Models: :class:`ExitCNN` (a small VGG-style CNN with conv exit heads, as in BranchyNet) and
:class:`ExitViT` (a small patch transformer with an exit after every block).

References:
    Teerapittayanon, McDanel and Kung, "BranchyNet: Fast Inference via Early Exiting from
    Deep Neural Networks", ICPR 2016.
    Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition
    at Scale", ICLR 2021 (the ViT).
"""
from __future__ import annotations

import torch
from torch import nn

from .exits import ExitCosts, ExitModel, ExitModelError, count_costs

__all__ = ["ExitModelError", "ExitModel", "ExitCNN", "ExitViT", "ExitCosts", "count_costs",
           "VISION_MODELS", "vision_model"]

INPUT_SHAPE = (1, 28, 28)


class _ImageExitModel(ExitModel):
    """The adapter shared by the 28x28 grayscale models: the input check and example."""

    def check_input(self, x: torch.Tensor) -> None:
        """Raise :class:`ExitModelError` unless ``x`` is a float tensor ``(batch, 1, 28, 28)``."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != INPUT_SHAPE:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ExitModelError(f"{type(self).__name__} expects input of shape (batch, 1, 28, 28); "
                                 f"got {shape}")
        if not x.is_floating_point():
            raise ExitModelError(f"{type(self).__name__} expects a floating-point image; got {x.dtype}")

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """``batch`` zero images ``(batch, 1, 28, 28)``."""
        return torch.zeros(batch, *INPUT_SHAPE)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _ConvHead(nn.Sequential):
    def __init__(self, cin: int, width: int, pool: int, num_classes: int, stride: int):
        super().__init__(_conv(cin, width, stride), nn.AdaptiveAvgPool2d(pool), nn.Flatten(),
                         nn.Linear(width * pool * pool, num_classes))


class ExitCNN(_ImageExitModel):
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


class ExitViT(_ImageExitModel):
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
