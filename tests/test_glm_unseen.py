"""The ready GLMs and `advi-jax fit` on data they were not tuned on (helper `glmunseen`).

Each test is a defect found by feeding new data to the defaults, and fails on the code before its fix:
huge counts that left the exact-ELBO fit at its start (calling that convergence), float32 count
models past their precision, integer ids taken for group codes, boolean and text columns of a CSV,
and an unconverged exact fit that the summary did not flag.
"""

import argparse
import warnings

import jax
import numpy as np
import pytest

import advi_jax as aj
from advi_jax.data import load_csv
from advi_jax.models import PrecisionWarning, float32_count_limit


def _fit(model, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return aj.fit(model, key=jax.random.key(0), progress=False, diagnostics=False, **kwargs)


def _huge_counts(n=60, rate=1e9, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 1))
    return x, rng.poisson(rate, n).astype(float)


def test_poisson_huge_counts_reach_the_optimum():
    # Counts of 1e9 from a start at zero: the Newton step of the intercept is ~1e9, every damped
    # proposal overflowed until the damping fell below min_rho, and the fit "converged" at the start
    # (intercept 0.00 +/- 0.10). The exact posterior mean of the intercept is log(mean y) to ~1e-6.
    x, y = _huge_counts()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrecisionWarning)
        model = aj.models.poisson_regression(x, y)
    result = _fit(model)
    assert result.method == "glm_exact"
    loc = np.asarray(result.params.loc)
    assert abs(loc[0] - np.log(y.mean())) < 1e-4, loc
    assert abs(loc[1]) < 1e-3


def test_grouped_poisson_huge_counts_reach_the_optimum():
    # The same stall in glm_grouped: intercept + group effects stayed ~0 instead of log(mean y) ~ 20.7.
    # In float64: counts this large are past float32's precision (FLOAT32_COUNT_LIMITS).
    x, y = _huge_counts()
    group = np.arange(len(y)) % 3
    with jax.enable_x64(True):
        model = aj.models.poisson_regression(x, y, group=group)
        result = _fit(model)
    assert result.method == "glm_grouped"
    loc = np.asarray(result.params.loc)  # (intercept, beta, u_0..u_2, log tau)
    rates = loc[0] + loc[2:5]
    for g in range(3):
        assert abs(rates[g] - np.log(y[group == g].mean())) < 1e-5, rates


@pytest.mark.parametrize("kind, big, small", [("poisson", 3e7, 1e6), ("negbin", 1000.0, 250.0)])
def test_float32_count_limits_warn(kind, big, small):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 1))
    y = np.full(20, small)
    assert float32_count_limit(kind, y) is None
    assert float32_count_limit(kind, np.r_[y[:-1], big]) is not None
    assert float32_count_limit("logistic", np.ones(3)) is None
    build = getattr(aj.models, f"{kind}_regression")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrecisionWarning)
        build(x, y)  # within the limit: no warning
    if jax.numpy.result_type(float) == np.float32:
        with pytest.warns(PrecisionWarning, match="float64"):
            build(x, np.r_[y[:-1], big])


def test_cli_switches_count_fits_to_float64():
    from advi_jax.cli.fit import float64_for_counts

    before = jax.config.jax_enable_x64
    args = argparse.Namespace(model="negbin", float64=False)
    try:
        assert not float64_for_counts(args, np.array([0.0, 3.0, 300.0]))
        assert args.float64 is False
        assert float64_for_counts(args, np.array([0.0, 3.0, 301.0]))
        assert args.float64 is True and jax.config.jax_enable_x64
    finally:
        jax.config.update("jax_enable_x64", before)


