"""Low-rank q for `glm_exact` (`family="lowrank"`): L-BFGS on the exact ELBO, by autodiff.

q(zeta) = N(m, D + B B'), D = diag(d^2), B (K, r) (`advi_jax.families.LowRankGaussian`). Each linear
predictor eta_i = x~_i' zeta has variance v_i = (x~_i o x~_i) . d^2 + ||B' x~_i||^2 (the diagonal
part from X o X, the low-rank part from one (N, D) x (D, r) product), so the exact ELBO of
`glm_exact` (closed form / quadrature, any ready kind, the negative binomial's (eta, log phi)
moments included: Var(u_i) = (x o x) . d_beta^2 + d_c^2 + d_w^2 + ||B' x~_i - b_w||^2, formed without
cancellation) is available in O(N D r) per evaluation, with the entropy from the matrix determinant
lemma (`LowRankGaussian.entropy`).

Optimiser. For low-rank q the natural-gradient fixed point S^{-1} = H of the full-rank update has
no closed-form projection onto D + B B', so one `step` is one L-BFGS iteration (`_lbfgs`: history
`HISTORY`, a strong Wolfe line search whose one value-and-gradient call also evaluates the start,
so the program holds one copy of the objective) on -ELBO over (m, softplus^{-1}(d), B), with
gradients by autodiff of the deterministic objective: X is read in the forward and the backward
pass (the XLA path, not the one-read blocked pass of the full-rank update; no native kernel).
`num_grad_evals` counts the value-and-gradient evaluations of the step (the line search's trials,
and the start's evaluation in the first step). B starts from the family's small random
factor (at B = 0 the gradient in B vanishes: a saddle). Convergence: the ELBO changed by less than
`max(rtol, 10 eps)` relative and the gradient's largest entry is below max(1e3 `tol`, 1e-3) (1e-2
in float32: L-BFGS on a float32 objective stalls at its rounding), or the ELBO stopped changing
twice, or no decrease was found even along steepest descent (`_lbfgs.State.failed`).
Measured (with optax's L-BFGS, before `_lbfgs`): with rank >= K - 1 (which represents every
covariance: S = lambda_min I + B B') the optimum matches the full-rank one
(tests/test_glm_lowrank.py: means within 0.002 sd, sds 0.4%);
but L-BFGS is slower than the full-rank Newton / fixed-point update: 20-50 iterations (~2 gradient
evaluations each) in float32 on K = 5, and a few hundred in float64 on a negative binomial with
rank 2 (after 100 iterations the ELBO was 1.3e-3 below its limit), so pass a larger `num_steps`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from advi_jax._types import Array
from advi_jax.base import VIAlgorithm, step_info
from advi_jax.families import LowRankParams
from advi_jax.vi import _glm_native, _lbfgs

HISTORY = 10  # L-BFGS pairs kept (optax's default, which this fit used before)
MAX_LINE_SEARCH = 20  # trials per line search


def lowrank_likelihood(layout, data, m: Array, d: Array, b: Array, num_nodes=None, constant: bool = True) -> Array:
    """sum_i E_q[l_i] for q = N(m, diag(d^2) + b b') (plain XLA, differentiable).

    `constant=False` leaves out the data-only -sum lgamma(y + 1) of Poisson and the negative binomial
    (`_glm_quad.data_constant`; the fit sums it once in `init`, `LowRankState.constant`)."""
    from advi_jax.vi import _glm_lik
    from advi_jax.vi.glm_exact import _split, expected_log_lik_auto

    x, y, offset = data["x"], data["y"], data.get("offset")
    mc, mb = _split(layout, m)
    dc, db = _split(layout, d)
    bc, bb = _split(layout, b)
    mu = x @ mb + mc
    if offset is not None:
        mu = mu + offset
    z = x @ bb + bc[None, :] if layout.intercept else x @ bb  # (N, r): B' x~_i
    diag = (x * x) @ (db * db) + dc * dc
    v = diag + jnp.sum(z * z, axis=-1)
    if layout.dispersion is None:
        return jnp.sum(expected_log_lik_auto(layout.kind, y, mu, v, num_nodes, constant=constant)[0])
    b_w, d_w = b[-1], d[-1]
    v_w = d_w * d_w + jnp.sum(b_w * b_w)
    z_u = z - b_w[None, :]
    c = z @ b_w
    v_u = diag + d_w * d_w + jnp.sum(z_u * z_u, axis=-1)
    c_uw = z_u @ b_w - d_w * d_w
    full = jnp.ones_like(mu)
    table = _glm_lik.has_table(data)  # E[D(y, e^omega)] once per distinct count (`_glm_lik.distinct_dispersion`)
    rows = jnp.sum(_glm_lik.negbin_psi(y, mu, m[-1] * full, v, c, v_w * full, v_u, c_uw, num_nodes,
                                       constant=constant, dispersion=not table))
    return rows + _glm_lik.distinct_dispersion(data, m[-1], v_w) if table else rows


class LowRankState(NamedTuple):
    """The L-BFGS state over the flat (m, raw_diag, B) (`_lbfgs.State`: point, objective, gradient,
    history, evaluation count) and the last two ELBO values; `constant` is the likelihood's data-only
    part (`glm_exact.GLMExactState.constant`), summed once in `init` and added to every evaluation
    of the objective (whose per-row terms leave it out); `scales` is the (K,) c of
    `glm_exact.coordinate_scales` (ones on a standardised design): `opt` is over q in c * zeta."""

    opt: _lbfgs.State
    elbo: Array
    previous: Array
    stalls: Array
    constant: Array
    scales: Array


def build(layout, model, family, options, prior_and_entropy, coordinate_scales=None) -> VIAlgorithm:
    """The low-rank exact-ELBO algorithm (see the module docstring); called by `glm_exact.build`.

    `coordinate_scales(layout, model, data, K, dtype)`: (K,) scales c (`glm_exact.coordinate_scales`),
    or None; with c, computed once in `init` (`LowRankState.scales`), L-BFGS runs on q in the
    coordinates c * zeta, where every column of a raw design has root mean square 1 (L-BFGS is not
    scale-invariant: with a column of size 3e4 it stopped with the intercept 0.2 off, and a Poisson
    start overflowed)."""
    from advi_jax.vi import _glm_lik

    data = model.data
    dtype = data["x"].dtype
    k, r = model.dim, family.rank
    eps = float(jnp.finfo(dtype).eps)
    gtol = max(1e3 * options.tol, 1e-3 if dtype == jnp.float64 else 1e-2)

    def unflatten(theta, c):
        p = LowRankParams(theta[:k], theta[k:2 * k], theta[2 * k:].reshape(k, r))
        return p if coordinate_scales is None else family.transform(p, jnp.zeros((k,), dtype), jnp.diag(1.0 / c))

    def objective(theta, constant, c):
        p = unflatten(theta, c)
        d = family.diag_scale(p)
        lik = lowrank_likelihood(layout, data, p.loc, d, p.factor, options.num_nodes, constant=False) + constant
        var_diag = d * d + jnp.sum(p.factor * p.factor, axis=1)
        # prior_and_entropy adds the Gaussian entropy given log det sd; the low-rank log det comes
        # from the determinant lemma: 0.5 log det S = sum log d + sum log diag M.
        log_det_sd = 0.5 * family._log_det(p)[0]
        return -(lik + prior_and_entropy(layout, p.loc, var_diag, log_det_sd))

    def init(key, loc):
        loc = jnp.asarray(loc, dtype)
        c = jnp.ones((k,), dtype) if coordinate_scales is None else coordinate_scales(layout, model, data, k, dtype)
        p = family.init(key, k, loc=loc * c, scale=options.init_scale, dtype=dtype)
        theta = jnp.concatenate([p.loc, p.raw_diag, p.factor.reshape(-1)])
        theta = _glm_lik.nan_if_stale(layout, data, theta)  # a stale distinct-count table: NaN, not wrong
        inf = jnp.full((), -jnp.inf, dtype)
        constant = _glm_native.data_constant(layout.kind, data["y"], dtype, options.kernel)
        # `_lbfgs.init`'s leaves are strong-typed: the loop compiled ahead from abstract arguments
        # (`advi_jax.run.ahead`) is then the one the fit's own call finds (optax's weak-typed
        # initial scalars made it compile the loop twice).
        return LowRankState(_lbfgs.init(theta, HISTORY), inf, inf, jnp.zeros((), jnp.int32), constant, c)

    def step(key, state: LowRankState):
        del key

        def value_and_grad(theta):
            return jax.value_and_grad(objective)(theta, state.constant, state.scales)

        # One L-BFGS iteration; the first step evaluates the start first, through the line search's
        # own call (one copy of the objective in the program).
        opt = jax.lax.while_loop(lambda s: (s.iterations == state.opt.iterations) & ~s.failed,
                                 lambda s: _lbfgs.iterate(value_and_grad, s, max_line_search=MAX_LINE_SEARCH),
                                 state.opt)
        value = jnp.where(state.opt.started, state.opt.f, opt.f_start)  # before the iteration
        elbo = -opt.f
        ok = jnp.isfinite(elbo)
        change = jnp.abs(elbo + value) / (1.0 + jnp.abs(elbo))
        stalls = jnp.where(change <= eps, state.stalls + 1, 0)
        small = (change <= max(options.rtol, 10 * eps)) & (jnp.max(jnp.abs(opt.g)) <= gtol)
        nxt = LowRankState(opt, jnp.where(ok, elbo, state.elbo), -value, stalls, state.constant, state.scales)
        converged = ok & (small | (stalls >= 2) | opt.failed)
        return nxt, step_info(nxt.elbo, ok, opt.num_evals - state.opt.num_evals, 0, converged)

    def params(state: LowRankState):
        return unflatten(state.opt.x, state.scales)

    def extras(state: LowRankState) -> dict:
        # The gradient L-BFGS holds at the result (its last accepted line-search point): a fresh
        # jax.grad here made `single.finish` compile another copy of the objective's gradient
        # (2-11 s of the first call, measured). NaN before the first step.
        g = state.opt.g
        return {"grad_max": jnp.where(state.opt.started, jnp.max(jnp.abs(g)), jnp.nan).astype(g.dtype)}

    return VIAlgorithm(init, step, params, extras)
