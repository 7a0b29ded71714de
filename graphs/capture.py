"""Capture a PyTorch model into a cost-annotated :class:`~graphs.opgraph.OpGraph`.

:func:`capture` traces the model with :func:`torch.fx.symbolic_trace` (falling back to
:func:`torch.export.export` where symbolic tracing fails, e.g. on shape-dependent Python
control flow), runs the traced ``GraphModule`` once on the example inputs with an
:class:`torch.fx.Interpreter` (as ``torch.fx.passes.shape_prop.ShapeProp`` does) inside one
:class:`torch.utils.flop_counter.FlopCounterMode`, and turns every fx node into an op-graph
node with the attributes of the contract in :mod:`graphs.opgraph`.

Works on the ``meta`` device: a model built on ``meta`` with ``meta`` inputs is captured
without allocating a byte of weights or activations (the full 1.4B ``1b`` config takes
seconds). On real tensors the model really runs once.

Choices (the contract leaves them to capture):

* Node names at ``op`` granularity are the fx node names of ``g.module.graph``; every
  OpGraph keeps ``g.graph["module"]`` pointing to that one ``GraphModule``.
* Leaf modules (``torch.nn`` built-ins such as ``Linear``, ``Embedding``, ``RMSNorm``, plus
  any ``leaf_modules`` given) are one ``call_module`` node each, which owns the module's
  parameters and buffers in ``param_bytes`` and reads them in ``bytes_in``. Parameters read
  directly (``get_attr``, which is how ``torch.export`` graphs reach every weight) are
  nodes of kind ``"param"`` owning their tensor. Each tensor is counted once (by object
  identity), so the sum of ``param_bytes`` is the bytes of the model's parameters and buffers.
* Gathers read only what their indices pick: an embedding lookup (``nn.Embedding``,
  ``F.embedding``, ``aten.embedding``, the ``embedding_bag`` forms) and an index or gather
  op with integer indices (``index_select``, ``gather``, ``take``, ``aten.index``,
  ``x[idx]``) have ``bytes_in`` = the source rows or elements touched (number of indices
  times the row's bytes; the output's elements for index ops; never more than the whole
  source) plus their other inputs (the indices). ``param_bytes`` still owns the whole
  table, which stays resident.
* Placeholders are ``"input"`` nodes; the ``output`` node is kind ``"output"`` with
  ``bytes_out`` the bytes it returns. Arguments of ``forward`` that are not given in
  ``example_inputs`` keep their defaults (traced as constants, e.g. ``past_keys=None``).
* FLOPs (a multiply-add counts 2): matmuls and convolutions are what ``FlopCounterMode``
  counts for the node; ``scaled_dot_product_attention`` uses FlopCounterMode's own sdpa
  formula on the node's shapes (the CPU kernel is not registered with the counter, the
  ``meta`` one decomposes, so the formula keeps both devices equal); pointwise ops
  (``elementwise``, ``activation``) count 1 per output element, norms 4 per output element
  (square, mean, scale, weight), reductions 1 per input element; views, embeddings,
  inputs and params count 0. These conventions make the counts independent of the device.
* Nodes whose result holds no tensor (``x.shape``, ``x.device``, size arithmetic) have
  ``shape`` and ``dtype`` None and ``bytes_out`` 0; several tensors give a tuple of shapes.
* Edge bytes are the bytes of the tensor(s) the edge carries: the producer's whole output,
  or the one element a ``getitem`` consumer takes out of a tuple.

``node.meta`` keys written on the traced graph (never on the caller's objects):
``node.meta["hetsched"]`` = ``{"shape", "dtype", "bytes_out", "item_bytes", "flops"}``.

References:
    Reed et al., "torch.fx: Practical Program Capture and Transformation for Deep Learning
    in Python", MLSys 2022. PyTorch ``torch/fx/passes/shape_prop.py`` and
    ``torch/utils/flop_counter.py``.
"""
from __future__ import annotations

import inspect
import logging
import operator
import re
import traceback
from dataclasses import asdict, is_dataclass
from typing import Any, Iterable, Sequence

import torch
import torch.fx as fx
from torch import nn
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .errors import CaptureError, UnknownNameError
from .opgraph import GRANULARITIES, OP_KINDS, OpGraph

__all__ = ["capture", "op_kind", "target_name", "META_KEY", "METHODS"]

