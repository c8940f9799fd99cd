"""Ready probit and negative-binomial (NB2) regressions, on the machinery of `regression.py`.

Both return a `RegressionModel` (so `predict`, `linear_predictor`, `parameter_labels`, the
posterior predictive helpers, `from_formula` and `method="glm_exact"` apply). Their likelihoods
(`advi_jax.models.glm_more`) take the XLA path: the native one-read kernel covers logistic and
Poisson only, so a stochastic (ADVI) gradient reads X twice here; the exact-ELBO fit reads it once
per pass either way.

Example:
  >>> import numpy as np
  >>> from advi_jax.models import negbin_regression
  >>> rng = np.random.default_rng(0); x = rng.normal(size=(40, 2))
  >>> negbin_regression(x, rng.poisson(3.0, 40)).names
  ('intercept', 'beta', 'phi')
"""

from __future__ import annotations

from typing import Any, Sequence

from advi_jax._types import ArrayLike
from advi_jax.models import regression as _r

__all__ = ["negbin_regression", "probit_regression"]


def _no_group(group: Any, kind: str) -> None:
    if group is not None:
        raise ValueError(f"group= (a varying intercept) is available for logistic and Poisson regression, not {kind}; "
                         "leave group out, or use logistic_regression / poisson_regression")


def probit_regression(
    X: ArrayLike,
    y: ArrayLike,
    *,
    prior_scale: float = 2.5,
    intercept: bool = True,
    intercept_scale: float = 10.0,
    standardize: bool = True,
    hierarchical_scale: bool = False,
    feature_names: Sequence[str] | None = None,
    group: Any = None,
) -> _r.RegressionModel:
    """Bayesian probit regression, `y_n ~ Bernoulli(Phi(eta_n))` (Phi the standard normal cdf).

    Same parameters, priors and options as `logistic_regression`; the likelihood is
    `log Phi((2y - 1) eta)` through `log_ndtr` (finite for any finite eta). Probit coefficients are
    about 1/1.6 of logistic ones, so the default prior sd 2.5 is weaker here.

    Args:
      X: (N, D) features, finite (a DataFrame's column names become feature names).
      y: (N,) labels in {0, 1}.
      prior_scale, intercept, intercept_scale, standardize, hierarchical_scale, feature_names:
        as in `logistic_regression`.
      group: not supported (a clear error): varying intercepts are for logistic and Poisson models.

    Returns:
      A `RegressionModel` of kind "probit" with `data = {x, y, x_mean, x_scale}`.

    Raises:
      ValueError: as `logistic_regression`.

    Example:
      >>> import numpy as np
      >>> x = np.random.default_rng(1).normal(size=(20, 3)); y = (x[:, 1] > 0) * 1.0
      >>> probit_regression(x, y).dim
      4
    """
    _no_group(group, "probit")
    X, feature_names = _r._frame_input(X, feature_names)
    return _r._build("probit", X, y, prior_scale=prior_scale, intercept=intercept, intercept_scale=intercept_scale,
                     standardize=standardize, hierarchical_scale=hierarchical_scale, feature_names=feature_names)


def negbin_regression(
    X: ArrayLike,
    y: ArrayLike,
    *,
    exposure: ArrayLike | None = None,
    offset: ArrayLike | None = None,
    prior_scale: float = 1.0,
    dispersion_scale: float = 1.0,
    intercept: bool = True,
    intercept_scale: float = 10.0,
    standardize: bool = True,
    hierarchical_scale: bool = False,
    feature_names: Sequence[str] | None = None,
    group: Any = None,
) -> _r.RegressionModel:
    """Bayesian negative-binomial (NB2) regression with a learned dispersion, log link.

    `y_n ~ NegBin(mean mu_n, dispersion phi)`, `mu_n = exp(eta_n)`, `eta_n = intercept + x_n . beta
    + offset_n` (`offset = log(exposure)`), variance `mu + mu^2 / phi`: over-dispersed counts, and
    Poisson as phi -> infinity. Parameters: `intercept`, `beta` (D,), `phi` (positive, flat
    coordinate log phi) and, with `hierarchical_scale=True`, `tau`.

    Prior on the dispersion: `1 / sqrt(phi) ~ Exponential(mean dispersion_scale)`, i.e.
    `log p(phi) = -log s - phi^{-1/2} / s - log 2 - 1.5 log phi`. 1/sqrt(phi) is the coefficient of
    variation of the gamma mixing distribution (the extra-Poisson noise), so the prior puts its mode at
    the Poisson model and shrinks toward it, as a penalised-complexity prior does (Simpson et al.,
    Stat. Sci. 2017); with the default s = 1, P(phi < 1) = 0.37 and P(phi < 0.1) = 0.04. Coefficient
    priors as in `poisson_regression`.

    Args:
      X: (N, D) features, finite.
      y: (N,) non-negative integer counts.
      exposure: optional (N,) positive exposures; mutually exclusive with `offset`.
      offset: optional (N,) offsets added to the linear predictor.
      prior_scale: sd of the Normal prior on each (standardised) coefficient (or of `tau`'s
        half-normal with `hierarchical_scale=True`).
      dispersion_scale: prior mean of 1 / sqrt(phi).
      intercept, intercept_scale, standardize, hierarchical_scale, feature_names: as in
        `poisson_regression`.
      group: not supported (a clear error): varying intercepts are for logistic and Poisson models.

    Returns:
      A `RegressionModel` of kind "negbin" with `data = {x, y, x_mean, x_scale, y_distinct, y_count}`
      (+ `offset`); the last two are y's distinct values and their multiplicities
      (`glm_more.distinct_counts`), which the exact-ELBO fit uses.

    Raises:
      ValueError: as `poisson_regression`, or a non-positive `dispersion_scale`.

    Example:
      >>> import numpy as np
      >>> rng = np.random.default_rng(2); x = rng.normal(size=(30, 2))
      >>> model = negbin_regression(x, rng.poisson(np.exp(x[:, 0])), exposure=np.ones(30))
      >>> model.dim
      4
    """
    _no_group(group, "negbin")
    X, feature_names = _r._frame_input(X, feature_names)
    x_checked = _r._check_x(X)
    off = _r._offset(exposure, offset, x_checked.shape[0])
    return _r._build("negbin", x_checked, y, prior_scale=prior_scale, intercept=intercept,
                     intercept_scale=intercept_scale, standardize=standardize,
                     hierarchical_scale=hierarchical_scale, feature_names=feature_names, offset=off,
                     dispersion_scale=dispersion_scale)
