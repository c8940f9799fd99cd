"""Expected log-likelihoods for `glm_exact` beyond logistic / Poisson: probit and negative binomial.

Probit. E[log Phi(s eta)], s = 2y - 1, eta ~ N(mu, v), by Gauss-Hermite on `log_ndtr`; the first
derivative is E[l'] (l' = s phi(z) / Phi(z), the inverse Mills ratio from exp(log pdf - log cdf));
the curvature 2 d psi / d v is the exact derivative of the quadrature value, sum_{t_j > 0} w_j t_j
[l'(mu + sd t_j) - l'(mu - sd t_j)] / sd, for sd > `PROBIT_SD_SWITCH`, and sum_j w_j l''(eta_j) below
(the two agree to the rule's error there, and the difference quotient would lose digits). The
rule is chosen by the largest sd in a block, `PROBIT_NODE_TIERS`, the logistic tiers: measured
against a 200-node rule (float64, worst over means in [-8, 8] and y in {0, 1}), 8 nodes err 9e-10
at sd 0.5 and 3e-6 at sd 1; 32 nodes 1.4e-7 at sd 2 and 2e-3 at sd 6; 128 nodes 3e-8 at sd 4,
8e-5 at sd 8 and 4e-3 at sd 16 (as for softplus, the error grows with the sd: log Phi bends over a
unit-wide region that the nodes' spacing must resolve).

Negative binomial (NB2, `advi_jax.models.glm_more`). With omega = log phi (the model's last flat
coordinate) and u = eta - omega, the per-row log-likelihood is

    l = D(y, e^omega) - lgamma(y + 1) + y eta - y softplus(u) - e^omega softplus(u).

Under q, (eta_i, omega) is bivariate Gaussian (means mu_i, m_w; variances v_i, v_w; covariance c_i),
u_i ~ N(mu_i - m_w, v_u) with v_u = v_i + v_w - 2 c_i, and by exponential tilting
E[e^omega f(u)] = e^{m_w + v_w / 2} E[f(u')], u' ~ N(mu_i - m_w + Cov(u, omega), v_u). Hence

    psi_i = E_w[D(y_i, e^omega)] - lgamma(y_i + 1) + y_i mu_i - y_i F(mu_i - m_w, v_u)
            - e^{m_w + v_w/2} F(mu_i - m_w + c_i - v_w, v_u),       F(a, b) = E[softplus(N(a, b))]:

two one-dimensional softplus expectations (the logistic rule of `glm_exact`, with its node tiers
and its stable curvature as F's derivative) and one expectation over omega alone
(Gauss-Hermite, `OMEGA_NODE_TIERS`: measured against a 200-node rule, float64, y in 0..300, m_w in
[-3, 5], the error is at the rounding floor of the betaln form D then had (~1e-7) with 8 nodes up to sd(omega) 0.5 (6e-5 at
sd 1), and with 32 nodes up to sd 2 (1.2e-6; 16 nodes give 5e-4 there). The posterior sd of log phi
is ~0.1 or less once N is in the hundreds, where 8 nodes would do, but a second tier (a `switch`)
doubled the compile time of a step (19 s -> 11 s on the loaded 2-core machine), so one 32-node rule
is used). v_u and
Cov(u, omega) are formed from the factor directly (no cancellation of v_i + v_w - 2 c_i).

E_w[D(y_i, e^omega)] depends on a row only through y_i, so a pass sums it once per distinct count,
sum_u n_u E_w[D(y_u, e^omega)] (`distinct_dispersion`), from the table of distinct counts y_u and
multiplicities n_u that the NB model computes on the host when it is built
(`glm_more.distinct_counts`, `data["y_distinct"]`, `data["y_count"]`; padded with zero counts to a
power of two), and the rows carry only the two softplus expectations: the same sum up to rounding
order, and its derivatives in (m_w, v_w) by one small autodiff outside the row loop. At N = 1e5
(D = 10, RAND HIE counts resampled: 59 distinct values) it was ~85% of the pass (see
benchmarks/PERFORMANCE.md). `init` checks the table against y (`table_matches`; NaN if stale).
D and its derivative in phi are `glm_more.log_rising_ratio` / `glm_more.rising_ratio_dphi` (one set of
forms: Stirling's for phi >= 10, lgamma / digamma differences below), joined by `expected_rising`'s
custom JVP: the derivatives in (m_w, v_w) come from phi dD/dphi as written, not autodiff of the value
(autodiff of the earlier `betaln` form was about half of the low-rank NB loop's XLA compile), and they
are the value's derivatives to rounding.

The expectations of the gradient and Hessian of l in (eta, omega), which the Newton / fixed-point
pass needs, are the derivatives of psi in the moments (Bonnet / Price): E[l_eta] = d psi / d mu,
E[l_omega] = d psi / d m_w, E[l_eta,eta] = 2 d psi / d v, E[l_omega,omega] = 2 d psi / d v_w,
E[l_eta,omega] = d psi / d c; they are taken by reverse-mode autodiff of the row sum in one sweep per
block. The NB likelihood is not jointly log-concave in (eta, omega), so -E[hess] can be indefinite
away from the optimum: `pd_fix` replaces its eigenvalues by their absolute values (floored), the
saddle-free Newton step; at the optimum S^{-1} = -E[hess] is positive definite and nothing changes.

The dispersion prior (1 / sqrt(phi) ~ Exponential(mean s), flat coordinate omega) contributes, with
kappa = e^{-omega/2}, E[log p(omega)] = -log s - log 2 - E[kappa] / s - m_w / 2, E[kappa] =
exp(-m_w / 2 + v_w / 8), in closed form.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jax.scipy.special import gammaln, log_ndtr

from advi_jax._types import Array
from advi_jax.models.glm_more import DISTINCT_KEYS, distinct_table, log_rising_ratio, rising_ratio_dphi

OMEGA_NODE_TIERS = ((math.inf, 32),)
PROBIT_NODE_TIERS = ((0.5, 8), (2.0, 32), (math.inf, 128))
PROBIT_SD_SWITCH = 0.05
_LOG_2PI = math.log(2.0 * math.pi)


# ---------------------------------------------------------------------------------------------
# Probit
# ---------------------------------------------------------------------------------------------


def _probit_derivs(s, eta):
    """log Phi(z), d/d eta, d^2/d eta^2 at z = s eta. The Mills ratio r = phi(z) / Phi(z) is
    exp(log phi - log Phi) for z >= -5; below, where that difference cancels (800 - 804 at z = -40)
    and so does z + r in l'' = -r (z + r), both come from the continued fraction
    1 / r = 1 / (x + 1 / (x + 2 / (x + ...))), x = -z: z + r is its tail t = 1 / (x + 2 / (x + ...))
    (16 levels: float64-exact for x >= 5)."""
    z = s * eta
    log_cdf = log_ndtr(z)
    direct = jnp.exp(-0.5 * z * z - 0.5 * _LOG_2PI - log_cdf)
    x = jnp.maximum(-z, 5.0)
    t = jnp.zeros_like(x)
    for k in range(16, 0, -1):
        t = k / (x + t)
    tail = z < -5.0
    mills = jnp.where(tail, x + t, direct)
    z_plus_r = jnp.where(tail, t, z + direct)
    return log_cdf, s * mills, -mills * z_plus_r


def probit_expect(y: Array, mu: Array, var: Array, nodes: Array, weights: Array) -> tuple[Array, Array, Array]:
    """(E[log Phi(s eta)], d/d mu, 2 d/d var) for eta ~ N(mu, var), s = 2y - 1 (see the module docstring)."""
    n = nodes.shape[0]
    lift = (1,) * jnp.ndim(mu) + (-1,)
    t, w = jnp.reshape(nodes, lift), jnp.reshape(weights, lift)
    t_pos, w_pos = jnp.reshape(nodes[n - n // 2:], lift), jnp.reshape(weights[n - n // 2:], lift)
    s = (2.0 * y - 1.0)[..., None]
    sd = jnp.sqrt(var)[..., None]
    value, first, second = _probit_derivs(s, mu[..., None] + sd * t)
    _, d_plus, _ = _probit_derivs(s, mu[..., None] + sd * t_pos)
    _, d_minus, _ = _probit_derivs(s, mu[..., None] - sd * t_pos)
    safe_sd = jnp.where(sd > PROBIT_SD_SWITCH, sd, 1.0)
    quotient = jnp.sum(w_pos * t_pos * (d_plus - d_minus), axis=-1) / safe_sd[..., 0]
    stein = jnp.sum(w * second, axis=-1)
    curvature = jnp.where(sd[..., 0] > PROBIT_SD_SWITCH, quotient, stein)
    return jnp.sum(w * value, axis=-1), jnp.sum(w * first, axis=-1), curvature


def probit_expect_auto(y, mu, var, num_nodes):
    """`probit_expect` with the rule from `PROBIT_NODE_TIERS` by the largest sd (or `num_nodes` fixed):
    `glm_exact.expected_log_lik_auto("probit", ...)` (one compiled loop over the tiers' node pairs)."""
    from advi_jax.vi._glm_quad import expected_log_lik_auto

    return expected_log_lik_auto("probit", y, mu, var, num_nodes)


# ---------------------------------------------------------------------------------------------
# Negative binomial
# ---------------------------------------------------------------------------------------------


def _softplus_mean_impl(mu, var, num_nodes):
    from advi_jax.vi.glm_exact import expected_log_lik_auto

    value, first, curvature = expected_log_lik_auto("logistic", jnp.zeros_like(mu), mu, var, num_nodes)
    return -value, -first, -0.5 * curvature  # F, dF/dmu, dF/dvar


def softplus_mean(mu: Array, var: Array, num_nodes: int | None = None) -> Array:
    """F(mu, var) = E[softplus(eta)], eta ~ N(mu, var), elementwise, by `glm_exact`'s logistic rule.

    Differentiable in (mu, var) with the rule's exact derivatives (stable as var -> 0).
    """
    return _softplus_mean(mu, var, num_nodes)


def _softplus_mean(mu, var, num_nodes):
    return _make_softplus_mean(num_nodes)(mu, var)


_CACHE: dict = {}


def _make_softplus_mean(num_nodes):
    if num_nodes in _CACHE:
        return _CACHE[num_nodes]

    @jax.custom_jvp
    def f(mu, var):
        return _softplus_mean_impl(mu, var, num_nodes)[0]

    @f.defjvp
    def f_jvp(primals, tangents):
        mu, var = primals
        dmu, dvar = tangents
        value, d_mu, d_var = _softplus_mean_impl(mu, var, num_nodes)
        return value, d_mu * dmu + d_var * dvar

    _CACHE[num_nodes] = f
    return f


def _pin(stable: Array, formal: Array) -> Array:
    """The value of `stable` with the derivatives of `formal` (equal in exact arithmetic)."""
    return jax.lax.stop_gradient(stable) + (formal - jax.lax.stop_gradient(formal))


def _rising_parts(y: Array, m_w: Array, v_w: Array) -> tuple[Array, Array, Array]:
    """(E_omega[D(y, e^omega)], d/d m_w, d/d v_w) by the rule of `OMEGA_NODE_TIERS` (arguments broadcast).

    D is `glm_more.log_rising_ratio` and its derivative `glm_more.rising_ratio_dphi` (one set of forms:
    Stirling's for phi >= 10, lgamma / digamma differences below), so the derivatives are those of the value
    to rounding. With phi_j = e^{m_w + sd t_j}: d/d m_w = sum_j w_j phi_j D'(phi_j) and d/d v_w =
    sum_j w_j t_j phi_j D'(phi_j) / (2 sd), both from one contraction of phi D' with the (nodes, 2) matrix
    [w, w t]. Reverse-mode autodiff of the node sum instead consumed phi D' in two reductions, into each of
    which XLA copied its elementwise code: that doubled the compile of the derivative (helper `nbvalue`)."""
    from advi_jax.vi.glm_exact import quadrature

    def parts(num):
        t, w = quadrature(num, y.dtype)
        basis = jnp.stack([w, w * t], axis=-1)  # (nodes, 2)
        lift = (1,) * jnp.ndim(m_w) + (-1,)
        t, w = jnp.reshape(t, lift), jnp.reshape(w, lift)
        sd = jnp.sqrt(v_w)
        phi = jnp.exp(m_w[..., None] + sd[..., None] * t)
        value = jnp.sum(w * log_rising_ratio(y[..., None], phi), axis=-1)
        slope = phi * rising_ratio_dphi(y[..., None], phi)  # dD/domega at the nodes
        g = slope @ basis
        return value, g[..., 0], g[..., 1] / (2.0 * sd)

    if len(OMEGA_NODE_TIERS) == 1:
        return parts(OMEGA_NODE_TIERS[0][1])
    tier = (jnp.sqrt(jnp.max(v_w)) > OMEGA_NODE_TIERS[0][0]).astype(jnp.int32)
    return jax.lax.switch(tier, [lambda n=n: parts(n) for _, n in OMEGA_NODE_TIERS])


@jax.custom_jvp
def _expected_rising(y: Array, m_w: Array, v_w: Array) -> Array:
    return _rising_parts(y, m_w, v_w)[0]


def _expected_rising_jvp(primals, tangents):
    y, m_w, v_w = primals
    dy, dm, dv = tangents
    if not isinstance(dy, SymbolicZero):
        raise TypeError("the negative binomial's D(y, phi) is not differentiable in the counts y")
    value, d_m, d_v = _rising_parts(y, m_w, v_w)
    tangent = jnp.zeros_like(value)
    if not isinstance(dm, SymbolicZero):
        tangent = tangent + d_m * dm
    if not isinstance(dv, SymbolicZero):
        tangent = tangent + d_v * dv
    return value, tangent


_expected_rising.defjvp(_expected_rising_jvp, symbolic_zeros=True)


def expected_rising(y: Array, m_w: Array, v_w: Array) -> Array:
    """E_omega[D(y, e^omega)], omega ~ N(m_w, v_w), elementwise (broadcast), by the rule of `OMEGA_NODE_TIERS`.

    Differentiable in (m_w, v_w) by a custom JVP with the rule's derivatives from `rising_ratio_dphi`
    (`_rising_parts`), not autodiff of D; y is data: a tangent in y is an error."""
    return _expected_rising(*jnp.broadcast_arrays(y, m_w, v_w))


def negbin_psi(y, mu, m_w, v, c, v_w, v_u, c_uw, num_nodes=None, constant=True, dispersion=True):
    """Per-row E[l] of the NB2 likelihood (see the module docstring); all arguments per row.

    `v_u`, `c_uw` are Var(u) and Cov(u, omega) formed stably; `v`, `c`, `v_w` carry the derivatives.
    `constant=False` leaves out the data-only -lgamma(y + 1) (`_glm_quad.data_constant`, summed once
    per fit by `glm_exact`); lgamma(y + phi) and the rest of D(y, phi) depend on the dispersion.
    `dispersion=False` leaves out E[D(y, e^omega)] too (`distinct_dispersion` sums it per distinct y).
    """
    v_u = _pin(v_u, v + v_w - 2.0 * c)
    c_uw = _pin(c_uw, c - v_w)
    d = mu - m_w
    f1, f2 = _softplus_mean(jnp.stack([d, d + c_uw]), jnp.stack([v_u, v_u]), num_nodes)  # one rule, one copy
    value = y * mu - y * f1 - jnp.exp(m_w + 0.5 * v_w) * f2
    if dispersion:
        value = value + expected_rising(y, m_w, v_w)
    return value - gammaln(y + 1.0) if constant else value


def has_table(data) -> bool:
    """Whether `data` carries the distinct counts (`glm_more.distinct_table`; static: shapes only). Then
    the passes sum E[D(y, e^omega)] per distinct count."""
    return distinct_table(data) is not None


def distinct_dispersion(data, m_w: Array, v_w: Array) -> Array:
    """sum_i E[D(y_i, e^omega)] = sum_u n_u E[D(y_u, e^omega)] over the distinct counts y_u (with their
    multiplicities n_u; `glm_more.distinct_counts`): U quadratures instead of N, the same sum."""
    values, counts = data[DISTINCT_KEYS[0]], data[DISTINCT_KEYS[1]]
    return jnp.sum(counts.astype(values.dtype) * expected_rising(values, m_w, v_w))


def table_matches(data) -> Array:
    """Whether the distinct-count table agrees with `data["y"]` (`glm_more.distinct_table`), once per fit:
    a stale table (y edited after the model was built) makes the fit's ELBO NaN rather than silently wrong."""
    return distinct_table(data)[2]


def nan_if_stale(layout, data, value: Array) -> Array:
    """`value`, or NaN where a negative binomial's distinct-count table does not match its y
    (`table_matches`): what the exact-ELBO fits' `init` pass through, so a stale table stops the fit."""
    if layout.dispersion is None or not has_table(data):
        return value
    return jnp.where(table_matches(data), value, jnp.nan)


def negbin_moments(layout, x, offset, m, factor, meanfield):
    """(mu, v, c, v_u, c_uw) per row and (m_w, v_w) of the NB2 model's q (omega = last coordinate)."""
    from advi_jax.vi.glm_exact import _moments, _split

    m_w = m[-1]
    if meanfield:
        mu, v = _moments(layout, x, offset, m, factor, meanfield)
        v_w = factor[-1] ** 2
        zero = jnp.zeros_like(mu)
        return mu, v, zero, v + v_w, zero - v_w, m_w, v_w
    mc, mb = _split(layout, m)
    mu = x @ mb + mc
    if offset is not None:
        mu = mu + offset
    lc, lb = _split(layout, factor)
    z = x @ lb + lc[None, :] if layout.intercept else x @ lb  # (n, K): rows of L' x~_i
    l_w = factor[-1]
    z_u = z - l_w[None, :]
    return mu, jnp.sum(z * z, axis=-1), z @ l_w, jnp.sum(z_u * z_u, axis=-1), z_u @ l_w, m_w, jnp.sum(l_w * l_w)


def negbin_value(layout, x, y, offset, m, factor, meanfield, num_nodes=None) -> Array:
    """sum_i E[l_i] (the expected NB2 log-likelihood) under q."""
    mu, v, c, v_u, c_uw, m_w, v_w = negbin_moments(layout, x, offset, m, factor, meanfield)
    full = jnp.full_like(mu, 1.0)
    return jnp.sum(negbin_psi(y, mu, m_w * full, v, c, v_w * full, v_u, c_uw, num_nodes))


def negbin_pass(layout, data, m, factor, meanfield, num_nodes, block):
    """One read of X: (sum E[l], E[grad] (K,), -E[hess] (K, K)) of the NB2 likelihood, omega last.

    The value leaves out the data-only -sum lgamma(y + 1) (`_glm_quad.data_constant`), which
    `glm_exact` adds once per fit."""
    x, y, offset = data["x"], data["y"], data.get("offset")
    n, d = x.shape
    dtype = x.dtype
    block = min(block, n)
    num_blocks = -(-n // block)
    table = has_table(data)

    def body(i, carry):
        start = i * block
        begin = jnp.minimum(start, n - block)
        xb = jax.lax.dynamic_slice_in_dim(x, begin, block)
        yb = jax.lax.dynamic_slice_in_dim(y, begin, block)
        ob = None if offset is None else jax.lax.dynamic_slice_in_dim(offset, begin, block)
        keep = (begin + jnp.arange(block) >= start).astype(dtype)
        mu, v, c, v_u, c_uw, m_w, v_w = negbin_moments(layout, xb, ob, m, factor, meanfield)
        full = jnp.ones_like(mu)
        # Rows already counted (the clamped last block) get zero weight via `keep` on every term.
        def rows(*a):  # the data-only -lgamma(y + 1) is left out (added once per fit by glm_exact)
            return jnp.sum(keep * negbin_psi(yb, *a, v_u, c_uw, num_nodes, constant=False, dispersion=not table))

        value, (g_mu, g_mw, g_v, g_c, g_vw) = jax.value_and_grad(rows, argnums=(0, 1, 2, 3, 4))(
            mu, m_w * full, v, c, v_w * full)
        w_ee, w_ew, w_ww = -2.0 * g_v, -g_c, -2.0 * g_vw
        terms = (value, g_mu @ xb, jnp.sum(g_mu), jnp.sum(g_mw), xb.T @ (w_ee[:, None] * xb), w_ee @ xb,
                 jnp.sum(w_ee), w_ew @ xb, jnp.sum(w_ew), jnp.sum(w_ww))
        return tuple(a + b for a, b in zip(carry, terms))

    zero = jnp.zeros((), dtype)
    acc = (zero, jnp.zeros((d,), dtype), zero, zero, jnp.zeros((d, d), dtype), jnp.zeros((d,), dtype), zero,
           jnp.zeros((d,), dtype), zero, zero)
    value, gb, gc, gw, hbb, hbc, hcc, hbw, hcw, hww = jax.lax.fori_loop(0, num_blocks, body, acc)
    if table:  # E[D(y, e^omega)] once per distinct count: it depends on (m_w, v_w) only
        m_w, v_w = m[-1], (factor[-1] ** 2 if meanfield else jnp.sum(factor[-1] * factor[-1]))  # as negbin_moments
        d_value, (d_mw, d_vw) = jax.value_and_grad(lambda a, b: distinct_dispersion(data, a, b), (0, 1))(m_w, v_w)
        value, gw, hww = value + d_value, gw + d_mw, hww - 2.0 * d_vw
    if layout.intercept:
        g = jnp.concatenate([gc[None], gb, gw[None]])
        h = jnp.block([[hcc[None, None], hbc[None, :], hcw[None, None]],
                       [hbc[:, None], hbb, hbw[:, None]],
                       [hcw[None, None], hbw[None, :], hww[None, None]]])
    else:
        g = jnp.concatenate([gb, gw[None]])
        h = jnp.block([[hbb, hbw[:, None]], [hbw[None, :], hww[None, None]]])
    return value, g, h


def dispersion_prior(m_w: Array, v_w: Array, scale: float) -> tuple[Array, Array, Array]:
    """(E[log p(omega)], d/d m_w, E[-d^2 log p / d omega^2]) of the NB dispersion prior (closed form)."""
    e_kappa = jnp.exp(-0.5 * m_w + 0.125 * v_w)
    value = -math.log(scale) - math.log(2.0) - e_kappa / scale - 0.5 * m_w
    return value, 0.5 * e_kappa / scale - 0.5, 0.25 * e_kappa / scale


def pd_fix(h: Array) -> Array:
    """The symmetric matrix with h's eigenvectors and |eigenvalues| floored at 1e-6 of the largest."""
    h = 0.5 * (h + h.T)
    lam, vec = jnp.linalg.eigh(h)
    mag = jnp.abs(lam)
    mag = jnp.maximum(mag, 1e-6 * jnp.max(mag))
    return (vec * mag[None, :]) @ vec.T
