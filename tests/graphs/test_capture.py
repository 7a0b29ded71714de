"""graphs.capture: attribute contract, exact costs against the analytic counts, equivalence
of the captured GraphModule, the torch.export fallback and the errors."""
from __future__ import annotations

import operator

import networkx as nx
import pytest
import torch
from torch import nn

from graphs import CaptureError, OpGraph, UnknownNameError, capture, coarsen
from graphs.capture import META_KEY, op_kind, target_name
from graphs.models import (decode_flops, decode_inputs, example_inputs, pangu_embedded,
                           param_count, prefill_flops)
from graphs.opgraph import NODE_ATTRS, OP_KINDS

PREFILL_LEN = 128


def tensor_bytes(shape, dtype: str) -> int:
    n = 1
    for s in shape:
        n *= s
    return n * getattr(torch, dtype).itemsize


def model_bytes(model: nn.Module) -> int:
    seen = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return sum(t.numel() * t.element_size() for t in seen.values())


def matmul_flops(g: OpGraph) -> int:
    return sum(a["flops"] for _, a in g.nodes(data=True) if a["kind"] in ("matmul", "attention"))


def check_contract(g: OpGraph, model: nn.Module) -> None:
    """Properties every captured op graph must have."""
    assert isinstance(g, OpGraph) and g.granularity == "op"
    assert nx.is_directed_acyclic_graph(g)
    # node names are the fx node names, in order; members name themselves
    assert list(g.nodes) == [n.name for n in g.module.graph.nodes]
    for n, a in g.nodes(data=True):
        assert set(NODE_ATTRS) <= set(a), n
        assert a["kind"] in OP_KINDS and a["members"] == (n,)
        assert all(isinstance(a[k], int) and a[k] >= 0
                   for k in ("flops", "bytes_in", "bytes_out", "param_bytes"))
    fx_nodes = {n.name: n for n in g.module.graph.nodes}
    for n, a in g.nodes(data=True):
        assert a["kind"] == {"placeholder": "input", "output": "output", "get_attr": "param"}.get(
            fx_nodes[n].op, a["kind"])
    # each parameter counted once
    assert g.total("param_bytes") == model_bytes(model)
    # every edge carries the size of the tensor it moves, from the producer's shape and dtype
    for u, v, e in g.edges(data=True):
        a, fxv = g.nodes[u], fx_nodes[v]
        if a["shape"] is None:
            expected = 0
        elif a["shape"] and isinstance(a["shape"][0], tuple):
            if fxv.target is operator.getitem and isinstance(fxv.args[1], int):
                expected = tensor_bytes(a["shape"][fxv.args[1]], a["dtype"])
            else:
                expected = sum(tensor_bytes(s, a["dtype"]) for s in a["shape"])
        else:
            expected = tensor_bytes(a["shape"], a["dtype"])
        assert e["bytes"] == expected, (u, v)
        assert a["bytes_out"] >= e["bytes"]
    # bytes_in = incoming edges (+ the parameters a leaf module reads; an embedding lookup
    # reads only the rows its indices pick, as many bytes as it outputs)
    for n, a in g.nodes(data=True):
        incoming = sum(g.edges[p, n]["bytes"] for p in g.predecessors(n))
        extra = 0
        if fx_nodes[n].op == "call_module":
            extra = model_bytes(g.module.get_submodule(fx_nodes[n].target))
        if a["kind"] == "embedding":  # the table's rows it reads instead of the whole table
            incoming -= sum(g.edges[p, n]["bytes"] for p in g.predecessors(n) if g.nodes[p]["kind"] == "param")
            extra = a["bytes_out"]
        assert a["bytes_in"] == incoming + extra, n


