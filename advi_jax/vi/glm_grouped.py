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

with A = P' (full-rank) or (1 - rho) M + rho H (mean-field; M is H without log tau's cross terms,
see below); rho = 1 is a Newton step in m and the fixed-point precision. Unlike a plain GLM, H need
not be positive definite away from the optimum (the (u, tau) funnel is not log-concave): a proposal
whose P' or A is not positive definite, or whose ELBO is lower (a drop within float rounding is
accepted only when the decrement fell), is rejected and rho quartered; after an acceptance rho
doubles (at most 1).

**Mean-field damping.** Where the data pin down every group's total c + u_g (large groups), the
shift (c + d, u - d) is fixed only by the group prior: a ridge along which H's curvature is
~G E0, while the mean-field precision's is ~2 sum_i w_i (the births data: 0.08 against 1.5e4 per
unit length). Away from the optimum H is indefinite in the ridge coupled with log tau (the
funnel again: its smallest eigenvector is the ridge), so the full step is rejected; a damping
that blended in diag(p) then moved along the ridge by ~1e-5 of the way per step (births: 200
steps, tau 3.6 against 0.97, 78 nats short). The damping matrix M keeps H's (c, beta, u) block, which
is always positive definite (the likelihood's Gram matrix plus the priors' diagonals), and drops
only the cross terms h of log tau, so A = H with h times rho: positive definite once
rho^2 h' B^{-1} h < H_ss (B the (c, beta, u) block), which the quartering of rho reaches, and as
rho -> 0 the step tends to rho times a Newton step in (c, beta, u) at fixed log tau plus one in log
tau alone, so it moves along the ridge (`_coupled_damping`; births: 14 steps).

**The funnel curve** (`Options.funnel`, on by default). Alone, that iteration creeps when the
groups carry little information (many one-row groups): the Newton step in m_s holds S fixed, and
with S_uu ~ tau^2 the curvature it sees, H_ss ~ 2 G, is G times the curvature along the path on
which the group sds follow tau, so tau moves by ~1/G of the way per step (the slow EM of random-
effects models; 200 one-row logistic groups: tau 0.19 after the 200-step budget, 2104 steps to the
optimum's 1.38 in float64). So m_s moves instead along a curve that carries the groups with it (as
parameter expansion and partial non-centring do): for delta, T_delta maps

    m_s -> m_s + delta,   row and column g of S -> times e^(alpha_g delta),   m_g -> m_g e^(2 alpha_g delta),

