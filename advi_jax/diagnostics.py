"""Diagnostics for a fitted variational approximation: PSIS k-hat, importance-weighted ELBO, ESS.

Given draws `zeta_s ~ q` (s = 1..S) the log importance ratios are

    r_s = log p(x, zeta_s) - log q(zeta_s),

with `log p` the model's log density on R^K (Jacobian included). They tell how well q covers
the posterior:

* **Pareto-smoothed importance sampling** (PSIS; Vehtari, Simpson, Gelman, Yao & Gabry). The
  largest `M = ceil(min(S / 5, 3 sqrt(S)))` ratios are modelled as draws from a generalized
  Pareto distribution (GPD) above the threshold `u` (the (M+1)-th largest ratio). Its fitted
  shape `k-hat` estimates how many moments the ratios have: the ratios have finite variance
  for k < 1/2 and a finite mean for k < 1. Yao, Vehtari, Simpson & Gelman (2018, "Yes, but
  did it work?") use it as a verdict on variational inference:

  ===============  ==============================================================
  k-hat < 0.5      good: q is close to the posterior; importance sampling converges fast
  0.5 <= k < 0.7   ok / borderline: usable, PSIS-corrected estimates are reliable
  k-hat >= 0.7     unreliable: q misses mass the posterior has (heavy-tailed ratios)
  ===============  ==============================================================

  The 0.7 bound depends on the number of draws: PSIS estimates are reliable for
  `k < min(1 - 1 / log10(S), 0.7)` (`khat_threshold(S)`; Vehtari et al., section 3.2.4),
  which is below 0.7 only for S < 2154.

  The GPD is fitted to the exceedances by Zhang & Stephens' (2009) quasi-Bayesian estimator,
  followed by the weakly informative prior of the PSIS paper that shrinks k towards 0.5 with
  the weight of 10 observations: `k-hat = (M k + 5) / (M + 10)`. The M largest log ratios are
  then replaced by the GPD quantiles `F^{-1}((z - 1/2) / M)`, z = 1..M, in the same order, and
  capped at the largest raw log ratio.

* **Importance-weighted ELBO** `log (1/S) sum_s exp(r_s)`, a stochastic lower bound on
  log p(x) that is tighter than the ELBO (Burda, Grosse & Salakhutdinov 2016), with a Monte
  Carlo standard error by the delta method: `se = sd(w) / (sqrt(S) mean(w))`, `w = exp(r)`.

* **Effective sample size** of self-normalised weights `w_norm = w / sum(w)`:
  `ESS = 1 / sum_s w_norm_s^2` (Kong 1992), from raw and from Pareto-smoothed weights.

* **Nearly constant ratios.** k-hat is invariant to the scale of the ratios: it reads the shape
  of their upper tail, not its size. Where q is very close to p over its bulk but p's tails are
  heavier than a Gaussian's (a logistic regression at its exact Gaussian optimum: log p - log q
  has sd 0.03 over 4,096 draws, yet k-hat reads 0.6-0.8 from one set of draws to the next), k-hat
  can exceed 0.7 while the weights are all within a few per cent of each other. The relative sd of
  the raw weights, `cv = sqrt(S / ESS - 1)` (`ratio_cv`), bounds what they change: by
  Cauchy-Schwarz, for any f the self-normalised importance-weighted mean of f over the draws and
  q's plain mean differ by at most `cv * sd(f)` (sample moments, exactly). Below
  `NEAR_CONSTANT_CV` = 0.05 the verdict is "good" for any finite k-hat: q's estimate of every
  expectation is then within 0.05 of its sd of the importance-corrected one, the suite's own
  tolerance. Even k-hat >= 1 is then an artefact of the sample, not an infinite mean: the ratios'
  true mean under q is the posterior's normalising constant, finite wherever q covers p, and in
  float32 the tail of a nearly Gaussian posterior's log ratios is partly rounding of log p (a 1-D
  fit with log p ~ -2,000 reads k-hat 0.75 at one key and 2.8 at another). Like k-hat, cv sees
  only where the draws land: mass that q never reaches is invisible to both.

This module imports only `_types`, so `fit.py` can use it to diagnose every fit: in the
dependency order of DESIGN.md it sits just above `fit.py`.

Every function takes fixed-size arrays, sorts instead of filtering, and runs under `jax.jit`
and `jax.vmap`; the number of draws S is static (it comes from the shape). NaN log ratios
(a log density undefined at a draw) are treated as -inf: the draw gets weight zero.

Example:
  >>> import jax, jax.numpy as jnp, advi_jax as aj
  >>> log_ratios = 0.3 * jax.random.normal(jax.random.key(0), (4000,))
  >>> out = aj.psis(log_ratios)
  >>> bool(out.khat < 0.5)
  True

References:
  Vehtari, Simpson, Gelman, Yao & Gabry. Pareto smoothed importance sampling. JMLR 25 (2024);
    arXiv:1507.02646.
  Yao, Vehtari, Simpson & Gelman. Yes, but did it work?: Evaluating variational inference.
    ICML 2018.
  Zhang & Stephens. A new and efficient estimation method for the generalized Pareto
    distribution. Technometrics 51 (2009).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from advi_jax._types import Array, ArrayLike, PyTree, check_positive_int, is_concrete

__all__ = [
    "KHAT_GOOD",
    "KHAT_OK",
    "PSISResult",
    "ImportanceDiagnostics",
    "psis",
    "gpd_fit",
    "khat_threshold",
    "khat_verdict",
    "NEAR_CONSTANT_CV",
    "near_constant",
    "ratio_cv",
    "iw_elbo",
    "importance_ess",
    "importance_diagnostics",
    "psis_expectation",
    "psis_resample",
    "tail_length",
]

KHAT_GOOD = 0.5
"""Below this k-hat the importance ratios have finite variance: q is good."""

KHAT_OK = 0.7
"""Above this k-hat PSIS estimates (and q) are unreliable."""

NEAR_CONSTANT_CV = 0.05
"""Below this relative sd of the raw importance weights (`ratio_cv`) the verdict is "good" whatever
k-hat reads: every importance-corrected mean is within this many of its sds of q's (module docstring)."""

