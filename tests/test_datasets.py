"""Dataset loaders on tiny files written in each dataset's real on-disk format."""

import gzip
import os
import pickle
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import eigenguard.data.gtsrb as gtsrb_module
import eigenguard.data.mnist as mnist_module
from eigenguard.data import DATASETS, ImageDataset, default_data_root, load_dataset
from eigenguard.data.idx import read_idx
from eigenguard.data.safe_pickle import safe_load_pickle
from eigenguard.errors import EigenguardError

# ----------------------------------------------------------------------------------------------- helpers


def py2_pickle(obj: Any) -> bytes:
    """Emit `obj` the way Python 2's cPickle (protocol 2) wrote the CIFAR files.

    Strings are BINSTRINGs (so they load as bytes), and numpy arrays go through
    `numpy.core.multiarray._reconstruct` with a `numpy.dtype('u1')` whose byte-order state is the str '|'.
    """
    out = bytearray(b"\x80\x02")

    def emit(o: Any) -> None:
        nonlocal out
        if isinstance(o, bytes):
            out += (b"U" + bytes([len(o)])) if len(o) < 256 else (b"T" + struct.pack("<i", len(o)))
            out += o
        elif isinstance(o, bool):
            out += b"\x88" if o else b"\x89"
        elif isinstance(o, int):
            out += (b"K" + bytes([o])) if 0 <= o < 256 else (b"J" + struct.pack("<i", o))
        elif o is None:
            out += b"N"
        elif isinstance(o, list):
            out += b"]("
            for item in o:
                emit(item)
            out += b"e"
        elif isinstance(o, tuple):
            out += b"("
            for item in o:
                emit(item)
            out += b"t"
        elif isinstance(o, dict):
            out += b"}("
            for key, value in o.items():
                emit(key)
                emit(value)
            out += b"u"
        elif isinstance(o, np.dtype):
            assert o == np.uint8
            out += b"cnumpy\ndtype\n"
            emit((b"u1", 0, 1))
            out += b"R"
            emit((3, b"|", None, None, None, -1, -1, 0))
            out += b"b"
        elif isinstance(o, np.ndarray):
            out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
            emit((0,))
            emit(b"b")
            out += b"\x87R"  # TUPLE3 (ndarray, (0,), 'b'), REDUCE
            emit((1, tuple(o.shape), o.dtype, False, o.tobytes()))
            out += b"b"  # BUILD: ndarray.__setstate__
        else:
            raise TypeError(type(o))

    emit(obj)
    out += b"."
    return bytes(out)


def py3_pickle(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=2)