#: The ``node.meta`` key capture writes on the traced GraphModule's nodes.
META_KEY = "hetsched"
#: Capture routes: ``"auto"`` tries fx then torch.export.
METHODS = ("auto", "fx", "export")

# ------------------------------------------------------------------ op kinds
_FN_KINDS: dict[str, set[str]] = {
    "matmul": {"mm", "bmm", "matmul", "linear", "addmm", "baddbmm", "addbmm", "einsum", "mv",
               "addmv", "dot", "bilinear"},
    "attention": {"scaled_dot_product_attention", "_scaled_dot_product_flash_attention",
                  "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
                  "_scaled_dot_product_flash_attention_for_cpu", "multi_head_attention_forward"},
    "conv": {"conv1d", "conv2d", "conv3d", "convolution", "_convolution", "conv_transpose1d",
             "conv_transpose2d", "conv_transpose3d"},
    "norm": {"rms_norm", "_fused_rms_norm", "layer_norm", "native_layer_norm", "batch_norm",
             "native_batch_norm", "_native_batch_norm_legit_no_training", "group_norm",
             "native_group_norm", "instance_norm"},
    "embedding": {"embedding", "embedding_bag", "_embedding_bag"},
    "activation": {"silu", "gelu", "relu", "sigmoid", "tanh", "softmax", "log_softmax", "_softmax",
                   "_log_softmax", "leaky_relu", "elu", "hardswish", "hardsigmoid", "mish",
                   "softplus", "relu6", "hardtanh", "selu", "celu", "glu", "silu_", "relu_"},
    "reduction": {"sum", "mean", "amax", "amin", "max", "min", "argmax", "argmin", "var", "std",
                  "prod", "norm", "logsumexp", "cumsum", "all", "any", "var_mean", "topk"},
    "view": {"view", "reshape", "transpose", "permute", "contiguous", "cat", "concat", "stack",
             "split", "chunk", "getitem", "expand", "expand_as", "unsqueeze", "squeeze", "flatten",
             "unflatten", "slice", "select", "narrow", "index_select", "gather", "repeat",
             "repeat_interleave", "clone", "to", "type_as", "float", "half", "bfloat16", "double",
             "t", "_unsafe_view", "alias", "unbind", "split_with_sizes", "detach", "dropout",
             "_to_copy", "copy", "copy_", "index", "roll", "flip", "tile", "movedim", "swapaxes",
             "view_as", "reshape_as", "as_strided", "pad", "constant_pad_nd", "_reshape_alias",
             "unsafe_view", "type", "masked_select", "take"},
    "elementwise": {"add", "sub", "mul", "div", "truediv", "floordiv", "neg", "pow", "rsqrt",
                    "sqrt", "exp", "log", "reciprocal", "where", "clamp", "masked_fill", "cos",
                    "sin", "abs", "square", "outer", "addcmul", "addcdiv", "lerp", "iadd", "imul",
                    "eq", "ne", "lt", "gt", "le", "ge", "rsub", "erf", "floor", "ceil", "round",
                    "sign", "maximum", "minimum", "tril", "triu", "mod", "remainder", "add_",
                    "mul_", "sub_", "div_", "clamp_min", "clamp_max", "exp2", "log2", "sigmoid_",
                    "logical_and", "logical_or", "logical_not", "bitwise_and", "and_", "or_",
                    "invert", "pos", "matmul_elementwise"},
}
_FN_KIND = {name: kind for kind, names in _FN_KINDS.items() for name in names}

_MODULE_KINDS: tuple[tuple[tuple[type, ...], str], ...] = (
    ((nn.Linear, nn.Bilinear, nn.LazyLinear), "matmul"),
    ((nn.modules.conv._ConvNd,), "conv"),
    ((nn.MultiheadAttention,), "attention"),
    ((nn.Embedding, nn.EmbeddingBag), "embedding"),
    ((nn.RMSNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase,
      nn.LocalResponseNorm), "norm"),
    ((nn.SiLU, nn.GELU, nn.ReLU, nn.Sigmoid, nn.Tanh, nn.Softmax, nn.LogSoftmax, nn.LeakyReLU,
      nn.ELU, nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.Softplus, nn.ReLU6, nn.Hardtanh, nn.SELU,
      nn.CELU, nn.GLU), "activation"),
    ((nn.Dropout, nn.Identity, nn.Flatten, nn.Unflatten, nn.modules.dropout._DropoutNd), "view"),
)


