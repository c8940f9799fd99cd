"""Python's cyclic garbage collector paused while a fit runs: tracing makes young objects, not garbage.

A fit's first call traces and lowers its programs in Python (the start's, the loop's, the
diagnostics'): JAX builds hundreds of thousands of small objects (tracers, equations, MLIR
operations), most of which live until the program is compiled. Each 700 new container objects
start a young-generation collection that walks them and frees almost nothing, and older
generations follow; the collections also hold the interpreter lock that the compile-ahead thread
(`advi_jax.run.ahead`) needs for its own tracing. Measured on the default fit of
eight_schools_noncentered (a fresh process, 2 cores): 150 collections, 0.11-0.15 s of a 2.0-3.0 s
first call; radon_noncentered 170 collections, 0.13-0.16 s (`benchmarks/PERFORMANCE.md`, lead's
eighteenth-session section).

`paused()` disables the collector for its block and re-enables it after, if it was enabled
(nested and concurrent blocks: the outermost restores it). Nothing is lost: reference counting
still frees every acyclic object at once, and the cycles made meanwhile are collected by the
next collection after the block. `aj.fit`, `aj.fit_many` and `aj.fit_minibatch` run inside it
(`during`). `ADVI_JAX_GC=keep` leaves the collector alone.

Example:
  >>> import gc
  >>> from advi_jax import gc_pause
  >>> with gc_pause.paused():
  ...     gc.isenabled()
  False
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import threading
from typing import Iterator

__all__ = ["during", "paused"]

_lock = threading.Lock()
_depth = 0
_restore = False


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """Disable Python's cyclic garbage collector for the block (see the module docstring)."""
    global _depth, _restore
    if os.environ.get("ADVI_JAX_GC", "").strip().lower() == "keep":
        yield
        return
    with _lock:
        if _depth == 0:
            _restore = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _restore:
                gc.enable()


def during(fun):
    """Decorate a fit function: its body runs in `paused()`.

    Returns:
      The wrapped function (same signature and docstring).
    """

    @functools.wraps(fun)
    def wrapper(*args, **kwargs):
        with paused():
            return fun(*args, **kwargs)

    return wrapper
