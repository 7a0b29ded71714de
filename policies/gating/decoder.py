"""Early exits for the decoder reference models (:mod:`graphs.models`), prefill only.

:func:`attach_exits` wraps a :class:`graphs.models.Decoder` in the exit-model interface of
:mod:`graphs.exits` (its adapter: the stem is the token embedding, the input check accepts
integer token ids ``(batch, seq)`` inside the vocabulary, the state is the hidden
``(batch, seq, hidden)``): the stages are the decoder layers, and an
exit after layer ``k`` applies the final norm and ``lm_head`` to layer ``k``'s output -- the
shared-head early exit of CALM (Schuster et al., "Confident Adaptive Language Modeling",
NeurIPS 2022) and LayerSkip (Elhoushi et al., ACL 2024). With ``share_head=False`` each exit
gets its own trainable copy of the norm and head instead. The KV-cache decode path is not
wrapped (exits in decode need the skipped layers' caches filled, as CALM does; not done here).
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from graphs.models import PanguEmbedded
from graphs.exits import ExitModel, ExitModelError

from .gates import GatingError

__all__ = ["DecoderExits", "attach_exits"]


class _LMHead(nn.Module):
    def __init__(self, norm: nn.Module, lm_head: nn.Module):
        super().__init__()
        self.norm, self.lm_head = norm, lm_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(x))


class DecoderExits(ExitModel):
    """A decoder with exit heads after chosen layers, in the exit-model interface (an
    :class:`graphs.exits.ExitModel` whose stem is the token embedding and whose stages take
    rotary embeddings).

    Hidden states are ``(batch, seq, hidden)``; inputs are token ids ``(batch, seq)``.

    Example:
        >>> from graphs.models import pangu_embedded, example_inputs
        >>> m = attach_exits(pangu_embedded("tiny"), [1])
        >>> ids, = example_inputs(m.model, seq_len=4)
        >>> torch.allclose(m.forward_from(m.forward_until(ids, 1), 1), m.model(ids), atol=1e-5)
        True
        >>> torch.allclose(m.exit_logits(m.forward_until(ids, 1), 1), m.forward_all(ids)[0])
        True
    """

    def __init__(self, model: PanguEmbedded, depths: Sequence[int], share_head: bool = True):
        super().__init__()
        n = len(model.layers)
        bad = [d for d in depths if not isinstance(d, int) or not 1 <= d < n]
        if bad or not depths:
            raise GatingError(f"exit depths {list(depths)!r} invalid for a {n}-layer decoder; valid depths: 1..{n - 1}")
        self.model = model
        self.stages = model.layers
        self.head = _LMHead(model.norm, model.lm_head)
        make = (lambda: _LMHead(model.norm, model.lm_head)) if share_head else \
            (lambda: _LMHead(copy.deepcopy(model.norm), copy.deepcopy(model.lm_head)))
        self.exits = nn.ModuleDict({str(d): make() for d in sorted(set(depths))})
        self.num_classes = model.config.vocab

    def _rope(self, t: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.model.config
        inv = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2, device=device, dtype=torch.float32) / c.head_dim))
        freqs = torch.outer(torch.arange(t, device=device, dtype=torch.float32), inv)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def _check_depth(self, depth: int, exit_needed: bool = False) -> None:
        try:
            super()._check_depth(depth, exit_needed)
        except ExitModelError as e:  # the decoder's errors are the gating policy's
            raise GatingError(str(e)) from None

    def run_stages(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Layers ``start .. stop-1`` applied to the hidden states after ``start`` layers."""
        cos, sin = self._rope(x.shape[1], x.device, x.dtype)
        for layer in self.stages[start:stop]:
            x = layer(x, cos, sin)
        return x

    def check_input(self, input_ids: torch.Tensor) -> None:
        """Token ids: an integer tensor ``(batch, seq)`` with ``seq >= 1`` and ids in the vocabulary."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 \
                or input_ids.dtype not in (torch.int32, torch.int64) or input_ids.shape[1] < 1:
            desc = (f"{tuple(input_ids.shape)} {input_ids.dtype}" if isinstance(input_ids, torch.Tensor)
                    else type(input_ids).__name__)
            raise GatingError(f"input_ids must be an integer tensor of shape (batch, seq>=1); got {desc}")
        vocab = self.model.config.vocab
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab):
            bad = int(input_ids.min()) if int(input_ids.min()) < 0 else int(input_ids.max())
            raise GatingError(f"token id {bad} out of range; valid ids are 0..{vocab - 1}")

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """``batch`` sequences of 8 token ids."""
        return torch.arange(8).remainder(self.model.config.vocab).repeat(batch, 1)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The token embedding (the stem)."""
        return self.model.embed_tokens(input_ids)


def attach_exits(model: PanguEmbedded, depths: Sequence[int], share_head: bool = True) -> DecoderExits:
    """Wrap a decoder with exits after the given layers (see :class:`DecoderExits`).

    Example:
        >>> from graphs.models import pangu_embedded
        >>> attach_exits(pangu_embedded("tiny"), [1]).exit_depths
        [1]
        >>> attach_exits(pangu_embedded("tiny"), [2])
        Traceback (most recent call last):
        ...
        policies.gating.gates.GatingError: exit depths [2] invalid for a 2-layer decoder; valid depths: 1..1
    """
    return DecoderExits(model, depths, share_head)
