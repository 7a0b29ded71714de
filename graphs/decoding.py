"""Token generation on a :class:`graphs.models.Decoder`: KV caches, shards, step costs.

A decoder is a chain of *blocks*, named as the nodes of its layer-granularity op graph:
``embed_tokens``, ``layers.0`` ... ``layers.{L-1}``, ``norm``, ``lm_head``
(:func:`block_names`). A :class:`DecoderShard` runs a contiguous range of blocks with
per-sequence KV caches (:class:`SequenceKV`): the whole model is one shard; a placement
that puts layers 0-14 on one device and the rest on another makes two, and only the hidden
state of the new tokens crosses between them, never a cache.

One step of a shard takes ``x`` of ``batch`` sequences with ``T`` new tokens each (token ids
for a shard that starts with the embedding, hidden states otherwise) and the caches of
those sequences; it appends the new keys and values to each cache and attends each
sequence over its own cache (ragged lengths: the projections and the MLP run batched, the
attention runs per sequence). Prefill is a step with ``T = prompt length`` on an empty
cache; decode is a step with ``T = 1``. A shard that ends with ``lm_head`` returns the
logits of each sequence's last position (``(batch, vocab)``), or of every position with
``all_logits=True`` (``(batch, T, vocab)``, for verifying drafted tokens).

:func:`step_graph` is the cost picture of one step as an op graph (a chain of block nodes
with FLOPs, bytes and parameter bytes from the architecture's formulas, and the KV cache a
layer keeps as ``state_bytes``): policies place it for either phase (prefill is compute-
bound, decode is memory-bound), and simulated devices price each step with it.

Example:
    >>> import torch
    >>> from graphs.models import decoder
    >>> m = decoder("tiny")
    >>> ids = torch.tensor([[1, 2, 3, 4]])
    >>> out = generate_local(m, ids[0].tolist(), max_new_tokens=3)
    >>> len(out)
    3
    >>> shards = [DecoderShard(m, 0, 2), DecoderShard(m, 2, len(block_names(m.config)))]
    >>> caches = [s.new_cache(16) for s in shards]
    >>> h = shards[0](ids, [caches[0]])
    >>> logits = shards[1](h, [caches[1]])
    >>> torch.testing.assert_close(logits, m(ids)[:, -1])
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import GraphError
from .models import Decoder, DecoderConfig, _rotate_half
from .opgraph import OpGraph
from .sampling import SamplingParams, sample

__all__ = ["block_names", "SequenceKV", "DecoderShard", "DecodingError", "shard_ranges",
           "generate_local", "step_graph", "block_work", "check_prompt"]


class DecodingError(GraphError, ValueError):
    """A bad generation input or shard range (the message names the value and the valid range).

    Example:
        >>> from graphs.models import get_config
        >>> check_prompt(get_config("tiny"), [], 4)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        graphs.decoding.DecodingError: ...
    """


def block_names(config: DecoderConfig) -> tuple[str, ...]:
    """The decoder's blocks in order: ``embed_tokens``, ``layers.i``..., ``norm``, ``lm_head``.

    Example:
        >>> from graphs.models import get_config
        >>> block_names(get_config("tiny"))
        ('embed_tokens', 'layers.0', 'layers.1', 'norm', 'lm_head')
    """
    return ("embed_tokens", *(f"layers.{i}" for i in range(config.num_layers)), "norm", "lm_head")


def check_prompt(config: DecoderConfig, prompt: Sequence[int], max_new_tokens: int) -> list[int]:
    """Validate a prompt and a token budget against ``config``; returns the ids as a list.

    Example:
        >>> from graphs.models import get_config
        >>> check_prompt(get_config("tiny"), [1, 2], 3)
        [1, 2]
        >>> check_prompt(get_config("tiny"), [1, 256], 3)
        Traceback (most recent call last):
        ...
        graphs.decoding.DecodingError: prompt token 1 is 256, outside the vocabulary [0, 255] of config 'tiny'
    """
    if isinstance(prompt, torch.Tensor):
        if prompt.dim() == 2 and prompt.shape[0] == 1:
            prompt = prompt[0]
        if prompt.dim() != 1 or prompt.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise DecodingError(f"prompt must be a 1-D integer tensor or a list of ints, got a "
                                f"{str(prompt.dtype).replace('torch.', '')} tensor of shape "
                                f"{tuple(prompt.shape)}")
        prompt = prompt.tolist()
    if isinstance(prompt, (str, bytes)) or not isinstance(prompt, Sequence):
        raise DecodingError(f"prompt must be a list of token ids (or a 1-D integer tensor), got "
                            f"{type(prompt).__name__}; encode text with the model's tokenizer first")
    ids = list(prompt)
    if not ids:
        raise DecodingError("prompt is empty: generation needs at least one token (e.g. BOS)")
    for i, t in enumerate(ids):
        if isinstance(t, bool) or not isinstance(t, int):
            raise DecodingError(f"prompt token {i} is {t!r}, not an int")
        if not 0 <= t < config.vocab:
            raise DecodingError(f"prompt token {i} is {t}, outside the vocabulary [0, {config.vocab - 1}] "
                                f"of config {config.name!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise DecodingError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if len(ids) + max_new_tokens > config.max_position:
        raise DecodingError(f"prompt of {len(ids)} tokens + max_new_tokens {max_new_tokens} = "
                            f"{len(ids) + max_new_tokens} exceeds the context of config "
                            f"{config.name!r} ({config.max_position} positions)")
    return ids


class SequenceKV:
    """One sequence's KV cache for the layers of one shard.

    Per hosted layer a key and a value buffer of shape ``(num_kv_heads, capacity, head_dim)``;
    ``length`` positions are filled. Capacity grows by doubling when a step needs more
    (up to the config's context), so a caller that knows the final length reserves it at
    once and nothing is ever copied.

    Example:
        >>> from graphs.models import get_config
        >>> kv = SequenceKV(get_config("tiny"), layers=2, capacity=8)
        >>> kv.length, kv.capacity, kv.nbytes
        (0, 8, 4096)
    """

    def __init__(self, config: DecoderConfig, layers: int, capacity: int,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        self.config = config
        self.length = 0
        cap = max(1, min(int(capacity), config.max_position))
        shape = (config.num_kv_heads, cap, config.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]

    @property
    def capacity(self) -> int:
        """Positions the buffers hold now."""
        return self.k[0].shape[1] if self.k else self.config.max_position

    @property
    def nbytes(self) -> int:
        """Bytes the buffers hold (allocated, not only filled)."""
        return sum(t.numel() * t.element_size() for t in (*self.k, *self.v))

    def reserve(self, n: int) -> None:
        """Make room for ``n`` more positions (doubling the buffers when needed)."""
        need = self.length + n
        if need > self.config.max_position:
            raise DecodingError(f"sequence of {need} positions exceeds the context of config "
                                f"{self.config.name!r} ({self.config.max_position})")
        if need <= self.capacity:
            return
        cap = min(max(need, 2 * self.capacity), self.config.max_position)
        for bufs in (self.k, self.v):
            for i, t in enumerate(bufs):
                new = t.new_zeros((t.shape[0], cap, t.shape[2]))
                new[:, : self.length] = t[:, : self.length]
                bufs[i] = new


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int) -> torch.Tensor:
    """Attention of ``T`` new queries (``(1, H, T, d)``) at positions ``start..start+T-1``
    over the keys/values ``(K, start+T, d)`` of one sequence (causal, grouped heads)."""
    t = q.shape[2]
    s = k.shape[1]
    k, v = k[None], v[None]
    if t == 1:
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    if start == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    mask = torch.arange(s, device=q.device)[None, :] <= (start + torch.arange(t, device=q.device))[:, None]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


def _layer_step(layer: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                caches: Sequence[SequenceKV], j: int, starts: Sequence[int]) -> torch.Tensor:
    """One decoder layer over ``x`` (``(B, T, h)``), appending to layer ``j`` of each cache."""
    attn = layer.self_attn
    c: DecoderConfig = attn.c
    b, t, _ = x.shape
    h = layer.input_layernorm(x)
    q = attn.q_proj(h).view(b, t, c.num_heads, c.head_dim).transpose(1, 2)
    k = attn.k_proj(h).view(b, t, c.num_kv_heads, c.head_dim).transpose(1, 2)
    v = attn.v_proj(h).view(b, t, c.num_kv_heads, c.head_dim).transpose(1, 2)
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    ys = []
    for i, (kv, s0) in enumerate(zip(caches, starts)):
        kv.k[j][:, s0:s0 + t] = k[i]
        kv.v[j][:, s0:s0 + t] = v[i]
        ys.append(_attend(q[i:i + 1], kv.k[j][:, : s0 + t], kv.v[j][:, : s0 + t], s0))
    y = torch.cat(ys) if len(ys) > 1 else ys[0]
    x = x + attn.o_proj(y.transpose(1, 2).reshape(b, t, c.num_heads * c.head_dim))
    return x + layer.mlp(layer.post_attention_layernorm(x))


class DecoderShard(nn.Module):
    """Blocks ``start..stop-1`` of a decoder (see :func:`block_names`), run with KV caches.

    The shard holds the decoder's own submodules (no copies), so shipping a shard to a
    device ships only its blocks' weights. ``id`` names it in an executor.

    Example:
        >>> from graphs.models import decoder
        >>> s = DecoderShard(decoder("tiny"), 1, 3, id=4)
        >>> s.blocks, s.first, s.last
        (('layers.0', 'layers.1'), False, False)
    """

    def __init__(self, model: Decoder, start: int, stop: int, id: int = 0):
        super().__init__()
        c = model.config
        names = block_names(c)
        if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start < stop <= len(names)):
            raise DecodingError(f"shard range [{start}, {stop}) is not a non-empty range of the "
                                f"{len(names)} blocks of config {c.name!r} (0..{len(names)})")
        self.id = int(id)
        self.config = c
        self.start, self.stop = start, stop
        self.blocks = names[start:stop]
        self.first = start == 0
        self.last = stop == len(names)
        self.embed_tokens = model.embed_tokens if start == 0 else None
        lo, hi = max(start - 1, 0), min(stop - 1, c.num_layers)
        self.layer_ids = tuple(range(lo, hi))
        self.layers = nn.ModuleList(model.layers[i] for i in self.layer_ids)
        self.norm = model.norm if "norm" in self.blocks else None
        self.lm_head = model.lm_head if "lm_head" in self.blocks else None
        inv = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.float32) / c.head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)

    def new_cache(self, capacity: int, device: str | torch.device | None = None) -> SequenceKV:
        """An empty cache for one sequence, room for ``capacity`` positions."""
        p = next(self.parameters())
        return SequenceKV(self.config, len(self.layers), capacity, dtype=p.dtype,
                          device=p.device if device is None else device)

    def cache_bytes(self, positions: int, itemsize: int | None = None) -> int:
        """Bytes of KV cache ``positions`` positions of one sequence take in this shard."""
        if itemsize is None:
            itemsize = next(self.parameters()).element_size()
        c = self.config
        return 2 * len(self.layers) * c.num_kv_heads * c.head_dim * positions * itemsize

    def _rope(self, starts: Sequence[int], t: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary cos/sin, shape (B, 1, T, head_dim), for ``t`` positions from each ``starts``."""
        pos = (torch.tensor(list(starts), dtype=torch.float32, device=device)[:, None]
               + torch.arange(t, dtype=torch.float32, device=device))
        freqs = pos[..., None] * self.inv_freq.to(device)
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(self, x: torch.Tensor, caches: Sequence[SequenceKV] | None = None,
                all_logits: bool = False) -> torch.Tensor:
        c = self.config
        if self.first:
            if x.dim() != 2 or x.dtype != torch.long:
                raise DecodingError(f"shard {self.blocks[0]}..{self.blocks[-1]} takes token ids "
                                    f"(batch, T) int64, got {str(x.dtype).replace('torch.', '')} "
                                    f"{tuple(x.shape)}")
            x = self.embed_tokens(x)
        elif x.dim() != 3 or x.shape[-1] != c.hidden:
            raise DecodingError(f"shard {self.blocks[0]}..{self.blocks[-1]} takes hidden states "
                                f"(batch, T, {c.hidden}), got {tuple(x.shape)}")
        b, t = x.shape[0], x.shape[1]
        if len(self.layers):
            if caches is None or len(caches) != b:
                raise DecodingError(f"shard with layers {self.layer_ids[0]}..{self.layer_ids[-1]} needs "
                                    f"one cache per sequence: {b} sequences, "
                                    f"{'no' if caches is None else len(caches)} caches")
            starts = [kv.length for kv in caches]
            for kv in caches:
                kv.reserve(t)
            cos, sin = self._rope(starts, t, x.device, x.dtype)
            for j, layer in enumerate(self.layers):
                x = _layer_step(layer, x, cos, sin, caches, j, starts)
            for kv in caches:
                kv.length += t
        if self.norm is not None:
            if self.lm_head is not None and not all_logits:
                x = x[:, -1:]
            x = self.norm(x)
        if self.lm_head is not None:
            x = self.lm_head(x)
            return x if all_logits else x[:, -1]
        return x


def shard_ranges(config: DecoderConfig, assignment: Mapping[str, str]) -> list[tuple[str, int, int]]:
    """Maximal runs of consecutive blocks on one device: ``[(device, start, stop), ...]``.

    ``assignment`` maps block names (and possibly other nodes, ignored) to devices, as a
    plan of :func:`step_graph` or of a captured layer-granularity graph does.

    Example:
        >>> from graphs.models import get_config
        >>> a = {"embed_tokens": "npu", "layers.0": "npu", "layers.1": "gpu", "norm": "gpu",
        ...      "lm_head": "gpu"}
        >>> shard_ranges(get_config("tiny"), a)
        [('npu', 0, 2), ('gpu', 2, 5)]
    """
    names = block_names(config)
    missing = [n for n in names if n not in assignment]
    if missing:
        raise DecodingError(f"the assignment places no device for block(s) {', '.join(missing[:5])}"
                            f"{' ...' if len(missing) > 5 else ''}; it must cover {names[0]}..{names[-1]}")
    out: list[tuple[str, int, int]] = []
    for i, n in enumerate(names):
        d = assignment[n]
        if out and out[-1][0] == d:
            out[-1] = (d, out[-1][1], i + 1)
        else:
            out.append((d, i, i + 1))
    return out


@torch.no_grad()
def generate_local(model: Decoder, prompt: Sequence[int], max_new_tokens: int,
                   sampling: SamplingParams | None = None, stop_ids: Sequence[int] = ()) -> list[int]:
    """Generate on ``model`` in this process, without the runtime: the reference the
    partitioned runtime is tested against and benchmarked beside.

    Prefill once, then one decode step per token with the KV cache; stops after
    ``max_new_tokens`` or after emitting a token in ``stop_ids`` (which is kept).
    Returns the generated ids (the prompt excluded).

    Example:
        >>> from graphs.models import decoder
        >>> torch.manual_seed(0) is not None
        True
        >>> m = decoder("tiny").eval()
        >>> out = generate_local(m, [1, 2, 3], 4)
        >>> len(out), out == generate_local(m, [1, 2, 3], 4)  # greedy: deterministic
        (4, True)
    """
    c = model.config
    ids = check_prompt(c, prompt, max_new_tokens)
    sampling = sampling or SamplingParams()
    shard = DecoderShard(model, 0, len(block_names(c)))
    kv = shard.new_cache(len(ids) + max_new_tokens)
    out: list[int] = []
    x = torch.tensor([ids], dtype=torch.long)
    stops = set(stop_ids)
    for step in range(max_new_tokens):
        logits = shard(x, [kv])
        tok = int(sample(logits, [sampling], [step])[0])
        out.append(tok)
        if tok in stops:
            break
        x = torch.tensor([[tok]], dtype=torch.long)
    return out


# ------------------------------------------------------------------ step costs
def block_work(config: DecoderConfig, block: str, *, batch: int, new_tokens: int, context: int,
               itemsize: int = 4, all_logits: bool = False) -> dict:
    """FLOPs, bytes and parameter bytes of one step of ``block`` (architecture formulas).

    ``batch`` sequences each add ``new_tokens`` tokens after ``context`` cached positions.
    A layer: ``2 * B * T * W`` matmul FLOPs (``W`` its weights) plus
    ``4 * B * H * T * (context + T) * d`` for attention (as :func:`graphs.models.prefill_flops`
    counts it); it reads its weights once, the cached keys and values of every sequence
    (``2 * B * K * context * d`` elements) and its activations, and writes the new keys,
    values and its output. The embedding reads only the rows of the new tokens (a gather),
    not the table. The head (``norm`` + ``lm_head``) runs on each sequence's last position
    unless ``all_logits``. Elementwise work, norms and softmax count their bytes, not FLOPs.

    Example:
        >>> from graphs.models import get_config, decode_flops
        >>> c = get_config("tiny")
        >>> w = [block_work(c, b, batch=1, new_tokens=1, context=7) for b in block_names(c)]
        >>> sum(x["flops"] for x in w) == decode_flops(c, context_len=7)
        True
    """
    c = config
    b, t, s = int(batch), int(new_tokens), int(context) + int(new_tokens)
    h, d, H, K, I, V = c.hidden, c.head_dim, c.num_heads, c.num_kv_heads, c.intermediate, c.vocab
    act = b * t * h * itemsize
    if block == "embed_tokens":
        return dict(kind="embedding", flops=0, param_bytes=V * h * itemsize,
                    bytes_in=act + b * t * 8, bytes_out=act, launches=1)
    if block.startswith("layers."):
        w = h * (H + 2 * K) * d + H * d * h + 3 * h * I
        params = (w + ((H + 2 * K) * d if c.qkv_bias else 0) + 2 * h) * itemsize
        flops = 2 * b * t * w + 4 * b * H * t * s * d
        inter = b * t * ((H + 2 * K) * d + H * d + 3 * I + 4 * h) * itemsize  # q,k,v, attn out, mlp, norms
        kv_read = 2 * b * K * int(context) * d * itemsize
        kv_write = 2 * b * K * t * d * itemsize
        return dict(kind="group", flops=flops, param_bytes=params,
                    bytes_in=params + act + kv_read + inter, bytes_out=act + kv_write + inter,
                    launches=20 + 2 * b)
    rows = b * (t if all_logits else 1)
    if block == "norm":
        return dict(kind="norm", flops=0, param_bytes=h * itemsize,
                    bytes_in=rows * h * itemsize + h * itemsize, bytes_out=rows * h * itemsize, launches=1)
    if block == "lm_head":
        return dict(kind="matmul", flops=2 * rows * h * V, param_bytes=V * h * itemsize,
                    bytes_in=V * h * itemsize + rows * h * itemsize, bytes_out=rows * V * itemsize,
                    launches=1)
    raise DecodingError(f"unknown block {block!r}; valid: embed_tokens, layers.<i>, norm, lm_head")


def step_graph(config: DecoderConfig, *, batch: int = 1, new_tokens: int = 1, context: int = 0,
               itemsize: int = 4, kv_positions: int = 0, all_logits: bool = False,
               name: str | None = None) -> OpGraph:
    """One generation step as a chain op graph of the decoder's blocks (see :func:`block_work`).

    Prefill of a ``P``-token prompt: ``new_tokens=P, context=0``; a decode step at context
    ``C``: ``new_tokens=1, context=C``. ``kv_positions`` is the KV cache each layer keeps
    resident, in positions over all sequences (``batch * max_context`` for a plan that must
    hold a full batch at full length); it lands on the layer nodes as ``state_bytes``, which
    :meth:`policies.cost.CostModel.node_memory` counts against the device's memory.

    Example:
        >>> from graphs.models import get_config
        >>> g = step_graph(get_config("tiny"), new_tokens=1, context=31, kv_positions=32)
        >>> list(g.nodes)[:3], g.nodes["layers.0"]["state_bytes"]
        (['embed_tokens', 'layers.0', 'layers.1'], 8192)
    """
    c = config
    for what, v, lo in (("batch", batch, 1), ("new_tokens", new_tokens, 1), ("context", context, 0),
                        ("kv_positions", kv_positions, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise DecodingError(f"{what} must be an int >= {lo}, got {v!r}")
    phase = "prefill" if context == 0 and new_tokens > 1 else "decode"
    g = OpGraph(granularity="layer", name=name or f"{c.name}:{phase}")
    g.graph.update(phase=phase, batch=batch, new_tokens=new_tokens, context=context, config=c.name)
    names = block_names(c)
    dtype = {2: "float16", 4: "float32", 8: "float64"}.get(itemsize, "float32")
    for n in names:
        w = block_work(c, n, batch=batch, new_tokens=new_tokens, context=context, itemsize=itemsize,
                       all_logits=all_logits)
        launches = w.pop("launches")
        layer = n if n.startswith("layers.") else None
        state = 2 * c.num_kv_heads * c.head_dim * kv_positions * itemsize if layer else 0
        kinds = {w["kind"]: launches} if w["kind"] != "group" else {
            "matmul": 7, "norm": 2, "elementwise": launches - 9 - 2 * batch, "attention": 2 * batch}
        g.add_node(n, op="group", target=n, module=n, layer=layer, members=(n,), kinds=kinds,
                   dtype=dtype, state_bytes=state, **w)
    for u, v in zip(names, names[1:]):
        g.add_edge(u, v, bytes=g.nodes[u]["bytes_out"])
    return g

