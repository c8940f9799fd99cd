"""Exact (quadrature) ELBO and second-order fitting for the ready GLMs (`method="glm_exact"`).

For a ready logistic or Poisson regression (`advi_jax.models.regression.RegressionModel`) and a
Gaussian q(zeta) = N(m, S) over the flat vector zeta = (intercept, beta), every linear predictor
eta_i = c + x_i . beta (+ offset_i) is Gaussian under q, with mean mu_i = m_c + x_i . m_beta
(+ offset_i) and variance v_i = x~_i' S x~_i (x~_i = (1, x_i)). The ELBO is then a sum of
one-dimensional Gaussian integrals plus closed-form terms:

    ELBO = sum_i E[l(y_i, eta_i)] + E_q[log prior] + H[q],

* Poisson (log link, with offset / exposure): E[l] = y mu - exp(mu + v/2) - lgamma(y + 1),
  closed form; the data-only -sum_i lgamma(y_i + 1) (also the negative binomial's) is summed once
  per fit in `init` (`data_constant`; on CPU by the native kernel, `_glm_native.data_constant`;
  `GLMExactState.constant`) and added to every pass's value,
  not evaluated per row in every pass: the ELBO the steps compare and report is the whole ELBO;
* logistic: E[l] = E[y eta - softplus(eta)] by Gauss-Hermite quadrature (probabilists' nodes
  t_j, weights w_j / sqrt(2 pi), eta = mu + sqrt(v) t_j), with softplus as logaddexp (no
  log(1 - p) is formed);
* the Normal priors of the intercept and the coefficients: E[log N(z | 0, s)] =
  -(m^2 + S_zz) / (2 s^2) - log s - log(2 pi)/2, and the entropy 0.5 log det S + K/2 (1 + log 2 pi).

The objective is deterministic and smooth; for these log-concave likelihoods it is concave in
(m, Cholesky factor of S) (Challis & Barber, JMLR 2013).

**Optimiser** (one `step` = one iteration = one pass over X). A pass at (m, S) returns the ELBO,
its gradient in m, g = E_q[grad log p] = X~' E[l'] - Lambda0 m, and the expected negative
Hessian H = -E_q[hess log p] = Lambda0 + X~' diag(-E[l'']) X~ (positive definite for
log-concave likelihoods), all from one read of X in row blocks. Since d^2 ELBO / dm^2 = -H exactly
(Bonnet / Price), a Newton step in m is m + H^{-1} g; the covariance satisfies dELBO/dS =
(S^{-1} - H) / 2 at any (m, S), so its stationary point is the fixed point S^{-1} = H (for
mean-field: 1 / s_k^2 = H_kk). Each step proposes

    P' = (1 - rho) P + rho H  (mean-field: diag(H)),   m' = m + rho H^{-1} g,

(rho = 1: a Newton step in m and the fixed-point precision; a small rho: a natural-gradient step,
an ascent direction), evaluates the pass at (m', P'), accepts it when its ELBO is finite and not
lower (within float rounding: 8 eps |ELBO|, or, when the decrement fell, 2 eps times the size of the
pass's value and data constant whose difference the ELBO is), and otherwise keeps the state and
quarters rho (a backtracking line search spread over steps; rho grows back fourfold after each
acceptance). Convergence (`StepInfo.converged`): the
scale-free decrement g' H^{-1} g + ||L'(H - P) L||_F^2 / 2 (the squared gradient norm in the
natural metric; the ELBO gap to the optimum is about half of it) is below `tol`, or a full step
(rho = 1) changed the ELBO by less than `rtol` (at least 4 float eps) relative while the
decrement is below 1e3 `tol` (float32 rounding floor), or rho fell below `min_rho` (no
representable improvement left) while the decrement is within 1e3 `tol`: a fit whose damping
collapsed far from the optimum is not converged and runs on to its step budget.

Where a pass runs: on CPU with the native GLM kernel built (`python -m advi_jax build`), the
logistic and Poisson passes are one fused read of X in `_glm_native` (moments, quadrature, gradient
and X~' diag(w) X~ vectorised across rows; about 10x the XLA pass at N = 1e6, D = 10; see
benchmarks/PERFORMANCE.md); elsewhere, and for probit and the negative binomial, the XLA pass
`_pass` below (`Options(kernel="xla")` forces it).

Counting: every step makes exactly one pass over X, which gives the value, the gradient and the
curvature of the exact objective; it is reported as `num_grad_evals = 1` (one gradient of the
exact objective, i.e. one pass over X; the curvature costs a further D^2 flops per row in the same
pass, not further passes). `num_logp_evals = 0`. Rejected proposals are passes too and are
counted. A fit from zero typically takes 6-15 steps (N >> D); a weakly identified model such as
breast cancer (569 x 30) takes ~30, since the precision fixed point then converges linearly
(`max_rho` > 1 over-relaxes the precision update: 42 instead of 164 steps there in float64, but
at large N, where the fixed point is reached in one step, it overshoots by ~0.5% in the sds
below float32's ELBO resolution, so the default is 1).

**Quadrature nodes** (logistic). The error of Gauss-Hermite on E[softplus(eta)] grows with the
sd of eta (the kink of softplus at 0 narrows relative to the node spacing), so the rule is chosen
per block of rows (the native pass: per tile of 32-256 rows) from the largest sd there (`NODE_TIERS`): 8 nodes up to sd 0.5, 32 up to sd 2,
128 above (or a fixed `Options.num_nodes`). Measured against a 200-node rule (float64, mu = 0, the worst case):
error of E[l] 2e-10 at sd 0.5 with 8 nodes, 6e-10 at sd 1 with 16, 3e-8 at sd 2 with 32, 1e-6 at sd 4 with 64, 6e-4 at
sd 8 and 1e-2 at sd 16 with 64 (1e-4 and 5e-3 with 96); at the optimum of the bundled breast-cancer model (569 x 30,
nearly separable: sd(eta_i) up to ~10), the adaptive rule's optimum differs from the 200-node
optimum by 2.4e-4 (mean-field) / 6.5e-5 (full-rank) posterior sds in the means and 2e-5 / 7e-6
relative in the sds in float64, and by <= 4.5e-3 sds in float32 (float32 rounding); a fixed 32
nodes gave 1.4e-2 / 2.8e-3 sds. On well-identified data (simulated, N = 2000, D = 5) 8 nodes
already agree with 200 to rounding. Poisson's expectation is closed form.

Coverage: logistic, probit, Poisson and negative-binomial (both with offset / exposure) ready
models with fixed prior scales, families "meanfield", "fullrank" and "lowrank". Probit and the
negative binomial (q joint over the coefficients and log phi; two tilted softplus expectations and
a rule over log phi per row; a saddle-free curvature, the likelihood not being log-concave) are in
`_glm_lik`, with their measured node counts; "lowrank" (L-BFGS on this objective by autodiff, the
fixed point above having no closed-form low-rank projection) is in `_glm_lowrank`. Models with `hierarchical_scale=True` (tau > 0) are not
covered (their prior is not Gaussian in beta and the fixed point above need not be positive
definite): `build` raises a ValueError naming the option; fit them with `method="advi"`.

Example:
  >>> import numpy as np, jax, advi_jax as aj
  >>> from advi_jax.models import logistic_regression
  >>> from advi_jax.vi import glm_exact
  >>> x = np.random.default_rng(0).normal(size=(200, 3)); y = (x[:, 0] > 0) * 1.0
  >>> model = logistic_regression(x, y)
  >>> alg = glm_exact.build(model, aj.FullRankGaussian(), glm_exact.Options())
  >>> state = alg.init(jax.random.key(0), jax.numpy.zeros(model.dim))
  >>> state, info = alg.step(jax.random.key(1), state)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import cho_solve

from advi_jax._types import Array
from advi_jax.base import VIAlgorithm, step_info
from advi_jax.families import Family, FullRankGaussian, MeanFieldParams, _softplus_inverse
from advi_jax.vi import _glm_lik, _glm_lowrank, _glm_native
from advi_jax.vi._glm_quad import NODE_TIERS, data_constant, expected_log_lik, expected_log_lik_auto, quadrature

__all__ = ["NAME", "FAMILIES", "DEFAULT_NUM_STEPS", "WHITEN", "Options", "build", "data_constant", "exact_elbo",
           "expected_log_lik", "expected_log_lik_auto", "quadrature", "NODE_TIERS"]

NAME = "glm_exact"
FAMILIES = ("meanfield", "fullrank", "lowrank")  # lowrank: L-BFGS by autodiff (_glm_lowrank)
DEFAULT_NUM_STEPS = 100
WHITEN = False
DETERMINISTIC = True  # the ELBO trace is an objective's value, not a noisy estimate: the result reports its last value
STEP_KEYS = False  # the steps are deterministic: the driver makes no per-step keys

_LOG_2PI = math.log(2.0 * math.pi)
KINDS = ("logistic", "poisson", "probit", "negbin")


class Options(NamedTuple):
    """Static settings of the exact-ELBO method.

    Attributes:
      num_nodes: Gauss-Hermite nodes for the logistic expectation, or None (default) for the
        adaptive rule `NODE_TIERS` (Poisson is closed form).
      tol: convergence when the natural-metric decrement (see the module docstring) is below it.
      rtol: convergence when a full step (rho = 1) changes the ELBO by less than this, relative.
      min_rho: convergence (nothing left to gain at this precision) when the damping falls below it
        and the decrement is within 1e3 tol (the rounding floor); otherwise the fit goes on.
      max_rho: the largest damping; > 1 over-relaxes the precision update (see the module docstring).
      init_scale: the sd of q in every coordinate at the start (on a design that is not
        standardised, in the coordinates of `coordinate_scales`: a coefficient's sd is divided by
        its column's root mean square).
      block_size: rows of X per block of the pass (None: about 4 MiB of X per block).
      kernel: "auto" (the native CPU pass of `_glm_native` for logistic and Poisson models when it
        is built, the XLA pass otherwise), "native" (the same, but raise if it is unavailable) or
        "xla".
    """

    num_nodes: int | None = None
    tol: float = 1e-7
    rtol: float = 1e-10
    min_rho: float = 1e-6
    max_rho: float = 1.0
    init_scale: float = 0.1
    block_size: int | None = None
    kernel: str = "auto"


# ---------------------------------------------------------------------------------------------
# Model layout
# ---------------------------------------------------------------------------------------------


class _Layout(NamedTuple):
    kind: str
    intercept: bool
    num_features: int
    prior_sd: tuple  # prior sds of the Gaussian coordinates (intercept, beta), static
    dispersion: float | None = None  # negative binomial: the dispersion prior's scale (omega = log phi last)


def _layout(model) -> _Layout:
    from advi_jax.models.regression import RegressionModel  # models import base; avoid a cycle

    if not isinstance(model, RegressionModel):
        raise TypeError("glm_exact fits ready GLMs only (advi_jax.models.logistic_regression / "
                        f"poisson_regression), got {type(model).__name__}; use method='advi'")
    info = model.info
    if info.kind not in KINDS:
        raise ValueError(f"glm_exact supports model kinds {KINDS}, got {info.kind!r}")
    if info.hierarchical_scale:
        raise ValueError("glm_exact does not cover hierarchical_scale=True (the coefficient scale tau is not "
                         "Gaussian-linear); fit this model with method='advi'")
    d = len(info.feature_names)
    sds = ((info.intercept_scale,) if info.intercept else ()) + (info.prior_scale,) * d
    dispersion = info.dispersion_scale if info.kind == "negbin" else None
    return _Layout(info.kind, info.intercept, d, sds, dispersion)


def _split(layout: _Layout, vec: Array) -> tuple[Array, Array]:
    """(intercept part (scalar or 0), beta part (D,)) of a (K,) vector (or rows of a (K, ...) array)."""
    start = int(layout.intercept)
    beta = vec[start:start + layout.num_features]
    if layout.intercept:
        return vec[0], beta
    return jnp.zeros(vec.shape[1:], vec.dtype), beta


# ---------------------------------------------------------------------------------------------
# The exact ELBO, plain (for autodiff and tests)
# ---------------------------------------------------------------------------------------------


def _moments(layout, x, offset, m, cov_factor, meanfield):
    """(mu (N,), var (N,)) of the linear predictors; cov_factor is sds (K,) or L (K, K)."""
    mc, mb = _split(layout, m)
    mu = x @ mb + mc
    if offset is not None:
        mu = mu + offset
    if meanfield:
        sc, sb = _split(layout, cov_factor)
        var = (x * x) @ (sb * sb) + sc * sc
    else:
        lc, lb = _split(layout, cov_factor)
        z = x @ lb + lc[None, :] if layout.intercept else x @ lb
        var = jnp.sum(z * z, axis=-1)
    return mu, var


def _prior_and_entropy(layout, m, var_diag, log_det_sd):
    prior_sd = jnp.asarray(layout.prior_sd, m.dtype)
    k, kg = m.shape[0], len(layout.prior_sd)
    mg, vg = m[:kg], var_diag[:kg]
    prior = jnp.sum(-0.5 * (mg * mg + vg) / prior_sd**2 - jnp.log(prior_sd)) - 0.5 * kg * _LOG_2PI
    if layout.dispersion is not None:
        prior = prior + _glm_lik.dispersion_prior(m[-1], var_diag[-1], layout.dispersion)[0]
    entropy = log_det_sd + 0.5 * k * (1.0 + _LOG_2PI)
    return prior + entropy


def exact_elbo(model, family: Family, params, num_nodes: int | None = None) -> Array:
    """The exact ELBO of a ready GLM under the family's `params` (differentiable in `params`).

    Args:
      model: a logistic, probit, Poisson or negative-binomial `RegressionModel` (no hierarchical scale).
      family: `MeanFieldGaussian()`, `FullRankGaussian()` or `LowRankGaussian(rank)`.
      params: the family's parameters over the model's flat zeta.
      num_nodes: Gauss-Hermite nodes (logistic only), None for the adaptive rule.

    Returns:
      Scalar E_q[model.log_density(zeta)] + H[q], up to quadrature error.

    Raises:
      TypeError / ValueError: a model or family the method does not cover.

    Example:
      >>> import numpy as np, advi_jax as aj
      >>> from advi_jax.models import poisson_regression
      >>> rng = np.random.default_rng(0); x = rng.normal(size=(50, 2))
      >>> model = poisson_regression(x, rng.poisson(2.0, 50))
      >>> fam = aj.MeanFieldGaussian()
      >>> float(exact_elbo(model, fam, fam.init(None, model.dim))) < 0
      True
    """
    layout = _layout(model)
    kind = _family_kind(family)
    meanfield = kind == "meanfield"
    data = model.data
    x, y = data["x"], data["y"]
    if kind == "lowrank":
        d = family.diag_scale(params)
        value = _glm_lowrank.lowrank_likelihood(layout, data, params.loc, d, params.factor, num_nodes)
        var_diag = d * d + jnp.sum(params.factor * params.factor, axis=1)
        return value + _prior_and_entropy(layout, params.loc, var_diag, 0.5 * family._log_det(params)[0])
    if meanfield:
        sd = family.scale(params)
        factor, var_diag, log_det_sd = sd, sd * sd, jnp.sum(jnp.log(sd))
    else:
        L = family.scale_tril(params)
        factor, var_diag = L, jnp.sum(L * L, axis=1)
        log_det_sd = jnp.sum(jnp.log(jnp.diagonal(L)))
    if layout.kind == "negbin":
        value = _glm_lik.negbin_value(layout, x, y, data.get("offset"), params.loc, factor, meanfield, num_nodes)
    else:
        mu, var = _moments(layout, x, data.get("offset"), params.loc, factor, meanfield)
        value, _, _ = expected_log_lik_auto(layout.kind, y, mu, var, num_nodes)
    return jnp.sum(value) + _prior_and_entropy(layout, params.loc, var_diag, log_det_sd)


def _family_kind(family) -> str:
    name = getattr(family, "name", None)
    if not isinstance(family, Family) or name not in FAMILIES:
        raise ValueError(f"glm_exact supports families {FAMILIES}, got {name or type(family).__name__!r}")
    return name


# ---------------------------------------------------------------------------------------------
# One pass over X: value, gradient in m and expected negative Hessian
# ---------------------------------------------------------------------------------------------


def _block_size(layout: _Layout, options: Options) -> int:
    if options.block_size is not None:
        return int(options.block_size)
    rows = (4 * 1024 * 1024) // (4 * max(layout.num_features, 1))
    return int(max(256, 1 << (max(rows, 1).bit_length() - 1)))


def _pass(layout, data, m, factor, meanfield, num_nodes, block):
    """Sum over rows of E[l] without its data-only part (`data_constant`, added once per fit by the
    caller), and the likelihood's gradient (K,) and negative expected Hessian (K, K)."""
    x, y, offset = data["x"], data["y"], data.get("offset")
    n, d = x.shape
    dtype = x.dtype

    block = min(block, n)
    num_blocks = -(-n // block)

    def body(i, carry):
        # The last block is clamped to end at row n and its rows already counted are masked, so
        # one copy of the block code serves every block (compile time) and no row is read twice
        # into the sums.
        start = i * block
        begin = jnp.minimum(start, n - block)
        xb = jax.lax.dynamic_slice_in_dim(x, begin, block)
        yb = jax.lax.dynamic_slice_in_dim(y, begin, block)
        ob = None if offset is None else jax.lax.dynamic_slice_in_dim(offset, begin, block)
        keep = (begin + jnp.arange(block) >= start).astype(dtype)
        mu, var = _moments(layout, xb, ob, m, factor, meanfield)
        value, first, curvature = expected_log_lik_auto(layout.kind, yb, mu, var, num_nodes, constant=False)
        first = first * keep
        w = -curvature * keep
        terms = (jnp.sum(value * keep), first @ xb, jnp.sum(first), xb.T @ (w[:, None] * xb), w @ xb, jnp.sum(w))
        return tuple(u + v for u, v in zip(carry, terms))

    zero = jnp.zeros((), dtype)
    acc = (zero, jnp.zeros((d,), dtype), zero, jnp.zeros((d, d), dtype), jnp.zeros((d,), dtype), zero)
    acc = jax.lax.fori_loop(0, num_blocks, body, acc)
    value, gb, gc, hbb, hbc, hcc = acc
    if layout.intercept:
        g = jnp.concatenate([gc[None], gb])
        h = jnp.block([[hcc[None, None], hbc[None, :]], [hbc[:, None], hbb]])
    else:
        g, h = gb, hbb
    return value, g, h


# ---------------------------------------------------------------------------------------------
# The algorithm
# ---------------------------------------------------------------------------------------------


class GLMExactState(NamedTuple):
    """State of the exact-ELBO Newton / fixed-point iteration.

    Attributes:
      loc: (K,) mean m.
      precision: (K,) (mean-field) or (K, K) (full-rank) precision P of q.
      factor: (K,) sds (mean-field) or (K, K) lower Cholesky factor L of S = P^{-1} (full-rank).
      elbo: exact ELBO at (loc, precision) (-inf before the first pass).
      grad: (K,) dELBO/dm there.
      hess: (K, K) H = -E_q[hess log p] there (the fixed-point precision).
      rho: damping of the next proposal.
      hess_chol: (K, K) lower Cholesky factor of `hess` (one factorisation per pass, used by the
        next Newton step and by the decrement).
      decrement: the natural-metric decrement at this state (`_decrement`; inf before the first pass).
      constant: the likelihood's data-only part, -sum_i lgamma(y_i + 1) for Poisson and the negative
        binomial (0 otherwise; `data_constant`), summed once in `init`: the passes leave it out and
        `elbo` adds it, so `elbo` is the whole exact ELBO.
      scales: (K,) c of `coordinate_scales`, computed once in `init`: loc, precision, factor, grad,
        hess and hess_chol are those of q in the coordinates c * zeta (c = 1 on a standardised design).
    """

    loc: Array
    precision: Array
    factor: Array
    elbo: Array
    grad: Array
    hess: Array
    rho: Array
    hess_chol: Array
    decrement: Array
    constant: Array
    scales: Array


def _tri_inv_lower(L: Array) -> Array:
    """Inverse of a lower-triangular matrix by forward substitution, one row per loop iteration.

    Row i of X = L^{-1} is (e_i - L[i, :i] X[:i]) / L[i, i]: K vector-matrix products in a
    `fori_loop` (K^3 flops, one small loop body to compile). Used instead of a triangular solve
    with a K x K right-hand side, which on CPU goes to a multithreaded BLAS trsm that ran 100x
    slower (36 ms at K = 70) on a loaded machine.
    """
    k = L.shape[0]
    cols = jnp.arange(k)
    eye = jnp.eye(k, dtype=L.dtype)

    def row(i, X):
        li = jnp.where(cols < i, L[i], 0.0)
        return X.at[i].set((eye[i] - li @ X) / L[i, i])

    return jax.lax.fori_loop(0, k, row, jnp.zeros_like(L))


def _cov_factor(precision: Array, meanfield: bool) -> Array:
    """Mean-field: sds 1/sqrt(p). Full-rank: lower L with L L' = P^{-1} (reversal trick)."""
    if meanfield:
        return jax.lax.rsqrt(precision)
    flipped = jnp.linalg.cholesky(precision[::-1, ::-1])  # J P J = U U', U lower
    return _tri_inv_lower(flipped).T[::-1, ::-1]  # J U^{-T} J, lower


def _decrement(grad: Array, hess: Array, hess_chol: Array, precision: Array, factor: Array, meanfield: bool
               ) -> Array:
    """g' H^{-1} g + ||L'(H - P) L||_F^2 / 2 (mean-field: sum (H_kk - p_k)^2 / p_k^2 / 2)."""
    newton = jnp.sum(grad * cho_solve((hess_chol, True), grad))
    if meanfield:
        resid = jnp.sum(jnp.square(jnp.diagonal(hess) / precision - 1.0))
    else:
        resid = jnp.sum(jnp.square(factor.T @ (hess - precision) @ factor))
    return newton + 0.5 * resid


def family_params(loc: Array, factor: Array, meanfield: bool):
    """The family's parameters from a mean and sds (mean-field) or a lower Cholesky factor."""
    if meanfield:
        return MeanFieldParams(loc, _softplus_inverse(factor))
    return FullRankGaussian.from_scale_tril(loc, factor)


def supports(model, family: Family) -> bool:
    """Whether `build(model, family)` applies: a ready logistic / probit / Poisson / NB GLM without
    `hierarchical_scale`, and a family in `FAMILIES` (what `method="auto"` asks)."""
    from advi_jax.models.regression import RegressionModel  # models import base; avoid a cycle

    if not isinstance(model, RegressionModel) or not isinstance(family, Family):
        return False
    info = model.info
    return info.kind in KINDS and not info.hierarchical_scale and getattr(family, "name", None) in FAMILIES


FAST_MAX_DIM = 128
"""The largest K for which `loop_compile_mode` compiles the native-pass loop with the fast options."""

NEGBIN_FAST_MAX_ROWS = 16_384
"""The most rows for which `loop_compile_mode` compiles a negative binomial's loop with the fast options."""

LOWRANK_FAST_MAX_ROWS = 16_384
"""The most rows for which `loop_compile_mode` compiles a low-rank logistic / probit / Poisson loop fast."""


def loop_compile_mode(model, family: Family, options: Options, mode: str) -> str:
    """The loop programs' XLA options: "fast" where every pass runs in the native kernel and K is
    small (K <= `FAST_MAX_DIM`), or for a negative binomial with few rows (below), else `mode`.

    With the native pass (`_glm_native.covers`: a logistic or Poisson model, mean-field or
    full-rank, on CPU) X is read only by the kernel; XLA's own code in the loop is O(K^3) (Cholesky
    factors, a triangular inverse and solves, K x K products and selects). With the fast options
    (`compile_options.FAST_OPTIONS`) that code is unvectorised: at K = 11 it costs no measurable
    time a call and the loop compiles in 0.07-0.08 s instead of 0.21-0.24 s ("mid"; N = 1e4, full
    rank); at K = 101 (N = 1e4, logistic, one process each, alternated, 2 rounds) the first call
    is 0.50-0.55 s against 0.77-0.87 s ("mid": its loop compiles in 0.23-0.36 s, fast in 0.06-0.09 s)
    and the second 22-30 ms either way (the best of 3; an earlier measurement put the unvectorised
    O(K^3) code at 3 ms more a call, within this machine's noise here). So the fast options up to
    K = 128 (the O(K^3) code grows as K^3 past it, the compile saving does not), at any N:
    Poisson's per-row lgamma(y + 1), which XLA's unvectorised code made cost 30 ns a row, is no
    longer in the loop (`data_constant`, summed once per fit by the native kernel), so Poisson has no
    row limit (N = 1e6, D = 10: first call 0.45-0.59 s fast against 0.66-0.79 s "mid" full rank,
    second call 43-47 against 40-49 ms; loaded 2-core machine). `mode`
    (the size rule's choice, or a `compile_options.forced` one) is kept otherwise, and off CPU.

    The negative binomial has no native pass: XLA evaluates its rows (two softplus expectations by
    quadrature and their reverse-mode derivatives a row), so the fast options cost run time per row;
    its loop is fast up to `NEGBIN_FAST_MAX_ROWS` rows (mean-field and full rank, K <= `FAST_MAX_DIM`).
    Measured (D = 10, RAND HIE counts resampled, loaded 2-core machine, 2 rounds): at N = 1e4 the
    loop compiles in 0.6-0.8 s fast against 2.5-3.4 s "mid", the first call 3.5-5.2 -> 1.8-2.0 s and
    the second 60-100 -> 130-250 ms (8 passes; 1-2 us more a row and pass); at N = 3e4 the first call
    3.6-7.0 -> 1.9-3.4 s but the second 115-180 -> 250-510 ms, at N = 1e5 the second 0.60-0.66 ->
    1.0-1.7 s: beyond the limit "mid" is kept. At D = 100 (N = 1e4) the trade is steeper: first call
    4.9-6.5 -> 2.3-2.8 s, second 97-167 -> 385-440 ms.

    The low-rank family (`_glm_lowrank`: L-BFGS on the objective by autodiff, all in XLA) compiles
    fast up to `LOWRANK_FAST_MAX_ROWS` rows for logistic, probit and Poisson (K <= `FAST_MAX_DIM`).
    Measured (N = 1e4, `family="lowrank"`, loaded 2-core machine, one process each): first call
    "mid" / fast logistic D = 10 6.2 / 3.0 s, D = 100 7.4 / 3.8 s, Poisson D = 10 4.0 / 2.3 s,
    D = 100 4.9 / 2.1 s; second call 215 / 386, 263 / 544, 49 / 88, 146 / 255 ms. The negative
    binomial keeps `mode`: first 12.9 / 7.3 s but second 0.32 / 1.35 s (its quadrature rows
    unvectorised, and float32 rounding moved its stop from 24 to 55 iterations).
    """
    from advi_jax import compile_options  # compile_options imports nothing of vi; keep vi's imports light

    if mode == "fast" or compile_options.forced_mode() is not None or not compile_options._on_cpu():
        return mode
    if not supports(model, family) or not isinstance(options, Options) or model.dim > FAST_MAX_DIM:
        return mode
    kind = model.info.kind
    if family.name == "lowrank":  # L-BFGS by autodiff in XLA (`_glm_lowrank`), no native pass
        fast = kind != "negbin" and model.data["x"].shape[0] <= LOWRANK_FAST_MAX_ROWS
        return "fast" if fast else mode
    if kind == "negbin":
        return "fast" if model.data["x"].shape[0] <= NEGBIN_FAST_MAX_ROWS else mode
    if not _glm_native.covers(kind, model.data["x"].dtype, options.num_nodes, options.kernel):
        return mode
    return "fast"


def _constant(layout, data, dtype, kernel):
    """`GLMExactState.constant`; NaN where a negative binomial's distinct-count table (`_glm_lik.has_table`)
    does not match its y (a stale table would make every ELBO silently wrong; NaN stops the fit)."""
    return _glm_lik.nan_if_stale(layout, data, _glm_native.data_constant(layout.kind, data["y"], dtype, kernel))


def coordinate_scales(layout, model, data, k: int, dtype) -> Array:
    """(K,) c with q fitted in the coordinates c * zeta: on a design that is not standardised each
    coefficient's c is its column's root mean square (1 for a column of zeros); every other
    coordinate's, and every one of a standardised design (`rescaled` is False), is 1.

    The fit's steps, start and caps are in coefficients' units, which a raw column sets: with
    `standardize=False` and incomes around 3e4, the start's sd 0.1 gave each linear predictor a
    variance of ~1e7 under q, exp(mu + var / 2) overflowed at the start itself and the Poisson fit
    never moved; and the curvature, 1e9 times the other coefficients' there, left a float32 Cholesky
    of the precision without a digit. In these coordinates every column has root mean square 1, as
    on a standardised design: the pass still reads the raw X (c enters through q's mean and factor),
    and the ELBO is the same, the coordinates being linear.
    """
    if not rescaled(model):
        return jnp.ones((k,), dtype)
    rms = jnp.sqrt(jnp.mean(jnp.square(data["x"]), axis=0)).astype(dtype)
    cols = jnp.where(jnp.isfinite(rms) & (rms > 0), rms, 1.0)
    lead = jnp.ones((int(layout.intercept),), dtype)
    return jnp.concatenate([lead, cols, jnp.ones((k - lead.shape[0] - cols.shape[0],), dtype)])


def rescaled(model) -> bool:
    """Whether `coordinate_scales` can differ from 1: a design that is not standardised (static)."""
    return not model.info.standardize


MAX_STEP = 8.0
"""The largest change of any coordinate of q's mean in one step (`_capped`)."""


def _capped(step: Array) -> Array:
    """The Newton step of the mean, shortened (direction kept) so that no coordinate moves by more than `MAX_STEP`.

    Far from the optimum the Newton step can be astronomically long: a Poisson intercept started at
    zero with counts of 1e9 asks for a step of ~1e9 (the gradient sum(y - e^eta) over the curvature
    sum(e^eta)), and quartering the damping after each rejected (overflowing) proposal reached
    `min_rho` before the step became finite, so the fit stopped at its start and called that
    convergence. The coordinates are a standardised design's coefficients, log phi and the
    intercept: a move of 8 multiplies a rate by e^8 ~ 3e3, so the cap leaves the steps near the
    optimum (and a start's first steps on ordinary data) untouched.
    """
    size = jnp.max(jnp.abs(step))
    return step * jnp.minimum(1.0, MAX_STEP / jnp.maximum(size, MAX_STEP))


def build(model, family: Family, options: Options = Options()) -> VIAlgorithm:
    """The exact-ELBO algorithm for a ready GLM (see the module docstring).

    Args:
      model: a logistic, probit, Poisson or negative-binomial `RegressionModel` without a hierarchical scale.
      family: `MeanFieldGaussian()`, `FullRankGaussian()` or `LowRankGaussian(rank)`.
      options: `Options`.

    Returns:
      `VIAlgorithm(init, step, params, extras)`; `params(state)` is the family's parameters.

    Raises:
      TypeError: `model` is not a ready GLM.
      ValueError: a hierarchical-scale model, an unsupported family or bad options.
    """
    layout = _layout(model)
    meanfield = _family_kind(family) == "meanfield"
    if not isinstance(options, Options):
        raise TypeError(f"options must be glm_exact.Options, got {type(options).__name__}")
    for name in ("tol", "rtol", "min_rho", "init_scale"):
        value = getattr(options, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"options.{name} must be a positive finite number, got {value!r}")
    if options.block_size is not None and (not isinstance(options.block_size, int) or options.block_size < 1):
        raise ValueError(f"options.block_size must be a positive int or None, got {options.block_size!r}")
    data = model.data
    dtype = data["x"].dtype
    k = model.dim
    if options.num_nodes is not None:
        quadrature(options.num_nodes)  # validates
    if options.kernel not in ("auto", "native", "xla"):
        raise ValueError(f"options.kernel must be 'auto', 'native' or 'xla', got {options.kernel!r}")
    if not meanfield and family.name == "lowrank":
        return _glm_lowrank.build(layout, model, family, options, _prior_and_entropy,
                                  coordinate_scales if rescaled(model) else None)
    block = _block_size(layout, options)
    negbin = layout.dispersion is not None
    prior_prec = 1.0 / jnp.square(jnp.asarray(layout.prior_sd + ((math.inf,) if negbin else ()), dtype))
    eps = float(jnp.finfo(dtype).eps)

    native = not negbin and _glm_native.covers(layout.kind, dtype, options.num_nodes, options.kernel)

    raw = rescaled(model)

    def to_model(m, factor, c):
        """q's mean and factor in the model's coordinates from those in the fit's (c * zeta)."""
        if not raw:
            return m, factor
        return m / c, (factor / c if meanfield else factor / c[:, None])

    def evaluate(m_fit, precision, constant, c):
        # the state is in the fit's coordinates c * zeta (`coordinate_scales`), the pass and the prior
        # in the model's; g and H go back to the fit's: g / c, H / (c c')
        factor_fit = _cov_factor(precision, meanfield)
        m, factor = to_model(m_fit, factor_fit, c)
        if native:
            value, g, h = _glm_native.native_or_xla(_pass, layout, data, m, factor, meanfield, options.num_nodes,
                                                    block)
        else:
            lik_pass = _glm_lik.negbin_pass if negbin else _pass
            value, g, h = lik_pass(layout, data, m, factor, meanfield, options.num_nodes, block)
        if meanfield:
            var_diag, log_det_sd = factor * factor, jnp.sum(jnp.log(factor))
        else:
            var_diag, log_det_sd = jnp.sum(factor * factor, axis=1), jnp.sum(jnp.log(jnp.diagonal(factor)))
        elbo = (value + constant) + _prior_and_entropy(layout, m, var_diag, log_det_sd)
        g, h = g - prior_prec * m, h + jnp.diag(prior_prec)
        if raw:
            g, h = g / c, h / (c[:, None] * c[None, :])
        if negbin:  # the dispersion prior, and a positive-definite curvature (not log-concave: see _glm_lik)
            _, dg, dh = _glm_lik.dispersion_prior(m[-1], var_diag[-1], layout.dispersion)  # c[-1] = 1
            g, h = g.at[-1].add(dg), _glm_lik.pd_fix(h.at[-1, -1].add(dh))
        return factor_fit, elbo, g, h

    def init(key, loc):
        del key
        m = jnp.asarray(loc, dtype)
        c = coordinate_scales(layout, model, data, k, dtype)
        m = m * c if raw else m
        p0 = jnp.full((k,), 1.0 / options.init_scale**2, dtype)
        sd0 = jnp.full((k,), options.init_scale, dtype)
        precision = p0 if meanfield else jnp.diag(p0)
        factor = sd0 if meanfield else jnp.diag(sd0)  # P^{-1/2} of a diagonal P: no factorisation to compile
        # No pass yet: the first step's proposal is the start itself (g = 0, H = P).
        return GLMExactState(m, precision, factor, jnp.asarray(-jnp.inf, dtype), jnp.zeros((k,), dtype),
                             jnp.diag(p0), jnp.asarray(1.0, dtype), jnp.diag(1.0 / sd0),
                             jnp.asarray(jnp.inf, dtype),
                             _constant(layout, data, dtype, options.kernel), c)

    def step(key, state: GLMExactState):
        del key
        rho = state.rho
        target = jnp.diagonal(state.hess) if meanfield else state.hess
        precision = (1.0 - rho) * state.precision + rho * target
        m = state.loc + jnp.minimum(rho, 1.0) * _capped(cho_solve((state.hess_chol, True), state.grad))
        factor, elbo, g, h = evaluate(m, precision, state.constant, state.scales)
        h_chol = jnp.linalg.cholesky(h)
        slack = 8.0 * eps * jnp.abs(state.elbo)
        ok = (jnp.isfinite(elbo) & jnp.all(jnp.isfinite(g)) & jnp.all(jnp.isfinite(factor))
              & jnp.all(jnp.isfinite(h_chol)))
        change = jnp.abs(elbo - state.elbo) / (jnp.abs(elbo) + 1.0)
        new = GLMExactState(m, precision, factor, elbo, g, h, jnp.minimum(options.max_rho, 2.0 * rho), h_chol,
                            _decrement(g, h, h_chol, precision, factor, meanfield), state.constant, state.scales)
        # Count likelihoods: the ELBO is the difference of the pass's value and the data constant
        # -sum lgamma(y + 1), each far larger than it (negative binomial, counts ~100: 3.6e5 each for an
        # ELBO of -5.5e3), so its float32 rounding is ~eps times their size (0.03 nats there), not
        # eps |ELBO|. A drop within that wider slack is accepted only when the decrement fell too.
        wide = 2.0 * eps * (jnp.abs(state.elbo - state.constant) + jnp.abs(state.constant))
        closer = new.decrement <= state.decrement
        accept = ok & ((elbo >= state.elbo - slack) | ((elbo >= state.elbo - wide) & closer)
                       | ~jnp.isfinite(state.elbo))
        kept = state._replace(rho=rho / 4.0)
        nxt = jax.tree_util.tree_map(lambda a, b: jnp.where(accept, a, b), new, kept)
        decrement = nxt.decrement
        small = decrement <= options.tol
        # The ELBO-change test alone is blind to the covariance at large N (a 1% error in the sds
        # moves an ELBO of 1e6 by ~1e-3, below float32 resolution), so it also needs a decrement
        # within 1e3 tol (the float32 floor on ill-conditioned designs is ~1e-4).
        stalled = ((rho >= 1.0) & jnp.isfinite(state.elbo) & (change <= max(options.rtol, 4.0 * eps))
                   & (decrement <= 1e3 * options.tol))
        # A damping below min_rho means no representable improvement was found; that is convergence
        # only at the rounding floor (the decrement within 1e3 tol), else the fit goes on (and ends
        # at its budget, "not converged", if it never recovers).
        floored = (nxt.rho < options.min_rho) & (decrement <= 1e3 * options.tol)
        converged = (accept & (small | stalled)) | floored
        return nxt, step_info(nxt.elbo, jnp.isfinite(nxt.elbo), 1, 0, converged)

    def params(state: GLMExactState):
        return family_params(*to_model(state.loc, state.factor, state.scales), meanfield)

    def extras(state: GLMExactState) -> dict:
        return {"decrement": state.decrement, "rho": state.rho}

    return VIAlgorithm(init, step, params, extras)
