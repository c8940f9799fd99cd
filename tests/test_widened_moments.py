"""The moment check from a widened proposal (issue 15, "never silently"; `advi_jax.widened_moments`).

The target: x0 ~ Student-t with 6 degrees of freedom (sd sqrt(6/4) = 1.225), x1 ~ N(0, 1); q = N(0, I)
matches x0's core, so q's sd there is 0.82 of p's (log sd ratio 0.203, more than the 20% of the
calibration's criterion), while q's own draws rarely reach the t's tails: PSIS from them reads about
0.14 (under the 0.15 tolerance in most draw sets) with k-hat 0.4-0.6. Draws from a proposal three
times wider than q in one coordinate at a time read 0.19-0.23.
"""

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import advi_jax as aj
from advi_jax import psis_moments as pm
from advi_jax import widened_moments as wm
from advi_jax.families import MeanFieldParams, get_family
from advi_jax.fit_diagnostics import diagnose_and_widen, diagnose_with_ratios, verdict
from conftest import fit_warnings

NU = 6.0
TRUE_LOG_SD = 0.5 * math.log(NU / (NU - 2.0))  # 0.203


def _log_density(p, data):
    nu = data[0]
    x = p["x"]
    return -0.5 * (nu + 1.0) * jnp.log1p(x[0] ** 2 / nu) - 0.5 * x[1] ** 2


def _model(nu=NU):
    return aj.Model(_log_density, {"x": aj.real((2,))}, data=jnp.asarray([nu], jnp.float32))


def _q():
    family = get_family("meanfield")
    return family, MeanFieldParams(jnp.zeros(2, jnp.float32), jnp.full(2, math.log(math.expm1(1.0)), jnp.float32))


def _gauss_logpdf(z, mean, cov):
    r = z - mean
    sign, logdet = np.linalg.slogdet(cov)
    return -0.5 * np.sum(r * np.linalg.solve(cov, r.T).T, axis=1) - 0.5 * logdet - 0.5 * len(mean) * math.log(2 * math.pi)


