"""Per-datum log-likelihoods of the probit and negative-binomial (NB2) GLMs, in stable forms.

These likelihoods take the plain XLA path: `eta = X beta + c (+ offset)` and autodiff, so a
gradient reads X twice (the one-read native kernel of `advi_jax.models.glm` covers the logistic
and Poisson families only). The exact-ELBO fit (`method="glm_exact"`) does not use them: it reads
X once per pass through its own blocked pass.

* probit: `log p(y | eta) = log Phi(s eta)`, `s = 2y - 1`, with `log_ndtr` (accurate in the far
  lower tail, where `log(Phi)` would underflow to -inf).
* negative binomial, NB2 (mean `mu = exp(eta)`, dispersion `phi > 0`, variance `mu + mu^2 / phi`),
  written with `omega = log phi` and `u = eta - omega`:

      log p(y | eta, phi) = D(y, phi) - lgamma(y + 1) + y eta - y softplus(u) - phi softplus(u),
      D(y, phi) = lgamma(y + phi) - lgamma(phi) - y log(phi)  (= sum_{k<y} log(1 + k / phi)),

  with D for phi >= 10 from Stirling's form (`log_rising_ratio`: no cancellation of two large
  lgammas, where the plain difference errs by ~10 in float32 at phi = 1e7; float64 within 1e-13
  (1 + |D|) of the exact sum, float32 within 4e-6 (1 + |D|), counts to 1e4, phi to 1e8), and
  `phi softplus(u)` as `exp(eta) log1p(e^u) / e^u` for u < 0 (finite as phi -> inf, where the
  density tends to Poisson's).

Example:
  >>> import jax.numpy as jnp
  >>> from advi_jax.models.glm_more import negbin_log_lik
  >>> float(negbin_log_lik(jnp.asarray(2.0), jnp.asarray(0.0), jnp.asarray(30.0)))  # doctest: +ELLIPSIS
  -1.709...
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax.scipy.special import digamma, gammaln, log_ndtr

from advi_jax._types import Array, ArrayLike

__all__ = ["probit_log_lik", "negbin_log_lik", "log_rising_ratio", "rising_ratio_dphi", "phi_softplus", "glm_more_log_likelihood",
           "distinct_counts", "distinct_table", "pad_distinct", "DISTINCT_KEYS"]

DISTINCT_KEYS = ("y_distinct", "y_count")
"""The NB model's data entries of its distinct counts (`distinct_counts`), read by `vi._glm_lik`."""


def probit_log_lik(y: ArrayLike, eta: ArrayLike) -> Array:
    """log Phi((2y - 1) eta) elementwise (y in {0, 1}).

    Args:
      y: 0/1 responses.
      eta: linear predictors (broadcast against `y`).

    Returns:
      The log-likelihood terms, finite for every finite `eta`.
    """
    return log_ndtr((2.0 * y - 1.0) * eta)


# Stirling's series of lgamma(x) - ((x - 1/2) log x - x + log(2 pi) / 2): the coefficients c_k of x^-(2k-1).
# Seven terms are float64-exact at x >= STIRLING_FROM (the last term kept is ~1e-16 of the remainder there, and
# 8e-16 of lgamma's derivative for the remainder's derivative).
_STIRLING = (1.0 / 12, -1.0 / 360, 1.0 / 1260, -1.0 / 1680, 1.0 / 1188, -691.0 / 360360, 1.0 / 156)
STIRLING_FROM = 10.0
"""Below this phi, D and its derivative come from lgamma / digamma differences; from it, Stirling's form."""

# log1p(r) = 2 atanh(s), s = r / (2 + r): the series in t = s^2 below is used for r <= _SERIES_TO (s <= 0.2,
# t <= 0.04: 12 terms reach 1e-18 of the sum); above, the direct forms cancel by at most a factor 6.
_SERIES_TO = 0.5
_ATANH_TERMS = 12


