"""`split` and `fold_in` of a threefry key on the host: the same bits as `jax.random`, no program.

Eagerly, every `jax.random` key operation compiles a program of its own (trace, lowering and an
XLA compile of the unrolled 20-round Threefry hash: 0.04-0.1 s each on a first call), and a fit
needs three keys from the user's before anything else runs (`aj.fit`'s `_fit_keys`: init, run
and diagnostics keys). For a threefry key on a CPU device they are a few uint32 operations, done
here in NumPy with JAX's own definitions (`jax._src.random.threefry2x32`: the Threefry-2x32 hash
with 20 rounds; `split` by the "partitionable" or the original counter layout, as the
`jax_threefry_partitionable` flag says; `fold_in(key, d)` = hash(key, (0, d))). Tests check the
bits against `jax.random` over many keys, both layouts.

Other key implementations (rbg, unsafe_rbg, custom), keys on other devices and batched keys are
left to `jax.random` (`fit_keys` returns None).

Example:
  >>> import jax
  >>> from advi_jax.run.host_keys import fit_keys
  >>> init_key, run_key, diag_key = fit_keys(jax.random.key(0))
  >>> bool((jax.random.key_data(init_key) == jax.random.key_data(jax.random.split(jax.random.key(0))[0])).all())
  True
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

__all__ = ["threefry2x32", "split2", "fold_in", "fit_keys"]

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _rotl(v: np.ndarray, r: int) -> np.ndarray:
    return (v << np.uint32(r)) | (v >> np.uint32(32 - r))


def threefry2x32(k1: int, k2: int, x0: np.ndarray, x1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Threefry-2x32 hash (20 rounds) of the counter pairs (x0, x1) under the key (k1, k2), uint32."""
    ks = [np.uint32(k1), np.uint32(k2), np.uint32(k1) ^ np.uint32(k2) ^ np.uint32(0x1BD11BDA)]
    with np.errstate(over="ignore"):
        x = [np.asarray(x0, np.uint32) + ks[0], np.asarray(x1, np.uint32) + ks[1]]
        for i in range(5):
            for r in _ROTATIONS[i % 2]:
                x[0] = x[0] + x[1]
                x[1] = _rotl(x[1], r) ^ x[0]
            x[0] = x[0] + ks[(i + 1) % 3]
            x[1] = x[1] + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x[0], x[1]


def split2(data: np.ndarray) -> np.ndarray:
    """(2, 2) uint32: the data of `jax.random.split(key)` for a threefry key with data `data` (2,)."""
    k1, k2 = (int(v) for v in data)
    if jax.config.jax_threefry_partitionable:
        hi, lo = threefry2x32(k1, k2, np.zeros(2, np.uint32), np.arange(2, dtype=np.uint32))
        return np.stack([hi, lo], axis=1)
    y0, y1 = threefry2x32(k1, k2, np.arange(2, dtype=np.uint32), np.arange(2, 4, dtype=np.uint32))
    return np.concatenate([y0, y1]).reshape(2, 2)


def fold_in(data: np.ndarray, value: int) -> np.ndarray:
    """(2,) uint32: the data of `jax.random.fold_in(key, value)` for a threefry key, 0 <= value < 2^32."""
    k1, k2 = (int(v) for v in data)
    y0, y1 = threefry2x32(k1, k2, np.zeros(1, np.uint32), np.full(1, value, np.uint32))
    return np.concatenate([y0, y1])


def fit_keys(key: Any) -> tuple[Any, Any, Any] | None:
    """(split(key)[0], split(key)[1], fold_in(key, 1)) for a typed threefry key on one CPU device,
    computed on the host (no program); None for any other key (the caller uses `jax.random`)."""
    if not (isinstance(key, jax.Array) and key.shape == () and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)):
        return None
    if str(jax.random.key_impl(key)) != "threefry2x32":
        return None
    devices = key.devices()
    if len(devices) != 1 or next(iter(devices)).platform != "cpu":
        return None
    data = np.asarray(jax.random.key_data(key))
    both = split2(data)
    return tuple(jax.random.wrap_key_data(v, impl="threefry2x32") for v in (both[0], both[1], fold_in(data, 1)))
