"""DADVI (advi_jax/vi/dadvi.py): fixed-draw optimum, exactness, linear response, MC errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import advi_jax as aj
from advi_jax.models import logistic_regression
from advi_jax.vi import METHODS, dadvi
from _vi_runner import Gauss as _Gauss
from _vi_runner import correlated as _correlated
from _vi_runner import run


def test_registered():
    assert METHODS["dadvi"] is dadvi
    hash(dadvi.Options())


def test_fullrank_moment_matched_recovers_gaussian_exactly(key):
    mean, cov = _correlated()
    with jax.enable_x64(True):
        algo = dadvi.build(_Gauss(mean, cov), aj.FullRankGaussian(), dadvi.Options(moment_match=True))
        params, state, totals = run(algo, key, jnp.zeros(4, jnp.float64), 100)
        assert bool(totals["info"].converged) and int(totals["steps"]) < 100
        np.testing.assert_allclose(params.loc, mean, atol=1e-3)
        np.testing.assert_allclose(aj.FullRankGaussian().covariance(params), cov, atol=1e-3)
        log_z = 0.5 * np.linalg.slogdet(2 * np.pi * cov)[1]
        np.testing.assert_allclose(-float(state.value), log_z, atol=1e-6)


def test_meanfield_reaches_the_fixed_draw_optimum(key):
    # Diagonal Gaussian target: the fixed-draw optimum is closed form,
    # mu_k = m_k - sigma_k zbar_k and sigma_k = s_k / sd_N(z_k).
    m, s = np.array([1.0, -2.0, 0.5]), np.array([0.5, 2.0, 1.0])
    with jax.enable_x64(True):
        algo = dadvi.build(_Gauss(m, np.diag(s**2)), aj.MeanFieldGaussian(), dadvi.Options(num_draws=8, mc_tol=None))
        params, state, totals = run(algo, key, jnp.zeros(3, jnp.float64), 100)
        z = np.asarray(state.draws).reshape(-1, 3)
        sigma = s / z.std(0)
        np.testing.assert_allclose(aj.MeanFieldGaussian().scale(params), sigma, rtol=1e-6)
        np.testing.assert_allclose(params.loc, m - sigma * z.mean(0), rtol=1e-6, atol=1e-8)
        # Gradients: each value-and-gradient is N, each HVP 2N; at least one of each per step.
        assert int(totals["grad_evals"]) >= 3 * 8 * int(totals["steps"])


def test_linear_response_equals_exact_posterior_covariance(key):
    # Conjugate linear regression (known noise): the posterior is Gaussian, so the LR covariance
    # of a mean-field fit is exact while the mean-field covariance is the inverse precision diagonal.
    rng = np.random.default_rng(1)
    n, k = 30, 3
    x = rng.normal(size=(n, k)) @ np.array([[1.0, 0.8, 0.0], [0.0, 0.6, 0.5], [0.0, 0.0, 0.9]])
    y = x @ np.array([1.0, -1.0, 0.5]) + rng.normal(size=n)
    prec = x.T @ x + np.eye(k) / 4.0
    cov = np.linalg.inv(prec)
    mean = cov @ (x.T @ y)
    with jax.enable_x64(True):
        for moment_match, rtol in ((True, 1e-6), (False, 0.25)):
            opts = dadvi.Options(num_draws=10, moment_match=moment_match, mc_tol=None)
            algo = dadvi.build(_Gauss(mean, cov), aj.MeanFieldGaussian(), opts)
            params, state, _ = run(algo, key, jnp.zeros(k, jnp.float64), 100)
            extras = jax.jit(algo.extras)(state)
            np.testing.assert_allclose(extras["lr_covariance"], cov, rtol=rtol, atol=rtol * np.abs(cov).max())
            np.testing.assert_allclose(extras["lr_sd"], np.sqrt(np.diag(cov)), rtol=rtol)
            if moment_match:
                # The mean-field variances are the inverse precision diagonal, not the posterior's.
                mf_var = aj.MeanFieldGaussian().variance(params)
                np.testing.assert_allclose(mf_var, 1.0 / np.diag(prec), rtol=1e-6)
                assert np.max(np.diag(cov) / mf_var) > 2.0


def _logistic(n=60, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2)).astype(np.float32)
    y = (rng.random(n) < 1 / (1 + np.exp(-(x @ np.array([1.5, -1.0]) + 0.3)))).astype(np.float32)
    return logistic_regression(x, y, prior_scale=2.5)


def test_mc_error_matches_spread_over_seeds_and_vmap_equals_loop():
    model = _logistic()
    algo = dadvi.build(model, aj.MeanFieldGaussian(), dadvi.Options(num_draws=10, mc_tol=None))
    keys = jax.random.split(jax.random.key(7), 48)
    loc = jnp.zeros(model.dim)

    def fit(kk):
        params, state, totals = run(algo, kk, loc, 100)
        return params.loc, algo.extras(state)["mc_se"], totals["info"].converged

    locs, ses, converged = jax.jit(jax.vmap(fit))(keys)
    assert bool(jnp.all(converged))
    spread = np.std(np.asarray(locs), axis=0, ddof=1)
    ratio = np.mean(np.asarray(ses), axis=0) / spread
    assert np.all((ratio > 0.5) & (ratio < 2.0)), ratio
    for i in (0, 1):
        single = run(algo, keys[i], loc, 100)[0]
        np.testing.assert_allclose(locs[i], single.loc, rtol=1e-4, atol=1e-5)


def test_cg_and_dense_linear_response_agree(key):
    model = _logistic(seed=1)
    outs = []
    for solver in ("cg", "dense"):
        algo = dadvi.build(model, aj.MeanFieldGaussian(), dadvi.Options(lr_solver=solver))
        _, state, _ = run(algo, key, jnp.zeros(model.dim), 100)
        outs.append(jax.jit(algo.extras)(state))
    np.testing.assert_allclose(outs[0]["lr_covariance"], outs[1]["lr_covariance"], rtol=2e-3, atol=1e-5)
    np.testing.assert_allclose(outs[0]["mc_se"], outs[1]["mc_se"], rtol=2e-3)


def test_bad_input():
    model = _Gauss(*_correlated())
    with pytest.raises(ValueError, match="family"):
        dadvi.build(model, aj.LowRankGaussian(rank=1), dadvi.Options())
    with pytest.raises(ValueError, match="num_draws > K"):
        dadvi.build(model, aj.MeanFieldGaussian(), dadvi.Options(num_draws=4, moment_match=True))
    with pytest.raises(ValueError, match="unbounded"):
        dadvi.build(model, aj.FullRankGaussian(), dadvi.Options(num_draws=4))
    with pytest.raises(ValueError, match="lr_solver"):
        dadvi.build(model, aj.MeanFieldGaussian(), dadvi.Options(lr_solver="qr"))
    with pytest.raises(ValueError, match="num_draws"):
        dadvi.build(model, aj.MeanFieldGaussian(), dadvi.Options(num_draws=1))
