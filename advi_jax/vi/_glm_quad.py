"""One-dimensional Gaussian expectations of GLM log-likelihoods for `glm_exact` (and its relatives).

psi(y, mu, v) = E[l(y, eta)], eta ~ N(mu, v), with d psi / d mu and 2 d psi / d v: closed form for
Poisson (log link), Gauss-Hermite for logistic (and, through `_glm_lik`, probit).

The adaptive logistic rule (`expected_log_lik_auto`, `NODE_TIERS`) picks the rule per block of
rows from the largest sd of eta there. It is one copy of code for every tier: the positive nodes
t_j of each symmetric rule (8, 32 or 128 nodes: 4, 16 or 64 pairs) are stored in chunks of
`PAIRS_PER_CHUNK` pairs, and one loop over the chunks of the chosen rule evaluates the pairs
eta = mu +- sd t_j: two exponentials, one log1p and one expm1 per pair give softplus, the sigmoid
and the difference of the pair's sigmoids (the curvature) in a form that neither cancels as
sd -> 0 nor overflows (a third of the transcendental functions of evaluating the nodes one by
one, which is most of a pass at small D). A
`switch` over one copy of the block code per tier (what this replaced) tripled the code XLA
compiles for every program that contains the pass; the loop costs one compiled body and work
in proportion to the nodes used. The value is differentiable in (y, mu, var) by a `custom_jvp`
whose tangent is the rule's own exact derivatives (the loop's primal has no reverse-mode rule);
the first and curvature outputs are differentiable in forward mode (e.g. `jax.hessian`).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

from advi_jax._types import Array
from advi_jax.vi import _glm_lik

__all__ = ["NODE_TIERS", "PAIRS_PER_CHUNK", "data_constant", "expected_log_lik", "expected_log_lik_auto",
           "quadrature"]


def quadrature(num_nodes: int, dtype=jnp.float32) -> tuple[Array, Array]:
    """Probabilists' Gauss-Hermite nodes and weights for E[f(t)], t ~ N(0, 1) (weights sum to 1).

    Args:
      num_nodes: number of nodes (>= 1).
      dtype: float dtype of the returned arrays.

    Returns:
      (nodes (n,), weights (n,)) with E[f(t)] ~= sum_j weights_j f(nodes_j).

    Raises:
      ValueError: `num_nodes` is not an int in [1, 200].

    Example:
      >>> t, w = quadrature(8, jnp.float64)
      >>> float(jnp.sum(w * t ** 2))  # doctest: +ELLIPSIS
      1.0...
    """
    t, w = _rule(num_nodes)
    return jnp.asarray(t, dtype), jnp.asarray(w, dtype)


@functools.cache
def _rule_cached(num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    t, w = np.polynomial.hermite_e.hermegauss(num_nodes)
    return t, w / math.sqrt(2.0 * math.pi)


def _rule(num_nodes) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, (int, np.integer)) or not 1 <= num_nodes <= 200:
        raise ValueError(f"num_nodes must be an int in [1, 200] (numpy's rule overflows beyond), got {num_nodes!r}")
    return _rule_cached(int(num_nodes))


def expected_log_lik(kind: str, y: Array, mu: Array, var: Array, nodes: Array, weights: Array, *,
                     constant: bool = True) -> tuple[Array, Array, Array]:
    """psi = E[l(y, eta)] for eta ~ N(mu, var), elementwise, with d psi / d mu and 2 d psi / d var.

    For an exact Gaussian expectation 2 d psi / d var = E[l''] (Price's theorem); here it is the
    exact derivative of the quadrature value, so the objective and its derivatives agree to
    rounding (the fixed point of the optimiser is the stationary point of the objective).

    Args:
      kind: "logistic" or "probit" (Gauss-Hermite with symmetric `nodes`, `weights`) or "poisson"
        (closed form). (The negative binomial needs the dispersion's moments too: see `_glm_lik`.)
      y, mu, var: arrays of one shape; var >= 0.
      nodes, weights: from `quadrature` (ignored for Poisson).
      constant: include Poisson's data-only term -lgamma(y + 1) in psi (False: leave it to
        `data_constant`, summed once per fit instead of once per pass).

    Returns:
      (psi, d psi / d mu, 2 d psi / d var), each of the shape of `mu`.

    Example:
      >>> t, w = quadrature(16)
      >>> psi, d_mu, d2_var = expected_log_lik("logistic", jnp.ones(2), jnp.zeros(2), jnp.ones(2), t, w)
    """
    if kind == "poisson":
        rate = jnp.exp(mu + 0.5 * var)
        value = y * mu - rate
        return (value - gammaln(y + 1.0) if constant else value), y - rate, -rate
    if kind == "probit":
        return _glm_lik.probit_expect(y, mu, var, nodes, weights)
    sd = jnp.sqrt(var)
    return _logistic_plain(y, mu, sd, nodes, weights)


def _lift_nodes(mu, nodes, weights):
    lift = (1,) * jnp.ndim(mu) + (-1,)
    return jnp.reshape(nodes, lift), jnp.reshape(weights, lift)


def _logistic_plain(y, mu, sd, nodes, weights):
    """Gauss-Hermite on l = y eta - softplus(eta) directly (accurate while sd is not large)."""
    n = nodes.shape[0]
    t_pos, w_pos = _lift_nodes(mu, nodes[n - n // 2:], weights[n - n // 2:])
    t, w = _lift_nodes(mu, nodes, weights)
    eta = mu[..., None] + sd[..., None] * t  # (..., n)
    # softplus as max + log1p; sigmoid from one exponential (no log(1 - p)).
    e = jnp.exp(-jnp.abs(eta))
    softplus = jnp.maximum(eta, 0.0) + jnp.log1p(e)
    sig = jnp.where(eta >= 0, 1.0, e) / (1.0 + e)
    value = y * mu - jnp.sum(w * softplus, axis=-1)
    first = y - jnp.sum(w * sig, axis=-1)
    # 2 d/dvar sum_j w_j l(mu + sd t_j) = -sum_{t_j > 0} w_j t_j [sig(a_j) - sig(b_j)] / sd with
    # a, b = mu +- sd t_j, and sig(a) - sig(b) = -exp(sd t - s) expm1(-2 sd t) / ((1 + e^-|a|)(1 + e^-|b|)),
    # s = (|a| + |b|) / 2 >= sd t: no cancellation as sd -> 0 and no overflow for large |mu|.
    sdt = sd[..., None] * t_pos
    a, b = mu[..., None] + sdt, mu[..., None] - sdt
    s = 0.5 * (jnp.abs(a) + jnp.abs(b))
    denom = (1.0 + jnp.exp(-jnp.abs(a))) * (1.0 + jnp.exp(-jnp.abs(b)))
    safe_sd = jnp.where(sd > 0, sd, 1.0)[..., None]
    ratio = jnp.where(sd[..., None] > 0, -jnp.expm1(-2.0 * sdt) / safe_sd, 2.0 * t_pos)  # (1 - e^{-2 sd t}) / sd
    curvature = -jnp.sum(w_pos * t_pos * jnp.exp(sdt - s) * ratio / denom, axis=-1)
    return value, first, curvature


# Gauss-Hermite rule by the largest sd of eta in a block: (sd bound, nodes); see glm_exact's module
# docstring for the measured errors: 8 nodes up to sd 0.5 (error 2e-10; the large-N case, where the
# pass is dominated by the quadrature), 32 up to sd 2, else 128. Every rule has a multiple of
# 2 * PAIRS_PER_CHUNK nodes.
NODE_TIERS = ((0.5, 8), (2.0, 32), (math.inf, 128))
PAIRS_PER_CHUNK = 4


@functools.cache
def _tier_table(tiers: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positive nodes (T, C, P), their weights (T, C, P), chunks per tier (T,)), float64, zero-padded."""
    pairs = [n // 2 for _, n in tiers]
    if any(n % (2 * PAIRS_PER_CHUNK) for _, n in tiers):
        raise ValueError(f"every tier's node count must be a multiple of {2 * PAIRS_PER_CHUNK}, got {tiers}")
    chunks = max(pairs) // PAIRS_PER_CHUNK
    t_tab = np.zeros((len(tiers), chunks, PAIRS_PER_CHUNK))
    w_tab = np.zeros_like(t_tab)
    for i, (_, n) in enumerate(tiers):
        t, w = _rule_cached(n)
        t_tab[i].flat[:n // 2], w_tab[i].flat[:n // 2] = t[n - n // 2:], w[n - n // 2:]
    return t_tab, w_tab, np.asarray([p // PAIRS_PER_CHUNK for p in pairs], np.int32)


def _paired_sums(tiers, mu, var, pair_terms, num_terms):
    """sum_j w_j pair_terms(t_j, a_j, b_j) over the positive nodes t_j of the rule of `tiers` chosen by
    the largest sd in `var` (a, b = mu +- sd t_j): one loop over chunks of pairs, one compiled body.

    `pair_terms(t, sdt, a, b)` returns `num_terms` arrays of shape (..., PAIRS_PER_CHUNK).
    """
    dtype = mu.dtype
    t_tab, w_tab, n_chunks = _tier_table(tiers)
    sd = jnp.sqrt(var)
    bounds = jnp.asarray([b for b, _ in tiers[:-1]], dtype)
    tier = jnp.sum(bounds < jnp.max(sd)).astype(jnp.int32)
    t_all, w_all = jnp.asarray(t_tab, dtype)[tier], jnp.asarray(w_tab, dtype)[tier]
    mu_, sd_ = mu[..., None], sd[..., None]
    lift = (1,) * jnp.ndim(mu) + (PAIRS_PER_CHUNK,)

    def chunk(c, acc):
        t, w = jnp.reshape(t_all[c], lift), jnp.reshape(w_all[c], lift)
        sdt = sd_ * t
        terms = pair_terms(t, sdt, mu_ + sdt, mu_ - sdt)
        return tuple(u + jnp.sum(w * v, axis=-1) for u, v in zip(acc, terms))

    zero = jnp.zeros_like(mu)
    return jax.lax.fori_loop(0, jnp.asarray(n_chunks)[tier], chunk, (zero,) * num_terms)


def _logistic_tiered(y, mu, var):
    """(psi, d psi / d mu, 2 d psi / d var) of the logistic likelihood with the rule of `NODE_TIERS`
    chosen by the largest sd in `var`: one loop over chunks of node pairs (module docstring)."""
    sd_ = jnp.sqrt(var)[..., None]
    abs_mu = jnp.abs(mu)[..., None]
    positive = sd_ > 0
    inv_sd = 1.0 / jnp.where(positive, sd_, 1.0)

    def pair_terms(t, sdt, a, b):
        ea, eb = jnp.exp(-jnp.abs(a)), jnp.exp(-jnp.abs(b))
        ra, rb = 1.0 / (1.0 + ea), 1.0 / (1.0 + eb)
        # softplus(a) + softplus(b) = max(a, 0) + max(b, 0) + log((1 + ea)(1 + eb)), one log1p for the pair
        softplus = jnp.maximum(a, 0.0) + jnp.maximum(b, 0.0) + jnp.log1p(ea + eb + ea * eb)
        sig = jnp.where(a >= 0, 1.0, ea) * ra + jnp.where(b >= 0, 1.0, eb) * rb
        # sig(a) - sig(b) = -exp(sd t - s) expm1(-2 sd t) / ((1 + ea)(1 + eb)), s = (|a| + |b|) / 2, where
        # exp(sd t - s) is e^{-min(|a|, |b|)} = max(ea, eb) when a, b share a sign (|mu| >= sd t), else 1.
        lead = jnp.where(abs_mu >= sdt, jnp.maximum(ea, eb), 1.0)
        ratio = jnp.where(positive, -jnp.expm1(-2.0 * sdt) * inv_sd, 2.0 * t)  # (1 - e^{-2 sd t}) / sd
        return softplus, sig, t * lead * ratio * (ra * rb)

    sp, sg, cv = _paired_sums(NODE_TIERS, mu, var, pair_terms, 3)
    return y * mu - sp, y - sg, -cv


def _probit_tiered(y, mu, var):
    """`_glm_lik.probit_expect` with the rule of `_glm_lik.PROBIT_NODE_TIERS` chosen by the largest sd:
    the same pairs loop; per pair the derivatives at a and b serve the value, the first derivative,
    the difference quotient and the Stein form of the curvature (two evaluations per pair)."""
    s = (2.0 * y - 1.0)[..., None]
    sd = jnp.sqrt(var)
    switch = sd > _glm_lik.PROBIT_SD_SWITCH

    def pair_terms(t, sdt, a, b):
        la, fa, ha = _glm_lik._probit_derivs(s, a)
        lb, fb, hb = _glm_lik._probit_derivs(s, b)
        return la + lb, fa + fb, t * (fa - fb), ha + hb

    value, first, quotient, stein = _paired_sums(_glm_lik.PROBIT_NODE_TIERS, mu, var, pair_terms, 4)
    return value, first, jnp.where(switch, quotient / jnp.where(switch, sd, 1.0), stein)


def _tiered(kind, y, mu, var):
    return _probit_tiered(y, mu, var) if kind == "probit" else _logistic_tiered(y, mu, var)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _auto(kind, y, mu, var):
    return _tiered(kind, y, mu, var)


@_auto.defjvp
def _auto_jvp(kind, primals, tangents):
    y, mu, var = primals
    dy, dmu, dvar = tangents
    (value, first, curv), (_, d_first, d_curv) = jax.jvp(lambda m, v: _tiered(kind, y, m, v), (mu, var),
                                                           (dmu, dvar))
    # d psi = (d psi / d mu) dmu + (d psi / d var) dvar (+ d psi / dy dy): the rule's exact derivatives.
    # d psi / dy: logistic mu; probit (y enters through the sign s = 2y - 1) has no derivative in y.
    d_value = first * dmu + 0.5 * curv * dvar + (mu * dy if kind == "logistic" else 0.0)
    return (value, first, curv), (d_value, d_first, d_curv)


def expected_log_lik_auto(kind: str, y: Array, mu: Array, var: Array, num_nodes: int | None = None, *,
                          constant: bool = True) -> tuple[Array, Array, Array]:
    """`expected_log_lik` with the rule chosen by `NODE_TIERS` from max sd (or `num_nodes` fixed).

    Args:
      kind, y, mu, var: as `expected_log_lik`.
      num_nodes: a fixed number of nodes, or None for the adaptive rule.
      constant: as `expected_log_lik` (only Poisson has a data-only term).

    Returns:
      As `expected_log_lik`.

    Example:
      >>> psi, d_mu, d2_var = expected_log_lik_auto("logistic", jnp.ones(3), jnp.zeros(3), jnp.full(3, 4.0))
    """
    dtype = mu.dtype
    if kind == "poisson" or num_nodes is not None:
        return expected_log_lik(kind, y, mu, var, *quadrature(num_nodes or 1, dtype), constant=constant)
    y = jnp.asarray(y, dtype)
    return _auto(kind, jnp.broadcast_to(y, jnp.shape(mu)), mu, var)


CONSTANT_KINDS = ("poisson", "negbin")  # likelihoods with the data-only term -lgamma(y + 1) per row
_SUM_BLOCK = 1024


def data_constant(kind: str, y: Array, dtype=None) -> Array:
    """The data-only part of sum_i E[l_i]: -sum_i lgamma(y_i + 1) (Poisson, negative binomial), else 0.

    It does not depend on q, so `glm_exact` sums it once per fit (in `init`) and adds it to each
    pass's value rather than evaluating N lgammas in every pass. The sum is blocked (rows of
    `_SUM_BLOCK`, then the block sums), so its float32 rounding grows like (block + N / block) eps
    rather than N eps.

    Args:
      kind: the model kind ("logistic", "probit", "poisson", "negbin").
      y: (N,) observations.
      dtype: the result's float dtype (default: that of `y`, or the default float).

    Returns:
      A scalar.

    Example:
      >>> float(data_constant("poisson", jnp.asarray([0.0, 1.0, 2.0])))  # doctest: +ELLIPSIS
      -0.693...
    """
    y = jnp.asarray(y)
    dtype = dtype or (y.dtype if jnp.issubdtype(y.dtype, jnp.floating) else jnp.result_type(float))
    if kind not in CONSTANT_KINDS:
        return jnp.zeros((), dtype)
    y = jnp.ravel(y).astype(dtype)
    n = y.shape[0]
    if n <= _SUM_BLOCK:
        return -jnp.sum(gammaln(y + 1.0))
    y = jnp.pad(y, (0, -n % _SUM_BLOCK))  # lgamma(0 + 1) = 0: the padding adds nothing
    return -jnp.sum(jnp.sum(gammaln(y + 1.0).reshape(-1, _SUM_BLOCK), axis=1))
