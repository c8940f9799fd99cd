"""Each public plot of advi_jax.gradient_variance writes a PNG (matplotlib Agg)."""

import jax
import jax.numpy as jnp
import pytest

import advi_jax as aj
from advi_jax.gradient_variance import (
    format_table,
    plot_snr,
    plot_univariate_study,
    plot_variance_along_fit,
    plot_variance_bars,
    univariate,
    variance_table,
)


@pytest.fixture(scope="module")
def measured():
    model = aj.Model(lambda p: -0.5 * jnp.sum(p["x"] ** 2), {"x": aj.real((3,))})
    params = aj.FullRankGaussian().init(jax.random.key(0), 3, scale=0.5)
    stats = aj.gradient_variance(model, "fullrank", params, jax.random.key(1), ("reparam", "stl"), num_draws=50,
                                 time_repeats=0)
    trace = aj.track_gradient_variance(model, "fullrank", jax.random.key(2), 40, every=10, estimators=("stl",),
                                       num_draws=10)
    return stats, trace


def _is_png(path):
    with open(path, "rb") as handle:
        return handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_variance_bars(measured, tmp_path):
    path = plot_variance_bars(measured[0], tmp_path / "bars.png", "t")
    assert _is_png(path)


def test_plot_snr(measured, tmp_path):
    assert _is_png(plot_snr(measured[0], tmp_path / "snr.png"))


def test_plot_variance_along_fit(measured, tmp_path):
    assert _is_png(plot_variance_along_fit(measured[1], tmp_path / "along.png"))


def test_plot_univariate_study(tmp_path):
    results = {"cos": univariate.study("cos", jax.random.key(0), [0.5, 1.0, 2.0], num_draws=100)}
    assert _is_png(plot_univariate_study(results, tmp_path / "study.png"))


def test_table_and_bad_inputs(measured, tmp_path):
    rows = variance_table(measured[0])
    assert [r["estimator"] for r in rows] == ["reparam", "stl"]
    assert all(r["variance_trace_lower"] <= r["variance_trace"] <= r["variance_trace_upper"] for r in rows)
    assert "[" in format_table(rows)
    with pytest.raises(TypeError, match="GradientStats"):
        plot_variance_bars({"a": 1}, tmp_path / "x.png")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plot_snr(measured[0], tmp_path / "missing" / "x.png")
    with pytest.raises(TypeError, match="VarianceTrace"):
        plot_variance_along_fit(measured[0], tmp_path / "x.png")
