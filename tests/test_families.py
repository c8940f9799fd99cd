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


# --- LowRankGaussian ------------------------------------------------------------------------------

def _lowrank_params(key, k=6, r=3, spread=1.0):
    fam = aj.LowRankGaussian(rank=r)
    k1, k2, k3 = jax.random.split(key, 3)
    params = fam.init(k1, k, scale=0.5)
    return fam, params._replace(loc=jax.random.normal(k2, (k,)),
                                factor=spread * jax.random.normal(k3, (k, r)))


def test_lowrank_log_prob_and_entropy_match_the_dense_formulas(key):
    fam, params = _lowrank_params(key)
    zeta = jax.random.normal(jax.random.fold_in(key, 1), (7, 6))

    @jax.jit  # one compilation instead of many small eager ones
    def compare(params, zeta):
        cov = fam.covariance(params)
        dense_log_prob = jax.vmap(lambda z: multivariate_normal.logpdf(z, params.loc, cov))(zeta)
        dense_entropy = 0.5 * jnp.linalg.slogdet(2 * jnp.pi * jnp.e * cov)[1]
        L = fam.scale_tril(params)
        return (fam.log_prob(params, zeta), dense_log_prob, fam.entropy(params), dense_entropy,
                fam.variance(params), jnp.diagonal(cov), L @ L.T, cov, fam.log_prob(params, zeta[0]))

    lp, dense_lp, ent, dense_ent, var, dense_var, llt, cov, one = compare(params, zeta)
    np.testing.assert_allclose(lp, dense_lp, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ent, dense_ent, rtol=1e-5)
    np.testing.assert_allclose(var, dense_var, rtol=1e-5)
    np.testing.assert_allclose(llt, cov, rtol=1e-4, atol=1e-4)
    assert one.shape == () and np.isclose(one, lp[0], rtol=1e-5)


def test_lowrank_log_prob_stays_right_where_the_diagonal_collapses_onto_the_factor(key):
    """A Heywood case: softplus(raw_diag) ~ 1e-13 against factor rows of norm ~1-2 (a coordinate whose variance
    is all along the factor, where an ADVI fit drifted). Without `diag_scale`'s floor the float32 Woodbury
    form's log q was off by 4e21 here (411 already at softplus = 3e-4; NaN in the fit that drifted there); with
    it, log q (within 0.25) and the entropy match float64 dense formulas of the same covariance, and d is 1% of
    the factor's row norm."""
    fam = aj.LowRankGaussian(rank=3)
    k1, k2 = jax.random.split(key)
    factor = jax.random.normal(k1, (40, 3))
    params = fam.init(k2, 40, scale=1.0)._replace(raw_diag=jnp.full((40,), -30.0), factor=factor)
    d = np.asarray(fam.diag_scale(params))
    np.testing.assert_allclose(d, aj.families.DIAG_FLOOR * np.linalg.norm(np.asarray(factor), axis=1), rtol=1e-5)
    zeta = jax.jit(fam.sample, static_argnums=2)(params, jax.random.fold_in(key, 1), 64)
    lp = np.asarray(jax.jit(fam.log_prob)(params, zeta))
    assert np.isfinite(lp).all()
    f64 = np.asarray(factor, np.float64)
    cov = np.diag(d.astype(np.float64) ** 2) + f64 @ f64.T
    z64 = np.asarray(zeta, np.float64) - np.asarray(params.loc, np.float64)
    sign, logdet = np.linalg.slogdet(cov)
    dense = -0.5 * np.einsum("ni,ni->n", z64, np.linalg.solve(cov, z64.T).T) - 0.5 * logdet - 20 * np.log(2 * np.pi)
    np.testing.assert_allclose(lp, dense, rtol=2e-3, atol=0.5)  # float32 Woodbury at B/d = 100
    np.testing.assert_allclose(float(fam.entropy(params)), 0.5 * logdet + 20 * (1 + np.log(2 * np.pi)), rtol=1e-4)


def test_lowrank_samples_and_monte_carlo_entropy(key):
    fam, params = _lowrank_params(key)

    @jax.jit
    def moments(params, key):
        draws = fam.sample(params, key, 100_000)
        neg = -fam.log_prob(params, draws)
        return draws.shape, jnp.mean(draws, 0), jnp.cov(draws.T), jnp.mean(neg), jnp.std(neg)

    shape, mean, cov, mc_entropy, sd = moments(params, jax.random.fold_in(key, 2))
    assert shape == (100_000, 6)
    np.testing.assert_allclose(mean, params.loc, atol=0.05)
    np.testing.assert_allclose(cov, fam.covariance(params), atol=0.1, rtol=0.05)
    assert abs(float(mc_entropy) - float(fam.entropy(params))) < 4 * float(sd) / np.sqrt(100_000)


def test_lowrank_is_registered_and_configurable():
    from advi_jax.families import FAMILIES, get_family

    assert isinstance(get_family("lowrank"), aj.LowRankGaussian) and FAMILIES["lowrank"].rank == 10
    assert get_family(aj.LowRankGaussian(rank=5)).rank == 5
    with pytest.raises(ValueError, match="rank"):
        aj.LowRankGaussian(rank=0)


def _hierarchical_logistic(num_groups, per_group, seed=0):
    """y ~ Bernoulli(logit = alpha[g] + x beta), alpha_g ~ N(0, tau^2), tau ~ half-normal: K = G + 4."""
    rng = np.random.default_rng(seed)
    d = 3
    alpha = rng.normal(0, 1.0, size=num_groups)
    beta = np.array([0.5, -0.5, 0.25])
    g = np.repeat(np.arange(num_groups), per_group)
    x = rng.normal(size=(g.size, d))
    y = (rng.random(g.size) < 1 / (1 + np.exp(-(alpha[g] + x @ beta)))).astype(np.float32)

    def log_joint(params, data):
        x, y, g = data
        z = (2 * y - 1) * (params["alpha"][g] + x @ params["beta"])
        tau = params["tau"]
        prior = (-0.5 * jnp.sum(params["beta"] ** 2) - 0.5 * tau**2 - num_groups * jnp.log(tau)
                 - 0.5 * jnp.sum(params["alpha"] ** 2) / tau**2)
        return prior + jnp.sum(jnp.minimum(z, 0.0) - jnp.log1p(jnp.exp(-jnp.abs(z))))

    model = aj.Model(log_joint, {"alpha": aj.real((num_groups,)), "beta": aj.real((d,)), "tau": aj.positive()},
                     data=(jnp.asarray(x, jnp.float32), jnp.asarray(y), jnp.asarray(g, jnp.int32)))
    return model, alpha, beta


def test_lowrank_fit_on_a_hierarchical_model_with_two_thousand_groups(key):
    model, alpha, beta = _hierarchical_logistic(2000, 10)
    assert model.dim == 2004
    result = aj.fit(model, key=key, family=aj.LowRankGaussian(rank=5), num_steps=1500, learning_rate=0.02,
                    progress=False)
    assert np.all(np.isfinite(result.elbo))
    loc = np.asarray(result.family.mean(result.params))
    assert np.corrcoef(loc[:2000], alpha)[0, 1] > 0.6
    mean = result.mean()
    np.testing.assert_allclose(mean["beta"], beta, atol=0.15)
    assert 0.6 < float(mean["tau"]) < 1.5
