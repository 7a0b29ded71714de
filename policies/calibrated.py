"""A cost model corrected by measurements: per-(device, op kind) factors, exponents, overheads.

The model wraps a base model (typically :class:`~policies.roofline.RooflineCostModel`) and
predicts, for a node ``n`` of kind ``k`` on device ``d``::

    node_time(n, d) = g[d] * (f[d, k] * s[d] * (base(n, d) / s[d]) ** b[d, k] + c_op[d] * launches(n))
    predict(P, d)   = sum(node_time(n, d) for n in P) + g[d] * c_part[d]       (a partition P)

* ``f[d, k]`` -- a correction factor per device and op kind (roofline is an upper bound on
  speed: real kernels reach a fraction of peak that depends on the kind of op);
* ``b[d, k]`` -- an exponent on the base time relative to ``s[d]``, the median base time of
  the measured nodes (efficiency that grows or shrinks with size: small matmuls run far
  below peak); 1 with ``exponents=False``;
* ``c_op[d]`` -- extra seconds per launched op (framework dispatch the spec underestimates);
* ``c_part[d]`` -- seconds per partition call (calling an fx submodule, moving its
  arguments); it applies to group measurements only, never to :meth:`node_time`, so a
  policy summing node times sees per-op costs and the runtime adds the partition term
  with :meth:`predict`;
* ``g[d]`` -- an online multiplier, 1 after a fit, moved by :meth:`update` with an
  exponentially weighted average of measured / predicted ratios.

The offline fit (:meth:`fit`) is a regression on the base model's predicted time, like
StarPU's regression-based performance models (Augonnet, Thibault, Namyst, "Automatic
calibration of performance models on heterogeneous multicore architectures", Euro-Par
2009 workshops; StarPU's ``STARPU_REGRESSION_BASED`` ``a * size ** b`` and
``STARPU_NL_REGRESSION_BASED`` ``a * size ** b + c`` models). Per device, first a linear
non-negative least squares (:func:`scipy.optimize.nnls`, ``b = 1``) of

    measured(P) ~ sum_k f[d, k] * B_k(P) + c_op[d] * ops(P) + c_part[d]

then, with ``exponents=True``, a bounded non-linear least squares
(:func:`scipy.optimize.least_squares`, ``0.25 <= b <= 2``) started from it and kept only
if it lowers the loss. Rows are weighted by ``1 / measured`` (so the fit minimises
*relative* error, which is what the ±15 % target measures), with a weak ridge prior
(weight ``prior``) pulling each ``f`` and ``b`` toward 1 so that kinds that always occur
together stay near the base model. Kinds never measured on a device get the device's
average factor and exponent 1. Transfers are not calibrated: :meth:`edge_time` and
:meth:`transfer_time` are the base model's.

Measurements cross the package boundary as plain data: a :class:`Measurement`, a tuple
``(node_or_nodes, device, seconds)`` or a dict with those keys. A bare node is a
single-node measurement (no partition term); a tuple or list of nodes is a partition.

Example:
    >>> import networkx as nx
    >>> from policies.abstract import RelatedMachines
    >>> g = nx.DiGraph(); g.add_nodes_from([("a", {"cost": 1.0, "kind": "matmul"}),
    ...                                     ("b", {"cost": 3.0, "kind": "matmul"})])
    >>> m = CalibratedCostModel(RelatedMachines({"cpu": 1.0}), overheads=False)
    >>> _ = m.fit(g, [("a", "cpu", 2.0), ("b", "cpu", 6.0)])
    >>> round(m.factor("cpu", "matmul"), 3), round(m.node_time(g, "b", "cpu"), 3)
    (2.0, 6.0)
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Hashable, Iterable, Mapping, Sequence

import networkx as nx
import numpy as np

from .cost import CostModel
from .errors import CostModelError

#: Kinds that launch nothing (no per-op overhead, no factor).
_FREE = frozenset({"input", "output", "param"})


@dataclass(frozen=True)
class Measurement:
    """One measured time: a node (``partition=False``) or a group of nodes on a device.

    The input of :meth:`CalibratedCostModel.fit` (tuples and dicts are converted by
    :func:`as_measurement`). Not to be confused with :class:`scheduler.stats.CallRecord`,
    what the runtime recorded for one partition call.

    Example:
        >>> m = Measurement(("fc1", "relu"), "cpu", 0.002)
        >>> m.partition, len(m.nodes)
        (True, 2)
        >>> Measurement(("fc1",), "cpu", 0.0)
        Traceback (most recent call last):
        ...
        policies.errors.CostModelError: measured seconds must be a finite number > 0, got 0.0 ...
    """

    nodes: tuple  # node keys of the graph the model was fitted on
    device: str  # device name
    seconds: float  # measured wall seconds (median of repeats)
    partition: bool = True  # True: a partition call (adds the partition term); False: one node

    def __post_init__(self) -> None:
        if not self.nodes:
            raise CostModelError("a measurement needs at least one node")
        if isinstance(self.seconds, bool) or not isinstance(self.seconds, (int, float)) \
                or not math.isfinite(self.seconds) or self.seconds <= 0:
            raise CostModelError(f"measured seconds must be a finite number > 0, got {self.seconds!r} "
                                 f"(device {self.device!r}, nodes {self.nodes[:3]!r})")


def as_measurement(x: Any, graph: nx.DiGraph | None = None) -> Measurement:
    """Coerce ``x`` (Measurement, ``(node_or_nodes, device, seconds)`` or dict) to a Measurement.

    Example:
        >>> as_measurement((("a", "b"), "cpu", 0.5))
        Measurement(nodes=('a', 'b'), device='cpu', seconds=0.5, partition=True)
    """
    if isinstance(x, Measurement):
        return x
    if isinstance(x, Mapping):
        try:
            nodes, device, seconds = x["nodes"], x["device"], x["seconds"]
        except KeyError as e:
            raise CostModelError(f"measurement dict lacks key {e.args[0]!r}; need nodes, device, seconds") from None
    else:
        try:
            nodes, device, seconds = x
        except (TypeError, ValueError):
            raise CostModelError(f"a measurement is (node_or_nodes, device, seconds), got {x!r}") from None
    try:
        is_node = graph is not None and nodes in graph
    except TypeError:  # unhashable: a list or set of nodes
        is_node = False
    single = is_node or not isinstance(nodes, (tuple, list, frozenset, set))
    if single:
        return Measurement((nodes,), str(device), seconds, partition=False)
    return Measurement(tuple(nodes), str(device), seconds, partition=True)


def error_summary(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """Distribution of absolute relative errors ``|p - m| / m``.

    Returns ``n``, ``median``, ``p90``, ``max``, ``mean`` and ``within_15`` (the fraction
    with error <= 0.15).

    Example:
        >>> error_summary([1.0, 1.1, 2.0], [1.0, 1.0, 1.0])["within_15"]
        0.6666666666666666
    """
    p = np.asarray(predicted, float)
    m = np.asarray(measured, float)
    if len(p) == 0:
        return {"n": 0, "median": math.nan, "p90": math.nan, "max": math.nan, "mean": math.nan,
                "within_15": math.nan}
    e = np.abs(p - m) / m
    return {"n": int(len(e)), "median": float(np.median(e)), "p90": float(np.quantile(e, 0.9)),
            "max": float(e.max()), "mean": float(e.mean()), "within_15": float(np.mean(e <= 0.15))}


class CalibratedCostModel(CostModel):
    """A base cost model corrected by measured times (see the module docstring).

    Args:
        base: the model to correct.
        graph: the graph measurements refer to by default (:meth:`fit` sets it too).
        per_kind: fit one factor per (device, op kind); False: one factor per device.
        overheads: fit the per-op and per-partition overheads; False: factors only.
        exponents: also fit an exponent per (device, kind), ``f * s * (base / s) ** b`` with
            ``s`` the median base time of the measured nodes (a power law in the base time,
            as StarPU's non-linear regression model ``a * size ** b + c``); False: b = 1 (linear).
        alpha: weight of the newest ratio in :meth:`update` (0 < alpha <= 1).
        prior: weight of the ridge prior pulling factors and exponents toward 1 in :meth:`fit`.

    Example:
        >>> import networkx as nx
        >>> from policies.abstract import RelatedMachines
        >>> g = nx.DiGraph([("a", "b")])
        >>> nx.set_node_attributes(g, {"a": 1.0, "b": 2.0}, "cost"); nx.set_node_attributes(g, "matmul", "kind")
        >>> m = CalibratedCostModel(RelatedMachines({"cpu": 1.0}), exponents=False)
        >>> _ = m.fit(g, [("a", "cpu", 2.0), ("b", "cpu", 4.0), (("a", "b"), "cpu", 6.5)])
        >>> round(m.factor("cpu", "matmul"), 3), round(m.partition_overhead["cpu"], 3)
        (2.0, 0.5)
        >>> round(m.predict(("a", "b"), "cpu"), 3)  # 2 * (1 + 2) seconds plus 0.5 per partition call
        6.5
    """

    def __init__(self, base: CostModel, graph: nx.DiGraph | None = None, *, per_kind: bool = True,
                 overheads: bool = True, exponents: bool = True, alpha: float = 0.2,
                 prior: float = 1e-6):
        if not isinstance(base, CostModel):
            raise CostModelError(f"base must be a policies.cost.CostModel, got {type(base).__name__}")
        if not (isinstance(alpha, (int, float)) and 0 < alpha <= 1):
            raise CostModelError(f"alpha must be in (0, 1], got {alpha!r}")
        if not (isinstance(prior, (int, float)) and prior >= 0):
            raise CostModelError(f"prior must be a number >= 0, got {prior!r}")
        self.base = base
        self.devices = tuple(base.devices)
        self.graph = graph
        self.per_kind = per_kind
        self.overheads = overheads
        self.exponents_fit = exponents
        self.alpha = float(alpha)
        self.prior = float(prior)
        self.factors: dict[str, dict[str, float]] = {}  # device -> kind ("*" = fallback) -> factor
        self.exponents: dict[str, dict[str, float]] = {}  # device -> kind -> exponent b (1 = linear)
        self.scale: dict[str, float] = {}  # device -> seconds the exponents are relative to
        self.op_overhead: dict[str, float] = {}  # device -> seconds per launched op
        self.partition_overhead: dict[str, float] = {}  # device -> seconds per partition call
        self.online: dict[str, float] = {}  # device -> online multiplier g
        self.records: list[Measurement] = []  # the measurements of the last fit
        self.online_log: list[tuple[str, float, float]] = []  # (device, predicted, measured) per update

    # -------------------------------------------------------------- helpers
    def _graph(self, graph: nx.DiGraph | None) -> nx.DiGraph:
        g = graph if graph is not None else self.graph
        if g is None:
            raise CostModelError("no graph: pass graph=... or fit the model on a graph first")
        return g

    def _check_device(self, device: str) -> None:
        if self.devices and device not in self.devices:
            raise CostModelError(f"unknown device {device!r}; devices: {', '.join(self.devices)}")

    @staticmethod
    def _kind(graph: nx.DiGraph, node: Hashable) -> str:
        return str(graph.nodes[node].get("kind", "other"))

    @staticmethod
    def _launches(graph: nx.DiGraph, node: Hashable) -> int:
        from .roofline import launches

        return launches(graph.nodes[node])

    def factor(self, device: str, kind: str) -> float:
        """The fitted factor of ``kind`` on ``device`` (device average for unseen kinds, else 1)."""
        f = self.factors.get(device, {})
        return f.get(kind if self.per_kind else "*", f.get("*", 1.0))

    # ------------------------------------------------------------ prediction
    def node_time(self, graph: nx.DiGraph, node: Hashable, device: str) -> float:
        """Corrected time of one node (no partition term)."""
        if node not in graph:
            raise CostModelError(f"node {node!r} is not in the graph")
        kind = self._kind(graph, node)
        if kind in _FREE:
            return self.base.node_time(graph, node, device)
        b = float(self._shape(device, kind, self.base.node_time(graph, node, device)))
        g = self.online.get(device, 1.0)
        return g * (self.factor(device, kind) * b
                    + self.op_overhead.get(device, 0.0) * self._launches(graph, node))

    def _shape(self, device: str, kind: str, base):
        """``s * (base / s) ** b`` for the fitted exponent ``b`` of (device, kind); base if b = 1."""
        b = self.exponents.get(device, {}).get(kind if self.per_kind else "*", 1.0)
        if b == 1.0:
            return base
        s = self.scale[device]
        return s * (np.asarray(base, float) / s) ** b

    def time_matrix(self, graph: nx.DiGraph, nodes: Sequence[Hashable] | None = None,
                    devices: Sequence[str] | None = None) -> np.ndarray:
        """Vectorised :meth:`node_time` on top of the base model's time matrix."""
        nodes = list(graph.nodes) if nodes is None else list(nodes)
        devices = list(self.devices if devices is None else devices)
        T = np.array(self.base.time_matrix(graph, nodes, devices), dtype=float)
        kinds = [self._kind(graph, n) for n in nodes]
        launches = np.array([self._launches(graph, n) for n in nodes], float)
        free = np.array([k in _FREE for k in kinds])
        for j, d in enumerate(devices):
            f = np.array([self.factor(d, k) for k in kinds])
            shaped = T[:, j].copy()
            fin = np.isfinite(shaped)
            for k in set(kinds):
                idx = np.array([kk == k for kk in kinds]) & fin
                if idx.any():
                    shaped[idx] = self._shape(d, k, shaped[idx])
            col = self.online.get(d, 1.0) * (f * shaped + self.op_overhead.get(d, 0.0) * launches)
            col[free] = T[free, j]
            col[np.isinf(T[:, j])] = np.inf
            T[:, j] = col
        return T

    def predict(self, node_or_group: Any, device: str, graph: nx.DiGraph | None = None) -> float:
        """Predicted seconds of a node, or of a partition (a tuple/list of nodes) with its
        partition term."""
        g = self._graph(graph)
        m = as_measurement((node_or_group, device, 1.0), g)
        return self._predict(g, m)

    def _predict(self, g: nx.DiGraph, m: Measurement) -> float:
        self._check_device(m.device)
        t = sum(self.node_time(g, n, m.device) for n in m.nodes)
        if m.partition:
            t += self.online.get(m.device, 1.0) * self.partition_overhead.get(m.device, 0.0)
        return t

    # ---------------------------------------------------------------- fitting
    def fit(self, graph: nx.DiGraph, measurements: Iterable[Any]) -> "CalibratedCostModel":
        """Fit factors (and exponents, overheads) per device from ``measurements``; replaces
        any earlier fit and resets the online multipliers to 1. Returns ``self``.

        Raises:
            CostModelError: a measurement names a node not in ``graph`` or an unknown
                device, or a node the base model cannot price on that device.
        """
        recs = [as_measurement(x, graph) for x in measurements]
        if not recs:
            raise CostModelError("fit needs at least one measurement")
        for r in recs:
            self._check_device(r.device)
            for n in r.nodes:
                if n not in graph:
                    raise CostModelError(f"measurement names node {n!r}, which is not in the graph")
        self.graph = graph
        self.records = recs
        self.factors, self.exponents, self.op_overhead, self.partition_overhead, self.online = \
            {}, {}, {}, {}, {}
        by_dev: dict[str, list[Measurement]] = {}
        for r in recs:
            by_dev.setdefault(r.device, []).append(r)
        for d, rs in by_dev.items():
            self._fit_device(graph, d, rs)
        return self

    def _fit_device(self, graph: nx.DiGraph, d: str, rs: list[Measurement]) -> None:
        from scipy.optimize import least_squares, nnls

        base: dict[Hashable, float] = {}
        for r in rs:
            for n in r.nodes:
                if n not in base:
                    t = self.base.node_time(graph, n, d)
                    if not math.isfinite(t):
                        raise CostModelError(f"base model cannot price node {n!r} on device {d!r}")
                    base[n] = t
        key = (lambda n: self._kind(graph, n)) if self.per_kind else (lambda n: "*")
        kinds = sorted({key(n) for r in rs for n in r.nodes if self._kind(graph, n) not in _FREE})
        col = {k: i for i, k in enumerate(kinds)}
        nk, nr = len(kinds), len(rs)
        # per kind: the rows its nodes fall in and their base times (> 0 only)
        rows_k: list[list[int]] = [[] for _ in kinds]
        vals_k: list[list[float]] = [[] for _ in kinds]
        ops = np.zeros(nr)
        part = np.array([1.0 if r.partition else 0.0 for r in rs])
        y = np.empty(nr)
        for i, r in enumerate(rs):
            free_t = 0.0
            for n in r.nodes:
                if self._kind(graph, n) in _FREE:
                    free_t += base[n]  # a free node's base time (0 for roofline) is not corrected
                    continue
                ops[i] += self._launches(graph, n)
                if base[n] > 0:
                    rows_k[col[key(n)]].append(i)
                    vals_k[col[key(n)]].append(base[n])
            y[i] = r.seconds - free_t
        positive = [v for vs in vals_k for v in vs]
        scale = float(np.median(positive)) if positive else 1.0
        rows_a = [np.array(x, int) for x in rows_k]
        logv = [np.log(np.array(v) / scale) if v else np.zeros(0) for v in vals_k]
        w = 1.0 / np.array([r.seconds for r in rs])

        def features(expo: np.ndarray) -> np.ndarray:
            """B[i, k] = scale * sum over kind-k nodes of row i of (base / scale) ** expo[k]."""
            B = np.zeros((nr, nk))
            for k in range(nk):
                if len(rows_a[k]):
                    B[:, k] = scale * np.bincount(rows_a[k], np.exp(expo[k] * logv[k]), minlength=nr)
            return B

        # 1) linear fit (exponents 1): non-negative least squares on relative residuals
        A = features(np.ones(nk))
        if self.overheads:
            A = np.hstack([A, ops[:, None], part[:, None]])
        ncols = A.shape[1]
        Aw, yw = A * w[:, None], y * w
        if self.prior > 0 and nk:
            P = np.zeros((nk, ncols))
            P[np.arange(nk), np.arange(nk)] = math.sqrt(self.prior)
            Aw = np.vstack([Aw, P])
            yw = np.concatenate([yw, np.full(nk, math.sqrt(self.prior))])
        x, _ = nnls(Aw, yw, maxiter=50 * ncols + 100)
        fac, expo = x[:nk].copy(), np.ones(nk)
        c_op, c_part = (float(x[nk]), float(x[nk + 1])) if self.overheads else (0.0, 0.0)

        # 2) optional: exponents per kind (time = f * scale * (base / scale) ** b), like
        #    StarPU's non-linear regression model a * size ** b + c
        if self.exponents_fit and nk:
            sq = math.sqrt(self.prior)

            def resid(z: np.ndarray) -> np.ndarray:
                f, b = z[:nk], z[nk:2 * nk]
                pred = features(b) @ f
                if self.overheads:
                    pred = pred + z[2 * nk] * ops + z[2 * nk + 1] * part
                return np.concatenate([(pred - y) * w, sq * (f - 1), sq * (b - 1)])

            z0 = np.concatenate([np.maximum(fac, 1e-6), expo] + ([[c_op, c_part]] if self.overheads else []))
            lo = np.concatenate([np.zeros(nk), np.full(nk, 0.25)] + ([[0.0, 0.0]] if self.overheads else []))
            hi = np.concatenate([np.full(nk, np.inf), np.full(nk, 2.0)] + ([[np.inf, np.inf]] if self.overheads else []))
            z0 = np.clip(z0, lo, np.where(np.isinf(hi), z0, hi))
            if self.overheads:
                z0[2 * nk:] = np.maximum(z0[2 * nk:], 1e-12)
            sol = least_squares(resid, z0, bounds=(lo, hi), x_scale="jac", xtol=1e-12, ftol=1e-12,
                                gtol=1e-12, max_nfev=200 * len(z0))
            if np.sum(sol.fun ** 2) <= np.sum(resid(z0) ** 2):
                fac, expo = sol.x[:nk], sol.x[nk:2 * nk]
                if self.overheads:
                    c_op, c_part = float(sol.x[2 * nk]), float(sol.x[2 * nk + 1])
        f = {k: float(fac[col[k]]) for k in kinds}
        e = {k: float(expo[col[k]]) for k in kinds}
        # fallback for kinds never measured here: base-time-weighted average factor, exponent 1
        tot = np.array([sum(v) for v in vals_k])
        f.setdefault("*", float((fac * tot).sum() / tot.sum()) if tot.sum() > 0 else 1.0)
        self.factors[d] = f
        self.exponents[d] = e
        self.scale[d] = scale
        self.op_overhead[d] = c_op
        self.partition_overhead[d] = c_part

    # ----------------------------------------------------------------- online
    def update(self, node_or_group: Any, device: str, seconds: float,
               *, graph: nx.DiGraph | None = None) -> float:
        """Feed one measured time; moves the device's online multiplier ``g`` toward the
        value that would have predicted it: ``g <- g * ((1 - alpha) + alpha * measured /
        predicted)``. Returns the relative error of the prediction made *before* the update.

        Example:
            >>> import networkx as nx
            >>> from policies.abstract import RelatedMachines
            >>> g = nx.DiGraph(); g.add_node("a", cost=1.0)
            >>> m = CalibratedCostModel(RelatedMachines({"cpu": 1.0}), g, alpha=0.5)
            >>> m.update("a", "cpu", 3.0), m.node_time(g, "a", "cpu")
            (-0.6666666666666666, 2.0)
        """
        g = self._graph(graph)
        m = as_measurement((node_or_group, device, seconds), g)
        pred = self._predict(g, m)
        if pred <= 0 or not math.isfinite(pred):
            raise CostModelError(f"cannot update from a prediction of {pred!r} s on device {device!r}")
        ratio = m.seconds / pred
        self.online[device] = self.online.get(device, 1.0) * ((1 - self.alpha) + self.alpha * ratio)
        self.online_log.append((device, pred, m.seconds))
        return (pred - m.seconds) / m.seconds

    # ----------------------------------------------------------------- report
    def report(self, measurements: Iterable[Any] | None = None,
               graph: nx.DiGraph | None = None) -> dict[str, float]:
        """Prediction error distribution (see :func:`error_summary`) on ``measurements``
        (default: the ones of the last fit, i.e. in-sample).

        Example:
            >>> import networkx as nx
            >>> from policies.abstract import RelatedMachines
            >>> g = nx.DiGraph(); g.add_node("a", cost=1.0)
            >>> m = CalibratedCostModel(RelatedMachines({"cpu": 1.0}), g)
            >>> m.report([("a", "cpu", 1.25)])["median"]
            0.2
        """
        g = self._graph(graph)
        recs = self.records if measurements is None else [as_measurement(x, g) for x in measurements]
        return error_summary([self._predict(g, r) for r in recs], [r.seconds for r in recs])

    # ------------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, Any]:
        """The fitted state as plain JSON-safe data (the base model is not included)."""
        return {"version": 1, "per_kind": self.per_kind, "overheads": self.overheads,
                "alpha": self.alpha, "prior": self.prior, "devices": list(self.devices),
                "exponents_fit": self.exponents_fit, "factors": self.factors,
                "exponents": self.exponents, "scale": self.scale, "op_overhead": self.op_overhead,
                "partition_overhead": self.partition_overhead, "online": self.online}

    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted state as JSON."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base: CostModel,
                  graph: nx.DiGraph | None = None) -> "CalibratedCostModel":
        """Inverse of :meth:`to_dict` on top of ``base``."""
        if d.get("version") != 1:
            raise CostModelError(f"calibration state has version {d.get('version')!r}; this reads version 1")
        try:
            m = cls(base, graph, per_kind=bool(d["per_kind"]), overheads=bool(d["overheads"]),
                    exponents=bool(d["exponents_fit"]), alpha=float(d["alpha"]), prior=float(d["prior"]))
            m.factors = {dev: {k: float(v) for k, v in fs.items()} for dev, fs in d["factors"].items()}
            m.exponents = {dev: {k: float(v) for k, v in es.items()} for dev, es in d["exponents"].items()}
            m.scale = {k: float(v) for k, v in d["scale"].items()}
            m.op_overhead = {k: float(v) for k, v in d["op_overhead"].items()}
            m.partition_overhead = {k: float(v) for k, v in d["partition_overhead"].items()}
            m.online = {k: float(v) for k, v in d["online"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CostModelError(f"calibration state is malformed: {e!r}") from e
        unknown = [dev for dev in m.factors if m.devices and dev not in m.devices]
        if unknown:
            raise CostModelError(f"calibration names device(s) {unknown} the base model lacks; "
                                 f"devices: {', '.join(m.devices)}")
        return m

    @classmethod
    def load(cls, path: str | os.PathLike, base: CostModel,
             graph: nx.DiGraph | None = None) -> "CalibratedCostModel":
        """Read a state written by :meth:`save`, on top of ``base``."""
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise CostModelError(f"cannot read calibration {os.fspath(path)}: {e}") from e
        return cls.from_dict(d, base, graph)

    # ------------------------------------------------------------- delegation
    def edge_time(self, graph: nx.DiGraph, u: Hashable, v: Hashable, src: str, dst: str) -> float:
        """The base model's edge time (transfers are not calibrated)."""
        return self.base.edge_time(graph, u, v, src, dst)

    def transfer_time(self, nbytes: float, src: str, dst: str) -> float:
        """The base model's transfer time."""
        return self.base.transfer_time(nbytes, src, dst)

    def supports(self, graph: nx.DiGraph, node: Hashable, device: str) -> bool:
        """The base model's answer."""
        return self.base.supports(graph, node, device)

    def power(self, device: str) -> tuple[float, float] | None:
        """The base model's powers."""
        return self.base.power(device)

    def node_memory(self, graph: nx.DiGraph, node: Hashable) -> float:
        """The base model's answer."""
        return self.base.node_memory(graph, node)
