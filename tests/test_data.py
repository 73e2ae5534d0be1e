"""Data loaders on small files written here, and the real MNIST test set when it is present."""
import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from revgn import data


def write_idx(path, array, magic, compress):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", s) for s in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_idx_test_only_split(tmp_path, compress):
    images = np.random.randint(0, 256, (30, 28, 28))
    labels = np.random.randint(0, 10, 30)
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images, 2051, compress)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", labels, 2049, compress)
    with pytest.warns(UserWarning, match="only the MNIST test split"):
        ds = data.load_mnist(tmp_path, n_train_if_test_only=20)
    assert ds.x_train.shape == (20, 784) and ds.x_test.shape == (10, 784)
    expected = (torch.tensor(images[0], dtype=torch.float32).reshape(-1) / 255 - 0.1307) / 0.3081
    assert torch.allclose(ds.x_train[0], expected)
    assert ds.y_test.tolist() == labels[20:].tolist()


def test_mnist_bad_header(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28)), 2049, False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(2), 2049, False)
    with pytest.raises(ValueError, match="magic"):
        data.load_mnist(tmp_path)


def _cifar_batch(path, n):
    batch = {b"data": np.random.randint(0, 256, (n, 3072), dtype=np.uint8),
             b"labels": list(np.random.randint(0, 10, n))}
    path.write_bytes(pickle.dumps(batch))
    return batch


def test_cifar_batches(tmp_path):
    train = _cifar_batch(tmp_path / "data_batch_1", 6)
    _cifar_batch(tmp_path / "test_batch", 4)
    ds = data.load_cifar10(tmp_path)
    assert ds.x_train.shape == (6, 3072) and ds.x_test.shape == (4, 3072)
    red = torch.tensor(train[b"data"][0, :1024], dtype=torch.float32) / 255
    assert torch.allclose(ds.x_train[0, :1024], (red - 0.4914) / 0.2470)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cifar_reader_refuses_code(tmp_path):
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": _Exploit(), b"labels": []}))
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": _Exploit(), b"labels": []}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        data.load_cifar10(tmp_path)


def test_teacher_student_shapes_and_determinism():
    a, b = data.teacher_student(seed=3), data.teacher_student(seed=3)
    assert a.x_train.shape == (500, 10) and a.y_test.shape == (10000, 1)
    assert torch.equal(a.y_train, b.y_train) and a.num_classes is None


def test_digits():
    ds = data.load_dataset("digits")
    assert ds.in_features == 64 and ds.num_classes == 10
    assert len(ds.x_train) + len(ds.x_test) == 1797


def test_real_mnist_test_set():
    folder = data.default_mnist_dir()
    if folder is None:
        pytest.skip("the MNIST test set is not beside this checkout")
    with pytest.warns(UserWarning):
        ds = data.load_dataset("mnist")
    assert ds.x_train.shape == (8000, 784) and ds.x_test.shape == (2000, 784)
    counts = torch.bincount(torch.cat([ds.y_train, ds.y_test]), minlength=10)
    assert counts.tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
