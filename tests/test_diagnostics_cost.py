"""The cost of a fit's diagnostics: the automatic draw budget, one compilation per shape, PSIS on
the host agreeing with the compiled PSIS, and the summary reusing the diagnostic draws."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import advi_jax as aj
from advi_jax import diagnostics as D
from advi_jax import importance
from advi_jax import result as R


def test_budget_rule_counts():
    big, small = 11_000_000, 17_700  # N = 1e6 x D = 10 entries; the breast-cancer table
    # a long stochastic fit: a fifth of 2 x 10,000 gradient evaluations, capped at 4096
    assert R.diagnostic_draw_budget(0, 10_000, big) == 4096
    # a few-pass fit on large data: the floor
    assert R.diagnostic_draw_budget(0, 20, big) == R.DIAGNOSTIC_DRAWS_MIN == 256
    # the same few-pass fit on small data: draws cost nothing next to compiling
    assert R.diagnostic_draw_budget(0, 20, small) == 4096
    # 0.2 x (3000 + 2 x 1000) = 1000 -> 1024 (the nearest power of two); 0.2 x 3000 = 600 -> 512
    assert R.diagnostic_draw_budget(3000, 1000, big) == 1024
    assert R.diagnostic_draw_budget(3000, 0, big) == 512
    # data closed over (no entries seen): small data
    assert R.diagnostic_draw_budget(0, 1, 0) == 4096
    # W / V = 2^27 / 110,000 = 1220 -> 1024
    assert R.diagnostic_draw_budget(0, 20, 110_000) == 1024
    for evals in (1, 10, 300, 2_000, 7_000, 50_000):
        s = R.diagnostic_draw_budget(0, evals, big)
        assert s & (s - 1) == 0 and 256 <= s <= 4096
        assert s <= max(256, 2 ** 0.5 * 0.2 * 2 * evals)  # a fifth of the fit (to sqrt 2) beyond the floor


@pytest.mark.parametrize("kind", ["plain", "nan", "neginf", "constant", "heavy"])
def test_host_psis_matches_compiled_psis(kind):
    rng = np.random.default_rng(1)
    r = (rng.standard_t(3, size=2000) * 0.7).astype(np.float32)
    if kind == "nan":
        r[:5] = np.nan
    elif kind == "neginf":
        r[7] = -np.inf
    elif kind == "constant":
        r[:] = 0.25
    elif kind == "heavy":
        r = (rng.standard_cauchy(2000) * 3).astype(np.float32)
    host = D._diagnostics_core(jnp.asarray(r))  # concrete: NumPy on the host
    compiled = jax.jit(D._diagnostics_core)(jnp.asarray(r))  # traced: jax.numpy
    for name, a, b in zip(host._fields, host, compiled):
        a, b = float(a), float(b)
        assert (np.isnan(a) and np.isnan(b)) or a == b or abs(a - b) <= 2e-4 * (1 + abs(b)), (name, a, b)
    lw_host = np.asarray(D.psis(r).log_weights)
    lw_jit = np.asarray(jax.jit(D._psis_core, static_argnums=1)(jnp.asarray(r), True).log_weights)
    np.testing.assert_allclose(np.nan_to_num(lw_host, neginf=-1e30), np.nan_to_num(lw_jit, neginf=-1e30),
                               rtol=2e-4, atol=2e-4)
    assert lw_host.dtype == np.float32


def _glm(n, d, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (rng.random(n) < 1 / (1 + np.exp(-x @ np.linspace(-1, 1, d)))).astype(np.float32)
    return aj.models.logistic_regression(x, y)


def test_fit_takes_the_budget_reports_seconds_and_compiles_once():
    fit = dict(family="fullrank", method="glm_exact", progress=False, warn=False)
    first = aj.fit(_glm(100_000, 4, 0), key=jax.random.key(0), **fit)
    # 100,000 x 5 entries, a few passes: the floor of 256 draws
    assert first.num_diagnostic_draws == 256 and first.num_grad_evals < 100
    assert first.report.diagnostics_seconds > 0 and np.isfinite(first.khat)
    assert f"diagnostics {first.report.diagnostics_seconds:.2f})" in first.summary()
    cache = importance.draws_and_log_ratios._cache_size()
    traces = aj.run.num_traces()
    second = aj.fit(_glm(100_000, 4, 1), key=jax.random.key(1), **fit)  # new data, same shapes
    assert importance.draws_and_log_ratios._cache_size() == cache and aj.run.num_traces() == traces
    assert second.num_diagnostic_draws == 256
    asked = aj.fit(_glm(100_000, 4, 1), key=jax.random.key(1), num_diagnostic_draws=1000, **fit)
    assert asked.num_diagnostic_draws == 1000
    small = aj.fit(_glm(500, 4, 2), key=jax.random.key(2), **fit)
    assert small.num_diagnostic_draws == 4096
    with pytest.raises(ValueError, match="num_diagnostic_draws"):
        aj.fit(_glm(500, 4, 2), key=jax.random.key(2), num_diagnostic_draws="many", **fit)


def test_summary_reuses_the_diagnostic_draws():
    import dataclasses

    cov = jnp.array([[1.0, 0.8], [0.8, 1.0]])
    prec = jnp.linalg.inv(cov)
    model = aj.Model(lambda p: -0.5 * p["x"] @ prec @ p["x"], {"x": aj.real((2,))})
    res = aj.fit(model, key=jax.random.key(3), num_steps=2000, progress=False, warn=False)
    key, ratios = res.report.diagnostic_sample
    assert ratios.shape == (res.num_diagnostic_draws,) == (4096,) and np.isfinite(ratios).all()
    # the stored ratios are those of the stored key's draws: the diagnostics recomputed from them agree
    again = R.diagnose(res.model, res.family, res.params, key, res.num_diagnostic_draws)
    assert again.khat == pytest.approx(res.khat, abs=1e-5)
    # a k-hat in the PSIS range shows the PSIS columns: from the stored draws (key=None) they equal
    # those of fresh draws made with the diagnostics' key
    report = dataclasses.replace(res.report, diagnostics=res.report.diagnostics._replace(khat=0.55))
    borderline = aj.Result(res.model, res.family, res.params, report)
    reused = borderline.summary_rows()
    fresh = borderline.summary_rows(key, res.num_diagnostic_draws, reuse_diagnostic_draws=False)
    other = borderline.summary_rows(jax.random.key(99), res.num_diagnostic_draws)
    assert "psis_mean" in reused[0] and len(reused) == 2
    for a, b, c in zip(reused, fresh, other):
        assert a["psis_mean"] == pytest.approx(b["psis_mean"], abs=1e-4)
        assert a["psis_sd"] == pytest.approx(b["psis_sd"], abs=1e-4)
        assert a["psis_mean"] != c["psis_mean"]  # other draws: another Monte Carlo estimate
