"""Pathfinder (advi_jax/vi/pathfinder.py): exact on Gaussians, compact BFGS algebra, multi-path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import advi_jax as aj
from advi_jax.vi import METHODS, pathfinder
from _vi_runner import Gauss as _Gauss
from _vi_runner import correlated
from _vi_runner import run

K = 5


def _gaussian(seed=0, k=K):
    return correlated(k, seed)


def test_registered():
    assert METHODS["pathfinder"] is pathfinder
    assert pathfinder.DEFAULT_NUM_STEPS == 1 and pathfinder.WHITEN is False
    hash(pathfinder.Options())


@pytest.mark.parametrize("family", [aj.FullRankGaussian(), aj.MeanFieldGaussian()], ids=["fullrank", "meanfield"])
def test_gaussian_target_recovered_exactly(key, family):
    # With near-exact line searches the L-BFGS steps are conjugate, so after K steps the
    # compact inverse Hessian equals the target covariance (quadratic termination).
    mean, cov = _gaussian()
    with jax.enable_x64(True):
        algo = pathfinder.build(_Gauss(mean, cov), family, pathfinder.Options(wolfe_c2=1e-3))
        params, state, totals = run(algo, key, jnp.zeros(K, jnp.float64), 1)
        expected = cov if family.name == "fullrank" else np.diag(np.diag(cov))
        np.testing.assert_allclose(params.loc, mean, atol=1e-3)
        np.testing.assert_allclose(family.covariance(params), expected, atol=1e-3)
        assert int(totals["steps"]) == 1 and bool(totals["info"].converged)
        # One gradient at the start plus at least one per iteration; ELBO draws are log densities.
        assert int(totals["grad_evals"]) >= 1 + int(state.num_iters[0])
        assert int(totals["logp_evals"]) == 10 * int(state.num_iters[0])
        # The best ELBO of an exact q is log Z exactly.
        log_z = 0.5 * np.linalg.slogdet(2 * np.pi * cov)[1]
        np.testing.assert_allclose(float(totals["info"].elbo), log_z, atol=1e-6)


def test_compact_form_equals_bfgs_recursion():
    # The Byrd-Nocedal-Schnabel compact matrix equals BFGS updates of diag(alpha), pair by pair.
    with jax.enable_x64(True):
        rng = np.random.default_rng(3)
        k, m = 7, 4
        a = rng.normal(size=(k, k))
        hess = a @ a.T + np.eye(k)
        s = rng.normal(size=(m, k))
        y = s @ hess.T + 0.01 * rng.normal(size=(m, k))
        alpha = rng.uniform(0.5, 2.0, size=k)
        h = np.diag(alpha)
        for si, yi in zip(s, y):
            rho = 1.0 / (si @ yi)
            v = np.eye(k) - rho * np.outer(yi, si)
            h = v.T @ h @ v + rho * np.outer(si, si)
        valid = jnp.ones(m, bool)
        x, g = rng.normal(size=k), rng.normal(size=k)
        approx = pathfinder._approximation(jnp.asarray(x), jnp.asarray(g), jnp.asarray(s), jnp.asarray(y), valid,
                                           jnp.asarray(alpha))
        factor = pathfinder._covariance_factor(approx)
        np.testing.assert_allclose(factor @ factor.T, h, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(approx.mu, x - h @ g, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(pathfinder._variance(approx), np.diag(h), rtol=1e-8)
        # log q by the Woodbury-free inverse agrees with the dense Gaussian density.
        z = rng.normal(size=(3, k))
        d = z - approx.mu[None, :]
        dense = -0.5 * np.sum(d @ np.linalg.inv(h) * d, 1) - 0.5 * np.linalg.slogdet(2 * np.pi * h)[1]
        np.testing.assert_allclose(pathfinder._log_prob(approx, jnp.asarray(z)), dense, rtol=1e-8)


def test_float32_default_and_vmap_over_seeds(key):
    mean, cov = _gaussian(1)
    algo = pathfinder.build(_Gauss(mean, cov), aj.FullRankGaussian(), pathfinder.Options())
    keys = jax.random.split(key, 2)
    loc = jnp.zeros(K)
    batched = jax.vmap(lambda kk: run(algo, kk, loc, 1)[0])(keys)
    assert batched.loc.dtype == jnp.float32
    for i in range(2):
        single = run(algo, keys[i], loc, 1)[0]
        np.testing.assert_allclose(batched.loc[i], single.loc, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(batched.off_diag[i], single.off_diag, rtol=1e-3, atol=1e-4)
    # Default (inexact line search) still lands on the mode and a close covariance.
    np.testing.assert_allclose(batched.loc[0], mean, atol=1e-3)
    cov_hat = aj.FullRankGaussian().covariance(jax.tree_util.tree_map(lambda a: a[0], batched))
    assert np.max(np.abs(cov_hat - cov)) / np.max(np.abs(cov)) < 0.3


def test_multipath_psis_draws(key):
    mean, cov = _gaussian(2)
    opts = pathfinder.Options(num_paths=3, num_draws=2000)
    algo = pathfinder.build(_Gauss(mean, cov), aj.MeanFieldGaussian(), opts)
    params, state, totals = run(algo, key, jnp.zeros(K), 1)
    extras = algo.extras(state)
    draws = np.asarray(extras["draws"])
    assert draws.shape == (2000, K) and np.all(np.isfinite(draws))
    assert extras["elbo"].shape == (3,) and float(extras["khat"]) < 0.7
    # Resampled draws follow the target: means within ~5 standard errors (resampling repeats).
    sd = np.sqrt(np.diag(cov))
    assert np.max(np.abs(draws.mean(0) - mean) / sd) < 0.15
    assert np.max(np.abs(np.log(draws.std(0) / sd))) < 0.15
    assert int(totals["logp_evals"]) == int(jnp.sum(state.num_iters)) * 10 + 3 * 2000


def test_bad_input():
    model = _Gauss(*_gaussian())
    with pytest.raises(ValueError, match="family"):
        pathfinder.build(model, aj.LowRankGaussian(rank=2), pathfinder.Options())
    with pytest.raises(ValueError, match="num_paths"):
        pathfinder.build(model, aj.FullRankGaussian(), pathfinder.Options(num_paths=0))
    with pytest.raises(TypeError, match="history"):
        pathfinder.build(model, aj.FullRankGaussian(), pathfinder.Options(history=2.5))
    with pytest.raises(ValueError, match="wolfe_c2"):
        pathfinder.build(model, aj.FullRankGaussian(), pathfinder.Options(wolfe_c2=float("nan")))


def _centred_schools():
    """Eight schools, centred: L-BFGS runs down the funnel's neck, where the path's ELBO falls."""
    y = jnp.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
    sigma = jnp.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])

    class Schools:
        dim = 10

        def log_density(self, z):
            mu, log_tau, theta = z[0], z[1], z[2:]
            tau = jnp.exp(log_tau)
            return (-0.5 * (mu / 5.0) ** 2 - jnp.log1p((tau / 5.0) ** 2) + log_tau
                    - jnp.sum(0.5 * ((theta - mu) / tau) ** 2 + log_tau) - jnp.sum(0.5 * ((y - theta) / sigma) ** 2))

    return Schools()


def test_patience_stops_the_path_after_its_best_gaussian(key):
    model = _centred_schools()
    x0 = jnp.zeros(10)
    run_path = jax.jit(lambda o: pathfinder.lbfgs_path(model.log_density, x0, key, o), static_argnums=0)
    full = run_path(pathfinder.Options(max_iters=200))
    short = run_path(pathfinder.Options(max_iters=200, patience=20))
    # It stops exactly `patience` iterations after its best, with the Gaussian the same path cut
    # there has (the path's ELBO draws are the same), at a fraction of the cost. (Without patience
    # the path runs on down the neck, until its line search or its relative-change test ends it.)
    stop, best = int(short.num_iters), int(short.best_iter)
    assert int(full.num_iters) > stop and int(full.best_iter) == best, (int(full.num_iters), int(full.best_iter))
    assert 1 <= best and stop == best + 20 and stop < 200
    cut = run_path(pathfinder.Options(max_iters=stop))
    assert int(cut.best_iter) == best
    np.testing.assert_array_equal(short.approx.mu, cut.approx.mu)
    assert float(short.elbo) == float(cut.elbo) and int(short.num_grad_evals) == int(cut.num_grad_evals)
    assert int(short.num_grad_evals) < int(full.num_grad_evals)
    with pytest.raises(ValueError, match="patience"):
        pathfinder.build(model, aj.FullRankGaussian(), pathfinder.Options(patience=-1))


def test_path_from_given_draws_is_the_path_from_its_key(key):
    # The start passes every iteration's ELBO draws at once; with the draws the key would make,
    # the path is the same one.
    mean, cov = _gaussian(3)
    model = _Gauss(mean, cov)
    options = pathfinder.Options(max_iters=12, gtol=0.0, ftol=0.0)
    keyed = pathfinder.lbfgs_path(model.log_density, jnp.zeros(K), key, options)
    draws, sub_key = [], key
    for _ in range(options.max_iters):
        sub_key, sub = jax.random.split(sub_key)
        draws.append(jax.random.normal(sub, (options.num_elbo_draws, K)))
    given = pathfinder.lbfgs_path(model.log_density, jnp.zeros(K), jax.random.key(99), options, jnp.stack(draws))
    assert int(given.num_iters) == int(keyed.num_iters) and int(given.best_iter) == int(keyed.best_iter)
    np.testing.assert_allclose(given.approx.mu, keyed.approx.mu, rtol=1e-6)
    assert float(given.elbo) == pytest.approx(float(keyed.elbo), rel=1e-6)


def test_pathfinder_method_jitters_a_start_whose_gradient_is_not_finite(key):
    # method="pathfinder" from zero on a Gaussian target times |x_0|^0 (gradient NaN at x_0 = 0):
    # the path runs from a jittered point and recovers the target exactly (as from zero without
    # the factor); with init_tries=0 it cannot run.
    mean, cov = _gaussian()

    class NanAtZero(_Gauss):
        def log_density(self, z):
            return super().log_density(z) * jnp.abs(z[0]) ** 0.0

    family, options = aj.FullRankGaussian(), pathfinder.Options(wolfe_c2=1e-3)
    with jax.enable_x64(True):
        model, x0 = NanAtZero(mean, cov), jnp.zeros(K, jnp.float64)
        assert not np.isfinite(np.asarray(jax.grad(model.log_density)(x0))).all()
        params, state, totals = run(pathfinder.build(model, family, options), key, x0, 1)
        np.testing.assert_allclose(params.loc, mean, atol=1e-3)
        np.testing.assert_allclose(family.covariance(params), cov, atol=1e-3)
        # zero, the jittered point, then at least one gradient per iteration
        assert int(totals["grad_evals"]) >= 2 + int(state.num_iters[0]) and int(state.num_iters[0]) >= K
        _, stuck, totals = run(pathfinder.build(model, family, options._replace(init_tries=0)), key, x0, 1)
        assert int(stuck.num_iters[0]) == 0 and int(totals["grad_evals"]) == 1
    with pytest.raises(ValueError, match="init_tries"):
        pathfinder.build(model, family, options._replace(init_tries=-1))


def test_path_start_shares_the_line_search_copy_of_the_log_density(key):
    # The path's start (and its jittered retries) is evaluated through the line search's one
    # value-and-gradient call: tracing the path runs the log density's Python twice (that call and
    # the vmapped ELBO draws), where a separate start evaluation made it three times.
    mean, cov = _gaussian()
    calls = []

    class Counted(_Gauss):
        def log_density(self, z):
            calls.append(1)
            return super().log_density(z) * jnp.abs(z[0]) ** 0.0  # gradient NaN at z[0] = 0

    model = Counted(mean, cov)
    jitter = jnp.stack([jnp.zeros(K), jnp.full((K,), 0.3), jnp.full((K,), -0.2)])  # try 1 is zero again
    options = pathfinder.Options(max_iters=40, wolfe_c2=1e-3)
    jax.make_jaxpr(lambda x: pathfinder.lbfgs_path(model.log_density, x, key, options, jitter=jitter))(jnp.zeros(K))
    assert len(calls) == 2
    # Zero and the first jittered point (zero again) fail; the path runs from zero + jitter[1], as a
    # path started there, and costs the two failed tries more.
    path = pathfinder.lbfgs_path(model.log_density, jnp.zeros(K), key, options, jitter=jitter)
    there = pathfinder.lbfgs_path(model.log_density, jnp.full((K,), 0.3), key, options)
    assert int(path.start.num_tries) == 3 and bool(path.start.finite) and int(path.start.value_nonfinite) == 0
    assert not bool(path.start.grad_finite) and np.isfinite(float(path.start_log_density))
    np.testing.assert_array_equal(path.start.point, jnp.full((K,), 0.3))
    assert int(path.num_iters) == int(there.num_iters) >= 2
    np.testing.assert_array_equal(path.approx.mu, there.approx.mu)
    assert float(path.elbo) == float(there.elbo)
    assert int(path.num_grad_evals) == int(there.num_grad_evals) + 2
    # No finite point: the path does not run, and says where it ended.
    nowhere = pathfinder.lbfgs_path(model.log_density, jnp.zeros(K), key, options, jitter=jnp.zeros((2, K)))
    assert int(nowhere.num_iters) == 0 and not bool(nowhere.start.finite) and int(nowhere.num_grad_evals) == 3
    assert float(nowhere.elbo) == -np.inf


def test_float32_tight_posterior_keeps_its_curvature_pairs(key):
    # A posterior with sd ~1e-4 (precision ~1e8: the intercept of a Poisson regression on counts
    # of ~2e4 over 2,000 rows). The paper's pair test s'y > eps y'y bounds q's variance along y
    # from below by eps, an absolute variance; with float32's machine epsilon (1.2e-7) there it
    # rejected every pair and left q at the identity, 1e4 sds wide.
    mean, cov = _gaussian(1)
    cov = cov * 1e-8
    algo = pathfinder.build(_Gauss(mean, cov), aj.FullRankGaussian(), pathfinder.Options())
    params, state, _ = run(algo, key, jnp.zeros(K), 1)
    assert params.loc.dtype == jnp.float32
    sd = np.sqrt(np.diag(cov))
    assert np.max(np.abs(np.asarray(params.loc) - mean) / sd) < 0.1
    cov_hat = np.asarray(aj.FullRankGaussian().covariance(params), np.float64)
    assert np.max(np.abs(cov_hat - cov)) / np.max(np.abs(cov)) < 0.3
    assert np.all(np.abs(np.log(np.sqrt(np.diag(cov_hat)) / sd)) < np.log(1.3))


def test_default_fit_on_a_tight_float32_posterior_far_from_zero(key):
    # The default fit's Pathfinder start on the same kind of posterior, 1e5 sds from zero:
    # with no accepted pair the start was the identity and ADVI stalled thousands of sds away.
    mean, cov = _gaussian(2, 3)
    mean = 10.0 + mean
    cov = cov * 1e-8
    target = _Gauss(mean, cov)
    model = aj.Model(log_joint=lambda p: target.log_density(p["x"]), support={"x": aj.real((3,))})
    result = aj.fit(model, key=key, progress=False)
    draws = np.asarray(result.sample(jax.random.key(1), 4000)["x"], np.float64)
    sd = np.sqrt(np.diag(cov))
    assert np.max(np.abs(draws.mean(0) - mean) / sd) < 0.15
    assert np.max(np.abs(np.log(draws.std(0) / sd))) < np.log(1.2)
