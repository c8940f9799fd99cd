"""q's draws beyond `importance.DRAW_BLOCK` come in blocks made by the block's one program, the same
draws from every sampler of q for the same key and number."""

import jax
import jax.numpy as jnp
import numpy as np

import advi_jax as aj
from advi_jax import importance
from advi_jax.fit_diagnostics import constrained_draws
from advi_jax.result import _unconstrained_draws


def _model():
    def log_joint(p, y):
        return -0.5 * jnp.sum(p["mu"] ** 2) - 0.5 * jnp.sum((y - p["mu"][0]) ** 2 / p["sigma"] ** 2) \
            - y.shape[0] * jnp.log(p["sigma"])

    return aj.Model(log_joint, {"mu": aj.real((2,)), "sigma": aj.positive()}, data=jnp.linspace(-1.0, 2.0, 7))


def _params():
    family = aj.FullRankGaussian()
    params = family.init(jax.random.key(3), 3, loc=jnp.asarray([0.3, -1.0, 0.2]), scale=0.5)
    return family, params._replace(off_diag=params.off_diag + 0.2)


def test_blocks_cover_the_draws_and_start_from_the_key_itself():
    key = jax.random.key(7)
    blocks = importance.draw_blocks(key, 2 * importance.DRAW_BLOCK + 5)
    assert [n for _, n in blocks] == [importance.DRAW_BLOCK, importance.DRAW_BLOCK, 5]
    assert blocks[0][0] is key
    for i, (k, _) in enumerate(blocks[1:], start=1):  # the host's fold_in is jax.random's
        np.testing.assert_array_equal(jax.random.key_data(k), jax.random.key_data(jax.random.fold_in(key, i)))
    assert importance.draw_blocks(key, 10) == [(key, 10)]


def test_every_sampler_of_q_makes_the_same_blocked_draws_and_one_program_serves_them():
    model, (family, params), key = _model(), _params(), jax.random.key(11)
    n = 3 * importance.DRAW_BLOCK
    before = importance.draws_and_log_ratios._cache_size()
    zeta, centred, shift, cons = importance.blocked_log_ratios(model, family, params, key, n)
    assert importance.draws_and_log_ratios._cache_size() == before + 1  # the block's program, run three times
    assert zeta.shape == (n, 3) and centred.shape == (n,) and np.ndim(shift) == 0
    # the first block is the sample of one block; the later ones are fresh draws
    first, *_ = importance.draws_and_log_ratios(model, family, params, key, importance.DRAW_BLOCK)
    np.testing.assert_array_equal(zeta[:importance.DRAW_BLOCK], np.asarray(first))
    assert not np.allclose(zeta[:10], zeta[importance.DRAW_BLOCK:importance.DRAW_BLOCK + 10])
    # the unconstrained and constrained samplers give these draws (the summary pairs them with the ratios),
    # as JAX arrays like a sample of one block
    unconstrained = _unconstrained_draws(family, params, key, n)
    assert isinstance(unconstrained, jax.Array) and isinstance(zeta, jax.Array)
    np.testing.assert_allclose(np.asarray(unconstrained), zeta, rtol=1e-6, atol=1e-6)
    sigma = np.asarray(constrained_draws(model, family, params, key, n)["sigma"])
    np.testing.assert_allclose(sigma, np.exp(zeta[:, 2]), rtol=1e-5)
    # and they are draws of q: mean and covariance within Monte Carlo error of q's own
    mean, cov = np.asarray(family.mean(params)), np.asarray(family.covariance(params))
    se = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(zeta.mean(axis=0) - mean) < 4 * se)
    np.testing.assert_allclose(np.cov(zeta.T), cov, atol=6 * np.max(np.diag(cov)) / np.sqrt(n))
    # log p - log q of every block: the log density at each draw, less q's log density there
    log_p = np.asarray(jax.vmap(model.log_density)(jnp.asarray(zeta)))
    log_q = np.asarray(family.log_prob(params, jnp.asarray(zeta)))
    np.testing.assert_allclose(centred + float(shift), log_p - log_q, rtol=1e-4, atol=1e-3)
