"""XLA compiler options by problem size: compile small problems fast, optimise large ones fully.

On CPU a fit of a small model spends almost all its first call compiling: XLA's optimising
backend (LLVM at -O2-like settings, the MLIR fusion emitters) takes seconds for programs whose
run time is milliseconds. For such problems `FAST_OPTIONS` (the backend at optimisation level 0
and XLA's classic elemental fusion emitter instead of the MLIR fusion emitters) compiles 3-6x
faster; the code it produces runs slower (unvectorised elementwise loops; matrix products and
factorisations call the same library kernels), which costs nothing next to the compile time
while the data are small and a lot once they are large.

The rule (`fast_compile`): on CPU, compile with `FAST_OPTIONS` when the model's arrays (its data
and any arrays it carries, e.g. a whitening factor) hold at most `FAST_MAX_ENTRIES` numbers;
otherwise use XLA's defaults. On GPU/TPU the defaults are always used (the options are CPU
settings). Measured on a loaded 2-core machine (`benchmarks/bench_first_call.py`, and per
gradient of 8 draws inside a compiled loop):

* compile: the default fit's programs take 3-4x less CPU time to compile (eight schools: 3.3 s
  of process CPU for the whole first call against 11-12 s; a logistic regression alike);
* run: a gradient costs 1.5-15 ns more per data entry (breast cancer, 17,600 entries: about
  +25 us; the badly scaled wells GLM, 18,100: +50-110 us; radon, 2,800 entries with gathers:
  +40 us; a 20,000 x 10 logistic regression: +530 us, 10x).

A default fit evaluates the log density or its gradient 10,000-25,000 times (start, ADVI,
diagnostics), so the slower code costs about 15k x 3 ns x entries per call of `aj.fit`, against
a compile saving of several seconds on the first call only: for one fit the two meet near
100,000 entries, but every later fit of the same shapes pays the slower code again (measured,
loaded machine, second call: breast cancer 0.14 -> 1.9 s, badly scaled wells 0.33 -> 5.0 s).
`FAST_MAX_ENTRIES` = 5,000 keeps the second call's extra cost near 0.2 s (eight schools:
0.02 -> 0.03-0.14 s; radon, 2,842 entries, compiles fast) and leaves larger data fully optimised.

`jit` is `jax.jit` with that choice made per call from the model argument: it holds two jitted
versions of the function (each with its own cache), so the choice never recompiles a program.
A model class may also name XLA options for its full compiles (`full_options`: a class attribute
`full_compile_options`, used on CPU only), which get a jitted version of their own; the ready GLMs
(`models.regression.RegressionModel`) ask for the classic fusion emitter, which halves the CPU
time of their full compiles at N = 1e6 with the same run time.

Example:
  >>> import jax.numpy as jnp, advi_jax as aj
  >>> from advi_jax import compile_options
  >>> model = aj.Model(lambda p: -0.5 * jnp.sum(p["x"] ** 2), {"x": aj.real((3,))})
  >>> compile_options.fast_compile(model) == (compile_options.jax.default_backend() == "cpu")
  True
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Any, Callable, Iterator

import jax
import numpy as np

__all__ = ["FAST_OPTIONS", "FAST_MAX_ENTRIES", "fast_compile", "full_options", "jit", "forced"]

FAST_OPTIONS = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
"""XLA options of a fast compile (CPU): no LLVM optimisation, the classic fusion emitter."""

FAST_MAX_ENTRIES = 5_000
"""The most numbers a model's arrays may hold for `fast_compile` to choose `FAST_OPTIONS`."""

_FORCED: list[str | None] = [None]


@contextlib.contextmanager
def forced(mode: str | None) -> Iterator[None]:
    """Within the block, compile every `jit` program "fast" or "full" whatever the size (None: by the rule).

    For benchmarks and tests that compare the two. Programs already compiled in a mode stay cached.

    Raises:
      ValueError: a mode other than "fast", "full" or None.
    """
    if mode not in ("fast", "full", None):
        raise ValueError(f"mode must be 'fast', 'full' or None, got {mode!r}")
    before = _FORCED[0]
    _FORCED[0] = mode
    try:
        yield
    finally:
        _FORCED[0] = before


@functools.lru_cache(maxsize=None)
def _on_cpu() -> bool:
    return jax.default_backend() == "cpu"


