"""Reference decoders: openPangu-Embedded-style and Llama-style, one module, named configs.

The architecture is a pre-norm decoder-only transformer: RMSNorm, grouped-query attention
(GQA) with rotary position embeddings, a SiLU-gated MLP and an ``lm_head``. One
:class:`DecoderConfig` covers both families: openPangu-Embedded-1B has biased q/k/v
projections and an untied ``lm_head``; Llama-family models (SmolLM2) have no q/k/v bias
and may tie ``lm_head`` to the embedding (``tie_embeddings``), with their own rotary base
and norm epsilon. Real weights load from a GGUF file with :func:`graphs.gguf.load_gguf`.
It is written with plain torch ops and :func:`torch.nn.functional.scaled_dot_product_attention`
so that :func:`torch.fx.symbolic_trace` captures it; the norms are :class:`torch.nn.RMSNorm`
(an fx leaf module, so each norm is one ``"norm"`` op in a captured graph).

Named configs (see :func:`configs`):

* ``1b``: 26 layers, hidden 1536, 12 query heads and 6 KV heads of dim 128, vocabulary
  153376, context 32768. The MLP intermediate size is **not** in our sources; 6144 is an
  assumption (it gives about 0.92B non-embedding parameters, 1.39B in all). The rotary
  base (``rope_theta``) and the norm epsilon are assumptions too (1e4 and 1e-6).
* ``small``: 4 layers, hidden 256, 4/2 heads of dim 64, vocabulary 4096.
* ``tiny``: 2 layers, hidden 64, 4/2 heads of dim 16, vocabulary 256 (runs in
  milliseconds on a CPU; for tests).
* ``smollm2-135m``: SmolLM2-135M(-Instruct), Llama-style: 30 layers, hidden 576, 9 query
  and 3 KV heads of dim 64, MLP 1536, vocabulary 49152, context 8192, rotary base 1e5,
  eps 1e-5, no q/k/v bias, tied embeddings. Random weights from this config; the real
  ones come with :func:`graphs.gguf.load_gguf`.
* ``tiny-llama``: ``tiny`` in the Llama style (no bias, tied embeddings), for tests.

KV cache and decode. ``forward(input_ids, past_keys=None, past_values=None)``: without a
cache it runs a causal prefill over ``input_ids``; with one, ``past_keys``/``past_values``
are tensors of shape ``(num_layers, batch, num_kv_heads, context_len, head_dim)`` and the
new tokens attend over ``context_len + seq_len`` keys (no mask is needed for a single new
token). :func:`decode_inputs` builds the inputs of one decode step. In the captured decode
graph every weight is read once (as in prefill) while the attention matmuls cost
``4 * batch * num_heads * (context_len + 1) * head_dim`` FLOPs per layer, and the cached
keys/values are read in full: so a decode step is bandwidth-bound, dominated by parameter
bytes plus ``2 * num_layers * batch * num_kv_heads * context_len * head_dim * itemsize``.
The present keys/values are not returned (the graph models the cost of one step).

References:
    openPangu-Embedded-1B model card (architecture and sizes), Huawei / GitCode ascend-tribe, 2025.
    Su et al., "RoFormer: Enhanced Transformer with Rotary Position Embedding", 2021.
    Ainslie et al., "GQA: Training Generalized Multi-Query Transformer Models", 2023.
    Kaplan et al., "Scaling Laws for Neural Language Models", 2020 (2 FLOPs per MAC count).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UnknownNameError

__all__ = ["DecoderConfig", "Decoder", "PanguConfig", "PanguEmbedded", "configs", "get_config", "pangu_embedded", "decoder",
           "example_inputs", "decode_inputs", "param_count", "prefill_flops", "decode_flops"]


@dataclass(frozen=True)
class DecoderConfig:
    """Hyper-parameters of the decoder (all sizes in elements, not bytes).

    Example:
        >>> c = get_config("tiny")
        >>> (c.num_layers, c.hidden, c.num_heads, c.num_kv_heads, c.head_dim)
        (2, 64, 4, 2, 16)
    """

    name: str  # config name, e.g. "1b"
    num_layers: int  # decoder layers
    hidden: int  # model width
    num_heads: int  # query heads
    num_kv_heads: int  # key/value heads (GQA groups)
    head_dim: int  # per-head width
    intermediate: int  # MLP width (1b: assumed 6144, not published)
    vocab: int  # vocabulary size
    max_position: int  # longest context (positions)
    rope_theta: float = 10000.0  # rotary base (assumed)
    norm_eps: float = 1e-6  # RMSNorm epsilon (assumed)
    qkv_bias: bool = True  # q, k, v projections have a bias; o_proj and the MLP have none
    tie_embeddings: bool = False  # lm_head shares the embedding's weight (Llama/SmolLM2 style)

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"config {self.name!r}: num_heads {self.num_heads} is not a "
                             f"multiple of num_kv_heads {self.num_kv_heads}")

    def to_dict(self) -> dict:
        """The config as a plain dict (for JSON graph attributes)."""
        return asdict(self)

    def kv_bytes_per_token(self, itemsize: int = 4) -> int:
        """Bytes of KV cache one token adds over all layers: ``2 * L * K * d * itemsize``.

        Example:
            >>> get_config("smollm2-135m").kv_bytes_per_token(itemsize=4)
            46080
        """
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * int(itemsize)


#: The historical name of :class:`DecoderConfig` (kept for existing code).
PanguConfig = DecoderConfig

_CONFIGS = {
    "tiny": PanguConfig("tiny", num_layers=2, hidden=64, num_heads=4, num_kv_heads=2,
                        head_dim=16, intermediate=128, vocab=256, max_position=512),
    "small": PanguConfig("small", num_layers=4, hidden=256, num_heads=4, num_kv_heads=2,
                         head_dim=64, intermediate=768, vocab=4096, max_position=2048),
    "1b": PanguConfig("1b", num_layers=26, hidden=1536, num_heads=12, num_kv_heads=6,
                      head_dim=128, intermediate=6144, vocab=153376, max_position=32768),
    "smollm2-135m": DecoderConfig("smollm2-135m", num_layers=30, hidden=576, num_heads=9,
                                  num_kv_heads=3, head_dim=64, intermediate=1536, vocab=49152,
                                  max_position=8192, rope_theta=100000.0, norm_eps=1e-5,
                                  qkv_bias=False, tie_embeddings=True),
    "tiny-llama": DecoderConfig("tiny-llama", num_layers=2, hidden=64, num_heads=4, num_kv_heads=2,
                                head_dim=16, intermediate=128, vocab=256, max_position=512,
                                rope_theta=100000.0, norm_eps=1e-5, qkv_bias=False,
                                tie_embeddings=True),
}


def configs() -> tuple[str, ...]:
    """Names of the built-in configs, smallest first.

    Example:
        >>> configs()
        ('tiny', 'small', '1b', 'smollm2-135m', 'tiny-llama')
    """
    return tuple(_CONFIGS)


def get_config(name: str) -> PanguConfig:
    """The named config; an unknown name raises :class:`UnknownNameError` listing the valid ones.

    Example:
        >>> get_config("1b").vocab
        153376
        >>> get_config("7b")
        Traceback (most recent call last):
        ...
        graphs.errors.UnknownNameError: unknown model config '7b'; valid choices: 1b, small, smollm2-135m, tiny, tiny-llama
    """
    if isinstance(name, DecoderConfig):
        return name
    if name not in _CONFIGS:
        raise UnknownNameError("model config", name, _CONFIGS)
    return _CONFIGS[name]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    """GQA self-attention with rotary embeddings and an optional KV cache."""

    def __init__(self, c: DecoderConfig):
        super().__init__()
        self.c = c
        self.q_proj = nn.Linear(c.hidden, c.num_heads * c.head_dim, bias=c.qkv_bias)
        self.k_proj = nn.Linear(c.hidden, c.num_kv_heads * c.head_dim, bias=c.qkv_bias)
        self.v_proj = nn.Linear(c.hidden, c.num_kv_heads * c.head_dim, bias=c.qkv_bias)
        self.o_proj = nn.Linear(c.num_heads * c.head_dim, c.hidden, bias=False)

    def forward(self, x, cos, sin, past_key=None, past_value=None):
        c = self.c
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, c.num_heads, c.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, c.num_kv_heads, c.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, c.num_kv_heads, c.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if past_key is not None:
            k = torch.cat((past_key, k), dim=2)
            v = torch.cat((past_value, v), dim=2)
        rep = c.num_heads // c.num_kv_heads
        s = k.shape[2]
        k = k[:, :, None].expand(b, c.num_kv_heads, rep, s, c.head_dim).reshape(b, c.num_heads, s, c.head_dim)
        v = v[:, :, None].expand(b, c.num_kv_heads, rep, s, c.head_dim).reshape(b, c.num_heads, s, c.head_dim)
        # a causal mask only for prefill; one decode token attends to every cached key
        y = F.scaled_dot_product_attention(q, k, v, is_causal=past_key is None)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, c.num_heads * c.head_dim))


class MLP(nn.Module):
    """SiLU-gated MLP: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, c: DecoderConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden, c.intermediate, bias=False)
        self.up_proj = nn.Linear(c.hidden, c.intermediate, bias=False)
        self.down_proj = nn.Linear(c.intermediate, c.hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``."""

    def __init__(self, c: DecoderConfig):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(c.hidden, eps=c.norm_eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = nn.RMSNorm(c.hidden, eps=c.norm_eps)
        self.mlp = MLP(c)

    def forward(self, x, cos, sin, past_key=None, past_value=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, past_key, past_value)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """The decoder; ``forward(input_ids, past_keys=None, past_values=None) -> logits``.

    With ``config.tie_embeddings`` the ``lm_head`` weight *is* the embedding's (one
    parameter, counted once). Generation with per-sequence KV caches goes through
    :mod:`graphs.decoding` (:class:`graphs.decoding.DecoderShard`), which runs the same
    submodules.

    Example:
        >>> m = pangu_embedded("tiny", device="meta")
        >>> m(*example_inputs(m, seq_len=8)).shape
        torch.Size([1, 8, 256])
    """

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        c = config
        self.embed_tokens = nn.Embedding(c.vocab, c.hidden)
        self.layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.num_layers))
        self.norm = nn.RMSNorm(c.hidden, eps=c.norm_eps)
        self.lm_head = nn.Linear(c.hidden, c.vocab, bias=False)
        if c.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def forward(self, input_ids, past_keys=None, past_values=None):
        c = self.config
        t = input_ids.shape[1]
        past = 0 if past_keys is None else past_keys.shape[3]
        # rotary tables computed on the fly (no buffers: the state is exactly the parameters)
        inv_freq = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2, device=input_ids.device,
                                                        dtype=torch.float32) / c.head_dim))
        pos = torch.arange(past, past + t, device=input_ids.device, dtype=torch.float32)
        freqs = torch.outer(pos, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        x = self.embed_tokens(input_ids)
        cos = emb.cos().to(x.dtype)
        sin = emb.sin().to(x.dtype)
        for i, layer in enumerate(self.layers):
            if past_keys is None:
                x = layer(x, cos, sin)
            else:
                x = layer(x, cos, sin, past_keys[i], past_values[i])
        return self.lm_head(self.norm(x))


#: The historical name of :class:`Decoder` (kept for existing code).
PanguEmbedded = Decoder


def pangu_embedded(name: str = "tiny", device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32, seed: int | None = 0) -> Decoder:
    """Build the named config's model; its config is ``model.config``.

    On ``device="meta"`` no weights are allocated, so the full ``1b`` config costs no memory
    (use it for capture and cost analysis; it cannot produce numbers). ``seed`` makes the
    random initialisation reproducible (None leaves the global RNG alone).

    Example:
        >>> m = pangu_embedded("1b", device="meta")
        >>> m.config.num_layers, sum(p.numel() for p in m.parameters()) == param_count(m.config)
        (26, True)
    """
    c = get_config(name)
    if seed is not None and torch.device(device).type != "meta":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return Decoder(c).to(device=device, dtype=dtype).eval()
    with torch.device(device):
        model = Decoder(c)
    return model.to(dtype=dtype).eval()


def decoder(name: str = "tiny", device: str | torch.device = "cpu",
            dtype: torch.dtype = torch.float32, seed: int | None = 0) -> Decoder:
    """Build any named decoder config (random weights); the same as :func:`pangu_embedded`.

    Example:
        >>> m = decoder("tiny-llama"); m.lm_head.weight is m.embed_tokens.weight
        True
    """
    return pangu_embedded(name, device=device, dtype=dtype, seed=seed)


def _device_of(model: nn.Module, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def example_inputs(model: Decoder, batch: int = 1, seq_len: int = 128,
                   device: str | torch.device | None = None) -> tuple[torch.Tensor]:
    """``(input_ids,)`` of shape ``(batch, seq_len)`` for a prefill, on the model's device
    unless ``device`` is given (deterministic ids on real devices).

    Example:
        >>> m = pangu_embedded("tiny")
        >>> example_inputs(m, batch=2, seq_len=5)[0].shape
        torch.Size([2, 5])
    """
    c = model.config
    _check_len(c, seq_len, "seq_len")
    dev = _device_of(model, device)
    if dev.type == "meta":
        return (torch.empty(batch, seq_len, dtype=torch.long, device=dev),)
    ids = (torch.arange(batch * seq_len, dtype=torch.long) * 7919 % c.vocab).view(batch, seq_len)
    return (ids.to(dev),)


def decode_inputs(model: Decoder, context_len: int, batch: int = 1,
                  device: str | torch.device | None = "meta") -> tuple[torch.Tensor, ...]:
    """``(input_ids, past_keys, past_values)`` for one decode step over ``context_len``
    cached positions (see the module docstring for the cache layout and the costs).

    Example:
        >>> m = pangu_embedded("1b", device="meta")
        >>> ids, pk, pv = decode_inputs(m, context_len=4096)
        >>> tuple(ids.shape), tuple(pk.shape)
        ((1, 1), (26, 1, 6, 4096, 128))
    """
    c = model.config
    _check_len(c, context_len + 1, "context_len + 1")
    dev = _device_of(model, device)
    dt = next(model.parameters()).dtype
    shape = (c.num_layers, batch, c.num_kv_heads, context_len, c.head_dim)
    if dev.type == "meta":
        ids = torch.empty(batch, 1, dtype=torch.long, device=dev)
        return ids, torch.empty(shape, dtype=dt, device=dev), torch.empty(shape, dtype=dt, device=dev)
    g = torch.Generator().manual_seed(0)
    ids = (torch.arange(batch, dtype=torch.long) * 7919 % c.vocab).view(batch, 1)
    pk = torch.randn(shape, generator=g, dtype=dt)
    pv = torch.randn(shape, generator=g, dtype=dt)
    return ids.to(dev), pk.to(dev), pv.to(dev)


def _check_len(c: DecoderConfig, n: int, what: str) -> None:
    if not isinstance(n, int) or n < 1 or n > c.max_position:
        raise ValueError(f"{what} must be an int in [1, {c.max_position}] for config "
                         f"{c.name!r}, got {n!r}")


# ----------------------------------------------------------------- analytic counts
def param_count(config: DecoderConfig | str) -> int:
    """Number of parameters, from the architecture's formula (not by building the model).

    ``V*h`` (embedding) + ``h*V`` (lm_head, unless tied) + ``h`` (final norm) + per layer:
    ``h*(H+2K)*d + (H+2K)*d`` (q, k, v with bias) + ``H*d*h`` (o_proj) + ``3*h*I`` (MLP)
    + ``2*h`` (two norms), with ``H``/``K`` query/KV heads of dim ``d``.

    Example:
        >>> param_count("1b")
        1391457792
        >>> param_count("smollm2-135m")
        134515008
    """
    c = get_config(config)
    h, d, H, K = c.hidden, c.head_dim, c.num_heads, c.num_kv_heads
    qkv = h * (H + 2 * K) * d + ((H + 2 * K) * d if c.qkv_bias else 0)
    per_layer = qkv + H * d * h + 3 * h * c.intermediate + 2 * h
    return c.vocab * h + c.num_layers * per_layer + h + (0 if c.tie_embeddings else h * c.vocab)


def _linear_macs_per_token(c: PanguConfig) -> int:
    h, d, H, K = c.hidden, c.head_dim, c.num_heads, c.num_kv_heads
    per_layer = h * (H + 2 * K) * d + H * d * h + 3 * h * c.intermediate
    return c.num_layers * per_layer + h * c.vocab


def prefill_flops(config: DecoderConfig | str, seq_len: int, batch: int = 1) -> int:
    """Matmul FLOPs of a causal prefill of ``seq_len`` tokens (a multiply-add counts 2).

    ``2 * batch * seq_len * W`` for the weight matmuls (``W`` = weights of every linear
    layer, lm_head included; embedding lookups and biases cost no matmul FLOPs) plus, per
    layer, ``4 * batch * H * seq_len**2 * d`` for ``Q K^T`` and ``P V`` computed in full
    (as :class:`torch.utils.flop_counter.FlopCounterMode` counts attention; the causal mask
    does not halve it). Pointwise ops, norms and softmax are not included: a captured
    graph's total is within a fraction of a percent above this.

    Example:
        >>> prefill_flops("tiny", seq_len=8)
        1474560
    """
    c = get_config(config)
    attn = c.num_layers * 4 * batch * c.num_heads * seq_len * seq_len * c.head_dim
    return 2 * batch * seq_len * _linear_macs_per_token(c) + attn


def decode_flops(config: DecoderConfig | str, context_len: int, batch: int = 1) -> int:
    """Matmul FLOPs of one decode step over ``context_len`` cached positions.

    ``2 * batch * W + num_layers * 4 * batch * H * (context_len + 1) * d`` (see
    :func:`prefill_flops`).

    Example:
        >>> decode_flops("tiny", context_len=7) == prefill_flops("tiny", 1) + 2 * 4 * 4 * 7 * 16
        True
    """
    c = get_config(config)
    attn = c.num_layers * 4 * batch * c.num_heads * (context_len + 1) * c.head_dim
    return 2 * batch * _linear_macs_per_token(c) + attn