_MIN_TAIL = 5


def check_key(key: Any, name: str = "key") -> Array:
    """Return `key` as a typed PRNG key, or raise a TypeError naming the argument.

    Accepts a new-style scalar key (`jax.random.key(0)`) or a raw (2,) uint32 key
    (`jax.random.PRNGKey(0)`).
    """
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ():
        return key
    if isinstance(key, (jax.Array, np.ndarray)) and key.shape == (2,) and key.dtype == np.uint32:
        return jax.random.wrap_key_data(jnp.asarray(key))
    raise TypeError(f"{name} must be a single PRNG key such as jax.random.key(0), got {type(key).__name__}"
                    f"{getattr(key, 'shape', '')}")


class PSISResult(NamedTuple):
    """Output of `psis`.

    Attributes:
      log_weights: (S,) Pareto-smoothed log weights (normalised to log-sum-exp 0 when
        `normalize=True`).
      khat: scalar GPD shape estimate (after the prior adjustment); +inf when it cannot be
        estimated (infinite ratios, too few draws), -inf when the largest ratios are all equal
        (constant ratios: q is proportional to p, the best case).
      sigma: scalar GPD scale, in units of `exp(max log ratio)`.
    """

    log_weights: Array
    khat: Array
    sigma: Array


class ImportanceDiagnostics(NamedTuple):
    """Output of `importance_diagnostics` (all scalars).

    Attributes:
      khat: PSIS k-hat of the log ratios.
      iw_elbo: importance-weighted ELBO, log mean exp(log p - log q).
      iw_elbo_se: its Monte Carlo standard error (delta method).
      elbo: plain ELBO estimate, mean(log p - log q).
      elbo_se: its standard error, sd / sqrt(S).
      ess: effective sample size of the raw normalised weights, 1 / sum w_norm^2.
      psis_ess: the same for the Pareto-smoothed weights.
      num_nonfinite: draws whose log ratio was NaN or -inf (weight zero).
    """

    khat: Array
    iw_elbo: Array
    iw_elbo_se: Array
    elbo: Array
    elbo_se: Array
    ess: Array
    psis_ess: Array
    num_nonfinite: Array


# ----------------------------------------------------------------------------------------------
# Argument checks (eager; skipped for tracers, whose values are unknown)


