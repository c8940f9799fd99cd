"""Exact ELBO and second-order fitting for varying-intercept GLMs (`method="glm_grouped"`).

The model (`advi_jax.models.grouped`): eta_i = c + x_i . beta + u_{g[i]} (+ offset_i), u_g ~
N(0, tau^2) (centred), tau ~ HalfNormal(s0), c and beta with fixed Normal priors; the flat vector
is zeta = (c, beta, u, s) with s = log tau. Under a Gaussian q(zeta) = N(m, S) the ELBO is exact:

* Likelihood. eta_i is Gaussian with mean mu_i = m_c + x_i . m_beta + m_u[g_i] (+ offset_i) and
  variance v_i = x~_i' S_xx x~_i + 2 x~_i . S_xu[:, g_i] + S_uu[g_i, g_i] (x~ = (1, x)): the group
  enters through the index g (a gather), never a one-hot design. E[l(y, eta)] is closed form for
  Poisson and Gauss-Hermite for logistic (`advi_jax.vi.glm_exact.expected_log_lik_auto`).
* Group prior. For jointly Gaussian (u, s), E[u^2 e^{-2s}] = E0 ((m_u - 2 S_us)^2 + S_uu) with
  E0 = E[e^{-2s}] = exp(-2 m_s + 2 S_ss) (tilt the Gaussian by e^{-2s}: its mean moves by
  -2 S_{.s}), so E[log N(u_g | 0, e^s)] = -E0 ((m_g - 2 S_gs)^2 + S_gg) / 2 - m_s - log(2 pi) / 2.
* Scale prior. HalfNormal(s0) on tau = e^s with the log-Jacobian s:
  E = log 2 - log(2 pi) / 2 - log s0 - exp(2 m_s + 2 S_ss) / (2 s0^2) + m_s.
* Fixed Normal priors on c and beta, and the entropy 0.5 log det S + K (1 + log 2 pi) / 2.

Every term is deterministic and smooth in (m, S). Its gradient in m, g = E_q[grad log p], and the
expected negative Hessian H = -E_q[hess log p] (= -d^2 ELBO / dm^2 exactly, by Bonnet / Price) are
closed form as well: the likelihood's blocks X~' W X~, the per-group sums of W x~ and of W (the
group block is diagonal), plus the prior's (u, s) terms H_gg = E0, H_gs = -2 E0 (m_g - 2 S_gs),
H_ss = 2 E0 sum_g ((m_g - 2 S_gs)^2 + S_gg) + 2 exp(2 m_s + 2 S_ss) / s0^2.

**Optimiser** (one step = one pass over the rows). The stationary points satisfy g = 0 and
S^{-1} = H. Each step proposes the damped natural-gradient (Bayesian learning rule) update

    P' = (1 - rho) P + rho H  (mean-field: diag(H)),   m' = m + rho A^{-1} g,

with A = P' (full-rank) or (1 - rho) diag(p) + rho H (mean-field); rho = 1 is a Newton step in m
and the fixed-point precision. Unlike a plain GLM, H need not be positive definite away from the
optimum (the (u, tau) funnel is not log-concave): a proposal whose P' or A is not positive
definite, or whose ELBO is lower (a drop within float rounding is accepted only when the
decrement fell), is rejected and rho quartered; after an acceptance rho doubles
(at most 1). Convergence as in `glm_exact`: the natural-metric decrement g' P^{-1} g +
||L'(H - P) L||_F^2 / 2 below `tol`, a full step changing the ELBO by less than `rtol` relative
with the decrement below 1e3 `tol`, or rho below `min_rho`, or (the float32 rounding floor) no
new best decrement for `patience` steps while it is below `floor`.

Cost per step: O(N (D+1)^2) for the pass (G does not enter it beyond the gathers and the
per-group sums) and O(K^3), K = D + G + 2, for two Cholesky factorisations and a triangular
inverse (`glm_exact._tri_inv_lower`). A start from zero typically takes 10-35 steps (simulated data, the
births data with 51 states: 21); few groups (G < 5, tau weakly identified) take more.

Example:
  >>> import numpy as np, jax, advi_jax as aj
  >>> from advi_jax.models import grouped_poisson_regression
  >>> rng = np.random.default_rng(0); g = rng.integers(0, 8, 400)
  >>> model = grouped_poisson_regression(rng.normal(size=(400, 2)), rng.poisson(np.exp(0.3 * g / 8)), group=g)
  >>> res = aj.fit(model, key=jax.random.key(0), family="fullrank", progress=False, diagnostics=False)
  >>> res.method, bool(res.converged)
  ('glm_grouped', True)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import cho_solve

from advi_jax._types import Array
from advi_jax.base import VIAlgorithm, step_info
from advi_jax.families import Family
from advi_jax.vi.glm_exact import _capped, _cov_factor, expected_log_lik_auto, family_params, quadrature

__all__ = ["NAME", "FAMILIES", "DEFAULT_NUM_STEPS", "WHITEN", "Options", "build", "exact_elbo", "supports",
           "moments_and_curvature"]

NAME = "glm_grouped"
FAMILIES = ("meanfield", "fullrank")
DEFAULT_NUM_STEPS = 200
WHITEN = False
DETERMINISTIC = True
STEP_KEYS = False  # the steps are deterministic: the driver makes no per-step keys

_LOG_2PI = math.log(2.0 * math.pi)


class Options(NamedTuple):
    """Static settings (as `glm_exact.Options`, without blocks).

    Attributes:
      num_nodes: Gauss-Hermite nodes for the logistic expectation, None for the adaptive rule.
      tol: convergence when the natural-metric decrement is below it (about the squared distance
        to the optimum in posterior sds: 1e-9 leaves ~3e-5 sd; the float32 fallback test, a
        full step that no longer moves the ELBO, needs 1e3 tol, i.e. ~1e-3 sd).
      rtol: convergence when a full step changes the ELBO by less than this, relative.
      min_rho: convergence when the damping falls below it.
      init_scale: the sd of q in every coordinate at the start.
      floor, patience: convergence at the rounding floor: the decrement has not improved on its
        best for `patience` steps and is below `floor` (~0.01 posterior sd). In float32 with
        few groups the full step can circle the optimum at ~1e-5 (the ELBO's changes there are
        below float32 resolution, so they are accepted).
    """

    num_nodes: int | None = None
    tol: float = 1e-9
    rtol: float = 1e-10
    min_rho: float = 1e-6
    init_scale: float = 0.1
    floor: float = 1e-4
    patience: int = 10


class _Layout(NamedTuple):
    kind: str
    intercept: bool
    num_features: int
    num_groups: int
    fixed_sd: tuple  # prior sds of (c, beta)
    group_scale: float

    @property
    def dx(self) -> int:
        return self.num_features + int(self.intercept)

    @property
    def dim(self) -> int:
        return self.dx + self.num_groups + 1


def _layout(model) -> _Layout:
    from advi_jax.models.grouped import GroupedRegressionModel  # models import base; avoid a cycle

    if not isinstance(model, GroupedRegressionModel):
        raise TypeError("glm_grouped fits varying-intercept GLMs only (advi_jax.models.grouped_logistic_regression / "
                        f"grouped_poisson_regression), got {type(model).__name__}; use method='advi'")
    info = model.info
    if info.kind not in ("logistic", "poisson"):
        raise ValueError(f"glm_grouped supports kinds ('logistic', 'poisson'), got {info.kind!r}")
    d = len(info.feature_names)
    sds = ((info.intercept_scale,) if info.intercept else ()) + (info.prior_scale,) * d
    return _Layout(info.kind, info.intercept, d, len(info.group_names), sds, info.group_scale)


def _family_kind(family) -> str:
    name = getattr(family, "name", None)
    if not isinstance(family, Family) or name not in FAMILIES:
        raise ValueError(f"glm_grouped supports families {FAMILIES}, got {name or type(family).__name__!r}")
    return name


def supports(model, family) -> bool:
    """Whether `build(model, family)` applies (what `method="auto"` asks): a grouped ready GLM and a
    family in `FAMILIES`."""
    from advi_jax.models.grouped import GroupedRegressionModel

    return (isinstance(model, GroupedRegressionModel) and isinstance(family, Family)
            and getattr(family, "name", None) in FAMILIES and model.info.kind in ("logistic", "poisson"))


def _design(layout: _Layout, data) -> Array:
    x = data["x"]
    if layout.intercept:
        return jnp.concatenate([jnp.ones((x.shape[0], 1), x.dtype), x], axis=1)
    return x


# ---------------------------------------------------------------------------------------------
# The exact terms
# ---------------------------------------------------------------------------------------------


def _likelihood(layout, xt, y, group, offset, m, S, num_nodes, curvature: bool = True):
    """sum_i E[l], and its gradient in m and expected negative Hessian blocks (x, u)."""
    dx, G = layout.dx, layout.num_groups
    m_u = m[dx:dx + G]
    mu = xt @ m[:dx] + m_u[group]
    if offset is not None:
        mu = mu + offset
    A, B, c_diag = S[:dx, :dx], S[:dx, dx:dx + G], jnp.diagonal(S)[dx:dx + G]
    var = jnp.sum((xt @ A) * xt, axis=1) + 2.0 * jnp.sum(xt * B.T[group], axis=1) + c_diag[group]
    var = jnp.maximum(var, 0.0)
    value, first, second = expected_log_lik_auto(layout.kind, y, mu, var, num_nodes)
    if not curvature:
        return jnp.sum(value)
    w = -second
    gx, gu = first @ xt, jax.ops.segment_sum(first, group, G)
    hxx = (xt * w[:, None]).T @ xt
    hux = jax.ops.segment_sum(w[:, None] * xt, group, G)  # (G, dx)
    huu = jax.ops.segment_sum(w, group, G)
    return jnp.sum(value), gx, gu, hxx, hux, huu


def _prior(layout, m, S):
    """E_q[log prior + log Jacobian], its gradient in m and the expected negative Hessian pieces."""
    dx, G = layout.dx, layout.num_groups
    dtype = m.dtype
    var = jnp.diagonal(S)
    sd = jnp.asarray(layout.fixed_sd, dtype)
    mx, vx = m[:dx], var[:dx]
    value = jnp.sum(-0.5 * (mx * mx + vx) / sd**2 - jnp.log(sd)) - 0.5 * dx * _LOG_2PI
    gx, hx = -mx / sd**2, 1.0 / sd**2
    ms, vs = m[-1], S[-1, -1]
    mu, vu, cus = m[dx:dx + G], var[dx:dx + G], S[dx:dx + G, -1]
    e0 = jnp.exp(-2.0 * ms + 2.0 * vs)  # E[e^{-2s}]
    a = mu - 2.0 * cus  # mean of u under the e^{-2s}-tilted Gaussian
    q = a * a + vu
    value = value + jnp.sum(-0.5 * e0 * q) - G * ms - 0.5 * G * _LOG_2PI
    s0 = layout.group_scale
    e2 = jnp.exp(2.0 * ms + 2.0 * vs)  # E[tau^2]
    value = value + math.log(2.0) - 0.5 * _LOG_2PI - math.log(s0) - 0.5 * e2 / s0**2 + ms
    gu = -e0 * a
    gs = e0 * jnp.sum(q) - G + 1.0 - e2 / s0**2
    hus = -2.0 * e0 * a
    hss = 2.0 * e0 * jnp.sum(q) + 2.0 * e2 / s0**2
    return value, gx, hx, gu, e0, gs, hus, hss


def _entropy(log_det_sd, k: int):
    return log_det_sd + 0.5 * k * (1.0 + _LOG_2PI)


def _covariance(family_kind: str, factor: Array) -> tuple[Array, Array]:
    """(S, 0.5 log det S) from sds (mean-field) or a lower Cholesky factor (full-rank)."""
    if family_kind == "meanfield":
        return jnp.diag(factor * factor), jnp.sum(jnp.log(factor))
    return factor @ factor.T, jnp.sum(jnp.log(jnp.diagonal(factor)))


def moments_and_curvature(layout: _Layout, data, xt, m, S, log_det_sd, num_nodes):
    """(ELBO, g = dELBO/dm, H = -E_q[hess log p]) at q = N(m, S), in one pass over the rows."""
    dx, G, k = layout.dx, layout.num_groups, layout.dim
    lik, lgx, lgu, hxx, hux, huu = _likelihood(layout, xt, data["y"], data["group"], data.get("offset"), m, S,
                                               num_nodes)
    pval, pgx, phx, pgu, e0, pgs, hus, hss = _prior(layout, m, S)
    elbo = lik + pval + _entropy(log_det_sd, k)
    g = jnp.concatenate([lgx + pgx, lgu + pgu, pgs[None]])
    u = slice(dx, dx + G)
    H = jnp.zeros((k, k), m.dtype)
    H = H.at[:dx, :dx].set(hxx + jnp.diag(phx))
    H = H.at[u, :dx].set(hux).at[:dx, u].set(hux.T)
    H = H.at[u, u].set(jnp.diag(huu + e0))
    H = H.at[u, -1].set(hus).at[-1, u].set(hus).at[-1, -1].set(hss)
    return elbo, g, H


def exact_elbo(model, family: Family, params, num_nodes: int | None = None) -> Array:
    """The exact ELBO of a grouped GLM under the family's `params` (differentiable in `params`).

    Args:
      model: a `GroupedRegressionModel`.
      family: `MeanFieldGaussian()` or `FullRankGaussian()`.
      params: the family's parameters over the model's flat zeta.
      num_nodes: Gauss-Hermite nodes (logistic only), None for the adaptive rule.

    Returns:
      Scalar E_q[model.log_density(zeta)] + H[q] (exact up to quadrature error for logistic).

    Raises:
      TypeError / ValueError: a model or family the method does not cover.

    Example:
      >>> import numpy as np, advi_jax as aj
      >>> from advi_jax.models import grouped_poisson_regression
      >>> rng = np.random.default_rng(0)
      >>> model = grouped_poisson_regression(None, rng.poisson(2.0, 30), group=rng.integers(0, 3, 30))
      >>> fam = aj.MeanFieldGaussian()
      >>> float(exact_elbo(model, fam, fam.init(None, model.dim))) < 0
      True
    """
    layout = _layout(model)
    kind = _family_kind(family)
    factor = family.scale(params) if kind == "meanfield" else family.scale_tril(params)
    S, log_det_sd = _covariance(kind, factor)
    m = params.loc
    data = model.data
    lik = _likelihood(layout, _design(layout, data), data["y"], data["group"], data.get("offset"), m, S, num_nodes,
                      curvature=False)
    return lik + _prior(layout, m, S)[0] + _entropy(log_det_sd, layout.dim)


# ---------------------------------------------------------------------------------------------
# The algorithm
# ---------------------------------------------------------------------------------------------


class GroupedState(NamedTuple):
    """State of the iteration: as `glm_exact.GLMExactState`, plus the best decrement so far and
    the steps since it improved (the rounding-floor test).

    Attributes:
      loc, precision, factor, elbo, grad, hess, rho: see `glm_exact.GLMExactState`.
      best: the smallest decrement of an accepted state so far.
      since: steps since `best` last improved.
    """

    loc: Array
    precision: Array
    factor: Array
    elbo: Array
    grad: Array
    hess: Array
    rho: Array
    best: Array
    since: Array


def _decrement(state: GroupedState, meanfield: bool) -> Array:
    """g' P^{-1} g + ||L'(H - P) L||_F^2 / 2 (mean-field: the diagonal analogue); P is always PD."""
    if meanfield:
        sd = state.factor
        newton = jnp.sum(jnp.square(state.grad * sd))
        resid = jnp.sum(jnp.square(jnp.diagonal(state.hess) / state.precision - 1.0))
    else:
        L = state.factor
        newton = jnp.sum(jnp.square(L.T @ state.grad))
        resid = jnp.sum(jnp.square(L.T @ (state.hess - state.precision) @ L))
    return newton + 0.5 * resid


def build(model, family: Family, options: Options = Options()) -> VIAlgorithm:
    """The exact-ELBO algorithm for a varying-intercept GLM (see the module docstring).

    Args:
      model: a `GroupedRegressionModel`.
      family: `MeanFieldGaussian()` or `FullRankGaussian()`.
      options: `Options`.

    Returns:
      `VIAlgorithm(init, step, params, extras)`.

    Raises:
      TypeError: `model` is not a grouped ready GLM, or `options` is not `Options`.
      ValueError: an unsupported family or bad options.
    """
    layout = _layout(model)
    kind = _family_kind(family)
    meanfield = kind == "meanfield"
    if not isinstance(options, Options):
        raise TypeError(f"options must be glm_grouped.Options, got {type(options).__name__}")
    if isinstance(options.patience, bool) or not isinstance(options.patience, int) or options.patience < 1:
        raise ValueError(f"options.patience must be a positive int, got {options.patience!r}")
    for name in ("tol", "rtol", "min_rho", "init_scale", "floor"):
        value = getattr(options, name)
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"options.{name} must be a positive finite number, got {value!r}")
    if options.num_nodes is not None:
        quadrature(options.num_nodes)  # validates
    data = model.data
    xt = _design(layout, data)
    dtype = xt.dtype
    k = layout.dim
    eps = float(jnp.finfo(dtype).eps)

    def evaluate(m, precision):
        factor = _cov_factor(precision, meanfield)
        S, log_det_sd = _covariance(kind, factor)
        elbo, g, H = moments_and_curvature(layout, data, xt, m, S, log_det_sd, options.num_nodes)
        return factor, elbo, g, H

    def init(key, loc):
        del key
        m = jnp.asarray(loc, dtype)
        p0 = jnp.full((k,), 1.0 / options.init_scale**2, dtype)
        precision = p0 if meanfield else jnp.diag(p0)
        return GroupedState(m, precision, _cov_factor(precision, meanfield), jnp.asarray(-jnp.inf, dtype),
                            jnp.zeros((k,), dtype), jnp.diag(p0), jnp.asarray(1.0, dtype),
                            jnp.asarray(jnp.inf, dtype), jnp.asarray(0, jnp.int32))

    def step(key, state: GroupedState):
        del key
        rho = state.rho
        if meanfield:
            precision = (1.0 - rho) * state.precision + rho * jnp.diagonal(state.hess)
            A = (1.0 - rho) * jnp.diag(state.precision) + rho * state.hess
        else:
            precision = (1.0 - rho) * state.precision + rho * state.hess
            A = precision
        chol = jnp.linalg.cholesky(A)  # NaN when A is not positive definite: the proposal is rejected
        m = state.loc + rho * _capped(cho_solve((chol, True), state.grad))  # see glm_exact._capped
        factor, elbo, g, h = evaluate(m, precision)
        ok = (jnp.isfinite(elbo) & jnp.all(jnp.isfinite(g)) & jnp.all(jnp.isfinite(h)) & jnp.all(jnp.isfinite(m))
              & jnp.all(jnp.isfinite(factor)))
        change = jnp.abs(elbo - state.elbo) / (jnp.abs(elbo) + 1.0)
        new = state._replace(loc=m, precision=precision, factor=factor, elbo=elbo, grad=g, hess=h,
                             rho=jnp.minimum(1.0, 2.0 * rho))
        # A lower ELBO within rounding (slack) is accepted only when the decrement fell too: in
        # float32 the full step can otherwise drift away from the optimum by sub-rounding steps.
        slack = 8.0 * eps * jnp.abs(state.elbo)
        dec_new, dec_old = _decrement(new, meanfield), _decrement(state, meanfield)
        closer = dec_new <= dec_old
        accept = ok & ((elbo >= state.elbo) | ((elbo >= state.elbo - slack) & closer) | ~jnp.isfinite(state.elbo))
        kept = state._replace(rho=rho / 4.0)
        nxt = jax.tree_util.tree_map(lambda a, b: jnp.where(accept, a, b), new, kept)
        decrement = jnp.where(accept, dec_new, dec_old)
        better = accept & (decrement < state.best)
        nxt = nxt._replace(best=jnp.where(better, decrement, state.best),
                           since=jnp.where(better, 0, state.since + 1))
        stalled = ((rho >= 1.0) & jnp.isfinite(state.elbo) & (change <= max(options.rtol, 4.0 * eps))
                   & (decrement <= 1e3 * options.tol))
        at_floor = (nxt.since >= options.patience) & (decrement <= options.floor)
        converged = (accept & ((decrement <= options.tol) | stalled | at_floor)) | (nxt.rho < options.min_rho)
        return nxt, step_info(nxt.elbo, jnp.isfinite(nxt.elbo), 1, 0, converged)

    def params(state: GroupedState):
        return family_params(state.loc, state.factor, meanfield)

    def extras(state: GroupedState) -> dict:
        return {"decrement": _decrement(state, meanfield), "rho": state.rho}

    return VIAlgorithm(init, step, params, extras)
