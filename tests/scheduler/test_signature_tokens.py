"""Token ids out of the embedding's range fail at submit (hardening item 13): the
signature's ``index_bounds`` names the input, the offending value and the valid range,
instead of an ``IndexError: index out of range in self`` inside an executor actor."""
from __future__ import annotations

import pytest
import torch

from scheduler.errors import InputSignatureError, RuntimeConfigError
from scheduler.signature import InputSignature, embedding_index_bounds

VOCAB = 256


def sig(**kw):
    return InputSignature((torch.zeros(1, 8, dtype=torch.long),), dynamic_dims={0: [1]},
                          index_bounds={0: VOCAB}, **kw)


class TestCheck:
    def test_in_range_passes(self):
        sig().check((torch.tensor([[0, 1, VOCAB - 1, 5]]),))

    def test_too_large_names_input_value_and_range(self):
        with pytest.raises(InputSignatureError, match=r"input 0: value 256 at position \[0, 2\] is out of range; "
                                                      r"valid values are 0\.\.255 \(index bound 256"):
            sig().check((torch.tensor([[3, 4, VOCAB, 7]]),))

    def test_negative(self):
        with pytest.raises(InputSignatureError, match=r"input 0: value -1 at position \[0, 0\] is out of range; "
                                                      r"valid values are 0\.\.255"):
            sig().check((torch.tensor([[-1, 4]]),))

    def test_counts_all_offenders(self):
        with pytest.raises(InputSignatureError, match=r"value 1000 at position \[0, 1\].*; 3 values are out of range"):
            sig().check((torch.tensor([[1, 1000, 2, 999, -5]]),))

    def test_int32_tokens(self):
        s = InputSignature((torch.zeros(2, 3, dtype=torch.int32),), index_bounds={0: 10})
        with pytest.raises(InputSignatureError, match=r"value 10 at position \[1, 2\]"):
            s.check((torch.tensor([[0, 1, 2], [3, 4, 10]], dtype=torch.int32),))

    def test_other_inputs_unchecked(self):
        s = InputSignature((torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long)),
                           index_bounds={0: 10})
        s.check((torch.tensor([[1, 2, 3, 4]]), torch.tensor([[100, -100, 5, 5]])))

    def test_meta_tensors_are_not_read(self):
        s = sig(allow_meta=True)
        s.check((torch.empty(1, 8, dtype=torch.long, device="meta"),))

    def test_no_bounds_keeps_old_behaviour(self):
        InputSignature((torch.zeros(1, 4, dtype=torch.long),)).check((torch.tensor([[10 ** 9, -3, 0, 0]]),))

    def test_dtype_mismatch_is_reported_before_the_bound(self):
        with pytest.raises(InputSignatureError, match="dtype float32, expected int64"):
            sig().check((torch.zeros(1, 8),))

    def test_with_index_bounds(self):
        s = InputSignature((torch.zeros(1, 4, dtype=torch.long),)).with_index_bounds({0: 5})
        assert dict(s.index_bounds) == {0: 5}
        with pytest.raises(InputSignatureError, match="value 5 at position"):
            s.check((torch.tensor([[0, 1, 5, 2]]),))


class TestValidation:
    @pytest.mark.parametrize("bounds, message", [
        ({1: 10}, r"index_bounds names input 1; valid input indices: 0\.\.0"),
        ({0: 0}, r"index_bounds\[0\] must be an int >= 1 \(exclusive upper bound\), got 0"),
        ({0: 2.5}, r"index_bounds\[0\] must be an int >= 1"),
        ({0: True}, r"index_bounds\[0\] must be an int >= 1"),
        ({"0": 3}, r"index_bounds names input '0'"),
    ])
    def test_bad_bounds(self, bounds, message):
        with pytest.raises(RuntimeConfigError, match=message):
            InputSignature((torch.zeros(1, 4, dtype=torch.long),), index_bounds=bounds)

    def test_float_input_cannot_be_bounded(self):
        with pytest.raises(RuntimeConfigError, match=r"index_bounds\[0\]: input 0 is float32, not an integer tensor"):
            InputSignature((torch.zeros(1, 4),), index_bounds={0: 4})


class TestEmbeddingBounds:
    def test_decoder_model_and_graph(self):
        import graphs
        from graphs.models import example_inputs, pangu_embedded

        m = pangu_embedded("tiny")
        x = example_inputs(m, seq_len=8)
        assert embedding_index_bounds(m) == {0: m.config.vocab}
        assert embedding_index_bounds(graphs.capture(m, x)) == {0: m.config.vocab}

    def test_meta_model(self):
        from graphs.models import pangu_embedded

        m = pangu_embedded("1b", device="meta")
        assert embedding_index_bounds(m) == {0: m.config.vocab}

    def test_functional_embedding_and_second_input(self):
        class M(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.table = torch.nn.Parameter(torch.zeros(7, 3))

            def forward(self, x, ids):
                return x + torch.nn.functional.embedding(ids, self.table)

        assert embedding_index_bounds(M()) == {1: 7}

    def test_no_embedding(self):
        assert embedding_index_bounds(torch.nn.Linear(3, 3)) == {}

    def test_indirect_use_is_not_bounded(self):
        class M(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.emb = torch.nn.Embedding(10, 2)

            def forward(self, ids):
                return self.emb(ids + 1)  # the bound of ids is 9, not 10: not guessed

        assert embedding_index_bounds(M()) == {}

    def test_untraceable_model_gives_no_bound(self):
        class M(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.emb = torch.nn.Embedding(10, 2)

            def forward(self, ids):
                if ids.sum() > 0:  # data-dependent control flow: fx cannot trace it
                    return self.emb(ids)
                return self.emb(ids)

        assert embedding_index_bounds(M()) == {}

    def test_end_to_end_bound_stops_the_index_error(self):
        from graphs.models import example_inputs, pangu_embedded

        m = pangu_embedded("tiny")
        x = example_inputs(m, seq_len=8)
        s = InputSignature(x, dynamic_dims={0: [1]}, index_bounds=embedding_index_bounds(m))
        bad = x[0].clone()
        bad[0, 3] = m.config.vocab + 5
        with pytest.raises(IndexError):
            m(bad)  # what the actor would have hit
        with pytest.raises(InputSignatureError, match=rf"value {m.config.vocab + 5} at position \[0, 3\]"):
            s.check((bad,))


@pytest.mark.ray
def test_runtime_refuses_out_of_range_token_ids_at_submit_and_keeps_serving(ray_session):
    from graphs.models import decoder, example_inputs
    from scheduler import Runtime

    m = decoder("tiny")
    x = example_inputs(m, seq_len=8)
    with Runtime(m, x, devices=["cpu"]) as rt:
        bad = x[0].clone()
        bad[0, 3] = 256
        with pytest.raises(InputSignatureError, match=r"value 256 at position \[0, 3\] is out of range; valid values are 0..255"):
            rt.submit(bad)
        torch.testing.assert_close(rt.run(*x), m(*x))