PICKLERS = {"py2-cpickle": py2_pickle, "py3-protocol2": py3_pickle}


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def random_uint8(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


@pytest.fixture(autouse=True)
def isolated_data_root(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the default data root at an empty directory so that no test sees the user's cache."""
    empty = tmp_path_factory.mktemp("default-root")
    monkeypatch.setenv("EIGENGUARD_DATA", str(empty))
    return empty


# ----------------------------------------------------------------------------------------------- registry


def test_registry_names_and_default_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert DATASETS.names() == ["cifar10", "cifar100", "fashion-mnist", "gtsrb", "imagefolder", "mnist"]
    monkeypatch.setenv("EIGENGUARD_DATA", str(tmp_path))
    assert default_data_root() == tmp_path
    monkeypatch.delenv("EIGENGUARD_DATA")
    assert default_data_root() == Path.home() / ".cache" / "eigenguard" / "data"
    with pytest.raises(EigenguardError, match="unknown dataset 'svhn'"):
        load_dataset("svhn", tmp_path)
    with pytest.raises(EigenguardError, match="image_size"):
        load_dataset("gtsrb", tmp_path, image_size=0)


# ----------------------------------------------------------------------------------------------- safe pickle


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_safe_pickle_reads_numpy_dicts(tmp_path: Path, protocol: int) -> None:
    data = random_uint8((3, 12), seed=protocol)
    obj = {b"data": data, b"labels": [1, 2, 3], b"filenames": [b"a.png", b""], "names": ("x", frozenset({1}))}
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    loaded = safe_load_pickle(path)
    assert isinstance(loaded, dict)
    np.testing.assert_array_equal(loaded[b"data"], data)
    assert loaded[b"labels"] == [1, 2, 3] and loaded[b"filenames"] == [b"a.png", b""]
    assert loaded["names"] == ("x", frozenset({1}))


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return os.system, (f"touch {self.marker}",)


class _EvalEvil:
    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return eval, ("__import__('os').getcwd()",)


def test_safe_pickle_refuses_code_execution(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": _Evil(marker)}, protocol=2))
    with pytest.raises(EigenguardError, match=r"refusing to unpickle global '(posix|os)\.system'") as info:
        safe_load_pickle(path)
    assert str(path) in str(info.value)
    assert not marker.exists()

    path.write_bytes(pickle.dumps([_EvalEvil()], protocol=4))
    with pytest.raises(EigenguardError, match=r"builtins\.eval"):
        safe_load_pickle(path)

    # _codecs.encode is allowed for protocol-2 bytes, but only with the latin-1 codec.
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x04\x00\x00\x00zlibq\x00\x86R.")
    with pytest.raises(EigenguardError, match="zlib"):
        safe_load_pickle(path)


def test_safe_pickle_reports_truncated_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({b"data": random_uint8((4, 3072), 0)}, protocol=2)[:-500])
    with pytest.raises(EigenguardError, match=f"cannot read pickle file {path}"):
        safe_load_pickle(path)
    with pytest.raises(EigenguardError, match="nope"):
        safe_load_pickle(tmp_path / "nope")


# ----------------------------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("name", ["t10k-images-idx3-ubyte", "t10k-images-idx3-ubyte.gz"])
def test_read_idx_raw_and_gzip(tmp_path: Path, name: str) -> None:
    array = random_uint8((5, 28, 28), seed=1)
    write_idx(tmp_path / name, array)
    tensor = read_idx(tmp_path / name)
    assert tensor.dtype == torch.uint8 and tensor.shape == (5, 28, 28)
    assert torch.equal(tensor, torch.from_numpy(array))


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"\x00\x00\x08", "truncated"),
        (b"\x08\x03\x00\x00" + bytes(12), "bad magic number"),
        (b"\x00\x00\x0d\x01" + struct.pack(">I", 2) + bytes(8), "data type 0x0d"),
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (b"\x00\x00\x08\x03" + struct.pack(">II", 2, 28), "truncated inside its header"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 10) + bytes(9), "truncated: header \\(10,\\) needs 10"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 10) + bytes(11), "longer than its header says"),
    ],
)
def test_read_idx_rejects_malformed_files(tmp_path: Path, payload: bytes, problem: str) -> None:
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(payload)
    with pytest.raises(EigenguardError, match=problem) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_rejects_truncated_gzip(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte.gz"
    write_idx(path, random_uint8((20, 28, 28), seed=2))
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(EigenguardError, match=f"cannot read IDX file {path}"):
        read_idx(path)


# ----------------------------------------------------------------------------------------------- MNIST


def write_mnist_files(directory: Path, gz: bool, seed: int = 0) -> dict[str, np.ndarray]:
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": random_uint8((7, 28, 28), seed),
        "train-labels-idx1-ubyte": np.array([0, 1, 2, 3, 4, 5, 9], dtype=np.uint8),
        "t10k-images-idx3-ubyte": random_uint8((3, 28, 28), seed + 1),
        "t10k-labels-idx1-ubyte": np.array([9, 8, 7], dtype=np.uint8),
    }
    for i, (stem, array) in enumerate(arrays.items()):
        # mix raw and gzip files within one directory, as after torchvision's extraction
        write_idx(directory / (f"{stem}.gz" if gz == (i % 2 == 0) else stem), array)
    return arrays


