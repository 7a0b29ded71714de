"""A byte-level BPE tokenizer built from a GGUF file's vocabulary, with its chat template.

A GGUF file of a GPT-2-style model (``tokenizer.ggml.model == "gpt2"``) carries the whole
tokenizer in its metadata: the vocabulary (``tokenizer.ggml.tokens``, id order), the BPE
merges (``tokenizer.ggml.merges``, ``"a b"`` strings in rank order), each token's type
(``tokenizer.ggml.token_type``: 1 normal, 3 control, 4 user-defined, ...), the bos/eos ids
and a Jinja chat template (``tokenizer.chat_template``). :class:`Tokenizer` rebuilds it
with the maintained `tokenizers <https://github.com/huggingface/tokenizers>`_ library (no
hand-written BPE) and renders the template with jinja2 in a sandbox, as transformers does.

The pre-tokenizer follows ``tokenizer.ggml.pre``: ``"smollm"`` (SmolLM/SmolLM2) splits every
digit on its own before the GPT-2 regex (``Digits(individual_digits=True)`` then
``ByteLevel(add_prefix_space=False)``), as the model's Hugging Face ``tokenizer.json`` and
llama.cpp's ``LLAMA_VOCAB_PRE_TYPE_SMOLLM`` do; other values get plain GPT-2 ``ByteLevel``.
Control tokens (``<|im_start|>``, ``<|im_end|>``, ``<|endoftext|>``, ...) are added as
special tokens, so they are matched whole in the text and dropped by
``decode(..., skip_special_tokens=True)``.

References:
    Sennrich et al., "Neural Machine Translation of Rare Words with Subword Units", 2016 (BPE).
    Radford et al., "Language Models are Unsupervised Multitask Learners", 2019 (byte-level BPE).
    GGUF specification, ggml-org/ggml ``docs/gguf.md`` (the ``tokenizer.ggml.*`` keys).
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from .errors import GraphError

__all__ = ["Tokenizer", "TokenizerError"]

# llama.cpp token types (tokenizer.ggml.token_type)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
# pre-tokenizers that isolate every digit before the GPT-2 regex
_DIGIT_PRE = {"smollm"}


class TokenizerError(GraphError):
    """A tokenizer cannot be built (missing or unsupported GGUF metadata) or used.

    Example:
        >>> Tokenizer.from_metadata(["a", "b", "ab"], ["ab"])
        Traceback (most recent call last):
        ...
        graphs.tokenizer.TokenizerError: malformed BPE merge 'ab'; expected two tokens separated by one space
    """


class Tokenizer:
    """Byte-level BPE tokenizer with special tokens and a chat template.

    Build it with :meth:`from_gguf` (or :meth:`from_metadata` from already-read fields).
    ``encode`` never adds bos/eos (SmolLM2's GGUF says ``add_bos_token = False``); special
    tokens written in the text (``"<|im_start|>"``) encode to their single id.

    Example:
        >>> tok = Tokenizer.from_metadata(
        ...     tokens=["<|endoftext|>", "a", "b", "ab", "Ġ", "Ġab"], merges=["a b", "Ġ ab"],
        ...     token_types=[3, 1, 1, 1, 1, 1], bos_id=0, eos_id=0)
        >>> tok.encode("ab ab<|endoftext|>")
        [3, 5, 0]
        >>> tok.decode([3, 5, 0]), tok.decode([3, 5, 0], skip_special_tokens=False)
        ('ab ab', 'ab ab<|endoftext|>')
    """

    def __init__(self, backend: Any, *, bos_id: int | None, eos_id: int | None,
                 chat_template: str | None = None):
        self._tok = backend  # a tokenizers.Tokenizer
        self.bos_id = bos_id  # id of the beginning-of-sequence token (None: the file has none)
        self.eos_id = eos_id  # id of the end-of-sequence token (generation stops there)
        self.chat_template = chat_template  # Jinja source, or None
        self._template = None  # compiled lazily

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_metadata(cls, tokens: Sequence[str], merges: Sequence[str],
                      token_types: Sequence[int] | None = None, *, bos_id: int | None = None,
                      eos_id: int | None = None, chat_template: str | None = None,
                      pre: str = "default") -> "Tokenizer":
        """Build from GGUF-style fields: tokens in id order, ``"a b"`` merges in rank order.

        ``token_types`` uses llama.cpp's codes (3 control -> special token, 4 user-defined ->
        added token); ``pre`` is ``tokenizer.ggml.pre`` (``"smollm"`` isolates digits).

        Example:
            >>> t = Tokenizer.from_metadata(["a", "b", "ab"], ["a b"]); t.encode("abba")
            [2, 1, 0]
        """
        try:
            from tokenizers import AddedToken, decoders, models, pre_tokenizers
            from tokenizers import Tokenizer as _Backend
        except ImportError as e:  # pragma: no cover - exercised only without the extra
            raise TokenizerError("the tokenizers package is missing; install it with "
                                 "`pip install tokenizers` (or the project's `llm` extra)") from e
        vocab = {t: i for i, t in enumerate(tokens)}
        if len(vocab) != len(tokens):
            raise TokenizerError(f"the vocabulary has {len(tokens) - len(vocab)} duplicate token(s)")
        pairs = []
        for m in merges:
            a, sep, b = m.partition(" ")
            if not sep or not a or not b:
                raise TokenizerError(f"malformed BPE merge {m!r}; expected two tokens separated "
                                     "by one space")
            pairs.append((a, b))
        backend = _Backend(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        if pre in _DIGIT_PRE:
            backend.pre_tokenizer = pre_tokenizers.Sequence(
                [pre_tokenizers.Digits(individual_digits=True), byte_level])
        else:
            backend.pre_tokenizer = byte_level
        backend.decoder = decoders.ByteLevel()
        types = list(token_types) if token_types is not None else [_NORMAL] * len(tokens)
        if len(types) != len(tokens):
            raise TokenizerError(f"{len(types)} token types for {len(tokens)} tokens")
        special = [AddedToken(tokens[i], special=True, normalized=False)
                   for i, ty in enumerate(types) if ty == _CONTROL]
        added = [AddedToken(tokens[i], special=False, normalized=False)
                 for i, ty in enumerate(types) if ty == _USER_DEFINED]
        if special:
            backend.add_special_tokens(special)
        if added:
            backend.add_tokens(added)
        for what, i in (("bos", bos_id), ("eos", eos_id)):
            if i is not None and not 0 <= i < len(tokens):
                raise TokenizerError(f"{what} id {i} is outside the vocabulary [0, {len(tokens)})")
        return cls(backend, bos_id=bos_id, eos_id=eos_id, chat_template=chat_template)

    @classmethod
    def from_gguf(cls, path: str | os.PathLike | Any) -> "Tokenizer":
        """Build from a GGUF file's ``tokenizer.*`` metadata (a path or a ``gguf.GGUFReader``).

        Raises :class:`TokenizerError` for a tokenizer model other than ``"gpt2"`` (byte-level BPE).

        Example:
            >>> from graphs.gguf import smollm2_path
            >>> tok = Tokenizer.from_gguf(smollm2_path())  # doctest: +SKIP
            >>> tok.decode(tok.encode("Hello, world!"))  # doctest: +SKIP
            'Hello, world!'
        """
        from .gguf import _field, _reader, _where

        reader = _reader(path)
        model = _field(reader, "tokenizer.ggml.model", None)
        if model != "gpt2":
            raise TokenizerError(f"unsupported tokenizer model {model!r} in {_where(reader)}; "
                                 "only 'gpt2' (byte-level BPE) is supported")
        tokens = _field(reader, "tokenizer.ggml.tokens", None)
        if not tokens:
            raise TokenizerError(f"{_where(reader)} has no tokenizer.ggml.tokens metadata")
        return cls.from_metadata(
            tokens, _field(reader, "tokenizer.ggml.merges", None) or [], _field(reader, "tokenizer.ggml.token_type", None),
            bos_id=_field(reader, "tokenizer.ggml.bos_token_id", None),
            eos_id=_field(reader, "tokenizer.ggml.eos_token_id", None),
            chat_template=_field(reader, "tokenizer.chat_template", None),
            pre=_field(reader, "tokenizer.ggml.pre", "default"))

    # ------------------------------------------------------------------ use
    @property
    def vocab_size(self) -> int:
        """Number of token ids, added/special tokens included.

        Example:
            >>> Tokenizer.from_metadata(["a", "b", "ab"], ["a b"]).vocab_size
            3
        """
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no bos/eos added; special tokens in the text are matched whole).

        Example:
            >>> Tokenizer.from_metadata(["a", "b", "ab"], ["a b"]).encode("ab")
            [2]
        """
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids`` (a list or 1-D tensor); special tokens dropped unless asked for.

        Example:
            >>> Tokenizer.from_metadata(["a", "b", "ab"], ["a b"]).decode([2, 1])
            'abb'
        """
        ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        n = self.vocab_size
        bad = [i for i in ids if not 0 <= i < n]
        if bad:
            raise TokenizerError(f"token id {bad[0]} is outside the vocabulary [0, {n})")
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        """Id of one vocabulary string (``"<|im_end|>"``), or None.

        Example:
            >>> Tokenizer.from_metadata(["a", "b", "ab"], ["a b"]).token_to_id("ab")
            2
        """
        return self._tok.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        """Vocabulary string of one id, or None."""
        return self._tok.id_to_token(int(i))

    def apply_chat_template(self, messages: Sequence[Mapping[str, str]],
                            add_generation_prompt: bool = True, **kwargs: Any) -> str:
        """Render ``messages`` (``{"role": ..., "content": ...}`` dicts) with the chat template.

        The template runs in a sandboxed jinja2 environment with ``trim_blocks`` and
        ``lstrip_blocks`` (as transformers renders it), with ``bos_token``/``eos_token`` and
        ``raise_exception`` defined; extra keyword arguments are passed to the template.

        Example:
            >>> tok = Tokenizer.from_metadata(["a"], [], chat_template=(
            ...     "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\\n{% endfor %}"
            ...     "{% if add_generation_prompt %}<assistant>{% endif %}"))
            >>> tok.apply_chat_template([{"role": "user", "content": "hi"}])
            '<user>hi\\n<assistant>'
        """
        if not self.chat_template:
            raise TokenizerError("this tokenizer has no chat template (the GGUF file has no "
                                 "tokenizer.chat_template)")
        for m in messages:
            if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
                raise TokenizerError(f"each message must be a dict with 'role' and 'content', got {m!r}")
        if self._template is None:
            from jinja2.exceptions import TemplateError
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message: str) -> None:
                raise TemplateError(message)

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = raise_exception
            self._template = env.from_string(self.chat_template)
        special = {"bos_token": self._token_or_empty(self.bos_id),
                   "eos_token": self._token_or_empty(self.eos_id)}
        return self._template.render(messages=[dict(m) for m in messages],
                                     add_generation_prompt=add_generation_prompt,
                                     **{**special, **kwargs})

    def _token_or_empty(self, i: int | None) -> str:
        return "" if i is None else (self._tok.id_to_token(i) or "")

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, bos_id={self.bos_id}, "
                f"eos_id={self.eos_id}, chat_template={'yes' if self.chat_template else 'no'})")
