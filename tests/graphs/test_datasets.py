"""Tests of graphs.datasets: IDX parsing, the deterministic split, the real Fashion-MNIST files."""
from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import pytest
import torch

from graphs.datasets import (DatasetError, fashion_mnist_available, fashion_mnist_splits, load_fashion_mnist,
                             read_idx, train_val_split)
from graphs.errors import HetschedError, UnknownNameError

needs_data = pytest.mark.skipif(not fashion_mnist_available(),
                                reason="Fashion-MNIST IDX files missing: apt-get install dataset-fashion-mnist")


def _write_idx(path, arr, code=0x08):
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + arr.astype(arr.dtype.newbyteorder(">")).tobytes())


class TestReadIdx:
    def test_roundtrip_gz_and_plain(self, tmp_path):
        a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
        for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
            p = str(tmp_path / name)
            _write_idx(p, a)
            np.testing.assert_array_equal(read_idx(p), a)

    def test_big_endian_int32(self, tmp_path):
        a = np.array([1, -2, 300000], dtype=np.int32)
        p = str(tmp_path / "b")
        _write_idx(p, a, code=0x0C)
        np.testing.assert_array_equal(read_idx(p), a)

    def test_bad_magic(self, tmp_path):
        p = tmp_path / "bad"
        p.write_bytes(b"\x01\x02\x03\x04rest")
        with pytest.raises(DatasetError, match="bad magic number"):
            read_idx(str(p))

    def test_size_mismatch(self, tmp_path):
        p = tmp_path / "short"
        p.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))
        with pytest.raises(DatasetError, match=r"shape \(5,\) \(5 bytes\) but the file holds 2"):
            read_idx(str(p))

    def test_missing_file(self, tmp_path):
        with pytest.raises(DatasetError, match="does not exist"):
            read_idx(str(tmp_path / "nope"))
        assert issubclass(DatasetError, HetschedError)


class TestSplit:
    def test_deterministic_disjoint(self):
        a = train_val_split(60000, 5000, seed=0)
        b = train_val_split(60000, 5000, seed=0)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert len(a[0]) == 55000 and len(a[1]) == 5000
        assert len(set(a[0].tolist()) | set(a[1].tolist())) == 60000
        c = train_val_split(60000, 5000, seed=1)
        assert not torch.equal(a[1], c[1])

    def test_bad_sizes(self):
        with pytest.raises(DatasetError, match="n_val must be in"):
            train_val_split(10, 10)

    def test_unknown_split_lists_choices(self):
        with pytest.raises(UnknownNameError, match="unknown Fashion-MNIST split 'val'; valid choices: test, train"):
            load_fashion_mnist("val")

    def test_missing_root(self, tmp_path):
        assert not fashion_mnist_available(str(tmp_path))
        with pytest.raises(DatasetError, match="dataset-fashion-mnist"):
            load_fashion_mnist("test", root=str(tmp_path))


@pytest.mark.data
@needs_data
class TestRealData:
    def test_train_and_test_shapes(self):
        x, y = load_fashion_mnist("train")
        assert tuple(x.shape) == (60000, 28, 28) and x.dtype == torch.uint8
        assert y.dtype == torch.int64 and int(y.min()) == 0 and int(y.max()) == 9
        assert torch.bincount(y).tolist() == [6000] * 10  # Fashion-MNIST is balanced
        xt, yt = load_fashion_mnist("test")
        assert tuple(xt.shape) == (10000, 28, 28) and torch.bincount(yt).tolist() == [1000] * 10

    def test_splits(self):
        s = fashion_mnist_splits()
        assert {k: len(v) for k, v in s.items()} == {"train": 55000, "val": 5000, "test": 10000}
        assert tuple(s["val"].x.shape) == (5000, 1, 28, 28)
        assert abs(float(s["train"].x.mean())) < 0.05 and abs(float(s["train"].x.std()) - 1) < 0.05
