"""Test helpers for `VIAlgorithm`s: a minimal jitted runner (the package's driver lives in
advi_jax/run/) and a correlated Gaussian target."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from conftest import XLA_DEFAULT_OPTIONS


_COMPILED: dict = {}  # (algo, max_steps) -> the jitted runner: a second run of one algo compiles nothing


def run(algo, key, loc, max_steps: int):
    """init, then step until `converged` or `max_steps`; returns (params, state, totals).

    totals: dict of the summed grad / logp evaluations, the steps taken and the last StepInfo.
    The jitted runner is kept per (algo, max_steps), so calling it again (another key, or a loop
    checked against a vmap) reuses the compiled program.
    """
    compiled = _COMPILED.get((algo, max_steps))
    if compiled is None:
        compiled = jax.jit(_runner(algo, max_steps))
        if len(_COMPILED) >= 16:  # keep a few: each holds its algorithm (and model data) alive
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[(algo, max_steps)] = compiled
    return compiled(key, loc)


def _runner(algo, max_steps: int):
    def go(key, loc):
        init_key, loop_key = jax.random.split(key)
        state = algo.init(init_key, loc)
        state, info = algo.step(jax.random.fold_in(loop_key, 0), state)

        def cond(c):
            _, info, n, _, _ = c
            return ~info.converged & (n < max_steps)

        def body(c):
            state, _, n, grads, logps = c
            state, info = algo.step(jax.random.fold_in(loop_key, n), state)
            return state, info, n + 1, grads + info.num_grad_evals, logps + info.num_logp_evals

        c = (state, info, jnp.asarray(1, jnp.int32), info.num_grad_evals, info.num_logp_evals)
        state, info, n, grads, logps = jax.lax.while_loop(cond, body, c)
        return algo.params(state), state, dict(grad_evals=grads, logp_evals=logps, steps=n, info=info)

    return go


class Gauss:
    """A Gaussian target on R^K (what an aj.Model offers an algorithm: dim and log_density)."""

    def __init__(self, mean, cov):
        self.mean, self.prec = mean, np.linalg.inv(cov)
        self.dim = mean.shape[0]

    def log_density(self, z):
        d = z - jnp.asarray(self.mean, z.dtype)
        return -0.5 * d @ (jnp.asarray(self.prec, z.dtype) @ d)


def correlated(k=4, seed=0):
    """A random mean and a well-conditioned correlated covariance in k dimensions."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(k, k))
    return rng.normal(size=k), a @ a.T / k + 0.5 * np.eye(k)


def mc_elbo(model, family, params, key, num_draws=1_000_000, chunk=100_000):
    """Monte Carlo mean and standard error of log p(zeta) - log q(zeta), zeta ~ q (float64 sums).

    The reference the exact-ELBO methods' objectives are tested against.
    """
    @functools.partial(jax.jit, compiler_options=XLA_DEFAULT_OPTIONS)  # run time >> compile time
    def draws(model, params, k):
        z = family.sample(params, k, chunk)
        return jax.vmap(model.log_density)(z) - family.log_prob(params, z)

    sums, sq = 0.0, 0.0
    for i in range(num_draws // chunk):
        v = np.asarray(draws(model, params, jax.random.fold_in(key, i)), np.float64)
        sums += v.sum()
        sq += (v * v).sum()
    mean = sums / num_draws
    return mean, np.sqrt((sq / num_draws - mean**2) / num_draws)


def conjugate_regression(seed: int, n: int, mix) -> tuple:
    """A linear regression with known unit noise and a N(0, 2^2 I) prior on correlated predictors
    (standard normals times `mix`): (x, y, posterior mean, covariance, precision), exact."""
    rng = np.random.default_rng(seed)
    mix = np.asarray(mix, np.float64)
    k = mix.shape[0]
    x = rng.normal(size=(n, k)) @ mix
    y = x @ np.array([1.0, -1.0, 0.5][:k] + [0.0] * max(0, k - 3)) + rng.normal(size=n)
    prec = x.T @ x + np.eye(k) / 4.0
    cov = np.linalg.solve(prec, np.eye(k))
    return x, y, cov @ (x.T @ y), cov, prec
