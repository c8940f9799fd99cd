"""Gradient-estimator variance: how noisy each ELBO gradient estimator is, what one gradient costs,
and how the noise evolves along a fit, every estimate with a confidence interval.

One package, one estimator registry: the ADVI estimators are those of
`advi_jax.estimators.ESTIMATORS`; the amortized (VAE) ones are
`advi_jax.vae.objectives.AMORTIZED_ESTIMATORS` (the same names with the same meanings, plus
"dreg"); the 1-D study's are `univariate.ESTIMATORS_1D` ("score", "reparam" and
"score_mean_baseline", a baseline equal to the exact E[f], named apart from the library's
leave-one-out "score_baseline").

Modules:

* `instruments`: `gradient_stats`, the generic instrument for any `(params, key) -> scalar`
  surrogate, its `GradientStats` (mean, variance, trace, SNR, cost, jackknife intervals) and
  `time_gradient`;
* `advi`: `gradient_variance` (every ADVI estimator at fixed parameters) and
  `track_gradient_variance` (along a fit, `VarianceTrace`);
* `univariate`: the 1-D study of Mohamed, Rosca, Figurnov & Mnih (2020), exact moments by
  quadrature;
* `amortized`: encoder-gradient variance of the ELBO / IWAE-K bound (a linear Gaussian example
  with a known optimum, and a Flax VAE); needs flax, loaded on first use;
* `report`: `variance_table`, `format_table`; `plots`: `plot_variance_bars`, `plot_snr`,
  `plot_variance_along_fit`, `plot_univariate_study`.

The package itself is callable: `advi_jax.gradient_variance(...)` (also `aj.gradient_variance`)
is `gradient_variance(...)`, so the package name and the function stay one name.

Example:
  >>> import jax, jax.numpy as jnp, advi_jax as aj
  >>> model = aj.Model(lambda p: -0.5 * jnp.sum(p["x"] ** 2), {"x": aj.real((2,))})
  >>> params = aj.MeanFieldGaussian().init(jax.random.key(0), model.dim)
  >>> stats = aj.gradient_variance(model, "meanfield", params, jax.random.key(1), num_draws=200, time_repeats=0)
  >>> list(stats) == list(aj.ESTIMATORS)
  True
  >>> lo, hi = stats["reparam"].variance_trace_interval     # 95% interval of the trace
"""

from __future__ import annotations

import importlib
import inspect
import sys
import types

from advi_jax.gradient_variance import univariate
from advi_jax.gradient_variance.advi import (
    DEFAULT_ESTIMATORS,
    VarianceTrace,
    family_groups,
    gradient_variance,
    resolve_num_samples,
    track_gradient_variance,
)
from advi_jax.gradient_variance.instruments import (CONFIDENCE, GradientStats, gradient_stats, gradient_stats_many,
                                                   time_gradient)
from advi_jax.gradient_variance.plots import plot_snr, plot_univariate_study, plot_variance_along_fit, plot_variance_bars
from advi_jax.gradient_variance.report import TABLE_COLUMNS, format_table, variance_table

__all__ = [
    "CONFIDENCE",
    "DEFAULT_ESTIMATORS",
    "GradientStats",
    "TABLE_COLUMNS",
    "VarianceTrace",
    "amortized",
    "family_groups",
    "format_table",
    "gradient_stats",
    "gradient_stats_many",
    "gradient_variance",
    "plot_snr",
    "plot_univariate_study",
    "plot_variance_along_fit",
    "plot_variance_bars",
    "resolve_num_samples",
    "time_gradient",
    "track_gradient_variance",
    "univariate",
    "variance_table",
]


def __getattr__(name: str):
    if name == "amortized":  # needs flax: imported on first use
        return importlib.import_module("advi_jax.gradient_variance.amortized")
    raise AttributeError(f"module 'advi_jax.gradient_variance' has no attribute {name!r}")


class _CallablePackage(types.ModuleType):
    """The package, callable as `gradient_variance`."""

    def __call__(self, *args, **kwargs):
        return gradient_variance(*args, **kwargs)


__signature__ = inspect.signature(gradient_variance)
sys.modules[__name__].__class__ = _CallablePackage
