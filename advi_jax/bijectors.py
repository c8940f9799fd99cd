"""Bijectors: maps from unconstrained reals to constrained supports, with log-det-Jacobians.

Every bijector maps one *event* of unconstrained reals `x` (shape `inverse_shape(out)`) to one
constrained event `y = forward(x)` (shape `forward_shape(in)`), and returns the scalar
log-absolute-determinant of the Jacobian of that map. Elementwise bijectors treat the whole
array as one event and sum their per-element log-dets; `jax.vmap` batches events.

For maps that change dimension (R^{K-1} -> simplex of K entries, R^{K(K-1)/2} -> a K x K
correlation Cholesky factor) the log-det is that of the map onto the *free coordinates* of the
output (for the simplex: its first K-1 entries; for triangular matrices: the strictly or weakly
lower triangle), which is the density convention of Stan and NumPyro.

Multivariate bijectors (one event each, `vmap` to batch):

=================  ==========================  ============================================
bijector           unconstrained -> constrained  log-det taken on
=================  ==========================  ============================================
`StickBreaking`    (K-1,) -> (K,) simplex        the first K-1 entries
`Ordered`          (K,) -> (K,) increasing       all K entries
`PositiveOrdered`  (K,) -> (K,) 0 < increasing   all K entries
`SumToZero`        (K-1,) -> (K,) sum 0          the first K-1 entries (= -0.5 log K)
`CorrCholesky`     (K(K-1)/2,) -> (K, K)         the strict lower triangle of L
`CorrMatrix`       (K(K-1)/2,) -> (K, K)         the strict lower triangle of L L^T
`CholeskyCov`      (K(K+1)/2,) -> (K, K)         the lower triangle of L (with diagonal)
`CovMatrix`        (K(K+1)/2,) -> (K, K)         the lower triangle of L L^T (with diagonal)
`Joint`            (K,) -> dict of named arrays  the sum over the named blocks
=================  ==========================  ============================================

Triangular matrices are packed row by row (the order of `numpy.tril_indices`). All of them
accumulate in log space (`log_sigmoid`, `softplus`, cumulative sums of logs) so values and
log-dets stay finite for inputs of size 30 in float32 and 300 in float64; inverses use
reverse cumulative sums (never `1 - partial sum`) and no explicit matrix inverse.

Attainable values. Every forward output of a finite input is a member of the *open* support
(what `Support.contains` checks): a value that rounding would put on a bound is kept one float
inside it (`LowerBound`, `UpperBound`, `Interval`, `Sigmoid`), an ordered entry that would
equal its predecessor is raised to the next float, positive entries and Cholesky diagonals are
floored at the smallest normal, and `CorrMatrix`/`CovMatrix` scale their off-diagonal entries by
`1 - pd_margin(K)` (4 K eps, a few ulps) so that a Cholesky factorisation of the output exists
for every finite input, even where L L^T is singular to working precision. These are rounding
facts: where they act, the input cannot be read back. The round trip `inverse(forward(x))`
recovers x to about `u (1 + |x| + cond)` (u the unit roundoff), cond being the condition number
of x given the stored value: 1 for `Exp`, `(|y_{k-1}| + |y_k|) / exp(x_k)` for `Ordered` (so
x = (5, -5) in float32 reads back to ~2e-3: the step is stored inside y_2, whatever the
formula), cosh(x)^2 for a partial correlation, and the condition number of the correlation
matrix for the matrix forms (their inverses never return NaN, but a nearly singular matrix
determines x only loosely: for K = 5 and corner inputs, to ~1e-5 at |x| <= 1 in float32 and
~1e-11 at |x| <= 2 in float64). For `CovMatrix` that condition number kappa(C) multiplies a
cancellation factor: S_ij is stored to u (|L| |L|^T)_ij, and L_ij is what is left of S_ij after
the products of the row's other entries are taken off, so x_ij is carried only to about
u kappa(C) (|L| |L|^T)_ij / L_jj (a small x_ij in a row with an entry near 300 in float64
reads back to ~1e-13, not ~1e-16). No inverse can do better from the stored matrix; use
`CholeskyCov` where the factor itself is wanted. `benchmarks/bench_bijector_fuzz.py` measures
all of this.

Unit vectors are deliberately left out. The sphere is not diffeomorphic to any R^k, so no
bijector exists; Stan's `unit_vector` over-parameterises with x in R^K, y = x / |x| and adds
`-0.5 |x|^2` to the target so that |x| has a proper distribution. That "log-det" is a prior on
the discarded radius, not a Jacobian, so it would break this module's contract (round trips,
`log_det == slogdet(jacfwd)`) and ADVI's Gaussian family would have to model a nuisance
radius. A model that needs a direction can put that construction in its own log joint
(declare `x` as `aj.real((K,))` and add `-0.5 * sum(x**2)`).

Subclasses implement `forward_and_log_det` and `inverse_and_log_det` (the latter returns
`log|det J_{forward^{-1}}(y)|`, i.e. minus the forward log-det at the paired point); every other
method is derived from those two. Bijectors are frozen dataclasses registered as pytrees, so
they can be passed through `jax.jit` and `jax.vmap`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from advi_jax._types import Array, ArrayLike

__all__ = [
    "Affine",
    "Bijector",
    "Chain",
    "CholeskyCov",
    "CorrCholesky",
    "CorrMatrix",
    "CovMatrix",
    "Exp",
    "Identity",
    "Interval",
    "Invert",
    "Joint",
    "LowerBound",
    "Ordered",
    "PositiveOrdered",
    "Sigmoid",
    "Softplus",
    "StickBreaking",
    "SumToZero",
    "UpperBound",
]


def _pytree(cls=None, *, data: tuple[str, ...] = ()):
    """Make `cls` a frozen dataclass registered as a pytree with `data` as array leaves."""

    def wrap(c):
        c = dataclasses.dataclass(frozen=True)(c)
        names = [f.name for f in dataclasses.fields(c)]
        meta = [n for n in names if n not in data]
        return jax.tree_util.register_dataclass(c, data_fields=list(data), meta_fields=meta)

    return wrap if cls is None else wrap(cls)


class Bijector:
    """Base class. Subclasses define `forward_and_log_det` and `inverse_and_log_det`."""

    name: str = "bijector"

    def forward_and_log_det(self, x: ArrayLike) -> tuple[Array, Array]:
        """Return `(forward(x), log|det J_forward(x)|)`; the log-det is a scalar."""
        raise TypeError(f"{type(self).__name__} does not define forward_and_log_det")

    def inverse_and_log_det(self, y: ArrayLike) -> tuple[Array, Array]:
        """Return `(inverse(y), log|det J_inverse(y)|)`; the log-det is a scalar."""
        raise TypeError(f"{type(self).__name__} does not define inverse_and_log_det")

    def forward(self, x: ArrayLike) -> Array:
        """Map unconstrained `x` to the constrained support."""
        return self.forward_and_log_det(x)[0]

    def inverse(self, y: ArrayLike) -> Array:
        """Map constrained `y` back to unconstrained reals."""
        return self.inverse_and_log_det(y)[0]

    def forward_log_det_jacobian(self, x: ArrayLike) -> Array:
        """Scalar `log|det J_forward(x)|`."""
        return self.forward_and_log_det(x)[1]

    def inverse_log_det_jacobian(self, y: ArrayLike) -> Array:
        """Scalar `log|det J_inverse(y)|` (= minus the forward log-det at `inverse(y)`)."""
        return self.inverse_and_log_det(y)[1]

    def forward_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Event shape of `forward(x)` for an unconstrained event of shape `shape`."""
        return tuple(shape)

    def inverse_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Event shape of `inverse(y)` for a constrained event of shape `shape`."""
        return tuple(shape)


def _sum(v: Array) -> Array:
    return jnp.sum(v)


def _asf(x: ArrayLike) -> Array:
    """As a floating array (ints become the default float dtype)."""
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.result_type(float))


def _tiny(dtype) -> Array:
    return jnp.asarray(jnp.finfo(dtype).tiny, dtype)


def _log1p(v: Array) -> Array:
    """log(1 + v) to a few ulps (XLA's CPU `log1p` is off by ~100 ulps in float64 near v = -0.4).

    Uses log(w) v / (w - 1) with w = 1 + v (Goldberg's correction of the rounding in w).
    """
    w = 1.0 + v
    exact = w == 1.0
    w_safe = jnp.where(exact, 2.0, w)
    return jnp.where(exact, v, jnp.log(w_safe) * (v / (w_safe - 1.0)))


def _log1mexp(x: Array) -> Array:
    """log(1 - exp(-x)) for x > 0, stable at both ends (Maechler 2012)."""
    return jnp.where(x < jnp.log(2.0), jnp.log(-jnp.expm1(-x)), _log1p(-jnp.exp(-x)))


def _above(bound: Any, dtype) -> Array:
    """The smallest value of `dtype` strictly above `bound` (the first attainable point inside)."""
    b = jnp.asarray(bound, dtype)
    b0 = jax.lax.stop_gradient(b)  # nextafter has no derivative: the step is a constant
    return b + (jnp.nextafter(b0, jnp.asarray(jnp.inf, dtype)) - b0)


def _below(bound: Any, dtype) -> Array:
    """The largest value of `dtype` strictly below `bound`."""
    b = jnp.asarray(bound, dtype)
    b0 = jax.lax.stop_gradient(b)  # nextafter has no derivative: the step is a constant
    return b + (jnp.nextafter(b0, jnp.asarray(-jnp.inf, dtype)) - b0)


@_pytree
class Identity(Bijector):
    """y = x (the support is all of R)."""

    name = "identity"

    def forward_and_log_det(self, x):
        x = _asf(x)
        return x, jnp.zeros((), x.dtype)

    def inverse_and_log_det(self, y):
        y = _asf(y)
        return y, jnp.zeros((), y.dtype)


@_pytree
class Exp(Bijector):
    """y = exp(x), onto (0, inf). log|J| = sum(x)."""

    name = "exp"

    def forward_and_log_det(self, x):
        x = _asf(x)
        return jnp.maximum(jnp.exp(x), _tiny(x.dtype)), _sum(x)

    def inverse_and_log_det(self, y):
        y = _asf(y)
        x = jnp.log(jnp.maximum(y, _tiny(y.dtype)))
        return x, -_sum(x)


@_pytree
class Softplus(Bijector):
    """y = log(1 + exp(x)), onto (0, inf). log|J| = sum(log sigmoid(x)).

    The inverse is `x = y + log(-expm1(-y))`, exact for small and large `y`.
    """

    name = "softplus"

    def forward_and_log_det(self, x):
        x = _asf(x)
        y = jnp.maximum(jnp.logaddexp(x, 0.0), _tiny(x.dtype))
        return y, _sum(jax.nn.log_sigmoid(x))

    def inverse_and_log_det(self, y):
        y = _asf(y)
        y = jnp.maximum(y, _tiny(y.dtype))
        x = y + _log1mexp(y)
        return x, -_sum(jax.nn.log_sigmoid(x))


@_pytree
class Sigmoid(Bijector):
    """y = 1 / (1 + exp(-x)), onto (0, 1). log|J| = sum(log sigmoid(x) + log sigmoid(-x))."""

    name = "sigmoid"

    def forward_and_log_det(self, x):
        x = _asf(x)
        y = jnp.clip(jax.nn.sigmoid(x), _tiny(x.dtype), _below(1.0, x.dtype))
        return y, _sum(jax.nn.log_sigmoid(x) + jax.nn.log_sigmoid(-x))

    def inverse_and_log_det(self, y):
        y = _asf(y)
        tiny = _tiny(y.dtype)
        y = jnp.clip(y, tiny, 1.0 - jnp.finfo(y.dtype).epsneg)
        x = jnp.log(y) - _log1p(-y)
        return x, -_sum(jax.nn.log_sigmoid(x) + jax.nn.log_sigmoid(-x))


@_pytree(data=("low",))
class LowerBound(Bijector):
    """y = low + exp(x), onto (low, inf). `low` is a scalar or broadcasts to the event."""

    low: Any
    name = "lower_bound"

    def forward_and_log_det(self, x):
        x = _asf(x)
        return jnp.maximum(self.low + jnp.exp(x), _above(self.low, x.dtype)), _sum(x)

    def inverse_and_log_det(self, y):
        y = _asf(y)
        gap = jnp.maximum(y - self.low, _tiny(y.dtype))
        x = jnp.log(gap)
        return x, -_sum(jnp.broadcast_to(x, jnp.shape(y)))


@_pytree(data=("high",))
class UpperBound(Bijector):
    """y = high - exp(x), onto (-inf, high)."""

    high: Any
    name = "upper_bound"

    def forward_and_log_det(self, x):
        x = _asf(x)
        return jnp.minimum(self.high - jnp.exp(x), _below(self.high, x.dtype)), _sum(x)

    def inverse_and_log_det(self, y):
        y = _asf(y)
        x = jnp.log(jnp.maximum(self.high - y, _tiny(y.dtype)))
        return x, -_sum(jnp.broadcast_to(x, jnp.shape(y)))


@_pytree(data=("low", "high"))
class Interval(Bijector):
    """y = low + (high - low) * sigmoid(x), onto (low, high); bounds scalar or per element.

    log|J| = sum(log(high - low) + log sigmoid(x) + log sigmoid(-x)), computed without
    forming `sigmoid(x) * (1 - sigmoid(x))`, so it stays finite for |x| in the hundreds.
    For x > 0 the value is formed as `high - width * sigmoid(-x)` so the upper end keeps
    its relative precision.
    """

    low: Any
    high: Any
    name = "interval"

    def forward_and_log_det(self, x):
        x = _asf(x)
        width = self.high - self.low
        y = jnp.where(x > 0, self.high - width * jax.nn.sigmoid(-x), self.low + width * jax.nn.sigmoid(x))
        y = jnp.clip(y, _above(self.low, x.dtype), _below(self.high, x.dtype))
        log_det = jnp.log(width) + jax.nn.log_sigmoid(x) + jax.nn.log_sigmoid(-x)
        return y, _sum(jnp.broadcast_to(log_det, x.shape))

    def inverse_and_log_det(self, y):
        y = _asf(y)
        tiny = _tiny(y.dtype)
        # log(y - low) - log(high - y): exact near both ends, unlike logit((y - low) / width).
        lo = jnp.maximum(y - self.low, tiny)
        hi = jnp.maximum(self.high - y, tiny)
        x = jnp.log(lo) - jnp.log(hi)
        width = self.high - self.low
        log_det = jnp.log(width) + jax.nn.log_sigmoid(x) + jax.nn.log_sigmoid(-x)
        return x, -_sum(jnp.broadcast_to(log_det, jnp.shape(y)))


@_pytree(data=("loc", "scale"))
class Affine(Bijector):
    """y = loc + scale * x (Stan's offset/multiplier); `scale` must be non-zero."""

    loc: Any = 0.0
    scale: Any = 1.0
    name = "affine"

    def forward_and_log_det(self, x):
        x = _asf(x)
        y = self.loc + self.scale * x
        log_det = jnp.broadcast_to(jnp.log(jnp.abs(self.scale)), x.shape)
        return y, _sum(log_det).astype(y.dtype)  # the log-det follows the value's dtype

    def inverse_and_log_det(self, y):
        y = _asf(y)
        x = (y - self.loc) / self.scale
        log_det = jnp.broadcast_to(jnp.log(jnp.abs(self.scale)), jnp.shape(y))
        return x, -_sum(log_det).astype(x.dtype)


@_pytree(data=("bijectors",))
class Chain(Bijector):
    """Composition: `Chain((f, g)).forward(x) == f.forward(g.forward(x))` (rightmost first)."""

    bijectors: tuple = ()
    name = "chain"

    def forward_and_log_det(self, x):
        total = 0.0
        for b in reversed(self.bijectors):
            x, ld = b.forward_and_log_det(x)
            total = total + ld
        return x, jnp.asarray(total, jnp.result_type(x))

    def inverse_and_log_det(self, y):
        total = 0.0
        for b in self.bijectors:
            y, ld = b.inverse_and_log_det(y)
            total = total + ld
        return y, jnp.asarray(total, jnp.result_type(y))

    def forward_shape(self, shape):
        for b in reversed(self.bijectors):
            shape = b.forward_shape(shape)
        return tuple(shape)

    def inverse_shape(self, shape):
        for b in self.bijectors:
            shape = b.inverse_shape(shape)
        return tuple(shape)


@_pytree(data=("bijector",))
class Invert(Bijector):
    """The inverse map: forward and inverse swapped (log-dets swap with them)."""

    bijector: Any
    name = "invert"

    def forward_and_log_det(self, x):
        return self.bijector.inverse_and_log_det(x)

    def inverse_and_log_det(self, y):
        return self.bijector.forward_and_log_det(y)

    def forward_shape(self, shape):
        return self.bijector.inverse_shape(shape)

    def inverse_shape(self, shape):
        return self.bijector.forward_shape(shape)


# ---------------------------------------------------------------------------------------------
# Multivariate bijectors
# ---------------------------------------------------------------------------------------------


def _vector(x: ArrayLike, who: str) -> Array:
    """One vector event as a floating array; a static shape error names the bijector."""
    x = _asf(x)
    if x.ndim != 1:
        raise ValueError(f"{who} acts on one vector event of shape (n,), got shape {x.shape}; "
                         "use jax.vmap for a batch of events")
    return x


def _square(y: ArrayLike, who: str) -> Array:
    """One square-matrix event as a floating array."""
    y = _asf(y)
    if y.ndim != 2 or y.shape[0] != y.shape[1]:
        raise ValueError(f"{who} acts on one (K, K) matrix event, got shape {y.shape}; "
                         "use jax.vmap for a batch of events")
    return y


def _vector_shape(shape: tuple[int, ...], who: str) -> int:
    shape = tuple(shape)
    if len(shape) != 1:
        raise ValueError(f"{who} events are vectors of shape (n,), got shape {shape}")
    return int(shape[0])


def _matrix_shape(shape: tuple[int, ...], who: str) -> int:
    shape = tuple(shape)
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"{who} events are square (K, K) matrices, got shape {shape}")
    return int(shape[0])


def _triangle_side(n: int, strict: bool, who: str) -> int:
    """K such that the (strict) lower triangle of a K x K matrix has n entries."""
    side = int(round((math.sqrt(8 * n + 1) + (1 if strict else -1)) / 2))
    if (side * (side - 1) if strict else side * (side + 1)) // 2 != n:
        what = "K(K-1)/2" if strict else "K(K+1)/2"
        raise ValueError(f"{who} needs an unconstrained vector of length {what} for some K, got length {n}")
    return side


def _exclusive_cumsum(v: Array) -> Array:
    """Cumulative sum along the last axis that excludes the current entry (starts at 0)."""
    head = jnp.zeros(v.shape[:-1] + (1,), v.dtype)
    return jnp.concatenate([head, jnp.cumsum(v[..., :-1], axis=-1)], axis=-1)


def _reverse_cumsum(v: Array) -> Array:
    """out[..., k] = sum_{j >= k} v[..., j]: tails summed from the small end (no cancellation)."""
    return jnp.flip(jnp.cumsum(jnp.flip(v, -1), axis=-1), -1)


def _safe_log(v: Array) -> Array:
    return jnp.log(jnp.maximum(v, _tiny(v.dtype)))


def _increasing_sum(first: Array, steps: Array) -> Array:
    """y_0 = first, y_k = y_{k-1} + steps_k, summed in order, each strictly above the last.

    Summing in order (one rounding per entry) makes `y_k - y_{k-1}` the rounded step itself; a
    step below half an ulp of y_{k-1} would be absorbed, so y_k is raised to the next float
    (a rounding fact: the gap can only be read back to an ulp of y, see "Attainable values").
    """

    def add(prev, step):
        nxt = jnp.maximum(prev + step, _above(prev, prev.dtype))
        return nxt, nxt

    _, rest = jax.lax.scan(add, first, steps)
    return jnp.concatenate([first[None], rest])


@_pytree
class StickBreaking(Bijector):
    """Stan's stick-breaking map from R^{K-1} onto the open simplex of K entries.

    With the offset `log(K - k)` (k = 1..K-1) so that x = 0 gives the uniform simplex:

        z_k = sigmoid(x_k - log(K - k)),   r_1 = 1,   r_{k+1} = r_k (1 - z_k),
        y_k = r_k z_k  (k < K),            y_K = r_K.

    The Jacobian of x -> y_{1:K-1} is lower triangular with diagonal r_k z_k (1 - z_k), so

        log|det J| = sum_k [log z_k + log(1 - z_k) + log r_k],

    all computed in log space (`log_sigmoid` for both logs of z, `log r` as a cumulative sum
    of `log(1 - z)`); the entries are `exp` of their logs. The inverse reads the stick
    remainders as tail sums `r_k = sum_{j >= k} y_j`, so
    `x_k = log y_k - log r_{k+1} + log(K - k)` stays exact near the simplex's faces.

    Shapes: `(K-1,) <-> (K,)`.

    Example:
      >>> import jax.numpy as jnp
      >>> StickBreaking().forward(jnp.zeros(3))
      Array([0.25, 0.25, 0.25, 0.25], dtype=float32)

    References:
      Stan Reference Manual, "Unit simplex" transform.
    """

    name = "stick_breaking"

    @staticmethod
    def _offset(n: int, dtype) -> Array:
        return jnp.log(jnp.arange(n, 0, -1).astype(dtype))  # log(K - k), k = 1..K-1

    def forward_and_log_det(self, x):
        x = _vector(x, "StickBreaking")
        u = x - self._offset(x.shape[0], x.dtype)
        log_z, log_1mz = jax.nn.log_sigmoid(u), jax.nn.log_sigmoid(-u)
        log_r = _exclusive_cumsum(log_1mz)
        log_y = jnp.concatenate([log_r + log_z, jnp.sum(log_1mz, keepdims=True)])
        return jnp.maximum(jnp.exp(log_y), _tiny(x.dtype)), jnp.sum(log_z + log_1mz + log_r)

    def inverse_and_log_det(self, y):
        y = _vector(y, "StickBreaking")
        log_y = _safe_log(y)
        log_r = _safe_log(_reverse_cumsum(y))
        x = log_y[:-1] - log_r[1:] + self._offset(y.shape[0] - 1, y.dtype)
        # log z_k + log(1 - z_k) + log r_k = log y_k + log r_{k+1} - log r_k
        return x, -jnp.sum(log_y[:-1] + log_r[1:] - log_r[:-1])

    def forward_shape(self, shape):
        return (_vector_shape(shape, "StickBreaking") + 1,)

    def inverse_shape(self, shape):
        k = _vector_shape(shape, "StickBreaking")
        if k < 1:
            raise ValueError(f"StickBreaking needs a simplex of at least 1 entry, got shape {tuple(shape)}")
        return (k - 1,)


@_pytree
class Ordered(Bijector):
    """R^K onto strictly increasing vectors: y_1 = x_1, y_k = y_{k-1} + exp(x_k).

    log|det J| = sum_{k >= 2} x_k (the Jacobian is lower triangular). The inverse is
    `x_1 = y_1`, `x_k = log(y_k - y_{k-1})`. Shapes: `(K,) <-> (K,)`.

    The sum runs in order, one rounding per entry, and an entry that rounding would make equal
    to its predecessor (a step below half an ulp of y_{k-1}) is raised to the next float, so the
    output is strictly increasing for every finite x. The round trip is limited by y itself:
    the step exp(x_k) is stored inside y_k, so x_k reads back to u (|y_{k-1}| + |y_k|) / exp(x_k)
    (x = (5, -5) in float32: 2e-3), which the inverse attains; no formula can do better.

    Example:
      >>> import jax.numpy as jnp
      >>> Ordered().forward(jnp.array([1.0, 0.0, 0.0]))
      Array([1., 2., 3.], dtype=float32)
    """

    name = "ordered"

    def forward_and_log_det(self, x):
        x = _vector(x, "Ordered")
        return _increasing_sum(x[0], jnp.exp(x[1:])), jnp.sum(x[1:])

    def inverse_and_log_det(self, y):
        y = _vector(y, "Ordered")
        x = jnp.concatenate([y[:1], _safe_log(jnp.diff(y))])
        return x, -jnp.sum(x[1:])

    def forward_shape(self, shape):
        return (_vector_shape(shape, "Ordered"),)

    inverse_shape = forward_shape


@_pytree
class PositiveOrdered(Bijector):
    """R^K onto increasing positive vectors: y_k = sum_{j <= k} exp(x_j).

    log|det J| = sum_k x_k. Shapes: `(K,) <-> (K,)`. Summed in order and kept strictly
    increasing and positive, with the round-trip precision of `Ordered`.

    Example:
      >>> import jax.numpy as jnp
      >>> PositiveOrdered().forward(jnp.zeros(3))
      Array([1., 2., 3.], dtype=float32)
    """

    name = "positive_ordered"

    def forward_and_log_det(self, x):
        x = _vector(x, "PositiveOrdered")
        steps = jnp.exp(x)
        return _increasing_sum(jnp.maximum(steps[0], _tiny(x.dtype)), steps[1:]), jnp.sum(x)

    def inverse_and_log_det(self, y):
        y = _vector(y, "PositiveOrdered")
        x = _safe_log(jnp.diff(y, prepend=jnp.zeros((1,), y.dtype)))
        return x, -jnp.sum(x)

    def forward_shape(self, shape):
        return (_vector_shape(shape, "PositiveOrdered"),)

    inverse_shape = forward_shape


@_pytree
class SumToZero(Bijector):
    """Stan's (2.36) isometric map from R^{K-1} onto {y in R^K : sum(y) = 0}.

    y = V x, where the columns of the K x (K-1) matrix V are the orthonormal Helmert vectors
    `v_j = (1, ..., 1, -j, 0, ..., 0) / sqrt(j (j + 1))` (j ones), j = 1..K-1; V is applied
    with cumulative sums in O(K), never formed. The inverse is the projection `x = V^T y`.

    Log-det convention: the map onto the first K-1 entries, x -> (V x)_{1:K-1}. Completing V
    with the unit column 1/sqrt(K) gives an orthogonal matrix, whose minor is
    `det V_{1:K-1} = ±1/sqrt(K)`, so log|det J| = -0.5 log K (constant).

    Shapes: `(K-1,) <-> (K,)`.

    References:
      Stan Reference Manual (2.36), "Zero sum vector" transform.
    """

    name = "sum_to_zero"

    def forward_and_log_det(self, x):
        x = _vector(x, "SumToZero")
        n = jnp.arange(1, x.shape[0] + 1).astype(x.dtype)
        w = x / jnp.sqrt(n * (n + 1.0))
        zero = jnp.zeros((1,), x.dtype)
        y = jnp.concatenate([_reverse_cumsum(w), zero]) - jnp.concatenate([zero, n * w])
        return y, jnp.asarray(-0.5 * math.log(x.shape[0] + 1), x.dtype)

    def inverse_and_log_det(self, y):
        y = _vector(y, "SumToZero")
        n = jnp.arange(1, y.shape[0]).astype(y.dtype)
        x = (jnp.cumsum(y)[:-1] - n * y[1:]) / jnp.sqrt(n * (n + 1.0))
        return x, jnp.asarray(0.5 * math.log(y.shape[0]), y.dtype)

    def forward_shape(self, shape):
        return (_vector_shape(shape, "SumToZero") + 1,)

    def inverse_shape(self, shape):
        k = _vector_shape(shape, "SumToZero")
        if k < 1:
            raise ValueError(f"SumToZero needs at least 1 entry, got shape {tuple(shape)}")
        return (k - 1,)


def _corr_cholesky_forward(x: Array) -> tuple[Array, Array, Array]:
    """(L, log|det J| onto the strict lower triangle of L, log diag(L)) for packed x."""
    k = _triangle_side(x.shape[0], True, "CorrCholesky")
    rows, cols = np.tril_indices(k, -1)
    strict = jnp.asarray(np.tril(np.ones((k, k), bool), -1))
    big_x = jnp.zeros((k, k), x.dtype).at[rows, cols].set(x)
    a = jnp.abs(big_x)
    # log(1 - tanh(x)^2) = log(4) - 2|x| - 2 softplus(-2|x|), finite for any x
    log_1mz2 = jnp.where(strict, math.log(4.0) - 2.0 * a - 2.0 * jax.nn.softplus(-2.0 * a), 0.0)
    log_rem = _exclusive_cumsum(log_1mz2)  # log of the squared stick left before column j
    scale = jnp.exp(0.5 * log_rem)
    eye = jnp.eye(k, dtype=bool)
    # the diagonal is floored at the smallest normal: exp(0.5 log r) underflows for |x| in the
    # tens (float32) or hundreds (float64), and a zero diagonal is outside the support
    chol = jnp.where(strict, jnp.tanh(big_x) * scale, jnp.where(eye, jnp.maximum(scale, _tiny(x.dtype)), 0.0))
    log_det = jnp.sum(jnp.where(strict, log_1mz2 + 0.5 * log_rem, 0.0))
    return chol, log_det, 0.5 * jnp.diagonal(log_rem)


def _corr_cholesky_inverse(chol: Array) -> tuple[Array, Array, Array]:
    """(packed x, log|det J_inverse|, log diag(L)) for a correlation Cholesky factor L."""
    k = chol.shape[0]
    rows, cols = np.tril_indices(k, -1)
    lower = jnp.asarray(np.tril(np.ones((k, k), bool)))
    strict = jnp.asarray(np.tril(np.ones((k, k), bool), -1))
    # log of the squared stick left before column j, summed in log space: squares of entries
    # below ~1e-154 (float64) would underflow and lose the row's tail
    log_abs = _safe_log(jnp.abs(chol))
    # masked entries get a finite log far below any square of a normal number (an -inf would
    # turn the derivative of the log-sum-exp into NaN)
    far = 4.0 * jnp.log(_tiny(chol.dtype))
    log_sq = jnp.where(lower, 2.0 * log_abs, far)
    log_rem = jax.lax.cumlogsumexp(log_sq, axis=1, reverse=True)
    log_rem_next = jnp.concatenate([log_rem[:, 1:], jnp.full((k, 1), far, chol.dtype)], axis=1)
    log_rem = jnp.where(strict, log_rem, 0.0)
    log_rem_next = jnp.where(strict, log_rem_next, 0.0)
    # atanh(|L| / sqrt(rem)) = log(sqrt(rem) + |L|) - 0.5 log(rem - L^2), no cancellation
    big_x = jnp.where(strict, jnp.sign(chol) * (jnp.logaddexp(0.5 * log_rem, log_abs) - 0.5 * log_rem_next), 0.0)
    fwd = jnp.sum(jnp.where(strict, log_rem_next - 0.5 * log_rem, 0.0))
    log_diag = jnp.diagonal(log_abs)
    return big_x[rows, cols], -fwd, log_diag


PD_MARGIN_ULPS = 4.0


def pd_margin(k: int, dtype) -> float:
    """gamma(K, dtype) = 4 K eps: the shrinkage that keeps `CorrMatrix`/`CovMatrix` outputs PD.

    The matrix forms return `(1 - gamma) L L^T + gamma diag(L L^T)` (off-diagonal entries scaled by
    `1 - gamma`, a change of a few ulps per entry): its correlation matrix has every eigenvalue
    above gamma minus the rounding of the product (at most ~K eps), so a Cholesky factorisation
    succeeds for every finite input, even where L L^T itself is singular to working precision.
    """
    return float(PD_MARGIN_ULPS * k * np.finfo(np.dtype(dtype)).eps)


def _cpc_cholesky(corr: Array) -> tuple[Array, Array, Array, Array]:
    """Cholesky factor of a correlation matrix through its canonical partial correlations.

    Column by column (j = 0..K-1), for rows i > j:

        z_ij = (C_ij - sum_{k<j} L_ik L_jk) / (L_jj sqrt(r_ij)),   L_ij = z_ij sqrt(r_ij),
        log r_i,j+1 = log r_ij + log(1 - z_ij) + log(1 + z_ij),     L_jj = sqrt(r_jj),

    i.e. the usual Cholesky recursion, but with the squared stick `r` kept as a product in log
    space (never `1 - sum of squares`, which cancels for nearly singular C) and every z clipped
    into (-1, 1), so the result is finite for any finite symmetric input with unit diagonal,
    singular or slightly indefinite ones included. Only the lower triangle of `corr` is read.

    Returns:
      (z, strict lower part of L, log r (log L_jj^2 per row), log|det J| of `CorrCholesky` at
      the recovered point).
    """
    k = corr.shape[0]
    dtype = corr.dtype
    idx = jnp.arange(k)
    edge, tiny = _below(1.0, dtype), _tiny(dtype)

    def column(j, carry):
        low, z, log_rem, log_det = carry
        num = corr[:, j] - low @ low[j]
        denom = jnp.maximum(jnp.exp(0.5 * (log_rem[j] + log_rem)), tiny)
        below = idx > j
        zj = jnp.where(below, jnp.clip(num / denom, -edge, edge), 0.0)
        log_1mz2 = _log1p(-zj) + _log1p(zj)
        low = low.at[:, j].set(zj * jnp.exp(0.5 * log_rem))
        z = z.at[:, j].set(zj)
        log_det = log_det + jnp.sum(jnp.where(below, log_1mz2 + 0.5 * log_rem, 0.0))
        return low, z, log_rem + log_1mz2, log_det

    zeros = jnp.zeros((k, k), dtype)
    init = (zeros, zeros, jnp.zeros((k,), dtype), jnp.zeros((), dtype))
    low, z, log_rem, log_det = jax.lax.fori_loop(0, k, column, init)
    return z, low, log_rem, log_det


def _atanh(z: Array) -> Array:
    return 0.5 * (_log1p(z) - _log1p(-z))


def _gram(chol: Array, gamma: float) -> Array:
    """L L^T with off-diagonal entries scaled by (1 - gamma), exactly symmetric (lower mirrored)."""
    k = chol.shape[0]
    strict = jnp.asarray(np.tril(np.ones((k, k), bool), -1))
    gram = chol @ chol.T
    off = jnp.where(strict, gram, 0.0) * (1.0 - gamma)
    return off + off.T, jnp.diagonal(gram)


def _unshrink(corr: Array, gamma: float) -> Array:
    """Undo `_gram`'s scaling on the (symmetrised) lower triangle; unit diagonal."""
    k = corr.shape[0]
    strict = jnp.asarray(np.tril(np.ones((k, k), bool), -1))
    sym = 0.5 * (corr + corr.T)
    return jnp.where(strict, sym / (1.0 - gamma), jnp.eye(k, dtype=corr.dtype))


@_pytree
class CorrCholesky(Bijector):
    """R^{K(K-1)/2} onto lower Cholesky factors of K x K correlation matrices (Stan/LKJ).

    The packed x (rows of the strict lower triangle, in order) become canonical partial
    correlations z = tanh(x) in (-1, 1), and row i of L is built by breaking a stick of
    squared length 1:

        L_ij = z_ij sqrt(r_ij)  (j < i),   L_ii = sqrt(r_ii),   r_ij = prod_{j' < j} (1 - z_ij'^2),

    so every row has unit norm and a positive diagonal. The Jacobian of x -> strict lower
    triangle of L is triangular in row-major order, with

        log|det J| = sum_{i > j} [log(1 - z_ij^2) + 0.5 log r_ij],

    where log(1 - tanh(x)^2) = log 4 - 2|x| - 2 softplus(-2|x|) and log r is a cumulative sum
    of those, so nothing underflows to log(0). Shapes: `(K(K-1)/2,) <-> (K, K)`.

    References:
      Lewandowski, Kurowicka and Joe (2009); Stan Reference Manual, "Cholesky factors of
      correlation matrices".
    """

    name = "corr_cholesky"

    def forward_and_log_det(self, x):
        chol, log_det, _ = _corr_cholesky_forward(_vector(x, "CorrCholesky"))
        return chol, log_det

    def inverse_and_log_det(self, y):
        x, log_det, _ = _corr_cholesky_inverse(_square(y, "CorrCholesky"))
        return x, log_det

    def forward_shape(self, shape):
        k = _triangle_side(_vector_shape(shape, "CorrCholesky"), True, "CorrCholesky")
        return (k, k)

    def inverse_shape(self, shape):
        k = _matrix_shape(shape, "CorrCholesky")
        return (k * (k - 1) // 2,)


@_pytree
class CorrMatrix(Bijector):
    """R^{K(K-1)/2} onto K x K correlation matrices: C = L L^T with L from `CorrCholesky`.

    Log-det convention: the map onto the strict lower triangle of C. In row-major order
    dC_ij / dL_ij = L_jj (i > j) on a triangular Jacobian, so

        log|det J| = log|det J_CorrCholesky| + sum_j (K - 1 - j) log L_jj   (j = 0..K-1).

    The output is `(1 - g) L L^T + g I` with g = `pd_margin(K)` = 4 K eps (its off-diagonal
    entries are those of L L^T scaled by 1 - g: a few ulps), built from the lower triangle and
    mirrored, with a unit diagonal: it keeps a Cholesky factorisation for every finite x, also
    where L L^T is singular to working precision (float32 from |x| ~ 2, float64 from ~ 5 for
    K >= 4); the log-det includes the constant K(K-1)/2 log(1 - g). The inverse undoes the
    scaling and factorises through canonical partial correlations (the Cholesky recursion with
    the remaining stick kept as a product in log space, each correlation clipped into (-1, 1)),
    so it is finite for any symmetric matrix with unit diagonal, even singular or slightly
    indefinite ones; it recovers x to about u (1 + |x| + cond(C)) (see "Attainable values").
    Shapes: `(K(K-1)/2,) <-> (K, K)`.
    """

    name = "corr_matrix"

    def forward_and_log_det(self, x):
        chol, log_det, log_diag = _corr_cholesky_forward(_vector(x, "CorrMatrix"))
        k = chol.shape[0]
        gamma = pd_margin(k, chol.dtype)
        off, _ = _gram(chol, gamma)
        corr = off + jnp.eye(k, dtype=chol.dtype)
        power = jnp.arange(k - 1, -1, -1).astype(chol.dtype)
        shrink = 0.5 * k * (k - 1) * math.log1p(-gamma)
        return corr, log_det + jnp.sum(power * log_diag) + shrink

    def inverse_and_log_det(self, y):
        corr = _square(y, "CorrMatrix")
        k = corr.shape[0]
        gamma = pd_margin(k, corr.dtype)
        z, _, log_rem, chol_log_det = _cpc_cholesky(_unshrink(corr, gamma))
        rows, cols = np.tril_indices(k, -1)
        power = jnp.arange(k - 1, -1, -1).astype(corr.dtype)
        shrink = 0.5 * k * (k - 1) * math.log1p(-gamma)
        return _atanh(z[rows, cols]), -(chol_log_det + jnp.sum(power * 0.5 * log_rem) + shrink)

    forward_shape = CorrCholesky.forward_shape
    inverse_shape = CorrCholesky.inverse_shape


def _cholesky_cov_forward(x: Array) -> tuple[Array, Array]:
    """(L with exp diagonal, the packed diagonal x_jj) for packed x of length K(K+1)/2."""
    k = _triangle_side(x.shape[0], False, "CholeskyCov")
    rows, cols = np.tril_indices(k)
    on_diag = jnp.asarray(rows == cols)
    values = jnp.where(on_diag, jnp.exp(jnp.where(on_diag, x, 0.0)), x)
    chol = jnp.zeros((k, k), x.dtype).at[rows, cols].set(values)
    return chol, x[np.flatnonzero(rows == cols)]


def _cholesky_cov_inverse(chol: Array) -> tuple[Array, Array]:
    """(packed x, log diag(L)) for a lower-triangular L with positive diagonal."""
    k = chol.shape[0]
    rows, cols = np.tril_indices(k)
    on_diag = jnp.asarray(rows == cols)
    values = chol[rows, cols]
    x = jnp.where(on_diag, _safe_log(jnp.where(on_diag, values, 1.0)), values)
    return x, x[np.flatnonzero(rows == cols)]


@_pytree
class CholeskyCov(Bijector):
    """R^{K(K+1)/2} onto lower-triangular matrices with positive diagonal (covariance factors).

    The packed x fill the lower triangle row by row; diagonal entries go through `exp`.
    log|det J| (onto the lower triangle, diagonal included) = sum_j x_jj.
    Shapes: `(K(K+1)/2,) <-> (K, K)`.
    """

    name = "cholesky_cov"

    def forward_and_log_det(self, x):
        chol, diag = _cholesky_cov_forward(_vector(x, "CholeskyCov"))
        return chol, jnp.sum(diag)

    def inverse_and_log_det(self, y):
        x, log_diag = _cholesky_cov_inverse(_square(y, "CholeskyCov"))
        return x, -jnp.sum(log_diag)

    def forward_shape(self, shape):
        k = _triangle_side(_vector_shape(shape, "CholeskyCov"), False, "CholeskyCov")
        return (k, k)

    def inverse_shape(self, shape):
        k = _matrix_shape(shape, "CholeskyCov")
        return (k * (k + 1) // 2,)


@_pytree
class CovMatrix(Bijector):
    """R^{K(K+1)/2} onto symmetric positive-definite K x K matrices: S = L L^T, L = `CholeskyCov`.

    Log-det convention: the map onto the lower triangle of S (diagonal included). In
    row-major order dS_ij / dL_ij = L_jj (i > j) and dS_jj / dL_jj = 2 L_jj, so with
    log L_jj = x_jj,

        log|det J| = K log 2 + sum_j (K - j + 1) x_jj + K(K-1)/2 log(1 - g)    (j = 0..K-1),

    the last term from the off-diagonal scaling by 1 - g, g = `pd_margin(K)` (see `CorrMatrix`:
    the output keeps a Cholesky factorisation for every finite x). The inverse scales S to unit
    diagonal and factorises it as `CorrMatrix` does, so it never returns NaN, with
    log L_jj = log sqrt(S_jj) + 0.5 log r_j formed in log space. Shapes: `(K(K+1)/2,) <-> (K, K)`.

    References:
      Stan Reference Manual, "Covariance matrices".
    """

    name = "cov_matrix"

    def forward_and_log_det(self, x):
        chol, diag = _cholesky_cov_forward(_vector(x, "CovMatrix"))
        k = chol.shape[0]
        gamma = pd_margin(k, chol.dtype)
        off, variances = _gram(chol, gamma)
        power = jnp.arange(k + 1, 1, -1).astype(chol.dtype)
        shrink = 0.5 * k * (k - 1) * math.log1p(-gamma)
        return off + jnp.diag(variances), k * math.log(2.0) + jnp.sum(power * diag) + shrink

    def inverse_and_log_det(self, y):
        cov = _square(y, "CovMatrix")
        k = cov.shape[0]
        gamma = pd_margin(k, cov.dtype)
        log_sd = 0.5 * _safe_log(jnp.diagonal(cov))
        sd = jnp.exp(log_sd)
        corr = (cov / sd[:, None]) / sd[None, :]
        _, low, log_rem, _ = _cpc_cholesky(_unshrink(corr, gamma))
        log_diag = log_sd + 0.5 * log_rem  # log L_jj, in log space (never log of a cancelled sum)
        rows, cols = np.tril_indices(k)
        x = jnp.where(jnp.asarray(rows == cols), log_diag[rows], (sd[:, None] * low)[rows, cols])
        power = jnp.arange(k + 1, 1, -1).astype(cov.dtype)
        shrink = 0.5 * k * (k - 1) * math.log1p(-gamma)
        return x, -(k * math.log(2.0) + jnp.sum(power * log_diag) + shrink)

    forward_shape = CholeskyCov.forward_shape
    inverse_shape = CholeskyCov.inverse_shape


def _batched(fn, num_batch_dims: int):
    for _ in range(num_batch_dims):
        fn = jax.vmap(fn)
    return fn


@_pytree(data=("bijectors",))
class Joint(Bijector):
    """A block bijector: one flat vector in R^K <-> a dict of named constrained arrays.

    Block `name` takes `prod(batch_shape) * prod(inverse_shape(event_shape))` consecutive
    reals of x (in the order of `bijectors`), reshaped to `batch_shape + unconstrained event`;
    its bijector is vmapped over the `batch_shape` of independent events. The log-det is the
    sum over blocks and events (the Jacobian is block diagonal).

    Args:
      bijectors: dict mapping each name to the bijector of one event.
      event_shapes: dict mapping each name to its *constrained* event shape.
      batch_shapes: optional dict mapping names to leading shapes of independent events
        (default `()` for every name).

    `forward_shape((K,))` returns the dict of constrained shapes and `inverse_shape(dict)`
    returns `(K,)`.

    Example:
      >>> import jax.numpy as jnp
      >>> j = Joint({"w": Identity(), "p": StickBreaking()}, {"w": (2,), "p": (3,)})
      >>> j.dim
      4
      >>> {k: v.shape for k, v in j.forward(jnp.zeros(4)).items()}
      {'w': (2,), 'p': (3,)}
    """

    bijectors: Any
    event_shapes: Any
    batch_shapes: Any = None
    name = "joint"

    def __post_init__(self):
        # Called again on pytree unflattening, when the shapes are already normalised tuples.
        if isinstance(self.event_shapes, tuple) and isinstance(self.batch_shapes, tuple):
            return
        if not isinstance(self.bijectors, dict) or not self.bijectors:
            raise TypeError(f"bijectors must be a non-empty dict of name -> Bijector, got {self.bijectors!r}")
        names = tuple(self.bijectors)
        batch_shapes = {} if self.batch_shapes is None else dict(self.batch_shapes)
        for name, b in self.bijectors.items():
            if not isinstance(b, Bijector):
                raise TypeError(f"bijector for {name!r} must be a Bijector, got {type(b).__name__}")
        if set(self.event_shapes) != set(names) or not set(batch_shapes) <= set(names):
            raise ValueError(f"event_shapes (and batch_shapes) must have the names {list(names)}; got "
                             f"{list(self.event_shapes)} and {list(batch_shapes)}")
        event = tuple((n, tuple(int(s) for s in self.event_shapes[n])) for n in names)
        batch = tuple((n, tuple(int(s) for s in batch_shapes.get(n, ()))) for n in names)
        object.__setattr__(self, "event_shapes", event)
        object.__setattr__(self, "batch_shapes", batch)
        for n, e in event:
            self.bijectors[n].inverse_shape(e)  # raises a ValueError for an impossible event shape

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.event_shapes)

    def _blocks(self):
        """(name, bijector, batch_shape, constrained event, unconstrained event, size) per block."""
        for (n, event), (_, batch) in zip(self.event_shapes, self.batch_shapes):
            b = self.bijectors[n]
            uevent = tuple(b.inverse_shape(event))
            yield n, b, batch, event, uevent, math.prod(batch) * math.prod(uevent)

    @property
    def dim(self) -> int:
        """K, the total number of unconstrained reals."""
        return sum(block[-1] for block in self._blocks())

    def split(self, x: ArrayLike) -> dict[str, Array]:
        """Cut a flat (K,) vector into unconstrained arrays of shape `batch + unconstrained event`."""
        x = _asf(x)
        if x.shape != (self.dim,):
            raise ValueError(f"Joint expects one flat vector of shape ({self.dim},), got {x.shape}; "
                             "use jax.vmap for a batch")
        out, start = {}, 0
        for n, _, batch, _, uevent, size in self._blocks():
            out[n] = x[start:start + size].reshape(batch + uevent)
            start += size
        return out

    def forward_and_log_det(self, x):
        pieces = self.split(x)
        out, total = {}, jnp.zeros((), _asf(x).dtype)
        for n, b, batch, _, _, _ in self._blocks():
            value, log_det = _batched(b.forward_and_log_det, len(batch))(pieces[n])
            out[n] = value
            total = total + jnp.sum(log_det)
        return out, total

    def inverse_and_log_det(self, y):
        if not hasattr(y, "keys") or set(y.keys()) != set(self.names):
            got = list(y.keys()) if hasattr(y, "keys") else type(y).__name__
            raise ValueError(f"Joint.inverse expects a dict with exactly the names {list(self.names)}, got {got}")
        pieces, total = [], None
        for n, b, batch, event, _, _ in self._blocks():
            value = _asf(y[n])
            if value.shape != batch + event:
                raise ValueError(f"{n!r} must have shape {batch + event}, got {value.shape}")
            x, log_det = _batched(b.inverse_and_log_det, len(batch))(value)
            pieces.append(jnp.reshape(x, (-1,)))
            total = jnp.sum(log_det) if total is None else total + jnp.sum(log_det)
        return jnp.concatenate(pieces), total

    def forward_shape(self, shape):
        if tuple(shape) != (self.dim,):
            raise ValueError(f"Joint takes unconstrained shape ({self.dim},), got {tuple(shape)}")
        return {n: batch + event for n, _, batch, event, _, _ in self._blocks()}

    def inverse_shape(self, shape):
        expected = {n: batch + event for n, _, batch, event, _, _ in self._blocks()}
        if not hasattr(shape, "keys") or {n: tuple(s) for n, s in shape.items()} != expected:
            raise ValueError(f"Joint takes constrained shapes {expected}, got {shape!r}")
        return (self.dim,)
