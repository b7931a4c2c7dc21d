"""Datasets and client partitions for federated experiments.

Pure logic: no ray, no mlflow, no network access. Every random draw comes from a
``numpy.random.Generator`` that the caller passes in, so results are reproducible
from a single integer seed (see :func:`build_federated_data`).

Datasets
    * scikit-learn's bundled tabular sets (``digits``, ``breast_cancer``, ``iris``,
      ``wine``): shipped with scikit-learn, split into train/test with a stratified split.
    * ``mnist``: the four IDX files (optionally gzipped) read from a local directory.
    * ``cifar10``: the python-pickle batches read from a local directory.

Nothing is ever downloaded: if local files are missing a :class:`DataError` says where
they must be placed.

Partitions
    ``iid``, ``dirichlet`` (label skew, Hsu et al. 2019) and ``shards`` (McMahan et al.
    2017). Each returns one sorted ``int64`` index array per client; the arrays are
    pairwise disjoint and together cover every sample exactly once.
"""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qfl.errors import DataError

__all__ = [
    "DATASETS",
    "PARTITIONS",
    "ArrayDataset",
    "FederatedData",
    "build_federated_data",
    "load_dataset",
    "partition",
    "partition_dirichlet",
    "partition_iid",
    "partition_shards",
    "pooled_client_data",
    "standardize",
]

DATASETS: tuple[str, ...] = ("digits", "breast_cancer", "iris", "wine", "mnist", "cifar10")
PARTITIONS: tuple[str, ...] = ("iid", "dirichlet", "shards")

_STD_FLOOR = 1e-8
_DIRICHLET_MAX_TRIES = 1000

_IDX_IMAGES_MAGIC = 0x00000803
_IDX_LABELS_MAGIC = 0x00000801
_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_MNIST_CLASSES = 10

_CIFAR_SUBDIR = "cifar-10-batches-py"
_CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST_BATCH = "test_batch"
_CIFAR_SHAPE = (3, 32, 32)
_CIFAR_CLASSES = 10


# --------------------------------------------------------------------------- containers