def _check_log_ratios(log_ratios: Any, name: str = "log_ratios", min_size: int = 1) -> Array:
    if isinstance(log_ratios, (str, bytes)) or log_ratios is None or isinstance(log_ratios, dict):
        raise TypeError(f"{name} must be a 1-d float array of log importance ratios, got "
                        f"{type(log_ratios).__name__}")
    try:
        arr = jnp.asarray(log_ratios)
    except TypeError as err:
        raise TypeError(f"{name} must be a 1-d float array of log importance ratios, got "
                        f"{type(log_ratios).__name__}") from err
    if arr.dtype == jnp.bool_ or not (jnp.issubdtype(arr.dtype, jnp.floating) or jnp.issubdtype(arr.dtype, jnp.integer)):
        raise TypeError(f"{name} must be a real float array, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-d with one entry per draw (use jax.vmap for a batch), got shape "
                         f"{arr.shape}")
    if arr.shape[0] < min_size:
        raise ValueError(f"{name} needs at least {min_size} draws, got {arr.shape[0]}")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    return arr


def tail_length(num_draws: int) -> int:
    """M = ceil(min(S / 5, 3 sqrt(S))), the number of largest ratios the GPD is fitted to.

    Args:
      num_draws: S >= 1.

    Returns:
      M as an int.
    """
    num_draws = check_positive_int(num_draws, "num_draws")
    return int(math.ceil(min(0.2 * num_draws, 3.0 * math.sqrt(num_draws))))


def khat_threshold(num_draws: int) -> float:
    """The sample-size dependent k-hat threshold min(1 - 1 / log10(S), 0.7).

    With S draws PSIS estimates are reliable below this value (Vehtari et al., section 3.2.4);
    it equals 0.7 for S >= 2154 and is lower for fewer draws.

    Args:
      num_draws: S >= 2.

    Returns:
      The threshold (a float; -inf for S < 10, where no k is trustworthy).
    """
    num_draws = check_positive_int(num_draws, "num_draws", minimum=2)
    log10 = math.log10(num_draws)
    return min(1.0 - 1.0 / log10, KHAT_OK) if log10 > 1 else -math.inf


def ratio_cv(ess: float, num_draws: int) -> float:
    """The relative sd of the raw importance weights, `sqrt(S / ESS - 1)`, from their raw ESS.

    `S / ESS - 1 = S sum(w^2) / sum(w)^2 - 1 = var(w) / mean(w)^2` (population moments over the S
    draws). For any f, |importance-weighted mean of f - plain mean of f| <= cv * sd(f) over the draws
    (Cauchy-Schwarz), so a small cv says the importance weights change no estimate much.

    Args:
      ess: the raw importance ESS (`Diagnostics.ess`).
      num_draws: S.

    Returns:
      cv >= 0 as a float (inf when ess is not positive or not finite).

    Example:
      >>> round(ratio_cv(4000.0, 4096), 3)
      0.155
    """
    ess = float(ess)
    if not (math.isfinite(ess) and ess > 0):
        return math.inf
    return math.sqrt(max(float(num_draws) / ess - 1.0, 0.0))


def khat_verdict(khat: float, num_draws: int | None = None, cv: float | None = None) -> str:
    """A plain-words reading of a k-hat value.

    Args:
      khat: the PSIS k-hat.
      num_draws: S, the number of draws it came from (tightens the 0.7 bound for S < 2154).
      cv: the relative sd of the raw importance weights (`ratio_cv`), when known: below
        `NEAR_CONSTANT_CV` the weights are nearly constant and the verdict is "good" for any
        finite k-hat (it then reads the shape of a tail too small to change any estimate).

    Returns:
      One sentence: good (k < 0.5, or nearly constant weights), ok (0.5 <= k < threshold), or
      unreliable.
    """
    try:
        khat = float(khat)
    except (TypeError, ValueError):
        raise TypeError(f"khat must be a number, got {type(khat).__name__}") from None
    bound = KHAT_OK if num_draws is None else khat_threshold(num_draws)
    if khat == -math.inf:
        return "good (the largest importance ratios are all equal: q matches the posterior's shape)"
    if not math.isfinite(khat):
        return ("unreliable (k-hat could not be estimated: infinite or degenerate importance ratios); "
                "q does not match the posterior")
    if khat < KHAT_GOOD:
        return "good (k-hat < 0.5): q is close to the posterior"
    if cv is not None and float(cv) < NEAR_CONSTANT_CV:
        return (f"good (the importance weights are nearly constant, relative sd {float(cv):.2g}: q's mean of any "
                f"quantity is within {float(cv):.2g} of its sd of the importance-corrected one; k-hat {khat:.2f} "
                "reads only the shape of their narrow upper tail)")
    if khat < bound:
        return (f"ok (0.5 <= k-hat < {bound:.2f}): q is roughly right; PSIS-corrected estimates "
                "(result.psis_expectation) are reliable")
    return (f"unreliable (k-hat >= {bound:.2f}): q misses part of the posterior; do not trust its "
            "estimates (try family='fullrank', a reparameterisation, or MCMC)")


