"""The univariate gradient-variance study of Mohamed, Rosca, Figurnov & Mnih (2020), section 3.

The target is the gradient of `F(mu, sigma) = E_{N(x | mu, sigma^2)}[f(x; k)]` with respect to
`theta = (mu, sigma)` (sigma itself, not a transformed scale), for three test functions

    "square": f(x; k) = (x - k)^2,   "exp": f(x; k) = exp(-k x^2),   "cos": f(x; k) = cos(k x),

and three single-sample estimators, written with `x = mu + sigma eps`, `eps ~ N(0, 1)`:

* ``score``: `f(x) d/dtheta log N(x | mu, sigma^2) = f(x) (eps / sigma, (eps^2 - 1) / sigma)`;
* ``score_mean_baseline``: the same with `f(x)` replaced by `f(x) - b`, `b = E[f]` (the exact
  mean baseline, a constant, so the estimator stays unbiased). It has its own name: the
  library's "score_baseline" is the leave-one-out baseline of `advi_jax.estimators`, which needs
  two or more draws per gradient;
* ``reparam``: the pathwise estimator `f'(x) dx/dtheta = f'(x) (1, eps)` (Mohamed et al. call it
  "pathwise"; "reparam" is the library's name for the same estimator).

Every per-draw estimate is a function `g(eps)` of one standard normal, so its mean, variance and
fourth central moment are one-dimensional Gaussian integrals, computed here by Gauss-Hermite
quadrature in float64 (`exact_moments`). The fourth moment gives the exact standard deviation of
a sample variance (`sample_variance_sd`), which is the right tolerance when a Monte Carlo
variance estimate is compared with the exact value. `surrogate` turns each estimator into a
`(params, key) -> scalar` function so the same draws can be measured with the library's generic
instrument `advi_jax.gradient_variance.gradient_stats`.

Example:
  >>> from advi_jax.gradient_variance import univariate
  >>> m = univariate.exact_moments("reparam", "square", k=2.0, mu=1.0, sigma=1.0)
  >>> [round(float(v), 6) for v in m.variance]      # 4 sigma^2 and 4 (mu - k)^2 + 8 sigma^2
  [4.0, 12.0]

References:
  Mohamed, Rosca, Figurnov & Mnih (2020). Monte Carlo gradient estimation in machine learning.
  JMLR 21(132), figure 2 and section 3.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from advi_jax._types import Array

__all__ = [
    "ESTIMATORS_1D",
    "exact_mean_f",
    "FUNCTIONS",
    "K_RANGES",
    "Moments",
    "StudyResult",
    "exact_moments",
    "gradient_draws",
    "sample_variance_sd",
    "study",
    "surrogate",
]

FUNCTIONS: tuple[str, ...] = ("square", "exp", "cos")
ESTIMATORS_1D: tuple[str, ...] = ("score", "score_mean_baseline", "reparam")

K_RANGES: dict[str, tuple[float, float]] = {"square": (-3.0, 3.0), "exp": (0.05, 3.0), "cos": (0.05, 5.0)}
"""The ranges of k the study sweeps for each test function (mu = sigma = 1 by default)."""

_NUM_NODES = 120


def _check(estimator: str, function: str) -> None:
    if estimator not in ESTIMATORS_1D:
        raise ValueError(f"unknown estimator {estimator!r}; choose from {list(ESTIMATORS_1D)}")
    if function not in FUNCTIONS:
        raise ValueError(f"unknown test function {function!r}; choose from {list(FUNCTIONS)}")


def _f(function: str, x, k, xp):
    if function == "square":
        return (x - k) ** 2
    if function == "exp":
        return xp.exp(-k * x ** 2)
    return xp.cos(k * x)


def _df(function: str, x, k, xp):
    if function == "square":
        return 2.0 * (x - k)
    if function == "exp":
        return -2.0 * k * x * xp.exp(-k * x ** 2)
    return -k * xp.sin(k * x)


@functools.lru_cache(maxsize=None)
def _nodes() -> tuple[np.ndarray, np.ndarray]:
    nodes, weights = np.polynomial.hermite_e.hermegauss(_NUM_NODES)  # weight exp(-x^2 / 2)
    return nodes, weights / math.sqrt(2.0 * math.pi)


def _expect(values: np.ndarray) -> np.ndarray:
    """E[h(eps)] for eps ~ N(0, 1), `values` = h at the nodes along the last axis."""
    _, weights = _nodes()
    return values @ weights


def exact_mean_f(function: str, k: float, mu: float = 1.0, sigma: float = 1.0) -> float:
    """E_{N(mu, sigma^2)}[f(x; k)] by Gauss-Hermite quadrature (float64)."""
    _check("reparam", function)
    eps, _ = _nodes()
    return float(_expect(_f(function, mu + sigma * eps, k, np)))


def gradient_draws(estimator: str, function: str, eps, k: float, mu: float = 1.0, sigma: float = 1.0,
                   baseline: float | None = None, xp=np):
    """Per-draw gradient estimates at standard-normal `eps`.

    Args:
      estimator: "score", "score_mean_baseline" or "reparam".
      function: "square", "exp" or "cos".
      eps: (...,) standard-normal draws.
      k: the test function's parameter.
      mu, sigma: the Gaussian's mean and standard deviation (sigma > 0).
      baseline: for "score_mean_baseline", the constant b (default: the exact E[f]).
      xp: array namespace (`numpy` or `jax.numpy`).

    Returns:
      (2, ...) the estimates of dF/dmu and dF/dsigma, one per draw.
    """
    _check(estimator, function)
    x = mu + sigma * eps
    if estimator == "reparam":
        d = _df(function, x, k, xp)
        return xp.stack([d, d * eps])
    value = _f(function, x, k, xp)
    if estimator == "score_mean_baseline":
        value = value - (exact_mean_f(function, k, mu, sigma) if baseline is None else baseline)
    return xp.stack([value * eps / sigma, value * (eps ** 2 - 1.0) / sigma])


class Moments(NamedTuple):
    """Exact moments of a single-draw gradient estimator of (dF/dmu, dF/dsigma).

    Attributes:
      mean: (2,) the true gradient (every estimator here is unbiased).
      variance: (2,) variance of one draw.
      central_fourth: (2,) fourth central moment of one draw.
    """

    mean: np.ndarray
    variance: np.ndarray
    central_fourth: np.ndarray


def exact_moments(estimator: str, function: str, k: float, mu: float = 1.0, sigma: float = 1.0) -> Moments:
    """Mean, variance and fourth central moment of one gradient draw, by Gauss-Hermite quadrature.

    With 120 nodes the rule integrates polynomials of degree < 240 exactly; the integrands here
    are polynomials times smooth bounded functions of moderate frequency (k <= 5), for which the
    quadrature is accurate to about float64 rounding.

    Args:
      estimator: "score", "score_mean_baseline" or "reparam".
      function: "square", "exp" or "cos".
      k: the test function's parameter.
      mu, sigma: the Gaussian's parameters.

    Returns:
      `Moments` with (2,) arrays ordered (mu, sigma).
    """
    _check(estimator, function)
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    eps, _ = _nodes()
    g = gradient_draws(estimator, function, eps, k, mu, sigma)  # (2, nodes)
    mean = _expect(g)
    centred = g - mean[:, None]
    return Moments(mean, _expect(centred ** 2), _expect(centred ** 4))


def sample_variance_sd(variance, central_fourth, num_draws: int):
    """Exact standard deviation of the unbiased sample variance of `num_draws` iid draws.

    Var[s^2] = mu_4 / n - sigma^4 (n - 3) / (n (n - 1)), with mu_4 the fourth central moment.
    """
    n = num_draws
    variance = np.asarray(variance, np.float64)
    var_of_var = np.asarray(central_fourth, np.float64) / n - variance ** 2 * (n - 3) / (n * (n - 1))
    return np.sqrt(np.maximum(var_of_var, 0.0))


def surrogate(estimator: str, function: str, k, mu: float = 1.0, sigma: float = 1.0) -> Callable:
    """A `(params, key) -> scalar` whose gradient w.r.t. `params = {"mu", "sigma"}` is one draw.

    `k` may be a scalar or a (M,) array of values: then `params["mu"]` and `params["sigma"]`
    have shape (M,) as well, each entry has its own independent `eps`, and the surrogate is the
    sum over entries, so one gradient holds M independent draws, one per k (a whole sweep over k
    measured in one call of `advi_jax.gradient_variance.gradient_stats`, coordinates grouped "mu"/"sigma").

    * reparam: `f(mu + sigma eps)`;
    * score: `stop(f(x)) log N(stop(x) | mu, sigma^2)`;
    * score_mean_baseline: `stop(f(x) - b) log N(stop(x) | mu, sigma^2)` with the constant
      `b = E[f]` at the given `mu`, `sigma` (computed once, by quadrature).

    Args:
      estimator: "score", "score_mean_baseline" or "reparam".
      function: "square", "exp" or "cos".
      k: the test function's parameter, a float or an (M,) array.
      mu, sigma: where the baseline is computed (the parameters the gradient is measured at).

    Returns:
      The surrogate function.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from advi_jax.gradient_variance import gradient_stats
      >>> ks = jnp.linspace(0.1, 3.0, 4)
      >>> params = {"mu": jnp.ones(4), "sigma": jnp.ones(4)}
      >>> stats = gradient_stats(surrogate("reparam", "cos", ks), params, jax.random.key(0),
      ...                        num_draws=100, time_repeats=0)
      >>> stats.mean["sigma"].shape
      (4,)
    """
    _check(estimator, function)
    k_values = np.asarray(k, np.float64)
    if estimator == "score_mean_baseline":
        baseline = np.vectorize(lambda kk: exact_mean_f(function, float(kk), mu, sigma))(k_values)
    else:
        baseline = np.zeros_like(k_values)
    k_array = jnp.asarray(k_values, jnp.result_type(float))
    baseline = jnp.asarray(baseline, jnp.result_type(float))

    def fn(params, key: Array) -> Array:
        mu, sigma = params["mu"], params["sigma"]
        eps = jax.random.normal(key, jnp.shape(mu), jnp.result_type(mu))
        if estimator == "reparam":
            return jnp.sum(_f(function, mu + sigma * eps, k_array, jnp))
        x = jax.lax.stop_gradient(mu + sigma * eps)
        value = _f(function, x, k_array, jnp) - baseline
        log_q = -0.5 * ((x - mu) / sigma) ** 2 - jnp.log(sigma) - 0.5 * math.log(2.0 * math.pi)
        return jnp.sum(jax.lax.stop_gradient(value) * log_q)

    return fn


class StudyResult(NamedTuple):
    """One estimator's row of the univariate study for one test function.

    Attributes:
      k: (M,) the values of k.
      exact: (2, M) exact variance of one draw of (dF/dmu, dF/dsigma).
      measured: (2, M) Monte Carlo variance from `num_draws` draws.
      interval: (2, 2, M) lower/upper confidence limits of `measured` (first axis: lower, upper).
    """

    k: np.ndarray
    exact: np.ndarray
    measured: np.ndarray
    interval: np.ndarray


def study(function: str, key: Array, ks=None, *, num_draws: int = 2000, mu: float = 1.0,
          sigma: float = 1.0) -> dict[str, StudyResult]:
    """Mohamed et al.'s figure for one test function: exact and measured variance against k.

    Every k is measured in one `gradient_stats` call per estimator (one coordinate per k).

    Args:
      function: one of `FUNCTIONS`.
      key: PRNG key.
      ks: (M,) values of k (default: 25 points over `K_RANGES[function]`).
      num_draws: draws per estimator (>= 2).
      mu, sigma: the Gaussian's parameters.

    Returns:
      dict estimator name (of `ESTIMATORS_1D`) -> `StudyResult`.

    Raises:
      ValueError: an unknown function, sigma <= 0, num_draws < 2.

    Example:
      >>> import jax
      >>> res = study("cos", jax.random.key(0), [0.5, 1.0], num_draws=100)
      >>> res["reparam"].measured.shape
      (2, 2)
    """
    from advi_jax.gradient_variance.instruments import gradient_stats

    _check("reparam", function)
    ks = np.linspace(*K_RANGES[function], 25) if ks is None else np.atleast_1d(np.asarray(ks, np.float64))
    m = ks.shape[0]
    dtype = jnp.result_type(float)
    params = {"mu": jnp.full((m,), mu, dtype), "sigma": jnp.full((m,), sigma, dtype)}
    out = {}
    for i, estimator in enumerate(ESTIMATORS_1D):
        stats = gradient_stats(surrogate(estimator, function, ks, mu, sigma), params, jax.random.fold_in(key, i),
                               num_draws=num_draws, time_repeats=0)
        exact = np.stack([exact_moments(estimator, function, float(k), mu, sigma).variance for k in ks], axis=1)
        # ravel order of {"mu", "sigma"}: mu's M coordinates, then sigma's.
        measured = np.asarray(stats.variance, np.float64).reshape(2, m)
        interval = np.asarray(stats.variance_interval).reshape(2, 2, m)
        out[estimator] = StudyResult(ks, exact, measured, interval)
    return out
