"""Data loaders on small files written here, and the real MNIST test set when it is present."""
import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from revgn import data

# The shared MNIST test set sits beside the repository root (``../shared/data/mnist``).
SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
# ... and the exact CIFAR-10 subset's archive (``../shared/data/cifar10``)
SHARED_CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"
needs_cifar_subset = pytest.mark.skipif(
    not (SHARED_CIFAR / "cifar-10-lossless-subset.tar.gz").is_file(),
    reason="the exact CIFAR-10 subset is not beside this checkout")


def write_idx(path, array, magic, compress=False, shape=None):
    shape = array.shape if shape is None else shape
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", s) for s in shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def write_mnist(folder, n, prefix="t10k", compress=False, seed=0):
    rng = np.random.default_rng(seed)
    images, labels = rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)
    suffix = ".gz" if compress else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, 2051, compress)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, 2049, compress)
    return images, labels


def mnist_normalized(images):
    return (torch.tensor(images, dtype=torch.float32).reshape(len(images), -1) / 255
            - 0.1307) / 0.3081


# -- MNIST ------------------------------------------------------------------------------------

@pytest.mark.parametrize("compress", [True, False])
def test_mnist_test_only_folder_is_split_with_a_warning(tmp_path, compress):
    images, labels = write_mnist(tmp_path, 30, compress=compress)
    with pytest.warns(UserWarning, match="only the MNIST test split"):
        ds = data.load_mnist(tmp_path, n_train_if_test_only=20)
    assert ds.x_train.shape == (20, 784) and ds.x_test.shape == (10, 784)
    assert torch.allclose(ds.x_train, mnist_normalized(images[:20]))
    assert torch.allclose(ds.x_test, mnist_normalized(images[20:]))
    assert ds.y_train.tolist() == labels[:20].tolist()
    assert ds.y_test.tolist() == labels[20:].tolist() and ds.y_test.dtype == torch.int64
    assert "first 20" in ds.notes[0] and ds.num_classes == 10


def test_mnist_train_and_test_files(tmp_path, recwarn):
    train_images, train_labels = write_mnist(tmp_path, 12, prefix="train", seed=1)
    test_images, _ = write_mnist(tmp_path, 5, compress=True, seed=2)
    ds = data.load_mnist(tmp_path)
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]
    assert torch.allclose(ds.x_train, mnist_normalized(train_images))
    assert torch.allclose(ds.x_test, mnist_normalized(test_images))
    assert ds.y_train.tolist() == train_labels.tolist()


def test_mnist_rejects_a_wrong_magic(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28)), 2049, shape=(2, 28, 28))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(2), 2049)
    with pytest.raises(ValueError, match="magic 2049, expected 2051"):
        data.load_mnist(tmp_path)


def test_mnist_rejects_a_count_that_disagrees_with_the_data(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28)), 2051, shape=(4, 28, 28))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3), 2049)
    with pytest.raises(ValueError, match="promises 3136 bytes"):
        data.load_mnist(tmp_path)


def test_mnist_rejects_mismatched_images_and_labels(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28)), 2051)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(4), 2049)
    with pytest.raises(ValueError, match="3 images but .* 4 labels"):
        data.load_mnist(tmp_path)


def test_mnist_rejects_other_image_sizes_and_bad_labels(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 8, 8)), 2051)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3), 2049)
    with pytest.raises(ValueError, match="8x8"):
        data.load_mnist(tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28)), 2051)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([0, 1, 12]), 2049)
    with pytest.raises(ValueError, match="label 12"):
        data.load_mnist(tmp_path)


def test_mnist_rejects_truncated_files(tmp_path):
    write_mnist(tmp_path, 4, compress=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match="corrupt gzip"):
        data.load_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08")
    with pytest.raises(ValueError, match="too short"):
        data.load_mnist(tmp_path)


def test_mnist_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="t10k-images"):
        data.load_mnist(tmp_path)
    write_mnist(tmp_path, 4)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 28, 28)), 2051)
    with pytest.raises(FileNotFoundError, match="only one of train"):
        data.load_mnist(tmp_path)