def near_constant(khat: float, ess: float, num_draws: int) -> bool:
    """True when k-hat is finite and the raw importance weights' relative sd (`ratio_cv`) is below
    `NEAR_CONSTANT_CV`: the verdict is then "good" whatever k-hat reads (`khat_verdict`)."""
    return math.isfinite(float(khat)) and ratio_cv(ess, num_draws) < NEAR_CONSTANT_CV


# ----------------------------------------------------------------------------------------------
# The generalized Pareto fit (Zhang & Stephens 2009)


def gpd_fit(exceedances: ArrayLike, prior_weight: float = 10.0) -> tuple[Array, Array]:
    """Fit a generalized Pareto distribution to sorted positive exceedances.

    The GPD with shape k and scale sigma has density
    `(1/sigma) (1 + k x / sigma)^(-1/k - 1)`. Writing `theta = -k / sigma`, the profile
    log-likelihood (k maximised out) is `l(theta) = n (log(-theta / k(theta)) - k(theta) - 1)`
    with `k(theta) = mean(log(1 - theta x))`; Zhang & Stephens average theta over a grid of
    `m = 30 + floor(sqrt(n))` values,

        theta_j = 1 / x_(n) + (1 - sqrt(m / (j - 1/2))) / (3 x_(q)),   q = floor(n / 4 + 1/2),

    with weights proportional to `exp(l(theta_j))`, then set `k = mean(log1p(-theta x))` and
    `sigma = -k / theta`. Finally k is shrunk towards 0.5 by a weakly informative prior worth
    `prior_weight` observations (PSIS paper, appendix): `k <- (n k + prior_weight / 2) /
    (n + prior_weight)`; `prior_weight=0` gives the plain estimate.

    Args:
      exceedances: (n,) sorted ascending, non-negative (values above the threshold minus the
        threshold), n >= 5.
      prior_weight: weight of the prior on k (10 in the PSIS paper).

    Returns:
      (k, sigma), scalars; k is -inf when the exceedances are all zero (a point mass: the
      bounded limit) and +inf when the fit fails numerically.
    """
    x = jnp.asarray(exceedances)
    if x.ndim != 1 or x.shape[0] < _MIN_TAIL:
        raise ValueError(f"exceedances must be 1-d with at least {_MIN_TAIL} entries, got shape {x.shape}")
    return _on_host_when_concrete(lambda xp, v: _gpd_fit_core(v, prior_weight, xp), x)


def _gpd_fit_core(x, prior_weight: float, xp) -> tuple:
    """`gpd_fit` on validated exceedances, in the array module `xp` (jax.numpy or numpy)."""
    n = x.shape[0]
    dtype = x.dtype
    m = 30 + int(math.floor(math.sqrt(n)))
    x_max = x[-1]
    x_quartile = x[int(math.floor(n / 4.0 + 0.5)) - 1]
    # All exceedances zero: the tail is a point mass (constant ratios, q proportional to p), the
    # limit k -> -inf. Ties at the threshold (quartile zero) fall back to the mean exceedance.
    degenerate = ~(x_max > 0)
    safe_max = xp.where(degenerate, 1.0, x_max)
    safe_quartile = xp.where(x_quartile > 0, x_quartile, xp.mean(x))
    safe_quartile = xp.where(degenerate, 1.0, safe_quartile)
    j = xp.arange(1, m + 1, dtype=dtype)
    theta = (1.0 / safe_max + (1.0 - xp.sqrt(m / (j - 0.5))) / (3.0 * safe_quartile)).astype(dtype)
    # the shape maximising the likelihood at each theta, and the profile log-likelihood there
    k_grid = xp.mean(xp.log1p(-theta[:, None] * x[None, :]), axis=1)
    log_lik = n * (xp.log(-theta / k_grid) - k_grid - 1.0)
    log_lik = xp.where(xp.isfinite(log_lik), log_lik, -xp.inf)
    weights = xp.exp(log_lik - xp.max(log_lik))  # softmax (NaN when every value is -inf, as jax's)
    weights = weights / xp.sum(weights)
    theta_hat = xp.sum(weights * theta)
    k = xp.mean(xp.log1p(-theta_hat * x))
    sigma = -k / theta_hat
    k = (n * k + 0.5 * prior_weight) / (n + prior_weight)
    k = xp.where(xp.isnan(k), xp.inf, k)
    k = xp.where(degenerate, -xp.inf, k)
    return xp.asarray(k).astype(dtype), xp.asarray(sigma).astype(dtype)


