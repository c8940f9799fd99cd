"""Supports: the constrained sets parameters live in, each with its default bijector.

A `Support` has an `event_shape` (what one bijector call handles: `()`-shaped elementwise
supports take the whole array as one event; a simplex event is `(K,)`) and a `batch_shape`
of independent events in front of it, so `shape == batch_shape + event_shape`.
`bijector_for(support)` gives the bijector whose `forward` maps R^k onto the support.

Example:
  >>> import advi_jax as aj
  >>> aj.positive((3,)).shape
  (3,)
  >>> float(aj.bijector_for(aj.interval(0.0, 1.0)).forward(0.0))
  0.5
  >>> aj.simplex(3, batch_shape=(2,)).shape
  (2, 3)

Membership checks (`Support.contains`) test the open set: a bound, an ordering, a positive
diagonal or positive definiteness is checked strictly, and equalities such as "sums to 1",
"is symmetric" or "rows have unit norm" allow a floating-point slack of `sqrt(eps)` of the
value's dtype (about 3e-4 in float32, 1.5e-8 in float64), relative to the entries' scale. The
simplex is the exception: its entries are checked `>= 0` (a face of the simplex is a valid
point for `StickBreaking.inverse`). Every value the default bijector's `forward` returns for a
finite input is a member: bounded outputs are kept at least one float inside their bounds (see
"Attainable values" in `advi_jax.bijectors`), and positive definiteness means "has a Cholesky
factorisation in the value's precision" (that of the matrix scaled to unit diagonal, so the
test does not depend on the scale of the variances).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from advi_jax import bijectors as bij
from advi_jax._types import ArrayLike, as_shape, check_positive_int, is_concrete

__all__ = [
    "Support",
    "bijector_for",
    "cholesky_cov",
    "corr_cholesky",
    "corr_matrix",
    "cov_cholesky",
    "cov_matrix",
    "interval",
    "lower_bounded",
    "ordered",
    "positive",
    "positive_ordered",
    "real",
    "simplex",
    "sum_to_zero",
    "unit_interval",
    "upper_bounded",
]


@dataclasses.dataclass(frozen=True, eq=False)
class Support:
    """A constrained set of arrays of shape `batch_shape + event_shape`.

    Attributes:
      name: short description, e.g. "positive" or "simplex(4)".
      event_shape: shape of one constrained event handled by `bijector`.
      batch_shape: leading shape of independent events.
      bijector: the default bijector (forward: unconstrained event -> constrained event).
      contains: function of one constrained event returning a boolean scalar (membership).
      continuous: False for discrete supports, which ADVI cannot handle.
    """

    name: str
    event_shape: tuple[int, ...]
    batch_shape: tuple[int, ...]
    bijector: bij.Bijector
    contains: Callable[[Any], Any]
    continuous: bool = True

    @property
    def shape(self) -> tuple[int, ...]:
        """The full constrained shape, `batch_shape + event_shape`."""
        return self.batch_shape + self.event_shape

    @property
    def unconstrained_event_shape(self) -> tuple[int, ...]:
        return tuple(self.bijector.inverse_shape(self.event_shape))

    @property
    def unconstrained_size(self) -> int:
        """Number of reals this support takes in the flat vector in R^K."""
        return math.prod(self.batch_shape) * math.prod(self.unconstrained_event_shape)

    def check(self, value: ArrayLike, name: str = "value", atol: float | None = None) -> None:
        """Raise ValueError if a concrete `value` has the wrong shape or lies outside the support.

        Tracers are not checked (their values are unknown until run time).
        """
        if not is_concrete(value):
            return
        arr = np.asarray(value)
        if arr.shape != self.shape:
            raise ValueError(f"{name!r} must have shape {self.shape} for support {self.name}, got {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name!r} has non-finite entries; support {self.name} needs finite values")
        flat = jnp.reshape(jnp.asarray(arr), (-1,) + self.event_shape)
        ok = np.asarray([bool(self.contains(e)) for e in flat]) if flat.shape[0] <= 64 else None
        if ok is None:
            import jax

            ok = np.asarray(jax.vmap(self.contains)(flat))
        if not np.all(ok):
            bad = int(np.argmin(ok))
            raise ValueError(
                f"{name!r} is outside its support {self.name} (first offending event at flat batch index {bad}: "
                f"{np.asarray(flat[bad]).tolist()})"
            )

    def _key(self):
        """Value identity: name, shapes and the bijector's type, structure and concrete leaves."""
        leaves, treedef = jax.tree_util.tree_flatten(self.bijector)
        if not is_concrete(leaves):
            return (id(self),)
        arrays = tuple((np.asarray(x).dtype.str, np.shape(x), np.asarray(x).tobytes()) for x in leaves)
        return (self.name, self.event_shape, self.batch_shape, self.continuous, treedef, arrays)

    def __eq__(self, other) -> bool:
        # Supports built the same way are equal, so a model rebuilt with the same supports (and
        # the same log joint) has the same pytree structure and reuses compiled fits.
        return isinstance(other, Support) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Support({self.name}, shape={self.shape})"


