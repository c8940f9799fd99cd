"""MNIST loading for the VAE (no downloads; sha256-verified local files).

Search order for `mnist.npz` / `binarized_mnist.npz` (DESIGN.md, Data):

1. the `data_dir` argument, if given;
2. `$ADVI_JAX_DATA`;
3. `~/.cache/advi_jax`;
4. `shared/data` beside the repository checkout (`<repo>/../shared/data`; for a git worktree
   the main checkout is used, since that is where the shared folder lives).

The file's sha256 must equal the one recorded in the shared data README; a missing file raises a
`FileNotFoundError` listing every folder searched. Nothing is ever downloaded. (A generic
`advi_jax.data.find_data_file` is being written separately; this module can delegate to it
later.)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = ["MNIST", "SHA256", "data_search_dirs", "find_data_file", "load_mnist"]

SHA256 = {
    "mnist.npz": "06af5dfe73b70e3bc1c36439982b18a8d76803db9b544f6fdf838a37fbb01b64",
    "binarized_mnist.npz": "3af50c40abac16f6b963d6bbb3ab35254cefcef7c09428ffb2a2237985ccce64",
}

_VERIFIED: dict[tuple[str, float, int], bool] = {}


def _checkout_root() -> Path:
    """The repository checkout holding this package (the main checkout for a git worktree)."""
    repo = Path(__file__).resolve().parents[2]
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
    """The folders searched for dataset files, in order (see the module docstring)."""
    dirs = []
    if data_dir is not None:
        dirs.append(Path(data_dir).expanduser())
    env = os.environ.get("ADVI_JAX_DATA")
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(Path.home() / ".cache" / "advi_jax")
    dirs.append(_checkout_root().parent / "shared" / "data")
    return dirs


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def find_data_file(filename: str, sha256: str | None = None,
                   data_dir: str | os.PathLike | None = None) -> Path:
    """Locate `filename` in the search folders and verify its sha256.

    Args:
      filename: e.g. "mnist.npz".
      sha256: expected hex digest; defaults to the known one for MNIST files (None skips).
      data_dir: an extra folder searched first.

    Returns:
      The path of the first match.

    Raises:
      FileNotFoundError: no folder holds the file (the message lists the folders searched).
      ValueError: the file's sha256 differs from the expected one.
    """
    sha256 = sha256 if sha256 is not None else SHA256.get(filename)
    dirs = data_search_dirs(data_dir)
    for folder in dirs:
        path = folder / filename
        if path.is_file():
            stat = path.stat()
            cache_key = (str(path.resolve()), stat.st_mtime, stat.st_size)
            if sha256 and not _VERIFIED.get(cache_key):
                actual = _sha256(path)
                if actual != sha256:
                    raise ValueError(f"{path} has sha256 {actual}, expected {sha256}; "
                                     f"the file is corrupt or a different version")
                _VERIFIED[cache_key] = True
            return path
    searched = ", ".join(str(d) for d in dirs)
    raise FileNotFoundError(f"{filename} not found; searched {searched}. Put the file in one of these "
                            f"folders or set ADVI_JAX_DATA (nothing is downloaded automatically)")


class MNIST(NamedTuple):
    """MNIST arrays, images flattened to 784 features.

    Attributes:
      x_train: (N, 784) float32; intensities in [0, 1] ("mnist") or {0, 1} ("binarized_mnist").
      y_train: (N,) int32 labels, or None for "binarized_mnist".
      x_test: (M, 784) float32.
      y_test: (M,) int32 labels, or None.
      binarized: True when the images are already fixed {0, 1} draws.
    """

    x_train: np.ndarray
    y_train: np.ndarray | None
    x_test: np.ndarray
    y_test: np.ndarray | None
    binarized: bool


DATASETS = ("mnist", "binarized_mnist")


def load_mnist(name: str = "mnist", data_dir: str | os.PathLike | None = None) -> MNIST:
    """Load MNIST ("mnist", grey levels scaled to [0, 1], with labels) or the fixed binarisation
    of Larochelle & Murray ("binarized_mnist": 50000 train images, no labels; the validation split
    is not returned).

    Raises:
      ValueError: unknown `name` or a checksum mismatch.
      FileNotFoundError: the file is in none of the searched folders.
    """
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {list(DATASETS)}, got {name!r}")
    path = find_data_file(f"{name}.npz", data_dir=data_dir)
    with np.load(path, allow_pickle=False) as data:
        if name == "mnist":
            scale = np.float32(1.0 / 255.0)
            return MNIST(data["x_train"].reshape(-1, 784).astype(np.float32) * scale,
                         data["y_train"].astype(np.int32),
                         data["x_test"].reshape(-1, 784).astype(np.float32) * scale,
                         data["y_test"].astype(np.int32), False)
        return MNIST(data["x_train"].reshape(-1, 784).astype(np.float32), None,
                     data["x_test"].reshape(-1, 784).astype(np.float32), None, True)
