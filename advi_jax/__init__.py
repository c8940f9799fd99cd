"""advi_jax: automatic-differentiation variational inference in JAX."""

from advi_jax import bijectors
from advi_jax.flatten import Model
from advi_jax.supports import (
    Support,
    bijector_for,
    cholesky_cov,
    corr_cholesky,
    corr_matrix,
    cov_cholesky,
    cov_matrix,
    interval,
    lower_bounded,
    ordered,
    positive,
    positive_ordered,
    real,
    simplex,
    sum_to_zero,
    unit_interval,
    upper_bounded,
)

__version__ = "0.1.0"

__all__ = [
    "Model",
    "Support",
    "bijector_for",
    "bijectors",
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
