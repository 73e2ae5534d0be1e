"""Data that needs no network (DESIGN §6): scikit-learn's bundled digits, MNIST (IDX files) and
CIFAR-10 (binary layout, python batches, or the exact 5,000-image subset) from local folders, and
Arbel et al.'s teacher-student regression.

Every loader returns a ``Dataset`` of float32 inputs flattened to ``n x features`` and int64 labels
(float ``n x 1`` targets for the regression task), and in ``Dataset.source`` which copy of the data
it read (for CIFAR-10: the exact subset, a copy that matches the original bytes, or the lossy
JPEG-derived one).

Normalizations:

- digits: ``x / 16`` (pixels are 0..16), then ``(x - mean) / (std + 0.01)`` per pixel with the
  *training* mean and std; the ``0.01`` keeps the border pixels that are constant in training
  (std 0) finite.
- MNIST: ``(x / 255 - 0.1307) / 0.3081``, the normalization of the paper's code (torchvision's
  usual constants).
- CIFAR-10: ``(x / 255 - mean_c) / std_c`` per channel ``c`` with the usual CIFAR-10 constants,
  flattened channel-major (``3 x 32 x 32 -> 3072``), the pixel layout of both the binary records
  and the python batches.
"""
from __future__ import annotations

import copy
import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import warnings
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

DATASETS = ("digits", "diabetes", "mnist", "cifar10", "teacher")
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IDX_IMAGES, IDX_LABELS = 2051, 2049
MNIST_SHAPE = (28, 28)
CIFAR_FEATURES = 3 * 32 * 32
CIFAR_RECORD = 1 + CIFAR_FEATURES  # one record of the binary layout: label byte, then the pixels
#: the exact subset: the original bytes of training records 0-3999 and test records 0-999
CIFAR_SUBSET_ARCHIVE = "cifar-10-lossless-subset.tar.gz"
CIFAR_SUBSET_FILES = ("train_0000-3999.bin", "test_0000-0999.bin")
CIFAR_EXACT_COUNTS = (4000, 1000)
CIFAR_EXACT_SHA256 = {
    "train": "0993cf8b8e43bc207603aef9787006995746513f5e3fa5a52e06d1b069926330",
    "test": "8314c96d7cd65618193bab23acdd5d4c4af15bf6dd00a1781d55beedf3be1ef5",
}
#: where the files come from, for messages about missing data
MNIST_SOURCE = ("the four IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (.gz or unpacked), from "
                "http://yann.lecun.com/exdb/mnist/ or written by torchvision.datasets.MNIST(DIR, "
                "download=True) into DIR/MNIST/raw")
CIFAR_SOURCE = ("CIFAR-10's binary version (data_batch_1..5.bin, test_batch.bin: "
                "cifar-10-binary.tar.gz) or python version (data_batch_1..5, test_batch: "
                "cifar-10-python.tar.gz) from https://www.cs.toronto.edu/~kriz/cifar.html, "
                "unpacked, or the exact subset (train_0000-3999.bin and test_0000-0999.bin, or "
                "cifar-10-lossless-subset.tar.gz, as in shared/data/cifar10)")


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
    #: which copy of the data was read: ``copy`` (a short tag: ``original``, ``test-split``,
    #: ``exact-subset``, ``jpeg-derived``, ``python-batches``, ``generated``), ``description``
    #: (one line for people), ``folder`` and ``files`` where files were read
    source: dict = field(default_factory=dict)

    @property
    def in_features(self) -> int:
        return self.x_train[0].numel()

    def subset(self, n_train: int | None = None, n_test: int | None = None) -> "Dataset":
        """The first ``n_train`` training and ``n_test`` test examples (None keeps all)."""
        return Dataset(self.x_train[:n_train], self.y_train[:n_train], self.x_test[:n_test],
                       self.y_test[:n_test], self.num_classes, self.name, list(self.notes),
                       copy.deepcopy(self.source))


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
    note = (f"scikit-learn digits, {n_train} train / {len(X) - n_train} test "
            f"(split seed {seed}); x/16 standardized with training statistics")
    return Dataset(X[:n_train], y[:n_train], X[n_train:], y[n_train:], 10, "digits", [note],
                   dict(copy="bundled", description=note, folder=None,
                        files=["sklearn.datasets.load_digits"]))


