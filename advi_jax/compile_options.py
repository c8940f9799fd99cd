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

__all__ = ["FAST_OPTIONS", "FAST_MAX_ENTRIES", "FAST_MAX_WORK", "DEFAULT_EVALS", "fast_compile", "jit", "forced"]

FAST_OPTIONS = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
"""XLA options of a fast compile (CPU): no LLVM optimisation, the classic fusion emitter."""

FAST_MAX_ENTRIES = 5_000
"""The most numbers a model's arrays may hold for `fast_compile` to choose `FAST_OPTIONS` for a
program whose number of evaluations is not known (`DEFAULT_EVALS`)."""

FAST_MAX_WORK = 100_000_000
"""The most (array entries x log-density evaluations) a program may do for `fast_compile` to choose
`FAST_OPTIONS`: at the measured 1.5-15 ns per entry and evaluation that the fast code costs
more, at most about 0.2-1.5 s of run time, against 2-3 s of CPU time its full compile costs more."""

DEFAULT_EVALS = FAST_MAX_WORK // FAST_MAX_ENTRIES
"""Evaluations assumed for a program that does not say (20,000: a default fit's count)."""

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


def fast_compile(model: Any = None, evals: int | None = None) -> bool:
    """Whether a program over `model` compiles with `FAST_OPTIONS` (see the module docstring).

    Args:
      model: the model (any pytree; its array leaves are counted), or None for a program without
        one (bookkeeping of size O(K^2), always fast on CPU).
      evals: how many times (at most) the program evaluates the model's log density or its
        gradient, or None when unknown (`DEFAULT_EVALS`).

    Returns:
      True on CPU when entries x evals <= `FAST_MAX_WORK` (with `DEFAULT_EVALS`: the model's arrays
      hold at most `FAST_MAX_ENTRIES` numbers), or a mode is `forced`; False otherwise.
    """
    if _FORCED[0] is not None:
        return _FORCED[0] == "fast" and _on_cpu()
    if not _on_cpu():
        return False
    if evals is not None and evals < 0:
        raise ValueError(f"evals must be None or >= 0, got {evals}")
    return model is None or num_entries(model) * (DEFAULT_EVALS if evals is None else max(int(evals), 1)) \
        <= FAST_MAX_WORK


class _SizedJit:
    """Two jitted versions of one function; each call picks one by `fast_compile(model argument)`."""

    def __init__(self, fun: Callable, model_arg: str | None, jit_kwargs: dict, mode: Callable | None = None):
        self.full = jax.jit(fun, **jit_kwargs)
        self.fast = jax.jit(fun, compiler_options=dict(FAST_OPTIONS), **jit_kwargs)
        self._model_arg = model_arg
        self._mode = mode
        self._signature = inspect.signature(fun)
        self._index = None
        if model_arg is not None:
            names = list(self._signature.parameters)
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
        if self._mode is None:
            return self.fast if fast_compile(model) else self.full
        bound = self._signature.bind_partial(*args, **kwargs).arguments
        chosen = self._mode(model, bound)
        if isinstance(chosen, str) and _FORCED[0] is None:  # the caller's decision ("fast" / "full")
            fast = chosen == "fast" and _on_cpu()
        else:  # a number of evaluations (or None): by the rule (or the forced mode)
            fast = fast_compile(model, None if isinstance(chosen, str) else chosen)
        return self.fast if fast else self.full

    def __call__(self, *args, **kwargs):
        return self._pick(args, kwargs)(*args, **kwargs)

    def lower(self, *args, **kwargs):
        """`jax.jit(...).lower` of the version this call would run."""
        return self._pick(args, kwargs).lower(*args, **kwargs)

    def _cache_size(self) -> int:
        return self.full._cache_size() + self.fast._cache_size()

    def __get__(self, obj, objtype=None):  # usable as a method, like a jitted function
        return self if obj is None else functools.partial(self, obj)


def jit(fun: Callable | None = None, *, model_arg: str | None = "model", mode: Callable | None = None,
        **jit_kwargs) -> Any:
    """`jax.jit(fun, **jit_kwargs)`, compiled with `FAST_OPTIONS` when `fast_compile(model)` says so.

    Args:
      fun: the function (or None, to use `jit(...)` as a decorator factory).
      model_arg: the name of `fun`'s parameter holding the model (its arrays decide), or None for
        a program without one (always fast on CPU).
      mode: None (`fast_compile(model)`), or `mode(model, arguments)` (the call's arguments by
        name) returning the program's number of log-density evaluations for
        `fast_compile(model, evals)` (None: unknown), or the decision itself, "fast" or "full".
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
        return lambda f: _SizedJit(f, model_arg, jit_kwargs, mode)
    return _SizedJit(fun, model_arg, jit_kwargs, mode)