with alpha_g = E0 / H_gg = E0 / (w_g + E0) in (0, 1], the prior's share of group g's curvature (1: a
group without data, whose sd follows tau exactly; ~0: a group its data pin down, so that the curve
is the plain m_s direction). These are the derivatives in log tau of a group's sd 1 / sqrt(E0 + w_g)
and shrunk mean ~ s_g / (E0 + w_g). Each step is a joint Newton step in (dm, delta) (dm with no m_s
entry) on F(dm, delta) = ELBO(T_delta(m + dm, S)): its gradient (g, F_delta) and Hessian
(-H, the cross terms F_{m delta}, F_{delta delta}) are exact, the delta terms from one forward-mode
pass over the rows (`_curve_terms`: eta's mean and variance along the curve, `_eta_parts`); the
system is solved with the factorisation of A already made (A without m_s's row and column through
A^{-1} e_s, then the 1 x 1 Schur complement; where that is not negative, the plain step). Where
every alpha_g is below `MIN_SHARE` the plain step is taken without the curve's pass. The
proposal is T_{rho delta}(m + rho dm) with the fixed-point precision moved by the same T. Measured
(benchmarks/PERFORMANCE.md, helper `glmgroup`; float32): 200 one-row groups 15-20 steps instead of
200+ (logistic, tau 0.19 -> 1.38, not converged) or 151-164 (Poisson), mixed sizes 8-14 instead of
21-69; about two passes a step (`StepInfo.num_grad_evals` counts both).

Convergence as in `glm_exact`: the natural-metric decrement g' P^{-1} g +
||L'(H - P) L||_F^2 / 2 below `tol`, a full step changing the ELBO by less than `rtol` relative
with the decrement below 1e3 `tol`, or (the float32 rounding floor) no new best decrement for
`patience` steps while it is below `floor`. A damping below `min_rho` is convergence only with the
decrement below `floor` (far from the optimum the fit goes on to its budget, "not converged").

Cost per step: O(N (D+1)^2) for the pass (G does not enter it beyond the gathers and the
per-group sums), O(N (D+1)) for the curve's pass, and O(K^3), K = D + G + 2, for two Cholesky
factorisations and a triangular inverse (`glm_exact._tri_inv_lower`).

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
from advi_jax.vi.glm_exact import (_capped, _cov_factor, coordinate_scales, expected_log_lik_auto, family_params,
                                   quadrature)

__all__ = ["NAME", "FAMILIES", "DEFAULT_NUM_STEPS", "WHITEN", "Options", "build", "exact_elbo", "supports",
           "moments_and_curvature"]

NAME = "glm_grouped"
FAMILIES = ("meanfield", "fullrank")
DEFAULT_NUM_STEPS = 200
WHITEN = False
DETERMINISTIC = True
STEP_KEYS = False  # the steps are deterministic: the driver makes no per-step keys

_LOG_2PI = math.log(2.0 * math.pi)
MAX_DELTA = 2.0
"""The longest step along the funnel curve (in log tau) of one joint Newton step."""
MIN_SHARE = 0.01
"""The joint step (and its pass) is taken when some group's prior share alpha_g exceeds this; below
it every group is pinned down by its data, the curve is the plain m_s direction, and the plain step
(one pass) is as fast (the births data: 17 steps either way, against 24 with the curve)."""


class Options(NamedTuple):
    """Static settings (as `glm_exact.Options`, without blocks).

    Attributes:
      num_nodes: Gauss-Hermite nodes for the logistic expectation, None for the adaptive rule.
      tol: convergence when the natural-metric decrement is below it (about the squared distance
        to the optimum in posterior sds: 1e-9 leaves ~3e-5 sd; the float32 fallback test, a
        full step that no longer moves the ELBO, needs 1e3 tol, i.e. ~1e-3 sd).
      rtol: convergence when a full step changes the ELBO by less than this, relative.
      min_rho: convergence when the damping falls below it and the decrement is below `floor`.
      init_scale: the sd of q in every coordinate at the start (on a design that is not
        standardised, a coefficient's is divided by its column's root mean square:
        `glm_exact.coordinate_scales`).
      floor, patience: convergence at the rounding floor: the decrement has not improved on its
        best for `patience` steps and is below `floor` (~0.01 posterior sd). In float32 with
        few groups the full step can circle the optimum at ~1e-5 (the ELBO's changes there are
        below float32 resolution, so they are accepted).
      funnel: the joint Newton step over the mean and the funnel curve (see the module docstring);
        False gives the plain iteration (m_s in the mean's Newton step, S fixed), which creeps when
        the groups carry little information.
    """

    num_nodes: int | None = None
    tol: float = 1e-9
    rtol: float = 1e-10
    min_rho: float = 1e-6
    init_scale: float = 0.1
    floor: float = 1e-4
    patience: int = 10
    funnel: bool = True


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


def _eta_parts(layout, xt, group, offset, m, S):
    """eta_i's mean and variance split into the fixed part and the group's: mu_i = a_i + b_i and
    v_i = c_i + 2 d_i + f_i, with b = m_u[g], d = x~ . S_xu[:, g], f = S_uu[g, g] (the parts
    `_curve_terms` moves along the funnel curve)."""
    dx, G = layout.dx, layout.num_groups
    a = xt @ m[:dx]
    if offset is not None:
        a = a + offset
    A, B, c_diag = S[:dx, :dx], S[:dx, dx:dx + G], jnp.diagonal(S)[dx:dx + G]
    return (a, m[dx:dx + G][group], jnp.sum((xt @ A) * xt, axis=1), jnp.sum(xt * B.T[group], axis=1),
            c_diag[group])


def _likelihood(layout, xt, y, group, offset, m, S, num_nodes, curvature: bool = True):
    """sum_i E[l], and its gradient in m and expected negative Hessian blocks (x, u)."""
    G = layout.num_groups
    a, b, c, d, f = _eta_parts(layout, xt, group, offset, m, S)
    mu = a + b
    var = jnp.maximum(c + 2.0 * d + f, 0.0)
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


def _curve_terms(layout: _Layout, data, xt, m, S, share, num_nodes):
    """The funnel curve's terms at (m, S) for the joint Newton step, in one forward-mode pass.

    With F(dm, delta) = ELBO(T_delta(m + dm, S)) (dm with no m_s entry; T_delta as `_rescale`):
    returns (dF/ddelta, d2F/ddelta2, d2F/ddm ddelta (a K vector, zero at m_s), alpha, beta).
    d2F/ddm2 = -H and dF/ddm = g are the pass's own. `share`: E0 / H_gg per group (computed by the step,
    which gates this pass on it), clipped to [0, 1] here as alpha.
    """
    dx, G = layout.dx, layout.num_groups
    a, b, c, d, f = _eta_parts(layout, xt, data["group"], data.get("offset"), m, S)
    y, group = data["y"], data["group"]
    ms, vs = m[-1], S[-1, -1]
    mu_g, vu, cus = m[dx:dx + G], jnp.diagonal(S)[dx:dx + G], S[dx:dx + G, -1]
    e0 = jnp.exp(-2.0 * ms + 2.0 * vs)
    e2 = jnp.exp(2.0 * ms + 2.0 * vs) / layout.group_scale**2  # E[tau^2] / s0^2
    alpha = jnp.clip(share, 0.0, 1.0)  # the prior's share of each group's curvature, E0 / (w_g + E0)
    beta = 2.0 * alpha  # a group mean shrunk by tau^2 / (1 + tau^2 w) moves as tau^(2 alpha)
    ag, bg = alpha[group], beta[group]
    sd = jnp.asarray(layout.fixed_sd, m.dtype)

    def prior(delta):  # the group prior, -G m_s, the entropy's group part and the scale prior along delta
        t, r = jnp.exp(alpha * delta), jnp.exp(beta * delta)
        q = jnp.square(r * mu_g - 2.0 * t * cus) + t * t * vu
        return (-0.5 * e0 * jnp.exp(-2.0 * delta) * jnp.sum(q) - G * delta + jnp.sum(alpha) * delta
                - 0.5 * e2 * jnp.exp(2.0 * delta) + delta)

    def slope_and_grad(delta):
        t, r = jnp.exp(ag * delta), jnp.exp(bg * delta)
        mu, var = a + r * b, jnp.maximum(c + 2.0 * t * d + t * t * f, 0.0)
        _, first, second = expected_log_lik_auto(layout.kind, y, mu, var, num_nodes, constant=False)
        # d psi / d mu = first, d psi / d var = second / 2 (Price)
        slope = (jnp.sum(first * (bg * r * b) + second * (ag * (t * d + t * t * f)))
                 + jax.jvp(prior, (delta,), (jnp.ones_like(delta),))[1])
        # dELBO/dm at T_delta(m, S), pulled back through m_u -> m_u e^(beta delta)
        tg, rg = jnp.exp(alpha * delta), jnp.exp(beta * delta)
        gx = first @ xt - m[:dx] / sd**2
        gu = jax.ops.segment_sum(first, group, G) - e0 * jnp.exp(-2.0 * delta) * (rg * mu_g - 2.0 * tg * cus)
        return slope, jnp.concatenate([gx, gu * rg, jnp.zeros((1,), m.dtype)])

    one = jnp.ones((), m.dtype)
    (d1, _), (d2, cross) = jax.jvp(slope_and_grad, (0.0 * one,), (one,))
    return d1, d2, cross, alpha, beta


def _rescale(layout: _Layout, m, precision, factor, delta, alpha, beta, meanfield: bool):
    """(m, P, factor) under the funnel curve's T_delta: group g's rows of the covariance factor scaled by
    e^(alpha_g delta) (the precision's by its inverse), its mean by e^(beta_g delta), delta added to m_s."""
    dx, G = layout.dx, layout.num_groups
    scale = jnp.ones_like(m).at[dx:dx + G].set(jnp.exp(alpha * delta))
    m = m.at[dx:dx + G].multiply(jnp.exp(beta * delta)).at[-1].add(delta)
    if meanfield:
        return m, precision / (scale * scale), factor * scale
    return m, precision / (scale[:, None] * scale[None, :]), factor * scale[:, None]


def _coupled_damping(hess, rho):
    """The mean-field step's matrix (1 - rho) M + rho H, M = H without log tau's cross terms: H with
    its last row and column (log tau's), diagonal excepted, times rho (see the module docstring)."""
    return hess.at[-1, :-1].multiply(rho).at[:-1, -1].multiply(rho)


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
    if not isinstance(options.funnel, bool):
        raise ValueError(f"options.funnel must be a bool, got {options.funnel!r}")
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

    def evaluate(m, factor):
        S, log_det_sd = _covariance(kind, factor)
        elbo, g, H = moments_and_curvature(layout, data, xt, m, S, log_det_sd, options.num_nodes)
        return elbo, g, H

    def init(key, loc):
        del key
        m = jnp.asarray(loc, dtype)
        # on a raw (not standardised) design each coefficient's start sd is in units of its column's
        # root mean square (`glm_exact.coordinate_scales`): with sd 0.1 on a column of size 3e4,
        # exp(mu + var / 2) overflowed at the start of a Poisson fit, which then never moved
        p0 = jnp.square(coordinate_scales(layout, model, data, k, dtype) / options.init_scale)
        precision = p0 if meanfield else jnp.diag(p0)
        return GroupedState(m, precision, _cov_factor(precision, meanfield), jnp.asarray(-jnp.inf, dtype),
                            jnp.zeros((k,), dtype), jnp.diag(p0), jnp.asarray(1.0, dtype),
                            jnp.asarray(jnp.inf, dtype), jnp.asarray(0, jnp.int32))

    def step(key, state: GroupedState):
        del key
        rho = state.rho
        if meanfield:
            precision = (1.0 - rho) * state.precision + rho * jnp.diagonal(state.hess)
            A = _coupled_damping(state.hess, rho)
        else:
            precision = (1.0 - rho) * state.precision + rho * state.hess
            A = precision
        chol = jnp.linalg.cholesky(A)  # NaN when A is not positive definite: the proposal is rejected
        newton = cho_solve((chol, True), state.grad)
        factor = _cov_factor(precision, meanfield)
        passes = 1
        if options.funnel:
            S_now = _covariance(kind, state.factor)[0]
            # E0 / H_gg: the prior's share of each group's curvature (alpha_g before clipping, see _curve_terms)
            share = jnp.exp(-2.0 * state.loc[-1] + 2.0 * S_now[-1, -1]) / jnp.diagonal(state.hess)[layout.dx:-1]
            # else the curve is the m_s direction: the plain step, no pass (also at the start, before any pass)
            use = (jnp.max(share) > MIN_SHARE) & jnp.isfinite(state.elbo)
            zeros_g = jnp.zeros((layout.num_groups,), dtype)
            d1, d2, cross, alpha, beta = jax.lax.cond(
                use, lambda: _curve_terms(layout, data, xt, state.loc, S_now, share, options.num_nodes),
                lambda: (jnp.zeros((), dtype), -jnp.ones((), dtype), jnp.zeros((k,), dtype), zeros_g, zeros_g))
            passes = passes + use.astype(jnp.int32)
            w = cho_solve((chol, True), jnp.zeros((k,), dtype).at[-1].set(1.0))  # A^{-1} e_s

            def solve_fixed_s(r):  # B^{-1} r for B = A without m_s's row and column (r[-1] ignored)
                x = cho_solve((chol, True), r.at[-1].set(0.0))
                return x - w * (x[-1] / w[-1])

            y_g, y_c = solve_fixed_s(state.grad), solve_fixed_s(cross)
            schur = d2 - jnp.dot(cross, y_c)  # the curvature along the curve with dm re-optimised
            joint = use & (schur < 0.0) & jnp.isfinite(schur) & jnp.isfinite(d1)
            delta = jnp.where(joint, -(d1 + jnp.dot(cross, y_g)) / jnp.where(joint, schur, -1.0), 0.0)
            delta = jnp.clip(delta, -MAX_DELTA, MAX_DELTA)
            dm = jnp.where(joint, y_g + y_c * delta, newton)
            m = state.loc + rho * _capped(dm)
            m, precision, factor = _rescale(layout, m, precision, factor, rho * delta, alpha, beta, meanfield)
        else:
            m = state.loc + rho * _capped(newton)  # see glm_exact._capped
        elbo, g, h = evaluate(m, factor)
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
        floored = (nxt.rho < options.min_rho) & (decrement <= options.floor)  # see glm_exact: not far away
        converged = (accept & ((decrement <= options.tol) | stalled | at_floor)) | floored
        return nxt, step_info(nxt.elbo, jnp.isfinite(nxt.elbo), passes, 0, converged)

    def params(state: GroupedState):
        return family_params(state.loc, state.factor, meanfield)

    def extras(state: GroupedState) -> dict:
        return {"decrement": _decrement(state, meanfield), "rho": state.rho}

    return VIAlgorithm(init, step, params, extras)
