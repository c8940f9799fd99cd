"""glm_exact with a low-rank q (advi_jax.vi._glm_lowrank): exact ELBO vs Monte Carlo, optimum vs full rank."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import advi_jax as aj
from advi_jax.families import LowRankParams
from advi_jax.models import logistic_regression, negbin_regression
from advi_jax.vi import glm_exact as G
from conftest import XLA_DEFAULT_OPTIONS


def _data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    x[:, 1] += 0.8 * x[:, 0]  # correlated coefficients: a low-rank factor has something to capture
    return rng, x


@pytest.mark.parametrize("kind", ["logistic", "negbin"])
def test_lowrank_exact_elbo_equals_monte_carlo(kind, key):
    rng, x = _data(n=60)
    if kind == "logistic":
        model = logistic_regression(x, (x[:, 0] + rng.normal(size=60) > 0) * 1.0)
    else:
        model = negbin_regression(x, rng.poisson(np.exp(0.5 + 0.3 * x[:, 0])))
    family = aj.LowRankGaussian(rank=2)
    k = model.dim
    params = LowRankParams(jnp.asarray(rng.normal(size=k) * 0.3, jnp.float32),
                           jnp.full((k,), -2.0, jnp.float32), jnp.asarray(rng.normal(size=(k, 2)) * 0.08, jnp.float32))
    exact = float(G.exact_elbo(model, family, params))

    @functools.partial(jax.jit, compiler_options=XLA_DEFAULT_OPTIONS)  # run time >> compile time
    def draws(p, kk):
        z = family.sample(p, kk, 100_000)
        return jax.vmap(model.log_density)(z) - family.log_prob(p, z)

    v = np.concatenate([np.asarray(draws(params, jax.random.fold_in(key, i)), np.float64) for i in range(10)])
    mean, se = v.mean(), v.std() / np.sqrt(v.size)
    assert abs(exact - mean) < 4 * se + 1e-6 * abs(mean), (exact, mean, se)
    moved = params._replace(factor=params.factor * 1.5)
    assert abs(float(G.exact_elbo(model, family, moved)) - mean) > 10 * se


def test_rank_k_minus_1_matches_the_fullrank_optimum():
    # Any covariance is lambda_min I + B B' with rank K - 1, so the low-rank optimum is the full-rank one.
    rng, x = _data()
    model = logistic_regression(x, (rng.uniform(size=300) < 1 / (1 + np.exp(-(x @ [1.0, -0.5, 0.3] + 0.2)))) * 1.0)
    k = model.dim
    kw = dict(key=jax.random.key(0), method="glm_exact", progress=False, diagnostics=False, warn=False)
    full = aj.fit(model, family="fullrank", **kw)
    low = aj.fit(model, family=aj.LowRankGaussian(rank=k - 1), **kw)
    assert low.report.converged and low.method == "glm_exact"
    s_full = aj.FullRankGaussian().covariance(full.params)
    s_low = aj.LowRankGaussian(rank=k - 1).covariance(low.params)
    sd = jnp.sqrt(jnp.diagonal(s_full))
    assert float(jnp.max(jnp.abs(low.params.loc - full.params.loc) / sd)) < 0.01
    assert float(jnp.max(jnp.abs(s_low - s_full) / jnp.outer(sd, sd))) < 0.01  # variances and correlations
    np.testing.assert_allclose(float(low.final_elbo), float(full.final_elbo), rtol=1e-5)
    # a rank-1 q is a restriction: its optimum cannot beat the full-rank ELBO (beyond float32 rounding)
    one = aj.fit(model, family=aj.LowRankGaussian(rank=1), **kw)
    assert float(one.final_elbo) <= float(full.final_elbo) + 1e-5 * abs(float(full.final_elbo))