def check_mnist(train: ImageDataset, test: ImageDataset, arrays: dict[str, np.ndarray]) -> None:
    assert train.images.dtype == torch.uint8 and train.images.shape == (7, 1, 28, 28)
    assert test.images.shape == (3, 1, 28, 28)
    assert train.labels.dtype == torch.int64 and train.labels.tolist() == [0, 1, 2, 3, 4, 5, 9]
    assert test.labels.tolist() == [9, 8, 7]
    assert torch.equal(train.images[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert torch.equal(test.images[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert train.image_shape == (1, 28, 28) and train.num_classes == 10


@pytest.mark.parametrize("subdir", ["", "MNIST/raw", "mnist"])
@pytest.mark.parametrize("gz", [True, False])
def test_mnist_layouts(tmp_path: Path, subdir: str, gz: bool) -> None:
    arrays = write_mnist_files(tmp_path / subdir, gz=gz)
    train, test = load_dataset("mnist", tmp_path)
    check_mnist(train, test, arrays)
    assert train.classes == [str(d) for d in range(10)]
    assert train.mean == (0.1307,) and train.std == (0.3081,)


@pytest.mark.parametrize("subdir", ["FashionMNIST/raw", "fashion-mnist"])
def test_fashion_mnist_layouts(tmp_path: Path, subdir: str) -> None:
    arrays = write_mnist_files(tmp_path / subdir, gz=True, seed=5)
    train, test = load_dataset("fashion-mnist", str(tmp_path))
    check_mnist(train, test, arrays)
    assert train.classes == [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ]  # fmt: skip
    assert train.mean == (0.2860,) and train.std == (0.3530,)


def test_mnist_rejects_inconsistent_files(tmp_path: Path) -> None:
    write_mnist_files(tmp_path, gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([1, 2], dtype=np.uint8))
    with pytest.raises(EigenguardError, match="t10k-labels-idx1-ubyte holds shape \\(2,\\)"):
        load_dataset("mnist", tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([1, 2, 10], dtype=np.uint8))
    with pytest.raises(EigenguardError, match="has label 10"):
        load_dataset("mnist", tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", random_uint8((3, 32, 32), 0))
    with pytest.raises(EigenguardError, match="t10k-images-idx3-ubyte holds shape \\(3, 32, 32\\)"):
        load_dataset("mnist", tmp_path)


DEBIAN = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not DEBIAN.is_dir(), reason=f"{DEBIAN} absent (install the Debian package dataset-fashion-mnist)")
def test_debian_fashion_mnist_found_without_root_or_flag() -> None:
    train, test = load_dataset("fashion-mnist")
    assert len(train) == 60000 and len(test) == 10000
    assert train.image_shape == (1, 28, 28) and test.image_shape == (1, 28, 28)
    assert train.images.dtype == torch.uint8 and test.labels.dtype == torch.int64
    assert torch.equal(train.labels.bincount(), torch.full((10,), 6000))
    assert torch.equal(test.labels.bincount(), torch.full((10,), 1000))


# ----------------------------------------------------------------------------------------------- CIFAR


CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10(root: Path, dump: Callable[[Any], bytes], n: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Six batches of `n` images plus batches.meta, keyed exactly like the real cifar-10-batches-py files."""
    directory = root / "cifar-10-batches-py"
    directory.mkdir(parents=True)
    all_data, all_labels = [], []
    for i, name in enumerate([*(f"data_batch_{b}" for b in range(1, 6)), "test_batch"]):
        data = random_uint8((n, 3072), seed=10 + i)
        labels = [(i + k) % 10 for k in range(n)]
        batch = {
            b"batch_label": f"training batch {i + 1} of 5".encode() if i < 5 else b"testing batch 1 of 1",
            b"labels": labels,
            b"data": data,
            b"filenames": [f"img_{i}_{k}.png".encode() for k in range(n)],
        }
        (directory / name).write_bytes(dump(batch))
        all_data.append(data)
        all_labels.append(labels)
    meta = {b"num_cases_per_batch": n, b"label_names": [s.encode() for s in CIFAR10_NAMES], b"num_vis": 3072}
    (directory / "batches.meta").write_bytes(dump(meta))
    return np.stack(all_data), np.array(all_labels)


@pytest.mark.parametrize("pickler", PICKLERS)
def test_cifar10_python_batches(tmp_path: Path, pickler: str) -> None:
    data, labels = write_cifar10(tmp_path, PICKLERS[pickler])
    train, test = load_dataset("cifar10", tmp_path)
    assert train.images.dtype == torch.uint8 and train.images.shape == (20, 3, 32, 32)
    assert test.images.shape == (4, 3, 32, 32)
    assert train.labels.dtype == torch.int64
    assert train.labels.tolist() == labels[:5].reshape(-1).tolist()
    assert test.labels.tolist() == labels[5].tolist()
    # row layout is CHW: channel c, row y, column x sits at c*1024 + y*32 + x
    assert int(train.images[6, 2, 5, 7]) == int(data[1, 2, 2 * 1024 + 5 * 32 + 7])
    assert torch.equal(train.images.reshape(20, -1), torch.from_numpy(data[:5].reshape(20, 3072)))
    assert torch.equal(test.images.reshape(4, -1), torch.from_numpy(data[5]))
    assert train.classes == CIFAR10_NAMES and test.classes == CIFAR10_NAMES
    assert train.mean == (0.4914, 0.4822, 0.4465) and train.std == (0.2470, 0.2435, 0.2616)


def write_cifar100(root: Path, dump: Callable[[Any], bytes]) -> dict[str, dict[bytes, Any]]:
    directory = root / "cifar-100-python"
    directory.mkdir(parents=True)
    batches = {}
    for i, (name, n) in enumerate((("train", 5), ("test", 3))):
        batches[name] = {
            b"filenames": [f"f{k}.png".encode() for k in range(n)],
            b"batch_label": f"{name}ing batch 1 of 1".encode(),
            b"fine_labels": [(17 * k + i) % 100 for k in range(n)],
            b"coarse_labels": [k % 20 for k in range(n)],
            b"data": random_uint8((n, 3072), seed=40 + i),
        }
        (directory / name).write_bytes(dump(batches[name]))
    meta = {
        b"fine_label_names": [f"fine{k}".encode() for k in range(100)],
        b"coarse_label_names": [f"coarse{k}".encode() for k in range(20)],
    }
    (directory / "meta").write_bytes(dump(meta))
    return batches


@pytest.mark.parametrize("pickler", PICKLERS)
def test_cifar100_uses_fine_labels(tmp_path: Path, pickler: str) -> None:
    batches = write_cifar100(tmp_path, PICKLERS[pickler])
    train, test = load_dataset("cifar100", tmp_path)
    assert train.images.shape == (5, 3, 32, 32) and test.images.shape == (3, 3, 32, 32)
    assert train.labels.tolist() == batches["train"][b"fine_labels"]
    assert test.labels.tolist() == batches["test"][b"fine_labels"]
    assert torch.equal(test.images.reshape(3, -1), torch.from_numpy(batches["test"][b"data"]))
    assert train.classes == [f"fine{k}" for k in range(100)] and train.num_classes == 100
    assert train.mean == (0.5071, 0.4865, 0.4409) and train.std == (0.2673, 0.2564, 0.2762)


def test_cifar_corrupt_files_name_the_file(tmp_path: Path) -> None:
    write_cifar10(tmp_path, py2_pickle)
    batch3 = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    good = batch3.read_bytes()
    batch3.write_bytes(good[: len(good) // 2])
    with pytest.raises(EigenguardError, match=f"cannot read pickle file {batch3}"):
        load_dataset("cifar10", tmp_path)
    batch3.write_bytes(py2_pickle({b"data": random_uint8((4, 100), 0), b"labels": [0, 1, 2, 3]}))
    with pytest.raises(EigenguardError, match=f"{batch3}: 'data' is uint8 \\(4, 100\\)"):
        load_dataset("cifar10", tmp_path)
    batch3.write_bytes(py2_pickle({b"data": random_uint8((4, 3072), 0), b"labels": [0, 1, 2]}))
    with pytest.raises(EigenguardError, match=f"{batch3}: 'labels' is not 4 integer labels"):
        load_dataset("cifar10", tmp_path)
    batch3.write_bytes(py2_pickle({b"data": random_uint8((4, 3072), 0), b"labels": [0, 1, 2, 10]}))
    with pytest.raises(EigenguardError, match="labels must lie in \\[0, 10\\)"):
        load_dataset("cifar10", tmp_path)
    batch3.write_bytes(pickle.dumps({b"data": _Evil(tmp_path / "pwned")}, protocol=2))
    with pytest.raises(EigenguardError, match="refusing to unpickle"):
        load_dataset("cifar10", tmp_path)
    assert not (tmp_path / "pwned").exists()
    batch3.unlink()
    with pytest.raises(EigenguardError, match=r"it exists but lacks data_batch_3\); pass --set download=true"):
        load_dataset("cifar10", tmp_path)


def test_cifar_download_uses_torchvision_only_to_fetch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    calls = []

    class FakeCIFAR10:
        def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
            calls.append((root, download))
            write_cifar10(Path(root), py3_pickle, n=2)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    train, test = load_dataset("cifar10", tmp_path, download=True)
    assert calls == [(str(tmp_path), True)]
    assert len(train) == 10 and len(test) == 2
    load_dataset("cifar10", tmp_path, download=True)  # present now: no second fetch
    assert len(calls) == 1


def test_download_failure_is_one_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    def offline(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://..., got: no network")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(EigenguardError) as info:
        load_dataset("mnist", tmp_path, download=True)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"could not download dataset 'mnist' with torchvision into {tmp_path}")


# ----------------------------------------------------------------------------------------------- missing data


@pytest.mark.parametrize(
    ("name", "looked_for"),
    [
        ("cifar10", "cifar-10-batches-py/"),
        ("cifar100", "cifar-100-python/"),
        ("mnist", "train-images-idx3-ubyte[.gz]"),
        ("fashion-mnist", "t10k-labels-idx1-ubyte[.gz]"),
        ("gtsrb", "gtsrb/GTSRB/Training/"),
    ],
)
def test_missing_dataset_is_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, looked_for: str
) -> None:
    monkeypatch.setattr(mnist_module, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-package")
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(EigenguardError) as info:
        load_dataset(name, root)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"dataset '{name}' not found: looked for")
    assert looked_for in message and str(root) in message
    assert "--set download=true" in message and "--data-root" in message and "EIGENGUARD_DATA" in message


def test_a_named_data_root_is_read_or_refused(tmp_path: Path) -> None:
    """The Debian package's Fashion-MNIST is a fallback for an unset root only, never for a named one."""
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(EigenguardError, match=r"data_root '.*file\.txt' is a file"):
        load_dataset("fashion-mnist", tmp_path / "file.txt")
    with pytest.raises(EigenguardError, match=r"data_root '.*nowhere' does not exist"):
        load_dataset("fashion-mnist", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EigenguardError, match="dataset 'fashion-mnist' not found") as info:
        load_dataset("fashion-mnist", tmp_path / "empty")
    assert str(mnist_module.DEBIAN_FASHION_MNIST) not in str(info.value)


def test_missing_dataset_names_default_root(isolated_data_root: Path) -> None:
    with pytest.raises(EigenguardError, match=f"under {isolated_data_root};"):
        load_dataset("cifar10")


def test_imagefolder_needs_a_root(tmp_path: Path) -> None:
    with pytest.raises(EigenguardError, match="--data-root") as info:
        load_dataset("imagefolder")
    assert "\n" not in str(info.value)
    with pytest.raises(EigenguardError, match="dataset 'imagefolder' not found") as info:
        load_dataset("imagefolder", tmp_path)
    assert "--data-root" in str(info.value) and "download=true" not in str(info.value)


# ----------------------------------------------------------------------------------------------- GTSRB


def solid(color: tuple[int, int, int], width: int, height: int) -> Image.Image:
    return Image.new("RGB", (width, height), color)


def write_gtsrb(root: Path) -> dict[str, Any]:
    """torchvision's layout: Training/000NN/*.ppm with GT-000NN.csv, Final_Test/Images + GT-final_test.csv."""
    base = root / "gtsrb"
    exact = random_uint8((32, 32, 3), seed=7)  # already 32x32: must come through bit-exact
    train_images: dict[int, list[tuple[str, Image.Image]]] = {
        0: [("00000_00000.ppm", solid((200, 10, 30), 41, 37)), ("00000_00001.ppm", Image.fromarray(exact))],
        2: [("00000_00000.ppm", solid((5, 250, 128), 29, 30))],
        42: [("00001_00000.ppm", solid((0, 0, 255), 64, 48)), ("00001_00001.ppm", solid((9, 9, 9), 30, 31))],
    }
    header = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n"
    for label, files in train_images.items():
        directory = base / "GTSRB" / "Training" / f"{label:05d}"
        directory.mkdir(parents=True)
        rows = []
        for name, image in files:
            image.save(directory / name)
            w, h = image.size
            rows.append(f"{name};{w};{h};5;5;{w - 5};{h - 5};{label}\n")
        (directory / f"GT-{label:05d}.csv").write_text(header + "".join(rows))
    test_dir = base / "GTSRB" / "Final_Test" / "Images"
    test_dir.mkdir(parents=True)
    test = [("00000.ppm", solid((1, 2, 3), 50, 52), 42), ("00001.ppm", solid((90, 80, 70), 32, 32), 0)]
    for name, image, _ in test:
        image.save(test_dir / name)
    # The real Images folder carries an unlabelled CSV; labels come from gtsrb/GT-final_test.csv.
    (test_dir / "GT-final_test.test.csv").write_text(
        "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2\n" + "".join(f"{n};50;52;5;5;45;47\n" for n, _, _ in test)
    )
    (base / "GT-final_test.csv").write_text(
        header + "".join(f"{n};{i.size[0]};{i.size[1]};5;5;20;20;{c}\n" for n, i, c in test)
    )
    return {"exact": exact}


def check_gtsrb(train: ImageDataset, test: ImageDataset, exact: np.ndarray) -> None:
    assert train.images.dtype == torch.uint8 and train.images.shape == (5, 3, 32, 32)
    assert test.images.shape == (2, 3, 32, 32)
    assert train.labels.dtype == torch.int64 and train.labels.tolist() == [0, 0, 2, 42, 42]
    assert test.labels.tolist() == [42, 0]
    for image, color in zip(
        [train.images[0], train.images[2], train.images[3], train.images[4], test.images[0], test.images[1]],
        [(200, 10, 30), (5, 250, 128), (0, 0, 255), (9, 9, 9), (1, 2, 3), (90, 80, 70)],
        strict=True,
    ):
        assert torch.equal(image, torch.tensor(color, dtype=torch.uint8).view(3, 1, 1).expand(3, 32, 32))
    assert torch.equal(train.images[1], torch.from_numpy(exact).permute(2, 0, 1))
    assert train.classes == [str(i) for i in range(43)]
    assert train.mean == (0.3403, 0.3121, 0.3214) and train.std == (0.2724, 0.2608, 0.2669)


def test_gtsrb_layout_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exact = write_gtsrb(tmp_path)["exact"]
    cache = tmp_path / "gtsrb" / "eigenguard-cache-32.safetensors"
    train, test = load_dataset("gtsrb", tmp_path)
    check_gtsrb(train, test, exact)
    assert cache.is_file()
    assert not [p for p in cache.parent.iterdir() if p.name.endswith(".tmp")]

    def no_decoding(*args: Any, **kwargs: Any) -> torch.Tensor:
        raise AssertionError("the cache should have been used")

    decode_images = gtsrb_module.decode_images
    monkeypatch.setattr(gtsrb_module, "decode_images", no_decoding)
    check_gtsrb(*load_dataset("gtsrb", tmp_path), exact)  # reused

    # A source folder changed after the cache was written: decode again.
    later = cache.stat().st_mtime_ns + 10**10
    os.utime(tmp_path / "gtsrb" / "GTSRB" / "Training" / "00002", ns=(later, later))
    with pytest.raises(AssertionError, match="cache should have been used"):
        load_dataset("gtsrb", tmp_path)
    monkeypatch.setattr(gtsrb_module, "decode_images", decode_images)
    os.utime(cache, ns=(0, 0))
    check_gtsrb(*load_dataset("gtsrb", tmp_path), exact)
    assert cache.stat().st_mtime_ns > 0  # rewritten

    # A corrupt cache is ignored and rewritten.
    cache.write_bytes(b"garbage")
    os.utime(cache, ns=(later + 1, later + 1))
    check_gtsrb(*load_dataset("gtsrb", tmp_path), exact)
    assert cache.stat().st_size > 1000


def test_gtsrb_other_image_size_has_its_own_cache(tmp_path: Path) -> None:
    write_gtsrb(tmp_path)
    train, test = load_dataset("gtsrb", tmp_path, image_size=16)
    assert train.images.shape == (5, 3, 16, 16) and test.images.shape == (2, 3, 16, 16)
    assert (tmp_path / "gtsrb" / "eigenguard-cache-16.safetensors").is_file()
    assert not (tmp_path / "gtsrb" / "eigenguard-cache-32.safetensors").exists()


def test_gtsrb_bad_files_name_the_file(tmp_path: Path) -> None:
    write_gtsrb(tmp_path)
    bad = tmp_path / "gtsrb" / "GTSRB" / "Training" / "00002" / "00000_00000.ppm"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(EigenguardError, match=f"cannot decode image {bad}"):
        load_dataset("gtsrb", tmp_path)
    bad.unlink()
    csv_path = tmp_path / "gtsrb" / "GT-final_test.csv"
    csv_path.write_text("Filename;ClassId\n00000.ppm;43\n")
    with pytest.raises(EigenguardError, match=f"GTSRB label file {csv_path} line 2"):
        load_dataset("gtsrb", tmp_path)
    csv_path.write_text("Filename;ClassId\n00007.ppm;3\n")
    with pytest.raises(EigenguardError, match=r"cannot decode image .*00007\.ppm"):
        load_dataset("gtsrb", tmp_path)


# ----------------------------------------------------------------------------------------------- imagefolder


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_imagefolder(tmp_path: Path) -> None:
    cat0, cat1 = random_uint8((32, 32, 3), 20), random_uint8((32, 32, 3), 21)
    gray = random_uint8((32, 32), 22)  # a grayscale PNG becomes three equal channels
    write_png(tmp_path / "train" / "cat" / "0.png", cat0)
    write_png(tmp_path / "train" / "cat" / "1.png", cat1)
    write_png(tmp_path / "train" / "ant" / "a.png", gray)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    write_png(tmp_path / "val" / "cat" / "x.png", np.full((64, 48, 3), 77, dtype=np.uint8))
    train, test = load_dataset("imagefolder", tmp_path)
    assert train.classes == ["ant", "cat"] and test.classes == ["ant", "cat"]
    assert train.images.dtype == torch.uint8 and train.images.shape == (3, 3, 32, 32)
    assert train.labels.tolist() == [0, 1, 1] and test.labels.tolist() == [1]
    assert torch.equal(train.images[0], torch.from_numpy(gray).expand(3, 32, 32))
    assert torch.equal(train.images[1], torch.from_numpy(cat0).permute(2, 0, 1))
    assert torch.equal(train.images[2], torch.from_numpy(cat1).permute(2, 0, 1))
    assert torch.equal(test.images, torch.full((1, 3, 32, 32), 77, dtype=torch.uint8))
    pixels = train.images.double() / 255
    expected_mean = pixels.mean(dim=(0, 2, 3))
    expected_std = pixels.std(dim=(0, 2, 3), unbiased=False)
    assert torch.allclose(torch.tensor(train.mean, dtype=torch.float64), expected_mean)
    assert torch.allclose(torch.tensor(train.std, dtype=torch.float64), expected_std)
    assert test.mean == train.mean and test.std == train.std

    small_train, _ = load_dataset("imagefolder", tmp_path, image_size=8)
    assert small_train.images.shape == (3, 3, 8, 8)


def test_imagefolder_errors(tmp_path: Path) -> None:
    write_png(tmp_path / "train" / "cat" / "0.png", random_uint8((8, 8, 3), 0))
    write_png(tmp_path / "test" / "dog" / "0.png", random_uint8((8, 8, 3), 1))
    with pytest.raises(EigenguardError, match=r"class folder .*dog has no counterpart"):
        load_dataset("imagefolder", tmp_path)
    (tmp_path / "test" / "dog" / "0.png").unlink()
    (tmp_path / "test" / "dog").rmdir()
    bad = tmp_path / "test" / "cat" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(EigenguardError, match=f"cannot decode image {bad}"):
        load_dataset("imagefolder", tmp_path)
