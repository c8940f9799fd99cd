"""The data-only -sum lgamma(y + 1) summed once per fit in glm_grouped and the low-rank glm_exact.

Their passes leave the constant out and add the sum computed in `init`; the ELBO they compare and
report must still be the whole exact ELBO (`exact_elbo`, which evaluates it per row).
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

import advi_jax as aj
from advi_jax.families import LowRankParams
from advi_jax.models import grouped_poisson_regression, negbin_regression, poisson_regression
from advi_jax.vi import _glm_lowrank
from advi_jax.vi import glm_exact as G
from advi_jax.vi import glm_grouped as GG
from advi_jax.vi._glm_quad import data_constant


def _counts(rng, n, scale=2.0):
    x = rng.normal(size=(n, 3))
    return x, rng.poisson(np.exp(scale + 0.4 * x[:, 0] - 0.3 * x[:, 2])).astype(float)  # large counts: a large constant


def test_grouped_pass_with_the_summed_constant_equals_the_per_row_formula():
    with jax.enable_x64(True):
        rng = np.random.default_rng(3)
        x, y = _counts(rng, 240)
        model = grouped_poisson_regression(x, y, group=rng.integers(0, 6, 240), exposure=rng.uniform(0.5, 2.0, 240))
        layout = GG._layout(model)
        k = model.dim
        m = jnp.asarray(rng.normal(size=k) * 0.2)
        L = jnp.asarray(np.tril(rng.normal(size=(k, k)) * 0.05, -1) + np.diag(rng.uniform(0.05, 0.2, k)))
        S, log_det_sd = L @ L.T, jnp.sum(jnp.log(jnp.diagonal(L)))
        xt = GG._design(layout, model.data)
        constant = data_constant("poisson", model.data["y"])
        assert abs(float(constant) + float(np.sum(gammaln(y + 1.0)))) < 1e-9 * float(np.sum(gammaln(y + 1.0)))
        per_row = GG.moments_and_curvature(layout, model.data, xt, m, S, log_det_sd, None)
        hoisted = GG.moments_and_curvature(layout, model.data, xt, m, S, log_det_sd, None, constant)
        for a, b in zip(per_row, hoisted):
            np.testing.assert_allclose(b, a, rtol=1e-12, atol=0)
        np.testing.assert_allclose(hoisted[0], GG.exact_elbo(model, aj.FullRankGaussian(),
                                                             aj.FullRankGaussian.from_scale_tril(m, L)), rtol=1e-12)


def test_grouped_fit_reports_the_whole_exact_elbo():
    with jax.enable_x64(True):
        rng = np.random.default_rng(4)
        x, y = _counts(rng, 300)
        model = grouped_poisson_regression(x, y, group=rng.integers(0, 5, 300))
        family = aj.FullRankGaussian()
        res = aj.fit(model, key=jax.random.key(0), family=family, method="glm_grouped", progress=False,
                     diagnostics=False)
        assert res.method == "glm_grouped" and bool(res.converged)
        whole = float(GG.exact_elbo(model, family, res.params))
        # A missing or doubled constant would be off by sum lgamma(y + 1) (here ~3e3).
        assert float(np.sum(gammaln(y + 1.0))) > 1e3
        np.testing.assert_allclose(float(np.asarray(res.elbo)[-1]), whole, rtol=1e-12)
        # ... and the optimum: the ELBO's gradient in the mean vanishes there (in posterior sds).
        grad = jax.grad(lambda m: GG.exact_elbo(model, family, res.params._replace(loc=m)))(res.params.loc)
        sd = jnp.sqrt(family.variance(res.params))
        assert float(jnp.max(jnp.abs(grad * sd))) < 1e-3  # the default tol leaves ~1e-4 (log tau)


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
