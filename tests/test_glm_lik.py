"""Exact ELBO of the probit and negative-binomial ready GLMs (advi_jax.vi._glm_lik via glm_exact).

Checks: the exact ELBO equals a 1e6-draw Monte Carlo ELBO within its standard error (and a moved q
does not); the pass's gradient and curvature equal autodiff of the exact objective; the quadrature
derivatives equal autodiff and stay finite at extremes; the fit is stationary and beats a
stochastic fit on the exact objective; the fit matches NumPyro NUTS references on real data.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import advi_jax as aj
from advi_jax.families import FullRankParams, MeanFieldParams
from advi_jax.models import negbin_regression, probit_regression
from advi_jax.vi import _glm_lik as L
from advi_jax.vi import glm_exact as G
from advi_jax.vi._glm_lowrank import lowrank_likelihood
from _vi_runner import mc_elbo  # noqa: E402

REFS = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "references")


def _negbin(n=80, d=2, seed=0, phi=2.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    exposure = rng.uniform(0.5, 2.0, n)
    mu = exposure * np.exp(0.5 + x @ np.linspace(0.6, -0.4, d))
    return negbin_regression(x, rng.negative_binomial(phi, phi / (phi + mu)), exposure=exposure)


def _probit(n=80, d=2, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    return probit_regression(x, (x @ np.linspace(1.0, -0.5, d) + 0.2 + rng.normal(size=n) > 0) * 1.0)


def _params(family, k, seed, scale=0.2):
    rng = np.random.default_rng(seed)
    loc = jnp.asarray(rng.normal(size=k) * 0.4, jnp.float32)
    raw = jnp.asarray(np.log(np.expm1(scale * rng.uniform(0.5, 1.5, size=k))), jnp.float32)
    if family.name == "meanfield":
        return MeanFieldParams(loc, raw)
    return FullRankParams(loc, raw, jnp.asarray(np.tril(rng.normal(size=(k, k)) * 0.1, -1), jnp.float32))


@pytest.mark.parametrize("kind,fam", [("negbin", "fullrank"), ("probit", "fullrank")])
def test_exact_elbo_equals_monte_carlo(kind, fam, key):
    model = _negbin() if kind == "negbin" else _probit()
    family = aj.families.get_family(fam)
    params = _params(family, model.dim, 3, scale=0.15 if kind == "negbin" else 0.4)
    exact = float(G.exact_elbo(model, family, params))
    mean, se = mc_elbo(model, family, params, key)
    # float32 log densities: allow their rounding (1e-6 relative) on top of 4 standard errors
    assert abs(exact - mean) < 4 * se + 1e-6 * abs(mean), (exact, mean, se)
    moved = params._replace(loc=params.loc.at[-1].add(0.05))  # the dispersion / last coefficient
    assert abs(float(G.exact_elbo(model, family, moved)) - mean) > 10 * se


@pytest.mark.parametrize("fam", ["meanfield", "fullrank"])
def test_negbin_pass_equals_autodiff_of_the_exact_objective(fam):
    model, family = _negbin(n=203, d=3), aj.families.get_family(fam)
    params = _params(family, model.dim, 5)
    layout = G._layout(model)
    meanfield = fam == "meanfield"
    factor = family.scale(params) if meanfield else family.scale_tril(params)
    x, y, offset = model.data["x"], model.data["y"], model.data["offset"]

    def lik(m, f):  # the expected log-likelihood alone
        return L.negbin_value(layout, x, y, offset, m, f, meanfield)

    @jax.jit
    def both(m, f):
        # The pass under test and every autodiff reference in one program: one compilation (the
        # hessian's program contains the value and gradient, which XLA shares) instead of five.
        out = L.negbin_pass(layout, model.data, m, f, meanfield, None, 64)
        # Price: d E_q[l] / d sd_k = sd_k E[hess]_kk (mean-field); d E_q[l] / d L = E[hess] L (full rank)
        ref = (lik(m, f), jax.grad(lik)(m, f), jax.grad(lik, 1)(m, f))
        return out, ref + ((jax.hessian(lik)(m, f),) if meanfield else ())

    (value, g, h), (v_ref, grad, d_factor, *hess) = both(params.loc, factor)
    # The pass leaves out the data-only -sum lgamma(y + 1), which glm_exact adds once per fit.
    np.testing.assert_allclose(value + G.data_constant("negbin", y), v_ref, rtol=1e-5)
    np.testing.assert_allclose(g, grad, rtol=1e-4, atol=1e-3)
    if meanfield:
        # d^2 E_q[l] / dm^2 = E_q[hess l] (Bonnet): the pass's -E[hess] from the moment derivatives
        np.testing.assert_allclose(h, -hess[0], rtol=2e-4, atol=2e-3)
        # ... and the covariance derivative (Price): d E_q[l] / d sd_k = sd_k E[hess]_kk, a check
        # that the variance derivatives (v, c, v_w) are wired right.
        np.testing.assert_allclose(d_factor, -factor * jnp.diagonal(h), rtol=2e-4, atol=2e-3)
    else:
        # Price with a full covariance S = L L': d E_q[l] / d L = E[hess] L (lower triangle), which
        # exercises the cross-covariance c_i = Cov(eta_i, omega) and the stable Var(u), Cov(u, omega).
        np.testing.assert_allclose(jnp.tril(d_factor), jnp.tril(-h @ factor), rtol=2e-4, atol=2e-3)


def test_probit_quadrature_derivatives_and_extremes():
    y = jnp.asarray([1.0, 0.0, 1.0, 0.0, 1.0, 0.0], jnp.float32)
    mu = jnp.asarray([0.3, -2.0, 40.0, 40.0, -40.0, 0.0], jnp.float32)
    var = jnp.asarray([0.5, 3.0, 1.0, 1e-12, 4.0, 0.0], jnp.float32)
    t, w = G.quadrature(32)
    value, first, curv = jax.jit(G.expected_log_lik, static_argnums=0)("probit", y, mu, var, t, w)
    for a in (value, first, curv):
        assert np.all(np.isfinite(np.asarray(a)))
    f = lambda m, v: G.expected_log_lik("probit", y[:2], m, v, t, w)[0].sum()  # noqa: E731
    gm, gv = jax.jit(jax.grad(f, (0, 1)))(mu[:2], var[:2])
    np.testing.assert_allclose(gm, first[:2], rtol=1e-5)
    np.testing.assert_allclose(2 * gv, curv[:2], rtol=1e-4)
    # y = 0, mu = 40: log Phi(-eta) ~ -eta^2 / 2 deep in the tail, E = -(mu^2 + var) / 2 - ..., finite
    assert float(value[3]) < -700 and abs(float(curv[3]) + 1.0) < 1e-3
    # var = 0: the value and curvature of log Phi(-0) itself
    np.testing.assert_allclose(value[5], np.log(0.5), rtol=1e-6)
    np.testing.assert_allclose(curv[5], -(2 / np.pi), rtol=1e-5)
    # the adaptive rule equals a 200-node rule to its measured error
    var_big = jnp.full((4,), 9.0, jnp.float32)
    auto = G.expected_log_lik_auto("probit", y[:4], mu[:4] * 0.05, var_big)[0]
    ref = G.expected_log_lik("probit", y[:4], mu[:4] * 0.05, var_big, *G.quadrature(200))[0]
    np.testing.assert_allclose(auto, ref, atol=1e-4)


def test_negbin_expectation_at_extreme_dispersion_is_finite():
    # phi -> infinity (log phi = 60): the NB tends to the Poisson; phi -> 0 (log phi = -12) stays finite
    y = jnp.asarray([0.0, 3.0, 40.0], jnp.float32)
    mu = jnp.asarray([0.2, 1.0, 3.5], jnp.float32)
    v = jnp.full((3,), 0.01, jnp.float32)
    for m_w, close_to_poisson in ((60.0, True), (-12.0, False)):
        mw = jnp.full((3,), m_w, jnp.float32)
        vw = jnp.full((3,), 1e-4, jnp.float32)
        psi = L.negbin_psi(y, mu, mw, v, jnp.zeros(3), vw, v + vw, -vw)
        assert np.all(np.isfinite(np.asarray(psi)))
        if close_to_poisson:
            poisson = G.expected_log_lik("poisson", y, mu, v, None, None)[0]
            np.testing.assert_allclose(psi, poisson, rtol=1e-4)


@pytest.mark.parametrize("kind,fam", [("negbin", "fullrank"), ("probit", "meanfield")])
def test_optimum_is_stationary_and_beats_advi(kind, fam, key):
    model = _negbin(n=300) if kind == "negbin" else _probit(n=300)
    family = aj.families.get_family(fam)
    res = aj.fit(model, key=key, family=fam, method="glm_exact", progress=False, diagnostics=False, warn=False)
    assert res.report.converged and res.report.num_steps < 40
    value = G.exact_elbo(model, family, res.params)
    np.testing.assert_allclose(float(res.final_elbo), float(value), rtol=1e-5)
    sd = jnp.sqrt(family.variance(res.params))
    grad = jax.jit(jax.grad(lambda m: G.exact_elbo(model, family, res.params._replace(loc=m))))(res.params.loc)
    assert float(jnp.max(jnp.abs(grad * sd))) < 5e-3  # within 0.005 posterior sd of stationary in the means
    adv = aj.fit(model, key=key, family=fam, method="advi", num_steps=3000, progress=False, diagnostics=False,
                 warn=False)
    advi = float(G.exact_elbo(model, family, adv.params))
    assert float(value) > advi and float(value) - advi < 0.01 * abs(float(value))
    # same optimum: means within 0.1 posterior sd of the stochastic fit's
    assert float(jnp.max(jnp.abs(adv.params.loc - res.params.loc) / sd)) < 0.1


def _compare_to_nuts(model, family, ref, labels):
    res = aj.fit(model, key=jax.random.key(0), family=family, method="glm_exact", progress=False,
                 diagnostics=False, warn=False)
    fam = aj.families.get_family(family)
    mean = np.asarray(res.params.loc, np.float64)
    sd = np.sqrt(np.asarray(fam.variance(res.params), np.float64))
    entries = {**ref["params"], **ref.get("derived", {})}  # log phi is a derived (deterministic) site
    err = np.asarray([((mean[k] - entries[lab]["mean"]) / entries[lab]["sd"],
                       sd[k] / entries[lab]["sd"] - 1.0) for k, lab in enumerate(labels)])
    return np.abs(err)


def test_fullrank_matches_nuts_on_overdispersed_counts_and_wells():
    from benchmarks.suite import MODELS
    from conftest import require_data_file

    sm = MODELS["randhie_negbin"]()  # bundled RAND HIE doctor visits: variance / mean 7.7
    ref = json.load(open(os.path.join(REFS, "randhie_negbin.json")))
    model = negbin_regression(np.asarray(sm.args[0]), np.asarray(sm.args[1]))
    labels = ["intercept"] + [f"beta[{j}]" for j in range(9)] + ["log_phi"]
    err = _compare_to_nuts(model, "fullrank", ref, labels)
    assert err[:, 0].max() <= 0.05 and err[:, 1].max() <= 0.05, err.max(0)
    require_data_file("wells.npz")
    sm = MODELS["wells_probit"]()
    ref = json.load(open(os.path.join(REFS, "wells_probit.json")))
    err = _compare_to_nuts(probit_regression(np.asarray(sm.args[0]), np.asarray(sm.args[1])), "fullrank", ref,
                           ["intercept"] + [f"beta[{j}]" for j in range(4)])
    assert err[:, 0].max() <= 0.05 and err[:, 1].max() <= 0.05, err.max(0)


def test_supports_and_layout():
    for model in (_negbin(n=20), _probit(n=20)):
        assert G.supports(model, aj.FullRankGaussian()) and G.supports(model, aj.MeanFieldGaussian())
    layout = G._layout(_negbin(n=20, d=2))
    assert layout.dispersion == 1.0 and len(layout.prior_sd) == 3  # intercept, 2 betas; omega last, not Gaussian
    # the dispersion prior's closed form equals quadrature of the model's own prior term
    m_w, v_w = 0.7, 0.3
    t, w = G.quadrature(64, jnp.float32)
    omega = m_w + np.sqrt(v_w) * t
    from advi_jax.models.regression import dispersion_log_prior
    quad = jnp.sum(w * (dispersion_log_prior(jnp.exp(omega), 1.0) + omega))  # + log|d phi / d omega|
    np.testing.assert_allclose(L.dispersion_prior(jnp.float32(m_w), jnp.float32(v_w), 1.0)[0], quad, rtol=1e-5)


def _counts_with_repeats_and_uniques(n, seed):
    """Over-dispersed counts (many repeats) plus a few counts that occur once, far in the tail."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    mu = np.exp(0.8 + x @ np.asarray([0.5, -0.3, 0.2]))
    y = rng.negative_binomial(1.5, 1.5 / (1.5 + mu)).astype(np.float64)
    y[:4] = [311.0, 1000.0, 57.0, 0.0]
    return x, y