def _stirling_rem(x: Array) -> Array:
    """lgamma's Stirling remainder sum_k c_k x^-(2k-1) (x >= `STIRLING_FROM`; 0 at x = inf)."""
    inv = 1.0 / x
    r = inv * inv
    acc = jnp.zeros_like(x)
    for k in range(len(_STIRLING), 0, -1):
        acc = acc * r + _STIRLING[k - 1]
    return acc * inv


def _stirling_rem_prime(x: Array) -> Array:
    """d/dx of `_stirling_rem`, sum_k -(2k - 1) c_k x^-2k."""
    inv = 1.0 / x
    r = inv * inv
    acc = jnp.zeros_like(x)
    for k in range(len(_STIRLING), 0, -1):
        acc = (acc - (2 * k - 1) * _STIRLING[k - 1]) * r
    return acc


def _large_phi_parts(y: Array, phi: Array) -> tuple[Array, Array, Array]:
    """(G, K, log1p(r)) at r = y / phi, with G = g(r) / r, g = (1 + r) log1p(r) - r and K = r - log1p(r),
    both without cancellation (y >= 1, phi >= `STIRLING_FROM`; finite for phi = inf).

    For small r, with s = y / (2 phi + y) = r / (2 + r) and log1p(r) = 2 s (1 + s^2 / 3 + s^4 / 5 + ...):
    G = s + (1 + s) s^2 C(s^2) and K = 2 s^2 (1 / (1 - s) - s C(s^2)), C(t) = sum_j t^j / (2j + 3), sums of
    terms of one sign (or a 7% correction); above r = 0.5, G = (1 + 1/r) log1p(r) - 1 and K = r - log1p(r).
    phi g(r) = y G and d/dphi [phi g(y / phi)] = -K: the value's and the derivative's one pair of forms."""
    s = jnp.minimum(y / (2.0 * phi + y), _SERIES_TO / (2.0 + _SERIES_TO))
    t = s * s
    c = jnp.zeros_like(t)
    for j in range(_ATANH_TERMS - 1, -1, -1):
        c = c * t + 1.0 / (2 * j + 3)
    series_g = s + (1.0 + s) * t * c
    series_k = 2.0 * t * (1.0 / (1.0 - s) - s * c)
    r = y / phi
    small = r <= _SERIES_TO
    rd = jnp.maximum(r, _SERIES_TO)
    log_d = jnp.log1p(rd)
    g = jnp.where(small, series_g, (1.0 + 1.0 / rd) * log_d - 1.0)
    k = jnp.where(small, series_k, rd - log_d)
    return g, k, jnp.log1p(r)


def log_rising_ratio(y: ArrayLike, phi: ArrayLike) -> Array:
    """D(y, phi) = lgamma(y + phi) - lgamma(phi) - y log(phi), elementwise, stable (= sum_{k<y} log1p(k / phi)).

    For phi >= 10 from Stirling's form, D = phi g(y / phi) - log1p(y / phi) / 2 + rem(y + phi) - rem(phi)
    (`_large_phi_parts`; no difference of large lgammas, accurate as phi -> inf, where D -> y (y - 1) / (2 phi));
    below, the lgamma difference (its terms are small there). Float64: within 1e-13 (1 + |D|) of the exact
    sum over counts 0..1e4 and phi in [1e-3, 1e8]. Its derivative in phi is `rising_ratio_dphi`, from the
    same forms, so the value's finite differences agree with it to rounding.

    Args:
      y: non-negative counts.
      phi: positive dispersions (broadcast against `y`).

    Returns:
      D, 0 where y = 0.
    """
    y = jnp.asarray(y)
    safe_y = jnp.maximum(y, 1.0)
    big = jnp.maximum(phi, STIRLING_FROM)
    g, _, log1p_r = _large_phi_parts(safe_y, big)
    large = safe_y * g - 0.5 * log1p_r + (_stirling_rem(safe_y + big) - _stirling_rem(big))
    small_phi = jnp.minimum(phi, STIRLING_FROM)
    small = gammaln(safe_y + small_phi) - gammaln(small_phi) - safe_y * jnp.log(small_phi)
    d = jnp.where(phi >= STIRLING_FROM, large, small)
    return jnp.where(y > 0, d, 0.0)