def _gpd_quantile(p: Array, k: Array, sigma: Array, xp=jnp) -> Array:
    """F^{-1}(p) = sigma / k ((1 - p)^(-k) - 1), and -sigma log(1 - p) as k -> 0."""
    small = xp.abs(k) < 1e-8
    safe_k = xp.where(small, 1.0, k)
    general = sigma / safe_k * xp.expm1(-safe_k * xp.log1p(-p))
    return xp.where(small, -sigma * xp.log1p(-p), general)


# ----------------------------------------------------------------------------------------------
# Where the arithmetic runs: the cores below are written once against an array module `xp`.
# Under tracing (jit, vmap: fit_many's batched diagnostics, pathfinder) they run in jax.numpy;
# on concrete arrays they run in NumPy on the host, which costs microseconds for S <= 1e5 and
# compiles nothing (evaluated op by op in jax, one PSIS costs ~100 small compilations on a
# first call; jitted, about a second of XLA compilation per distinct S).


def _on_host_when_concrete(fn, *arrays):
    """`fn(xp, *arrays)` in NumPy when every array is concrete (results back as jax arrays of the
    input dtype), else in jax.numpy."""
    if not is_concrete(arrays):
        return fn(jnp, *arrays)
    dtype = arrays[0].dtype
    with np.errstate(all="ignore"):
        out = fn(np, *(np.asarray(a) for a in arrays))

    def back(v):  # a transfer (jnp.asarray of a NumPy value compiles a program per shape and dtype)
        v = np.asarray(v)
        return jax.device_put(v.astype(dtype) if np.issubdtype(v.dtype, np.floating) else v)

    return jax.tree_util.tree_map(back, out)


def _logsumexp(x, xp):
    top = xp.max(x)
    shift = xp.where(xp.isfinite(top), top, 0.0)
    return xp.log(xp.sum(xp.exp(x - shift))) + shift


def _argsort(x, xp):
    return np.argsort(x, kind="stable") if xp is np else jnp.argsort(x)


def _unsort(order, values, xp):
    """The inverse of `values = original[order]`."""
    if xp is np:
        out = np.empty_like(values)
        out[order] = values
        return out
    return jnp.empty_like(values).at[order].set(values)


# ----------------------------------------------------------------------------------------------
# PSIS


