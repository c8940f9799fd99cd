"""Batch-and-Match (advi_jax/vi/bam.py): the closed-form match and exact Gaussian recovery."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import advi_jax as aj
from advi_jax.vi import METHODS, bam
from _vi_runner import Gauss as _Gauss
from _vi_runner import correlated as _correlated
from _vi_runner import run


def test_registered():
    assert METHODS["bam"] is bam and bam.FAMILIES == ("fullrank",)
    hash(bam.Options())


def test_update_solves_the_match_equation():
    # Sigma' solves Sigma U Sigma + Sigma = V, and mu' is the proximal mean update.
    rng = np.random.default_rng(2)
    k, b, lam = 5, 3, 0.7
    with jax.enable_x64(True):
        loc = rng.normal(size=k)
        a = rng.normal(size=(k, k))
        cov = a @ a.T + np.eye(k)
        z, g = rng.normal(size=(b, k)), rng.normal(size=(b, k))
        new_loc, new_cov, chol = bam.bam_update(jnp.asarray(loc), jnp.asarray(cov), jnp.asarray(z), jnp.asarray(g), lam)
        zbar, gbar = z.mean(0), g.mean(0)
        u = lam * np.cov(g.T, bias=True) + lam / (1 + lam) * np.outer(gbar, gbar)
        v = cov + lam * np.cov(z.T, bias=True) + lam / (1 + lam) * np.outer(loc - zbar, loc - zbar)
        np.testing.assert_allclose(new_cov @ u @ new_cov + new_cov, v, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(new_cov, new_cov.T, atol=1e-12)
        assert np.all(np.linalg.eigvalsh(np.asarray(new_cov)) > 0)
        np.testing.assert_allclose(chol @ chol.T, new_cov, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(new_loc, loc / (1 + lam) + lam / (1 + lam) * (new_cov @ gbar + zbar), rtol=1e-9)


def _update_through_symmetric_root(loc, cov, z, g, lam):
    """The update as first written (V's symmetric root by a second eigendecomposition), for reference."""
    b = z.shape[0]
    zbar, gbar = z.mean(0), g.mean(0)
    zc, gc = z - zbar, g - gbar
    u = lam * gc.T @ gc / b + lam / (1 + lam) * np.outer(gbar, gbar)
    v = cov + lam * zc.T @ zc / b + lam / (1 + lam) * np.outer(loc - zbar, loc - zbar)
    w, q = np.linalg.eigh(v)
    root = (q * np.sqrt(w)) @ q.T
    m, f = np.linalg.eigh(root @ u @ root)
    factor = root @ f * np.sqrt(2 / (1 + np.sqrt(1 + 4 * np.maximum(m, 0))))
    new_cov = factor @ factor.T
    return loc / (1 + lam) + lam / (1 + lam) * (new_cov @ gbar + zbar), new_cov


@pytest.mark.parametrize("k, b, lam", [(5, 3, 0.7), (30, 16, 480.0), (90, 16, 1440.0 / 7)])
def test_cholesky_update_equals_the_symmetric_root_update(k, b, lam):
    # The Cholesky factor of V replaces V's symmetric root: the same Sigma' (the match equation's
    # unique positive definite solution), to float64 rounding, at BaM's first-step and later lam.
    rng = np.random.default_rng(k)
    a = rng.normal(size=(k, k)) / np.sqrt(k)
    cov = a @ a.T + 0.1 * np.eye(k)
    loc, z, g = rng.normal(size=k), rng.normal(size=(b, k)), 3.0 * rng.normal(size=(b, k))
    want_loc, want_cov = _update_through_symmetric_root(loc, cov, z, g, lam)
    with jax.enable_x64(True):
        new_loc, new_cov, chol = (np.asarray(x) for x in bam.bam_update(*map(jnp.asarray, (loc, cov, z, g)), lam))
    np.testing.assert_allclose(new_cov, want_cov, rtol=1e-8, atol=1e-10 * np.abs(want_cov).max())
    np.testing.assert_allclose(new_loc, want_loc, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(chol @ chol.T, want_cov, rtol=1e-8, atol=1e-10 * np.abs(want_cov).max())
    if k == 5:  # well conditioned: float32 (the default) agrees to float32 rounding
        f32 = bam.bam_update(*(jnp.asarray(x, jnp.float32) for x in (loc, cov, z, g)), lam)
        np.testing.assert_allclose(np.asarray(f32[1], np.float64), want_cov, atol=1e-5 * np.abs(want_cov).max())
        np.testing.assert_allclose(np.asarray(f32[0], np.float64), want_loc, atol=1e-5)


@pytest.mark.parametrize("batch_size", [2, 8])
def test_gaussian_target_recovered(key, batch_size):
    mean, cov = _correlated()
    with jax.enable_x64(True):
        algo = bam.build(_Gauss(mean, cov), aj.FullRankGaussian(), bam.Options(batch_size=batch_size))
        params, _, totals = run(algo, key, jnp.zeros(4, jnp.float64), 300 // batch_size)
        np.testing.assert_allclose(params.loc, mean, atol=1e-3)
        np.testing.assert_allclose(aj.FullRankGaussian().covariance(params), cov, atol=1e-3)
        assert int(totals["grad_evals"]) == batch_size * (300 // batch_size)
        assert not bool(totals["info"].converged)


def test_float32_and_vmap_over_seeds_equals_loop(key):
    mean, cov = _correlated(3, seed=1)
    algo = bam.build(_Gauss(mean, cov), aj.FullRankGaussian(), bam.Options(batch_size=8))
    keys = jax.random.split(key, 2)
    loc = jnp.zeros(3)
    batched = jax.vmap(lambda kk: run(algo, kk, loc, 40)[0])(keys)
    assert batched.loc.dtype == jnp.float32
    for i in range(2):
        single = run(algo, keys[i], loc, 40)[0]
        np.testing.assert_allclose(batched.loc[i], single.loc, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(batched.loc[0], mean, atol=1e-3)
    first = jax.tree_util.tree_map(lambda a: a[0], batched)
    np.testing.assert_allclose(aj.FullRankGaussian().covariance(first), cov, atol=2e-3)


def test_bad_input():
    model = _Gauss(*_correlated())
    with pytest.raises(ValueError, match="family"):
        bam.build(model, aj.MeanFieldGaussian(), bam.Options())
    with pytest.raises(ValueError, match="schedule"):
        bam.build(model, aj.FullRankGaussian(), bam.Options(schedule="cosine"))
    with pytest.raises(ValueError, match="learning_rate"):
        bam.build(model, aj.FullRankGaussian(), bam.Options(learning_rate=-1.0))
    with pytest.raises(TypeError, match="batch_size"):
        bam.build(model, aj.FullRankGaussian(), bam.Options(batch_size=None))


def test_noise_step_is_the_step_given_its_draws(key):
    # The start (advi_jax.run.start) runs BaM from draws made all at once: the step from a key
    # must be the step from that key's draws, and a few of them must move q towards the target.
    mean, cov = _correlated(4, 1)
    model = _Gauss(mean, cov)
    options = bam.Options(batch_size=8)
    algo = bam.build(model, aj.FullRankGaussian(), options)
    step = jax.jit(bam.noise_step(model, options))
    state = keyed = algo.init(key, jnp.zeros(4))
    for i in range(30):
        sub = jax.random.fold_in(key, i)
        keyed, info = algo.step(sub, keyed)
        state, info2 = step(jax.random.normal(sub, (8, 4)), state)
        # the same steps compiled two ways (one jitted program against op-by-op calls): float32 rounding
        # differs through 30 eigendecompositions (3e-5 relative on one CPU), a different step by far more
        np.testing.assert_allclose(state.chol, keyed.chol, rtol=2e-4, atol=1e-5)
        assert bool(info2.finite) and float(info2.elbo) == pytest.approx(float(info.elbo), rel=1e-4)
    np.testing.assert_allclose(state.loc, mean, atol=0.3)
