"""Training exit models, any :class:`graphs.exits.ExitModel`, seeded, with a weight cache.

Modes (:data:`MODES`):

* ``"joint"`` minimises the weighted sum of the cross-entropy losses of every exit and the
  final head, ``sum_k w_k * CE(exit_k(x), y)`` (Teerapittayanon et al., BranchyNet, ICPR 2016);
* ``"frozen"`` first trains the backbone and final head on the final loss alone, then freezes
  them and trains only the exit heads (the backbone's accuracy is untouched by the exits;
  cf. Kaya et al., "Shallow-Deep Networks", ICML 2019);
* ``"heads"`` trains only the exit heads on the backbone *as given*: the mode for a frozen
  pretrained model (its stem, stages and final head never change; batch-norm and dropout
  stay in eval mode).

Everything is seeded: the exit heads are re-initialised from ``seed`` before a ``frozen``
or ``heads`` run, and the batch order follows a generator seeded the same way, so one
configuration, model and data give the same weights.

Trained weights are cached under ``.cache/gating/`` (git-ignored), keyed by a hash of the
:class:`TrainConfig`, of the model (its architecture and its weights before training) and of
the training data, so benchmarks and CI train once, and a changed backbone or data set
never loads stale heads (:func:`fit_exits` for any model, :func:`load_or_train` for the
built-in ones by name). A cache file holds tensors and plain
types only and is read with ``torch.load(weights_only=True)``, so a file planted in the
cache cannot execute code; anything else is refused with a :class:`PolicyError`.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from graphs.errors import UnknownNameError
from graphs.exits import ExitModel, check_adapter

from ..errors import PolicyError

__all__ = ["TrainConfig", "train_exit_model", "load_or_train", "fit_exits", "evaluate_exits", "DEFAULT_CACHE",
           "MODES", "EXIT_MODELS", "exit_model", "fingerprint"]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CACHE = os.path.join(ROOT, ".cache", "gating")
MODES = ("joint", "frozen", "heads")


#: Built-in exit models by name: ``module:class`` (imported on use, so the text model's
#: module loads only when it is asked for).
EXIT_MODELS = {"cnn": "graphs.vision:ExitCNN", "vit": "graphs.vision:ExitViT",
               "text": "graphs.text:ExitTextClassifier"}


def exit_model(name: str, **kwargs) -> ExitModel:
    """Build a built-in exit model by name (:data:`EXIT_MODELS`).

    Example:
        >>> type(exit_model("vit", depth=2)).__name__
        'ExitViT'
        >>> exit_model("resnet")
        Traceback (most recent call last):
        ...
        graphs.errors.UnknownNameError: unknown exit model 'resnet'; valid choices: cnn, text, vit
    """
    if name not in EXIT_MODELS:
        raise UnknownNameError("exit model", name, EXIT_MODELS)
    module, cls = EXIT_MODELS[name].split(":")
    return getattr(importlib.import_module(module), cls)(**kwargs)


def fingerprint(*objs) -> str:
    """A short hash of tensors, modules (architecture and weights) and plain values.

    Example:
        >>> fingerprint(torch.zeros(3)) == fingerprint(torch.zeros(3)), fingerprint(torch.zeros(3)) == fingerprint(torch.ones(3))
        (True, False)
    """
    h = hashlib.sha256()

    def feed(o):
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous().reshape(-1)
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(o, torch.nn.Module):
            h.update(repr(o).encode())
            for k, v in o.state_dict().items():
                h.update(k.encode())
                feed(v)
        elif isinstance(o, (tuple, list)):
            for v in o:
                feed(v)
        else:
            h.update(json.dumps(o, sort_keys=True, default=str).encode())
    for o in objs:
        feed(o)
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class TrainConfig:
    """How to build and train one exit model.

    Example:
        >>> c = TrainConfig("cnn", epochs=1)
        >>> c.key() == TrainConfig("cnn", epochs=1).key(), c.key() == TrainConfig("cnn").key()
        (True, False)
    """

    model: str  # a name of EXIT_MODELS ("cnn", "vit", "text"), or a label for fit_exits' cache files
    model_kwargs: tuple = ()  # (name, value) pairs passed to the model constructor
    mode: str = "joint"  # "joint" (BranchyNet weighted losses), "frozen" (backbone, then heads), "heads"
    epochs: int = 4
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    exit_weight: float = 1.0  # BranchyNet weight of each exit's loss (the final head has 1.0)
    seed: int = 0
    n_train: int | None = None  # use only the first n training examples (None: all)

    def key(self) -> str:
        """A short hash of the configuration (the cache key)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True, default=str).encode()).hexdigest()[:16]

    def build(self) -> ExitModel:
        """A freshly initialised built-in model (seeded)."""
        torch.manual_seed(self.seed)
        return exit_model(self.model, **dict(self.model_kwargs))