class Test1bOnMeta:
    def test_contract(self, graph_1b, model_1b):
        check_contract(graph_1b, model_1b)

    def test_parameters(self, graph_1b, model_1b):
        assert sum(p.numel() for p in model_1b.parameters()) == param_count("1b")
        assert graph_1b.total("param_bytes") == 4 * param_count("1b")

    def test_prefill_flops_match_the_formula(self, graph_1b):
        analytic = prefill_flops("1b", PREFILL_LEN)
        assert matmul_flops(graph_1b) == analytic  # matmuls and attention exactly
        total = graph_1b.total("flops")
        assert analytic <= total < 1.01 * analytic  # pointwise and norms add a little

    def test_structure(self, graph_1b):
        kinds = graph_1b.kinds()
        assert kinds["input"] == 1 and kinds["output"] == 1
        assert kinds["attention"] == 26 and kinds["norm"] == 2 * 26 + 1
        assert kinds["matmul"] == 7 * 26 + 1 and kinds["embedding"] == 1
        layers = {a["layer"] for _, a in graph_1b.nodes(data=True)} - {None}
        assert layers == {f"layers.{i}" for i in range(26)}
        a = graph_1b.nodes["layers_3_self_attn_q_proj"]
        assert (a["module"], a["layer"], a["target"]) == ("layers.3.self_attn.q_proj", "layers.3",
                                                          "layers.3.self_attn.q_proj")
        assert a["flops"] == 2 * PREFILL_LEN * 1536 * 1536
        assert a["param_bytes"] == 4 * (1536 * 1536 + 1536)
        assert a["shape"] == (1, PREFILL_LEN, 1536) and a["dtype"] == "float32"
        out = graph_1b.nodes["output"]
        assert out["bytes_out"] == 4 * PREFILL_LEN * 153376
        assert graph_1b.graph["route"] == "fx" and graph_1b.name == "1b"
        assert graph_1b.graph["config"]["num_layers"] == 26

    def test_metadata_is_kept_on_the_traced_nodes(self, graph_1b):
        n = next(n for n in graph_1b.module.graph.nodes if n.name == "lm_head")
        assert n.meta[META_KEY]["shape"] == (1, PREFILL_LEN, 153376)

    def test_decode_step(self, model_1b, graph_1b):
        ctx = 4096
        g = capture(model_1b, decode_inputs(model_1b, context_len=ctx))
        check_contract(g, model_1b)
        assert matmul_flops(g) == decode_flops("1b", ctx)
        assert g.kinds()["input"] == 3
        cache = 26 * 6 * ctx * 128 * 4
        assert g.nodes["past_keys"]["bytes_out"] == cache
        # the weights are read once per step, as in prefill
        assert g.total("param_bytes") == graph_1b.total("param_bytes")

    def test_user_model_is_not_modified(self):
        m = pangu_embedded("small", device="meta")
        before_attrs = {k: sorted(v.__dict__) for k, v in m.named_modules()}
        before_params = [(k, id(p)) for k, p in m.named_parameters()]
        capture(m, example_inputs(m, seq_len=8), granularity="layer")
        assert {k: sorted(v.__dict__) for k, v in m.named_modules()} == before_attrs
        assert [(k, id(p)) for k, p in m.named_parameters()] == before_params
        assert not m.training


