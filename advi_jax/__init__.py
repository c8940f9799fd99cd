"""advi_jax: automatic-differentiation variational inference in JAX."""

from advi_jax import bijectors
from advi_jax.estimators import ESTIMATORS, EstimatorInfo, elbo_surrogate
from advi_jax.families import (
    FullRankGaussian,
    FullRankParams,
    MeanFieldGaussian,
    MeanFieldParams,
)
from advi_jax.fit import ADVI, FitState, Result, StepInfo, advi, fit
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
from advi_jax.fit import DiagnosticWarning
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

from advi_jax.interop import from_numpyro

# Optional submodules: importing advi_jax must keep working while one is absent or broken
# (e.g. in a partial checkout); their names then stay out of __all__.
_optional = []
try:
    from advi_jax import data
except ImportError:  # pragma: no cover
    pass
else:
    _optional.append("data")
try:
    from advi_jax import models
except ImportError:  # pragma: no cover
    pass
else:
    _optional.append("models")

__version__ = "0.1.0"

__all__ = sorted([
    "ADVI",
    "DiagnosticWarning",
    "ESTIMATORS",
    "EstimatorInfo",
    "FitState",
    "FullRankGaussian",
    "FullRankParams",
    "ImportanceDiagnostics",
    "MeanFieldGaussian",
    "MeanFieldParams",
    "Model",
    "PSISResult",
    "Result",
    "StepInfo",
    "Support",
    "advi",
    "bijector_for",
    "bijectors",
    "cholesky_cov",
    "corr_cholesky",
    "corr_matrix",
    "cov_cholesky",
    "cov_matrix",
    "elbo_surrogate",
    "fit",
    "from_numpyro",
    "importance_diagnostics",
    "importance_ess",
    "interval",
    "iw_elbo",
    "khat_threshold",
    "khat_verdict",
    "lower_bounded",
    "ordered",
    "positive",
    "positive_ordered",
    "psis",
    "psis_expectation",
    "psis_resample",
    "real",
    "simplex",
    "sum_to_zero",
    "unit_interval",
    "upper_bounded",
] + _optional)
del _optional