def _epochs(model: ExitModel, params, x, y, epochs, cfg: TrainConfig, weights, gen) -> None:
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = x.shape[0]
    steps = epochs * math.ceil(n / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(steps, 1))
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            outs = model.forward_all(x[idx])
            loss = sum(w * F.cross_entropy(o, y[idx]) for w, o in zip(weights, outs) if w)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()


def _backbone(model: ExitModel) -> list:
    exits = {id(p) for p in model.exits.parameters()}
    return [p for p in model.parameters() if id(p) not in exits]


def _reset_heads(model: ExitModel, seed: int) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for m in model.exits.modules():
            if hasattr(m, "reset_parameters") and m is not model.exits:
                m.reset_parameters()


def train_exit_model(model: ExitModel, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig) -> ExitModel:
    """Train ``model`` in place on ``(x, y)`` as ``cfg`` says; returns it in eval mode.

    Example:
        >>> from graphs.vision import ExitViT
        >>> cfg = TrainConfig("vit", epochs=1, batch_size=8)
        >>> m = train_exit_model(ExitViT(depth=2), torch.randn(16, 1, 28, 28), torch.arange(16) % 10, cfg)
        >>> m.training
        False
    """
    if cfg.mode not in MODES:
        raise PolicyError(f"unknown training mode {cfg.mode!r}; valid choices: {', '.join(MODES)}")
    check_adapter(model)
    if x.shape[0] != y.shape[0]:
        raise PolicyError(f"x has {x.shape[0]} examples but y has {y.shape[0]}")
    model.check_input(x[:2])
    gen = torch.Generator().manual_seed(cfg.seed)
    k = len(model.exit_depths)
    if k == 0:
        raise PolicyError(f"{type(model).__name__} has no exit heads to train")
    backbone = _backbone(model)
    if cfg.mode == "joint":
        model.train()
        _epochs(model, model.parameters(), x, y, cfg.epochs, cfg, [cfg.exit_weight] * k + [1.0], gen)
        return model.eval()
    if cfg.mode == "frozen":
        model.train()
        _epochs(model, backbone, x, y, cfg.epochs, cfg, [0.0] * k + [1.0], gen)
    _reset_heads(model, cfg.seed)
    grads = [p.requires_grad for p in backbone]
    for p in backbone:
        p.requires_grad_(False)
    model.eval()  # the backbone's batch-norm statistics and dropout stay frozen
    model.exits.train()
    try:
        epochs = cfg.epochs if cfg.mode == "heads" else max(1, cfg.epochs // 2)
        _epochs(model, model.exits.parameters(), x, y, epochs, cfg, [cfg.exit_weight] * k + [0.0], gen)
    finally:
        for p, g in zip(backbone, grads):
            p.requires_grad_(g)
    return model.eval()


@torch.no_grad()
def evaluate_exits(model: ExitModel, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> list[float]:
    """Accuracy of every exit and of the final head on ``(x, y)``.

    Example:
        >>> from graphs.vision import ExitViT
        >>> accs = evaluate_exits(ExitViT(depth=2).eval(), torch.randn(4, 1, 28, 28), torch.zeros(4, dtype=torch.long))
        >>> len(accs)
        2
    """
    model.eval()
    correct = None
    for i in range(0, x.shape[0], batch):
        outs = model.forward_all(x[i:i + batch])
        c = torch.stack([(o.argmax(1) == y[i:i + batch]).sum() for o in outs])
        correct = c if correct is None else correct + c
    return (correct.double() / x.shape[0]).tolist()


def load_or_train(cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor, cache_dir: str | None = None
                  ) -> tuple[ExitModel, dict]:
    """The built-in model of ``cfg`` (:data:`EXIT_MODELS`), loaded from the cache or trained
    on ``(x, y)`` (the first ``cfg.n_train`` examples) and cached; see :func:`fit_exits`.

    Example:
        >>> import tempfile
        >>> cfg = TrainConfig("vit", model_kwargs=(("depth", 2),), epochs=1, batch_size=8)
        >>> x, y, d = torch.randn(16, 1, 28, 28), torch.arange(16) % 10, tempfile.mkdtemp()
        >>> _, info = load_or_train(cfg, x, y, d)
        >>> _, again = load_or_train(cfg, x, y, d)
        >>> info["cached"], again["cached"], info["path"] == again["path"]
        (False, True, True)
    """
    if cfg.n_train is not None:
        x, y = x[:cfg.n_train], y[:cfg.n_train]
    return fit_exits(cfg.build(), x, y, cfg, cache_dir)


def fit_exits(model: ExitModel, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
              cache_dir: str | None = None) -> tuple[ExitModel, dict]:
    """Train ``model`` (any exit model) on ``(x, y)`` as ``cfg`` says, or load the result from
    the cache; the key hashes ``cfg``, the model's architecture and weights *before*
    training, and the data.

    Returns ``(model in eval mode, info)`` where ``info`` has ``train_seconds`` (of the run
    that produced the weights), ``cached`` (whether this call loaded them) and ``path``.
    With ``cfg.mode == "heads"`` only the exit heads' weights are trained (and stored). The
    cache is read with ``torch.load(weights_only=True)``: tensors and plain types only.

    Raises:
        PolicyError: the cache file holds anything but tensors and plain types (a planted
            pickle is refused, never run).

    Example:
        >>> import tempfile
        >>> from graphs.vision import ExitCNN
        >>> torch.manual_seed(0) is not None
        True
        >>> backbone = ExitCNN().eval()  # stands for a pretrained model
        >>> before = {k: v.clone() for k, v in backbone.state_dict().items() if not k.startswith("exits.")}
        >>> cfg = TrainConfig("my-cnn", mode="heads", epochs=1, batch_size=8)
        >>> m, info = fit_exits(backbone, torch.randn(16, 1, 28, 28), torch.arange(16) % 10, cfg, tempfile.mkdtemp())
        >>> all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())  # the backbone is untouched
        True
    """
    check_adapter(model)
    cache_dir = cache_dir or DEFAULT_CACHE
    key = fingerprint(cfg.key(), model, x, y)
    label = "".join(c if c.isalnum() or c in "-_" else "_" for c in cfg.model)[:40] or "model"
    path = os.path.join(cache_dir, f"{label}-{key}.pt")
    if os.path.exists(path):
        blob = _load_cache(path)
        model.load_state_dict(blob["state_dict"], strict=cfg.mode != "heads")
        return model.eval(), {"train_seconds": blob["train_seconds"], "cached": True, "path": path}
    t = time.perf_counter()
    train_exit_model(model, x, y, cfg)
    secs = time.perf_counter() - t
    os.makedirs(cache_dir, exist_ok=True)
    tmp = path + f".{os.getpid()}.tmp"
    state = model.state_dict()
    if cfg.mode == "heads":
        state = {k: v for k, v in state.items() if k.startswith("exits.")}
    # tensors and plain types only, so that the cache loads with weights_only=True
    torch.save({"state_dict": dict(state), "train_seconds": float(secs),
                "config": json.dumps(asdict(cfg), sort_keys=True, default=str)}, tmp)
    os.replace(tmp, path)
    return model, {"train_seconds": secs, "cached": False, "path": path}


def _load_cache(path: str) -> dict:
    """The cache file at ``path``, loaded with ``weights_only=True``: tensors and plain
    containers only, so a planted file cannot run code (an ordinary pickle would).

    Raises:
        PolicyError: the file holds anything else (or is not a torch file), naming it.
    """
    import pickle

    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PolicyError(
            f"refusing the gating weight cache {path}: it is not a plain tensor file loadable with "
            f"weights_only=True ({first}); delete it to retrain") from None
    if (not isinstance(blob, dict) or not isinstance(blob.get("state_dict"), dict)
            or not isinstance(blob.get("train_seconds"), (int, float))
            or not all(isinstance(v, torch.Tensor) for v in blob["state_dict"].values())):
        raise PolicyError(f"refusing the gating weight cache {path}: expected a dict with a 'state_dict' of "
                          "tensors and 'train_seconds'; delete it to retrain")
    return blob