def target_name(node: fx.Node, gm: nn.Module | None = None) -> str:
    """A readable name for what an fx node runs (``"aten.mm.default"``, ``"torch.cat"``,
    ``"operator.add"``, ``"Tensor.view"``, a module path for ``call_module``/``get_attr``).

    Example:
        >>> import torch, torch.fx as fx
        >>> gm = fx.symbolic_trace(lambda x: torch.relu(x).view(-1))
        >>> [target_name(n) for n in gm.graph.nodes]
        ['x', 'torch.relu', 'Tensor.view', 'output']
    """
    t = node.target
    if node.op == "call_function":
        if isinstance(t, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
            return str(t)
        mod = getattr(t, "__module__", None) or ""
        qual = getattr(t, "__qualname__", None) or getattr(t, "__name__", None) or str(t)
        if mod in ("_operator", "operator"):
            mod = "operator"
        elif mod.startswith("torch._C._nn") or mod == "torch._C._VariableFunctions":
            mod = "torch"
        elif mod == "builtins":
            return qual
        if qual.startswith("_VariableFunctionsClass."):
            return "torch." + qual.split(".", 1)[1]
        return f"{mod}.{qual}" if mod else qual
    if node.op == "call_method":
        return f"Tensor.{t}"
    if node.op == "output":
        return "output"
    return str(t)


def _base_name(name: str) -> str:
    """``"aten.mm.default"`` -> ``"mm"``, ``"torch.nn.functional.silu"`` -> ``"silu"``."""
    parts = name.split(".")
    if parts[0] == "aten" and len(parts) >= 3:
        return parts[1]
    return parts[-1]


def op_kind(node: fx.Node, gm: nn.Module | None = None) -> str:
    """The :data:`~graphs.opgraph.OP_KINDS` entry of an fx node (``"other"`` if unknown).

    ``call_module`` nodes are classified by their module's class (``gm`` is needed to look
    them up); functions and methods by name, aten ops also by their ``pointwise`` tag.

    Example:
        >>> import torch, torch.fx as fx
        >>> gm = fx.symbolic_trace(lambda x, w: torch.nn.functional.silu(x @ w).sum())
        >>> [op_kind(n) for n in gm.graph.nodes]
        ['input', 'input', 'matmul', 'activation', 'reduction', 'output']
    """
    if node.op == "placeholder":
        return "input"
    if node.op == "output":
        return "output"
    if node.op == "get_attr":
        return "param"
    if node.op == "call_module":
        if gm is None:
            return "other"
        try:
            mod = gm.get_submodule(node.target)
        except AttributeError:
            return "other"
        for types, kind in _MODULE_KINDS:
            if isinstance(mod, types):
                return kind
        return "other"
    kind = _FN_KIND.get(_base_name(target_name(node)))
    if kind is not None:
        return kind
    t = node.target
    if isinstance(t, torch._ops.OpOverload) and torch.Tag.pointwise in t.tags:
        return "elementwise"
    if isinstance(t, torch._ops.OpOverload) and torch.Tag.reduction in t.tags:
        return "reduction"
    return "other"


# ------------------------------------------------------------------ tracing
class _Tracer(fx.Tracer):
    def __init__(self, leaf_modules: tuple[type, ...]):
        super().__init__()
        self._extra_leaves = leaf_modules

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self._extra_leaves) or super().is_leaf_module(m, qualname)


