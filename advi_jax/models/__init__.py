"""Ready models: Bayesian logistic and Poisson regression, with posterior predictive helpers.

Example:
  >>> from advi_jax.models import logistic_regression, predict
"""

from advi_jax.models.regression import (
    Prediction,
    RegressionInfo,
    RegressionModel,
    coefficients_on_original_scale,
    linear_predictor,
    logistic_regression,
    parameter_labels,
    poisson_regression,
    predict,
)

__all__ = [
    "Prediction",
    "RegressionInfo",
    "RegressionModel",
    "coefficients_on_original_scale",
    "linear_predictor",
    "logistic_regression",
    "parameter_labels",
    "poisson_regression",
    "predict",
]