class TestTinyReal:
    def test_contract(self, graph_tiny, model_tiny):
        check_contract(graph_tiny, model_tiny)

    def test_flops(self, graph_tiny, inputs_tiny):
        b, t = inputs_tiny[0].shape
        assert matmul_flops(graph_tiny) == prefill_flops("tiny", t, b)
        assert prefill_flops("tiny", t, b) <= graph_tiny.total("flops") < 1.05 * prefill_flops("tiny", t, b)

    def test_module_reproduces_the_model(self, graph_tiny, model_tiny, inputs_tiny):
        torch.testing.assert_close(graph_tiny.module(*inputs_tiny), model_tiny(*inputs_tiny))

    def test_costs_do_not_depend_on_the_device(self, graph_tiny, inputs_tiny):
        meta = pangu_embedded("tiny", device="meta")
        gm = capture(meta, tuple(x.to("meta") for x in inputs_tiny))
        for attr in ("flops", "bytes_in", "bytes_out", "param_bytes", "shape", "kind"):
            assert nx.get_node_attributes(gm, attr) == nx.get_node_attributes(graph_tiny, attr), attr

    def test_decode_module_reproduces_the_model(self, model_tiny):
        inputs = decode_inputs(model_tiny, context_len=20, batch=2, device="cpu")
        g = capture(model_tiny, inputs)
        torch.testing.assert_close(g.module(*inputs), model_tiny(*inputs))
        assert matmul_flops(g) == decode_flops("tiny", 20, 2)

    def test_export_route(self, model_tiny, inputs_tiny):
        g = capture(model_tiny, inputs_tiny, method="export")
        assert g.graph["route"] == "export"
        check_contract(g, model_tiny)
        assert g.kinds()["param"] == len(list(model_tiny.parameters()))
        assert matmul_flops(g) == prefill_flops("tiny", 16, 2)
        torch.testing.assert_close(g.module(*inputs_tiny), model_tiny(*inputs_tiny))
        assert g.nodes["layers_1_self_attn_q_proj_weight"]["layer"] == "layers.1"

    def test_granularity_argument_coarsens(self, model_tiny, inputs_tiny, graph_tiny):
        g = capture(model_tiny, inputs_tiny, granularity="layer")
        assert g.granularity == "layer"
        assert list(g.nodes) == list(coarsen(graph_tiny, "layer").nodes)