def _bind(model: nn.Module, inputs: tuple) -> dict[str, Any]:
    """Defaults of ``forward``'s parameters not covered by the positional ``inputs``."""
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return {}
    params = [p for p in sig.parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    has_var = any(p.kind == p.VAR_POSITIONAL for p in sig.parameters.values())
    if len(inputs) > len(params) and not has_var:
        raise CaptureError(
            f"{type(model).__name__}.forward takes {len(params)} positional argument(s) "
            f"({', '.join(p.name for p in params)}) but example_inputs has {len(inputs)}")
    concrete = {}
    for p in params[len(inputs):]:
        if p.default is p.empty:
            raise CaptureError(
                f"{type(model).__name__}.forward needs argument {p.name!r} but example_inputs "
                f"has only {len(inputs)} value(s); pass one example per positional argument")
        concrete[p.name] = p.default
    return concrete


def _trace_fx(model: nn.Module, inputs: tuple, leaf_modules: tuple[type, ...]) -> fx.GraphModule:
    concrete = _bind(model, inputs)
    tracer = _Tracer(leaf_modules)
    graph = tracer.trace(model, concrete_args=concrete or None)
    if concrete:
        # concrete (defaulted) arguments become placeholders guarded by asserts: drop both,
        # so the graph's inputs are exactly the example inputs
        for n in list(graph.nodes):
            if n.op == "call_function" and getattr(n.target, "__name__", "") in (
                    "_assert_is_none", "_assert"):
                if not n.users:
                    graph.erase_node(n)
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        for n in placeholders[len(inputs):]:
            if not n.users:
                graph.erase_node(n)
    name = type(model).__name__
    gm = fx.GraphModule(tracer.root, graph, name)
    return gm


def _trace_export(model: nn.Module, inputs: tuple) -> fx.GraphModule:
    concrete = _bind(model, inputs)
    if concrete:
        kwargs = {k: v for k, v in concrete.items() if v is not None}
        if kwargs:
            raise CaptureError("torch.export route: defaulted non-None arguments "
                               f"{sorted(kwargs)} are not supported; pass them explicitly")
    # torch.export logs the failing graph at WARNING level; the CaptureError says it all
    loggers = [logging.getLogger(n) for n in ("torch.fx.experimental.symbolic_shapes",
                                              "torch._export", "torch.export")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        ep = torch.export.export(model, tuple(inputs), strict=False)
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)
    # no guard submodule: it is not picklable (so the partitions could not be shipped to Ray
    # actors), and the Runtime checks submitted inputs against the example signature itself
    return ep.module(check_guards=False)


def _user_frame(exc: BaseException) -> str:
    """``file:line in func: code`` of the innermost frame outside torch, for messages."""
    frames = traceback.extract_tb(exc.__traceback__)
    torch_dir = torch.__file__.rsplit("/", 1)[0]
    mine = __file__
    for fr in reversed(frames):
        if not fr.filename.startswith(torch_dir) and fr.filename != mine:
            return f"{fr.filename}:{fr.lineno} in {fr.name}: `{(fr.line or '').strip()}`"
    return "(no frame outside torch)"


def _short(exc: BaseException, limit: int = 400) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def _trace(model: nn.Module, inputs: tuple, method: str,
           leaf_modules: tuple[type, ...]) -> tuple[fx.GraphModule, str]:
    errors: list[str] = []
    if method in ("auto", "fx"):
        try:
            return _trace_fx(model, inputs, leaf_modules), "fx"
        except CaptureError:
            raise
        except Exception as e:  # fx raises TraceError, TypeError, RuntimeError, ...
            errors.append(f"torch.fx.symbolic_trace failed at {_user_frame(e)} ({_short(e)})")
    if method in ("auto", "export"):
        try:
            return _trace_export(model, inputs), "export"
        except CaptureError:
            raise
        except Exception as e:
            errors.append(f"torch.export.export failed at {_user_frame(e)} ({_short(e)})")
    raise CaptureError(
        f"could not capture {type(model).__name__} (method={method!r}): " + "; ".join(errors)
        + ". What to do: replace data-dependent Python control flow (if/for on tensor values "
          "or shapes) with torch.where or torch.cond, make the branch a forward() argument "
          "with a default so it is traced as a constant, or mark the offending submodule as "
          "a leaf: capture(..., leaf_modules=(MyBlock,))")


# ------------------------------------------------------------------ cost propagation
def _tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _describe(value: Any) -> dict:
    """shape, dtype, bytes of a node's result (tensors anywhere inside tuples/lists/dicts)."""
    if isinstance(value, torch.Tensor):
        return {"shape": tuple(int(s) for s in value.shape), "dtype": str(value.dtype).replace("torch.", ""),
                "bytes_out": _tensor_bytes(value), "item_bytes": None}
    tensors = [x for x in tree_leaves(value) if isinstance(x, torch.Tensor)]
    if not tensors:
        return {"shape": None, "dtype": None, "bytes_out": 0, "item_bytes": None}
    items = None
    if isinstance(value, (tuple, list)):
        items = tuple(sum(_tensor_bytes(t) for t in tree_leaves(v) if isinstance(t, torch.Tensor))
                      for v in value)
    return {"shape": tuple(tuple(int(s) for s in t.shape) for t in tensors),
            "dtype": str(tensors[0].dtype).replace("torch.", ""),
            "bytes_out": sum(_tensor_bytes(t) for t in tensors), "item_bytes": items}


def _numel_in(node: fx.Node) -> int:
    for a in node.all_input_nodes:
        m = a.meta.get(META_KEY)
        if m and m["shape"] is not None and m["shape"] and not isinstance(m["shape"][0], tuple):
            n = 1
            for s in m["shape"]:
                n *= s
            return n
    return 0


def _numel_out(meta: dict) -> int:
    shape = meta["shape"]
    if shape is None:
        return 0
    shapes = shape if shape and isinstance(shape[0], tuple) else (shape,)
    total = 0
    for s in shapes:
        n = 1
        for d in s:
            n *= d
        total += n
    return total


class _CostProp(fx.Interpreter):
    """Runs the graph once, recording shapes, bytes and FLOPs in ``node.meta[META_KEY]``."""

    def __init__(self, gm: fx.GraphModule, flop_mode: FlopCounterMode):
        super().__init__(gm)
        self.flop_mode = flop_mode

    def run_node(self, n: fx.Node) -> Any:
        before = self.flop_mode.get_total_flops()
        try:
            result = super().run_node(n)
        except Exception as e:
            raise CaptureError(f"running the traced graph failed at node {n.format_node()}: "
                               f"{_short(e)}; check that example_inputs match the model "
                               "(dtype, device, shape)") from e
        meta = _describe(result)
        meta["flops"] = int(self.flop_mode.get_total_flops() - before)
        if n.op == "call_function" and _base_name(target_name(n)) in _FN_KINDS["attention"]:
            q, k, v = (a.meta[META_KEY]["shape"] for a in n.all_input_nodes[:3])
            meta["flops"] = int(sdpa_flop_count(q, k, v))
        n.meta[META_KEY] = meta
        return result


def _node_flops(kind: str, node: fx.Node, meta: dict) -> int:
    counted = meta["flops"]
    if counted or kind in ("matmul", "conv", "attention"):
        return counted
    if kind in ("elementwise", "activation"):
        return _numel_out(meta)
    if kind == "norm":
        return 4 * _numel_out(meta)
    if kind == "reduction":
        return _numel_in(node)
    return 0


# ------------------------------------------------------------------ modules and layers
_EXPORT_PATH = re.compile(r"\[(\d+)\]|\['([^']*)'\]")


def _norm_path(path: str) -> str:
    """``"L['self'].layers[0].mlp"`` -> ``"layers.0.mlp"``; plain paths pass through."""
    if "[" not in path:
        return path
    path = path.replace("L['self']", "").replace("L__self__", "")
    path = _EXPORT_PATH.sub(lambda m: "." + (m.group(1) or m.group(2)), path)
    return ".".join(p for p in path.split(".") if p)


def _layer_roots(model: nn.Module) -> list[str]:
    """Paths of repeated blocks: children of a ModuleList/Sequential holding >= 2 modules of
    one class (e.g. ``layers.0`` ... ``layers.25``), outermost first."""
    roots = []
    for path, mod in model.named_modules():
        if isinstance(mod, (nn.ModuleList, nn.Sequential)):
            children = list(mod.named_children())
            types = [type(c) for _, c in children]
            for name, child in children:
                if types.count(type(child)) >= 2:
                    roots.append(f"{path}.{name}" if path else name)
    return sorted(roots, key=lambda p: (p.count("."), p))


def _layer_of(module_path: str, roots: Sequence[str]) -> str | None:
    for r in roots:
        if module_path == r or module_path.startswith(r + "."):
            return r
    return None


def _module_of(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    if node.op == "get_attr":
        return str(node.target).rpartition(".")[0]
    if node.op in ("placeholder", "output"):
        return ""
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1]
        path = path[0] if isinstance(path, tuple) else str(path)
        return _norm_path(str(path))
    return ""


# ------------------------------------------------------------------ public entry point
def _check_inputs(example_inputs: Any) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)):
        raise CaptureError(
            f"example_inputs must be a tuple of torch.Tensor (or one tensor), got "
            f"{type(example_inputs).__name__}")
    for i, x in enumerate(example_inputs):
        if not isinstance(x, torch.Tensor):
            raise CaptureError(
                f"example_inputs[{i}] is a {type(x).__name__}, not a torch.Tensor; pass tensors "
                "only (give non-tensor arguments defaults in forward())")
    return tuple(example_inputs)


