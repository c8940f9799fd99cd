"""Where an L-BFGS path starts when its start is not finite: jittered points, tried in one loop.

Where log p or its gradient is not finite at a path's start (a log at a boundary, 0 * inf, an
overflow), the path runs from the first of up to T jittered points where both are (Stan retries
100 random initial points in (-2, 2)^K the same way). `first_finite` tries them in a `while_loop`
around one value-and-gradient call whose first pass evaluates the start itself, and where the start
is finite the loop runs once. A Pathfinder path (`pathfinder.lbfgs_path`) tries the same points
(`tried_points`) through its line search's own value-and-gradient call instead, so that the path's
start adds no copy of the log density to its program.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from advi_jax.vi._start_point import first_finite, jitter_factors
  >>> f = jax.value_and_grad(lambda z: -jnp.sum(z * jnp.log(z)))  # NaN at z = 0 and for z < 0
  >>> x, _, _, began, _ = first_finite(f, jnp.zeros(2), jnp.array([[-0.5, 0.5], [0.5, 0.5]]))
  >>> x.tolist(), int(began.num_tries), bool(began.finite)
  ([0.5, 0.5], 3, True)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from advi_jax._types import Array

__all__ = ["PathStart", "JITTER_LAST", "jitter_factors", "first_finite", "tried_points"]


class PathStart(NamedTuple):
    """Where a path began (see `lbfgs_path`'s `jitter`).

    Attributes:
      point: (K,) the point the L-BFGS path ran from: `x0`, or the first jittered point where
        log p and its gradient are finite.
      num_tries: the points evaluated to find it (1: `x0` itself was finite); each is one
        gradient evaluation, counted in the path's `num_grad_evals`.
      finite: whether log p and its gradient are finite at `point` (False: no point tried was).
      grad_finite: whether the gradient of log p is finite at `x0` (its value is the path's
        `start_log_density`).
      value_nonfinite: of the jittered points tried, how many had a non-finite log p (the others
        that failed had a finite value and a non-finite gradient).
    """

    point: Array
    num_tries: Array
    finite: Array
    grad_finite: Array
    value_nonfinite: Array


JITTER_LAST = 1e-3
"""The last jittered start's box, as a fraction of the first (`jitter_factors`)."""


def jitter_factors(tries: int, last: float = JITTER_LAST) -> np.ndarray:
    """(tries,) the half-widths of the jittered starts' boxes as fractions of the first's: 1,
    shrinking geometrically to `last`. The usual failure is a set of measure zero at the start
    (0 * inf at exactly zero), which the first, widest try leaves; the nearer ones serve a log
    density that is not finite far from the start (an overflow)."""
    return last ** np.linspace(0.0, 1.0, tries)


def _finite(f: Array, g: Array) -> Array:
    return jnp.isfinite(f) & jnp.all(jnp.isfinite(g))


def tried_points(x0: Array, jitter: Array | tuple[Array, Array] | None):
    """(T, point_at): the number of jittered points and `point_at(i)`, the i-th point tried: x0 at
    i = 0, x0 + offset_i at i = 1..T (`jitter` as in `first_finite`; None: T = 0)."""
    if jitter is None:
        return 0, lambda i: x0
    if isinstance(jitter, tuple):  # (key, radii): try t's offset drawn in the loop, U(-radii[t], radii[t])^K
        jitter_key, radii = jitter

        def offset_at(t):
            unit = jax.random.uniform(jax.random.fold_in(jitter_key, t), x0.shape, x0.dtype, -1.0, 1.0)
            return radii[t] * unit
        num_jitter = radii.shape[0]
    else:
        num_jitter = jitter.shape[0]

        def offset_at(t):
            return jax.lax.dynamic_index_in_dim(jitter, t, keepdims=False)

    return num_jitter, lambda i: jnp.where(i == 0, x0, x0 + offset_at(jnp.maximum(i - 1, 0)))


def first_finite(value_and_grad, x0: Array, jitter: Array | tuple[Array, Array] | None):
    """The first of x0, x0 + offset_1, x0 + offset_2, ... where f = -log p and its gradient are finite.

    One call site of `value_and_grad` inside a while loop whose first pass evaluates x0, so the
    retries add no copy of the log density to the program; where x0 is finite the loop runs once.

    Args:
      value_and_grad: (K,) -> (f, g), f = -log p.
      x0: (K,) the start.
      jitter: (T, K) offsets; or (key, radii): T = len(radii) offsets, offset t uniform in
        (-radii[t], radii[t])^K drawn from `fold_in(key, t)` inside the loop (no (T, K) array);
        or None: x0 only (no loop).

    Returns:
      (x, f, g, PathStart, f(x0)): the point found (the last tried when none is finite), f and
      g there, where and how it was found, and f at x0.
    """
    if jitter is None:
        f0, g0 = value_and_grad(x0)
        ok = _finite(f0, g0)
        return x0, f0, g0, PathStart(x0, jnp.asarray(1, jnp.int32), ok, jnp.all(jnp.isfinite(g0)),
                                     jnp.asarray(0, jnp.int32)), f0
    num_jitter, point_at = tried_points(x0, jitter)

    def cond(c):
        i, _, f, g = c[:4]
        return (i == 0) | (~_finite(f, g) & (i <= num_jitter))

    def body(c):
        i, _, _, _, f_first, g_first_ok, bad_values = c
        x = point_at(i)
        f, g = value_and_grad(x)
        first = i == 0
        return (i + 1, x, f, g, jnp.where(first, f, f_first), jnp.where(first, jnp.all(jnp.isfinite(g)), g_first_ok),
                bad_values + (~first & ~jnp.isfinite(f)).astype(jnp.int32))

    nan = jnp.asarray(jnp.nan, x0.dtype)
    init = (jnp.asarray(0, jnp.int32), x0, nan, jnp.zeros_like(x0), nan, jnp.asarray(False), jnp.asarray(0, jnp.int32))
    tries, x, f, g, f_first, g_first_ok, bad_values = jax.lax.while_loop(cond, body, init)
    return x, f, g, PathStart(x, tries, _finite(f, g), g_first_ok, bad_values), f_first