def test_mnist_split_larger_than_the_file_is_refused(tmp_path):
    write_mnist(tmp_path, 10)
    with pytest.raises(ValueError, match="cannot split 10"):
        data.load_mnist(tmp_path, n_train_if_test_only=10)


def test_default_mnist_dir_honors_the_environment(tmp_path, monkeypatch):
    write_mnist(tmp_path, 3)
    monkeypatch.setenv("REVGN_MNIST_DIR", str(tmp_path))
    assert data.default_mnist_dir() == tmp_path
    monkeypatch.setenv("REVGN_MNIST_DIR", str(tmp_path / "nowhere"))
    expected = SHARED_MNIST if (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").exists() else None
    assert data.default_mnist_dir() == expected


@pytest.mark.skipif(not (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").exists()
                    and not os.environ.get("REVGN_MNIST_DIR"),
                    reason="the shared MNIST test set is not beside this checkout")
def test_real_mnist_test_set():
    folder = Path(os.environ.get("REVGN_MNIST_DIR") or SHARED_MNIST)
    if data._find(folder, "train-images-idx3-ubyte") is not None:
        ds = data.load_dataset("mnist", data_dir=folder)  # the standard 60,000 / 10,000 split
        test = (ds.x_test, ds.y_test)
        assert ds.x_train.shape == (60000, 784)
        assert torch.bincount(ds.y_train, minlength=10).tolist() == [
            5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    else:  # only the test file: it is split 8000 / 2000
        with pytest.warns(UserWarning, match="first 8000"):
            ds = data.load_dataset("mnist", data_dir=folder)
        assert ds.x_train.shape == (8000, 784) and ds.x_test.shape == (2000, 784)
        test = (torch.cat([ds.x_train, ds.x_test]), torch.cat([ds.y_train, ds.y_test]))
    counts = torch.bincount(test[1], minlength=10)
    assert counts.tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert ds.source["folder"] == str(folder.resolve())
    assert ds.source["copy"] in ("original", "test-split")
    assert "t10k-images-idx3-ubyte.gz" in ds.source["files"] or \
        "t10k-images-idx3-ubyte" in ds.source["files"]
    pixels = test[0] * 0.3081 + 0.1307
    assert float(pixels.mean()) == pytest.approx(0.1325, abs=5e-4)
    assert float(pixels.std()) == pytest.approx(0.3105, abs=5e-4)


# -- CIFAR-10 ---------------------------------------------------------------------------------

def write_cifar_batch(path, n, protocol=pickle.DEFAULT_PROTOCOL, seed=0):
    rng = np.random.default_rng(seed)
    batch = {b"batch_label": b"training batch 1 of 5",
             b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             b"labels": [int(v) for v in rng.integers(0, 10, n)],
             b"filenames": [b"img%d.png" % i for i in range(n)]}
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    return batch


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_cifar_batches_every_pickle_protocol(tmp_path, protocol):
    train = write_cifar_batch(tmp_path / "data_batch_1", 6, protocol, seed=1)
    test = write_cifar_batch(tmp_path / "test_batch", 4, protocol, seed=2)
    with pytest.warns(UserWarning, match="only 1 of the 5"):
        ds = data.load_cifar10(tmp_path)
    assert ds.x_train.shape == (6, 3072) and ds.x_test.shape == (4, 3072)
    assert ds.y_train.tolist() == train[b"labels"] and ds.y_test.tolist() == test[b"labels"]
    pixels = torch.tensor(train[b"data"], dtype=torch.float32).reshape(6, 3, 1024) / 255
    for c, (mean, std) in enumerate(zip(data.CIFAR_MEAN, data.CIFAR_STD)):
        assert torch.allclose(ds.x_train[:, c * 1024:(c + 1) * 1024], (pixels[:, c] - mean) / std)


def test_cifar_numpy_scalars_and_batches_folder(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        write_cifar_batch(folder / f"data_batch_{i}", 2, seed=i)
    batch = {b"data": np.zeros((3, 3072), np.uint8), b"labels": list(np.arange(3))}
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))  # numpy int64 labels
    ds = data.load_cifar10(tmp_path)
    assert ds.x_train.shape == (10, 3072) and ds.y_test.tolist() == [0, 1, 2]


class _Exploit:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return (self.fn, (self.arg,))


@pytest.mark.parametrize("fn,arg", [(os.system, "echo pwned > /dev/null"), (eval, "1 + 1"),
                                    (np.load, "x.npy")])
def test_cifar_reader_refuses_code(tmp_path, fn, arg):
    payload = {b"data": _Exploit(fn, arg), b"labels": []}
    for name in ("data_batch_1", "test_batch"):
        (tmp_path / name).write_bytes(pickle.dumps(payload))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        data.load_cifar10(tmp_path)


def test_cifar_reader_refuses_other_codecs(tmp_path):
    # _codecs.encode is allowed only as the latin-1 bytes constructor of protocols 0-2
    import _codecs
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps(
        {b"data": _ExploitArgs(_codecs.encode, ("x", "rot13"))}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="rot13"):
        data.read_cifar_batch(tmp_path / "data_batch_1")


class _ExploitArgs:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


@pytest.mark.parametrize("batch,match", [
    ([1, 2], "expected a dict"),
    ({b"data": np.zeros((2, 3072), np.uint8)}, "missing"),
    ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, r"\(n, 3072\)"),
    ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "uint8"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "labels of shape"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "outside 0..9"),
])
def test_cifar_malformed_batches(tmp_path, batch, match):
    (tmp_path / "b").write_bytes(pickle.dumps(batch))
    with pytest.raises(ValueError, match=match):
        data.read_cifar_batch(tmp_path / "b")


