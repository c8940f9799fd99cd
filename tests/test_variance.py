"""Tests of the gradient-variance instruments (advi_jax.variance, advi_jax.variance_1d, the CLI)."""

import csv
import importlib.util
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import advi_jax as aj
from advi_jax import variance_1d
from advi_jax.variance import gradient_stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _gaussian_model():
    """A correlated 3-D Gaussian target N(mean, A A^T) and its exact full-rank parameters."""
    chol = jnp.array([[1.0, 0.0, 0.0], [0.5, 0.8, 0.0], [0.2, -0.3, 0.6]])
    mean = jnp.array([1.0, -1.0, 0.5])
    precision = jnp.linalg.inv(chol @ chol.T)

    def log_joint(p):
        d = p["x"] - mean
        return -0.5 * d @ precision @ d

    model = aj.Model(log_joint, {"x": aj.real((3,))})
    raw_diag = jnp.log(jnp.expm1(jnp.diagonal(chol)))  # softplus^{-1}
    return model, aj.FullRankParams(mean, raw_diag, chol)


def _logistic_model():
    """Logistic regression: the bundled breast-cancer data when present, else a synthetic 569 x 30 set."""
    try:
        from advi_jax.data import load_dataset
        from advi_jax.models import logistic_regression
    except ImportError:
        from advi_jax.cli.variance import _own_logistic

        rng = np.random.default_rng(0)
        x = rng.normal(size=(569, 30)) @ (0.3 * rng.normal(size=(30, 30)) + np.eye(30))
        y = (x @ rng.normal(size=30) + rng.normal(size=569) > 0).astype(np.float64)
        return _own_logistic(x, y), "synthetic"
    x, y, _ = load_dataset("breast_cancer")
    return logistic_regression(x, y), "breast_cancer"


# ----------------------------------------------------------------------------------------------


def test_stl_zero_variance_at_exact_optimum(key):
    model, params = _gaussian_model()
    stats = aj.gradient_variance(model, "fullrank", params, key, ("reparam", "stl"), num_draws=500,
                                 time_repeats=0)
    stl, reparam = stats["stl"], stats["reparam"]
    print(f"variance trace at the optimum: stl {float(stl.variance_trace):.3g}, "
          f"reparam {float(reparam.variance_trace):.3g}")
    assert float(stl.variance_trace) < 1e-9
    assert float(jnp.max(jnp.abs(stl.mean_flat))) < 1e-5
    assert float(reparam.variance_trace) > 1.0
    assert reparam.loc_variance > 0.1 and reparam.scale_variance > 0.1
    assert set(reparam.group_variance) == {"loc", "scale"}
    np.testing.assert_allclose(reparam.loc_variance + reparam.scale_variance, float(reparam.variance_trace),
                               rtol=1e-5)


@pytest.mark.parametrize("function", variance_1d.FUNCTIONS)
def test_univariate_study_matches_exact_variance(function, key):
    """MC variance of each estimator vs quadrature, tolerance from the exact sd of a sample variance."""
    num_draws = 20_000
    ks = np.array({"square": [-2.0, 0.5, 2.5], "exp": [0.2, 1.0, 2.5], "cos": [0.5, 1.5, 4.0]}[function])
    params = {"mu": jnp.ones(3), "sigma": jnp.ones(3)}
    for i, estimator in enumerate(variance_1d.ESTIMATORS_1D):
        stats = gradient_stats(variance_1d.surrogate(estimator, function, ks), params,
                               jax.random.fold_in(key, i), num_draws=num_draws, time_repeats=0)
        for j, k in enumerate(ks):
            exact = variance_1d.exact_moments(estimator, function, float(k))
            measured = np.array([stats.variance[j], stats.variance[3 + j]])
            sd = variance_1d.sample_variance_sd(exact.variance, exact.central_fourth, num_draws)
            # 4.5 sd: 54 comparisons in this test family, each a near-Gaussian sample variance.
            assert np.all(np.abs(measured - exact.variance) < 4.5 * sd), (estimator, k, measured, exact.variance, sd)
            mean = np.array([stats.mean_flat[j], stats.mean_flat[3 + j]])
            assert np.all(np.abs(mean - exact.mean) < 4.5 * np.sqrt(exact.variance / num_draws))


def test_exact_moments_closed_form():
    # f = (x - k)^2, pathwise: g_mu = 2(x - k), g_sigma = 2(x - k) eps.
    mu, sigma, k = 0.3, 1.7, -1.2
    m = variance_1d.exact_moments("pathwise", "square", k, mu, sigma)
    np.testing.assert_allclose(m.mean, [2 * (mu - k), 2 * sigma], rtol=1e-10)
    np.testing.assert_allclose(m.variance, [4 * sigma**2, 4 * (mu - k) ** 2 + 8 * sigma**2], rtol=1e-10)
    # score function for f = cos(k x): E[g_mu] = d/dmu exp(-k^2 s^2 / 2) cos(k mu).
    m = variance_1d.exact_moments("score", "cos", 2.0, 1.0, 1.0)
    np.testing.assert_allclose(m.mean[0], -2.0 * np.exp(-2.0) * np.sin(2.0), rtol=1e-9)


def test_estimators_unbiased(key):
    """Every estimator's mean gradient agrees with reparam's within Monte Carlo error."""
    model, exact = _gaussian_model()
    params = aj.FullRankParams(exact.loc + 0.3, exact.raw_diag - 0.4, exact.off_diag * 0.5)
    num_draws = 4000
    stats = aj.gradient_variance(model, "fullrank", params, key, num_draws=num_draws, num_samples=2,
                                 time_repeats=0)
    ref = stats["reparam"]
    mask = np.tril(np.ones((3, 3)), -1).astype(bool).ravel()  # off_diag's used entries
    used = np.concatenate([np.ones(6, bool), mask])
    for name, s in stats.items():
        se = np.sqrt((np.asarray(s.variance) + np.asarray(ref.variance)) / num_draws)
        diff = np.abs(np.asarray(s.mean_flat) - np.asarray(ref.mean_flat))[used]
        assert np.all(diff < 5 * se[used] + 1e-5), (name, diff, se[used])


