"""advi_jax: automatic-differentiation variational inference in JAX.

Example:
  >>> import jax, jax.numpy as jnp, advi_jax as aj
  >>> model = aj.Model(lambda p: -0.5 * jnp.sum(p["x"] ** 2) - p["s"], {"x": aj.real((2,)), "s": aj.positive()})
  >>> result = aj.fit(model, key=jax.random.key(0), num_steps=1000, progress=False)  # doctest: +SKIP
"""

from advi_jax import bijectors, data, models
from advi_jax.compilation_cache import enable_compilation_cache
from advi_jax.diagnostics import (
    ImportanceDiagnostics,
    PSISResult,
    importance_diagnostics,
    importance_ess,
    iw_elbo,
    khat_threshold,
    khat_verdict,
    psis,
    psis_expectation,
    psis_resample,
)
from advi_jax.estimators import ESTIMATORS, EstimatorInfo, elbo_surrogate
from advi_jax.families import (
    FullRankGaussian,
    FullRankParams,
    LowRankGaussian,
    LowRankParams,
    MeanFieldGaussian,
    MeanFieldParams,
)
from advi_jax.base import Family, FitState, StepInfo, VIAlgorithm
from advi_jax.flatten import MinibatchModel, Model
from advi_jax.models.glm import glm_log_likelihood
from advi_jax.interop import from_numpyro
from advi_jax.result import ManyResult, Result
from advi_jax.run import DiagnosticWarning, fit, fit_many, fit_minibatch, stack_models
from advi_jax.sharding import data_mesh, shard_data
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
from advi_jax.vi.advi import ADVI, advi
from advi_jax.vi.laplace import LaplaceInfo, laplace
from advi_jax import gradient_variance  # the package, callable as gradient_variance(...)
from advi_jax.gradient_variance import GradientStats, VarianceTrace, track_gradient_variance

__version__ = "0.1.0"

__all__ = [
    "ADVI",
    "DiagnosticWarning",
    "ESTIMATORS",
    "EstimatorInfo",
    "Family",
    "FitState",
    "FullRankGaussian",
    "FullRankParams",
    "GradientStats",
    "ImportanceDiagnostics",
    "LaplaceInfo",
    "LowRankGaussian",
    "LowRankParams",
    "ManyResult",
    "MeanFieldGaussian",
    "MeanFieldParams",
    "MinibatchModel",
    "Model",
    "PSISResult",
    "Result",
    "StepInfo",
    "Support",
    "VIAlgorithm",
    "VarianceTrace",
    "advi",
    "bijector_for",
    "bijectors",
    "cholesky_cov",
    "corr_cholesky",
    "corr_matrix",
    "cov_cholesky",
    "cov_matrix",
    "data",
    "data_mesh",
    "elbo_surrogate",
    "enable_compilation_cache",
    "fit",
    "fit_many",
    "fit_minibatch",
    "from_numpyro",
    "glm_log_likelihood",
    "gradient_variance",
    "importance_diagnostics",
    "importance_ess",
    "interval",
    "iw_elbo",
    "khat_threshold",
    "khat_verdict",
    "laplace",
    "lower_bounded",
    "models",
    "ordered",
    "positive",
    "positive_ordered",
    "psis",
    "psis_expectation",
    "psis_resample",
    "real",
    "shard_data",
    "simplex",
    "stack_models",
    "sum_to_zero",
    "track_gradient_variance",
    "unit_interval",
    "upper_bounded",
]