def test_distinct_count_table_equals_the_row_sum_in_float64():
    # The pass with E[D(y, e^omega)] summed per distinct count (the NB model's table) against the same
    # pass per row (the table removed): value, gradient and curvature to float64 rounding, both families.
    with jax.enable_x64(True):
        x, y = _counts_with_repeats_and_uniques(601, 4)
        model = negbin_regression(x, y, exposure=np.random.default_rng(5).uniform(0.5, 2.0, 601))
        assert model.data["y"].dtype == jnp.float64 and L.has_table(model.data)
        values = np.asarray(model.data["y_distinct"])
        counts = np.asarray(model.data["y_count"])
        distinct, multiplicity = np.unique(y, return_counts=True)
        assert counts.sum() == 601 and np.all(counts[len(distinct):] == 0)
        np.testing.assert_array_equal(values[:len(distinct)], distinct)
        np.testing.assert_array_equal(counts[:len(distinct)], multiplicity)
        rows = {k: v for k, v in model.data.items() if k not in ("y_distinct", "y_count")}
        assert not L.has_table(rows)
        layout = G._layout(model)
        for fam in ("meanfield", "fullrank"):
            family = aj.families.get_family(fam)
            p = _params(family, model.dim, 6, scale=0.3)
            p = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), p)
            p = p._replace(loc=p.loc.at[-1].set(0.4))  # log phi
            meanfield = fam == "meanfield"
            f = family.scale(p) if meanfield else family.scale_tril(p)
            run = jax.jit(lambda d, m, f_: L.negbin_pass(layout, d, m, f_, meanfield, None, 128))
            grouped, per_row = run(model.data, p.loc, f), run(rows, p.loc, f)
            for a, b in zip(grouped, per_row):
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * float(np.max(np.abs(b))))
            # the dispersion term alone is a large part of the value (the check is not vacuous)
            d_sum = float(L.distinct_dispersion(model.data, p.loc[-1], f[-1] ** 2 if meanfield else f[-1] @ f[-1]))
            assert abs(d_sum) > 0.05 * abs(float(per_row[0]))
        # the model's log density (diagnostics, ADVI, NUTS): D(y, phi) - lgamma(y + 1) per distinct count
        rows_model = type(model).tree_unflatten(model.tree_flatten()[1], (rows,))
        z = jnp.asarray(np.random.default_rng(8).normal(size=(3, model.dim)) * 0.4, jnp.float64)
        lp = jax.jit(jax.vmap(jax.value_and_grad(lambda m_, z_: m_.log_density(z_), argnums=1), in_axes=(None, 0)))
        (la, lga), (lb, lgb) = lp(model, z), lp(rows_model, z)
        np.testing.assert_allclose(la, lb, rtol=1e-13)
        np.testing.assert_allclose(lga, lgb, rtol=1e-12, atol=1e-12 * float(np.max(np.abs(lgb))))
        # low rank: its autodiffed likelihood (value and gradient) with and without the table
        d_diag, b = jnp.full(model.dim, 0.2, jnp.float64), 0.1 * jnp.ones((model.dim, 2), jnp.float64)
        lr = jax.jit(jax.value_and_grad(lambda m, d: lowrank_likelihood(layout, d, m, d_diag, b)))
        (va, ga), (vb, gb) = lr(p.loc, model.data), lr(p.loc, rows)
        np.testing.assert_allclose(va, vb, rtol=1e-12)
        np.testing.assert_allclose(ga, gb, rtol=1e-12, atol=1e-12 * float(np.max(np.abs(gb))))


