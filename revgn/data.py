"""Data that needs no network: scikit-learn's digits, MNIST (IDX) and CIFAR-10 (python batches)
folders, and Arbel et al.'s teacher-student regression (DESIGN §6)."""
from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

DATASETS = ("digits", "mnist", "cifar10", "teacher")
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@dataclass
class Dataset:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int | None          # None for regression
    notes: list[str] = field(default_factory=list)

    @property
    def in_features(self) -> int:
        return self.x_train[0].numel()


def batches(x, y, batch_size: int, generator: torch.Generator | None = None, shuffle=True):
    """Mini-batches of ``(x, y)``, reshuffled with ``generator`` on every call."""
    n = len(x)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield x[idx], y[idx]


# -- scikit-learn digits -----------------------------------------------------------------------

def load_digits_dataset(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """1797 real 8x8 digits (64 features), pixels / 16 standardized with the training
    statistics; seeded split."""
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X, dtype=torch.float32) / 16
    y = torch.tensor(y, dtype=torch.int64)
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))
    X, y = X[perm], y[perm]
    n_train = len(X) - int(test_fraction * len(X))
    mean, std = X[:n_train].mean(0), X[:n_train].std(0) + 1e-2
    X = (X - mean) / std
    return Dataset("digits", X[:n_train], y[:n_train], X[n_train:], y[n_train:], 10,
                   [f"scikit-learn digits, {n_train} train / {len(X) - n_train} test "
                    f"(seed {seed})"])


# -- MNIST (IDX) -------------------------------------------------------------------------------

def _open_maybe_gz(path: Path):
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def read_idx(path: Path, magic: int) -> np.ndarray:
    """An IDX file (``2051`` images, ``2049`` labels), gzip or raw, checked against its header."""
    raw = _open_maybe_gz(path)
    if len(raw) < 8:
        raise ValueError(f"{path}: too short for an IDX header")
    got = struct.unpack(">I", raw[:4])[0]
    if got != magic:
        raise ValueError(f"{path}: IDX magic {got}, expected {magic}")
    if magic == 2051:
        count, rows, cols = struct.unpack(">III", raw[4:16])
        body, shape = raw[16:], (count, rows, cols)
    else:
        count = struct.unpack(">I", raw[4:8])[0]
        body, shape = raw[8:], (count,)
    expected = int(np.prod(shape))
    if len(body) != expected:
        raise ValueError(f"{path}: header promises {expected} bytes of data, found {len(body)}")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).exists():
            return folder / name
    return None


def load_mnist(data_dir, n_train_if_test_only: int = 8000) -> Dataset:
    """MNIST from an IDX folder, normalized with the usual mean/std, flattened to 784.

    With only the 10,000-image test split present, its first ``n_train_if_test_only`` images
    train and the rest test, with a warning saying so.
    """
    folder = Path(data_dir)
    notes = []
    test_x, test_y = _find(folder, "t10k-images-idx3-ubyte"), _find(folder, "t10k-labels-idx1-ubyte")
    train_x, train_y = (_find(folder, "train-images-idx3-ubyte"),
                        _find(folder, "train-labels-idx1-ubyte"))
    if test_x is None or test_y is None:
        raise FileNotFoundError(f"{folder}: no t10k-images-idx3-ubyte[.gz] / "
                                "t10k-labels-idx1-ubyte[.gz]")

    def load(px, py):
        images = torch.tensor(read_idx(px, 2051), dtype=torch.float32).reshape(-1, 784) / 255
        labels = torch.tensor(read_idx(py, 2049), dtype=torch.int64)
        if len(images) != len(labels):
            raise ValueError(f"{px.name} has {len(images)} images but {py.name} "
                             f"{len(labels)} labels")
        return (images - MNIST_MEAN) / MNIST_STD, labels

    xte, yte = load(test_x, test_y)
    if train_x is not None and train_y is not None:
        xtr, ytr = load(train_x, train_y)
        notes.append(f"MNIST train {len(xtr)} / test {len(xte)}")
    else:
        message = (f"{folder} holds only the MNIST test split: its first {n_train_if_test_only} "
                   f"images are used for training and the last {len(xte) - n_train_if_test_only} "
                   "for testing")
        warnings.warn(message, UserWarning, stacklevel=2)
        notes.append(message)
        xtr, ytr = xte[:n_train_if_test_only], yte[:n_train_if_test_only]
        xte, yte = xte[n_train_if_test_only:], yte[n_train_if_test_only:]
    return Dataset("mnist", xtr, ytr, xte, yte, 10, notes)


