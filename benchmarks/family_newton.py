"""The Newton side of `benchmarks.family_limit` (its module docstring): the variational Newton fixed
point of the full-rank Gaussian family with Stein's-lemma Hessians, fresh draws or one draw set
(Anderson acceleration), its stationarity residuals, and faster checked equivalents of suite models.

Example:
  >>> from benchmarks.family_newton import newton_limit  # doctest: +SKIP
  >>> mu, L, info = newton_limit(model, seed=4, iters=96, draws=32768)  # doctest: +SKIP
"""

from __future__ import annotations

import time
import warnings

import jax
import numpy as np

import advi_jax as aj
from benchmarks.suite import SuiteModel

CHUNK = 1024  # draws per vectorised log-density call when summarising q


def stochastic_volatility_scan(returns):
    """`suite_more.stochastic_volatility` with its AR(1) filter as a scan: the same sites, priors and log joint.

    The suite's model builds the T x T matrix phi^(t - s) (T^2 powers and their derivatives per
    gradient, ~1.6 ms at T = 150); h_t - mu = phi (h_{t-1} - mu) + shock_t is the same sum, ~3 us
    per gradient vectorised. `limit_model` checks the two log densities and gradients agree before
    this one is used; the stored moments and ELBO are always computed with the suite's own model.
    """
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.distributions.transforms import AffineTransform

    t = returns.shape[0]
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    unit = dist.constraints.unit_interval  # phi's support (-1, 1), as in the suite's model
    phi = numpyro.sample("phi", dist.TransformedDistribution(dist.Beta(20.0, 1.5), AffineTransform(-1.0, 2.0, domain=unit)))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    z = numpyro.sample("z", dist.Normal(jnp.zeros(t), 1.0).to_event(1))
    shocks = sigma * z.at[0].divide(jnp.sqrt(jnp.maximum(1.0 - phi**2, 1e-12)))

    def step(x, shock):
        x = phi * x + shock
        return x, x

    _, x = jax.lax.scan(step, jnp.zeros((), shocks.dtype), shocks)
    h = mu + x
    numpyro.sample("y", dist.Normal(jnp.zeros(t), jnp.exp(jnp.clip(h, -200.0, 200.0) / 2)).to_event(1), obs=returns)


FAST_EQUIVALENTS = {"stochastic_volatility": stochastic_volatility_scan}
"""Suite models with a faster, mathematically identical log joint for the Newton iterations' gradients."""


def limit_model(name: str, suite_model: SuiteModel, check_draws: int = 256):
    """(the suite's model, the model whose gradients the Newton iterations use: a checked fast equivalent or it).

    Raises:
      ValueError: when a fast equivalent's log density or gradient differs from the suite model's
        (relative 1e-9 of its largest entry, point by point) at `check_draws` standard-normal points.
    """
    import jax.numpy as jnp

    model = aj.from_numpyro(suite_model.fn, *suite_model.args)
    if name not in FAST_EQUIVALENTS:
        return model, model
    fast = aj.from_numpyro(FAST_EQUIVALENTS[name], *suite_model.args)
    u = jax.random.normal(jax.random.key(123), (check_draws, model.dim), jnp.float64)
    both = [jax.jit(jax.vmap(jax.value_and_grad(m.log_density)))(u) for m in (model, fast)]
    for a, b in zip(*both):  # the log densities, then the gradients
        a, b = np.asarray(a).reshape(check_draws, -1), np.asarray(b).reshape(check_draws, -1)
        ok = np.all(np.isfinite(a), axis=1)
        scale = np.maximum(np.max(np.abs(a[ok]), axis=1, keepdims=True), 1.0)  # per point
        if not np.array_equal(ok, np.all(np.isfinite(b), axis=1)) or np.any(np.abs(a[ok] - b[ok]) > 1e-9 * scale):
            raise ValueError(f"{name}: the fast equivalent's log density differs from the suite model's")
    return model, fast


