"""A byte-level transformer text classifier with early exits (:class:`ExitTextClassifier`).

An :class:`graphs.exits.ExitModel` whose input is a ``(batch, T)`` tensor of byte ids (UTF-8
byte + 1, 0 = padding; :func:`graphs.textdata.encode`) and whose **state** is
``(hidden, mask)``: ``hidden`` is ``(batch, T, dim)`` and ``mask`` ``(batch, T)`` bool, True
at real tokens (``state_mask = 1``, so gates pool over real tokens only). The stem embeds
tokens and adds a learned position embedding; each stage is one pre-norm transformer encoder
block (Vaswani et al.) whose attention ignores padded keys; every exit head and the final
head are LayerNorm, a mean over the real positions and a linear layer (BranchyNet-style
exits after every block but the last, by default).

Padding does not change a text's logits: padded keys get no attention weight, padded
positions are left out of the pooling, and every other operation is per position, so a text
run alone at its own length and the same text right-padded inside a batch give the same
logits (to float rounding). Attention is written as explicit matmuls, not
``F.scaled_dot_product_attention``, so :func:`count_costs` counts it on any device.

With the defaults (dim 64, 4 heads, MLP ratio 2, depth 4, 64 positions, 7 classes) the
model has about 0.16M parameters and one block costs
``2*T*dim*(4 + 2*mlp_ratio)*dim + 4*T*T*dim`` = 5.2 MFLOPs at ``T = 64``.

References:
    Vaswani et al., "Attention Is All You Need", NeurIPS 2017 (the transformer encoder).
    Teerapittayanon, McDanel and Kung, "BranchyNet: Fast Inference via Early Exiting from
    Deep Neural Networks", ICPR 2016 (exit heads on intermediate layers).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .exits import ExitCosts, ExitModel, ExitModelError, count_costs

__all__ = ["ExitTextClassifier", "ExitModelError", "ExitCosts", "count_costs", "VOCAB", "PAD"]

VOCAB = 257  # byte + 1; 0 is padding
PAD = 0


_MASKED = -1e4  # exp(-1e4 - max) is 0 in every float dtype, and it fits fp16


class _MaskedBlock(nn.Module):
    """A pre-norm transformer encoder block; attention ignores keys where ``mask`` is False."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        # explicit matmuls (not F.scaled_dot_product_attention) so FlopCounterMode counts them
        att = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
        # padded keys get a large finite negative score (not -inf, so a row is never all -inf and
        # never NaN); a constant rather than torch.finfo(dtype), which torch.fx cannot trace
        att = att.masked_fill(~mask[:, None, None, :], _MASKED)
        a = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
        x = x + self.proj(a)
        return x + self.mlp(self.norm2(x))


class _MaskedMeanHead(nn.Module):
    """LayerNorm, mean over the real positions, linear."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(x.dtype)
        pooled = (self.norm(x) * m).sum(1) / m.sum(1).clamp(min=1.0)
        return self.fc(pooled)


class ExitTextClassifier(ExitModel):
    """A byte-level transformer encoder classifier with an exit after every block but the last.

    The input is ``(batch, T)`` int64/int32 byte ids in ``0..256`` (0 = padding, right-padded),
    ``1 <= T <= max_len``, every row with at least one real token. ``embed`` returns
    ``(hidden, mask)``; stage ``i`` is block ``i``; heads are called as ``head(hidden, mask)``.

    Example:
        >>> torch.manual_seed(0) is not None
        True
        >>> m = ExitTextClassifier(depth=3).eval()
        >>> m.num_stages, m.exit_depths, m.state_mask
        (3, [1, 2], 1)
        >>> x = torch.tensor([[73, 102, 33, 0], [105, 106, 33, 34]])  # "He ", "hi !" (+1), padded
        >>> h, mask = m.forward_until(x, 1)
        >>> tuple(h.shape), mask.tolist()[0]
        ((2, 4, 64), [True, True, True, False])
        >>> torch.allclose(m(x[:1, :3]), m(x)[:1], atol=1e-5)  # padding does not change logits
        True
        >>> m(torch.zeros(1, 4, dtype=torch.long))
        Traceback (most recent call last):
        ...
        graphs.exits.ExitModelError: ExitTextClassifier expects every row to hold at least one non-padding id (ids 1..256; 0 is padding); rows [0] are all padding
    """

    state_mask = 1

    def __init__(self, dim: int = 64, heads: int = 4, mlp_ratio: int = 2, depth: int = 4,
                 max_len: int = 64, num_classes: int = 7, exits: tuple[int, ...] | None = None):
        super().__init__()
        if dim % heads:
            raise ExitModelError(f"dim {dim} is not divisible by heads {heads}")
        if depth < 1 or max_len < 1:
            raise ExitModelError(f"depth and max_len must be >= 1; got depth={depth!r}, max_len={max_len!r}")
        self.num_classes = num_classes
        self.max_len = max_len
        self.tok = nn.Embedding(VOCAB, dim, padding_idx=PAD)
        self.pos = nn.Parameter(torch.zeros(max_len, dim))
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos, std=0.02)
        with torch.no_grad():
            self.tok.weight[PAD].zero_()
        self.stages = nn.ModuleList([_MaskedBlock(dim, heads, mlp_ratio) for _ in range(depth)])
        exits = tuple(range(1, depth)) if exits is None else tuple(exits)
        for d in exits:
            if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d < depth:
                raise ExitModelError(f"ExitTextClassifier exit depth {d!r} invalid; valid depths: "
                                     f"1..{depth - 1}")
        self.exits = nn.ModuleDict({str(d): _MaskedMeanHead(dim, num_classes) for d in sorted(set(exits))})
        self.head = _MaskedMeanHead(dim, num_classes)

    def check_input(self, x: Any) -> None:
        """Raise :class:`ExitModelError` unless ``x`` is a valid ``(batch, T)`` id tensor."""
        name = type(self).__name__
        form = f"a (batch, T) int64/int32 tensor of byte ids, 1 <= T <= {self.max_len}"
        if not isinstance(x, torch.Tensor):
            raise ExitModelError(f"{name} expects {form}; got {type(x).__name__}")
        if x.dtype not in (torch.int64, torch.int32):
            raise ExitModelError(f"{name} expects {form}; got dtype {x.dtype}")
        if x.dim() != 2 or not 1 <= x.shape[1] <= self.max_len:
            raise ExitModelError(f"{name} expects {form}; got shape {tuple(x.shape)}")
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= VOCAB):
            bad = int(x.min()) if int(x.min()) < 0 else int(x.max())
            raise ExitModelError(f"{name} expects ids in 0..{VOCAB - 1} (UTF-8 byte + 1, 0 = padding); "
                                 f"got id {bad}")
        empty = (~(x != PAD).any(1)).nonzero().flatten().tolist()
        if empty:
            raise ExitModelError(f"{name} expects every row to hold at least one non-padding id "
                                 f"(ids 1..{VOCAB - 1}; 0 is padding); rows {empty[:8]} are all padding")

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """``batch`` rows of ``max_len`` copies of one non-padding id (the byte ``a``)."""
        return torch.full((batch, self.max_len), ord("a") + 1, dtype=torch.int64)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(token embedding + position embedding, x != 0)``: ``(B, T, dim)`` and ``(B, T)`` bool."""
        mask = x != PAD
        return self.tok(x) + self.pos[: x.shape[1]], mask