def test_score_variance_much_larger_on_logistic(key):
    model, source = _logistic_model()
    result = aj.fit(model, key=key, num_steps=500, progress=False)
    stats = aj.gradient_variance(model, "meanfield", result.params, key, ("reparam", "score"), num_draws=300,
                                 time_repeats=3)
    factor = float(stats["score"].variance_trace / stats["reparam"].variance_trace)
    print(f"logistic ({source}): score/reparam variance factor = {factor:.1f}; median SNR "
          f"reparam {stats['reparam'].median_snr:.3g}, score {stats['score'].median_snr:.3g}")
    assert factor > 20.0
    for s in stats.values():
        assert s.seconds_per_gradient > 0 and np.isfinite(s.efficiency)


def test_tracking_stl_falls_toward_zero(key):
    model, _ = _gaussian_model()
    trace = aj.track_gradient_variance(model, "fullrank", key, 1500, every=300, estimators=("stl", "reparam"),
                                       num_draws=100, fit_estimator="stl", learning_rate=0.05)
    stl, reparam = np.asarray(trace.variance_trace["stl"]), np.asarray(trace.variance_trace["reparam"])
    print("steps", np.asarray(trace.steps), "\nstl", stl, "\nreparam", reparam)
    assert trace.steps.tolist() == [0, 300, 600, 900, 1200, 1500]
    assert trace.elbo.shape == (1500,)
    assert stl[-1] < 1e-3 * stl[0]
    assert stl[-1] < 1e-3 * reparam[-1]
    assert reparam[-1] > 1.0


def test_argument_checks(key):
    model, params = _gaussian_model()
    with pytest.raises(ValueError, match="choose from"):
        aj.gradient_variance(model, "fullrank", params, key, ("reparam", "nope"))
    with pytest.raises(ValueError, match="num_draws"):
        aj.gradient_variance(model, "fullrank", params, key, ("reparam",), num_draws=1)
    with pytest.raises(ValueError, match="num_samples >= 2"):
        aj.gradient_variance(model, "fullrank", params, key, ("score_baseline",), num_samples=1)
    with pytest.raises(ValueError, match="do not match family"):
        aj.gradient_variance(model, "meanfield", params, key, ("reparam",))
    with pytest.raises(TypeError, match="PRNG key"):
        aj.gradient_variance(model, "fullrank", params, 0, ("reparam",))
    with pytest.raises(ValueError, match="scalar"):
        gradient_stats(lambda p, k: p * 2.0, jnp.ones(3), key)


def test_chunking_does_not_change_result(key):
    model, params = _gaussian_model()
    a = aj.gradient_variance(model, "fullrank", params, key, ("reparam",), num_draws=37, time_repeats=0)
    b = aj.gradient_variance(model, "fullrank", params, key, ("reparam",), num_draws=37, time_repeats=0,
                             chunk_size=5)
    np.testing.assert_allclose(a["reparam"].variance, b["reparam"].variance, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(a["reparam"].mean_flat, b["reparam"].mean_flat, rtol=1e-4, atol=1e-6)


def _run_cli(args, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "advi_jax", "variance", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def _check_outputs(out):
    with open(out / "variance_table.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["estimator"] for r in rows] == list(aj.variance.DEFAULT_ESTIMATORS)
    for name in ("variance_by_estimator.png", "variance_along_fit.png", "variance.json"):
        assert (out / name).stat().st_size > 1000


def test_cli_runs_and_writes_outputs(tmp_path):
    if importlib.util.find_spec("advi_jax.data") is not None:
        args = []
    else:  # the bundled data land with advi_jax.data; meanwhile a small CSV of the same kind
        rng = np.random.default_rng(1)
        x = rng.normal(size=(200, 5))
        y = (x[:, 0] - x[:, 1] + rng.normal(size=200) > 0).astype(int)
        with open(tmp_path / "d.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow([f"x{i}" for i in range(5)] + ["y"])
            writer.writerows([list(r) + [t] for r, t in zip(x, y)])
        args = ["--data", "d.csv", "--target", "y"]
    proc = _run_cli(args + ["--draws", "100", "--steps", "200", "--out", "tmp"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "score_baseline" in proc.stdout and "efficiency" in proc.stdout
    _check_outputs(tmp_path / "tmp")


def test_cli_bad_input(tmp_path):
    proc = _run_cli(["--estimators", "reparam,bogus", "--out", "tmp"], tmp_path)
    assert proc.returncode == 2
    assert "bogus" in proc.stderr and "Traceback" not in proc.stderr


def test_amortized_encoder_gradients(key):
    from advi_jax import variance_amortized as va

    decoder, batch = va.linear_gaussian_example(key, batch_size=16)
    optimum = va.optimal_encoder(decoder)
    stats = {e: gradient_stats(va.amortized_surrogate(e, decoder, batch, 4), optimum, key, num_draws=200,
                               time_repeats=0) for e in va.AMORTIZED_ESTIMATORS}
    assert float(stats["dreg"].variance_trace) < 1e-9 and float(stats["stl"].variance_trace) < 1e-9
    assert float(stats["reparam"].variance_trace) > 1e-2
    assert float(stats["score"].variance_trace) > 100 * float(stats["reparam"].variance_trace)