def _grad_batch(model, candidates=(1, 16, 128, 1024)) -> int:
    """The fastest `lax.map` batch size for vectorised gradients of `model` (a gather-heavy
    log density's batched scatter is ~12x slower than one draw at a time on CPU: births_lognormal_ts)."""
    import jax.numpy as jnp

    u = 0.1 * jax.random.normal(jax.random.key(0), (1024, model.dim), jnp.float64)
    best, best_time = candidates[0], np.inf
    for batch in candidates:
        fn = jax.jit(lambda x, b=batch: jax.lax.map(jax.grad(model.log_density), x, batch_size=b))
        fn(u).block_until_ready()
        tick = time.perf_counter()
        fn(u).block_until_ready()
        if time.perf_counter() - tick < best_time:
            best, best_time = batch, time.perf_counter() - tick
    return best


def _antithetic(key, draws: int, dim: int, dtype):
    import jax.numpy as jnp

    eps = jax.random.normal(key, (draws // 2, dim), dtype)
    return jnp.concatenate([eps, -eps])  # the linear part of grad cancels in E[grad]; exact means of affine maps


def _stein_moments(model, batch: int):
    """(mean grad, Stein's E[grad eps^T] = E[Hessian] L) over the draws mu + L eps, jitted; non-finite gradients dropped."""
    import jax.numpy as jnp

    grad = jax.grad(model.log_density)

    @jax.jit
    def moments(eps, mu, L):
        g = jax.lax.map(grad, mu[None, :] + eps @ L.T, batch_size=batch)
        ok = jnp.all(jnp.isfinite(g), axis=1)
        w = ok.astype(mu.dtype) / jnp.sum(ok)
        g = jnp.where(ok[:, None], g, 0.0)
        # Stein: E[grad eps^T] = E[Hessian] L. Estimated as the regression of grad on eps (the
        # draws' own second moment in place of I), which is exact for a Gaussian target.
        cross = (g * w[:, None]).T @ eps
        second = (eps * w[:, None]).T @ eps
        stein = jax.scipy.linalg.solve(second, cross.T, assume_a="pos").T
        return w @ g, stein

    return moments


def _newton_iteration(model, draws: int, batch: int = CHUNK):
    """One Gaussian variational Newton fixed-point iteration (module docstring) from the draws eps, jitted."""
    import jax.numpy as jnp
    from jax.scipy.linalg import solve_triangular

    moments = _stein_moments(model, batch)

    @jax.jit
    def iterate(eps, mu, L, rho):
        mean_grad, stein = moments(eps, mu, L)
        hess = solve_triangular(L, stein.T, trans="T", lower=True).T  # stein L^-1
        target = -0.5 * (hess + hess.T)
        eye = jnp.eye(mu.shape[0], dtype=mu.dtype)
        prec = jax.scipy.linalg.cho_solve((L, True), eye)
        new_prec = (1.0 - rho) * prec + rho * target
        C = jnp.linalg.cholesky(new_prec)
        good = jnp.all(jnp.isfinite(C))
        C = jnp.where(good, C, jnp.linalg.cholesky(prec))
        # Sigma = C^-T C^-1; its Cholesky factor from that of the reversed precision
        cov = jax.scipy.linalg.cho_solve((C, True), eye)
        new_L = jnp.linalg.cholesky(0.5 * (cov + cov.T))
        # A target that is not positive definite (q far from the optimum of a non-log-concave
        # target, or heavy-tailed gradients: stochastic volatility) skips the iteration: moving the
        # mean by the old covariance there diverged (SV, seed 4, from iteration 30).
        new_mu = jnp.where(good, mu + rho * cov @ mean_grad, mu)
        return new_mu, new_L, jnp.where(good, new_prec, prec), good

    return iterate


def _fixed_point(iterate, eps, mu, L, iters: int, tol: float, beta: float, log, depth: int = 8):
    """Solve x = T(x) for the undamped Newton map T of ONE draw set eps by Anderson acceleration.

    x is (mu / sd, Lambda_ij sd_i sd_j) with the start's sds (q's own units). The plain damped
    iteration x <- x + beta (T(x) - x) converges slowly where the mean and precision are coupled
    (births_lognormal_ts' log tau_w: ~0.9 per iteration at beta 0.5) and diverges undamped (the
    same direction oscillates, T's eigenvalue below -1); Anderson's mixing of the last `depth`
    residuals (Walker & Ni 2011) converges on both. A mix whose precision is not positive definite
    restarts the history with the plain damped step. Stops when no residual exceeds `tol`; raises
    RuntimeError where the target precision itself is not positive definite.
    """
    import jax.numpy as jnp

    k = mu.shape[0]
    tril = np.tril_indices(k)
    sd0 = np.sqrt(np.sum(np.asarray(L) ** 2, axis=1))
    scale = np.concatenate([1.0 / sd0, np.outer(sd0, sd0)[tril]])

    def pack(mu, prec):
        return np.concatenate([np.asarray(mu), np.asarray(prec)[tril]]) * scale

    def unpack(x):
        x = x / scale
        low = np.zeros((k, k))
        low[tril] = x[k:]
        return x[:k], low + np.tril(low, -1).T

    x = pack(mu, np.linalg.inv(np.asarray(L) @ np.asarray(L).T))
    xs, gs = [], []
    for i in range(iters):
        new_mu, _, new_prec, good = iterate(eps, jnp.asarray(unpack(x)[0]), L, jnp.asarray(1.0, L.dtype))
        g = pack(new_mu, new_prec) - x
        res_mu, res_prec = float(np.max(np.abs(g[:k]))), float(np.max(np.abs(g[k:])))
        log(f"  fixed point {i:3d} residual: mean {res_mu:.2e} sd, precision {res_prec:.2e}, "
            f"target PD {bool(good)}, history {len(xs)}")
        if not bool(good):  # deterministic: the same draws would give the same indefinite target
            raise RuntimeError(f"fixed point iteration {i}: -E_q[Hessian] over the draw set is not positive "
                               "definite; start nearer the optimum (--start) or use more draws")
        if max(res_mu, res_prec) < tol:
            break
        xs, gs = (xs + [x])[-depth - 1:], (gs + [g])[-depth - 1:]
        new = x + beta * g
        if len(xs) > 1:
            dx, dg = np.diff(np.stack(xs), axis=0), np.diff(np.stack(gs), axis=0)
            gamma = np.linalg.lstsq(dg.T, g, rcond=None)[0]
            new = new - (dx + beta * dg).T @ gamma
        mu_new, prec_new = unpack(new)
        try:
            np.linalg.cholesky(prec_new)  # positive definite?
            L_new = np.linalg.cholesky(np.linalg.inv(prec_new))
        except np.linalg.LinAlgError:
            xs, gs = [], []
            mu_new, prec_new = unpack(x + beta * g)
            L_new = np.linalg.cholesky(np.linalg.inv(prec_new))
        x = pack(mu_new, prec_new)
        L = jnp.asarray(L_new)
    mu, prec = unpack(x)
    return jnp.asarray(mu), jnp.asarray(np.linalg.cholesky(np.linalg.inv(prec))), i + 1


def newton_limit(model, seed: int, iters: int, draws: int, log=print, start=None, *, fixed_draws: bool = False,
                 rho: float = 0.5, tol: float = 0.0, batch: int = CHUNK):
    """The full-rank family's optimum by the variational Newton fixed point (module docstring).

    Args:
      model: an `aj.Model` (float64 enabled).
      seed: PRNG seed (the default fit's start and every iteration's draws).
      iters: iterations; with fresh draws the later half is averaged, with fixed draws at most this many.
      draws: draws of q per iteration (antithetic pairs).
      log: where the per-iteration progress goes.
      start: (mean, L) to start from; None: the default `aj.fit`'s q.
      fixed_draws: one set of draws for every iteration (common random numbers): the map is then
        deterministic and its fixed point (the sample conditions' solution: Monte Carlo error of one
        draw set, not of the iterates' spread) is solved by Anderson acceleration (`_fixed_point`)
        to the tolerance `tol` on its residuals (mean in sd of q, precision in q's units).
      rho: the damping (fresh draws), the Anderson mixing parameter (fixed draws).
      tol: `fixed_draws`' stopping tolerance.
      batch: draws per vectorised gradient call (`_grad_batch`).

    Returns:
      (mean (K,), L (K, K), info dict with `mean_mcse` (K,) in sd of q (fresh draws only), the
      start's fit, and `iterations` run).
    """
    import jax.numpy as jnp

    if start is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = aj.fit(model, key=jax.random.key(seed), family="fullrank", progress=False,
                           num_diagnostic_draws=256)
        mu, L = start.family.mean(start.params), start.family.scale_tril(start.params)
    else:
        mu, L = start
    mu, L = jnp.asarray(mu, float), jnp.asarray(L, float)  # float64 where enabled
    iterate = _newton_iteration(model, draws, batch)
    draw = jax.jit(lambda k: _antithetic(k, draws, mu.shape[0], mu.dtype))
    key = jax.random.key(seed + 7)
    if fixed_draws:
        mu, L, run = _fixed_point(iterate, draw(key), mu, L, iters, tol, rho, log)
        return mu, L, {"mean_mcse": None, "start": start, "iterations": run}
    damped = iters // 2
    mus, precs = [], []
    for i in range(iters):
        key, sub = jax.random.split(key)
        eps = draw(sub)
        new_mu, new_L, prec, good = iterate(eps, mu, L, jnp.asarray(rho, mu.dtype))
        sd = jnp.sqrt(jnp.sum(L ** 2, axis=1))
        moved = jnp.abs(new_mu - mu) / sd
        step, worst = float(jnp.max(moved)), int(jnp.argmax(moved))
        log_sd = float(jnp.max(jnp.abs(jnp.log(jnp.sqrt(jnp.sum(new_L ** 2, axis=1)) / sd))))
        mu, L = new_mu, new_L
        if i >= damped:
            mus.append(np.asarray(mu))
            precs.append(np.asarray(prec))
        log(f"  newton {i:3d} |dmu| {step:.2e} sd (coordinate {worst}: {float(mu[worst]):.5f}), "
            f"|dlog sd| {log_sd:.2e}, precision PD {bool(good)}")
    mus = np.stack(mus)
    prec = np.mean(np.stack(precs), axis=0)
    cov = np.linalg.inv(0.5 * (prec + prec.T))
    L = np.linalg.cholesky(0.5 * (cov + cov.T))
    sd = np.sqrt(np.diag(cov))
    mcse = mus.std(axis=0, ddof=1) / np.sqrt(len(mus)) * np.sqrt((2.0 - rho) / rho) / sd
    return jnp.asarray(mus.mean(axis=0)), jnp.asarray(L), {"mean_mcse": mcse, "start": start, "iterations": iters}


def stationarity(model, mu, L, eps, batch: int = CHUNK) -> dict:
    """How far (mu, L L^T) is from the family's stationarity conditions, over the draws mu + L eps.

    `mean_step`: max over coordinates of |Sigma E_q[grad]| / sd of q (the mean's Newton step; 0 at
    the optimum); `precision_residual`: the largest |eigenvalue| of L^T (-E_q[Hessian]) L - I
    (Stein's estimate; 0 at the optimum), and the max |diagonal| of it (`precision_residual_diag`).
    """
    import jax.numpy as jnp

    mean_grad, stein = _stein_moments(model, batch)(eps, jnp.asarray(mu), jnp.asarray(L))
    sd = jnp.sqrt(jnp.sum(L ** 2, axis=1))
    r = -L.T @ stein
    r = 0.5 * (r + r.T) - jnp.eye(mu.shape[0], dtype=mu.dtype)
    return {"mean_step": float(jnp.max(jnp.abs(L @ (L.T @ mean_grad)) / sd)),
            "precision_residual": float(jnp.max(jnp.abs(jnp.linalg.eigvalsh(r)))),
            "precision_residual_diag": float(jnp.max(jnp.abs(jnp.diag(r))))}


def _gaussian_draws(mu, L, eps):
    """The draws mu + L eps of q and their log q."""
    import jax.numpy as jnp

    log_q = (-0.5 * jnp.sum(eps ** 2, axis=1) - jnp.sum(jnp.log(jnp.diag(L)))
             - 0.5 * mu.shape[0] * jnp.log(2 * jnp.pi))
    return mu[None, :] + eps @ L.T, log_q
