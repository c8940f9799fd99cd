"""Run a fit's LAPACK calls on one OpenBLAS thread: OpenBLAS's idle threads spin, and under load that spinning is the fit's time.

On CPU, jaxlib computes Cholesky factors, triangular solves, eigendecompositions and the like by
calling LAPACK through SciPy (`scipy.linalg.cython_lapack`), i.e. SciPy's bundled OpenBLAS. OpenBLAS
splits a call over its thread pool (one thread per core) and its threads busy-wait for work
after each call before they sleep; the calling thread busy-waits for theirs. A fit's start
program (Pathfinder, BaM) and its loop make such calls thousands of times on (K, K) matrices.
When the cores are shared with the fit's own compile threads (`advi_jax.run.ahead`) and other
processes, the spinning threads keep the cores the waited-for thread needs, worst under
real-time scheduling (`chrt -r`, round-robin slices of 100 ms): measured on a 2-core machine, the
default fit of radon_noncentered (K = 90) took 13-15 s (all of it CPU time) with another
real-time process on one core against 5.6-6.2 s on one core alone, and 30-207 s in
`benchmarks/bench_build` on a loaded machine; with OpenBLAS on one thread, 6.8 s
(`benchmarks/PERFORMANCE.md`, "OpenBLAS's spinning threads").

`one_thread(dim)` sets every OpenBLAS it finds (SciPy's, loaded here from its wheel's folder if
JAX has not loaded it yet, and NumPy's, and any other already in the process) to one thread for
the block and restores the counts after. For K above `MAX_DIM` it does nothing: factorising such
matrices is long enough for the threads to pay. The setting is process-wide for the block's
duration (numpy work of other threads meanwhile runs single-threaded too). Found nothing (another
BLAS, another platform than Linux): nothing is changed. `ADVI_JAX_BLAS_THREADS=keep` turns it off.

Example:
  >>> from advi_jax import blas_threads
  >>> with blas_threads.one_thread(90):
  ...     pass  # a fit's programs run here
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import importlib.util
import os
from typing import Iterator

__all__ = ["MAX_DIM", "during", "one_thread", "openblas_libraries"]

MAX_DIM = 1000
"""Above this dimension K, `one_thread` leaves OpenBLAS's threads as they are."""

_NAMES = (("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
          ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
          ("openblas_get_num_threads", "openblas_set_num_threads"),
          ("openblas_get_num_threads64_", "openblas_set_num_threads64_"))


def _wheel_libraries() -> list[str]:
    """OpenBLAS files shipped in SciPy's and NumPy's wheels (`scipy.libs`, `numpy.libs`), found without importing them."""
    paths = []
    for package in ("scipy", "numpy"):
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        for location in (spec.submodule_search_locations or []) if spec is not None else []:
            paths += sorted(glob.glob(os.path.join(os.path.dirname(location), f"{package}.libs", "*openblas*.so*")))
    return paths


def _loaded_libraries() -> list[str]:
    """OpenBLAS files already mapped into this process (Linux)."""
    try:
        with open("/proc/self/maps") as handle:
            return sorted({line.split()[-1] for line in handle
                           if "openblas" in line.lower() and line.split()[-1].startswith("/")})
    except OSError:
        return []


@functools.lru_cache(maxsize=1)
def openblas_libraries() -> tuple[tuple[object, object], ...]:
    """The OpenBLAS libraries `one_thread` sets (found once per process; loaded here where JAX has not yet).

    Returns:
      One (get, set) pair of ctypes functions per library: `get()` its thread count, `set(n)` sets it.
    """
    found, seen = [], set()
    for path in _wheel_libraries() + _loaded_libraries():
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        try:
            library = ctypes.CDLL(real)
        except OSError:
            continue
        for get_name, set_name in _NAMES:
            if hasattr(library, get_name) and hasattr(library, set_name):
                get, set_ = getattr(library, get_name), getattr(library, set_name)
                get.restype, get.argtypes = ctypes.c_int, []
                set_.restype, set_.argtypes = None, [ctypes.c_int]
                found.append((get, set_))
                break
    return tuple(found)


@contextlib.contextmanager
def one_thread(dim: int | None = None) -> Iterator[None]:
    """Within the block, every OpenBLAS found runs on one thread (see the module docstring).

    Args:
      dim: the model's dimension K; above `MAX_DIM` nothing is changed. None: always one thread.
    """
    if (dim is not None and dim > MAX_DIM) or os.environ.get("ADVI_JAX_BLAS_THREADS") == "keep":
        yield
        return
    libraries = openblas_libraries()
    before = [get() for get, _ in libraries]
    for (_, set_), count in zip(libraries, before):
        if count != 1:
            set_(1)
    try:
        yield
    finally:
        for (_, set_), count in zip(libraries, before):
            if count != 1:
                set_(count)


def during(fun):
    """Decorate a fit function `fun(model, ...)`: its body runs in `one_thread(model.dim)` (`aj.fit`,
    `aj.fit_many` and `aj.fit_minibatch` are so decorated; for a sequence of models, the largest K).

    Returns:
      The wrapped function (same signature and docstring).
    """

    @functools.wraps(fun)
    def wrapper(model, *args, **kwargs):
        dims = [getattr(m, "dim", None) for m in (model if isinstance(model, (list, tuple)) else [model])]
        dim = max(dims) if dims and all(isinstance(d, int) for d in dims) else None
        with one_thread(dim if isinstance(dim, int) else None):
            return fun(model, *args, **kwargs)

    return wrapper