class ShapeBranch(nn.Module):
    """Python control flow on a shape: fx cannot trace it, torch.export can."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 8)

    def forward(self, x):
        if x.shape[0] > 1:
            return torch.relu(self.lin(x))
        return x


class DataBranch(nn.Module):
    """Control flow on tensor values: neither route can capture it."""

    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x


class TestRoutes:
    def test_falls_back_to_export(self):
        m = ShapeBranch()
        x = torch.randn(3, 4)
        g = capture(m, (x,))
        assert g.graph["route"] == "export"
        assert matmul_flops(g) == 2 * 3 * 4 * 8
        assert g.total("param_bytes") == 4 * (32 + 8)
        torch.testing.assert_close(g.module(x), m(x))

    def test_fx_only_reports_the_fx_failure(self):
        with pytest.raises(CaptureError, match=r"symbolic_trace failed at .*test_capture.py:\d+ in forward: "
                                               r"`if x.shape\[0\] > 1:`"):
            capture(ShapeBranch(), torch.randn(3, 4), method="fx")

    def test_both_routes_fail(self):
        with pytest.raises(CaptureError) as info:
            capture(DataBranch(), torch.randn(3, 4))
        msg = str(info.value)
        assert "could not capture DataBranch" in msg
        assert "torch.fx.symbolic_trace failed at" in msg and "torch.export.export failed at" in msg
        assert "`if x.sum() > 0:`" in msg
        assert "torch.where or torch.cond" in msg and "leaf_modules" in msg

    def test_leaf_modules_rescue_fx(self):
        class Outer(nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = DataBranch()
                self.lin = nn.Linear(4, 4)

            def forward(self, x):
                return self.lin(self.inner(x))

        g = capture(Outer(), torch.randn(2, 4), leaf_modules=(DataBranch,))
        assert g.graph["route"] == "fx"
        assert g.nodes["inner"]["op"] == "call_module" and g.nodes["inner"]["kind"] == "other"


class TestParameterAccounting:
    def test_tied_weights_count_once(self):
        class Tied(nn.Module):
            def __init__(self):
                super().__init__()
                self.emb = nn.Embedding(10, 4)
                self.head = nn.Linear(4, 10, bias=False)
                self.head.weight = self.emb.weight

            def forward(self, ids):
                return self.head(self.emb(ids))

        m = Tied()
        g = capture(m, torch.tensor([[1, 2, 3]]))
        assert g.total("param_bytes") == 10 * 4 * 4
        assert g.nodes["emb"]["param_bytes"] == 160 and g.nodes["head"]["param_bytes"] == 0
        assert g.nodes["head"]["bytes_in"] == 3 * 4 * 4 + 160  # it still reads the weight

    def test_buffers_are_counted(self):
        m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
        g = capture(m, torch.randn(1, 3, 8, 8))
        check_contract(g, m)
        assert [g.nodes[n]["kind"] for n in ("_0", "_1", "_2")] == ["conv", "norm", "activation"]
        assert g.nodes["_0"]["flops"] == 2 * 4 * 6 * 6 * 3 * 3 * 3 + 0
        assert g.nodes["_1"]["param_bytes"] == 4 * (4 + 4 + 4 + 4) + 8  # + num_batches_tracked


class TestOpKinds:
    def test_functions_methods_and_modules(self):
        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.norm = nn.LayerNorm(8)
                self.act = nn.GELU()

            def forward(self, x, w):
                y = torch.matmul(x, w).transpose(0, 1).softmax(-1)
                z = torch.nn.functional.scaled_dot_product_attention(x[None], x[None], x[None])
                return self.act(self.norm(y)).mean() + z.sum() * 2

        gm = torch.fx.symbolic_trace(M())
        kinds = {n.name: op_kind(n, gm) for n in gm.graph.nodes}
        assert kinds == {"x": "input", "w": "input", "matmul": "matmul", "transpose": "view",
                         "softmax": "activation", "getitem": "view", "getitem_1": "view",
                         "getitem_2": "view", "scaled_dot_product_attention": "attention",
                         "norm": "norm", "act": "activation", "mean": "reduction",
                         "sum_1": "reduction", "mul": "elementwise", "add": "elementwise",
                         "output": "output"}
        names = {n.name: target_name(n, gm) for n in gm.graph.nodes}
        assert names["matmul"] == "torch.matmul" and names["mul"] == "operator.mul"
        assert names["transpose"] == "Tensor.transpose" and names["norm"] == "norm"

    def test_pointwise_and_reduction_flop_conventions(self):
        class M(nn.Module):
            def forward(self, x):
                return torch.relu(x * 3).sum(-1)

        g = capture(M(), torch.randn(4, 5))
        assert [g.nodes[n]["flops"] for n in ("mul", "relu", "sum_1")] == [20, 20, 20]


class TestBadInput:
    def test_not_a_module(self):
        with pytest.raises(CaptureError, match="model must be a torch.nn.Module, got function"):
            capture(lambda x: x, (torch.randn(2),))

    def test_inputs_not_a_tuple(self):
        with pytest.raises(CaptureError, match="example_inputs must be a tuple of torch.Tensor .*got str"):
            capture(nn.ReLU(), "x")

    def test_input_not_a_tensor(self):
        with pytest.raises(CaptureError, match=r"example_inputs\[1\] is a list, not a torch.Tensor"):
            capture(nn.Bilinear(2, 2, 2), (torch.randn(1, 2), [1.0, 2.0]))

    def test_too_many_inputs(self):
        with pytest.raises(CaptureError, match=r"ReLU.forward takes 1 positional argument\(s\) \(input\) "
                                               "but example_inputs has 2"):
            capture(nn.ReLU(), (torch.randn(2), torch.randn(2)))

    def test_missing_input(self):
        with pytest.raises(CaptureError, match="Bilinear.forward needs argument 'input2'"):
            capture(nn.Bilinear(2, 2, 2), (torch.randn(1, 2),))

    def test_inputs_that_do_not_fit(self):
        with pytest.raises(CaptureError, match=r"running the traced graph failed at node .*linear"):
            capture(nn.Linear(4, 2), (torch.randn(3, 5),))

    def test_unknown_granularity(self):
        with pytest.raises(UnknownNameError, match="unknown granularity 'block'; valid choices: layer, module, op"):
            capture(nn.ReLU(), torch.randn(2), granularity="block")

    def test_unknown_method(self):
        with pytest.raises(UnknownNameError, match="unknown capture method 'jit'; valid choices: auto, export, fx"):
            capture(nn.ReLU(), torch.randn(2), method="jit")

    def test_bad_leaf_modules(self):
        with pytest.raises(CaptureError, match="leaf_modules must be nn.Module subclasses, got 'Linear'"):
            capture(nn.ReLU(), torch.randn(2), leaf_modules=("Linear",))