def rising_ratio_dphi(y: ArrayLike, phi: ArrayLike) -> Array:
    """dD(y, phi) / d phi of `log_rising_ratio`, from the same forms:

    * phi >= 10: -K(y / phi) + y / (2 phi (y + phi)) + rem'(y + phi) - rem'(phi) (`_large_phi_parts`: no
      digamma, and K = r - log1p(r) without cancellation, so it is accurate as phi -> inf too);
    * phi < 10: digamma(y + phi) - digamma(phi) - y / phi;
    * y = 0: 0.

    Args:
      y: non-negative counts.
      phi: positive dispersions (broadcast against `y`).
    """
    y = jnp.asarray(y)
    safe_y = jnp.maximum(y, 1.0)
    big = jnp.maximum(phi, STIRLING_FROM)
    _, k, _ = _large_phi_parts(safe_y, big)
    large = -k + 0.5 * (safe_y / big) / (safe_y + big) + (_stirling_rem_prime(safe_y + big) - _stirling_rem_prime(big))
    small_phi = jnp.minimum(phi, STIRLING_FROM)
    small = digamma(safe_y + small_phi) - digamma(small_phi) - safe_y / small_phi
    d = jnp.where(phi >= STIRLING_FROM, large, small)
    return jnp.where(y > 0, d, 0.0)


def phi_softplus(eta: ArrayLike, log_phi: ArrayLike) -> Array:
    """phi * softplus(eta - log phi), finite for any finite eta, log_phi (tends to exp(eta)).

    Args:
      eta, log_phi: arrays of broadcastable shapes.

    Returns:
      phi log(1 + exp(eta) / phi).
    """
    u = eta - log_phi
    z = jnp.exp(-jnp.abs(u))
    # u < 0: phi * log1p(e^u) = exp(eta) * log1p(z) / z with z = e^u <= 1 (-> exp(eta) as z -> 0).
    ratio = jnp.where(z > 1e-30, jnp.log1p(z) / jnp.where(z > 1e-30, z, 1.0), 1.0)
    neg = jnp.exp(eta) * ratio
    pos = jnp.exp(log_phi) * (u + jnp.log1p(z))
    return jnp.where(u < 0, neg, pos)


def negbin_log_lik(y: ArrayLike, eta: ArrayLike, phi: ArrayLike) -> Array:
    """NB2 log-likelihood, mean exp(eta) and dispersion phi, elementwise (see the module docstring).

    Args:
      y: non-negative counts.
      eta: log means.
      phi: positive dispersions (variance = mean + mean^2 / phi).

    Returns:
      log p(y | eta, phi), finite for finite eta and phi > 0.
    """
    log_phi = jnp.log(phi)
    u = eta - log_phi
    softplus_u = jnp.logaddexp(u, 0.0)
    return (log_rising_ratio(y, phi) - gammaln(y + 1.0) + y * (eta - softplus_u) - phi_softplus(eta, log_phi))


def glm_more_log_likelihood(x: Array, y: Array, beta: Array, intercept: ArrayLike, offset: Array | None,
                            family: str, phi: ArrayLike | None = None, table: tuple | None = None) -> Array:
    """sum_i log p(y_i | eta_i) for family "probit" or "negbin" (XLA, autodiff: X read twice per gradient).

    Args:
      x: (N, D) design; y: (N,) responses; beta: (D,); intercept: scalar; offset: (N,) or None.
      family: "probit" or "negbin".
      phi: the negative-binomial dispersion (scalar), required for "negbin".
      table: optional (distinct values, multiplicities) of y (`distinct_counts`), "negbin" only: the
        terms that depend on a row only through y_i, D(y_i, phi) - lgamma(y_i + 1), are then summed
        once per distinct value (the same sum up to rounding order; U evaluations of D instead of N).

    Returns:
      Scalar log-likelihood.

    Raises:
      ValueError: an unknown family, or "negbin" without `phi`.
    """
    eta = x @ beta + intercept
    if offset is not None:
        eta = eta + offset
    if family == "probit":
        return jnp.sum(probit_log_lik(y, eta))
    if family == "negbin":
        if phi is None:
            raise ValueError("family 'negbin' needs the dispersion phi")
        if table is None:
            return jnp.sum(negbin_log_lik(y, eta, phi))
        values, counts = table
        log_phi = jnp.log(phi)
        rows = jnp.sum(y * (eta - jnp.logaddexp(eta - log_phi, 0.0)) - phi_softplus(eta, log_phi))
        per_value = log_rising_ratio(values, phi) - gammaln(values + 1.0)
        return rows + jnp.sum(counts.astype(per_value.dtype) * per_value)
    raise ValueError(f"family must be 'probit' or 'negbin', got {family!r}")


