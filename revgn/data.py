"""Data that needs no network (DESIGN §6): scikit-learn's bundled digits, MNIST (IDX files) and
CIFAR-10 (python batches) from local folders, and Arbel et al.'s teacher-student regression.

Every loader returns a ``Dataset`` of float32 inputs flattened to ``n x features`` and int64 labels
(float ``n x 1`` targets for the regression task).

Normalizations:

- digits: ``x / 16`` (pixels are 0..16), then ``(x - mean) / (std + 0.01)`` per pixel with the
  *training* mean and std; the ``0.01`` keeps the border pixels that are constant in training
  (std 0) finite.
- MNIST: ``(x / 255 - 0.1307) / 0.3081``, the normalization of the paper's code (torchvision's
  usual constants).
- CIFAR-10: ``(x / 255 - mean_c) / std_c`` per channel ``c`` with the usual CIFAR-10 constants,
  flattened channel-major (``3 x 32 x 32 -> 3072``), the layout of the python batches.
"""
from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

DATASETS = ("digits", "mnist", "cifar10", "teacher")
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IDX_IMAGES, IDX_LABELS = 2051, 2049
MNIST_SHAPE = (28, 28)
CIFAR_FEATURES = 3 * 32 * 32
#: where the files come from, for messages about missing data
MNIST_SOURCE = ("the four IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (.gz or unpacked), from "
                "http://yann.lecun.com/exdb/mnist/ or written by torchvision.datasets.MNIST(DIR, "
                "download=True) into DIR/MNIST/raw")
CIFAR_SOURCE = ("the CIFAR-10 python version (cifar-10-python.tar.gz from "
                "https://www.cs.toronto.edu/~kriz/cifar.html, unpacked)")


@dataclass
class Dataset:
    """A train/test split. ``num_classes`` is None for regression (targets ``n x outputs``)."""
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int | None
    name: str
    notes: list[str] = field(default_factory=list)

    @property
    def in_features(self) -> int:
        return self.x_train[0].numel()

    def subset(self, n_train: int | None = None, n_test: int | None = None) -> "Dataset":
        """The first ``n_train`` training and ``n_test`` test examples (None keeps all)."""
        return Dataset(self.x_train[:n_train], self.y_train[:n_train], self.x_test[:n_test],
                       self.y_test[:n_test], self.num_classes, self.name, list(self.notes))


