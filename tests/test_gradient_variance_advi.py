"""Tests of advi_jax.gradient_variance.advi: aj.gradient_variance and aj.track_gradient_variance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import advi_jax as aj
from advi_jax.gradient_variance import DEFAULT_ESTIMATORS


def _gaussian_model():
    """A correlated 3-D Gaussian target N(mean, A A^T) and its exact full-rank parameters."""
    chol = jnp.array([[1.0, 0.0, 0.0], [0.5, 0.8, 0.0], [0.2, -0.3, 0.6]])
    mean = jnp.array([1.0, -1.0, 0.5])

    def log_joint(p):
        white = jax.scipy.linalg.solve_triangular(chol, p["x"] - mean, lower=True)
        return -0.5 * white @ white

    model = aj.Model(log_joint, {"x": aj.real((3,))})
    raw_diag = jnp.log(jnp.expm1(jnp.diagonal(chol)))  # softplus^{-1}
    return model, aj.FullRankParams(mean, raw_diag, chol)


def test_package_is_the_public_function():
    import advi_jax.gradient_variance as gv

    assert aj.gradient_variance is gv and callable(gv)
    assert aj.GradientStats is gv.GradientStats and aj.VarianceTrace is gv.VarianceTrace
    assert DEFAULT_ESTIMATORS == tuple(aj.ESTIMATORS)
    for name in ("plot_variance_bars", "plot_snr", "plot_variance_along_fit", "plot_univariate_study"):
        assert callable(getattr(aj.gradient_variance, name))


def test_too_few_samples_names_estimator_and_count(key):
    model, params = _gaussian_model()
    with pytest.raises(ValueError, match=r"'score_baseline' needs num_samples >= 2, got 1"):
        aj.gradient_variance(model, "fullrank", params, key, ("reparam", "score_baseline"), num_samples=1)


def test_stl_zero_variance_at_exact_optimum(key):
    model, params = _gaussian_model()
    stats = aj.gradient_variance(model, "fullrank", params, key, ("reparam", "stl"), num_draws=500, time_repeats=0)
    stl, reparam = stats["stl"], stats["reparam"]
    assert float(stl.variance_trace) < 1e-9
    assert float(jnp.max(jnp.abs(stl.mean_flat))) < 1e-5
    assert float(reparam.variance_trace) > 1.0
    assert reparam.loc_variance > 0.1 and reparam.scale_variance > 0.1
    assert set(reparam.group_variance) == {"loc", "scale"}
    np.testing.assert_allclose(reparam.loc_variance + reparam.scale_variance, float(reparam.variance_trace),
                               rtol=1e-5)
    lo, hi = reparam.variance_trace_interval
    assert 0 < lo < float(reparam.variance_trace) < hi


def test_default_call_estimators_unbiased(key):
    """The default call (all five estimators, default num_samples: 2 for score_baseline) works, and
    every estimator's mean gradient agrees with reparam's within Monte Carlo error."""
    model, exact = _gaussian_model()
    params = aj.FullRankParams(exact.loc + 0.3, exact.raw_diag - 0.4, exact.off_diag * 0.5)
    num_draws = 3000
    stats = aj.gradient_variance(model, "fullrank", params, key, num_draws=num_draws, time_repeats=0)
    assert list(stats) == list(aj.ESTIMATORS)
    ref = stats["reparam"]
    used = np.concatenate([np.ones(6, bool), np.tril(np.ones((3, 3)), -1).astype(bool).ravel()])
    for name, s in stats.items():
        se = np.sqrt((np.asarray(s.variance) + np.asarray(ref.variance)) / num_draws)
        diff = np.abs(np.asarray(s.mean_flat) - np.asarray(ref.mean_flat))[used]
        assert np.all(diff < 5 * se[used] + 1e-5), (name, diff, se[used])


def test_tracking_stl_falls_toward_zero(key):
    model, _ = _gaussian_model()
    trace = aj.track_gradient_variance(model, "fullrank", key, 1500, every=300, estimators=("stl", "reparam"),
                                       num_draws=100, fit_estimator="stl", learning_rate=0.05)
    stl, reparam = np.asarray(trace.variance_trace["stl"]), np.asarray(trace.variance_trace["reparam"])
    assert trace.steps.tolist() == [0, 300, 600, 900, 1200, 1500]
    assert trace.elbo.shape == (1500,)
    assert stl[-1] < 1e-3 * stl[0]
    assert stl[-1] < 1e-3 * reparam[-1]
    assert reparam[-1] > 1.0
    lo, hi = np.asarray(trace.variance_trace_interval["reparam"])
    assert lo.shape == (6,) and np.all(lo <= reparam) and np.all(reparam <= hi) and np.all(lo > 0)


def test_score_variance_much_larger_on_logistic(key):
    from advi_jax.data import load_dataset
    from advi_jax.models import logistic_regression

    x, y, _ = load_dataset("breast_cancer")
    model = logistic_regression(x, y)
    result = aj.fit(model, key=key, family="meanfield", num_steps=300, progress=False, diagnostics=False)
    stats = aj.gradient_variance(model, "meanfield", result.params, key, ("reparam", "score"), num_draws=200,
                                 time_repeats=3)
    # the factor's lower limit: score's lower limit over reparam's upper limit
    factor_lower = stats["score"].variance_trace_interval[0] / stats["reparam"].variance_trace_interval[1]
    print(f"score/reparam variance factor >= {factor_lower:.1f}")
    assert factor_lower > 20.0
    for s in stats.values():
        assert s.seconds_per_gradient > 0 and np.isfinite(s.efficiency)


def test_argument_checks(key):
    model, params = _gaussian_model()
    with pytest.raises(ValueError, match="choose from"):
        aj.gradient_variance(model, "fullrank", params, key, ("reparam", "nope"))
    with pytest.raises(ValueError, match="num_draws"):
        aj.gradient_variance(model, "fullrank", params, key, ("reparam",), num_draws=1)
    with pytest.raises(ValueError, match="do not match family"):
        aj.gradient_variance(model, "meanfield", params, key, ("reparam",))
    with pytest.raises(TypeError, match="PRNG key"):
        aj.gradient_variance(model, "fullrank", params, 0, ("reparam",))
    with pytest.raises(ValueError, match="every"):
        aj.track_gradient_variance(model, "fullrank", key, 10, every=20)
    with pytest.raises(ValueError, match="fit_num_samples >= 2"):
        aj.track_gradient_variance(model, "fullrank", key, 10, fit_estimator="score_baseline", fit_num_samples=1)
