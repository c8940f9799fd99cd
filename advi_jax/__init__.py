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
    "ADVI",
    "ESTIMATORS",
    "EstimatorInfo",
    "FitState",
    "FullRankGaussian",
    "FullRankParams",
    "MeanFieldGaussian",
    "MeanFieldParams",
    "Result",
    "StepInfo",
    "advi",
    "elbo_surrogate",
    "fit",
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

# --- scale: many fits, minibatches, sharding, large K ---
from advi_jax.families import LowRankGaussian, LowRankParams  # noqa: E402
from advi_jax.many import ManyResult, fit_many, stack_models  # noqa: E402

__all__ += ["LowRankGaussian", "LowRankParams", "ManyResult", "fit_many", "stack_models"]
from advi_jax.minibatch import MinibatchModel, fit_minibatch  # noqa: E402

__all__ += ["MinibatchModel", "fit_minibatch"]
from advi_jax.sharding import data_mesh, shard_data  # noqa: E402

__all__ += ["data_mesh", "shard_data"]
from advi_jax.glm import glm_log_likelihood  # noqa: E402

__all__ += ["glm_log_likelihood"]
