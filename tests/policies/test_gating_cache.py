"""The gating weight cache loads with ``weights_only=True`` (hardening item 14): a pickle
planted under the cache's file name is refused and its code never runs."""
from __future__ import annotations

import os
import pickle
import re

import pytest
import torch

from policies.errors import PolicyError
from policies.gating.train import TrainConfig, load_or_train

X = torch.randn(12, 1, 28, 28, generator=torch.Generator().manual_seed(0))
Y = torch.arange(12) % 10
CFG = TrainConfig("vit", model_kwargs=(("depth", 2),), epochs=1, batch_size=6)


class _Planted:
    """Unpickling this calls ``open(marker, "w")``: a harmless stand-in for ``os.system``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _cache_path(tmp_path) -> str:
    """Where the cache file of CFG on (X, Y) lives (its name hashes the config, the model and
    the data): train once to learn it, then remove the genuine file."""
    _, info = load_or_train(CFG, X, Y, cache_dir=str(tmp_path))
    os.remove(info["path"])
    return info["path"]


def _attempt(tmp_path) -> BaseException | None:
    """Load (or train) through the cache; the exception it raised, if any."""
    try:
        load_or_train(CFG, X, Y, cache_dir=str(tmp_path))
    except Exception as e:  # noqa: BLE001  (the test checks which one)
        return e
    return None


def test_planted_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = _cache_path(tmp_path)
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Planted(str(marker)), "train_seconds": 1.0}, f, protocol=2)
    err = _attempt(tmp_path)
    assert not marker.exists(), "the planted pickle ran"
    assert isinstance(err, PolicyError)
    assert re.search(r"refusing the gating weight cache .*\.pt: it is not a plain tensor file loadable with "
                     r"weights_only=True .*delete it to retrain", str(err))


def test_planted_torch_save_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {}, "train_seconds": _Planted(str(marker))}, _cache_path(tmp_path))
    err = _attempt(tmp_path)
    assert not marker.exists(), "the planted pickle ran"
    assert isinstance(err, PolicyError) and "refusing the gating weight cache" in str(err)


def test_wrong_shape_is_refused(tmp_path):
    torch.save({"weights": [1, 2, 3]}, _cache_path(tmp_path))
    with pytest.raises(PolicyError, match="expected a dict with a 'state_dict' of tensors and 'train_seconds'"):
        load_or_train(CFG, X, Y, cache_dir=str(tmp_path))


def test_written_cache_loads_with_weights_only(tmp_path):
    m1, i1 = load_or_train(CFG, X, Y, cache_dir=str(tmp_path))
    blob = torch.load(i1["path"], weights_only=True)
    assert isinstance(blob["config"], str) and isinstance(blob["train_seconds"], float)
    m2, i2 = load_or_train(CFG, X, Y, cache_dir=str(tmp_path))
    assert i2["cached"] and not i1["cached"]
    torch.testing.assert_close(m1(X), m2(X))