def test_cifar_truncated_batch(tmp_path):
    write_cifar_batch(tmp_path / "b", 3)
    (tmp_path / "b").write_bytes((tmp_path / "b").read_bytes()[:500])
    with pytest.raises((ValueError, pickle.UnpicklingError)):
        data.read_cifar_batch(tmp_path / "b")


# -- CIFAR-10: binary layout and the exact subset ---------------------------------------------

def write_cifar_binary(path, n, seed=0):
    rng = np.random.default_rng(seed)
    data_ = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    path.write_bytes(np.concatenate([labels[:, None], data_], axis=1).tobytes())
    return data_, labels


def test_cifar_binary_layout_reads_records_channel_major(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    written = [write_cifar_binary(folder / f"data_batch_{i}.bin", 3, seed=i) for i in range(1, 6)]
    test_data, test_labels = write_cifar_binary(folder / "test_batch.bin", 4, seed=9)
    ds = data.load_cifar10(tmp_path)
    assert ds.x_train.shape == (15, 3072) and ds.x_test.shape == (4, 3072)
    assert ds.y_train.tolist() == np.concatenate([l for _, l in written]).tolist()
    assert ds.y_test.tolist() == test_labels.tolist() and ds.y_test.dtype == torch.int64
    pixels = torch.tensor(test_data, dtype=torch.float32).reshape(4, 3, 1024) / 255
    for c, (mean, std) in enumerate(zip(data.CIFAR_MEAN, data.CIFAR_STD)):
        assert torch.allclose(ds.x_test[:, c * 1024:(c + 1) * 1024], (pixels[:, c] - mean) / std)
    assert ds.source["layout"] == "binary layout" and ds.source["copy"] == "unverified"
    assert ds.source["files"] == [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    assert ds.source["folder"] == str(folder.resolve())


def test_cifar_binary_is_preferred_to_python_batches(tmp_path):
    write_cifar_binary(tmp_path / "data_batch_1.bin", 2)
    write_cifar_binary(tmp_path / "test_batch.bin", 2)
    write_cifar_batch(tmp_path / "data_batch_1", 5)
    write_cifar_batch(tmp_path / "test_batch", 5)
    with pytest.warns(UserWarning, match="only 1 of the 5"):
        ds = data.load_cifar10(tmp_path)
    assert len(ds.x_train) == 2 and ds.source["layout"] == "binary layout"


@pytest.mark.parametrize("cut,match", [(-5, "not a whole number of 3073-byte"),
                                       (0, "empty")])
def test_cifar_binary_truncated_or_empty(tmp_path, cut, match):
    write_cifar_binary(tmp_path / "data_batch_1.bin", 3)
    write_cifar_binary(tmp_path / "test_batch.bin", 2)
    path = tmp_path / "data_batch_1.bin"
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(ValueError, match=match):
        data.load_cifar10(tmp_path)


def test_cifar_binary_bad_label_and_missing_test(tmp_path):
    write_cifar_binary(tmp_path / "data_batch_1.bin", 3)
    raw = bytearray((tmp_path / "data_batch_1.bin").read_bytes())
    raw[3073] = 10  # the label byte of record 1
    (tmp_path / "data_batch_1.bin").write_bytes(bytes(raw))
    with pytest.raises(FileNotFoundError, match="no test_batch.bin"):
        data.load_cifar10(tmp_path)
    write_cifar_binary(tmp_path / "test_batch.bin", 2)
    with pytest.raises(ValueError, match="record 1 has label 10"):
        data.load_cifar10(tmp_path)


@needs_cifar_subset
def test_cifar_exact_subset_from_the_shared_archive():
    ds = data.load_dataset("cifar10", data_dir=SHARED_CIFAR)
    assert ds.x_train.shape == (4000, 3072) and ds.x_test.shape == (1000, 3072)
    assert ds.source["copy"] == "exact-subset" and "exact subset" in ds.notes[0]
    assert ds.source["files"] == [f"cifar-10-lossless-subset.tar.gz:lossless-subset/{n}"
                                  for n in ("train_0000-3999.bin", "test_0000-0999.bin")]
    # the original CIFAR-10: training image 0 is a frog (6) whose R plane starts 59 43 50 and
    # whose B plane ends 140 84 72; test image 0 is a cat (3)
    assert ds.y_train[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert ds.y_test[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert torch.bincount(ds.y_train, minlength=10).tolist() == [
        396, 366, 420, 384, 422, 393, 414, 385, 407, 413]
    std, mean = torch.tensor(data.CIFAR_STD), torch.tensor(data.CIFAR_MEAN)
    pixels = (ds.x_train.reshape(-1, 3, 1024) * std[:, None] + mean[:, None]) * 255
    assert pixels[0, 0, :3].round().tolist() == [59, 43, 50]
    assert pixels[0, 2, -3:].round().tolist() == [140, 84, 72]


@pytest.fixture(scope="module")
def subset_files(tmp_path_factory):
    """The exact subset's two files, extracted to a temporary folder."""
    if not (SHARED_CIFAR / "cifar-10-lossless-subset.tar.gz").is_file():
        pytest.skip("the exact CIFAR-10 subset is not beside this checkout")
    import tarfile
    folder = tmp_path_factory.mktemp("cifar-subset")
    with tarfile.open(SHARED_CIFAR / "cifar-10-lossless-subset.tar.gz") as tar:
        for name in data.CIFAR_SUBSET_FILES:
            (folder / name).write_bytes(tar.extractfile(f"lossless-subset/{name}").read())
    return folder


def test_cifar_subset_files_and_their_checks(subset_files, tmp_path):
    ds = data.load_cifar10(subset_files)
    assert ds.source["copy"] == "exact-subset" and len(ds.x_train) == 4000
    assert ds.source["files"] == list(data.CIFAR_SUBSET_FILES)
    inner = tmp_path / "lossless-subset"
    inner.mkdir()
    train, test = (subset_files / n for n in data.CIFAR_SUBSET_FILES)
    (inner / test.name).write_bytes(test.read_bytes())
    raw = bytearray(train.read_bytes())
    raw[100] ^= 1  # one pixel of image 0 one level off
    (inner / train.name).write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum differs"):
        data.load_cifar10(tmp_path)
    (inner / train.name).write_bytes(bytes(raw[:3073 * 3999]))
    with pytest.raises(ValueError, match="3999 records, the exact subset's file holds 4000"):
        data.load_cifar10(tmp_path)


def test_cifar_subset_archive_corrupt(tmp_path):
    (tmp_path / "cifar-10-lossless-subset.tar.gz").write_bytes(b"\x1f\x8b\x08" + b"\x00" * 40)
    with pytest.raises(ValueError, match="unreadable archive"):
        data.load_cifar10(tmp_path)
    import io
    import tarfile
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("lossless-subset/other.bin")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    (tmp_path / "cifar-10-lossless-subset.tar.gz").write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="no member lossless-subset/train_0000-3999.bin"):
        data.load_cifar10(tmp_path)


def _full_set_from(subset_folder, out, change_pixel=False, python=False):
    """A complete-layout folder whose first records are the exact subset's (the JPEG-derived
    copy differs there: ``change_pixel`` emulates it); the batches hold 800 / 1000 records."""
    train = np.frombuffer((subset_folder / data.CIFAR_SUBSET_FILES[0]).read_bytes(),
                          np.uint8).reshape(-1, 3073).copy()
    test = (subset_folder / data.CIFAR_SUBSET_FILES[1]).read_bytes()
    if change_pixel:
        train[2, 500] = (int(train[2, 500]) + 7) % 256
    out.mkdir()
    for i in range(5):
        part = train[i * 800:(i + 1) * 800]
        if python:
            batch = {b"data": part[:, 1:].copy(), b"labels": part[:, 0].tolist()}
            (out / f"data_batch_{i + 1}").write_bytes(pickle.dumps(batch))
        else:
            (out / f"data_batch_{i + 1}.bin").write_bytes(part.tobytes())
    if python:
        test_rec = np.frombuffer(test, np.uint8).reshape(-1, 3073)
        (out / "test_batch").write_bytes(pickle.dumps(
            {b"data": test_rec[:, 1:].copy(), b"labels": test_rec[:, 0].tolist()}))
    else:
        (out / "test_batch.bin").write_bytes(test)


@pytest.mark.parametrize("python", [False, True])
def test_cifar_full_layout_is_checked_against_the_original_bytes(subset_files, tmp_path,
                                                                  recwarn, python):
    _full_set_from(subset_files, tmp_path / "exact", python=python)
    ds = data.load_cifar10(tmp_path / "exact")
    assert not [w for w in recwarn if "JPEG" in str(w.message)]
    assert ds.source["copy"] == "original" and "original bytes" in ds.source["description"]
    assert ds.source["layout"] == ("python batches" if python else "binary layout")
    subset = data.load_cifar10(subset_files)
    assert torch.equal(ds.x_train, subset.x_train) and torch.equal(ds.y_test, subset.y_test)
    _full_set_from(subset_files, tmp_path / "jpeg", change_pixel=True, python=python)
    with pytest.warns(UserWarning, match=r"CIFAR-10 \(JPEG-derived copy\)"):
        lossy = data.load_cifar10(tmp_path / "jpeg")
    assert lossy.source["copy"] == "jpeg-derived" and "lossy" in lossy.source["description"]
    assert any("JPEG-derived" in note for note in lossy.notes)
    assert lossy.subset(10).source == lossy.source


# -- digits, teacher, batches, load_dataset ----------------------------------------------------

def test_digits_split_and_normalization():
    ds = data.load_dataset("digits", seed=1)
    assert ds.in_features == 64 and ds.num_classes == 10
    assert len(ds.x_train) == 1438 and len(ds.x_test) == 359
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(1)).numpy()
    X, y = X[perm] / 16, y[perm]
    mean, std = X[:1438].mean(0), X[:1438].std(0, ddof=1) + 0.01
    assert np.allclose(ds.x_train.numpy(), (X[:1438] - mean) / std, atol=1e-5)
    assert np.allclose(ds.x_test.numpy(), (X[1438:] - mean) / std, atol=1e-5)
    assert ds.y_test.tolist() == y[1438:].tolist()
    assert ds.x_train.mean(0).abs().max() < 1e-5
    other = data.load_dataset("digits", seed=2)
    assert not torch.equal(ds.y_test, other.y_test)


def test_diabetes_split_and_standardization():
    ds = data.load_dataset("diabetes", seed=1)
    assert ds.in_features == 10 and ds.num_classes is None
    assert ds.x_train.shape == (354, 10) and ds.y_train.shape == (354, 1)
    assert ds.x_test.shape == (88, 10) and ds.source["copy"] == "bundled"
    from sklearn.datasets import load_diabetes
    X, y = load_diabetes(return_X_y=True)
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(1)).numpy()
    X, y = X[perm], y[perm]
    want_x = (X - X[:354].mean(0)) / X[:354].std(0, ddof=1)
    want_y = (y - y[:354].mean()) / y[:354].std(ddof=1)
    assert np.allclose(ds.x_test.numpy(), want_x[354:], atol=1e-4)
    assert np.allclose(ds.y_train.numpy()[:, 0], want_y[:354], atol=1e-4)
    assert abs(float(ds.y_train.mean())) < 1e-5 and abs(float(ds.y_train.std()) - 1) < 1e-5
    assert not torch.equal(ds.y_test, data.load_dataset("diabetes", seed=2).y_test)


def test_teacher_student_is_the_relu_teacher():
    a, b = data.teacher_student(seed=3), data.teacher_student(seed=3)
    assert a.x_train.shape == (500, 10) and a.y_train.shape == (500, 1)
    assert a.x_test.shape == (10000, 10) and a.num_classes is None
    assert torch.equal(a.y_train, b.y_train) and torch.equal(a.x_test, b.x_test)
    assert not torch.equal(a.y_train, data.teacher_student(seed=4).y_train)
    # the mean of five unit-norm ReLU units: E relu(w . x) = 1 / sqrt(2 pi) for each
    assert float(a.y_train.min()) >= 0
    assert float(a.y_test.mean()) == pytest.approx((2 * np.pi) ** -0.5, abs=0.02)
    small = data.load_dataset("teacher", n_train=7, n_test=3, dim=4, teacher_units=2)
    assert small.x_train.shape == (7, 4) and small.y_test.shape == (3, 1)


def test_batches_cover_every_example_and_are_seeded():
    x, y = torch.arange(10.0)[:, None], torch.arange(10)
    runs = [[yb.tolist() for _, yb in data.batches(x, y, 4, torch.Generator().manual_seed(5))]
            for _ in range(2)]
    assert runs[0] == runs[1] and [len(b) for b in runs[0]] == [4, 4, 2]
    assert sorted(sum(runs[0], [])) == list(range(10))
    gen = torch.Generator().manual_seed(5)
    first, second = ([yb.tolist() for _, yb in data.batches(x, y, 10, gen)] for _ in range(2))
    assert first != second  # a new permutation every epoch
    assert [yb.tolist() for _, yb in data.batches(x, y, 6, shuffle=False)] == \
        [list(range(6)), list(range(6, 10))]
    with pytest.raises(ValueError):
        next(data.batches(x, y, 0))


def test_load_dataset_errors(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load_dataset("imagenet")
    monkeypatch.delenv("REVGN_CIFAR10_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="--data-dir.*REVGN_CIFAR10_DIR"):
        data.load_dataset("cifar10")
    monkeypatch.setenv("REVGN_CIFAR10_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError,
                       match="data_batch_1..5.bin.*python batches.*exact subset"):
        data.load_dataset("cifar10")


def test_sources_of_the_bundled_and_generated_sets():
    assert data.load_dataset("digits").source["copy"] == "bundled"
    small = data.teacher_student(n_train=5, n_test=3)
    assert small.source["copy"] == "generated" and small.subset(2).source == small.source