@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """Features ``x`` of shape ``(N, *feature_shape)`` (float32) and labels ``y`` (N,) int64."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        x = np.asarray(self.x, dtype=np.float32)
        y = np.asarray(self.y, dtype=np.int64)
        if x.ndim < 1 or y.ndim != 1:
            raise DataError(f"expected x with ndim >= 1 and 1-D y, got x{x.shape}, y{y.shape}")
        if x.shape[0] != y.shape[0]:
            raise DataError(f"x has {x.shape[0]} rows but y has {y.shape[0]} labels")
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y)

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True, eq=False)
class FederatedData:
    """A training set split among clients plus a held-out global test set.

    ``client_indices[k]`` indexes rows of ``train``; no data is copied until
    :meth:`client` is called.
    """

    train: ArrayDataset
    test: ArrayDataset
    client_indices: tuple[np.ndarray, ...]
    num_classes: int

    def __post_init__(self) -> None:
        indices = tuple(np.asarray(idx, dtype=np.int64) for idx in self.client_indices)
        _check_partition(indices, len(self.train))
        if self.num_classes < 1:
            raise DataError(f"num_classes must be >= 1, got {self.num_classes}")
        object.__setattr__(self, "client_indices", indices)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.train.x.shape[1:])

    @property
    def n_clients(self) -> int:
        return len(self.client_indices)

    def client(self, k: int) -> ArrayDataset:
        """The local training data of client ``k`` (a copy of its rows)."""
        if not 0 <= k < len(self.client_indices):
            raise DataError(f"client {k} out of range [0, {len(self.client_indices)})")
        idx = self.client_indices[k]
        return ArrayDataset(self.train.x[idx], self.train.y[idx])


def _check_partition(indices: Sequence[np.ndarray], n: int) -> None:
    """Raise DataError unless ``indices`` are 1-D, in range and pairwise disjoint."""
    if len(indices) == 0:
        raise DataError("client_indices must contain at least one client")
    if any(idx.ndim != 1 for idx in indices):
        raise DataError("every client index array must be 1-D")
    flat = np.concatenate(indices)
    if flat.size and (flat.min() < 0 or flat.max() >= n):
        raise DataError(f"client indices out of range [0, {n})")
    if np.unique(flat).size != flat.size:
        raise DataError("client index arrays overlap")


# --------------------------------------------------------------------------- loading


def load_dataset(
    name: str,
    *,
    root: Path | None,
    test_fraction: float,
    rng: np.random.Generator,
) -> tuple[ArrayDataset, ArrayDataset, int]:
    """Load dataset ``name``; return ``(train, test, num_classes)``.

    Bundled sklearn sets are split with a stratified split whose seed is drawn from
    ``rng``. ``mnist`` and ``cifar10`` are read from ``root`` and use the files' own
    test split (``test_fraction`` is ignored for them).
    """
    if name in _SKLEARN_LOADERS:
        return _load_sklearn(name, test_fraction=test_fraction, rng=rng)
    if name == "mnist":
        return _load_mnist(root)
    if name == "cifar10":
        return _load_cifar10(root)
    raise DataError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")


_SKLEARN_LOADERS = ("digits", "breast_cancer", "iris", "wine")


def _sklearn_loader(name: str) -> Callable[[], Any]:
    from sklearn import datasets  # local import: keep module import light

    return getattr(datasets, f"load_{name}")


def _load_sklearn(
    name: str, *, test_fraction: float, rng: np.random.Generator
) -> tuple[ArrayDataset, ArrayDataset, int]:
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    bunch = _sklearn_loader(name)()
    x = np.asarray(bunch.data, dtype=np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    num_classes = len(bunch.target_names)
    seed = int(rng.integers(2**31))
    try:
        x_tr, x_te, y_tr, y_te = train_test_split(
            x, y, test_size=test_fraction, stratify=y, random_state=seed
        )
    except ValueError as exc:
        raise DataError(f"cannot split {name!r} with test_fraction={test_fraction}: {exc}") from exc
    return ArrayDataset(x_tr, y_tr), ArrayDataset(x_te, y_te), num_classes


def _require_root(root: Path | None, name: str, expected: str) -> Path:
    if root is None:
        raise DataError(
            f"dataset {name!r} needs a local data directory: pass root= pointing at a "
            f"directory containing {expected} (nothing is ever downloaded)"
        )
    return Path(root)


def _missing(path: Path, name: str) -> DataError:
    return DataError(
        f"{name}: required file {path} not found; the dataset files must be placed there "
        "manually (nothing is ever downloaded)"
    )


# ----- MNIST (IDX format)


def _find_idx_file(root: Path, stem: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise _missing(root / stem, "mnist")


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read {path}: {exc}") from exc


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Parse an unsigned-byte IDX file into a uint8 array shaped by its header."""
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(raw)} bytes, no header)")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise DataError(
            f"{path}: bad IDX magic number 0x{magic:08x}, expected 0x{expected_magic:08x}"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} < {header} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64))
    actual = len(raw) - header
    if actual < expected:
        raise DataError(f"{path}: truncated IDX data ({actual} of {expected} bytes for {dims})")
    if actual > expected:
        raise DataError(f"{path}: {actual - expected} unexpected trailing bytes after {dims}")
    return np.frombuffer(raw, dtype=np.uint8, count=expected, offset=header).reshape(dims)


def _load_mnist_split(root: Path, images_stem: str, labels_stem: str) -> ArrayDataset:
    images = read_idx(_find_idx_file(root, images_stem), _IDX_IMAGES_MAGIC)
    labels = read_idx(_find_idx_file(root, labels_stem), _IDX_LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"mnist: {images_stem} has {images.shape[0]} images but {labels_stem} has "
            f"{labels.shape[0]} labels"
        )
    if labels.size and int(labels.max()) >= _MNIST_CLASSES:
        raise DataError(f"mnist: {labels_stem} has label {int(labels.max())} >= {_MNIST_CLASSES}")
    x = (images.astype(np.float32) / np.float32(255.0))[:, None, :, :]
    return ArrayDataset(x, labels.astype(np.int64))


