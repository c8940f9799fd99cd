"""Varying-intercept GLMs (advi_jax.models.grouped) and their exact-ELBO fit (advi_jax.vi.glm_grouped).

Checks against Monte Carlo (1e6 draws, within standard errors), autodiff (gradient, Hessian in m,
and the covariance gradient the fixed point relies on), simulated group effects, a long ADVI fit,
a NumPyro NUTS reference on the births data, and bad `group=` input.
"""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import advi_jax as aj
from advi_jax.families import FullRankParams, MeanFieldParams
from advi_jax.models import grouped_logistic_regression, grouped_poisson_regression, logistic_regression
from advi_jax.models.grouped import GroupedRegressionModel, encode_groups
from advi_jax.run import choose_method
from advi_jax.vi import METHODS, glm_grouped as GG

sys.path.insert(0, os.path.dirname(__file__))
from _vi_runner import mc_elbo, run as _run_algorithm  # noqa: E402
from conftest import require_data_file  # noqa: E402

REFS = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "references")


def _simulate(kind, n=400, d=2, g=12, tau=0.6, seed=0, exposure=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    group = rng.integers(0, g, n)
    u = rng.normal(0.0, tau, g)
    eta = 0.3 + x @ np.linspace(0.4, -0.3, d) + u[group]
    if kind == "logistic":
        y = (rng.uniform(size=n) < 1 / (1 + np.exp(-eta))).astype(float)
        return grouped_logistic_regression(x, y, group=group), u
    expo = rng.uniform(0.5, 2.0, n) if exposure else None
    y = rng.poisson(np.exp(eta) * (1.0 if expo is None else expo))
    return grouped_poisson_regression(x, y, group=group, exposure=expo), u


def _params(family, k, seed, scale=0.2):
    rng = np.random.default_rng(seed)
    loc = jnp.asarray(rng.normal(size=k) * 0.4, jnp.float32)
    loc = loc.at[-1].set(-0.5)  # log tau
    raw = jnp.asarray(np.log(np.expm1(scale * rng.uniform(0.5, 1.5, size=k))), jnp.float32)
    if family.name == "meanfield":
        return MeanFieldParams(loc, raw)
    return FullRankParams(loc, raw, jnp.asarray(np.tril(rng.normal(size=(k, k)) * 0.08, -1), jnp.float32))


def run(model, family, options=GG.Options(), num_steps=200):
    algo = GG.build(model, family, options)
    params, _, totals = _run_algorithm(algo, jax.random.key(0), jnp.zeros((model.dim,), jnp.float32), num_steps)
    return params, totals["info"], int(totals["steps"])


@pytest.mark.parametrize("kind,fam", [("poisson", "fullrank"), ("logistic", "meanfield")])
def test_exact_elbo_equals_monte_carlo(kind, fam, key):
    model, _ = _simulate(kind, n=60, g=6, exposure=True)
    family = aj.families.get_family(fam)
    params = _params(family, model.dim, 3, scale=0.1 if kind == "poisson" else 0.3)
    if fam == "fullrank":  # correlate log tau with every u (the E[u^2 e^{-2s}] cross term)
        params = params._replace(off_diag=params.off_diag.at[-1, :-1].set(0.15))
    exact = float(GG.exact_elbo(model, family, params))
    mean, se = mc_elbo(model, family, params, key)
    assert abs(exact - mean) < 4 * se + 1e-6 * abs(mean), (exact, mean, se)
    # Power: a slightly different q (a larger log-tau sd) is many standard errors away.
    k = model.dim - 1
    if fam == "fullrank":
        moved = params._replace(off_diag=params.off_diag.at[-1, :-1].set(0.25))
    else:
        moved = params._replace(loc=params.loc.at[k].add(0.25))
    assert abs(float(GG.exact_elbo(model, family, moved)) - mean) > 10 * se


@pytest.mark.parametrize("kind", ["poisson", "logistic"])
def test_gradient_hessian_and_covariance_gradient_equal_autodiff(kind):
    jax.config.update("jax_enable_x64", True)
    try:
        model, _ = _simulate(kind, n=150, g=5, exposure=True)
        layout = GG._layout(model)
        k = model.dim
        rng = np.random.default_rng(7)
        m = jnp.asarray(rng.normal(size=k) * 0.3)
        L = jnp.asarray(np.tril(rng.normal(size=(k, k)) * 0.1, -1) + np.diag(rng.uniform(0.1, 0.3, k)))
        xt = GG._design(layout, model.data)

        def elbo(m, S):
            log_det_sd = 0.5 * jnp.linalg.slogdet(S)[1]
            return GG.moments_and_curvature(layout, model.data, xt, m, S, log_det_sd, 64)[0]

        S = L @ L.T
        # the pass under test and its autodiff references in one program (one compilation, not two)
        (value, g, H), (auto_g, auto_h, dS) = jax.jit(lambda m, S: (
            GG.moments_and_curvature(layout, model.data, xt, m, S, jnp.sum(jnp.log(jnp.diagonal(L))), 64),
            (jax.grad(elbo)(m, S), jax.hessian(elbo)(m, S), jax.grad(elbo, argnums=1)(m, S))))(m, S)
        np.testing.assert_allclose(g, auto_g, rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(H, -auto_h, rtol=1e-8, atol=1e-8)
        # dELBO/dS = (S^-1 - H) / 2 (Price): its zero is the fixed point S^-1 = H the optimiser uses.
        dS = 0.5 * (dS + dS.T)
        np.testing.assert_allclose(dS, 0.5 * (jnp.linalg.inv(S) - H), rtol=1e-6, atol=1e-6)
        # ... and the objective is the public exact ELBO.
        fam = aj.FullRankGaussian()
        p = FullRankParams(m, jnp.log(jnp.expm1(jnp.diagonal(L))), L)
        np.testing.assert_allclose(value, GG.exact_elbo(model, fam, p, num_nodes=64), rtol=1e-10)
    finally:
        jax.config.update("jax_enable_x64", False)


@pytest.mark.parametrize("kind,fam", [("poisson", "fullrank"), ("logistic", "meanfield")])
def test_fit_recovers_simulated_group_effects(kind, fam):
    model, u = _simulate(kind, n=3000 if kind == "poisson" else 6000, g=30, tau=0.7, seed=11)
    family = aj.families.get_family(fam)
    params, info, steps = run(model, family)
    assert bool(info.converged) and steps < 60, steps
    sd = np.sqrt(np.asarray(family.variance(params)))
    s = model.slices()["u"]
    u_hat, u_sd = np.asarray(params.loc)[s], sd[s]
    z = (u_hat - u) / u_sd
    assert np.corrcoef(u_hat, u)[0, 1] > 0.9
    assert np.mean(np.abs(z) < 2.5) > 0.85 and np.max(np.abs(z)) < 4.5, z
    log_tau, log_tau_sd = float(params.loc[-1]), float(sd[-1])
    assert abs(log_tau - np.log(0.7)) < 3 * log_tau_sd + 0.05, (np.exp(log_tau), log_tau_sd)
    # The optimum is stationary in every variational parameter (in posterior-sd units).
    grads = jax.jit(jax.grad(lambda p: GG.exact_elbo(model, family, p)))(params)
    assert float(jnp.max(jnp.abs(grads.loc * sd))) < 2e-3


def test_optimum_matches_long_advi_fit(key):
    model, _ = _simulate("poisson", n=300, g=8, tau=0.5, seed=3)
    family = aj.FullRankGaussian()
    params, info, _ = run(model, family)
    res = aj.fit(model, key=key, family="fullrank", method="advi", num_steps=10_000, num_samples=4,
                 progress=False, diagnostics=False, warn=False)
    sd = np.sqrt(np.asarray(family.variance(params)))
    sd_advi = np.sqrt(np.asarray(family.variance(res.params)))
    err = np.abs(np.asarray(res.params.loc) - np.asarray(params.loc)) / sd
    # Measured: 0.023 sd in the means and 2.3% in the sds (0.011 / 1.3% after 20,000 steps).
    assert err.max() < 0.1, err
    assert np.max(np.abs(sd_advi / sd - 1)) < 0.1, sd_advi / sd
    # The exact method's ELBO is the higher one (it is the family's optimum).
    assert float(GG.exact_elbo(model, family, params)) >= float(GG.exact_elbo(model, family, res.params)) - 1e-3


def test_aj_fit_auto_routes_and_labels(key):
    model, _ = _simulate("logistic", n=200, g=4)
    fam = aj.MeanFieldGaussian()
    assert choose_method(model, fam)[0] == "glm_grouped"
    assert choose_method(model, fam, estimator="stl")[0] == "advi"
    assert choose_method(model, aj.LowRankGaussian(rank=1))[0] == "advi"
    assert choose_method(logistic_regression(np.ones((3, 1)) * [[0], [1], [2]], [0, 1, 1]), fam)[0] == "glm_exact"
    res = aj.fit(model, key=key, family="fullrank", progress=False, diagnostics=False)
    assert res.method == "glm_grouped" and res.report.converged and res.report.num_steps < 60
    assert res.num_grad_evals >= res.report.num_steps  # the full pass and the funnel curve's
    params, info, _ = run(model, aj.FullRankGaussian())
    np.testing.assert_allclose(res.params.loc, params.loc, rtol=1e-4, atol=1e-4)
    # Labels: named groups show in the summary.
    rng = np.random.default_rng(0)
    names = np.array(["CA", "NY", "TX"])[rng.integers(0, 3, 90)]
    m2 = grouped_poisson_regression(rng.normal(size=(90, 1)), rng.poisson(2.0, 90), group=names)
    assert m2.info.group_names == ("CA", "NY", "TX") and m2.labels["u"] == ("CA", "NY", "TX")
    text = str(aj.fit(m2, key=key, progress=False, diagnostics=False).summary())
    assert "u[NY]" in text and "tau" in text


def test_contract_and_bad_input():
    assert METHODS["glm_grouped"] is GG and GG.WHITEN is False and GG.FAMILIES == ("meanfield", "fullrank")
    x = np.random.default_rng(0).normal(size=(20, 2))
    y = (x[:, 0] > 0) * 1.0
    good = np.arange(20) % 3
    with pytest.raises(ValueError, match="group.*negative"):
        grouped_logistic_regression(x, y, group=good - 1)
    with pytest.raises(ValueError, match=r"group\[1\] = 0.5 is not an integer"):
        grouped_logistic_regression(x, y, group=np.where(good == 1, 0.5, good))
    with pytest.raises(ValueError, match="group must have one entry per row of X \\(20\\), got 19"):
        grouped_logistic_regression(x, y, group=good[:19])
    with pytest.raises(ValueError, match="group must be 1-D"):
        grouped_logistic_regression(x, y, group=good[:, None])
    with pytest.raises(ValueError, match="group.*not an integer"):
        grouped_logistic_regression(x, y, group=np.where(good == 1, np.nan, good))
    with pytest.raises(ValueError, match="group has a missing value"):
        grouped_logistic_regression(x, y, group=np.array(["a", None] * 10, dtype=object))
    with pytest.raises(ValueError, match="num_groups"):
        grouped_logistic_regression(x, y, group=good, num_groups=2)
    with pytest.raises(ValueError, match="group_names"):
        grouped_logistic_regression(x, y, group=good, group_names=["a", "b"])
    with pytest.raises(ValueError, match="group_scale"):
        grouped_logistic_regression(x, y, group=good, group_scale=0.0)
    # group= on the plain constructors builds the grouped model.
    m = aj.models.poisson_regression(x, np.arange(20) % 4, group=good, exposure=np.ones(20))
    assert isinstance(m, GroupedRegressionModel) and m.num_groups == 3 and "offset" in m.data
    assert isinstance(logistic_regression(x, y, group=good), GroupedRegressionModel)
    with pytest.raises(ValueError, match="hierarchical_scale"):
        logistic_regression(x, y, group=good, hierarchical_scale=True)
    codes, names = encode_groups(good.astype(float), 20, num_groups=5)
    assert codes.dtype == np.int32 and names == ("0", "1", "2", "3", "4")
    with pytest.raises(TypeError, match="varying-intercept"):
        GG.build(logistic_regression(x, y), aj.FullRankGaussian())
    with pytest.raises(ValueError, match="families"):
        GG.build(grouped_logistic_regression(x, y, group=good), aj.LowRankGaussian(rank=1))
    with pytest.raises(ValueError, match="tol"):
        GG.build(grouped_logistic_regression(x, y, group=good), aj.FullRankGaussian(), GG.Options(tol=0.0))


def test_births_grouped_poisson_matches_nuts():
    require_data_file("birthdays.npz")
    from benchmarks.grouped_births import build_births_grouped, compare_to_reference

    ref_path = os.path.join(REFS, "births_poisson_grouped.json")
    ref = json.load(open(ref_path))
    model = build_births_grouped()
    res = aj.fit(model, key=jax.random.key(0), family="fullrank", progress=False, diagnostics=False)
    assert res.method == "glm_grouped" and res.report.converged
    err = compare_to_reference(model, res, ref)
    # Measured: 0.016 sd / 0.022 mean (0.030 max) sd error; the targets are 0.05 / 5%.
    assert err["max_mean_error_sd"] <= 0.05 and err["max_sd_ratio_error"] <= 0.05, err
    assert ref["rhat_ok"] and ref["max_rhat"] <= 1.01 and ref["settings"]["chains"] == 4


def test_cli_fit_group(tmp_path, capsys):
    from advi_jax.cli import main

    rng = np.random.default_rng(5)
    n, names = 240, np.array(["north", "south", "east", "west", "centre", "isles"])
    g = rng.integers(0, 6, n)
    x = rng.normal(size=n)
    y = rng.poisson(np.exp(1.5 + 0.3 * x + np.linspace(-1.2, 1.2, 6)[g]))
    lines = ["x,region,y"] + [f"{x[i]:.4f},{names[g[i]]},{y[i]}" for i in range(n)]
    path = tmp_path / "d.csv"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    code = main(["fit", "--model", "poisson", "--data", str(path), "--target", "y", "--group", "region",
                 "--out", str(out), "--quiet", "--no-plots", "--draws", "500"])
    text = capsys.readouterr().out
    assert code == 0 and "u[west]" in text and "tau" in text and "method=glm_grouped" in text
    summary = json.load(open(out / "summary.json"))
    assert summary["fit"]["num_groups"] == 6 and summary["fit"]["feature_names"] == ["x"]
    rows = {r["parameter"]: r for r in summary["summary"]}
    # The effects are ordered as simulated (west > ... > north in the linspace above).
    order = [names[j] for j in range(6)]
    means = [rows[f"u[{nm}]"]["mean"] for nm in order]
    assert np.all(np.diff(means) > 0), means
    # Bad input: a missing group column, and --group with --formula, exit 2 with a message.
    for extra, needle in ((["--group", "nope"], "nope"), (["--group", "region", "--formula", "y ~ x"], "--formula")):
        args = ["fit", "--model", "poisson", "--data", str(path), "--out", str(out), "--quiet"] + extra
        if "--formula" not in extra:
            args += ["--target", "y"]
        try:
            code = main(args)
        except SystemExit as stop:
            code = stop.code
        assert code == 2 and needle in capsys.readouterr().err


def test_predict_names_a_varying_intercept_model():
    """predict on `poisson_regression(x, y, group=...)` said the model 'must come from ... poisson_regression',
    which is where it came from; it now says that varying-intercept models have no predict here."""
    model, _ = _simulate("poisson", n=60, g=3)
    draws = {"intercept": jnp.zeros(4), "beta": jnp.zeros((4, 2)), "u": jnp.zeros((4, 3)), "tau": jnp.ones(4)}
    with pytest.raises(TypeError, match=r"takes the ready GLMs without group=; a varying-intercept model "
                                        r"\(GroupedRegressionModel, from group=\)"):
        aj.models.predict(model, draws, np.zeros((2, 2)))