def bijector_for(support: Support) -> bij.Bijector:
    """The default bijector of `support` (its forward maps unconstrained reals onto it)."""
    if not isinstance(support, Support):
        raise TypeError(f"support must be an advi_jax Support (e.g. aj.positive()), got {type(support).__name__}")
    return support.bijector


def _elementwise(name: str, shape: Any, bijector: bij.Bijector, contains: Callable) -> Support:
    return Support(name, as_shape(shape), (), bijector, lambda v: jnp.all(contains(v)))


def real(shape: Any = ()) -> Support:
    """All of R^shape (identity bijector)."""
    return _elementwise("real", shape, bij.Identity(), lambda v: jnp.isfinite(v))


def positive(shape: Any = (), transform: str = "exp") -> Support:
    """(0, inf)^shape. `transform` is "exp" (Stan's choice, the default) or "softplus"."""
    if transform == "exp":
        b = bij.Exp()
    elif transform == "softplus":
        b = bij.Softplus()
    else:
        raise ValueError(f"transform must be 'exp' or 'softplus', got {transform!r}")
    return _elementwise("positive", shape, b, lambda v: v > 0)


def _check_bound(value: Any, name: str) -> Any:
    if is_concrete(value):
        try:
            arr = np.asarray(value, dtype=float)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a number or an array of numbers, got {value!r}") from None
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def _bounds_shape(shape: Any, *bounds: Any) -> tuple[int, ...]:
    bshape = np.broadcast_shapes(*(np.shape(b) for b in bounds))
    if shape is None:
        return tuple(bshape)
    shape = as_shape(shape)
    try:
        if np.broadcast_shapes(bshape, shape) != shape:
            raise ValueError
    except ValueError:
        raise ValueError(f"bounds of shape {bshape} do not broadcast to shape {shape}") from None
    return shape


def lower_bounded(low: ArrayLike, shape: Any = None) -> Support:
    """(low, inf)^shape, through y = low + exp(x). `low` is a scalar or broadcasts to `shape`."""
    _check_bound(low, "low")
    return _elementwise(f"lower_bounded({low})", _bounds_shape(shape, low), bij.LowerBound(low), lambda v: v > low)


def upper_bounded(high: ArrayLike, shape: Any = None) -> Support:
    """(-inf, high)^shape, through y = high - exp(x)."""
    _check_bound(high, "high")
    return _elementwise(f"upper_bounded({high})", _bounds_shape(shape, high), bij.UpperBound(high), lambda v: v < high)


def interval(low: ArrayLike, high: ArrayLike, shape: Any = None) -> Support:
    """(low, high)^shape through a scaled sigmoid. Bounds are scalars or arrays broadcasting to `shape`.

    Raises:
      ValueError: if a bound is not finite or `low >= high` anywhere.
    """
    _check_bound(low, "low")
    _check_bound(high, "high")
    if is_concrete((low, high)) and not np.all(np.asarray(low, float) < np.asarray(high, float)):
        raise ValueError(f"interval needs low < high everywhere, got low={low!r}, high={high!r}")
    return _elementwise(
        f"interval({low}, {high})",
        _bounds_shape(shape, low, high),
        bij.Interval(low, high),
        lambda v: (v > low) & (v < high),
    )