def _load_mnist(root: Path | None) -> tuple[ArrayDataset, ArrayDataset, int]:
    base = _require_root(root, "mnist", ", ".join(_MNIST_FILES.values()) + " (optionally .gz)")
    train = _load_mnist_split(base, _MNIST_FILES["train_images"], _MNIST_FILES["train_labels"])
    test = _load_mnist_split(base, _MNIST_FILES["test_images"], _MNIST_FILES["test_labels"])
    if train.x.shape[1:] != test.x.shape[1:]:
        raise DataError(f"mnist: train images {train.x.shape[1:]} != test {test.x.shape[1:]}")
    return train, test, _MNIST_CLASSES


# ----- CIFAR-10 (python pickle batches)


def _cifar_dir(root: Path) -> Path:
    """``root`` itself if it holds the batches, else ``root/cifar-10-batches-py`` if present."""
    nested = root / _CIFAR_SUBDIR
    if not (root / _CIFAR_TEST_BATCH).is_file() and nested.is_dir():
        return nested
    return root


def _get(batch: dict[Any, Any], key: str) -> Any:
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise KeyError(key)


def _load_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch. Note: pickle executes code from the file; only load trusted files."""
    if not path.is_file():
        raise _missing(path, "cifar10")
    try:
        with path.open("rb") as fh:
            batch = pickle.load(fh, encoding="bytes")
        data = np.asarray(_get(batch, "data"))
        labels = np.asarray(_get(batch, "labels"), dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"cifar10: cannot parse batch {path}: {exc!r}") from exc
    n_features = int(np.prod(_CIFAR_SHAPE))
    if data.ndim != 2 or data.shape[1] != n_features:
        raise DataError(f"cifar10: {path} data has shape {data.shape}, expected (N, {n_features})")
    if labels.shape != (data.shape[0],):
        raise DataError(f"cifar10: {path} has {data.shape[0]} images but {labels.size} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= _CIFAR_CLASSES):
        raise DataError(f"cifar10: {path} has labels outside [0, {_CIFAR_CLASSES})")
    return data.astype(np.uint8, copy=False), labels


def _cifar_dataset(paths: Sequence[Path]) -> ArrayDataset:
    parts = [_load_cifar_batch(p) for p in paths]
    data = np.concatenate([d for d, _ in parts])
    labels = np.concatenate([lab for _, lab in parts])
    x = data.reshape(-1, *_CIFAR_SHAPE).astype(np.float32) / np.float32(255.0)
    return ArrayDataset(x, labels)


def _load_cifar10(root: Path | None) -> tuple[ArrayDataset, ArrayDataset, int]:
    expected = f"{', '.join(_CIFAR_TRAIN_BATCHES)}, {_CIFAR_TEST_BATCH} (or {_CIFAR_SUBDIR}/)"
    base = _cifar_dir(_require_root(root, "cifar10", expected))
    train = _cifar_dataset([base / b for b in _CIFAR_TRAIN_BATCHES])
    test = _cifar_dataset([base / _CIFAR_TEST_BATCH])
    return train, test, _CIFAR_CLASSES


# --------------------------------------------------------------------------- preprocessing


def _feature_axes(x: np.ndarray) -> tuple[int, ...]:
    """Axes to reduce over: rows for tabular data, all but channel (axis 1) for images."""
    if x.ndim <= 2:
        return (0,)
    return (0, *range(2, x.ndim))


def standardize(train: ArrayDataset, test: ArrayDataset) -> tuple[ArrayDataset, ArrayDataset]:
    """Zero-mean/unit-variance scaling fitted on ``train`` only, applied to both.

    Tabular data is scaled per column, images (N, C, ...) per channel. A feature whose
    train std is below 1e-8 (e.g. a constant pixel) is only centred (scale 1), so its
    values stay finite and unamplified on the test set.
    """
    if train.x.shape[1:] != test.x.shape[1:]:
        raise DataError(f"train features {train.x.shape[1:]} != test {test.x.shape[1:]}")
    if len(train) == 0:
        raise DataError("cannot standardize with an empty training set")
    axes = _feature_axes(train.x)
    x64 = train.x.astype(np.float64)
    mean = x64.mean(axis=axes, keepdims=True)
    std = x64.std(axis=axes, keepdims=True)
    std = np.where(std < _STD_FLOOR, 1.0, std)

    def apply(ds: ArrayDataset) -> ArrayDataset:
        return ArrayDataset(((ds.x - mean) / std).astype(np.float32), ds.y)

    return apply(train), apply(test)


# --------------------------------------------------------------------------- partitioning


def select_classes(
    train: ArrayDataset, test: ArrayDataset, classes: Sequence[int], num_classes: int
) -> tuple[ArrayDataset, ArrayDataset, int]:
    """Keep samples whose label is in ``classes``; relabel ``classes[i]`` as ``i``."""
    wanted = [int(c) for c in classes]
    if len(set(wanted)) != len(wanted) or len(wanted) < 2:
        raise DataError(f"classes must be at least two distinct labels, got {wanted}")
    if any(not 0 <= c < num_classes for c in wanted):
        raise DataError(f"classes {wanted} outside the dataset's labels 0..{num_classes - 1}")
    lookup = np.full(num_classes, -1, dtype=np.int64)
    lookup[wanted] = np.arange(len(wanted))

    def keep(ds: ArrayDataset) -> ArrayDataset:
        mask = lookup[ds.y] >= 0
        return ArrayDataset(ds.x[mask], lookup[ds.y[mask]])

    return keep(train), keep(test), len(wanted)


def pca_reduce(
    train: ArrayDataset, test: ArrayDataset, components: int
) -> tuple[ArrayDataset, ArrayDataset]:
    """Project flattened features on the top ``components`` principal axes of TRAIN.

    The projections are divided by the training standard deviation of each
    component, so every reduced feature has unit variance on the training set.
    """
    from sklearn.decomposition import PCA

    features = int(np.prod(train.x.shape[1:]))
    if not 1 <= components <= min(features, len(train)):
        raise DataError(f"pca_components={components} must be in 1..{min(features, len(train))}")
    flat_train = train.x.reshape(len(train), -1).astype(np.float64)
    pca = PCA(n_components=components, svd_solver="full").fit(flat_train)
    scale = np.sqrt(pca.explained_variance_)
    scale = np.where(scale < _STD_FLOOR, 1.0, scale)

    def project(ds: ArrayDataset) -> ArrayDataset:
        z = pca.transform(ds.x.reshape(len(ds), -1).astype(np.float64)) / scale
        return ArrayDataset(z.astype(np.float32), ds.y)

    return project(train), project(test)


def _as_labels(labels: np.ndarray) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise DataError(f"labels must be 1-D, got shape {arr.shape}")
    return arr


def _check_n_clients(n_clients: int, n: int) -> None:
    if n_clients < 1:
        raise DataError(f"n_clients must be >= 1, got {n_clients}")
    if n_clients > n:
        raise DataError(f"n_clients={n_clients} exceeds the number of samples ({n})")


def _check_scheme(scheme: str) -> None:
    if scheme not in PARTITIONS:
        raise DataError(
            f"unknown partition scheme {scheme!r}; expected one of {', '.join(PARTITIONS)}"
        )


def _group_by_client(client_of: np.ndarray, n_clients: int) -> list[np.ndarray]:
    """Turn a per-sample client id into sorted int64 index arrays, one per client."""
    order = np.argsort(client_of, kind="stable").astype(np.int64)  # ascending within client
    sizes = np.bincount(client_of, minlength=n_clients)
    return [np.ascontiguousarray(a) for a in np.split(order, np.cumsum(sizes)[:-1])]


def partition_iid(labels: np.ndarray, n_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Uniformly random split; client sizes differ by at most one."""
    n = _as_labels(labels).shape[0]
    _check_n_clients(n_clients, n)
    base, extra = divmod(n, n_clients)
    sizes = np.full(n_clients, base, dtype=np.int64)
    sizes[:extra] += 1
    client_of = np.empty(n, dtype=np.int64)
    client_of[rng.permutation(n)] = np.repeat(np.arange(n_clients), sizes)
    return _group_by_client(client_of, n_clients)


