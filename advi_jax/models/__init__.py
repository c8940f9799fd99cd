"""Ready models: Bayesian logistic, Poisson, probit and negative-binomial regression, with posterior predictive helpers.

Build them from arrays, from pandas DataFrames (column names kept) or from a Wilkinson formula
(`logistic_regression.from_formula(df, "y ~ x1 + C(x2)")`, needs the `formula` extra).

Example:
  >>> from advi_jax.models import logistic_regression, predict
"""

from advi_jax.models.regression import (
    FLOAT32_COUNT_LIMITS,
    ConstantColumnWarning,
    PrecisionWarning,
    Prediction,
    RegressionInfo,
    RegressionModel,
    coefficients_on_original_scale,
    float32_count_limit,
    linear_predictor,
    logistic_regression,
    negbin_regression,
    parameter_labels,
    poisson_regression,
    predict,
    probit_regression,
)
from advi_jax.models.grouped import (  # noqa: E402
    GroupedRegressionModel,
    grouped_logistic_regression,
    grouped_poisson_regression,
)
from advi_jax.models.formula import FormulaRegressionModel, from_formula  # noqa: E402 (attaches .from_formula)
from advi_jax.models.predictive import PredictiveCheck, posterior_predictive, predictive_check  # noqa: E402

__all__ = [
    "ConstantColumnWarning",
    "FLOAT32_COUNT_LIMITS",
    "FormulaRegressionModel",
    "PrecisionWarning",
    "GroupedRegressionModel",
    "Prediction",
    "PredictiveCheck",
    "RegressionInfo",
    "RegressionModel",
    "coefficients_on_original_scale",
    "float32_count_limit",
    "from_formula",
    "grouped_logistic_regression",
    "grouped_poisson_regression",
    "linear_predictor",
    "logistic_regression",
    "negbin_regression",
    "parameter_labels",
    "poisson_regression",
    "posterior_predictive",
    "predict",
    "predictive_check",
    "probit_regression",
]