def capture(model: nn.Module, example_inputs: Any, granularity: str = "op", *,
            name: str | None = None, method: str = "auto",
            leaf_modules: Iterable[type] = ()) -> OpGraph:
    """Capture ``model`` called on ``example_inputs`` into an :class:`OpGraph`.

    Parameters:
        model: the ``nn.Module`` (never modified; the returned graph's ``GraphModule``
            shares its submodules and parameters).
        example_inputs: a tuple of tensors (or one tensor), one per positional argument of
            ``forward``; later arguments keep their defaults. ``meta`` tensors with a
            ``meta`` model capture shapes and costs without allocating memory.
        granularity: ``"op"`` (one node per fx node), ``"module"`` or ``"layer"`` (see
            :func:`graphs.coarsen.coarsen`).
        name: the graph's name (default: the model class name, or ``model.config.name``).
        method: ``"auto"`` (fx, then torch.export), ``"fx"`` or ``"export"``.
        leaf_modules: extra module classes fx keeps as single ``call_module`` ops.

    Returns:
        The op graph; ``g.module`` is the traced ``torch.fx.GraphModule``.

    Raises:
        CaptureError: ``model`` is not a Module, the inputs are not tensors or do not fit
            ``forward``, or neither route can trace the model (the message names the
            failing source line of each route and what to change).
        UnknownNameError: an unknown ``granularity`` or ``method``.

    Example:
        >>> import torch
        >>> g = capture(torch.nn.Linear(4, 3), (torch.randn(2, 4),))
        >>> [(n, a["kind"], a["flops"]) for n, a in g.nodes(data=True)]  # doctest: +NORMALIZE_WHITESPACE
        [('input_1', 'input', 0), ('weight', 'param', 0), ('bias', 'param', 0),
         ('linear', 'matmul', 48), ('output', 'output', 0)]
        >>> g.total("param_bytes"), g.edges["input_1", "linear"]["bytes"]
        (60, 32)
    """
    if not isinstance(model, nn.Module):
        raise CaptureError(f"model must be a torch.nn.Module, got {type(model).__name__}; "
                           "wrap a plain function in an nn.Module to capture it")
    if granularity not in GRANULARITIES:
        raise UnknownNameError("granularity", granularity, GRANULARITIES)
    if method not in METHODS:
        raise UnknownNameError("capture method", method, METHODS)
    leaves = tuple(leaf_modules)
    for t in leaves:
        if not (isinstance(t, type) and issubclass(t, nn.Module)):
            raise CaptureError(f"leaf_modules must be nn.Module subclasses, got {t!r}")
    inputs = _check_inputs(example_inputs)

    gm, route = _trace(model, inputs, method, leaves)
    with torch.no_grad(), FlopCounterMode(display=False) as mode:
        _CostProp(gm, mode).run(*inputs)

    if name is None:
        cfg = getattr(model, "config", None)
        name = getattr(cfg, "name", None) or type(model).__name__
    g = OpGraph(granularity="op", name=name, module=gm, route=route)
    cfg = getattr(model, "config", None)
    if is_dataclass(cfg) and not isinstance(cfg, type):
        g.graph["config"] = asdict(cfg)

    roots = _layer_roots(model)
    owned: set[int] = set()
    for n in gm.graph.nodes:
        meta = n.meta[META_KEY]
        kind = op_kind(n, gm)
        assert kind in OP_KINDS
        param_bytes = 0
        param_read = 0
        if n.op == "call_module":
            mod = gm.get_submodule(n.target)
            for t in list(mod.parameters()) + list(mod.buffers()):
                param_read += _tensor_bytes(t)
                if id(t) not in owned:
                    owned.add(id(t))
                    param_bytes += _tensor_bytes(t)
        elif n.op == "get_attr":
            t = _fetch(gm, n.target)
            if isinstance(t, torch.Tensor) and id(t) not in owned:
                owned.add(id(t))
                param_bytes = _tensor_bytes(t)
        bytes_in = _gather_bytes_in(n, gm, kind)
        if bytes_in is None:
            bytes_in = param_read + sum(_edge_bytes(a, n) for a in n.all_input_nodes)
        module = _module_of(n)
        g.add_node(n.name, kind=kind, op=n.op, target=target_name(n, gm),
                   flops=_node_flops(kind, n, meta), bytes_in=bytes_in,
                   bytes_out=meta["bytes_out"], param_bytes=param_bytes, shape=meta["shape"],
                   dtype=meta["dtype"], module=module, layer=_layer_of(module, roots),
                   members=(n.name,))
        for a in n.all_input_nodes:
            g.add_edge(a.name, n.name, bytes=_edge_bytes(a, n))
    if granularity != "op":
        from .coarsen import coarsen
        return coarsen(g, granularity)
    return g


