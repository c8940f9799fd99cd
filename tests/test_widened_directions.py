"""The widened moment check along q's regression on a coordinate (issue 15, "never silently";
`advi_jax.widened_moments`, form "regression").

The coordinate form q_j = N(m, Sigma + (c^2 - 1) Sigma_jj e_j e_j^T) keeps the other coordinates' joint
law, so where q's coordinates are strongly correlated it moves its draws off q's ridge, where p has
nothing. The regression form q_j = N(m, Sigma + (c^2 - 1) Sigma e_j e_j^T Sigma / Sigma_jj) widens
coordinate j's marginal by c and keeps q(z_-j | z_j): the other coordinates follow it along q's own
regression, so the draws reach the ridge's tails.

The target here: a Student-t(6) along the ridge u = (x0 + x1) / sqrt 2 and a narrow Gaussian across
it, q the Gaussian that matches its core (correlation 0.95). q's sd of x0 (and x1) is then x0.82 of
p's (log sd ratio 0.199): the Student-t's tails are along the ridge.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import advi_jax as aj
from advi_jax import widened_moments as wm
from advi_jax.families import FullRankParams, LowRankParams, MeanFieldParams, get_family
from advi_jax.fit_diagnostics import diagnose_and_widen, diagnose_with_ratios, warns_by_khat

NU = 6.0
RHO = 0.95
SU, SV = math.sqrt(1.0 + RHO), math.sqrt(1.0 - RHO)  # q's sds along and across the ridge
TRUE_LOG_SD = 0.5 * math.log((SU ** 2 * NU / (NU - 2.0) + SV ** 2) / 2.0)  # x0's under p against q's: 0.199


def _gauss_logpdf(z, mean, cov):
    r = z - mean
    _, logdet = np.linalg.slogdet(cov)
    quad = np.sum(r * np.linalg.solve(cov, r.T).T, axis=1)
    return -0.5 * quad - 0.5 * logdet - 0.5 * len(mean) * math.log(2 * math.pi)


def _regression_cov(cov, j, c):
    return cov + (c * c - 1.0) * np.outer(cov[:, j], cov[:, j]) / cov[j, j]


def _spd(rng, k):
    a = rng.standard_normal((k, k))
    return a @ a.T + 0.5 * np.eye(k)


def test_regression_log_ratio_equals_the_gaussian_densities():
    rng = np.random.default_rng(0)
    k = 6
    cov = _spd(rng, k)
    chol = np.linalg.cholesky(cov)
    mean = rng.standard_normal(k)
    z = mean + 2.0 * rng.standard_normal((50, k))
    dirs = np.array([1, 4, 5])
    for c in (2.0, 3.0):
        got = wm.component_log_ratios(z - mean, chol, dirs, c=c, form="regression")
        for i, j in enumerate(dirs):
            want = _gauss_logpdf(z, mean, _regression_cov(cov, j, c)) - _gauss_logpdf(z, mean, cov)
            np.testing.assert_allclose(got[:, i], want, rtol=1e-10, atol=1e-10)
    # a mixture of both forms, alpha q + (1 - alpha) / 4 sum of the four components
    cdirs, forms = np.array([1, 4, 1, 4]), ["coordinate", "coordinate", "regression", "regression"]
    comps = [cov + np.diag(np.where(np.arange(k) == j, 8.0 * cov[j, j], 0.0)) for j in (1, 4)]
    comps += [_regression_cov(cov, j, 3.0) for j in (1, 4)]
    mix = np.log(0.3 * np.exp(_gauss_logpdf(z, mean, cov))
                 + 0.7 / 4 * sum(np.exp(_gauss_logpdf(z, mean, s)) for s in comps))
    np.testing.assert_allclose(wm.log_mix_minus_log_q(z - mean, chol, cdirs, 3.0, 0.3, forms)
                               + _gauss_logpdf(z, mean, cov), mix, rtol=1e-10)
    with pytest.raises(ValueError, match="form"):
        wm.component_log_ratios(z - mean, chol, dirs, form="whitened")


def test_regression_draws_have_the_widened_covariance():
    rng = np.random.default_rng(1)
    cov = _spd(np.random.default_rng(2), 3)
    chol = np.linalg.cholesky(cov)
    n = 400_000
    z = wm.sample(rng, np.zeros(3), chol, np.array([1]), n, c=3.0, alpha=0.0, form="regression")
    want = _regression_cov(cov, 1, 3.0)
    got = np.cov(z[n - wm.counts(n, 1, 0.0)[1]:].T)
    np.testing.assert_allclose(got, want, rtol=0.02, atol=0.02 * np.max(np.abs(want)))
    assert abs(got[1, 1] / cov[1, 1] - 9.0) < 0.15  # coordinate 1's variance x c^2, as the coordinate form


def test_widened_params_are_the_regression_gaussian_in_q_s_family():
    rng = np.random.default_rng(3)
    k = 4
    cov = _spd(rng, k)
    chol = np.linalg.cholesky(cov)
    family = get_family("fullrank")
    params = FullRankParams(jnp.asarray(rng.standard_normal(k), jnp.float32),
                            jnp.asarray(np.log(np.expm1(np.diag(chol))), jnp.float32), jnp.asarray(chol, jnp.float32))
    chol32 = np.asarray(family.scale_tril(params), np.float64)
    wide = wm.widened_params(family, params, chol32, 2, 3.0, "regression")
    got = np.asarray(family.scale_tril(wide), np.float64)
    np.testing.assert_allclose(got @ got.T, _regression_cov(chol32 @ chol32.T, 2, 3.0), rtol=1e-5, atol=1e-5)
    # mean-field: Sigma is diagonal, so the two forms are the same Gaussian
    mf = get_family("meanfield")
    mp = MeanFieldParams(jnp.zeros(k, jnp.float32), jnp.asarray(rng.standard_normal(k), jnp.float32))
    mchol = np.diag(np.logaddexp(0.0, np.asarray(mp.raw_scale, np.float64)))
    a, b = (wm.widened_params(mf, mp, mchol, 1, 3.0, f) for f in ("coordinate", "regression"))
    np.testing.assert_array_equal(np.asarray(a.raw_scale), np.asarray(b.raw_scale))
    assert np.asarray(a.raw_scale)[1] > np.asarray(mp.raw_scale)[1]
    # low-rank: the regression form is not in the family (its rank would grow); the check uses the coordinate form
    lr = get_family("lowrank")
    lp = LowRankParams(jnp.zeros(k, jnp.float32), jnp.zeros(k, jnp.float32), jnp.ones((k, 1), jnp.float32))
    assert wm.effective_form(lr, "regression") == "coordinate"
    assert wm.widened_params(lr, lp, np.eye(k), 0, 3.0, "regression") is None
    assert wm.widened_params(lr, lp, np.eye(k), 0, 3.0, "coordinate") is not None
    assert wm.effective_form(family, "regression") == "regression"


def _ridge_log_density(p, nu=NU):
    x = p["x"]
    u = (x[0] + x[1]) / (math.sqrt(2.0) * SU)
    v = (x[0] - x[1]) / (math.sqrt(2.0) * SV)
    return -0.5 * (nu + 1.0) * jnp.log1p(u * u / nu) - 0.5 * v * v


def _ridge():
    model = aj.Model(_ridge_log_density, {"x": aj.real((2,))})
    chol = np.linalg.cholesky(np.array([[1.0, RHO], [RHO, 1.0]]))
    family = get_family("fullrank")
    params = FullRankParams(jnp.zeros(2, jnp.float32), jnp.asarray(np.log(np.expm1(np.diag(chol))), jnp.float32),
                            jnp.asarray(chol, jnp.float32))
    return model, family, params


def test_narrow_along_a_correlated_direction_is_flagged_by_the_regression_form_only():
    # q is narrow along its own ridge (x0 and x1 correlated 0.95). Widening x0 alone (coordinate form)
    # moves the draws across the ridge, where p has nothing: it reads about half of the error, under the
    # tolerance. The regression form moves them along it and reads the truth, 0.199.
    model, family, params = _ridge()
    score = np.array([1.0, 0.5])
    coord_flags = reg_flags = 0
    seeds = range(8)
    for seed in seeds:
        key = jax.random.key(seed)
        coord = wm.widened_check(model, family, params, key, score, num_draws=4096, form="coordinate")
        reg = wm.widened_check(model, family, params, key, score, num_draws=4096, form="regression")
        coord_flags += coord.any_flagged
        reg_flags += reg.any_flagged
        assert reg.any_flagged and set(reg.flagged) <= {0, 1}, (seed, reg)
        assert abs(reg.worst_log_sd - TRUE_LOG_SD) < 0.03, (seed, reg.worst_log_sd)
        assert coord.worst_log_sd < TRUE_LOG_SD - 0.03, (seed, coord.worst_log_sd)
        assert reg.widened_draws == coord.widened_draws == 2 * 4096
    assert reg_flags == len(seeds) and coord_flags <= 3, (coord_flags, reg_flags)


def test_the_fit_s_diagnostics_run_the_library_s_form():
    # `diagnose_and_widen` (the fit's path) runs `widened_check` with `WIDEN_FORM` (the coordinate form:
    # the calibration's choice): at the reported sample's key its widened draws and p / mix's k-hat are
    # those of the coordinate form, not the regression form's, and on this ridge it stays silent where
    # the regression form flags (the limit the regression form is there for)
    assert wm.WIDEN_FORM == "coordinate"
    model, family, params = _ridge()
    ran = 0
    for seed in range(6):
        key = jax.random.key(seed)
        plain, _ = diagnose_with_ratios(model, family, params, key, 4096)
        d, sample, _ = diagnose_and_widen(model, family, params, key, 4096, 0)
        if plain.moments.any_flagged or warns_by_khat(plain):  # it warns already: nothing widened
            continue
        ran += 1
        rd = plain.moments.readings
        score = wm.scores(rd.unconstrained, rd.constrained, rd.tested, wm.dependence(model, 2))
        coord = wm.widened_check(model, family, params, sample[0], score, 4096, form="coordinate")
        reg = wm.widened_check(model, family, params, sample[0], score, 4096, form="regression")
        assert d.moments.widened_draws == 2 * 4096 and d.moments.mixture_khat == coord.mixture_khat, (seed, d.moments)
        assert reg.mixture_khat != coord.mixture_khat and reg.any_flagged and not coord.any_flagged
        assert not d.moments.any_flagged
    assert ran >= 3, ran


@pytest.mark.parametrize("seed", range(4))
def test_accurate_correlated_q_is_quiet(seed):
    # p a t with 60 degrees of freedom along the same ridge (x0's sd 1.7% over q's): the regression
    # form, run whatever the trigger says, flags nothing and reads the truth
    _, family, params = _ridge()
    model = aj.Model(_t60, {"x": aj.real((2,))})
    m = wm.widened_check(model, family, params, jax.random.key(seed), np.array([1.0, 0.5]), form="regression")
    truth = 0.5 * math.log((SU ** 2 * 60.0 / 58.0 + SV ** 2) / 2.0)
    assert not m.any_flagged, m
    assert abs(m.worst_log_sd - truth) < 0.02 and abs(m.worst_mean) < 0.05, m


def _t60(p):
    return _ridge_log_density(p, 60.0)
