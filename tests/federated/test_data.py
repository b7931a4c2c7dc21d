"""Tests for federated.data: loaders, standardization, partitioners, assembly."""

from __future__ import annotations

import gzip
import math
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federated.data import (
    DATASETS,
    PARTITIONS,
    ArrayDataset,
    FederatedData,
    build_federated_data,
    load_dataset,
    partition,
    partition_dirichlet,
    partition_iid,
    partition_shards,
    pooled_client_data,
    standardize,
)
from qfl.errors import DataError, QflError

# --------------------------------------------------------------------------- helpers


def assert_cover(parts: list[np.ndarray], n: int) -> None:
    """Sorted int64, pairwise disjoint, union == range(n)."""
    for idx in parts:
        assert idx.dtype == np.int64
        assert idx.ndim == 1
        assert np.all(np.diff(idx) > 0), "indices must be strictly ascending"
    flat = np.concatenate(parts)
    assert flat.size == n, "every index exactly once (no overlap, nothing missing)"
    np.testing.assert_array_equal(np.sort(flat), np.arange(n))


def label_entropy(labels: np.ndarray) -> float:
    _, counts = np.unique(labels, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def write_idx(path: Path, magic: int, arr: np.ndarray, *, gz: bool = False) -> Path:
    payload = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape)
    payload += arr.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)
    return path


MNIST_ROWS, MNIST_COLS = 3, 4


