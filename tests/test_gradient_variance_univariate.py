"""Tests of advi_jax.gradient_variance.univariate: the 1-D study of Mohamed et al. (2020)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advi_jax.gradient_variance import gradient_stats, univariate


def test_estimator_names_do_not_clash_with_the_library():
    from advi_jax.estimators import ESTIMATORS

    # the mean-baseline variant has its own name; shared names keep the library's meaning
    assert "score_baseline" not in univariate.ESTIMATORS_1D
    assert set(univariate.ESTIMATORS_1D) - {"score_mean_baseline"} <= set(ESTIMATORS)


@pytest.mark.parametrize("function", univariate.FUNCTIONS)
def test_measured_variance_matches_exact(function, key):
    """MC variance of each estimator vs quadrature; tolerance from the exact sd of a sample variance."""
    num_draws = 10_000
    ks = np.array({"square": [-2.0, 0.5, 2.5], "exp": [0.2, 1.0, 2.5], "cos": [0.5, 1.5, 4.0]}[function])
    params = {"mu": jnp.ones(3), "sigma": jnp.ones(3)}
    for i, estimator in enumerate(univariate.ESTIMATORS_1D):
        stats = gradient_stats(univariate.surrogate(estimator, function, ks), params, jax.random.fold_in(key, i),
                               num_draws=num_draws, time_repeats=0)
        for j, k in enumerate(ks):
            exact = univariate.exact_moments(estimator, function, float(k))
            measured = np.array([stats.variance[j], stats.variance[3 + j]])
            sd = univariate.sample_variance_sd(exact.variance, exact.central_fourth, num_draws)
            # 4.5 sd: 54 comparisons in this test family, each a near-Gaussian sample variance.
            assert np.all(np.abs(measured - exact.variance) < 4.5 * sd), (estimator, k, measured, exact.variance)
            mean = np.array([stats.mean_flat[j], stats.mean_flat[3 + j]])
            assert np.all(np.abs(mean - exact.mean) < 4.5 * np.sqrt(exact.variance / num_draws))


def test_exact_moments_closed_form():
    # f = (x - k)^2, pathwise: g_mu = 2(x - k), g_sigma = 2(x - k) eps.
    mu, sigma, k = 0.3, 1.7, -1.2
    m = univariate.exact_moments("reparam", "square", k, mu, sigma)
    np.testing.assert_allclose(m.mean, [2 * (mu - k), 2 * sigma], rtol=1e-10)
    np.testing.assert_allclose(m.variance, [4 * sigma**2, 4 * (mu - k) ** 2 + 8 * sigma**2], rtol=1e-10)
    # score function for f = cos(k x): E[g_mu] = d/dmu exp(-k^2 s^2 / 2) cos(k mu).
    m = univariate.exact_moments("score", "cos", 2.0, 1.0, 1.0)
    np.testing.assert_allclose(m.mean[0], -2.0 * np.exp(-2.0) * np.sin(2.0), rtol=1e-9)
    # the mean baseline removes E[f] g_score: variance drops for f = (x - k)^2 far from k
    assert np.all(univariate.exact_moments("score_mean_baseline", "square", 2.5).variance
                  < univariate.exact_moments("score", "square", 2.5).variance)


def test_study_intervals_cover_exact(key):
    res = univariate.study("cos", key, [0.5, 2.0, 4.0], num_draws=2000)
    assert list(res) == list(univariate.ESTIMATORS_1D)
    for name, r in res.items():
        assert r.exact.shape == r.measured.shape == (2, 3) and r.interval.shape == (2, 2, 3)
        inside = (r.interval[0] <= r.exact) & (r.exact <= r.interval[1])
        assert inside.mean() >= 0.8, (name, r.exact, r.interval)


def test_bad_names():
    with pytest.raises(ValueError, match="choose from"):
        univariate.exact_moments("score_baseline", "square", 1.0)
    with pytest.raises(ValueError, match="test function"):
        univariate.surrogate("reparam", "sin", 1.0)
