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

  with D from `lgamma(y) - betaln(y, phi) - y log(phi)` (no cancellation of two large lgammas:
  float32 error <= 1e-4 absolute up to phi = 1e7, y = 300, where the plain difference errs by
  ~10), and `phi softplus(u)` as `exp(eta) log1p(e^u) / e^u` for u < 0 (finite as phi -> inf,
  where the density tends to Poisson's).

Example:
  >>> import jax.numpy as jnp
  >>> from advi_jax.models.glm_more import negbin_log_lik
  >>> float(negbin_log_lik(jnp.asarray(2.0), jnp.asarray(0.0), jnp.asarray(30.0)))  # doctest: +ELLIPSIS
  -1.709...
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax.scipy.special import betaln, gammaln, log_ndtr

from advi_jax._types import Array, ArrayLike

__all__ = ["probit_log_lik", "negbin_log_lik", "log_rising_ratio", "phi_softplus", "glm_more_log_likelihood",
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


def log_rising_ratio(y: ArrayLike, phi: ArrayLike) -> Array:
    """D(y, phi) = lgamma(y + phi) - lgamma(phi) - y log(phi), elementwise, stable (see module).

    Args:
      y: non-negative counts.
      phi: positive dispersions (broadcast against `y`).

    Returns:
      D, 0 where y = 0.
    """
    y = jnp.asarray(y)
    safe_y = jnp.maximum(y, 1.0)
    # phi >> y^2 (betaln loses digits near float max): D = y (y - 1) / (2 phi) + O(y^3 / phi^2).
    huge = phi > 1e4 * jnp.square(safe_y + 1.0)
    safe_phi = jnp.where(huge, 1.0, phi)
    d = gammaln(safe_y) - betaln(safe_y, safe_phi) - safe_y * jnp.log(safe_phi)
    d = jnp.where(huge, 0.5 * safe_y * (safe_y - 1.0) / phi, d)
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
        once per distinct value (the same sum up to rounding order; U betaln instead of N).

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
