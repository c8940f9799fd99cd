"""Gaussian families: moments, log_prob against jax.scipy, closed-form entropy against Monte Carlo."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.stats import multivariate_normal, norm

import advi_jax as aj

K = 4


def _random_params(family, key, dtype=jnp.float32):
    k1, k2, k3 = jax.random.split(key, 3)
    loc = jax.random.normal(k1, (K,), dtype)
    if isinstance(family, aj.MeanFieldGaussian):
        return aj.MeanFieldParams(loc, jax.random.normal(k2, (K,), dtype) * 0.5)
    return aj.FullRankParams(loc, jax.random.normal(k2, (K,), dtype) * 0.5, jax.random.normal(k3, (K, K), dtype))


FAMILIES = [aj.MeanFieldGaussian(), aj.FullRankGaussian()]


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_sample_moments_match_params(family, key):
    params = _random_params(family, key)
    draws = family.sample(params, jax.random.fold_in(key, 1), 200_000)
    cov = family.covariance(params)
    sd = jnp.sqrt(jnp.diag(cov))
    np.testing.assert_allclose(draws.mean(0), family.mean(params), atol=float(5 * sd.max() / np.sqrt(2e5)))
    np.testing.assert_allclose(jnp.cov(draws.T), cov, atol=0.03 * float(jnp.max(jnp.abs(cov))), rtol=0.03)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_log_prob_matches_scipy(family, key):
    params = _random_params(family, key)
    zeta = jax.random.normal(jax.random.fold_in(key, 2), (7, K)) * 2.0
    mean, cov = family.mean(params), family.covariance(params)
    expected = jax.vmap(lambda z: multivariate_normal.logpdf(z, mean, cov))(zeta)
    np.testing.assert_allclose(family.log_prob(params, zeta), expected, rtol=1e-4, atol=1e-4)
    # one vector in, a scalar out; vmap agrees with the batched call
    assert family.log_prob(params, zeta[0]).shape == ()
    np.testing.assert_allclose(jax.vmap(lambda z: family.log_prob(params, z))(zeta), expected, rtol=1e-4, atol=1e-4)


def test_meanfield_log_prob_matches_univariate_normals(key):
    fam = aj.MeanFieldGaussian()
    params = _random_params(fam, key)
    zeta = jax.random.normal(jax.random.fold_in(key, 3), (K,))
    expected = jnp.sum(norm.logpdf(zeta, params.loc, jax.nn.softplus(params.raw_scale)))
    np.testing.assert_allclose(fam.log_prob(params, zeta), expected, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_entropy_closed_form_matches_monte_carlo(family, key):
    params = _random_params(family, key)
    n = 100_000
    draws = family.sample(params, jax.random.fold_in(key, 4), n)
    neg_log_q = -family.log_prob(params, draws)
    mc, se = float(neg_log_q.mean()), float(neg_log_q.std() / np.sqrt(n))
    assert abs(float(family.entropy(params)) - mc) < 4 * se


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_float64_and_extreme_scales_stay_finite(family, key):
    with jax.enable_x64(True):
        params = family.init(key, K, scale=1.0, dtype=jnp.float64)
        assert params.loc.dtype == jnp.float64
        draws = family.sample(params, key, 3)
        assert draws.dtype == jnp.float64
        # raw scales far in both tails: softplus keeps scales positive and finite
        wild = params._replace(**{params._fields[1]: jnp.array([-300.0, -30.0, 30.0, 300.0])})
        assert jnp.all(jnp.isfinite(family.entropy(wild)))
        assert jnp.all(jnp.isfinite(family.sample(wild, key, 2)))


def test_init_validates_arguments(key):
    fam = aj.MeanFieldGaussian()
    with pytest.raises(ValueError, match="scale"):
        fam.init(key, 3, scale=-1.0)
    with pytest.raises(ValueError, match="loc"):
        fam.init(key, 3, loc=jnp.zeros(2))
    with pytest.raises(TypeError, match="dim"):
        fam.init(key, 2.5)


def test_families_jit_and_vmap(key):
    fam = aj.FullRankGaussian()
    params = fam.init(key, K, scale=0.5)
    stacked = jax.tree_util.tree_map(lambda x: jnp.stack([x, x + 1.0]), params)
    ent = jax.jit(jax.vmap(fam.entropy))(stacked)
    assert ent.shape == (2,)
    draws = jax.jit(jax.vmap(lambda p, k: fam.sample(p, k, 5)))(stacked, jax.random.split(key, 2))
    assert draws.shape == (2, 5, K)
