"""DADVI (advi_jax/vi/dadvi.py): fixed-draw optimum, exactness, linear response, MC errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import advi_jax as aj
from advi_jax.models import logistic_regression
from advi_jax.vi import METHODS, dadvi
from _vi_runner import Gauss as _Gauss
from _vi_runner import conjugate_regression
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
    k = 3
    _, _, mean, cov, prec = conjugate_regression(1, 30, [[1.0, 0.8, 0.0], [0.0, 0.6, 0.5], [0.0, 0.0, 0.9]])
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
    for bad in (0.0, -0.1, float("nan"), True, "0.05", jnp.asarray(0.0), jnp.asarray(1), jnp.full(2, 0.05)):
        with pytest.raises(ValueError, match="mc_tol"):
            dadvi.build(model, aj.MeanFieldGaussian(), dadvi.Options(mc_tol=bad))
    for bad in (-1, 11, 2.0, True):
        with pytest.raises(ValueError, match="max_doublings"):
            dadvi.build(model, aj.MeanFieldGaussian(), dadvi.Options(max_doublings=bad))


# ----------------------------------------------------------------------------------------------
# Draw doubling


def _fit_many(make_algo, keys, loc, tols=(None,), max_steps=200):
    """The test runner over keys, stacked: (loc, extras, grad evals, converged), for each of `tols`.

    One compile for all the keys and all the tolerances: `make_algo(tol)` builds the algorithm
    inside the jitted fit, whose argument `tol` is then a traced `mc_tol` (dadvi takes one; None,
    fixed draws, compiles a program of its own). A loop over the keys of one jitted fit, not a vmap:
    the vmapped program took ~1.5x as long to compile (a vmap of the runner equals the loop:
    test_mc_error_matches_spread_over_seeds_and_vmap_equals_loop).
    """
    def fit(kk, tol):
        algo = make_algo(tol)
        params, state, totals = run(algo, kk, loc, max_steps)
        return params.loc, algo.extras(state), totals["grad_evals"], totals["info"].converged
    fit = jax.jit(fit)
    tols = [None if tol is None else jnp.asarray(tol, loc.dtype) for tol in tols]
    return [jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[fit(k, tol) for k in keys]) for tol in tols]


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def test_doubling_reduces_the_mc_error_gets_closer_and_says_why_it_stopped(x64):
    model = _logistic()
    keys = jax.random.split(jax.random.key(3), 4)
    loc = jnp.zeros(model.dim, jnp.float64)

    def make_algo(tol):  # at most two doublings (M = 32) for every tolerance below: one program
        return dadvi.build(model, aj.MeanFieldGaussian(), dadvi.Options(num_draws=8, mc_tol=tol, max_doublings=2))

    fixed, = _fit_many(make_algo, keys, loc)
    assert bool(jnp.all(fixed[3])) and np.all(np.asarray(fixed[1]["draws_reason"]) == 3)
    m8 = np.asarray(fixed[1]["mc_rel_error"])
    # An unreachable tolerance; one met at once; one in between (0.6 of the largest error at M = 8).
    tol = float(np.max(m8)) * 0.6
    tight, loose, mid = _fit_many(make_algo, keys, loc, tols=(1e-4, 10.0, tol))
    # The unreachable one doubles twice (at once: the predicted M is far beyond), to M = 32, and
    # says it gave up.
    ex = tight[1]
    assert bool(jnp.all(tight[3]))
    np.testing.assert_array_equal(ex["draws_reason"], 2)
    np.testing.assert_array_equal(ex["num_draws"], 32)
    np.testing.assert_array_equal(ex["num_doublings"], 2)
    np.testing.assert_allclose(ex["mc_tol"], 1e-4)
    # The MC error shrinks like 1/sqrt(M): 4x the draws, about half the error.
    ratio = np.asarray(ex["mc_rel_error"]) / m8
    assert np.all((ratio > 0.25) & (ratio < 0.85)), ratio
    assert np.mean(ratio) < 0.7
    # The doubled answer is closer to the long-run one: the reference is the limit of the
    # fixed-draw optimum as M -> infinity, the exact mean-field ELBO optimum (glm_exact: the
    # expected log-likelihood by quadrature, no Monte Carlo error); 4x the draws should halve the
    # distance to it, measured in the doubled fits' linear-response sds.
    exact = aj.fit(model, key=jax.random.key(99), method="glm_exact", family="meanfield", progress=False,
                   diagnostics=False)
    assert exact.converged
    ref_loc = np.asarray(exact.params.loc)[None]
    sd = np.mean(np.asarray(ex["lr_sd"]), axis=0)
    err_fixed = np.sqrt(np.mean(((np.asarray(fixed[0]) - np.asarray(ref_loc)) / sd) ** 2))
    err_doubled = np.sqrt(np.mean(((np.asarray(tight[0]) - np.asarray(ref_loc)) / sd) ** 2))
    assert err_doubled < 0.75 * err_fixed, (err_doubled, err_fixed)
    # and the doubled fits' MC error estimate matches their actual error within 2x
    est = np.sqrt(np.mean((np.asarray(ex["mc_se"]) / sd) ** 2))
    assert 0.5 < est / err_doubled < 2.0, (est, err_doubled)
    # A tolerance met at once: no doubling; the check's cost is counted (M per-draw gradients plus
    # 2M per HVP column of the dense Hessian, P = 2K parameters) on top of the fixed-draw fit's.
    np.testing.assert_array_equal(loose[1]["draws_reason"], 1)
    np.testing.assert_array_equal(loose[1]["num_draws"], 8)
    np.testing.assert_allclose(loose[1]["mc_tol"], 10.0)
    np.testing.assert_allclose(loose[0], fixed[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(loose[2]) - np.asarray(fixed[2]), 8 + 2 * 8 * 2 * model.dim)
    np.testing.assert_array_equal(loose[1]["lr_grad_evals"], 0)  # extras reuse the check at the final state
    # A tolerance in between: stops as soon as it is met, with the error below it.
    ex = mid[1]
    np.testing.assert_array_equal(ex["draws_reason"], 1)
    assert np.all(np.asarray(ex["mc_rel_error"]) <= tol) and np.all(np.asarray(ex["num_doublings"]) >= 1)


def test_fullrank_doubled_fit_is_the_fixed_draw_optimum_of_all_its_draws(key):
    # Gaussian target, no moment matching: the fixed-draw optimum is closed form in the draws
    # actually used, mu = m - L zbar and L S L^T = Sigma (S the draws' covariance, divisor M).
    # After the doublings the fit must sit there for the M it ended at (the chunked sums and the
    # warm restarts are right), and its mean error must be within a few of its MC standard errors.
    mean, cov = _correlated()
    family = aj.FullRankGaussian()
    with jax.enable_x64(True):
        algo = dadvi.build(_Gauss(mean, cov), family, dadvi.Options(num_draws=8, mc_tol=0.15, max_doublings=5))
        params, state, totals = run(algo, key, jnp.zeros(4, jnp.float64), 200)
        ex = jax.jit(algo.extras)(state)
        assert bool(totals["info"].converged) and int(ex["draws_reason"]) == 1 and int(ex["num_doublings"]) >= 1
        m = int(ex["num_draws"])
        z = np.asarray(state.draws).reshape(-1, 4)[:m]
        chol = np.asarray(family.scale_tril(params))
        zbar = z.mean(0)
        s = (z - zbar).T @ (z - zbar) / m
        np.testing.assert_allclose(params.loc, mean - chol @ zbar, atol=1e-7)
        np.testing.assert_allclose(chol @ s @ chol.T, cov, atol=1e-7)
        err = np.abs(np.asarray(params.loc) - mean)
        assert np.all(err < 5 * np.asarray(ex["mc_se"])), (err, ex["mc_se"])



def test_newton_phase_ends_at_the_float32_rounding_floor(key):
    # gtol and xtol far below what float32 can resolve: the Newton phase must still end, where a step's
    # predicted decrease is below F's rounding and does not lower the gradient (before, that step was
    # proposed and rejected again every iteration until the budget ran out), and at the optimum.
    model = _logistic(n=2000, seed=3)
    opts = dadvi.Options(num_draws=30, mc_tol=None, gtol=1e-12, xtol=1e-12)
    params, state, totals = run(dadvi.build(model, aj.MeanFieldGaussian(), opts), key, jnp.zeros(model.dim), 300)
    assert bool(totals["info"].converged) and int(totals["steps"]) < 100, int(totals["steps"])
    assert float(jnp.max(jnp.abs(state.grad))) < 1e-3
    loose = dadvi.build(model, aj.MeanFieldGaussian(), opts._replace(gtol=1e-4, xtol=1e-4))
    params_loose, _, totals_loose = run(loose, key, jnp.zeros(model.dim), 300)
    assert bool(totals_loose["info"].converged)
    scale = np.asarray(aj.MeanFieldGaussian().scale(params))
    np.testing.assert_allclose(params.loc, params_loose.loc, atol=1e-2 * scale.min())
    np.testing.assert_allclose(aj.MeanFieldGaussian().scale(params_loose), scale, rtol=1e-2)
