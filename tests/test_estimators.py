"""Gradient estimators on a Gaussian target with a Gaussian q, where the ELBO has a closed form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import advi_jax as aj

K = 3
TARGET_MEAN = jnp.array([1.0, -0.5, 2.0])
TARGET_L = jnp.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [-0.3, 0.2, 0.5]])
TARGET_COV = TARGET_L @ TARGET_L.T
TARGET_PREC = jnp.linalg.inv(TARGET_COV)


def log_density(z):
    d = z - TARGET_MEAN
    return -0.5 * d @ TARGET_PREC @ d


def closed_form_elbo(family, params):
    """E_q[log p] + H[q] for a Gaussian q and the (unnormalised) Gaussian target."""
    m, S = family.mean(params), family.covariance(params)
    d = m - TARGET_MEAN
    return -0.5 * (jnp.trace(TARGET_PREC @ S) + d @ TARGET_PREC @ d) + family.entropy(params)


def _params(family):
    if isinstance(family, aj.MeanFieldGaussian):
        return aj.MeanFieldParams(jnp.array([0.3, 0.1, 1.0]), jnp.array([0.2, -0.4, 0.1]))
    return aj.FullRankParams(jnp.array([0.3, 0.1, 1.0]), jnp.array([0.2, -0.4, 0.1]),
                             jnp.array([[0.0, 0, 0], [0.3, 0, 0], [-0.2, 0.1, 0]]))


def _flat(tree):
    return jnp.concatenate([jnp.ravel(x) for x in jax.tree_util.tree_leaves(tree)])


def _grad_draws(name, family, params, key, num_draws, num_samples):
    def one(k):
        return _flat(jax.grad(lambda p: aj.elbo_surrogate(name, family, log_density, p, k, num_samples)[0])(params))
    return jax.jit(jax.vmap(one))(jax.random.split(key, num_draws))


def _free(family, flat):
    """Drop the coordinates the family ignores (the upper triangle of off_diag)."""
    if isinstance(family, aj.FullRankGaussian):
        mask = jnp.concatenate([jnp.ones(2 * K, bool), jnp.tril(jnp.ones((K, K), bool), -1).ravel()])
        return flat[..., mask]
    return flat


@pytest.mark.parametrize("family", [aj.MeanFieldGaussian(), aj.FullRankGaussian()], ids=lambda f: f.name)
@pytest.mark.parametrize("name", sorted(aj.ESTIMATORS))
def test_estimator_is_unbiased(name, family, key):
    params = _params(family)
    exact = _free(family, _flat(jax.grad(lambda p: closed_form_elbo(family, p))(params)))
    num_samples = 4 if name.startswith("score") else 1
    num_draws = 20_000 if name.startswith("score") else 4000
    draws = _free(family, _grad_draws(name, family, params, key, num_draws, num_samples))
    mean, se = draws.mean(0), draws.std(0) / np.sqrt(num_draws)
    z = np.abs(np.asarray(mean - exact)) / np.maximum(np.asarray(se), 1e-6)
    assert np.all(z < 4.5), (name, np.asarray(mean), np.asarray(exact), z)


@pytest.mark.parametrize("name", sorted(aj.ESTIMATORS))
def test_surrogate_value_is_an_elbo_estimate(name, key):
    family = aj.FullRankGaussian()
    params = _params(family)
    values = jax.vmap(lambda k: aj.elbo_surrogate(name, family, log_density, params, k, 4)[0])(jax.random.split(key, 4000))
    assert abs(float(values.mean()) - float(closed_form_elbo(family, params))) < 5 * float(values.std()) / np.sqrt(4000)


def _optimum():
    return aj.FullRankParams(TARGET_MEAN, jnp.log(jnp.expm1(jnp.diag(TARGET_L))), TARGET_L)


def test_stl_has_zero_variance_at_the_optimum_and_reparam_does_not(key):
    family = aj.FullRankGaussian()
    params = _optimum()
    stl = _free(family, _grad_draws("stl", family, params, key, 500, 1))
    rep = _free(family, _grad_draws("reparam", family, params, key, 500, 1))
    assert float(jnp.max(jnp.abs(stl))) < 1e-4
    assert float(jnp.sum(rep.var(0))) > 0.1


def test_stl_has_lower_variance_near_the_optimum(key):
    family = aj.FullRankGaussian()
    opt = _optimum()
    near = opt._replace(loc=opt.loc + 0.05, raw_diag=opt.raw_diag + 0.05)
    stl = _free(family, _grad_draws("stl", family, near, key, 2000, 1)).var(0).sum()
    rep = _free(family, _grad_draws("reparam", family, near, key, 2000, 1)).var(0).sum()
    assert float(stl) < 0.2 * float(rep)


def test_score_baseline_needs_two_samples(key):
    family = aj.MeanFieldGaussian()
    with pytest.raises(ValueError, match="num_samples"):
        aj.elbo_surrogate("score_baseline", family, log_density, _params(family), key, 1)


def test_unknown_estimator_lists_valid_names(key):
    family = aj.MeanFieldGaussian()
    with pytest.raises(ValueError, match="reparam"):
        aj.elbo_surrogate("pathwise", family, log_density, _params(family), key, 1)