def distinct_counts(y: np.ndarray, dtype) -> dict:
    """The distinct values of the counts `y` and their multiplicities, on the host (once per model).

    The negative binomial's E_q[D(y_i, phi)] depends on a row only through y_i, so the exact-ELBO fit
    (`advi_jax.vi._glm_lik`) sums it once per distinct count, weighted by its multiplicity, instead of
    once per row. The arrays are padded with (value 0, count 0) entries to a power of two >= 8, so
    that data sets with a similar number of distinct counts share a compiled fit.

    Args:
      y: (N,) non-negative integer counts (checked by the model's constructor).
      dtype: the float dtype of the model's data.

    Returns:
      {"y_distinct": (U,) values in `dtype`, "y_count": (U,) int32 multiplicities}, U a power of two.

    Example:
      >>> out = distinct_counts(np.asarray([3.0, 0.0, 3.0, 7.0]), np.float32)
      >>> out["y_distinct"][:3].tolist(), out["y_count"][:4].tolist()
      ([0.0, 3.0, 7.0], [1, 2, 1, 0])
    """
    values, counts = np.unique(np.asarray(y, np.float64), return_counts=True)
    size = max(8, 1 << (len(values) - 1).bit_length())
    out_values = np.zeros(size, dtype)
    out_counts = np.zeros(size, np.int32)
    out_values[:len(values)] = values
    out_counts[:len(values)] = counts
    return {"y_distinct": out_values, "y_count": out_counts}


def distinct_table(data) -> tuple | None:
    """(values, multiplicities, matches) of the distinct counts in a model's `data` (`distinct_counts`),
    or None where the data do not carry them or they are not fewer than the rows (static: shapes only).

    `matches` (a traced bool) says the table agrees with `data["y"]`: the count, sum y and sum y^2 in
    int32 (wrapping: equal sums stay equal mod 2^32). Users of the table make their result NaN where it
    does not (y edited after the model was built), rather than silently wrong. It does not depend on
    the parameters, so under `vmap` over draws it is computed once.
    """
    if (not isinstance(data, dict) or not all(name in data for name in DISTINCT_KEYS)
            or data[DISTINCT_KEYS[0]].shape[-1] >= data["y"].shape[-1]):
        return None
    values, counts = data[DISTINCT_KEYS[0]], data[DISTINCT_KEYS[1]]
    iv, iy = values.astype(jnp.int32), data["y"].astype(jnp.int32)
    matches = ((jnp.sum(counts) == iy.shape[0]) & (jnp.sum(counts * iv) == jnp.sum(iy))
               & (jnp.sum(counts * iv * iv) == jnp.sum(iy * iy)))
    return values, counts, matches


def pad_distinct(datas: list) -> list:
    """`distinct_counts` tables of several data dicts padded (count 0) to one length (for stacking)."""
    sizes = [int(np.shape(d["y_distinct"])[-1]) for d in datas if isinstance(d, dict) and DISTINCT_KEYS[0] in d]
    if not sizes or min(sizes) == max(sizes):
        return datas
    size = max(sizes)
    out = []
    for d in datas:
        d = dict(d)
        for name in DISTINCT_KEYS:
            a = np.asarray(d[name])
            d[name] = np.concatenate([a, np.zeros(size - a.shape[-1], a.dtype)])
        out.append(d)
    return out