def _psis_core(log_ratios: Array, normalize: bool, xp=None) -> PSISResult:
    if xp is None:
        return PSISResult(*_on_host_when_concrete(lambda m, r: tuple(_psis_core(r, normalize, m)), log_ratios))
    num_draws = log_ratios.shape[0]
    dtype = log_ratios.dtype
    any_nan = xp.any(xp.isnan(log_ratios))
    log_ratios = xp.where(xp.isnan(log_ratios), -xp.inf, log_ratios).astype(dtype)
    tail = tail_length(num_draws)
    if tail < _MIN_TAIL or num_draws <= tail:
        # Too few draws for a tail fit: return the raw weights and an infinite k-hat.
        khat = xp.full((), xp.inf, dtype)
        sigma = xp.full((), xp.nan, dtype)
        smoothed = log_ratios
    else:
        order = _argsort(log_ratios, xp)
        sorted_lr = log_ratios[order]
        top = sorted_lr[-1]
        shift = xp.where(xp.isfinite(top), top, 0.0)
        threshold = sorted_lr[num_draws - tail - 1]
        # Exceedances in units of exp(top): exp(r - top) - exp(u - top), in [0, 1].
        threshold_weight = xp.exp(threshold - shift)
        exceed = xp.exp(sorted_lr[num_draws - tail:] - shift) - threshold_weight
        exceed = xp.maximum(xp.where(xp.isfinite(exceed), exceed, 0.0), 0.0).astype(dtype)
        khat, sigma = _gpd_fit_core(exceed, 10.0, xp)
        # A tail ratio above the threshold whose exceedance underflows to zero means the weights
        # span more than the dtype's range (exp(r - max) == exp(u - max)): far heavier than
        # any fitted k could show, and a GPD fit on the underflowed values is meaningless.
        # (Ratios that differ only by rounding also give zero exceedances, but there exp(r - max) does
        # not underflow: those are equal ratios, q proportional to p, as an exact fit gives.)
        tail_lr = sorted_lr[num_draws - tail:]
        underflow = xp.any((tail_lr > threshold) & (exceed <= 0) & (xp.exp(tail_lr - shift) <= 0))
        khat = xp.where(underflow, xp.inf, khat)
        # Tail ratios within rounding of each other (an exact fit: q = p to the dtype's precision) are
        # equal ratios, the best case, not a GPD fit to rounding noise.
        rounding = (top - threshold) <= 64 * xp.finfo(dtype).eps * (1.0 + xp.abs(top))
        khat = xp.where(rounding & xp.isfinite(top), -xp.inf, khat)
        probs = (xp.arange(1, tail + 1, dtype=dtype) - 0.5) / tail
        smoothed_tail = xp.log(threshold_weight + _gpd_quantile(probs, khat, sigma, xp)) + shift
        smoothed_tail = xp.minimum(smoothed_tail, top)
        usable = ~xp.isnan(khat) & ~xp.isposinf(khat) & xp.all(xp.isfinite(smoothed_tail))
        new_tail = xp.where(usable, smoothed_tail, tail_lr).astype(dtype)
        sorted_lr = xp.concatenate([sorted_lr[:num_draws - tail], new_tail])
        smoothed = _unsort(order, sorted_lr, xp)
        # Infinite ratios make every estimate meaningless.
        khat = xp.where(xp.isposinf(top) | xp.isneginf(top), xp.inf, khat)
    # With NaN ratios present, equal finite ratios do not show that q matches the posterior: never
    # report the "perfect" k-hat = -inf then (the NaN draws count against q).
    khat = xp.where(any_nan & xp.isneginf(khat), xp.inf, khat)
    if normalize:
        total = _logsumexp(smoothed, xp)
        smoothed = smoothed - xp.where(xp.isfinite(total), total, 0.0)
    return PSISResult(smoothed.astype(dtype), xp.asarray(khat).astype(dtype), xp.asarray(sigma).astype(dtype))


def psis(log_ratios: ArrayLike, normalize: bool = True) -> PSISResult:
    """Pareto-smoothed importance sampling of log ratios `r_s = log p(zeta_s) - log q(zeta_s)`.

    Sorts the ratios, fits a generalized Pareto distribution (`gpd_fit`) to the exceedances
    `exp(r) - exp(u)` of the largest `M = ceil(min(S/5, 3 sqrt(S)))` ratios over the threshold
    `u` (the (M+1)-th largest), and replaces them, in order, by the expected GPD order
    statistics `u + F^{-1}((z - 1/2) / M)`, capped at the largest raw ratio. Fixed sizes only,
    so it runs under `jax.jit` and `jax.vmap`.

    Args:
      log_ratios: (S,) float log importance ratios; NaN counts as -inf (weight zero), but with
        NaN present k-hat is never -inf ("perfect"): it is then +inf. A fit's share of draws
        with a non-finite log density is judged by `advi_jax.result.diagnose`. For
        S < 25 (a tail under 5 draws) no tail can be fitted: k-hat is +inf and the weights are
        returned unsmoothed.
      normalize: subtract the log-sum-exp so the weights sum to one.

    Returns:
      A `PSISResult` (smoothed log weights, k-hat, GPD scale).

    Raises:
      TypeError, ValueError: `log_ratios` is not a 1-d real array.

    Example:
      >>> import jax, advi_jax as aj
      >>> r = jax.random.normal(jax.random.key(1), (1000,))
      >>> aj.psis(r).log_weights.shape
      (1000,)

    References:
      Vehtari, Simpson, Gelman, Yao & Gabry, "Pareto smoothed importance sampling".
    """
    log_ratios = _check_log_ratios(log_ratios)
    if not isinstance(normalize, (bool, np.bool_)):
        raise TypeError(f"normalize must be a bool, got {type(normalize).__name__}")
    return _psis_core(log_ratios, bool(normalize))