def unit_interval(shape: Any = ()) -> Support:
    """(0, 1)^shape through the logistic sigmoid."""
    return _elementwise("unit_interval", shape, bij.Sigmoid(), lambda v: (v > 0) & (v < 1))


# ---------------------------------------------------------------------------------------------
# Multivariate supports: one event is a vector or a matrix; `batch_shape` stacks independent ones
# ---------------------------------------------------------------------------------------------


def _slack(v: Any) -> Any:
    """Float tolerance for equality constraints: sqrt(eps) of the value's dtype."""
    dtype = v.dtype if jnp.issubdtype(v.dtype, jnp.floating) else jnp.result_type(float)
    return float(np.sqrt(np.finfo(dtype).eps))


def _batch(batch_shape: Any) -> tuple[int, ...]:
    return as_shape(batch_shape, "batch_shape")


def _event_support(name: str, event_shape: tuple[int, ...], batch_shape: Any, bijector: bij.Bijector,
                   contains: Callable) -> Support:
    def member(v):
        v = jnp.asarray(v)
        if not jnp.issubdtype(v.dtype, jnp.floating):
            v = v.astype(jnp.result_type(float))
        return jnp.all(jnp.isfinite(v)) & contains(v)

    return Support(name, event_shape, _batch(batch_shape), bijector, member)


def _in_simplex(v):
    tol = _slack(v)
    return jnp.all(v >= -tol) & (jnp.abs(jnp.sum(v) - 1.0) <= tol)


def simplex(K: int, *, batch_shape: Any = ()) -> Support:
    """Probability vectors of K entries (>= 0, summing to 1), through `StickBreaking`.

    The unconstrained event has K-1 entries; x = 0 maps to the uniform vector.

    Args:
      K: number of entries, an int >= 2.
      batch_shape: leading shape of independent simplices.

    Raises:
      TypeError, ValueError: if K is not an int >= 2 or batch_shape is not a shape.

    Example:
      >>> import advi_jax as aj
      >>> aj.simplex(3).unconstrained_event_shape
      (2,)
    """
    K = check_positive_int(K, "K", 2)
    return _event_support(f"simplex({K})", (K,), batch_shape, bij.StickBreaking(), _in_simplex)


def ordered(K: int, *, batch_shape: Any = ()) -> Support:
    """Strictly increasing vectors of K reals, through `Ordered` (y_k = y_{k-1} + exp(x_k)).

    Args:
      K: length, an int >= 2.
      batch_shape: leading shape of independent vectors.
    """
    K = check_positive_int(K, "K", 2)
    return _event_support(f"ordered({K})", (K,), batch_shape, bij.Ordered(), lambda v: jnp.all(jnp.diff(v) > 0))


def positive_ordered(K: int, *, batch_shape: Any = ()) -> Support:
    """Strictly increasing vectors of K positive reals, through `PositiveOrdered`.

    Args:
      K: length, an int >= 2.
      batch_shape: leading shape of independent vectors.
    """
    K = check_positive_int(K, "K", 2)
    return _event_support(f"positive_ordered({K})", (K,), batch_shape, bij.PositiveOrdered(),
                          lambda v: (v[0] > 0) & jnp.all(jnp.diff(v) > 0))


def sum_to_zero(K: int, *, batch_shape: Any = ()) -> Support:
    """Vectors of K reals summing to 0 (e.g. identified random effects), through `SumToZero`.

    The unconstrained event has K-1 entries (Stan's isometric transform).

    Args:
      K: length, an int >= 2.
      batch_shape: leading shape of independent vectors.
    """
    K = check_positive_int(K, "K", 2)

    def contains(v):
        return jnp.abs(jnp.sum(v)) <= _slack(v) * jnp.maximum(1.0, jnp.sum(jnp.abs(v)))

    return _event_support(f"sum_to_zero({K})", (K,), batch_shape, bij.SumToZero(), contains)


