"""advi_jax: automatic-differentiation variational inference in JAX."""

from advi_jax import bijectors
from advi_jax.flatten import Model
from advi_jax.supports import (
    Support,
    bijector_for,
    interval,
    lower_bounded,
    positive,
    real,
    unit_interval,
    upper_bounded,
)

__version__ = "0.1.0"

__all__ = [
    "Model",
    "Support",
    "bijector_for",
    "bijectors",
    "interval",
    "lower_bounded",
    "positive",
    "real",
    "unit_interval",
    "upper_bounded",
]
