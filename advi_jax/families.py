"""Gaussian variational families on R^K: mean-field and full-rank (Cholesky).

Both are frozen, stateless objects whose methods are pure functions of a parameter
NamedTuple, so they jit, vmap and differentiate.

Scale parameterisation: positive scales (the mean-field standard deviations and the diagonal
of the full-rank Cholesky factor) are `softplus(raw)`. Softplus is linear for large `raw`, so
one large gradient step cannot overflow the scale the way `exp` can, and it reaches small
scales through its exponential left tail. The default initial scale is 0.1, as NumPyro uses:
on regression posteriors (scales of 1e-2 to 1e-1 after standardising features) starting at
Stan's scale 1 puts most early draws far in the tails, where the log joint and its gradient are
large, and takes a few hundred extra Adam steps to shrink; 0.1 converged faster on every
benchmark model we tried (see benchmarks/), while a scale of 1 is available through
`init(..., scale=1.0)`.

Example:
  >>> import jax, advi_jax as aj
  >>> fam = aj.MeanFieldGaussian()
  >>> params = fam.init(jax.random.key(0), 3)
  >>> fam.sample(params, jax.random.key(1), 5).shape
  (5, 3)
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from advi_jax._types import Array, ArrayLike, check_positive_int
from advi_jax.base import Family

__all__ = [
    "Family",
    "MeanFieldGaussian",
    "MeanFieldParams",
    "FullRankGaussian",
    "FullRankParams",
    "get_family",
    "FAMILIES",
]

_LOG_2PI = math.log(2.0 * math.pi)


def _softplus(x: Array) -> Array:
    return jnp.logaddexp(x, 0.0)


def _lift(x: Array, ndim: int) -> Array:
    """Prepend singleton axes so `x` (..., K) lines up with an array of `ndim` dimensions."""
    return jnp.reshape(x, (1,) * (ndim - x.ndim) + x.shape)


def _softplus_inverse(y: ArrayLike) -> Array:
    y = jnp.asarray(y)
    return y + jnp.log(-jnp.expm1(-y))


class MeanFieldParams(NamedTuple):
    """Mean-field Gaussian parameters.

    Attributes:
      loc: (K,) means.
      raw_scale: (K,) with scale = softplus(raw_scale).
    """

    loc: Array
    raw_scale: Array


class FullRankParams(NamedTuple):
    """Full-rank Gaussian parameters, covariance L L^T.

    Attributes:
      loc: (K,) mean.
      raw_diag: (K,) with diag(L) = softplus(raw_diag).
      off_diag: (K, K); only its strictly lower triangle is used (the rest has zero gradient).
    """

    loc: Array
    raw_diag: Array
    off_diag: Array


@dataclasses.dataclass(frozen=True)
class MeanFieldGaussian(Family):
    """q(zeta) = prod_k N(zeta_k | loc_k, softplus(raw_scale_k)^2)."""

    name: str = "meanfield"
    affine_closed: ClassVar[bool] = True
    params_type: ClassVar[type] = MeanFieldParams

    def init(self, key, dim, *, loc=None, scale=0.1, dtype=None) -> MeanFieldParams:
        """Parameters at mean `loc` (default 0) and every scale equal to `scale`.

        `key` is unused (the initialisation is deterministic); it is accepted so every
        family shares one signature.
        """
        dim, loc, dtype = self._check_init(dim, loc, scale, dtype)
        return MeanFieldParams(loc, jnp.full((dim,), _softplus_inverse(float(scale)), dtype))

    def scale(self, params: MeanFieldParams) -> Array:
        """(K,) standard deviations."""
        return _softplus(params.raw_scale)

    def sample_standard(self, params, noise):
        return _lift(params.loc, noise.ndim) + _lift(self.scale(params), noise.ndim) * noise

    def log_prob(self, params, zeta):
        """log q(zeta) for zeta of shape (..., K); returns shape (...)."""
        scale = self.scale(params)
        zeta = jnp.asarray(zeta)
        z = (zeta - _lift(params.loc, zeta.ndim)) / _lift(scale, zeta.ndim)
        return -0.5 * jnp.sum(z * z, axis=-1) - jnp.sum(jnp.log(scale)) - 0.5 * params.loc.shape[-1] * _LOG_2PI

    def entropy(self, params):
        """sum(log scale) + K/2 (1 + log 2 pi)."""
        k = params.loc.shape[-1]
        return jnp.sum(jnp.log(self.scale(params)), axis=-1) + 0.5 * k * (1.0 + _LOG_2PI)

    def scale_tril(self, params):
        return jnp.diag(self.scale(params))

    def covariance(self, params):
        return jnp.diag(self.scale(params) ** 2)

    def variance(self, params):
        return self.scale(params) ** 2

    def transform(self, params, shift, scale_tril):
        """Pushforward through zeta -> shift + diag(scale_tril) * zeta (the diagonal is used)."""
        d = jnp.diagonal(scale_tril)
        return MeanFieldParams(shift + d * params.loc, _softplus_inverse(d * self.scale(params)))


@dataclasses.dataclass(frozen=True)
class FullRankGaussian(Family):
    """q(zeta) = N(zeta | loc, L L^T) with L lower triangular, diag(L) = softplus(raw_diag)."""

    name: str = "fullrank"
    affine_closed: ClassVar[bool] = True
    params_type: ClassVar[type] = FullRankParams

    def init(self, key, dim, *, loc=None, scale=0.1, dtype=None) -> FullRankParams:
        """Parameters at mean `loc` (default 0) and L = scale * I (`key` unused)."""
        dim, loc, dtype = self._check_init(dim, loc, scale, dtype)
        return FullRankParams(loc, jnp.full((dim,), _softplus_inverse(float(scale)), dtype),
                              jnp.zeros((dim, dim), dtype))

    @staticmethod
    def from_scale_tril(loc: Array, scale_tril: Array) -> FullRankParams:
        """The parameters of N(loc, L L^T) for a lower-triangular L with a positive diagonal."""
        return FullRankParams(loc, _softplus_inverse(jnp.diagonal(scale_tril)), scale_tril)

    def scale_tril(self, params: FullRankParams) -> Array:
        """(K, K) lower-triangular Cholesky factor L."""
        return jnp.tril(params.off_diag, -1) + jnp.diag(_softplus(params.raw_diag))

    def sample_standard(self, params, noise):
        L = self.scale_tril(params)
        return _lift(params.loc, noise.ndim) + noise @ L.T

    def log_prob(self, params, zeta):
        """log q(zeta) for zeta of shape (..., K), by a triangular solve (no inverse)."""
        L = self.scale_tril(params)
        zeta = jnp.asarray(zeta)
        diff = zeta - _lift(params.loc, zeta.ndim)
        batch = diff.shape[:-1]
        k = diff.shape[-1]
        z = solve_triangular(L, diff.reshape(-1, k).T, lower=True).T.reshape(batch + (k,))
        log_det = jnp.sum(jnp.log(_softplus(params.raw_diag)))
        return -0.5 * jnp.sum(z * z, axis=-1) - log_det - 0.5 * k * _LOG_2PI

    def entropy(self, params):
        """sum(log diag L) + K/2 (1 + log 2 pi)."""
        k = params.loc.shape[-1]
        return jnp.sum(jnp.log(_softplus(params.raw_diag))) + 0.5 * k * (1.0 + _LOG_2PI)

    def transform(self, params, shift, scale_tril):
        """Pushforward through zeta -> shift + scale_tril @ zeta: loc' = shift + S loc, L' = S L."""
        return self.from_scale_tril(shift + scale_tril @ params.loc, scale_tril @ self.scale_tril(params))


FAMILIES: dict[str, Family] = {"meanfield": MeanFieldGaussian(), "fullrank": FullRankGaussian()}


def get_family(family: str | Family) -> Family:
    """Resolve a family name ("meanfield", "fullrank", ...) or pass a Family through."""
    if isinstance(family, Family):
        return family
    if isinstance(family, str) and family in FAMILIES:
        return FAMILIES[family]
    raise ValueError(f"family must be one of {sorted(FAMILIES)} or a Family instance, got {family!r}")


# ----------------------------------------------------------------------------------------------
# Low-rank plus diagonal (large K)

__all__ += ["LowRankGaussian", "LowRankParams"]


class LowRankParams(NamedTuple):
    """Low-rank-plus-diagonal Gaussian parameters, covariance diag(d^2) + B B^T.

    Attributes:
      loc: (K,) mean.
      raw_diag: (K,) with d = softplus(raw_diag) the diagonal standard deviations.
      factor: (K, r) the low-rank factor B.
    """

    loc: Array
    raw_diag: Array
    factor: Array


@dataclasses.dataclass(frozen=True)
class LowRankGaussian(Family):
    """q(zeta) = N(zeta | loc, D + B B^T), D = diag(softplus(raw_diag)^2), B of shape (K, rank).

    For large K (tens of thousands of parameters, e.g. hierarchical models with one effect per
    group) the full-rank family's K^2 parameters and O(K^3) Cholesky work are out of reach; this
    family captures the `rank` leading directions of posterior correlation at O(K r) memory and
    O(K r + r^3) work per sample, log density or entropy:

    * sample: zeta = loc + d * eps1 + B eps2 with eps1 ~ N(0, I_K), eps2 ~ N(0, I_r);
    * Woodbury / matrix determinant lemma with the r x r capacitance C = I_r + B^T D^{-1} B = M M^T:
      log det(D + B B^T) = log det D + 2 sum log diag M, and for x = zeta - loc,
      x^T (D + B B^T)^{-1} x = x^T D^{-1} x - |M^{-1} B^T D^{-1} x|^2 (a triangular solve, no inverse);
    * entropy = 0.5 log det(D + B B^T) + K/2 (1 + log 2 pi).

    Gradient noise: with one draw per step most of the K r entries of B see gradients that are
    nearly pure noise, and Adam's per-coordinate steps let them wander, which inflates the
    variance of q. The "sticking the landing" estimator (`estimator="stl"`, whose noise vanishes
    as q approaches the posterior) or more draws per step fix this (measured in
    benchmarks/PERFORMANCE.md, "Numbers from docstrings").

    Args:
      rank: r >= 1, the number of columns of B (static).

    Example:
      >>> import jax, advi_jax as aj
      >>> fam = aj.LowRankGaussian(rank=2)
      >>> params = fam.init(jax.random.key(0), 5)
      >>> fam.sample(params, jax.random.key(1), 3).shape
      (3, 5)

    References:
      Ong, Nott & Smith (2018), Gaussian variational approximation with a factor covariance
      structure, J. Comput. Graph. Stat. 27(3).
    """

    rank: int = 10
    name: str = "lowrank"
    # Closed under the diagonal maps a start of a family other than the full-rank one uses (as
    # mean-field is): a Laplace- or Pathfinder-whitened start, `transform` below.
    affine_closed: ClassVar[bool] = True
    params_type: ClassVar[type] = LowRankParams

    def __post_init__(self):
        check_positive_int(self.rank, "rank")

    def init(self, key, dim, *, loc=None, scale=0.1, dtype=None) -> LowRankParams:
        """Mean `loc` (default 0), diagonal sds `scale`, and a small random factor.

        B starts at N(0, (0.1 scale)^2 / r) entries rather than zero: at B = 0 the expected ELBO
        gradient with respect to B vanishes (a saddle), so a zero start would leave B to be moved
        by gradient noise alone. The added variance is ~1% of scale^2 per coordinate.
        """
        dim, loc, dtype = self._check_init(dim, loc, scale, dtype)
        factor = (0.1 * float(scale) / math.sqrt(self.rank)) * jax.random.normal(key, (dim, self.rank), dtype)
        return LowRankParams(loc, jnp.full((dim,), _softplus_inverse(float(scale)), dtype), factor)

    def diag_scale(self, params: LowRankParams) -> Array:
        """(K,) the diagonal standard deviations d = sqrt(softplus(raw_diag)^2 + (`DIAG_FLOOR` |B_k|)^2).

        The floor keeps d_k at least 1% of the factor's row norm |B_k|. Where a coordinate's variance is
        all along the factor's columns, the ELBO barely changes as d_k -> 0 (a Heywood case), and d_k
        drifted there: at d = 1e-6 against |B_k| = 2e-3 the capacitance I + B^T D^-2 B was not positive
        definite in float32, and log q was NaN at every draw (a default fit of a K = 254 varying-intercept
        regression after 60,000 steps; benchmarks/PERFORMANCE.md). With the floor the capacitance's
        condition number stays under about 1 + 1e4 r, and d_k's share of the variance is at least 1e-4.
        """
        return jnp.sqrt(_softplus(params.raw_diag) ** 2 + DIAG_FLOOR ** 2 * jnp.sum(params.factor ** 2, axis=-1))

    def sample(self, params, key, num_samples):
        """`num_samples` reparameterised draws, shape (num_samples, K), in O(K r) each."""
        k, r = params.factor.shape
        noise = jax.random.normal(key, (num_samples, k + r), params.loc.dtype)
        return self.sample_standard(params, noise)

    def sample_standard(self, params, noise):
        """Map standard-normal noise of shape (..., K + r) to draws loc + d * noise[:K] + B noise[K:]."""
        k = params.loc.shape[-1]
        eps1, eps2 = noise[..., :k], noise[..., k:]
        return (_lift(params.loc, eps1.ndim) + _lift(self.diag_scale(params), eps1.ndim) * eps1
                + eps2 @ params.factor.T)

    def _capacitance_cholesky(self, params):
        d = self.diag_scale(params)
        scaled = params.factor / d[:, None]  # D^{-1/2} B, (K, r)
        r = params.factor.shape[1]
        cap = jnp.eye(r, dtype=scaled.dtype) + scaled.T @ scaled
        return d, jnp.linalg.cholesky(cap)

    def _log_det(self, params):
        d, m = self._capacitance_cholesky(params)
        return 2.0 * jnp.sum(jnp.log(d)) + 2.0 * jnp.sum(jnp.log(jnp.diagonal(m))), d, m

    def log_prob(self, params, zeta):
        """log q(zeta) for zeta of shape (..., K) via Woodbury; returns shape (...)."""
        zeta = jnp.asarray(zeta)
        log_det, d, m = self._log_det(params)
        diff = zeta - _lift(params.loc, zeta.ndim)
        batch = diff.shape[:-1]
        k = diff.shape[-1]
        white = (diff / _lift(d, diff.ndim)).reshape(-1, k)  # D^{-1/2} x, (n, K)
        proj = white @ (params.factor / d[:, None])  # x^T D^{-1} B, (n, r)
        v = solve_triangular(m, proj.T, lower=True).T  # M^{-1} B^T D^{-1} x, (n, r)
        quad = (jnp.sum(white * white, axis=-1) - jnp.sum(v * v, axis=-1)).reshape(batch)
        return -0.5 * quad - 0.5 * log_det - 0.5 * k * _LOG_2PI

    def entropy(self, params):
        """0.5 log det(D + B B^T) + K/2 (1 + log 2 pi), by the matrix determinant lemma."""
        k = params.loc.shape[-1]
        log_det, _, _ = self._log_det(params)
        return 0.5 * log_det + 0.5 * k * (1.0 + _LOG_2PI)

    def covariance(self, params):
        """(K, K) dense covariance D + B B^T (O(K^2) memory: small K only)."""
        return jnp.diag(self.diag_scale(params) ** 2) + params.factor @ params.factor.T

    def scale_tril(self, params):
        """(K, K) Cholesky factor of the dense covariance (O(K^3): small K only)."""
        return jnp.linalg.cholesky(self.covariance(params))

    def variance(self, params):
        """(K,) marginal variances d^2 + rowsum(B^2), in O(K r)."""
        return self.diag_scale(params) ** 2 + jnp.sum(params.factor**2, axis=1)

    def transform(self, params, shift, scale_tril):
        """Pushforward through zeta -> shift + diag(scale_tril) * zeta (the diagonal is used, as the
        starts give this family: `advi_jax.run.start`): loc' = shift + s loc, d' = s d, B' = diag(s) B
        (the floor of `diag_scale` scales with B, so softplus(raw_diag) scales by s too)."""
        s = jnp.abs(jnp.diagonal(scale_tril))
        return LowRankParams(shift + s * params.loc, _softplus_inverse(s * _softplus(params.raw_diag)),
                             s[:, None] * params.factor)


FAMILIES["lowrank"] = LowRankGaussian()

DIAG_FLOOR = 0.01
"""`LowRankGaussian.diag_scale`'s floor on d_k, as a fraction of the factor's row norm |B_k|."""