def test_negbin_fit_optimum_is_unchanged_by_the_table_and_a_stale_table_is_caught():
    x, y = _counts_with_repeats_and_uniques(2000, 7)
    model = negbin_regression(x, y)
    rows_model = type(model).tree_unflatten(
        model.tree_flatten()[1], ({k: v for k, v in model.data.items() if k not in ("y_distinct", "y_count")},))
    assert L.has_table(model.data) and not L.has_table(rows_model.data)
    fits = [aj.fit(m, family="fullrank", key=jax.random.key(0), diagnostics=False, progress=False)
            for m in (model, rows_model)]
    assert all(f.method == "glm_exact" and f.converged for f in fits)
    a, b = (aj.families.get_family("fullrank") for _ in range(2))
    sd = np.sqrt(np.asarray(a.variance(fits[1].params)))
    # float32: the two sums differ only in rounding order; the optima agree to far below a posterior sd
    assert np.max(np.abs(np.asarray(fits[0].params.loc) - np.asarray(fits[1].params.loc)) / sd) < 1e-3
    np.testing.assert_allclose(np.sqrt(np.asarray(b.variance(fits[0].params))), sd, rtol=1e-3)
    np.testing.assert_allclose(fits[0].elbo[-1], fits[1].elbo[-1], rtol=1e-6)
    # a table that no longer matches y (y edited after the model was built) stops the fit: no silent
    # answer. On the host it is a clear error before anything compiles; the programs' own guard (for
    # data on a device) makes the log density, so the start's check and the fit's ELBO, NaN.
    stale = type(model).tree_unflatten(model.tree_flatten()[1], ({**model.data, "y": model.data["y"] + 1.0},))
    with pytest.raises(ValueError, match=r"does not match the model's distinct-count table"):
        aj.fit(stale, family="fullrank", key=jax.random.key(0), diagnostics=False, progress=False)
    assert np.isnan(float(stale.log_density(jnp.zeros(model.dim)))) and np.isfinite(
        float(model.log_density(jnp.zeros(model.dim))))
