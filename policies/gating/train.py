"""Training exit models (BranchyNet joint training or a frozen backbone) with a weight cache.

Joint training minimises the weighted sum of the cross-entropy losses of every exit and
the final head, ``sum_k w_k * CE(exit_k(x), y)`` (Teerapittayanon et al., BranchyNet,
ICPR 2016). Frozen-backbone training first trains the backbone and final head on the final
loss alone, then freezes them and trains only the exit heads (the backbone's accuracy is
untouched by the exits; cf. Kaya et al., "Shallow-Deep Networks", ICML 2019).

Trained weights are cached under ``.cache/gating/`` (git-ignored), keyed by a hash of the
:class:`TrainConfig`, so benchmarks and CI train once. A cache file holds tensors and plain
types only and is read with ``torch.load(weights_only=True)``, so a file planted in the
cache cannot execute code; anything else is refused with a :class:`PolicyError`.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from graphs.vision import ExitModel, vision_model

from ..errors import PolicyError

__all__ = ["TrainConfig", "train_exit_model", "load_or_train", "evaluate_exits", "DEFAULT_CACHE",
           "MODES"]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CACHE = os.path.join(ROOT, ".cache", "gating")
MODES = ("joint", "frozen")


@dataclass(frozen=True)
class TrainConfig:
    """How to build and train one exit model.

    Example:
        >>> c = TrainConfig("cnn", epochs=1)
        >>> c.key() == TrainConfig("cnn", epochs=1).key(), c.key() == TrainConfig("cnn").key()
        (True, False)
    """

    model: str  # "cnn" or "vit" (graphs.vision.VISION_MODELS)
    model_kwargs: tuple = ()  # (name, value) pairs passed to the model constructor
    mode: str = "joint"  # "joint" (BranchyNet weighted losses) or "frozen" (backbone, then heads)
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
        """A freshly initialised model (seeded)."""
        torch.manual_seed(self.seed)
        return vision_model(self.model, **dict(self.model_kwargs))


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
    if x.shape[0] != y.shape[0]:
        raise PolicyError(f"x has {x.shape[0]} examples but y has {y.shape[0]}")
    gen = torch.Generator().manual_seed(cfg.seed)
    k = len(model.exit_depths)
    model.train()
    if cfg.mode == "joint":
        _epochs(model, model.parameters(), x, y, cfg.epochs, cfg, [cfg.exit_weight] * k + [1.0], gen)
    else:
        backbone = list(model.stages.parameters()) + list(model.head.parameters())
        _epochs(model, backbone, x, y, cfg.epochs, cfg, [0.0] * k + [1.0], gen)
        for p in backbone:
            p.requires_grad_(False)
        model.stages.eval()  # freeze batch-norm statistics too
        _epochs(model, model.exits.parameters(), x, y, max(1, cfg.epochs // 2), cfg, [cfg.exit_weight] * k + [0.0], gen)
        for p in backbone:
            p.requires_grad_(True)
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
    """The model of ``cfg``, loaded from the cache or trained on ``(x, y)`` and cached.

    Returns ``(model in eval mode, info)`` where ``info`` has ``train_seconds`` (of the run
    that produced the weights), ``cached`` (whether this call loaded them) and ``path``.
    The cache is read with ``torch.load(weights_only=True)``: tensors and plain types only.

    Raises:
        PolicyError: the cache file holds anything but tensors and plain types (a planted
            pickle is refused, never run).
    """
    cache_dir = cache_dir or DEFAULT_CACHE
    path = os.path.join(cache_dir, f"{cfg.model}-{cfg.key()}.pt")
    model = cfg.build()
    if os.path.exists(path):
        blob = _load_cache(path)
        model.load_state_dict(blob["state_dict"])
        return model.eval(), {"train_seconds": blob["train_seconds"], "cached": True, "path": path}
    if cfg.n_train is not None:
        x, y = x[:cfg.n_train], y[:cfg.n_train]
    t = time.perf_counter()
    train_exit_model(model, x, y, cfg)
    secs = time.perf_counter() - t
    os.makedirs(cache_dir, exist_ok=True)
    tmp = path + ".tmp"
    # tensors and plain types only, so that the cache loads with weights_only=True
    torch.save({"state_dict": dict(model.state_dict()), "train_seconds": float(secs),
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
