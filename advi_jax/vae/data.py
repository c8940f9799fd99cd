"""MNIST loading for the VAE (no downloads; sha256-verified local files).

Search order for `mnist.npz` / `binarized_mnist.npz` (DESIGN.md, Data):

1. the `data_dir` argument, if given;
2. `$ADVI_JAX_DATA`;
3. `~/.cache/advi_jax`;
4. `shared/data` beside the repository checkout (`<repo>/../shared/data`; for a git worktree
   the main checkout is used, since that is where the shared folder lives).

The file's sha256 must equal the one recorded in the shared data README; a missing file raises a
`FileNotFoundError` listing every folder searched. Nothing is ever downloaded. The search is
`advi_jax.data.find_data_file`'s.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from advi_jax import data as _data

__all__ = ["MNIST", "SHA256", "data_search_dirs", "find_data_file", "load_mnist"]

SHA256 = {
    "mnist.npz": "06af5dfe73b70e3bc1c36439982b18a8d76803db9b544f6fdf838a37fbb01b64",
    "binarized_mnist.npz": "3af50c40abac16f6b963d6bbb3ab35254cefcef7c09428ffb2a2237985ccce64",
}

# The search and the sha256 check are advi_jax.data's (one implementation for every data file).
data_search_dirs = _data.data_search_dirs


def find_data_file(filename: str, sha256: str | None = None,
                   data_dir: str | os.PathLike | None = None) -> Path:
    """`advi_jax.data.find_data_file`, with the MNIST files' known sha256 as the default."""
    return _data.find_data_file(filename, sha256 if sha256 is not None else SHA256.get(filename, ""), data_dir)


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