# -- scikit-learn diabetes (regression) --------------------------------------------------------

def load_diabetes_dataset(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """The 442 patients of scikit-learn's bundled diabetes regression set (10 features, one
    target: disease progression after a year): a split seeded by ``seed``; features and target
    standardized with the training statistics (targets ``n x 1``)."""
    from sklearn.datasets import load_diabetes
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1); got {test_fraction}")
    X, y = load_diabetes(return_X_y=True)
    X = torch.tensor(X, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.float32)[:, None]
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))
    X, y = X[perm], y[perm]
    n_train = len(X) - int(test_fraction * len(X))
    X = (X - X[:n_train].mean(0)) / X[:n_train].std(0)
    y = (y - y[:n_train].mean()) / y[:n_train].std()
    note = (f"scikit-learn diabetes (regression), {n_train} train / {len(X) - n_train} test "
            f"(split seed {seed}); features and target standardized with training statistics")
    return Dataset(X[:n_train], y[:n_train], X[n_train:], y[n_train:], None, "diabetes", [note],
                   dict(copy="bundled", description=note, folder=None,
                        files=["sklearn.datasets.load_diabetes"]))


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
    files = [p.name for p in (*train, *test) if p is not None]
    if train[0] is not None:
        xtr, ytr = _mnist_split(*train)
        notes = [f"MNIST {len(xtr)} train / {len(xte)} test"]
        kind = "original"
        description = (f"MNIST, the IDX files of {folder.resolve()} (training file for training, "
                       f"t10k file for testing): {len(xtr)} train / {len(xte)} test")
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
        kind, description = "test-split", message
    return Dataset(xtr, ytr, xte, yte, 10, "mnist", notes,
                   dict(copy=kind, description=description, folder=str(folder.resolve()),
                        files=files))


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


# -- CIFAR-10 (python batches, binary layout, exact subset) ------------------------------------

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


