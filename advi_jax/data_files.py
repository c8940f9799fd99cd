"""Larger data files that are not shipped (MNIST and friends): search, checks, loading.

Nothing here downloads anything. A file is looked up in a documented list of folders
(`data_search_dirs`): an explicit `data_dir`, `$ADVI_JAX_DATA`, the user cache folder
(`$XDG_CACHE_HOME/advi_jax`, by default `~/.cache/advi_jax`), then `shared/data` beside the
repository checkout (for a git worktree, beside its main checkout). `find_data_file` checks a
file's sha256 against `DATA_FILES`; `load_mnist` checks the arrays instead (keys, shapes, dtypes,
ranges), so the same arrays saved by a user from any source work. A missing or unusable file
raises `DataFileNotFound` listing the folders searched, every rejected copy with its reason,
where to get the file and in what format. `advi_jax.data` re-exports every public name.

Example:
  >>> from advi_jax import data_files
  >>> mnist = data_files.load_mnist("mnist")  # doctest: +SKIP
  >>> mnist.x_train.shape, mnist.x_train.dtype  # doctest: +SKIP
  ((60000, 784), dtype('float32'))
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

from advi_jax._stack import user_stacklevel

__all__ = [
    "DATA_FILES",
    "MNIST",
    "MNIST_NAMES",
    "DataFileNotFound",
    "data_search_dirs",
    "find_data_file",
    "load_mnist",
]

# Larger files looked up by `find_data_file`: filename -> sha256 of the file.
DATA_FILES: dict[str, str] = {
    "mnist.npz": "06af5dfe73b70e3bc1c36439982b18a8d76803db9b544f6fdf838a37fbb01b64",
    "fashion_mnist.npz": "5b6d2c4c694a91887af8ab7d039c04f80af3c29378d731c93a538d2e831aa469",
    "binarized_mnist.npz": "3af50c40abac16f6b963d6bbb3ab35254cefcef7c09428ffb2a2237985ccce64",
    "german_credit_numeric.npz": "f256ef74fbe6ecae1718805370b50dd9f3ebd7ca64c1edc46bca789009b305b9",
    "wells.npz": "a73a9c37c8dd33576bae6b12c1630a49f401b1d3dc61812cccbe06ac80656e17",
}




def _checkout_root(package_dir: str | os.PathLike | None = None) -> Path:
    """The repository checkout holding this package (the main checkout for a git worktree).

    Args:
      package_dir: the folder of the `advi_jax` package (default: this file's folder).

    Returns:
      The checkout's root. In a git worktree `.git` is a file naming
      `<main>/.git/worktrees/<name>`, and the main checkout `<main>` is returned, because that is
      where a `shared/` folder sits beside the project; otherwise the package's parent folder.
    """
    repo = Path(package_dir if package_dir is not None else Path(__file__).resolve().parent).parent
    git = repo / ".git"
    if git.is_file():  # a worktree: ".git" names <main>/.git/worktrees/<name>
        text = git.read_text().strip()
        if text.startswith("gitdir:"):
            gitdir = Path(text.split(":", 1)[1].strip())
            if not gitdir.is_absolute():
                gitdir = (repo / gitdir).resolve()
            common = gitdir / "commondir"
            common_dir = (gitdir / common.read_text().strip()).resolve() if common.is_file() else gitdir.parents[1]
            return common_dir.parent
    return repo


def data_search_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The folders `find_data_file` and `load_mnist` search, in order.

    1. `data_dir`, when given;
    2. `$ADVI_JAX_DATA` when set;
    3. the user cache folder `$XDG_CACHE_HOME/advi_jax` (default `~/.cache/advi_jax`);
    4. `shared/data` beside the repository checkout (`<repo>/../shared/data`; for a git worktree,
       beside the main checkout), when present.

    Args:
      data_dir: a folder searched first.

    Returns:
      The folders, whether or not they exist (except the last, listed only when present).

    Example:
      >>> from advi_jax import data
      >>> data.data_search_dirs("/tmp/mine")[0]
      PosixPath('/tmp/mine')
    """
    dirs = []
    if data_dir is not None:
        dirs.append(Path(data_dir).expanduser())
    env = os.environ.get("ADVI_JAX_DATA")
    if env:
        dirs.append(Path(env).expanduser())
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    dirs.append(Path(cache).expanduser() / "advi_jax")
    shared = _checkout_root().parent / "shared" / "data"
    if shared.is_dir():
        dirs.append(shared)
    return dirs


class DataFileNotFound(FileNotFoundError, ValueError):
    """No search folder holds a usable copy of a data file (missing, wrong sha256, or bad content)."""


_VERIFIED: dict[tuple[str, int, int], str] = {}


def _sha256(path: Path) -> str:
    stat = path.stat()
    cache_key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if cache_key not in _VERIFIED:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _VERIFIED[cache_key] = digest.hexdigest()
    return _VERIFIED[cache_key]


_SAVE_SNIPPET = "np.savez_compressed('{file}', x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)"
_GREY_FORMAT = ("Format: a NumPy .npz with x_train (60000, 28, 28) uint8 0..255, y_train (60000,) integer labels "
                "0..9, x_test (10000, 28, 28) uint8, y_test (10000,). Any copy of the arrays works (the content is "
                "checked, not the file's hash)")

# What each larger file holds and where a user can get the arrays (advi_jax never downloads).
_FILE_FORMATS: dict[str, str] = {
    "mnist.npz": (
        _GREY_FORMAT + ", e.g. from the four IDX files of the MNIST database, keras.datasets.mnist.load_data() "
        "or torchvision.datasets.MNIST(root, download=True) (.data, .targets), saved with "
        + _SAVE_SNIPPET.format(file="mnist.npz") + "."),
    "fashion_mnist.npz": (
        _GREY_FORMAT + " (Zalando's Fashion-MNIST: labels are clothing classes), e.g. from the IDX files of "
        "the fashion-mnist repository, keras.datasets.fashion_mnist.load_data() or "
        "torchvision.datasets.FashionMNIST, saved with " + _SAVE_SNIPPET.format(file="fashion_mnist.npz") + "."),
    "binarized_mnist.npz": (
        "Format: a NumPy .npz with x_train (50000, 28, 28), x_valid (10000, 28, 28) and x_test (10000, 28, 28), "
        "uint8 or bool in {0, 1}, no labels: the fixed binarisation of Larochelle & Murray (2011), "
        "distributed as binarized_mnist_{train,valid,test}.amat text files (one row of 784 0/1 values per "
        "image; np.loadtxt(...).reshape(-1, 28, 28) reads one) and in tensorflow_datasets as "
        "'binarized_mnist'; save with np.savez_compressed('binarized_mnist.npz', x_train=..., x_valid=..., "
        "x_test=...)."),
}


def _not_found_message(filename: str, searched: list[str], rejected: list[str]) -> str:
    message = f"data file {filename!r} not found; searched: {searched}."
    if rejected:
        message += f" Copies found but not usable: {rejected}."
    first = searched[0] if searched else "~/.cache/advi_jax"
    message += (f" Put {filename} in one of these folders (e.g. {first}), or set ADVI_JAX_DATA to the folder "
                "that holds it; advi_jax does not download it.")
    if filename in _FILE_FORMATS:
        message += " " + _FILE_FORMATS[filename]
    return message


def find_data_file(filename: str, sha256: str | None = None, data_dir: str | os.PathLike | None = None) -> Path:
    """Find a data file in the search folders and check its sha256. Never downloads.

    Args:
      filename: e.g. "german_credit_numeric.npz".
      sha256: expected hex digest; defaults to the one recorded in `DATA_FILES` (if any).
        Pass "" to skip the check. (`load_mnist` checks the arrays' content instead, so that a
        user's own copy of MNIST works.)
      data_dir: a folder searched first.

    Returns:
      The path of the first copy whose hash matches.

    Raises:
      DataFileNotFound (a FileNotFoundError and a ValueError): no folder has a matching copy;
        the message lists the folders searched, any copies with a wrong hash, how to provide the
        file and, for the known files, what it must contain.

    Example:
      >>> from advi_jax import data
      >>> path = data.find_data_file("wells.npz")  # doctest: +SKIP
    """
    if sha256 is None:
        sha256 = DATA_FILES.get(filename, "")
    searched, wrong = [], []
    for folder in data_search_dirs(data_dir):
        candidate = folder / filename
        searched.append(str(folder))
        if not candidate.is_file():
            continue
        if not sha256 or _sha256(candidate) == sha256.lower():
            return candidate
        wrong.append(f"{candidate} (wrong sha256 {_sha256(candidate)}, expected {sha256})")
    raise DataFileNotFound(_not_found_message(filename, searched, wrong))


class MNIST(NamedTuple):
    """An MNIST-style image set, images flattened to 784 features.

    Attributes:
      x_train: (N, 784) float32; grey levels scaled to [0, 1], or {0, 1} for "binarized_mnist".
      y_train: (N,) int32 labels 0..9, or None for "binarized_mnist" (no labels).
      x_test: (M, 784) float32.
      y_test: (M,) int32 labels, or None.
      binarized: True when the images are already fixed {0, 1} draws.
      x_valid: (V, 784) float32 validation images of "binarized_mnist"; None for the others.
      path: the file the arrays were read from.
    """

    x_train: np.ndarray
    y_train: np.ndarray | None
    x_test: np.ndarray
    y_test: np.ndarray | None
    binarized: bool
    x_valid: np.ndarray | None = None
    path: Path | None = None


_MNIST_SPLITS = {
    "mnist": ("train", "test"),
    "fashion_mnist": ("train", "test"),
    "binarized_mnist": ("train", "valid", "test"),
}
MNIST_NAMES = tuple(_MNIST_SPLITS)


def _read_mnist(path: Path, name: str, splits: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Read and check the arrays of `splits` from an MNIST-style .npz; raise ValueError naming the file."""
    binarized = name == "binarized_mnist"
    keys = [f"x_{s}" for s in splits] + ([] if binarized else [f"y_{s}" for s in splits])
    try:
        with np.load(path, allow_pickle=False) as archive:
            files = sorted(archive.files)
            arrays = {k: archive[k] for k in keys if k in files}
    except Exception as err:  # BadZipFile, EOFError, zlib.error, OSError, ...: truncated or corrupt
        raise ValueError(f"{path}: not a readable .npz file (truncated or corrupt? {type(err).__name__}: "
                         f"{err}); copy it again") from None
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise ValueError(f"{path}: missing arrays {missing} (the file has {files})")
    for split in splits:
        x = arrays[f"x_{split}"]
        if not (x.ndim == 3 and x.shape[1:] == (28, 28)) and not (x.ndim == 2 and x.shape[1] == 784):
            raise ValueError(f"{path}: x_{split} has shape {x.shape}; expected (N, 28, 28) or (N, 784) images")
        if x.shape[0] < 1:
            raise ValueError(f"{path}: x_{split} holds no images")
        if binarized:
            if not (x.dtype == np.bool_ or np.issubdtype(x.dtype, np.integer)):
                raise ValueError(f"{path}: x_{split} has dtype {x.dtype}; expected uint8 or bool values in {{0, 1}}")
            if x.min() < 0 or x.max() > 1:
                raise ValueError(f"{path}: x_{split} has values in [{x.min()}, {x.max()}]; expected {{0, 1}} "
                                 "(binarized_mnist is the fixed binarisation; grey levels belong in mnist.npz)")
            continue
        if x.dtype != np.uint8:
            hint = (" (grey levels in [0, 1]? save (x * 255).round().astype(np.uint8))"
                    if np.issubdtype(x.dtype, np.floating) else "")
            raise ValueError(f"{path}: x_{split} has dtype {x.dtype}; expected uint8 grey levels 0..255{hint}")
        y = arrays[f"y_{split}"]
        if y.shape != (x.shape[0],):
            raise ValueError(f"{path}: y_{split} has shape {y.shape}; expected ({x.shape[0]},), one label per image")
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{path}: y_{split} has dtype {y.dtype}; expected integer class labels 0..9")
        if y.min() < 0 or y.max() > 9:
            raise ValueError(f"{path}: y_{split} has labels in [{y.min()}, {y.max()}]; expected 0..9")
    return arrays


def load_mnist(name: str = "mnist", split: str | None = None, *,
               data_dir: str | os.PathLike | None = None) -> MNIST | tuple[np.ndarray, np.ndarray | None]:
    """Load an MNIST-style image set: "mnist", "fashion_mnist" or "binarized_mnist". Never downloads.

    The file `<name>.npz` is looked up in `data_search_dirs(data_dir)` (`data_dir`,
    `$ADVI_JAX_DATA`, `~/.cache/advi_jax`, `shared/data` beside the checkout). Its content is
    checked, not its hash, so the same arrays saved by the user from any source work: keys
    `x_train`, `x_test` (and `y_train`, `y_test`; `x_valid` for binarized_mnist), images (N, 28, 28)
    or (N, 784) uint8 0..255 ({0, 1} for binarized_mnist), labels integers 0..9 with one per
    image. A copy that fails the checks (or cannot be read) is skipped with a warning naming it
    and the reason, and the next folder is tried.

    Args:
      name: "mnist", "fashion_mnist" or "binarized_mnist" (Larochelle & Murray's fixed
        binarisation: 50000/10000/10000 images, no labels).
      split: None (default) for every split as an `MNIST`; or "train", "test" ("valid" too for
        binarized_mnist) for that split's `(x, y)` only.
      data_dir: a folder searched first.

    Returns:
      An `MNIST` (x_train, y_train, x_test, y_test, binarized, x_valid, path) with images as
      (N, 784) float32 in [0, 1] and labels (N,) int32 (None for binarized_mnist); with `split`,
      the tuple `(x, y)` of that split.

    Raises:
      ValueError: unknown name or split.
      DataFileNotFound (a FileNotFoundError and a ValueError): no usable copy; the message lists
        the folders searched, every rejected copy with its reason, where to get the arrays and in
        what format.

    Example:
      >>> from advi_jax import data
      >>> mnist = data.load_mnist("mnist")  # doctest: +SKIP
      >>> mnist.x_train.shape, mnist.y_test[:3]  # doctest: +SKIP
      ((60000, 784), array([7, 2, 1], dtype=int32))
    """
    if name not in _MNIST_SPLITS:
        raise ValueError(f"name must be one of {list(_MNIST_SPLITS)}, got {name!r}")
    if split is not None and split not in _MNIST_SPLITS[name]:
        raise ValueError(f"split for {name} must be None or one of {_MNIST_SPLITS[name]}, got {split!r}")
    filename = f"{name}.npz"
    splits = _MNIST_SPLITS[name] if split is None else (split,)
    searched, rejected = [], []
    for folder in data_search_dirs(data_dir):
        searched.append(str(folder))
        candidate = folder / filename
        if not candidate.is_file():
            continue
        try:
            arrays = _read_mnist(candidate, name, splits)
        except ValueError as err:
            rejected.append(str(err))
            continue
        if rejected:
            warnings.warn(f"skipped unusable copies of {filename}: {rejected}; using {candidate}", stacklevel=user_stacklevel())
        break
    else:
        raise DataFileNotFound(_not_found_message(filename, searched, rejected))

    def images(s: str) -> np.ndarray:
        x = arrays[f"x_{s}"]
        x = x.reshape(x.shape[0], 784).astype(np.float32)
        return x if name == "binarized_mnist" else x / np.float32(255.0)

    def labels(s: str) -> np.ndarray | None:
        return arrays[f"y_{s}"].astype(np.int32) if f"y_{s}" in arrays else None

    if split is not None:
        return images(split), labels(split)
    return MNIST(images("train"), labels("train"), images("test"), labels("test"), name == "binarized_mnist",
                 images("valid") if "valid" in splits else None, candidate)