def _is_lower(m, tol):
    scale = jnp.maximum(1.0, jnp.max(jnp.abs(m)))
    return jnp.all(jnp.abs(jnp.triu(m, 1)) <= tol * scale)


def _in_corr_cholesky(m):
    tol = _slack(m)
    rows = jnp.sqrt(jnp.sum(jnp.tril(m) ** 2, axis=-1))
    return _is_lower(m, tol) & jnp.all(jnp.diagonal(m) > 0) & jnp.all(jnp.abs(rows - 1.0) <= tol)


def _positive_definite(m):
    """A Cholesky factorisation of the symmetric part, scaled to unit diagonal, exists (finite)."""
    sym = 0.5 * (m + m.T)
    diag = jnp.diagonal(sym)
    sd = jnp.sqrt(jnp.where(diag > 0, diag, 1.0))
    chol = jnp.linalg.cholesky((sym / sd[:, None]) / sd[None, :])
    return jnp.all(diag > 0) & jnp.all(jnp.isfinite(chol)) & jnp.all(jnp.diagonal(chol) > 0)


def _is_symmetric(m, tol):
    scale = jnp.maximum(1.0, jnp.max(jnp.abs(m)))
    return jnp.all(jnp.abs(m - m.T) <= tol * scale)


def _in_corr_matrix(m):
    tol = _slack(m)
    return _is_symmetric(m, tol) & jnp.all(jnp.abs(jnp.diagonal(m) - 1.0) <= tol) & _positive_definite(m)


def _in_cholesky_cov(m):
    return _is_lower(m, _slack(m)) & jnp.all(jnp.diagonal(m) > 0)


def _in_cov_matrix(m):
    return _is_symmetric(m, _slack(m)) & _positive_definite(m)


def corr_cholesky(K: int, *, batch_shape: Any = ()) -> Support:
    """Lower Cholesky factors of K x K correlation matrices, through `CorrCholesky`.

    Members are lower triangular with unit-norm rows and a positive diagonal; the unconstrained
    event has K(K-1)/2 entries. Pair with an LKJ prior on the factor.

    Args:
      K: matrix size, an int >= 2.
      batch_shape: leading shape of independent factors.
    """
    K = check_positive_int(K, "K", 2)
    return _event_support(f"corr_cholesky({K})", (K, K), batch_shape, bij.CorrCholesky(), _in_corr_cholesky)


def corr_matrix(K: int, *, batch_shape: Any = ()) -> Support:
    """K x K correlation matrices (symmetric, unit diagonal, positive definite), via `CorrMatrix`.

    Args:
      K: matrix size, an int >= 2.
      batch_shape: leading shape of independent matrices.
    """
    K = check_positive_int(K, "K", 2)
    return _event_support(f"corr_matrix({K})", (K, K), batch_shape, bij.CorrMatrix(), _in_corr_matrix)


def cholesky_cov(K: int, *, batch_shape: Any = ()) -> Support:
    """Lower-triangular K x K matrices with a positive diagonal (covariance Cholesky factors).

    Through `CholeskyCov` (exp on the diagonal); the unconstrained event has K(K+1)/2 entries.
    `cov_cholesky` is an alias.

    Args:
      K: matrix size, an int >= 2.
      batch_shape: leading shape of independent factors.
    """
    K = check_positive_int(K, "K", 2)
    return _event_support(f"cholesky_cov({K})", (K, K), batch_shape, bij.CholeskyCov(), _in_cholesky_cov)


cov_cholesky = cholesky_cov


def cov_matrix(K: int, *, batch_shape: Any = ()) -> Support:
    """Symmetric positive-definite K x K matrices (covariances), through `CovMatrix`.

    Args:
      K: matrix size, an int >= 2.
      batch_shape: leading shape of independent matrices.
    """
    K = check_positive_int(K, "K", 2)
    return _event_support(f"cov_matrix({K})", (K, K), batch_shape, bij.CovMatrix(), _in_cov_matrix)