def _dirichlet_assignment(
    labels: np.ndarray, classes: np.ndarray, n_clients: int, alpha: float, rng: np.random.Generator
) -> np.ndarray:
    """One draw: per class, split its shuffled samples by Dirichlet(alpha) proportions."""
    client_of = np.empty(labels.shape[0], dtype=np.int64)
    concentration = np.full(n_clients, alpha, dtype=np.float64)
    for c in classes:
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        proportions = rng.dirichlet(concentration)
        if not np.all(np.isfinite(proportions)) or proportions.sum() <= 0:
            # Tiny alpha can underflow every component; put the class on one client.
            proportions = np.zeros(n_clients)
            proportions[rng.integers(n_clients)] = 1.0
        cuts = np.minimum(np.floor(np.cumsum(proportions) * idx.size), idx.size).astype(np.int64)
        cuts[-1] = idx.size
        counts = np.diff(cuts, prepend=0)
        client_of[idx] = np.repeat(np.arange(n_clients), counts)
    return client_of


def partition_dirichlet(
    labels: np.ndarray,
    n_clients: int,
    alpha: float,
    rng: np.random.Generator,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Label-skewed split: per class, client shares ~ Dirichlet(alpha * 1).

    Redraws (with the same ``rng``) until every client holds at least ``min_size``
    samples; gives up after 1000 draws.
    """
    arr = _as_labels(labels)
    n = arr.shape[0]
    _check_n_clients(n_clients, n)
    if not alpha > 0 or not np.isfinite(alpha):
        raise DataError(f"alpha must be a positive finite number, got {alpha}")
    if min_size < 0 or min_size * n_clients > n:
        raise DataError(
            f"min_size={min_size} is impossible with {n_clients} clients and {n} samples"
        )
    classes = np.unique(arr)
    for _ in range(_DIRICHLET_MAX_TRIES):
        client_of = _dirichlet_assignment(arr, classes, n_clients, alpha, rng)
        if np.bincount(client_of, minlength=n_clients).min() >= min_size:
            return _group_by_client(client_of, n_clients)
    raise DataError(
        f"dirichlet partition: no draw in {_DIRICHLET_MAX_TRIES} tries gave every one of "
        f"{n_clients} clients >= {min_size} samples out of {n}; alpha={alpha} is too small "
        "or there are too many clients (raise alpha, lower n_clients or min_size)"
    )


def partition_shards(
    labels: np.ndarray, n_clients: int, shards_per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Pathological non-IID split (McMahan et al. 2017).

    Sort samples by label (ties in random order), cut into ``n_clients *
    shards_per_client`` contiguous shards of near-equal size, deal shards at random.
    """
    arr = _as_labels(labels)
    n = arr.shape[0]
    _check_n_clients(n_clients, n)
    if shards_per_client < 1:
        raise DataError(f"shards_per_client must be >= 1, got {shards_per_client}")
    n_shards = n_clients * shards_per_client
    if n_shards > n:
        raise DataError(
            f"{n_clients} clients x {shards_per_client} shards = {n_shards} shards "
            f"exceeds the number of samples ({n})"
        )
    shuffled = rng.permutation(n)
    order = shuffled[np.argsort(arr[shuffled], kind="stable")]
    base, extra = divmod(n, n_shards)
    shard_sizes = np.full(n_shards, base, dtype=np.int64)
    shard_sizes[:extra] += 1
    shard_of_position = np.repeat(np.arange(n_shards), shard_sizes)
    client_of_shard = np.empty(n_shards, dtype=np.int64)
    client_of_shard[rng.permutation(n_shards)] = np.arange(n_shards) // shards_per_client
    client_of = np.empty(n, dtype=np.int64)
    client_of[order] = client_of_shard[shard_of_position]
    return _group_by_client(client_of, n_clients)


def _partition(
    labels: np.ndarray,
    n_clients: int,
    scheme: str,
    rng: np.random.Generator,
    *,
    alpha: float,
    shards_per_client: int,
    min_size: int,
) -> list[np.ndarray]:
    arr = _as_labels(labels)
    _check_scheme(scheme)
    _check_n_clients(n_clients, arr.shape[0])
    if scheme == "iid":
        return partition_iid(arr, n_clients, rng)
    if scheme == "dirichlet":
        return partition_dirichlet(arr, n_clients, alpha, rng, min_size=min_size)
    return partition_shards(arr, n_clients, shards_per_client, rng)


def partition(
    labels: np.ndarray,
    n_clients: int,
    scheme: str,
    rng: np.random.Generator,
    *,
    alpha: float = 0.5,
    shards_per_client: int = 2,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Split ``range(len(labels))`` among ``n_clients`` with the named scheme.

    Returns sorted, pairwise-disjoint int64 arrays whose union is every index.
    ``alpha``/``min_size`` apply to ``dirichlet``, ``shards_per_client`` to ``shards``.
    """
    return _partition(
        labels,
        n_clients,
        scheme,
        rng,
        alpha=alpha,
        shards_per_client=shards_per_client,
        min_size=min_size,
    )


# --------------------------------------------------------------------------- assembly


def pooled_client_data(data: FederatedData) -> ArrayDataset:
    """Every client's training rows, client after client: the mean loss over them is the
    federated objective F(w) = sum_k n_k / n F_k(w) (n_k: client k's rows, n their sum)."""
    rows = np.concatenate([*data.client_indices, np.zeros(0, dtype=np.int64)])
    return ArrayDataset(data.train.x[rows], data.train.y[rows])


def build_federated_data(
    name: str,
    *,
    n_clients: int,
    partition: str,
    seed: int,
    root: Path | None = None,
    test_fraction: float = 0.25,
    alpha: float = 0.5,
    shards_per_client: int = 2,
    standardize_features: bool = True,
    classes: Sequence[int] | None = None,
    pca_components: int | None = None,
) -> FederatedData:
    """Load, optionally standardize and partition a dataset; deterministic in ``seed``.

    The train/test split and the partition use independent child generators spawned
    from ``np.random.SeedSequence(seed)``. ``classes`` keeps only those labels
    (relabelled 0..k-1 in the given order) before anything is fitted;
    ``pca_components`` reduces the features to that many principal components,
    fitted on the training set and scaled to unit variance (for angle encoding).
    """
    _check_scheme(partition)
    if seed < 0:
        raise DataError(f"seed must be non-negative, got {seed}")
    split_seq, partition_seq = np.random.SeedSequence(seed).spawn(2)
    train, test, num_classes = load_dataset(
        name, root=root, test_fraction=test_fraction, rng=np.random.default_rng(split_seq)
    )
    if classes is not None:
        train, test, num_classes = select_classes(train, test, classes, num_classes)
    if standardize_features:
        train, test = standardize(train, test)
    if pca_components is not None:
        train, test = pca_reduce(train, test, pca_components)
    indices = _partition(
        train.y,
        n_clients,
        partition,
        np.random.default_rng(partition_seq),
        alpha=alpha,
        shards_per_client=shards_per_client,
        min_size=1,
    )
    return FederatedData(
        train=train, test=test, client_indices=tuple(indices), num_classes=num_classes
    )