def mnist_arrays(n: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    images = ((np.arange(n * MNIST_ROWS * MNIST_COLS) + offset) % 256).astype(np.uint8)
    labels = ((np.arange(n) + offset) % 10).astype(np.uint8)
    return images.reshape(n, MNIST_ROWS, MNIST_COLS), labels


def write_mnist(root: Path, *, gz: bool, n_train: int = 5, n_test: int = 2) -> None:
    root.mkdir(parents=True, exist_ok=True)
    tr_x, tr_y = mnist_arrays(n_train, 0)
    te_x, te_y = mnist_arrays(n_test, 7)
    write_idx(root / "train-images-idx3-ubyte", 0x803, tr_x, gz=gz)
    write_idx(root / "train-labels-idx1-ubyte", 0x801, tr_y, gz=gz)
    write_idx(root / "t10k-images-idx3-ubyte", 0x803, te_x, gz=gz)
    write_idx(root / "t10k-labels-idx1-ubyte", 0x801, te_y, gz=gz)


CIFAR_PER_BATCH = 4
KNOWN_PIXEL = (2, 5, 7)  # (c, h, w) set to 200 in image 0 of every batch


def cifar_batch(batch_no: int) -> dict[bytes, object]:
    rng = np.random.default_rng(batch_no)
    data = rng.integers(0, 100, size=(CIFAR_PER_BATCH, 3072), dtype=np.uint8)
    c, h, w = KNOWN_PIXEL
    data[0, c * 1024 + h * 32 + w] = 200
    labels = [(batch_no * CIFAR_PER_BATCH + i) % 10 for i in range(CIFAR_PER_BATCH)]
    return {
        b"batch_label": f"batch {batch_no}".encode(),
        b"labels": labels,
        b"data": data,
        b"filenames": [f"img{i}.png".encode() for i in range(CIFAR_PER_BATCH)],
    }


def write_cifar(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for batch_no, name in enumerate(names):
        with (directory / name).open("wb") as fh:
            pickle.dump(cifar_batch(batch_no), fh)


# --------------------------------------------------------------------------- bundled sets

BUNDLED = [
    ("digits", 1797, 64, 10),
    ("breast_cancer", 569, 30, 2),
    ("iris", 150, 4, 3),
    ("wine", 178, 13, 3),
]


@pytest.mark.parametrize(("name", "n_total", "n_features", "n_classes"), BUNDLED)
def test_bundled_dataset_shapes_and_stratified_split(
    name: str, n_total: int, n_features: int, n_classes: int
) -> None:
    train, test, num_classes = load_dataset(
        name, root=None, test_fraction=0.25, rng=np.random.default_rng(0)
    )
    assert num_classes == n_classes
    assert train.x.shape == (len(train), n_features)
    assert test.x.shape == (len(test), n_features)
    assert train.x.dtype == np.float32 and train.y.dtype == np.int64
    assert test.x.dtype == np.float32 and test.y.dtype == np.int64
    assert len(train) + len(test) == n_total
    assert len(test) == math.ceil(0.25 * n_total)
    all_y = np.concatenate([train.y, test.y])
    assert set(np.unique(all_y)) == set(range(n_classes))
    # stratified: each class's share of the test set matches its overall share (+-1 sample)
    total_counts = np.bincount(all_y, minlength=n_classes)
    test_counts = np.bincount(test.y, minlength=n_classes)
    expected = total_counts * len(test) / n_total
    assert np.all(np.abs(test_counts - expected) <= 1.0)


def test_bundled_split_is_driven_by_rng() -> None:
    def load(seed: int) -> tuple[ArrayDataset, ArrayDataset, int]:
        return load_dataset("iris", root=None, test_fraction=0.3, rng=np.random.default_rng(seed))

    a, b, c = load(1), load(1), load(2)
    np.testing.assert_array_equal(a[0].x, b[0].x)
    np.testing.assert_array_equal(a[1].y, b[1].y)
    assert not np.array_equal(a[0].x, c[0].x)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_bundled_bad_test_fraction(fraction: float) -> None:
    with pytest.raises(DataError):
        load_dataset("iris", root=None, test_fraction=fraction, rng=np.random.default_rng(0))


def test_unknown_dataset_lists_choices() -> None:
    with pytest.raises(DataError) as info:
        load_dataset("imagenet", root=None, test_fraction=0.2, rng=np.random.default_rng(0))
    assert isinstance(info.value, QflError)
    for name in DATASETS:
        assert name in str(info.value)


# --------------------------------------------------------------------------- standardize


def test_standardize_tabular_uses_train_statistics() -> None:
    train, test, _ = load_dataset(
        "digits", root=None, test_fraction=0.25, rng=np.random.default_rng(0)
    )
    s_train, s_test = standardize(train, test)
    assert s_train.x.dtype == np.float32 and s_test.x.dtype == np.float32
    np.testing.assert_array_equal(s_train.y, train.y)
    np.testing.assert_array_equal(s_test.y, test.y)

    x = train.x.astype(np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    varying = std > 1e-8
    assert (~varying).any(), "digits has constant (always-zero) pixels in train"
    np.testing.assert_allclose(s_train.x.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(s_train.x.std(axis=0)[varying], 1.0, atol=1e-4)
    # test set transformed with TRAIN mean/std, not its own
    expected = (test.x[:, varying] - mean[varying]) / std[varying]
    np.testing.assert_allclose(s_test.x[:, varying], expected, rtol=1e-4, atol=1e-4)
    assert np.all(np.isfinite(s_train.x)) and np.all(np.isfinite(s_test.x))


def test_standardize_constant_feature_stays_finite() -> None:
    x_train = np.array([[5.0, 1.0], [5.0, 2.0], [5.0, 3.0]], dtype=np.float32)
    x_test = np.array([[7.0, 2.0], [5.0, 4.0]], dtype=np.float32)
    train = ArrayDataset(x_train, np.zeros(3, dtype=np.int64))
    test = ArrayDataset(x_test, np.zeros(2, dtype=np.int64))
    s_train, s_test = standardize(train, test)
    assert np.all(np.isfinite(s_train.x)) and np.all(np.isfinite(s_test.x))
    np.testing.assert_allclose(s_train.x[:, 0], 0.0)
    assert abs(float(s_test.x[0, 0])) < 10.0, "constant feature must not be blown up"
    sd = np.std([1.0, 2.0, 3.0])
    np.testing.assert_allclose(s_test.x[:, 1], [0.0, 2.0 / sd], rtol=1e-6)


def test_standardize_images_per_channel() -> None:
    rng = np.random.default_rng(0)
    scale = np.array([1.0, 10.0, 0.1]).reshape(1, 3, 1, 1)
    shift = np.array([0.0, 5.0, -3.0]).reshape(1, 3, 1, 1)
    x_train = (rng.normal(size=(20, 3, 4, 4)) * scale + shift).astype(np.float32)
    x_test = (rng.normal(size=(5, 3, 4, 4)) * scale + shift).astype(np.float32)
    train = ArrayDataset(x_train, np.zeros(20, dtype=np.int64))
    test = ArrayDataset(x_test, np.zeros(5, dtype=np.int64))
    s_train, s_test = standardize(train, test)
    assert s_train.x.shape == x_train.shape
    np.testing.assert_allclose(s_train.x.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(s_train.x.std(axis=(0, 2, 3)), 1.0, atol=1e-4)
    x64 = x_train.astype(np.float64)
    mean = x64.mean(axis=(0, 2, 3), keepdims=True)
    std = x64.std(axis=(0, 2, 3), keepdims=True)
    np.testing.assert_allclose(s_test.x, (x_test - mean) / std, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- MNIST


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_roundtrip(tmp_path: Path, gz: bool) -> None:
    write_mnist(tmp_path, gz=gz)
    train, test, num_classes = load_dataset(
        "mnist", root=tmp_path, test_fraction=0.5, rng=np.random.default_rng(0)
    )
    assert num_classes == 10
    assert train.x.shape == (5, 1, MNIST_ROWS, MNIST_COLS)
    assert test.x.shape == (2, 1, MNIST_ROWS, MNIST_COLS)
    assert train.x.dtype == np.float32 and train.y.dtype == np.int64
    tr_x, tr_y = mnist_arrays(5, 0)
    te_x, te_y = mnist_arrays(2, 7)
    np.testing.assert_allclose(train.x[:, 0], tr_x / 255.0, rtol=1e-6)
    np.testing.assert_allclose(test.x[:, 0], te_x / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(train.y, tr_y)
    np.testing.assert_array_equal(test.y, te_y)
    assert float(train.x.min()) >= 0.0 and float(train.x.max()) <= 1.0
    # a known pixel: image 1, row 2, col 3 -> value (1*12 + 2*4 + 3) % 256 = 23
    assert train.x[1, 0, 2, 3] == pytest.approx(23 / 255.0)


def test_mnist_bad_magic(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=False)
    images, _ = mnist_arrays(5, 0)
    write_idx(tmp_path / "train-images-idx3-ubyte", 0x804, images[..., None])
    with pytest.raises(DataError, match="magic"):
        load_dataset("mnist", root=tmp_path, test_fraction=0.5, rng=np.random.default_rng(0))


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_truncated_file(tmp_path: Path, gz: bool) -> None:
    write_mnist(tmp_path, gz=gz)
    images, _ = mnist_arrays(5, 0)
    payload = struct.pack(">IIII", 0x803, 5, MNIST_ROWS, MNIST_COLS) + images.tobytes()[:-7]
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    if gz:
        (tmp_path / name).write_bytes(gzip.compress(payload))
    else:
        (tmp_path / name).write_bytes(payload)
    with pytest.raises(DataError, match="truncated"):
        load_dataset("mnist", root=tmp_path, test_fraction=0.5, rng=np.random.default_rng(0))


def test_mnist_header_only_truncated(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match="truncated"):
        load_dataset("mnist", root=tmp_path, test_fraction=0.5, rng=np.random.default_rng(0))


def test_mnist_count_mismatch(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", 0x801, np.zeros(4, dtype=np.uint8))
    with pytest.raises(DataError, match="labels"):
        load_dataset("mnist", root=tmp_path, test_fraction=0.5, rng=np.random.default_rng(0))


def test_mnist_missing_dir_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    with pytest.raises(DataError) as info:
        load_dataset("mnist", root=missing, test_fraction=0.5, rng=np.random.default_rng(0))
    message = str(info.value)
    assert str(missing) in message
    assert "placed" in message


def test_mnist_missing_single_file_names_it(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as info:
        load_dataset("mnist", root=tmp_path, test_fraction=0.5, rng=np.random.default_rng(0))
    assert str(tmp_path / "t10k-labels-idx1-ubyte") in str(info.value)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_file_datasets_need_root(name: str) -> None:
    with pytest.raises(DataError, match="root"):
        load_dataset(name, root=None, test_fraction=0.5, rng=np.random.default_rng(0))


# --------------------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("nested", [False, True])
def test_cifar10_pickle_batches(tmp_path: Path, nested: bool) -> None:
    write_cifar(tmp_path / "cifar-10-batches-py" if nested else tmp_path)
    train, test, num_classes = load_dataset(
        "cifar10", root=tmp_path, test_fraction=0.5, rng=np.random.default_rng(0)
    )
    assert num_classes == 10
    assert train.x.shape == (5 * CIFAR_PER_BATCH, 3, 32, 32)
    assert test.x.shape == (CIFAR_PER_BATCH, 3, 32, 32)
    assert train.x.dtype == np.float32 and train.y.dtype == np.int64
    assert float(train.x.min()) >= 0.0 and float(train.x.max()) <= 1.0
    c, h, w = KNOWN_PIXEL
    for batch_no in range(5):
        row = batch_no * CIFAR_PER_BATCH
        assert train.x[row, c, h, w] == pytest.approx(200 / 255.0)
        raw = cifar_batch(batch_no)[b"data"]
        assert isinstance(raw, np.ndarray)
        np.testing.assert_allclose(
            train.x[row : row + CIFAR_PER_BATCH].reshape(CIFAR_PER_BATCH, -1),
            raw / 255.0,
            rtol=1e-6,
        )
    assert test.x[0, c, h, w] == pytest.approx(200 / 255.0)
    assert float(train.x[0].max()) == pytest.approx(200 / 255.0), "only one pixel is 200"
    np.testing.assert_array_equal(train.y, np.arange(20) % 10)
    np.testing.assert_array_equal(test.y, (20 + np.arange(4)) % 10)


def test_cifar10_missing_batch_names_path(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", root=tmp_path, test_fraction=0.5, rng=np.random.default_rng(0))
    assert str(tmp_path / "data_batch_3") in str(info.value)


def test_cifar10_corrupt_batch(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    (tmp_path / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="test_batch"):
        load_dataset("cifar10", root=tmp_path, test_fraction=0.5, rng=np.random.default_rng(0))


# --------------------------------------------------------------------------- partitioners


def shuffled_labels(n_per_class: int = 30, n_classes: int = 10) -> np.ndarray:
    labels = np.repeat(np.arange(n_classes), n_per_class)
    return np.random.default_rng(123).permutation(labels)


@pytest.mark.parametrize("scheme", PARTITIONS)
@pytest.mark.parametrize("n_clients", [1, 7, 20])
def test_partition_is_sorted_disjoint_cover(scheme: str, n_clients: int) -> None:
    labels = shuffled_labels()
    parts = partition(labels, n_clients, scheme, np.random.default_rng(0))
    assert len(parts) == n_clients
    assert_cover(parts, labels.size)


@pytest.mark.parametrize("scheme", PARTITIONS)
def test_partition_deterministic_in_seed(scheme: str) -> None:
    labels = shuffled_labels()

    def run(seed: int) -> list[np.ndarray]:
        return partition(labels, 10, scheme, np.random.default_rng(seed))

    a, b, c = run(5), run(5), run(6)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, z) for x, z in zip(a, c, strict=True))


def mean_client_entropy(alpha: float, seed: int) -> float:
    labels = np.repeat(np.arange(10), 100)
    parts = partition_dirichlet(labels, 10, alpha, np.random.default_rng(seed))
    assert_cover(parts, labels.size)
    return float(np.mean([label_entropy(labels[idx]) for idx in parts]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dirichlet_small_alpha_is_more_skewed(seed: int) -> None:
    skewed = mean_client_entropy(0.1, seed)
    balanced = mean_client_entropy(100.0, seed)
    assert skewed < balanced - 0.5
    assert balanced > 0.9 * np.log(10)


def test_dirichlet_min_size_respected() -> None:
    labels = shuffled_labels()
    parts = partition_dirichlet(labels, 10, 0.3, np.random.default_rng(0), min_size=10)
    assert min(len(p) for p in parts) >= 10
    assert_cover(parts, labels.size)


def test_dirichlet_gives_up_when_alpha_too_small() -> None:
    labels = np.repeat(np.arange(2), 50)
    with pytest.raises(DataError, match="alpha"):
        partition_dirichlet(labels, 60, 0.001, np.random.default_rng(0))


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan")])
def test_dirichlet_bad_alpha(alpha: float) -> None:
    with pytest.raises(DataError):
        partition_dirichlet(shuffled_labels(), 5, alpha, np.random.default_rng(0))


@pytest.mark.parametrize("shards_per_client", [1, 2, 4])
def test_shards_limit_labels_per_client(shards_per_client: int) -> None:
    labels = np.repeat(np.arange(10), 40)  # 400 samples, shard size divides class size
    n_clients = 40 // shards_per_client
    parts = partition_shards(labels, n_clients, shards_per_client, np.random.default_rng(0))
    assert_cover(parts, labels.size)
    for idx in parts:
        assert len(idx) == 400 // n_clients
        assert np.unique(labels[idx]).size <= shards_per_client


def test_shards_on_uneven_data_stay_near_limit() -> None:
    labels = shuffled_labels(n_per_class=33)
    parts = partition_shards(labels, 9, 2, np.random.default_rng(1))
    assert_cover(parts, labels.size)
    # a shard may straddle one class boundary: at most 2 labels per shard
    assert max(np.unique(labels[idx]).size for idx in parts) <= 2 * 2


def test_shards_too_many_shards() -> None:
    with pytest.raises(DataError, match="shards"):
        partition_shards(np.arange(10), 6, 2, np.random.default_rng(0))


def test_iid_sizes_differ_by_at_most_one() -> None:
    labels = np.random.default_rng(0).integers(0, 10, size=1797)
    parts = partition_iid(labels, 1000, np.random.default_rng(0))
    sizes = np.array([len(p) for p in parts])
    assert sizes.max() - sizes.min() <= 1
    assert_cover(parts, labels.size)


def test_iid_is_label_balanced_on_average() -> None:
    labels = np.repeat(np.arange(10), 100)
    parts = partition_iid(labels, 5, np.random.default_rng(0))
    for idx in parts:
        counts = np.bincount(labels[idx], minlength=10)
        assert counts.min() >= 8  # expected 20 per class


@pytest.mark.parametrize("scheme", PARTITIONS)
def test_too_many_clients(scheme: str) -> None:
    with pytest.raises(DataError, match="exceeds"):
        partition(np.arange(5), 6, scheme, np.random.default_rng(0))


@pytest.mark.parametrize("n_clients", [0, -3])
def test_non_positive_clients(n_clients: int) -> None:
    with pytest.raises(DataError):
        partition(np.arange(5), n_clients, "iid", np.random.default_rng(0))


def test_unknown_scheme_lists_choices() -> None:
    with pytest.raises(DataError) as info:
        partition(np.arange(5), 2, "pathological", np.random.default_rng(0))
    for scheme in PARTITIONS:
        assert scheme in str(info.value)


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    labels=st.lists(st.integers(0, 5), min_size=1, max_size=150),
    scheme=st.sampled_from(PARTITIONS),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_every_partitioner_covers(
    data: st.DataObject, labels: list[int], scheme: str, seed: int
) -> None:
    arr = np.array(labels, dtype=np.int64)
    n = arr.size
    n_clients = data.draw(st.integers(1, n), label="n_clients")
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        parts = partition_iid(arr, n_clients, rng)
    elif scheme == "dirichlet":
        alpha = data.draw(st.floats(0.01, 100.0), label="alpha")
        parts = partition_dirichlet(arr, n_clients, alpha, rng, min_size=0)
    else:
        spc = data.draw(st.integers(1, n // n_clients), label="shards_per_client")
        parts = partition_shards(arr, n_clients, spc, rng)
    assert len(parts) == n_clients
    assert_cover(parts, n)


# --------------------------------------------------------------------------- assembly


@pytest.mark.parametrize("scheme", PARTITIONS)
def test_build_federated_data_deterministic(scheme: str) -> None:
    a = build_federated_data("digits", n_clients=10, partition=scheme, seed=3)
    b = build_federated_data("digits", n_clients=10, partition=scheme, seed=3)
    c = build_federated_data("digits", n_clients=10, partition=scheme, seed=4)
    np.testing.assert_array_equal(a.train.x, b.train.x)
    np.testing.assert_array_equal(a.train.y, b.train.y)
    np.testing.assert_array_equal(a.test.x, b.test.x)
    for x, y in zip(a.client_indices, b.client_indices, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.train.y, c.train.y)
    assert a.num_classes == 10 and a.input_shape == (64,) and a.n_clients == 10
    assert_cover(list(a.client_indices), len(a.train))


def test_build_federated_data_client_rows() -> None:
    fd = build_federated_data("wine", n_clients=4, partition="dirichlet", seed=0, alpha=1.0)
    for k, idx in enumerate(fd.client_indices):
        local = fd.client(k)
        assert len(local) == len(idx) >= 1
        np.testing.assert_array_equal(local.x, fd.train.x[idx])
        np.testing.assert_array_equal(local.y, fd.train.y[idx])
    with pytest.raises(DataError):
        fd.client(4)
    # pooled train set was standardized on train statistics
    np.testing.assert_allclose(fd.train.x.mean(axis=0), 0.0, atol=1e-5)


def test_build_federated_data_many_clients_is_cheap() -> None:
    fd = build_federated_data("digits", n_clients=1000, partition="iid", seed=0)
    assert fd.n_clients == 1000
    sizes = [len(idx) for idx in fd.client_indices]
    assert max(sizes) - min(sizes) <= 1
    assert sum(idx.nbytes for idx in fd.client_indices) == 8 * len(fd.train)  # indices only


def test_build_federated_data_mnist_from_local_files(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=True, n_train=8, n_test=3)
    fd = build_federated_data(
        "mnist", n_clients=2, partition="iid", seed=0, root=tmp_path, standardize_features=False
    )
    assert fd.input_shape == (1, MNIST_ROWS, MNIST_COLS)
    assert len(fd.train) == 8 and len(fd.test) == 3
    assert [len(fd.client(k)) for k in range(2)] == [4, 4]


def test_build_federated_data_rejects_bad_arguments() -> None:
    with pytest.raises(DataError, match="unknown partition"):
        build_federated_data("iris", n_clients=2, partition="random", seed=0)
    with pytest.raises(DataError, match="exceeds"):
        build_federated_data("iris", n_clients=1000, partition="iid", seed=0)


def test_federated_data_rejects_overlapping_indices() -> None:
    ds = ArrayDataset(np.zeros((4, 2), dtype=np.float32), np.zeros(4, dtype=np.int64))
    with pytest.raises(DataError, match="overlap"):
        FederatedData(ds, ds, (np.array([0, 1]), np.array([1, 2])), num_classes=2)
    with pytest.raises(DataError, match="range"):
        FederatedData(ds, ds, (np.array([0, 4]),), num_classes=2)


def test_array_dataset_length_mismatch() -> None:
    with pytest.raises(DataError):
        ArrayDataset(np.zeros((3, 2)), np.zeros(2))


def test_select_classes_keeps_and_relabels_in_the_given_order():
    data = build_federated_data("digits", n_clients=2, partition="iid", seed=0, classes=[7, 3])
    assert data.num_classes == 2
    assert set(np.unique(data.train.y)) == {0, 1}
    assert len(data.train) + len(data.test) == 179 + 183  # digits: 179 sevens, 183 threes
    assert np.sum(data.train.y == 0) + np.sum(data.test.y == 0) == 179  # 7 -> 0


def test_pca_reduce_is_fitted_on_train_with_unit_variance():
    data = build_federated_data("digits", n_clients=2, partition="iid", seed=0, pca_components=5)
    assert data.train.x.shape[1:] == (5,)
    assert np.allclose(data.train.x.mean(axis=0), 0, atol=1e-4)
    assert np.allclose(data.train.x.std(axis=0, ddof=1), 1, atol=1e-4)
    # components are uncorrelated on the training set
    corr = np.corrcoef(data.train.x.T)
    assert np.allclose(corr, np.eye(5), atol=1e-4)
    # the test set is projected, not refitted: its variance is not exactly 1
    assert not np.allclose(data.test.x.std(axis=0, ddof=1), 1, atol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"classes": [1]}, "at least two"),
        ({"classes": [1, 1]}, "at least two"),
        ({"classes": [0, 12]}, "outside"),
        ({"pca_components": 65}, "pca_components"),
    ],
)
def test_class_and_pca_errors(kwargs, match):
    with pytest.raises(DataError, match=match):
        build_federated_data("digits", n_clients=2, partition="iid", seed=0, **kwargs)


def test_pooled_client_data_weights_each_client_by_its_rows() -> None:
    """The mean of any per-row loss over the pooled rows is sum_k n_k / n F_k (Eq. 8's F)."""
    data = build_federated_data(
        "digits", n_clients=5, partition="dirichlet", seed=3, alpha=0.3, test_fraction=0.3
    )
    pooled = pooled_client_data(data)
    sizes = np.array([len(i) for i in data.client_indices])
    assert len(pooled) == sizes.sum() and len(set(sizes)) > 1  # unequal clients

    def loss(x: np.ndarray, y: np.ndarray) -> np.ndarray:  # any per-row loss will do
        return np.abs(x).sum(axis=1) * (1.0 + y)

    per_client = [loss(data.train.x[i], data.train.y[i]).mean() for i in data.client_indices]
    expected = float(np.dot(sizes / sizes.sum(), per_client))
    assert float(loss(pooled.x, pooled.y).mean()) == pytest.approx(expected, rel=1e-9)
    np.testing.assert_array_equal(pooled.x[: sizes[0]], data.train.x[data.client_indices[0]])