def iw_elbo(log_ratios: ArrayLike) -> tuple[Array, Array]:
    """Importance-weighted ELBO `log (1/S) sum_s exp(r_s)` and its delta-method standard error.

    With `w = exp(r - max r)`, `Var[log mean(w)] ~= Var(w) / (S mean(w)^2)`, so
    `se = sd(w) / (sqrt(S) mean(w))` (sample sd, ddof=1). The bias of the log of a mean is of
    the same order as the variance and is not corrected; the se is itself unreliable when
    k-hat > 0.7 (the weights then have infinite variance).

    Args:
      log_ratios: (S,) log importance ratios, S >= 2.

    Returns:
      (iw_elbo, se), scalars.
    """
    log_ratios = _check_log_ratios(log_ratios, min_size=2)
    return _on_host_when_concrete(_iw_elbo_core_xp, log_ratios)


def _iw_elbo_core(log_ratios: Array, xp=jnp) -> tuple[Array, Array]:
    r = xp.where(xp.isnan(log_ratios), -xp.inf, log_ratios)
    num_draws = r.shape[0]
    top = xp.max(r)
    shift = xp.where(xp.isfinite(top), top, 0.0)
    w = xp.exp(r - shift)
    mean_w = xp.mean(w)
    value = xp.log(mean_w) + shift
    sd_w = xp.std(w, ddof=1)
    se = sd_w / (xp.sqrt(xp.asarray(num_draws, r.dtype)) * mean_w)
    return value, se


def importance_ess(log_weights: ArrayLike) -> Array:
    """Effective sample size of self-normalised weights, `1 / sum_s w_norm_s^2` (Kong 1992).

    Between 1 (one draw carries all the weight) and S (equal weights). Pass PSIS-smoothed log
    weights for the PSIS version.

    Args:
      log_weights: (S,) log weights (unnormalised is fine).

    Returns:
      Scalar ESS.
    """
    log_weights = _check_log_ratios(log_weights, "log_weights")
    return _on_host_when_concrete(lambda xp, w: _ess_core(w, xp), log_weights)


def _iw_elbo_core_xp(xp, log_ratios):
    return _iw_elbo_core(log_ratios, xp)


def _ess_core(log_weights: Array, xp=jnp) -> Array:
    lw = xp.where(xp.isnan(log_weights), -xp.inf, log_weights)
    lw = lw - _logsumexp(lw, xp)
    return 1.0 / xp.sum(xp.exp(2.0 * lw))


def _diagnostics_core(log_ratios: Array, xp=None, smoothed: PSISResult | None = None) -> ImportanceDiagnostics:
    """`smoothed`: `_psis_core(log_ratios, True, xp)` where the caller has it already (else computed here)."""
    if xp is None:
        return ImportanceDiagnostics(*_on_host_when_concrete(lambda m, r: tuple(_diagnostics_core(r, m)), log_ratios))
    num_draws = log_ratios.shape[0]
    finite = xp.isfinite(log_ratios)
    if smoothed is None:
        smoothed = _psis_core(log_ratios, True, xp)
    value, se = _iw_elbo_core(log_ratios, xp)
    n = xp.asarray(num_draws, log_ratios.dtype)
    # The plain ELBO is -inf as soon as one draw has log p = -inf; that is the honest value.
    elbo = xp.mean(xp.where(xp.isnan(log_ratios), -xp.inf, log_ratios))
    elbo_se = xp.std(log_ratios, ddof=1) / xp.sqrt(n)
    return ImportanceDiagnostics(
        khat=smoothed.khat,
        iw_elbo=value,
        iw_elbo_se=se,
        elbo=elbo,
        elbo_se=elbo_se,
        ess=_ess_core(log_ratios, xp),
        psis_ess=_ess_core(smoothed.log_weights, xp),
        num_nonfinite=xp.sum(~finite).astype(xp.int32),
    )


def importance_diagnostics(log_ratios: ArrayLike) -> ImportanceDiagnostics:
    """All importance-sampling diagnostics of log ratios `log p - log q` in one call.

    Args:
      log_ratios: (S,) log importance ratios of draws from q, S >= 2.

    Returns:
      An `ImportanceDiagnostics`.

    Example:
      >>> import jax, advi_jax as aj
      >>> d = aj.importance_diagnostics(0.1 * jax.random.normal(jax.random.key(0), (2000,)))
      >>> bool(d.ess > 1900)
      True
    """
    log_ratios = _check_log_ratios(log_ratios, min_size=2)
    return _diagnostics_core(log_ratios)


