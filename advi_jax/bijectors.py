"""Bijectors: maps from unconstrained reals to constrained supports, with log-det-Jacobians.

Every bijector maps one *event* of unconstrained reals `x` (shape `inverse_shape(out)`) to one
constrained event `y = forward(x)` (shape `forward_shape(in)`), and returns the scalar
log-absolute-determinant of the Jacobian of that map. Elementwise bijectors treat the whole
array as one event and sum their per-element log-dets; `jax.vmap` batches events.

For maps that change dimension (R^{K-1} -> simplex of K entries, R^{K(K-1)/2} -> a K x K
correlation Cholesky factor) the log-det is that of the map onto the *free coordinates* of the
output (for the simplex: its first K-1 entries; for triangular matrices: the strictly or weakly
lower triangle), which is the density convention of Stan and NumPyro.

Subclasses implement `forward_and_log_det` and `inverse_and_log_det` (the latter returns
`log|det J_{forward^{-1}}(y)|`, i.e. minus the forward log-det at the paired point); every other
method is derived from those two. Bijectors are frozen dataclasses registered as pytrees, so
they can be passed through `jax.jit` and `jax.vmap`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from advi_jax._types import Array, ArrayLike

__all__ = [
    "Bijector",
    "Identity",
    "Exp",
    "Softplus",
    "Sigmoid",
    "LowerBound",
    "UpperBound",
    "Interval",
    "Affine",
    "Chain",
    "Invert",
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


def _log1mexp(x: Array) -> Array:
    """log(1 - exp(-x)) for x > 0, stable at both ends (Maechler 2012)."""
    return jnp.where(x < jnp.log(2.0), jnp.log(-jnp.expm1(-x)), jnp.log1p(-jnp.exp(-x)))


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
        return jnp.exp(x), _sum(x)

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
        y = jnp.logaddexp(x, 0.0)
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
        return jax.nn.sigmoid(x), _sum(jax.nn.log_sigmoid(x) + jax.nn.log_sigmoid(-x))

    def inverse_and_log_det(self, y):
        y = _asf(y)
        tiny = _tiny(y.dtype)
        y = jnp.clip(y, tiny, 1.0 - jnp.finfo(y.dtype).epsneg)
        x = jnp.log(y) - jnp.log1p(-y)
        return x, -_sum(jax.nn.log_sigmoid(x) + jax.nn.log_sigmoid(-x))


@_pytree(data=("low",))
class LowerBound(Bijector):
    """y = low + exp(x), onto (low, inf). `low` is a scalar or broadcasts to the event."""

    low: Any
    name = "lower_bound"

    def forward_and_log_det(self, x):
        x = _asf(x)
        return self.low + jnp.exp(x), _sum(x)

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
        return self.high - jnp.exp(x), _sum(x)

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
        log_det = jnp.broadcast_to(jnp.log(jnp.abs(self.scale)), x.shape)
        return self.loc + self.scale * x, _sum(log_det)

    def inverse_and_log_det(self, y):
        y = _asf(y)
        log_det = jnp.broadcast_to(jnp.log(jnp.abs(self.scale)), jnp.shape(y))
        return (y - self.loc) / self.scale, -_sum(log_det)


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