def _fetch(gm: nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _edge_bytes(producer: fx.Node, consumer: fx.Node) -> int:
    meta = producer.meta[META_KEY]
    if (consumer.op == "call_function" and consumer.target is operator.getitem
            and meta["item_bytes"] is not None and consumer.args[0] is producer
            and isinstance(consumer.args[1], int)):
        return int(meta["item_bytes"][consumer.args[1]])
    return int(meta["bytes_out"])


# ------------------------------------------------------------------ gathers
#: Function names (see :func:`_base_name`) of embedding lookups.
_EMBEDDING_FNS = frozenset({"embedding", "embedding_bag", "_embedding_bag"})
#: Function names of index ops: they read the source elements their output holds.
_INDEX_FNS = frozenset({"index_select", "gather", "take", "index", "getitem"})


def _is_index(node: Any) -> bool:
    """Whether fx node ``node`` produces an integer tensor (indices; not a bool mask)."""
    if not isinstance(node, fx.Node) or META_KEY not in node.meta:
        return False
    m = node.meta[META_KEY]
    shape, dt = m["shape"], getattr(torch, m["dtype"] or "", None)
    one_tensor = shape is not None and not (shape and isinstance(shape[0], tuple))
    return (one_tensor and isinstance(dt, torch.dtype) and not dt.is_floating_point
            and not dt.is_complex and dt is not torch.bool)


def _numel(shape: tuple) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _gather_bytes_in(n: fx.Node, gm: nn.Module, kind: str) -> int | None:
    """``bytes_in`` of a gather (see the module docstring), or None when ``n`` is none.

    Reads the source's rows (elements) the indices pick, at most the whole source, plus
    the bytes of every other input.
    """
    if n.op == "call_module":
        if kind != "embedding":
            return None
        w = getattr(gm.get_submodule(n.target), "weight", None)
        idx = [a for a in n.all_input_nodes if _is_index(a)]
        if not isinstance(w, torch.Tensor) or w.dim() < 1 or w.shape[0] == 0 or not idx:
            return None
        table = _tensor_bytes(w)
        rows = max(_numel(a.meta[META_KEY]["shape"]) for a in idx)
        others = sum(_edge_bytes(a, n) for a in n.all_input_nodes)
        return min(rows * (table // w.shape[0]), table) + others
    if n.op not in ("call_function", "call_method"):
        return None
    name = _base_name(target_name(n))
    if name in _EMBEDDING_FNS:
        idx = [a for a in n.all_input_nodes if _is_index(a)]
        tables = [a for a in n.all_input_nodes if not _is_index(a) and a.meta[META_KEY]["shape"]
                  and not isinstance(a.meta[META_KEY]["shape"][0], tuple)]
        if not idx or not tables:
            return None
        src = max(tables, key=lambda a: _edge_bytes(a, n))
        rows = max(_numel(a.meta[META_KEY]["shape"]) for a in idx)
        row_bytes = _edge_bytes(src, n) // max(src.meta[META_KEY]["shape"][0], 1)
    elif name in _INDEX_FNS:
        if name == "getitem" and n.target is not operator.getitem:
            return None
        src = n.args[0] if n.args else n.kwargs.get("input", n.kwargs.get("self"))
        if not isinstance(src, fx.Node) or not any(_is_index(a) for a in n.all_input_nodes if a is not src):
            return None
        shape = src.meta[META_KEY]["shape"]
        if not shape or isinstance(shape[0], tuple) or n.meta[META_KEY]["shape"] is None:
            return None
        rows = _numel_out(n.meta[META_KEY])
        row_bytes = _edge_bytes(src, n) // max(_numel(shape), 1)
    else:
        return None
    source = _edge_bytes(src, n)
    others = sum(_edge_bytes(a, n) for a in n.all_input_nodes if a is not src)
    return min(rows * row_bytes, source) + others