# -- CIFAR-10 (python batches) -----------------------------------------------------------------

class _BatchUnpickler(pickle.Unpickler):
    """Reads CIFAR-10 batches without executing pickled code: only numpy's array
    reconstruction is allowed; any other global is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data batch")


def read_cifar_batch(path: Path):
    with open(path, "rb") as f:
        batch = _BatchUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: not a CIFAR-10 batch (a dict)")
    data, labels = batch.get(b"data", batch.get("data")), batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise ValueError(f"{path}: missing 'data' or 'labels'")
    data = np.asarray(data, dtype=np.uint8).reshape(-1, 3072)
    labels = np.asarray(labels, dtype=np.int64)
    if len(data) != len(labels):
        raise ValueError(f"{path}: {len(data)} images but {len(labels)} labels")
    return data, labels


def load_cifar10(data_dir) -> Dataset:
    """CIFAR-10 from ``data_batch_1..5`` and ``test_batch``, per-channel normalized, 3072."""
    folder = Path(data_dir)
    if (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    train = [folder / f"data_batch_{i}" for i in range(1, 6) if (folder / f"data_batch_{i}").exists()]
    if not train or not (folder / "test_batch").exists():
        raise FileNotFoundError(f"{folder}: expected data_batch_1..5 and test_batch")

    def to_tensor(data):
        x = torch.tensor(data, dtype=torch.float32).reshape(-1, 3, 1024) / 255
        mean = torch.tensor(CIFAR_MEAN)[None, :, None]
        std = torch.tensor(CIFAR_STD)[None, :, None]
        return ((x - mean) / std).reshape(-1, 3072)

    parts = [read_cifar_batch(p) for p in train]
    xtr = to_tensor(np.concatenate([p[0] for p in parts]))
    ytr = torch.tensor(np.concatenate([p[1] for p in parts]))
    xte_raw, yte_raw = read_cifar_batch(folder / "test_batch")
    return Dataset("cifar10", xtr, ytr, to_tensor(xte_raw), torch.tensor(yte_raw), 10,
                   [f"CIFAR-10 train {len(xtr)} ({len(train)} batches) / test {len(yte_raw)}"])


# -- teacher-student (Arbel et al.) -------------------------------------------------------------

def teacher_student(n_train: int = 500, n_test: int = 10000, dim: int = 10,
                    teacher_units: int = 5, seed: int = 0) -> Dataset:
    """Gaussian inputs ``x ~ N(0, I_dim)`` and targets ``y = (1/u) sum_j relu(w_j . x)`` of a
    one-hidden-layer teacher with ``u`` units and unit-norm ``w_j`` (regression)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(teacher_units, dim, generator=g)
    W = W / W.norm(dim=1, keepdim=True)

    def draw(n):
        x = torch.randn(n, dim, generator=g)
        return x, torch.relu(x @ W.t()).mean(dim=1, keepdim=True)
    xtr, ytr = draw(n_train)
    xte, yte = draw(n_test)
    return Dataset("teacher", xtr, ytr, xte, yte, None,
                   [f"teacher-student: {teacher_units}-unit ReLU teacher on {dim}-d Gaussian "
                    f"inputs, {n_train} train / {n_test} test (seed {seed})"])


def default_mnist_dir() -> Path | None:
    """``REVGN_MNIST_DIR``, else ``../shared/data/mnist`` beside the repository, if present."""
    env = os.environ.get("REVGN_MNIST_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist")
    for c in candidates:
        if _find(c, "t10k-images-idx3-ubyte") is not None:
            return c
    return None


def load_dataset(name: str, data_dir=None, seed: int = 0) -> Dataset:
    if name == "digits":
        return load_digits_dataset(seed)
    if name == "mnist":
        folder = data_dir or default_mnist_dir()
        if folder is None:
            raise FileNotFoundError("no MNIST folder: pass --data-dir or set REVGN_MNIST_DIR")
        return load_mnist(folder)
    if name == "cifar10":
        if data_dir is None:
            raise FileNotFoundError("CIFAR-10 needs --data-dir (a folder of python batches)")
        return load_cifar10(data_dir)
    if name == "teacher":
        return teacher_student(seed=seed)
    raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