def num_entries(tree: Any) -> int:
    """Numbers held by the array leaves of a pytree (a model's data, a whitening shift and factor)."""
    return int(sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(tree) if hasattr(leaf, "shape")))


def fast_compile(model: Any = None) -> bool:
    """Whether programs over `model` compile with `FAST_OPTIONS` (see the module docstring).

    Args:
      model: the model (any pytree; its array leaves are counted), or None for a program without
        one (bookkeeping of size O(K^2), always fast on CPU).

    Returns:
      True on CPU when the model's arrays hold at most `FAST_MAX_ENTRIES` numbers (or a mode is
      `forced`); False otherwise.
    """
    if _FORCED[0] is not None:
        return _FORCED[0] == "fast" and _on_cpu()
    if not _on_cpu():
        return False
    return model is None or num_entries(model) <= FAST_MAX_ENTRIES


def full_options(model: Any = None) -> dict | None:
    """The XLA options of a full (not `fast_compile`) CPU compile over `model`: its class's
    `full_compile_options` if it names any (e.g. `models.regression.RegressionModel`), else None
    (XLA's defaults; always None off CPU)."""
    options = getattr(type(model), "full_compile_options", None) if model is not None else None
    return dict(options) if options and _on_cpu() else None


class _SizedJit:
    """Jitted versions of one function; each call picks one by `fast_compile(model argument)` (and,
    for a full compile, the model's `full_options`)."""

    def __init__(self, fun: Callable, model_arg: str | None, jit_kwargs: dict):
        self.full = jax.jit(fun, **jit_kwargs)
        self.fast = jax.jit(fun, compiler_options=dict(FAST_OPTIONS), **jit_kwargs)
        self._fun, self._jit_kwargs, self._tuned = fun, jit_kwargs, {}
        self._model_arg = model_arg
        self._index = None
        if model_arg is not None:
            names = list(inspect.signature(fun).parameters)
            if model_arg not in names:
                raise ValueError(f"model_arg {model_arg!r} is not a parameter of {fun.__name__}: {names}")
            self._index = names.index(model_arg)
        functools.update_wrapper(self, fun)

    def _pick(self, args: tuple, kwargs: dict):
        if self._model_arg is None:
            model = None
        elif self._index < len(args):
            model = args[self._index]
        else:
            model = kwargs.get(self._model_arg)
        if fast_compile(model):
            return self.fast
        options = full_options(model)
        if options is None:
            return self.full
        key = tuple(sorted(options.items()))
        if key not in self._tuned:  # setdefault: two threads asking at once get the same jitted version
            self._tuned.setdefault(key, jax.jit(self._fun, compiler_options=options, **self._jit_kwargs))
        return self._tuned[key]

    def __call__(self, *args, **kwargs):
        return self._pick(args, kwargs)(*args, **kwargs)

    def lower(self, *args, **kwargs):
        """`jax.jit(...).lower` of the version this call would run."""
        return self._pick(args, kwargs).lower(*args, **kwargs)

    def _cache_size(self) -> int:
        return self.full._cache_size() + self.fast._cache_size() + sum(f._cache_size() for f in self._tuned.values())

    def __get__(self, obj, objtype=None):  # usable as a method, like a jitted function
        return self if obj is None else functools.partial(self, obj)


def jit(fun: Callable | None = None, *, model_arg: str | None = "model", **jit_kwargs) -> Any:
    """`jax.jit(fun, **jit_kwargs)`, compiled with `FAST_OPTIONS` when `fast_compile(model)` says so.

    Args:
      fun: the function (or None, to use `jit(...)` as a decorator factory).
      model_arg: the name of `fun`'s parameter holding the model (its arrays decide), or None for
        a program without one (always fast on CPU).
      **jit_kwargs: passed to `jax.jit` (`static_argnames`, `static_argnums`, ...).

    Returns:
      A callable like a jitted function (`lower`, `_cache_size`).

    Example:
      >>> import jax.numpy as jnp
      >>> from advi_jax import compile_options
      >>> @compile_options.jit(model_arg=None)
      ... def double(x):
      ...     return 2 * x
      >>> double(jnp.ones(2)).tolist()
      [2.0, 2.0]
    """
    if fun is None:
        return lambda f: _SizedJit(f, model_arg, jit_kwargs)
    return _SizedJit(fun, model_arg, jit_kwargs)