def batches(x, y, batch_size: int, generator: torch.Generator | None = None,
            shuffle: bool = True):
    """Mini-batches ``(x[idx], y[idx])`` covering every example once; the order is a fresh
    permutation drawn from ``generator`` on each call, so a seeded generator gives the same
    sequence of epochs on every run. The last batch may be smaller."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    n = len(x)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield x[idx], y[idx]


# -- scikit-learn digits -----------------------------------------------------------------------

def load_digits_dataset(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """The 1797 real 8x8 digits bundled with scikit-learn (64 features, 10 classes): a split
    seeded by ``seed``, normalized as in the module docstring."""
    from sklearn.datasets import load_digits
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1); got {test_fraction}")
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X, dtype=torch.float32) / 16
    y = torch.tensor(y, dtype=torch.int64)
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))
    X, y = X[perm], y[perm]
    n_train = len(X) - int(test_fraction * len(X))
    mean, std = X[:n_train].mean(0), X[:n_train].std(0)
    X = (X - mean) / (std + 0.01)
    return Dataset(X[:n_train], y[:n_train], X[n_train:], y[n_train:], 10, "digits",
                   [f"scikit-learn digits, {n_train} train / {len(X) - n_train} test "
                    f"(split seed {seed}); x/16 standardized with training statistics"])


# -- MNIST (IDX) -------------------------------------------------------------------------------

def _read_maybe_gzip(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: corrupt gzip data ({err})") from err


def read_idx(path, magic: int) -> np.ndarray:
    """An IDX file, gzip or raw: ``magic`` 2051 (images, header ``count rows cols``) or 2049
    (labels, header ``count``), unsigned bytes; the header must match the data's length."""
    path = Path(path)
    raw = _read_maybe_gzip(path)
    ndim = {IDX_IMAGES: 3, IDX_LABELS: 1}[magic]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: {len(raw)} bytes, too short for an IDX header")
    got = struct.unpack(">I", raw[:4])[0]
    if got != magic:
        kind = "images" if magic == IDX_IMAGES else "labels"
        raise ValueError(f"{path}: IDX magic {got}, expected {magic} ({kind}, unsigned bytes)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise ValueError(f"{path}: header {shape} promises {expected} bytes of data, found "
                         f"{len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _mnist_split(images_path: Path, labels_path: Path):
    images, labels = read_idx(images_path, IDX_IMAGES), read_idx(labels_path, IDX_LABELS)
    if images.shape[1:] != MNIST_SHAPE:
        raise ValueError(f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, "
                         f"MNIST's are 28x28")
    if len(images) != len(labels):
        raise ValueError(f"{images_path.name} holds {len(images)} images but "
                         f"{labels_path.name} {len(labels)} labels")
    if labels.size and labels.max() > 9:
        raise ValueError(f"{labels_path}: label {labels.max()} outside 0..9")
    x = torch.tensor(images, dtype=torch.float32).reshape(len(images), -1) / 255
    return (x - MNIST_MEAN) / MNIST_STD, torch.tensor(labels, dtype=torch.int64)


def load_mnist(data_dir, n_train_if_test_only: int = 8000) -> Dataset:
    """MNIST from a folder of IDX files (``train-images-idx3-ubyte[.gz]``,
    ``train-labels-idx1-ubyte[.gz]``, ``t10k-...``), normalized and flattened to 784.

    With only the test split present (``../shared/data/mnist`` holds just that), its first
    ``n_train_if_test_only`` images train and the rest test; a warning and the dataset's notes
    say so.
    """
    folder = Path(data_dir)
    test = _find(folder, "t10k-images-idx3-ubyte"), _find(folder, "t10k-labels-idx1-ubyte")
    train = _find(folder, "train-images-idx3-ubyte"), _find(folder, "train-labels-idx1-ubyte")
    if None in test:
        raise FileNotFoundError(f"{folder}: needs t10k-images-idx3-ubyte[.gz] and "
                                "t10k-labels-idx1-ubyte[.gz]")
    if (train[0] is None) != (train[1] is None):
        raise FileNotFoundError(f"{folder}: has only one of train-images-idx3-ubyte[.gz] and "
                                "train-labels-idx1-ubyte[.gz]")
    xte, yte = _mnist_split(*test)
    if train[0] is not None:
        xtr, ytr = _mnist_split(*train)
        notes = [f"MNIST {len(xtr)} train / {len(xte)} test"]
    else:
        if not 0 < n_train_if_test_only < len(xte):
            raise ValueError(f"cannot split {len(xte)} test images into "
                             f"{n_train_if_test_only} for training and the rest for testing")
        message = (f"{folder} holds only the MNIST test split: its first {n_train_if_test_only} "
                   f"images are used for training and the last {len(xte) - n_train_if_test_only} "
                   "for testing")
        warnings.warn(message, UserWarning, stacklevel=2)
        notes = [message]
        xtr, ytr = xte[:n_train_if_test_only], yte[:n_train_if_test_only]
        xte, yte = xte[n_train_if_test_only:], yte[n_train_if_test_only:]
    return Dataset(xtr, ytr, xte, yte, 10, "mnist", notes)


def default_mnist_dir() -> Path | None:
    """``$REVGN_MNIST_DIR``, else ``shared/data/mnist`` beside the repository root (where the
    shared MNIST test set sits next to a checkout), if it holds the MNIST test images."""
    env = os.environ.get("REVGN_MNIST_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist")
    for folder in candidates:
        if _find(folder, "t10k-images-idx3-ubyte") is not None:
            return folder
    return None


# -- CIFAR-10 (python batches) -----------------------------------------------------------------

def _latin1_encode(text, encoding):
    # Python 3 pickles bytes at protocols 0-2 as _codecs.encode(str, "latin1"); nothing else.
    if encoding != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refusing _codecs.encode(..., {encoding!r})")
    return text.encode("latin1")


@lru_cache(maxsize=None)
def _numpy_globals() -> dict:
    """The globals a pickled ndarray or numpy scalar refers to, under every numpy module path
    that writers have used (``numpy.core`` before numpy 2, ``numpy._core`` since)."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric
    table = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
             ("_codecs", "encode"): _latin1_encode}
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        table[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        table[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    return table


class SafeBatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR-10 batches without running pickled code.

    A batch is a dict of bytes, lists, ints and one uint8 ndarray; rebuilding the array needs only
    numpy's array/scalar reconstructors and ``dtype`` (``_numpy_globals``). Every other global,
    ``os.system`` or ``builtins.eval`` included, is refused, so a crafted file cannot call
    anything.
    """

    def find_class(self, module, name):
        obj = _numpy_globals().get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data batch")
        return obj


def read_cifar_batch(path) -> tuple[np.ndarray, np.ndarray]:
    """``(data (n x 3072) uint8, labels (n,) int64)`` of one CIFAR-10 python batch."""
    path = Path(path)
    try:
        batch = SafeBatchUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except pickle.UnpicklingError:  # a refused global, or not a pickle
        raise
    except (EOFError, ValueError, TypeError, KeyError, IndexError) as err:  # truncated, garbled
        raise ValueError(f"{path}: not a readable CIFAR-10 batch ({err!r})") from err
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: not a CIFAR-10 batch (expected a dict, got "
                         f"{type(batch).__name__})")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise ValueError(f"{path}: missing 'data' or 'labels'")
    data, labels = np.asarray(data), np.asarray(labels, dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != CIFAR_FEATURES:
        raise ValueError(f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 "
                         f"(n, {CIFAR_FEATURES})")
    if labels.shape != (len(data),):
        raise ValueError(f"{path}: {len(data)} images but labels of shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: labels outside 0..9")
    return data, labels


def _normalize_cifar(data: np.ndarray) -> torch.Tensor:
    x = torch.tensor(data, dtype=torch.float32).reshape(-1, 3, 1024) / 255
    mean = torch.tensor(CIFAR_MEAN)[None, :, None]
    std = torch.tensor(CIFAR_STD)[None, :, None]
    return ((x - mean) / std).reshape(-1, CIFAR_FEATURES)


def load_cifar10(data_dir) -> Dataset:
    """CIFAR-10 from ``data_batch_1..5`` and ``test_batch`` (in ``data_dir`` or its
    ``cifar-10-batches-py``), normalized per channel and flattened to 3072."""
    folder = Path(data_dir)
    if (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    train = [folder / f"data_batch_{i}" for i in range(1, 6)
             if (folder / f"data_batch_{i}").is_file()]
    if not train or not (folder / "test_batch").is_file():
        raise FileNotFoundError(f"{folder}: expected data_batch_1..5 and test_batch "
                                "(the CIFAR-10 python version)")
    parts = [read_cifar_batch(p) for p in train]
    xtr = _normalize_cifar(np.concatenate([d for d, _ in parts]))
    ytr = torch.tensor(np.concatenate([l for _, l in parts]))
    data, labels = read_cifar_batch(folder / "test_batch")
    notes = [f"CIFAR-10 {len(xtr)} train ({len(train)} of 5 batches) / {len(labels)} test"]
    if len(train) < 5:
        warnings.warn(f"{folder}: only {len(train)} of the 5 training batches", UserWarning,
                      stacklevel=2)
    return Dataset(xtr, ytr, _normalize_cifar(data), torch.tensor(labels), 10, "cifar10", notes)


# -- teacher-student (Arbel et al.) -------------------------------------------------------------

def teacher_student(n_train: int = 500, n_test: int = 10000, dim: int = 10,
                    teacher_units: int = 5, seed: int = 0) -> Dataset:
    """Regression on Gaussian inputs ``x ~ N(0, I_dim)`` with targets from a one-hidden-layer
    teacher ``y = (1/u) sum_j relu(w_j . x)`` with ``u`` units of unit-norm ``w_j``. The teacher
    and both samples are drawn from ``seed``; the targets are noiseless."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(teacher_units, dim, generator=g)
    W = W / W.norm(dim=1, keepdim=True)

    def draw(n):
        x = torch.randn(n, dim, generator=g)
        return x, torch.relu(x @ W.t()).mean(dim=1, keepdim=True)
    xtr, ytr = draw(n_train)
    xte, yte = draw(n_test)
    return Dataset(xtr, ytr, xte, yte, None, "teacher",
                   [f"teacher-student: {teacher_units}-unit ReLU teacher on {dim}-d Gaussian "
                    f"inputs, {n_train} train / {n_test} test (seed {seed})"])


def load_dataset(name: str, data_dir=None, seed: int = 0, **kwargs) -> Dataset:
    """``digits`` (split seed ``seed``), ``mnist`` (``data_dir``, else ``default_mnist_dir()``),
    ``cifar10`` (``data_dir``) or ``teacher`` (``seed``; ``kwargs`` go to ``teacher_student``)."""
    if name == "digits":
        return load_digits_dataset(seed, **kwargs)
    if name == "mnist":
        folder = data_dir or default_mnist_dir()
        if folder is None:
            raise FileNotFoundError("MNIST not found: pass --data-dir DIR or set "
                                    f"REVGN_MNIST_DIR=DIR, a folder holding {MNIST_SOURCE}")
        return load_mnist(folder, **kwargs)
    if name == "cifar10":
        if data_dir is None:
            raise FileNotFoundError(f"CIFAR-10 needs --data-dir DIR, a folder holding "
                                    f"{CIFAR_SOURCE}")
        return load_cifar10(data_dir)
    if name == "teacher":
        return teacher_student(seed=seed, **kwargs)
    raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
