"""Tests of advi_jax.gradient_variance.instruments: the generic instrument and its intervals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import advi_jax as aj
from advi_jax.gradient_variance import gradient_stats, univariate
from advi_jax.gradient_variance.instruments import student_t_quantile


def _diagonal_gaussian():
    precision = jnp.array([0.5, 2.0, 4.0])
    mean = jnp.array([1.0, -1.0, 0.5])
    model = aj.Model(lambda p: -0.5 * jnp.sum(precision * (p["x"] - mean) ** 2), {"x": aj.real((3,))})
    return model, precision, mean


@pytest.mark.parametrize("num_samples", [1, 3])
def test_reparam_variance_matches_closed_form(key, num_samples):
    """Mean-field reparam gradient on N(m, diag(1/precision)): per-coordinate variance in closed form.

    g_loc = mean_s[-P (loc + s eps - m)] has variance P^2 s^2 / S; g_raw = mean_s[(a + b eps) eps]
    sigmoid(raw) + dH/draw with a = -P (loc - m), b = -P s has variance (a^2 + 2 b^2) sigmoid(raw)^2 / S.
    """
    model, precision, mean = _diagonal_gaussian()
    params = aj.MeanFieldParams(jnp.array([0.3, 0.0, 1.0]), jnp.array([-0.5, 0.2, 0.7]))
    scale = jax.nn.softplus(params.raw_scale)
    a, b = -precision * (params.loc - mean), -precision * scale
    exact = np.concatenate([precision ** 2 * scale ** 2,
                            (a ** 2 + 2 * b ** 2) * jax.nn.sigmoid(params.raw_scale) ** 2]) / num_samples
    stats = aj.gradient_variance(model, "meanfield", params, key, "reparam", num_draws=4000,
                                 num_samples=num_samples, time_repeats=0, confidence=0.999)["reparam"]
    lo, hi = stats.variance_interval
    print("exact", exact, "\nmeasured", np.asarray(stats.variance), "\nlo", lo, "\nhi", hi)
    assert np.all((lo <= exact) & (exact <= hi))
    assert np.all(np.abs(np.asarray(stats.variance) - exact) < 0.15 * exact)  # 4000 draws: ~2-4% sd
    lo, hi = stats.variance_trace_interval
    assert lo <= exact.sum() <= hi and hi / lo < 1.5
    np.testing.assert_allclose(stats.loc_variance, exact[:3].sum(), rtol=0.1)


def test_interval_coverage_on_known_case(key):
    """400 independent copies of one 1-D problem: the 95% variance intervals cover the truth ~95% of the time."""
    m, num_draws = 400, 200
    ks = np.full(m, 0.5)
    params = {"mu": jnp.ones(m), "sigma": jnp.ones(m)}
    stats = gradient_stats(univariate.surrogate("reparam", "square", ks), params, key, num_draws=num_draws,
                           time_repeats=0)
    exact = univariate.exact_moments("reparam", "square", 0.5).variance  # (mu, sigma)
    lo, hi = stats.variance_interval
    truth = np.repeat(exact, m)
    covered = (lo <= truth) & (truth <= hi)
    cover_mu, cover_sigma = covered[:m].mean(), covered[m:].mean()
    print(f"coverage: mu {cover_mu:.3f}, sigma {cover_sigma:.3f}")
    # binomial sd of a 400-copy coverage is 0.011; the jackknife with 20 groups is close to nominal.
    assert 0.90 <= cover_mu <= 0.99 and 0.88 <= cover_sigma <= 0.99
    # and the intervals are not trivially wide
    assert np.median(hi[:m] / lo[:m]) < 2.0


def test_fullrank_snr_has_no_nan(key):
    model, _, _ = _diagonal_gaussian()
    params = aj.FullRankGaussian().init(jax.random.key(3), 3, scale=0.5)
    stats = aj.gradient_variance(model, "fullrank", params, key, ("stl", "score_baseline"), num_draws=100,
                                 time_repeats=0)
    for name, s in stats.items():
        assert not np.any(np.isnan(np.asarray(s.snr))), name
        assert not np.any(np.isnan(s.snr_interval)), name
        assert np.isfinite(s.median_snr) and np.all(np.isfinite(s.median_snr_interval)), name
        # the strict upper triangle and the diagonal of off_diag (6 of 9 entries) never move
        assert int(np.sum(~s.active)) == 6, name
        assert np.all(np.asarray(s.snr)[~s.active] == 0.0)


def test_chunking_does_not_change_result(key):
    surrogate = lambda p, k: jnp.sum(p ** 2 * jax.random.normal(k, p.shape))  # noqa: E731
    a = gradient_stats(surrogate, jnp.arange(1.0, 4.0), key, num_draws=37, time_repeats=0)
    b = gradient_stats(surrogate, jnp.arange(1.0, 4.0), key, num_draws=37, time_repeats=0, chunk_size=5)
    np.testing.assert_allclose(a.variance, b.variance, rtol=1e-4)
    np.testing.assert_allclose(a.variance_interval, b.variance_interval, rtol=1e-4)
    # gradient is 2 p eps: variance 4 p^2
    np.testing.assert_allclose(np.asarray(a.variance), 4 * np.arange(1.0, 4.0) ** 2, rtol=0.6)


def test_student_t_quantile():
    # reference values of Student's t quantiles
    assert abs(student_t_quantile(0.975, 19) - 2.093024) < 2e-3
    assert abs(student_t_quantile(0.975, 4) - 2.776445) < 2e-2
    assert abs(student_t_quantile(0.975, 1) - 12.7062) < 1e-3
    assert abs(student_t_quantile(0.975, 2) - 4.302653) < 1e-5


def test_argument_checks(key):
    with pytest.raises(ValueError, match="scalar"):
        gradient_stats(lambda p, k: p * 2.0, jnp.ones(3), key)
    with pytest.raises(ValueError, match="num_draws"):
        gradient_stats(lambda p, k: jnp.sum(p), jnp.ones(3), key, num_draws=1)
    with pytest.raises(TypeError, match="PRNG key"):
        gradient_stats(lambda p, k: jnp.sum(p), jnp.ones(3), 0)
    with pytest.raises(ValueError, match="confidence"):
        gradient_stats(lambda p, k: jnp.sum(p), jnp.ones(3), key, confidence=1.5)
    with pytest.raises(TypeError, match="surrogate"):
        gradient_stats("nope", jnp.ones(3), key)


def test_deterministic_and_zero_gradients_have_no_nan(key):
    """A noiseless gradient: variance 0 with interval [0, 0], SNR inf; an all-zero one: SNR 0, median 0."""
    s = gradient_stats(lambda p, k: jnp.sum(p), jnp.ones(3), key, num_draws=10, time_repeats=0)
    assert np.all(np.asarray(s.variance) == 0) and np.all(s.variance_interval == 0)
    assert np.all(np.isinf(np.asarray(s.snr))) and np.all(np.isinf(s.snr_interval)) and np.isinf(s.median_snr)
    z = gradient_stats(lambda p, k: 0.0 * jnp.sum(p), jnp.ones(3), key, num_draws=10, time_repeats=0)
    assert not z.active.any() and z.median_snr == 0.0 and not np.any(np.isnan(z.median_snr_interval))
