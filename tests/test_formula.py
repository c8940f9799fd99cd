"""Formulas and DataFrames for the ready regression models: names kept, same numbers as the
hand-built design matrix, predictions on new frames, missing values, and bad formulas."""

import jax
import numpy as np
import pytest

pd = pytest.importorskip("pandas", reason="formulas need the formula extra (pip install '.[formula]')")
pytest.importorskip("formulaic", reason="formulas need the formula extra (pip install '.[formula]')")

import advi_jax as aj  # noqa: E402
from advi_jax.data import MissingValuesWarning  # noqa: E402


@pytest.fixture(scope="module")
def frame():
    rng = np.random.default_rng(0)
    n = 120
    df = pd.DataFrame({"x1": rng.normal(size=n), "x3": rng.normal(size=n),
                       "x2": rng.choice(["a", "b", "c"], n), "id": [f"r{i}" for i in range(n)]})
    eta = 0.3 + df.x1 - 0.8 * (df.x2 == "c") + 0.5 * df.x1 * df.x3
    df["y"] = rng.binomial(1, 1 / (1 + np.exp(-eta))).astype(float)
    return df


def _hand_design(df):
    return np.column_stack([df.x1, (df.x2 == "b") * 1.0, (df.x2 == "c") * 1.0, df.x1 * df.x3])


def test_formula_model_equals_hand_built_design(frame):
    model = aj.models.logistic_regression.from_formula(frame, "y ~ x1 + C(x2) + x1:x3", prior_scale=1.5)
    assert model.info.feature_names == ("x1", "C(x2)[T.b]", "C(x2)[T.c]", "x1:x3")
    assert model.info.intercept and model.formula == "y ~ x1 + C(x2) + x1:x3"
    hand = aj.models.logistic_regression(_hand_design(frame), frame.y.to_numpy(), prior_scale=1.5)
    zeta = jax.random.normal(jax.random.key(0), (model.dim,))
    np.testing.assert_allclose(model.log_density(zeta), hand.log_density(zeta), rtol=1e-5)
    labels = aj.models.parameter_labels(model)
    assert labels["beta"] == model.info.feature_names
    # the module-level form and the kind argument agree
    same = aj.models.from_formula("logistic", frame, "y ~ x1 + C(x2) + x1:x3", prior_scale=1.5)
    np.testing.assert_allclose(same.log_density(zeta), model.log_density(zeta), rtol=1e-6)


def test_no_intercept_and_predictions_on_new_frames(frame):
    model = aj.models.logistic_regression.from_formula(frame, "y ~ 0 + x1 + x3")
    assert not model.info.intercept and model.names == ("beta",)
    draws = {"beta": np.array([[1.0, -2.0], [0.5, 0.0]])}
    new = pd.DataFrame({"x1": [0.3, -1.0], "x3": [1.0, 2.0], "x2": ["a", "b"]})
    eta = aj.models.linear_predictor(model, draws, new)
    xs = (new[["x1", "x3"]].to_numpy() - np.asarray(model.data["x_mean"])) / np.asarray(model.data["x_scale"])
    np.testing.assert_allclose(eta, draws["beta"] @ xs.T, rtol=1e-5, atol=1e-6)
    full = aj.models.logistic_regression.from_formula(frame, "y ~ x1 + C(x2) + x1:x3")
    new3 = pd.DataFrame({"x1": [1.0], "x3": [2.0], "x2": ["c"]})
    np.testing.assert_allclose(full.design_matrix(new3), [[1.0, 0.0, 1.0, 2.0]])


def test_dataframe_input_keeps_column_names(frame):
    model = aj.models.poisson_regression(frame[["x1", "x3"]], frame.y)
    assert model.info.feature_names == ("x1", "x3")
    with pytest.raises(TypeError, match=r"non-numeric columns \['x2'\].*from_formula"):
        aj.models.logistic_regression(frame[["x1", "x2"]], frame.y)


def test_missing_values_named_or_dropped(frame):
    df = frame.copy()
    df.loc[[3, 7], "x3"] = np.nan
    df.loc[10, "id"] = None  # not used by the formula: ignored
    with pytest.raises(ValueError, match=r"missing values in 2 of 120 rows: 'x3' in rows 3, 7.*dropna=True"):
        aj.models.logistic_regression.from_formula(df, "y ~ x1 + x1:x3")
    with pytest.warns(MissingValuesWarning, match="dropped 2 of 120 rows"):
        model = aj.models.logistic_regression.from_formula(df, "y ~ x1 + x1:x3", dropna=True)
    assert model.data["x"].shape == (118, 2)


def test_poisson_formula_with_exposure_column(frame):
    df = frame.assign(years=np.linspace(0.5, 2.0, len(frame)), count=(frame.x1 > 0).astype(int))
    model = aj.models.poisson_regression.from_formula(df, "count ~ x1", exposure="years")
    np.testing.assert_allclose(model.data["offset"], np.log(df.years), rtol=1e-6)


@pytest.mark.parametrize("formula, match", [
    ("x1 + x3", "formula must be a string like"),
    ("y ~ x1 + nothere", "nothere"),
    ("y ~ 1", "no feature columns"),
    ("x2 ~ x1", "left side .* expands to"),
])
def test_bad_formulas(frame, formula, match):
    with pytest.raises(ValueError, match=match):
        aj.models.logistic_regression.from_formula(frame, formula)
    with pytest.raises(ValueError, match="kind must be one of"):
        aj.models.from_formula("gaussian", frame, "y ~ x1")
    with pytest.raises(ValueError, match="intercept"):
        aj.models.from_formula("logistic", frame, "y ~ x1", intercept=False)


@pytest.mark.parametrize("formula, token", [("y ~ x1 +", "+"), ("y ~ (x1", "("), ("y ~ x1 ~ x3", "~")])
def test_a_formula_that_does_not_parse_is_one_plain_line(frame, formula, token):
    """formulaic's syntax errors span three lines with terminal colour codes around the bad token; the
    error (and so `advi-jax fit --formula`'s one-line message) has neither."""
    with pytest.raises(ValueError, match="cannot parse formula") as info:
        aj.models.logistic_regression.from_formula(frame, formula)
    text = str(info.value)
    assert "\n" not in text and "\x1b" not in text and "\u29db" not in text
    assert f">>{token}<<" in text


def test_new_rows_with_an_unseen_level_or_a_missing_column_are_refused(frame):
    """formulaic encodes a level the training data never had as all-zero dummies, i.e. as the reference
    level ('a'): predictions for such rows would silently be those of another group."""
    model = aj.models.logistic_regression.from_formula(frame, "y ~ x1 + C(x2) + x1:x3")
    draws = {"intercept": np.zeros(2), "beta": np.ones((2, 4))}
    unseen = pd.DataFrame({"x1": [1.0, 0.0], "x3": [2.0, 1.0], "x2": ["c", "zzz"]})
    with pytest.raises(ValueError, match=r"x2.*zzz|zzz.*x2"):
        model.design_matrix(unseen)
    with pytest.raises(ValueError, match="zzz"):
        aj.models.predict(model, draws, unseen)
    with pytest.raises(ValueError, match="x3"):
        model.design_matrix(pd.DataFrame({"x1": [1.0], "x2": ["a"]}))
