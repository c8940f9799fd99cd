"""The data-only -sum lgamma(y + 1) summed once per fit in the low-rank glm_exact (`_glm_lowrank`).

Its objective leaves the constant out of the rows and adds the sum computed in `init`; the ELBO it
compares and reports must still be the whole exact ELBO (`exact_elbo`, which evaluates it per row).
"""

import jax
import jax.numpy as jnp
import numpy as np

import advi_jax as aj
from advi_jax.families import LowRankParams
from advi_jax.models import negbin_regression, poisson_regression
from advi_jax.vi import _glm_lowrank
from advi_jax.vi import glm_exact as G
from advi_jax.vi._glm_quad import data_constant


def _counts(rng, n, scale=2.0):
    x = rng.normal(size=(n, 3))
    return x, rng.poisson(np.exp(scale + 0.4 * x[:, 0] - 0.3 * x[:, 2])).astype(float)  # large counts: a large constant


def _lowrank_params(rng, k, dtype):
    return LowRankParams(jnp.asarray(rng.normal(size=k) * 0.2, dtype), jnp.full((k,), -2.0, dtype),
                         jnp.asarray(rng.normal(size=(k, 2)) * 0.05, dtype))


def test_lowrank_likelihood_without_the_constant_plus_the_sum_equals_the_per_row_formula():
    with jax.enable_x64(True):
        rng = np.random.default_rng(5)
        x, y = _counts(rng, 400)
        for model in (poisson_regression(x, y, exposure=rng.uniform(0.5, 2.0, 400)), negbin_regression(x, y)):
            layout = G._layout(model)
            p = _lowrank_params(rng, model.dim, jnp.float64)
            d = aj.LowRankGaussian(rank=2).diag_scale(p)

            def lik(loc, constant):
                return _glm_lowrank.lowrank_likelihood(layout, model.data, loc, d, p.factor, constant=constant)

            whole, g_whole = jax.value_and_grad(lik)(p.loc, True)
            part, g_part = jax.value_and_grad(lik)(p.loc, False)
            constant = float(data_constant(model.info.kind, model.data["y"]))
            assert constant < -1e3
            np.testing.assert_allclose(part + constant, whole, rtol=1e-12)
            np.testing.assert_allclose(g_part, g_whole, rtol=1e-12, atol=1e-12)


def test_lowrank_fit_reports_the_whole_exact_elbo():
    with jax.enable_x64(True):
        rng = np.random.default_rng(6)
        x, y = _counts(rng, 300, scale=1.5)
        model = poisson_regression(x, y)
        family = aj.LowRankGaussian(rank=2)
        res = aj.fit(model, key=jax.random.key(0), family=family, method="glm_exact", progress=False,
                     diagnostics=False, num_steps=400)
        assert bool(res.converged)
        np.testing.assert_allclose(float(np.asarray(res.elbo)[-1]), float(G.exact_elbo(model, family, res.params)),
                                   rtol=1e-12)
        # The same optimum as the full-rank fit (rank 2 of K = 4 covers its correlations only in part:
        # the means agree closely, as tests/test_glm_lowrank.py measures for rank >= K - 1).
        full = aj.fit(model, key=jax.random.key(0), family="fullrank", method="glm_exact", progress=False,
                      diagnostics=False)
        sd = np.sqrt(np.diagonal(np.asarray(aj.FullRankGaussian().covariance(full.params))))
        assert np.max(np.abs(np.asarray(res.params.loc) - np.asarray(full.params.loc)) / sd) < 0.05
