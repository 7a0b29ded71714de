"""Fashion-MNIST from the raw IDX files that the Debian package ``dataset-fashion-mnist`` ships.

Nothing is downloaded: the files are read from ``/usr/share/datasets/fashion-mnist`` (the
Debian package's location; ``make data`` installs it) or from a directory given as
``root`` or in the ``HETSCHED_FASHION_MNIST`` environment variable.

The IDX format (LeCun et al., the MNIST database page) is a big-endian header -- two zero
bytes, a type code (``0x08`` = unsigned byte), the number of dimensions -- then one 32-bit
size per dimension, then the data in C order. Files may be gzip-compressed.

The training set (60 000 images) is split deterministically into 55 000 training and 5 000
validation images (:func:`train_val_split`); the test set has 10 000 images.

Reference:
    Xiao, Rasul and Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
    Learning Algorithms", arXiv:1708.07747, 2017.
"""
from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass

import numpy as np
import torch

from .errors import HetschedError, UnknownNameError

__all__ = ["DatasetError", "DEFAULT_ROOT", "SPLITS", "CLASSES", "read_idx", "fashion_mnist_root",
           "fashion_mnist_available", "load_fashion_mnist", "train_val_split", "FashionMNIST",
           "fashion_mnist_splits", "MEAN", "STD"]

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
SPLITS = ("train", "test")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot")
MEAN, STD = 0.2860, 0.3530  # pixel mean / std of the 60k training images (scaled to [0, 1])
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
           0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class DatasetError(HetschedError, ValueError):
    """A data file is missing or malformed, or a split request is invalid.

    Example:
        >>> load_fashion_mnist("test", root="/nonexistent")
        Traceback (most recent call last):
        ...
        graphs.datasets.DatasetError: Fashion-MNIST test files not found under '/nonexistent'; install ...
    """


def read_idx(path: str) -> np.ndarray:
    """Parse one IDX file (optionally ``.gz``) into a numpy array of its declared shape.

    Raises:
        DatasetError: the file is missing, its magic number is wrong, or its size does not
            match its header.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "x-idx1-ubyte")
        >>> _ = open(p, "wb").write(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
        >>> read_idx(p)
        array([7, 8, 9], dtype=uint8)
    """
    if not os.path.exists(path):
        raise DatasetError(f"IDX file {path!r} does not exist")
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise DatasetError(f"{path!r} is not an IDX file: bad magic number {data[:4]!r}; "
                           f"expected 0x00 0x00 <type in {sorted(_DTYPES)}> <ndim>")
    dtype, ndim = np.dtype(_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise DatasetError(f"{path!r}: header declares shape {shape} ({expected} bytes) but the "
                           f"file holds {len(data) - header} bytes of data")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def fashion_mnist_root(root: str | None = None) -> str:
    """The directory holding the IDX files: ``root``, ``$HETSCHED_FASHION_MNIST`` or the default.

    Example:
        >>> fashion_mnist_root("/tmp/fm")
        '/tmp/fm'
    """
    return root or os.environ.get("HETSCHED_FASHION_MNIST") or DEFAULT_ROOT


def _find(root: str, stem: str) -> str | None:
    for name in (stem + ".gz", stem):
        p = os.path.join(root, name)
        if os.path.exists(p):
            return p
    return None


def fashion_mnist_available(root: str | None = None) -> bool:
    """Whether all four Fashion-MNIST IDX files are present (gzipped or not).

    Example:
        >>> fashion_mnist_available("/nonexistent")
        False
    """
    r = fashion_mnist_root(root)
    return all(_find(r, s) for pair in _FILES.values() for s in pair)


def load_fashion_mnist(split: str = "train", root: str | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 28, 28)`` uint8 and labels ``(N,)`` int64 of one split (``train``/``test``).

    Raises:
        UnknownNameError: ``split`` is not ``"train"`` or ``"test"``.
        DatasetError: the files are missing (install ``dataset-fashion-mnist``) or malformed.

    Example:
        >>> x, y = load_fashion_mnist("test")  # doctest: +SKIP
        >>> tuple(x.shape), int(y.max())  # doctest: +SKIP
        ((10000, 28, 28), 9)
    """
    if split not in _FILES:
        raise UnknownNameError("Fashion-MNIST split", split, SPLITS)
    r = fashion_mnist_root(root)
    paths = [_find(r, s) for s in _FILES[split]]
    if not all(paths):
        raise DatasetError(f"Fashion-MNIST {split} files not found under {r!r}; install the "
                           "Debian package dataset-fashion-mnist (`make data`) or set "
                           "HETSCHED_FASHION_MNIST to a directory holding the IDX files")
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != (images.shape[0],):
        raise DatasetError(f"Fashion-MNIST {split}: unexpected shapes images {images.shape}, "
                           f"labels {labels.shape}; expected (N, 28, 28) and (N,)")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def train_val_split(n: int = 60000, n_val: int = 5000, seed: int = 0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic disjoint index split of ``range(n)`` into ``n - n_val`` and ``n_val``.

    Example:
        >>> tr, va = train_val_split(10, 3, seed=0)
        >>> len(tr), len(va), sorted(tr.tolist() + va.tolist()) == list(range(10))
        (7, 3, True)
    """
    if not 0 < n_val < n:
        raise DatasetError(f"n_val must be in (0, n={n}); got {n_val}")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    return perm[n_val:].sort().values, perm[:n_val].sort().values


@dataclass(frozen=True)
class FashionMNIST:
    """One split as normalised float images ``x`` (N, 1, 28, 28) and int64 labels ``y`` (N,).

    :func:`fashion_mnist_splits` builds them from the real files.

    Example:
        >>> import torch
        >>> ds = FashionMNIST(torch.zeros(8, 1, 28, 28), torch.arange(8) % 10)
        >>> len(ds), len(ds.subset(3)), ds.subset(3).y.tolist(), CLASSES[ds.y[2]]
        (8, 3, [0, 1, 2], 'Pullover')
    """

    x: torch.Tensor  # (N, 1, 28, 28) float32, (pixel / 255 - MEAN) / STD
    y: torch.Tensor  # (N,) int64 class index in 0..9

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, n: int) -> "FashionMNIST":
        """The first ``n`` examples."""
        return FashionMNIST(self.x[:n], self.y[:n])


def _normalise(images: torch.Tensor) -> torch.Tensor:
    return ((images.float() / 255.0 - MEAN) / STD).unsqueeze(1)


def fashion_mnist_splits(root: str | None = None, n_val: int = 5000, seed: int = 0
                         ) -> dict[str, FashionMNIST]:
    """The ``train`` (55k), ``val`` (5k) and ``test`` (10k) splits, normalised.

    Example:
        >>> s = fashion_mnist_splits()  # doctest: +SKIP
        >>> {k: len(v) for k, v in s.items()}  # doctest: +SKIP
        {'train': 55000, 'val': 5000, 'test': 10000}
    """
    xtr, ytr = load_fashion_mnist("train", root)
    xte, yte = load_fashion_mnist("test", root)
    tr, va = train_val_split(len(ytr), n_val, seed)
    x = _normalise(xtr)
    return {"train": FashionMNIST(x[tr], ytr[tr]), "val": FashionMNIST(x[va], ytr[va]),
            "test": FashionMNIST(_normalise(xte), yte)}