def _records_to_arrays(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``(data (n x 3072) uint8, labels (n,) int64)`` of CIFAR-10 binary records (1 label byte,
    then 1024 R, 1024 G, 1024 B bytes, each plane row-major 32x32)."""
    if not raw:
        raise ValueError(f"{where}: empty, expected CIFAR-10 binary records of {CIFAR_RECORD} "
                         "bytes")
    if len(raw) % CIFAR_RECORD:
        raise ValueError(f"{where}: {len(raw)} bytes is not a whole number of {CIFAR_RECORD}-byte "
                         f"CIFAR-10 records ({len(raw) // CIFAR_RECORD} records and "
                         f"{len(raw) % CIFAR_RECORD} bytes over): truncated or not CIFAR-10")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        bad = int(np.argmax(labels > 9))
        raise ValueError(f"{where}: record {bad} has label {labels[bad]} outside 0..9 (not a "
                         "CIFAR-10 binary file, or corrupt)")
    return records[:, 1:], labels


def read_cifar_binary(path) -> tuple[np.ndarray, np.ndarray]:
    """``(data (n x 3072) uint8, labels (n,) int64)`` of one CIFAR-10 binary file
    (``data_batch_N.bin``, ``test_batch.bin`` or the exact subset's ``.bin`` files)."""
    path = Path(path)
    return _records_to_arrays(path.read_bytes(), str(path))


def _record_bytes(data: np.ndarray, labels: np.ndarray) -> bytes:
    return np.concatenate([labels.astype(np.uint8)[:, None], data], axis=1).tobytes()


def _matches_original(train, test) -> bool | None:
    """Whether the first 4000 training and 1000 test records are the original CIFAR-10 bytes
    (the exact subset's checksums); None when there are too few records to tell."""
    (xtr, ytr), (xte, yte) = train, test
    n_tr, n_te = CIFAR_EXACT_COUNTS
    if len(xtr) < n_tr or len(xte) < n_te:
        return None
    return (hashlib.sha256(_record_bytes(xtr[:n_tr], ytr[:n_tr])).hexdigest()
            == CIFAR_EXACT_SHA256["train"]
            and hashlib.sha256(_record_bytes(xte[:n_te], yte[:n_te])).hexdigest()
            == CIFAR_EXACT_SHA256["test"])


def _full_set_source(folder, files, layout, train, test) -> tuple[dict, list[str]]:
    """The ``source`` of a complete-layout copy and its notes: ``original`` when the records the
    exact subset covers match it byte for byte, ``jpeg-derived`` when they differ (the copy
    built from JPEGs differs there too: lossy), ``unverified`` with too few records to tell."""
    sizes = f"{len(train[0])} train / {len(test[0])} test"
    match = _matches_original(train, test)
    if match:
        kind = "original"
        description = (f"CIFAR-10 ({layout}), {sizes}; its first 4000 training and 1000 test "
                       "records are the original bytes (checked against the exact subset)")
    elif match is None:
        kind = "unverified"
        description = (f"CIFAR-10 ({layout}), {sizes}; too few records to check against the "
                       "original bytes")
    else:
        kind = "jpeg-derived"
        description = (f"CIFAR-10 (JPEG-derived copy), {layout}, {sizes}: its first 4000 "
                       "training / 1000 test records differ from the original bytes, so it is a "
                       "lossy copy (the one built from JPEGs is about 30 dB PSNR from the "
                       "original); results on it must say 'CIFAR-10 (JPEG-derived copy)'")
        warnings.warn(f"{folder}: {description}", UserWarning, stacklevel=3)
    return (dict(copy=kind, description=description, folder=str(Path(folder).resolve()),
                 files=files, layout=layout), [description])


def _subset_from_archive(archive: Path) -> tuple[bytes, bytes]:
    """The exact subset's two files, read from ``cifar-10-lossless-subset.tar.gz`` in memory
    (nothing is extracted to disk; only the two known members are read)."""
    out = []
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for name in CIFAR_SUBSET_FILES:
                try:
                    member = tar.getmember(f"lossless-subset/{name}")
                except KeyError:
                    raise ValueError(f"{archive}: no member lossless-subset/{name}") from None
                if not member.isfile():
                    raise ValueError(f"{archive}: lossless-subset/{name} is not a regular file")
                out.append(tar.extractfile(member).read())
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise ValueError(f"{archive}: unreadable archive ({err})") from err
    return out[0], out[1]


def load_cifar10_subset(data_dir) -> Dataset:
    """The exact CIFAR-10 subset: the original bytes of training images 0-3999 and test images
    0-999 (``train_0000-3999.bin``, ``test_0000-0999.bin`` in ``data_dir`` or its
    ``lossless-subset`` folder, or inside ``cifar-10-lossless-subset.tar.gz``), checked against
    their checksums."""
    folder = Path(data_dir)
    for where in (folder, folder / "lossless-subset"):
        if all((where / n).is_file() for n in CIFAR_SUBSET_FILES):
            raws = [(where / n).read_bytes() for n in CIFAR_SUBSET_FILES]
            names = [str(where / n) for n in CIFAR_SUBSET_FILES]
            shown, files = where, list(CIFAR_SUBSET_FILES)
            break
    else:
        archive = folder / CIFAR_SUBSET_ARCHIVE
        if not archive.is_file():
            names = " and ".join(CIFAR_SUBSET_FILES)
            raise FileNotFoundError(f"{folder}: no exact CIFAR-10 subset ({names}, or "
                                    f"{CIFAR_SUBSET_ARCHIVE})")
        raws = list(_subset_from_archive(archive))
        names = [f"{archive}:lossless-subset/{n}" for n in CIFAR_SUBSET_FILES]
        shown = folder
        files = [f"{CIFAR_SUBSET_ARCHIVE}:lossless-subset/{n}" for n in CIFAR_SUBSET_FILES]
    parts = []
    for raw, name, split, count in zip(raws, names, ("train", "test"), CIFAR_EXACT_COUNTS):
        data, labels = _records_to_arrays(raw, name)
        if len(data) != count:
            raise ValueError(f"{name}: {len(data)} records, the exact subset's file holds {count}")
        if hashlib.sha256(raw).hexdigest() != CIFAR_EXACT_SHA256[split]:
            raise ValueError(f"{name}: its checksum differs from the exact subset's (corrupt or "
                             "another copy)")
        parts.append((data, labels))
    (xtr, ytr), (xte, yte) = parts
    description = (f"CIFAR-10 exact subset (original bytes): training images 0-3999 and test "
                   f"images 0-999 of the official batches, from {shown}")
    return Dataset(_normalize_cifar(xtr), torch.tensor(ytr), _normalize_cifar(xte),
                   torch.tensor(yte), 10, "cifar10", [description],
                   dict(copy="exact-subset", description=description,
                        folder=str(shown.resolve()), files=files, layout="binary records"))


def _cifar_folder(folder: Path, subdir: str, first: str) -> Path | None:
    for where in (folder / subdir, folder):
        if (where / first).is_file():
            return where
    return None


def load_cifar10(data_dir) -> Dataset:
    """CIFAR-10 from ``data_dir``, normalized per channel and flattened to 3072. Looked for in
    this order:

    1. the binary layout: ``data_batch_1..5.bin`` and ``test_batch.bin`` (in ``data_dir`` or its
       ``cifar-10-batches-bin``);
    2. the python batches: ``data_batch_1..5`` and ``test_batch`` (or ``cifar-10-batches-py``);
    3. the exact subset (``load_cifar10_subset``): 4000 train / 1000 test images.

    A complete-layout copy is checked against the original bytes where the exact subset covers it;
    one that differs there is reported (``source["copy"] == "jpeg-derived"``, a warning, the
    notes) as the lossy JPEG-derived copy."""
    folder = Path(data_dir)
    binary = _cifar_folder(folder, "cifar-10-batches-bin", "data_batch_1.bin")
    python = _cifar_folder(folder, "cifar-10-batches-py", "data_batch_1")
    if binary is not None:
        where, suffix, read, layout = binary, ".bin", read_cifar_binary, "binary layout"
    elif python is not None:
        where, suffix, read, layout = python, "", read_cifar_batch, "python batches"
    else:
        try:
            return load_cifar10_subset(folder)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{folder}: no CIFAR-10 there: expected data_batch_1..5.bin and test_batch.bin "
                "(binary layout, or their cifar-10-batches-bin folder), data_batch_1..5 and "
                "test_batch (python batches, or cifar-10-batches-py), or the exact subset "
                f"({' and '.join(CIFAR_SUBSET_FILES)}, or {CIFAR_SUBSET_ARCHIVE})") from None
    train = [where / f"data_batch_{i}{suffix}" for i in range(1, 6)
             if (where / f"data_batch_{i}{suffix}").is_file()]
    test = where / f"test_batch{suffix}"
    if not test.is_file():
        raise FileNotFoundError(f"{where}: has data_batch_1{suffix} but no test_batch{suffix}")
    parts = [read(p) for p in train]
    xtr, ytr = np.concatenate([d for d, _ in parts]), np.concatenate([l for _, l in parts])
    xte, yte = read(test)
    if len(train) < 5:
        warnings.warn(f"{where}: only {len(train)} of the 5 training batches", UserWarning,
                      stacklevel=2)
    source, notes = _full_set_source(where, [p.name for p in train] + [test.name], layout,
                                     (xtr, ytr), (xte, yte))
    notes = [f"CIFAR-10 {len(xtr)} train ({len(train)} of 5 batches) / {len(yte)} test"] + notes
    return Dataset(_normalize_cifar(xtr), torch.tensor(ytr), _normalize_cifar(xte),
                   torch.tensor(yte), 10, "cifar10", notes, source)


def default_cifar10_dir() -> Path | None:
    """``$REVGN_CIFAR10_DIR`` when set. (No fallback to the shared folder beside the checkout:
    there CIFAR-10 is only the 5,000-image subset, which a run should ask for by name.)"""
    env = os.environ.get("REVGN_CIFAR10_DIR")
    return Path(env) if env else None


# -- teacher-student (Arbel et al.) -------------------------------------------------------------

def teacher_student(n_train: int = 500, n_test: int = 10000, dim: int = 10,
                    teacher_units: int = 5, seed: int = 0, activation: str = "relu") -> Dataset:
    """Regression on Gaussian inputs ``x ~ N(0, I_dim)`` with noiseless targets from a
    one-hidden-layer teacher with ``u`` units. ``activation="relu"``: ``y = (1/u) sum_j
    relu(w_j . x)``, unit-norm ``w_j``. ``activation="silu"`` (Arbel et al.'s teacher, their
    ``OneHiddenLayer``): ``y = (1/u) sum_j v_j silu(w_j . x + c_j)`` with every ``w, c, v`` drawn
    from ``N(0, 1)``. The teacher, then the training and the test samples, are drawn from
    ``seed``."""
    if activation not in ("relu", "silu"):
        raise ValueError(f"teacher activation must be relu or silu; got {activation!r}")
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(teacher_units, dim, generator=g)
    if activation == "relu":
        W = W / W.norm(dim=1, keepdim=True)

        def teacher(x):
            return torch.relu(x @ W.t()).mean(dim=1, keepdim=True)
    else:
        c = torch.randn(teacher_units, generator=g)
        v = torch.randn(teacher_units, 1, generator=g)

        def teacher(x):
            return torch.nn.functional.silu(x @ W.t() + c) @ v / teacher_units

    def draw(n):
        x = torch.randn(n, dim, generator=g)
        return x, teacher(x)
    xtr, ytr = draw(n_train)
    xte, yte = draw(n_test)
    kind = ("ReLU teacher (unit-norm weights)" if activation == "relu" else
            "SiLU teacher (weights, biases and readout N(0, 1), output / units)")
    note = (f"teacher-student: {teacher_units}-unit {kind} on {dim}-d Gaussian inputs, "
            f"{n_train} train / {n_test} test (seed {seed})")
    return Dataset(xtr, ytr, xte, yte, None, "teacher", [note],
                   dict(copy="generated", description=note, folder=None, files=[]))


def load_dataset(name: str, data_dir=None, seed: int = 0, **kwargs) -> Dataset:
    """``digits`` or ``diabetes`` (split seed ``seed``), ``mnist`` (``data_dir``, else ``default_mnist_dir()``),
    ``cifar10`` (``data_dir``, else ``default_cifar10_dir()``) or ``teacher`` (``seed``;
    ``kwargs`` go to ``teacher_student``)."""
    if name == "digits":
        return load_digits_dataset(seed, **kwargs)
    if name == "diabetes":
        return load_diabetes_dataset(seed, **kwargs)
    if name == "mnist":
        folder = data_dir or default_mnist_dir()
        if folder is None:
            raise FileNotFoundError("MNIST not found: pass --data-dir DIR or set "
                                    f"REVGN_MNIST_DIR=DIR, a folder holding {MNIST_SOURCE}")
        return load_mnist(folder, **kwargs)
    if name == "cifar10":
        folder = data_dir or default_cifar10_dir()
        if folder is None:
            raise FileNotFoundError("CIFAR-10 needs --data-dir DIR (or REVGN_CIFAR10_DIR=DIR), "
                                    f"a folder holding {CIFAR_SOURCE}")
        return load_cifar10(folder)
    if name == "teacher":
        return teacher_student(seed=seed, **kwargs)
    raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
