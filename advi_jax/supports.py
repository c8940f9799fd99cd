"""Supports: the constrained sets parameters live in, each with its default bijector.

A `Support` has an `event_shape` (what one bijector call handles: `()`-shaped elementwise
supports take the whole array as one event; a simplex event is `(K,)`) and a `batch_shape`
of independent events in front of it, so `shape == batch_shape + event_shape`.
`bijector_for(support)` gives the bijector whose `forward` maps R^k onto the support.

Example:
  >>> import advi_jax as aj
  >>> aj.positive((3,)).shape
  (3,)
  >>> aj.bijector_for(aj.interval(0.0, 1.0)).forward(0.0)
  Array(0.5, dtype=float32, weak_type=True)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np

from advi_jax import bijectors as bij
from advi_jax._types import ArrayLike, as_shape, is_concrete

__all__ = [
    "Support",
    "bijector_for",
    "real",
    "positive",
    "unit_interval",
    "interval",
    "lower_bounded",
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
        lambda v: (v >= low) & (v <= high),
    )


def unit_interval(shape: Any = ()) -> Support:
    """(0, 1)^shape through the logistic sigmoid."""
    return _elementwise("unit_interval", shape, bij.Sigmoid(), lambda v: (v >= 0) & (v <= 1))
