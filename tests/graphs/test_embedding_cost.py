"""Capture prices a gather (embedding lookup, index ops) by the rows it reads, not the table."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from executors.profiles import cluster
from graphs import capture
from graphs.decoding import block_work
from graphs.models import example_inputs, get_config
from policies.roofline import RooflineCostModel

SEQ = 32


@pytest.fixture(scope="module")
def graph_1b_32(model_1b):
    return capture(model_1b, example_inputs(model_1b, seq_len=SEQ), granularity="layer")


class TestEmbedTokens1b:
    def test_bytes_in_counts_the_rows_read_and_the_indices(self, graph_1b_32):
        c = get_config("1b")
        a = graph_1b_32.nodes["embed_tokens"]
        rows = SEQ * c.hidden * 4  # 32 rows of 1536 float32
        ids = SEQ * 8  # the int64 token ids
        assert a["bytes_in"] == rows + ids == 196_864
        assert a["bytes_out"] == rows
        # the whole table stays resident
        assert a["param_bytes"] == c.vocab * c.hidden * 4 == 942_342_144
        # the analytical step cost of graphs.decoding agrees with the captured graph
        w = block_work(c, "embed_tokens", batch=1, new_tokens=SEQ, context=0)
        assert (w["bytes_in"], w["bytes_out"], w["param_bytes"]) == (a["bytes_in"], a["bytes_out"],
                                                                     a["param_bytes"])

    def test_roofline_time_is_microseconds(self, graph_1b_32):
        cm = RooflineCostModel(cluster(["jetson-orin-nx"]))
        t = cm.node_time(graph_1b_32, "embed_tokens", "jetson-orin-nx")
        spec = cm.cluster.spec("jetson-orin-nx")
        assert t == pytest.approx(spec.launch_overhead + (196_864 + SEQ * 1536 * 4) / spec.mem_bandwidth)
        assert t < 50e-6  # a read of the whole 942 MB table took ~9 ms


class Gathers(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(100, 8))
        self.bag = nn.EmbeddingBag(50, 4)

    def forward(self, idx, x):
        return (F.embedding(idx, self.table), x.index_select(0, idx[0]), torch.gather(x, 1, idx),
                x[idx[0]], x[x[:, 0] > 0], self.bag(idx))


@pytest.mark.parametrize("method", ["fx", "export"])
def test_gathers_read_what_their_indices_pick(method):
    idx, x = torch.tensor([[1, 2, 3]]), torch.randn(10, 8)  # 3 int64 indices: 24 bytes
    g = capture(Gathers(), (idx, x), method=method)
    by_target = {}
    for n, a in g.nodes(data=True):
        parts = a["target"].split(".")  # aten.gather.default, torch.gather, Tensor.index_select
        by_target.setdefault(parts[1] if parts[0] == "aten" else parts[-1], []).append(a)
    emb = by_target["embedding"][0]
    assert emb["bytes_in"] == 3 * 8 * 4 + 24 and emb["kind"] == "embedding"
    assert by_target["index_select"][0]["bytes_in"] == 3 * 8 * 4 + 24
    assert by_target["gather"][0]["bytes_in"] == 3 * 4 + 24
    bag = by_target["embedding_bag"][0] if method == "export" else g.nodes["bag"]
    assert bag["bytes_in"] - 3 * 4 * 4 in (24, 24 + 8)  # indices (+ the offsets export adds)
    # a boolean mask reads the whole source (and the mask)
    masked = [a for a in g.nodes.values() if a["bytes_in"] == 320 + 10]
    assert len(masked) == 1
    # the tables stay owned whole
    assert g.total("param_bytes") == (100 * 8 + 50 * 4) * 4