def test_closed_form_component_log_ratio_equals_the_gaussian_densities():
    rng = np.random.default_rng(0)
    k = 6
    a = rng.standard_normal((k, k))
    cov = a @ a.T + 0.5 * np.eye(k)
    chol = np.linalg.cholesky(cov)
    mean = rng.standard_normal(k)
    z = mean + 2.0 * rng.standard_normal((50, k))
    dirs = np.array([1, 4, 5])
    got = wm.component_log_ratios(z - mean, chol, dirs, c=3.0)
    for i, j in enumerate(dirs):
        wide = cov.copy()
        wide[j, j] *= 9.0  # coordinate j's variance x c^2, the rest of Sigma kept
        want = _gauss_logpdf(z, mean, wide) - _gauss_logpdf(z, mean, cov)
        np.testing.assert_allclose(got[:, i], want, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(wm.log_q_centred(z - mean, chol), _gauss_logpdf(z, mean, cov), rtol=1e-12)
    # the mixture's density: alpha q + (1 - alpha) / J sum_j q_j
    mix = np.log(0.5 * np.exp(_gauss_logpdf(z, mean, cov)) + 0.5 / 3 * sum(
        np.exp(_gauss_logpdf(z, mean, cov + np.diag(np.where(np.arange(k) == j, 8.0 * cov[j, j], 0.0)))) for j in dirs))
    np.testing.assert_allclose(wm.log_mix_minus_log_q(z - mean, chol, dirs, 3.0, 0.5) + _gauss_logpdf(z, mean, cov),
                               mix, rtol=1e-10)


def test_mixture_draws_have_the_widened_variances():
    rng = np.random.default_rng(1)
    chol = np.array([[1.0, 0.0], [0.6, 0.8]])
    z = wm.sample(rng, np.zeros(2), chol, np.array([1]), 200_000, c=3.0, alpha=0.5)
    n = wm.counts(200_000, 1, 0.5)
    assert n.tolist() == [100_000, 100_000]
    assert abs(np.var(z[:100_000, 1]) - 1.0) < 0.02  # q's own part
    assert abs(np.var(z[100_000:, 1]) - 9.0) < 0.15  # the widened component: 9 Sigma_11
    assert abs(np.var(z[100_000:, 0]) - 1.0) < 0.02  # the other coordinate's marginal unchanged


def test_exact_q_reads_zero():
    # p = q: the weights p / mix and q / mix are equal (up to float32 log p), so both discrepancies are 0
    model = aj.Model(lambda p: -0.5 * jnp.sum(p["x"] ** 2), {"x": aj.real((3,))})
    family = get_family("meanfield")
    params = MeanFieldParams(jnp.zeros(3, jnp.float32), jnp.full(3, math.log(math.expm1(1.0)), jnp.float32))
    m = wm.widened_check(model, family, params, jax.random.key(0), np.array([0.1, 0.0, 0.2]), num_draws=1024,
                         directions=2)
    assert m.source == "widened" and m.directions == (0, 2) and not m.any_flagged
    assert m.widened_draws == 2048
    assert abs(m.worst_log_sd) < 1e-3 and abs(m.worst_mean) < 1e-3


@pytest.mark.parametrize("seed", range(6))
def test_accurate_q_is_quiet(seed):
    # p a t with 60 degrees of freedom (sd 1.7% over q's): the widened check, run whatever the trigger
    # says, flags nothing and reads the truth
    model = _model(60.0)
    family, params = _q()
    m = wm.widened_check(model, family, params, jax.random.key(seed), np.array([1.0, 0.5]))
    assert not m.any_flagged, m
    assert abs(m.worst_log_sd - 0.5 * math.log(60.0 / 58.0)) < 0.03 and abs(m.worst_mean) < 0.05


def test_narrow_q_is_flagged_where_the_plain_check_is_silent():
    model = _model()
    family, params = _q()
    silent_before = 0
    for seed in range(6):
        key = jax.random.key(seed)
        plain, _ = diagnose_with_ratios(model, family, params, key, 4096)
        d, _, _ = diagnose_and_widen(model, family, params, key, 4096, 0)
        m = d.moments
        assert d.khat < 0.7 or plain.moments.any_flagged or m.any_flagged  # warned, whichever way
        if plain.moments.any_flagged or d.khat >= 0.7:
            continue
        silent_before += 1  # the start of issue 15's widened check: this fit was silent
        assert m.source == "widened" and m.any_flagged and m.flagged == (0,), (seed, m)
        assert m.directions == (0, 1) and m.widened_draws == 2 * 4096  # K = 2: both coordinates, 4,096 each
        assert 0.15 <= m.worst_log_sd <= 0.27, m  # the truth 0.203; the plain reading was under 0.15
        assert plain.moments.worst_log_sd < 0.15
        text = verdict(d)
        assert text.startswith("poor") and "widened importance estimate" in text, text
        assert re.search(r"q's sd is x0\.(7[5-9]|8[0-6]) of the widened", text), text
        said = fit_warnings(d, model, text)
        assert len(said) == 1 and "x[0]" in said[0] and "widened importance estimate" in said[0], said
    assert silent_before >= 3, silent_before


def test_widened_draws_are_counted_in_num_logp_evals():
    # The same fit with and without diagnostics: the log-density evaluations differ by exactly a
    # k-hat re-estimate's draws and the widened check's (the first sample's are not counted). Two
    # fits whose readings are grey (k-hat 0.67 and 0.69 from 4,096 draws, under the threshold after
    # the re-estimate): the widened check runs in at least one.
    ran = 0
    for nu, family in ((6.0, "auto"), (20.0, "meanfield")):
        kw = dict(key=jax.random.key(0), family=family, progress=False, warn=False)
        with_diag = aj.fit(_model(nu), **kw)
        without = aj.fit(_model(nu), diagnostics=False, **kw)
        d = with_diag.report.diagnostics
        extra = 0 if with_diag.report.first_diagnostics is None else d.num_draws
        first = (with_diag.report.first_diagnostics or d).num_draws  # each component: the first sample's size
        assert d.moments.widened_draws in (0, len(d.moments.directions) * first)
        ran += d.moments.widened_draws > 0
        assert with_diag.num_grad_evals == without.num_grad_evals
        assert with_diag.report.num_logp_evals - without.report.num_logp_evals == extra + d.moments.widened_draws
    assert ran >= 1


def test_no_widened_check_where_nothing_is_grey():
    # a Gaussian target q matches exactly: k-hat and every plain reading are far from the trigger,
    # so nothing more is drawn (and nothing compiles)
    model = aj.Model(lambda p: -0.5 * jnp.sum(p["x"] ** 2), {"x": aj.real((2,))})
    family, params = _q()
    d, _, _ = diagnose_and_widen(model, family, params, jax.random.key(0), 4096, 0)
    assert d.moments.source == "psis" and d.moments.widened_draws == 0 and not d.moments.any_flagged
    assert isinstance(d.moments, pm.Moments)


def test_summary_says_its_psis_columns_miss_what_the_widened_check_found():
    model = _model()
    family, params = _q()
    fitted = aj.fit(model, key=jax.random.key(0), family="meanfield", progress=False, warn=False)
    for seed in range(6):  # the first draw set where the widened check is what flags
        d, _, _ = diagnose_and_widen(model, family, params, jax.random.key(seed), 4096, 0)
        if d.moments.source == "widened" and d.moments.any_flagged:
            break
    else:
        raise AssertionError("the widened check flagged at no seed")
    report = dataclasses.replace(fitted.report, diagnostics=d, diagnostic_sample=None, first_diagnostics=None)
    text = dataclasses.replace(fitted, family=family, params=params, report=report).summary(jax.random.key(1))
    assert "psis_mean" in text and "the widened moment check found q too narrow" in text, text
    plain = dataclasses.replace(fitted, family=family, params=params,
                                report=dataclasses.replace(report, diagnostics=diagnose_with_ratios(
                                    model, family, params, jax.random.key(0), 4096)[0])).summary(jax.random.key(1))
    assert "widened moment check" not in plain