def test_sparse_integer_group_ids_are_an_error():
    # Zip codes passed as group= were read as codes 0..90210: 90211 groups (a 90k x 90k covariance)
    # of which 3 had rows.
    rng = np.random.default_rng(2)
    x = rng.normal(size=(30, 1))
    y = (x[:, 0] > 0).astype(float)
    ids = np.array([90210, 10001, 60601] * 10)
    with pytest.raises(ValueError, match="astype\\(str\\)"):
        aj.models.logistic_regression(x, y, group=ids)
    model = aj.models.logistic_regression(x, y, group=ids.astype(str))
    assert model.num_groups == 3
    # codes with a few empty groups stay codes; num_groups= asks for the empty ones explicitly
    assert aj.models.logistic_regression(x, y, group=np.arange(30) % 3 + 1).num_groups == 4
    assert aj.models.grouped_logistic_regression(x, y, group=ids % 100, num_groups=100).num_groups == 100


def test_csv_boolean_columns_and_text_target(tmp_path):
    path = tmp_path / "flags.csv"
    path.write_text("y,x,flag\n1,0.5,True\n0,-1.0,false\n1,2.0,TRUE\n0,0.1,False\n")
    x, y, names = load_csv(path, target="y", kind="logistic")
    assert names == ("x", "flag")
    np.testing.assert_array_equal(x[:, 1], [1.0, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(y, [1.0, 0.0, 1.0, 0.0])
    text = tmp_path / "text.csv"
    text.write_text("y,x\nyes,0.5\nno,1.0\n")
    with pytest.raises(ValueError, match="target column 'y' is not numeric.*0/1"):
        load_csv(text, target="y", kind="logistic")


def test_summary_flags_an_unconverged_exact_fit():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(80, 2))
    y = rng.poisson(np.exp(0.5 * x[:, 0])).astype(float)
    model = aj.models.poisson_regression(x, y)
    short = _fit(model, num_steps=2)
    assert not short.converged
    assert "not converged" in short.summary()
    done = _fit(model)
    assert done.converged and "not converged" not in done.summary()


def test_constant_columns_warn_and_empty_formula_data(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("formulaic")
    rng = np.random.default_rng(4)
    x = np.column_stack([rng.normal(size=40), np.ones(40)])
    y = (x[:, 0] > 0).astype(float)
    with pytest.warns(aj.models.ConstantColumnWarning, match="'x1' \\(= 1\\)"):
        aj.models.logistic_regression(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", aj.models.ConstantColumnWarning)
        aj.models.logistic_regression(x, y, intercept=False)  # no intercept: the column is one
        aj.models.logistic_regression(x[:, :1], y)
    empty = pd.DataFrame({"y": [], "x": []})
    with pytest.raises(ValueError, match="no rows"):
        aj.models.logistic_regression.from_formula(empty, "y ~ x")


def test_no_intercept_models_are_not_centred():
    # intercept=False with a user's own column of ones: standardising centred it to zeros, so the model
    # had no intercept at all, and every column's centring added an unreported intercept
    # -sum b m / s to the data-scale linear predictor.
    rng = np.random.default_rng(5)
    x = np.column_stack([np.ones(60), rng.normal(2.0, 1.0, 60)])
    y = (rng.uniform(size=60) < 1 / (1 + np.exp(-(1.0 - 0.5 * x[:, 1])))).astype(float)
    model = aj.models.logistic_regression(x, y, intercept=False)
    np.testing.assert_allclose(np.asarray(model.data["x"])[:, 0], 1.0, rtol=1e-6)
    draws = {"beta": rng.normal(size=(5, 2))}
    eta = np.asarray(aj.models.linear_predictor(model, draws, x))
    per_unit = np.asarray(aj.models.coefficients_on_original_scale(model, draws)["beta"])
    np.testing.assert_allclose(eta, per_unit @ x.T, rtol=1e-4, atol=1e-4)


def test_unstandardised_columns_on_wildly_different_scales():
    # standardize=False with columns in units of 1e-6 and 1e6: the first Newton steps overflowed, the
    # damping fell below min_rho and the fit "converged" at ELBO -1.15e6 with an intercept of 270 (its
    # prior sd is 10). Capped steps reach the optimum (ELBO -74.05 in float64 and float32).
    rng = np.random.default_rng(2)
    x = rng.normal(size=(100, 2))
    y = (x[:, 0] + x[:, 1] > 0).astype(float)
    model = aj.models.logistic_regression(x * np.array([1e-6, 1e6]), y, standardize=False)
    result = _fit(model)
    assert result.converged
    assert abs(result.final_elbo - (-74.052)) < 0.05, result.final_elbo
    loc = np.asarray(result.params.loc)
    assert abs(loc[0] - 0.1295) < 0.01 and abs(loc[2] / 1.4566e-6 - 1) < 0.01, loc


def test_group_on_probit_and_negbin_and_duplicate_names_are_clear_errors():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(20, 2))
    with pytest.raises(ValueError, match="group= .*logistic and Poisson.*not probit"):
        aj.models.probit_regression(x, (x[:, 0] > 0) * 1.0, group=np.arange(20) % 2)
    with pytest.raises(ValueError, match="group= .*not negbin"):
        aj.models.negbin_regression(x, rng.poisson(2.0, 20), group=np.arange(20) % 2)
    with pytest.raises(ValueError, match=r"feature_names must be distinct; \['a'\] repeat"):
        aj.models.logistic_regression(x, (x[:, 0] > 0) * 1.0, feature_names=["a", "a"])


def _raw_income_design(n=300, seed=8):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    income = 3e4 + 1e4 * z[:, 0]  # a raw column: size 3e4, not standardised
    y = rng.poisson(np.exp(0.3 * z[:, 0] - 0.2 * z[:, 1]))
    return np.column_stack([income, z[:, 1]]), y.astype(float), rng.integers(0, 12, n)


@pytest.mark.parametrize("kind,family", [("poisson", "fullrank"), ("poisson", "meanfield"),
                                         ("poisson", aj.LowRankGaussian(2)), ("negbin", "fullrank"),
                                         ("grouped", "fullrank")])
def test_raw_columns_in_the_thousands_are_fitted_in_their_units(kind, family):
    # standardize=False with an income column around 3e4: q started with sd 0.1 on its coefficient, so
    # each linear predictor had variance ~1e7 under q and exp(mu + var / 2) overflowed at the start
    # itself; no damping helps there, and the exact fit never moved (every coefficient 0 +/- 0.1,
    # k-hat inf). Under flat priors the posterior is equivariant to a column's units: the fit on the
    # income in dollars must be the fit on the income in units of its rms, scaled back.
    x, y, group = _raw_income_design()
    rms = np.sqrt(np.mean(x[:, 0] ** 2))
    build = {"poisson": aj.models.poisson_regression, "negbin": aj.models.negbin_regression,
             "grouped": lambda *a, **k: aj.models.poisson_regression(*a, group=group, **k)}[kind]
    flat = dict(standardize=False, prior_scale=1e4, intercept_scale=1e4)
    raw = _fit(build(x, y, **flat), family=family)
    unit = _fit(build(x / np.array([rms, 1.0]), y, **flat), family=family)
    assert raw.method == unit.method and raw.method.startswith("glm_") and raw.converged, raw.method
    scale = np.ones(raw.model.dim)
    scale[1] = rms  # coordinates: intercept, beta[income], beta[z], ...
    mean_raw, mean_unit = (np.asarray(r.family.mean(r.params)) for r in (raw, unit))
    sd_raw, sd_unit = (np.sqrt(np.asarray(r.family.variance(r.params))) for r in (raw, unit))
    np.testing.assert_allclose(mean_raw * scale, mean_unit, atol=0.02 * sd_unit.min())
    np.testing.assert_allclose(sd_raw * scale, sd_unit, rtol=0.02)
    assert abs(mean_unit[1] / rms * 1e4 - 0.3) < 0.15  # the income's effect per 1e4, simulated 0.3