# ----------------------------------------------------------------------------------------------
# PSIS-corrected estimates


def _check_draws(draws: Any, num_draws: int) -> None:
    leaves = jax.tree_util.tree_leaves(draws)
    if not leaves:
        raise ValueError("draws must be an array or a pytree of arrays with leading axis S, got an empty tree")
    for leaf in leaves:
        shape = np.shape(leaf)
        if len(shape) == 0 or shape[0] != num_draws:
            raise ValueError(f"every leaf of draws needs leading axis {num_draws} (one per log ratio), got shape "
                             f"{shape}")


def psis_expectation(values: PyTree, log_ratios: ArrayLike) -> PyTree:
    """Self-normalised PSIS estimate of posterior expectations: `sum_s w_s f(zeta_s)`.

    `w` are the Pareto-smoothed normalised weights of `log_ratios`. The estimate is reliable
    when k-hat < 0.7 (`khat_threshold`); it converges at the Monte Carlo rate for k < 0.5.

    Args:
      values: array or pytree of arrays with leading axis S: f evaluated at each draw of q.
      log_ratios: (S,) log p - log q of the same draws.

    Returns:
      The weighted average, a pytree like `values` without the leading axis.

    Example:
      >>> import jax, jax.numpy as jnp, advi_jax as aj
      >>> z = jax.random.normal(jax.random.key(0), (4000,))
      >>> est = aj.psis_expectation(z, jnp.zeros(4000))   # q = p: a plain mean
      >>> bool(jnp.abs(est) < 0.1)
      True
    """
    log_ratios = _check_log_ratios(log_ratios)
    _check_draws(values, log_ratios.shape[0])
    weights = jnp.exp(_psis_core(log_ratios, True).log_weights)

    def average(v):
        v = jnp.asarray(v)
        return jnp.tensordot(weights.astype(jnp.result_type(v.dtype, weights.dtype)), v, axes=1)

    return jax.tree_util.tree_map(average, values)


def psis_resample(key: Array, draws: PyTree, log_ratios: ArrayLike, num_draws: int) -> PyTree:
    """Importance resampling: `num_draws` draws picked with replacement by PSIS weights.

    Sampling-importance-resampling (Rubin 1988) with Pareto-smoothed weights: the result is
    approximately distributed as the posterior when k-hat < 0.7. The resampled draws contain
    repeats (about S / ESS copies of heavily weighted draws), so they are less informative than
    as many independent draws; use S well above `num_draws`.

    Args:
      key: PRNG key.
      draws: array or pytree with leading axis S (draws of q).
      log_ratios: (S,) log p - log q of the draws.
      num_draws: how many to return (static int >= 1).

    Returns:
      A pytree like `draws` with leading axis `num_draws`.
    """
    key = check_key(key)
    log_ratios = _check_log_ratios(log_ratios)
    _check_draws(draws, log_ratios.shape[0])
    num_draws = check_positive_int(num_draws, "num_draws")
    log_weights = _psis_core(log_ratios, True).log_weights
    # Inverse-CDF picks: one uniform per pick and a binary search in the cumulative weights,
    # O((S + num_draws) log S). (`jax.random.categorical` with a shape draws num_draws x S Gumbel
    # variates: 8-10 s at S = 8,000, num_draws = 4,000.) On the host in float64 when concrete: op by
    # op, jax.numpy compiled each of the search's operations on first use (1.3 s of a first call).
    concrete = is_concrete((log_weights,))
    xp = np if concrete else jnp
    if concrete:
        log_weights = np.asarray(log_weights, np.float64)
    weights = xp.exp(log_weights - xp.max(log_weights))
    cdf = xp.cumsum(weights)
    uniform = _uniform(key, (num_draws,))  # the same uniforms traced or not: the same picks
    if concrete:
        uniform = np.asarray(uniform, np.float64)
    # side="right": the first index whose cumulative weight exceeds u, so a zero weight is never picked
    index = xp.minimum(xp.searchsorted(cdf, uniform * cdf[-1], side="right"), log_weights.shape[0] - 1)
    if concrete:  # picked on the host, handed back as device arrays (a transfer, no compilation)
        return jax.tree_util.tree_map(lambda v: jax.device_put(np.asarray(v)[index]), draws)
    return jax.tree_util.tree_map(lambda v: jnp.asarray(v)[index], draws)


_uniform = jax.jit(jax.random.uniform, static_argnums=(1,))
