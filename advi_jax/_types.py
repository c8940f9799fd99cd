"""Type aliases and small eager-check helpers shared across the package."""

from typing import Any

import jax
import numpy as np

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
PyTree = Any


def is_concrete(x: Any) -> bool:
    """True when `x` holds concrete values (not a tracer), so it can be checked eagerly."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(x))


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """Return `value` as an int, or raise a ValueError/TypeError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def as_shape(shape: Any, name: str = "shape") -> tuple[int, ...]:
    """Normalise an int or a tuple of ints to a shape tuple, with a clear error otherwise."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (int(shape),)
    try:
        out = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an int or a tuple of ints, got {shape!r}") from None
    if isinstance(shape, (str, bytes)) or any(isinstance(s, (float, np.floating, bool)) for s in shape):
        raise TypeError(f"{name} must be an int or a tuple of ints, got {shape!r}")
    if any(s < 0 for s in out):
        raise ValueError(f"{name} must have non-negative entries, got {out}")
    return out


def common_leading_size(tree: Any, what: str) -> int:
    """The leading-axis length shared by every array leaf of `tree`, or a ValueError about `what`."""
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        raise ValueError(f"{what}: no arrays found (expected a pytree of arrays with a shared leading axis)")
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
    if None in sizes or len(sizes) != 1:
        raise ValueError(f"{what}: every data leaf must have the same leading axis, got leading shapes "
                         f"{[np.shape(x)[:1] for x in leaves]}")
    return sizes.pop()
