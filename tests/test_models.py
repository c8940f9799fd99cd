"""Tests for advi_jax.models: log joints vs scipy, stability, standardisation, predictions, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

import advi_jax as aj
from advi_jax.models import (
    coefficients_on_original_scale,
    logistic_regression,
    parameter_labels,
    poisson_regression,
    predict,
)


def _data(kind, n=40, d=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(loc=2.0, scale=3.0, size=(n, d))
    eta = 0.3 + (x - 2.0) / 3.0 @ np.linspace(-1, 1, d)
    y = rng.binomial(1, special.expit(eta)) if kind == "logistic" else rng.poisson(np.exp(eta))
    return x, y.astype(float)


def _reference(kind, x, y, params, *, prior_scale, intercept_scale, hierarchical, offset=None):
    xs = (x - x.mean(0)) / x.std(0)
    beta = np.asarray(params["beta"], np.float64)
    a = float(params["intercept"])
    eta = a + xs @ beta + (0.0 if offset is None else offset)
    if kind == "logistic":
        lik = stats.bernoulli.logpmf(y, special.expit(eta)).sum()
    else:
        lik = stats.poisson.logpmf(y, np.exp(eta)).sum()
    prior = stats.norm.logpdf(a, 0, intercept_scale)
    if hierarchical:
        tau = float(params["tau"])
        prior += stats.halfnorm.logpdf(tau, scale=prior_scale) + stats.norm.logpdf(beta, 0, tau).sum()
    else:
        prior += stats.norm.logpdf(beta, 0, prior_scale).sum()
    return lik + prior


@pytest.mark.parametrize("kind", ["logistic", "poisson"])
@pytest.mark.parametrize("hierarchical", [False, True])
def test_log_joint_matches_scipy(kind, hierarchical):
    x, y = _data(kind)
    build = logistic_regression if kind == "logistic" else poisson_regression
    model = build(x, y, prior_scale=1.7, intercept_scale=4.0, hierarchical_scale=hierarchical)
    assert isinstance(model, aj.Model)
    assert model.dim == 4 + hierarchical
    log_density = jax.jit(model.log_density)
    rng = np.random.default_rng(1)
    for _ in range(3):
        zeta = rng.normal(scale=0.7, size=model.dim)
        params = model.to_constrained(zeta)
        want = _reference(kind, x, y, params, prior_scale=1.7, intercept_scale=4.0, hierarchical=hierarchical)
        np.testing.assert_allclose(model.log_joint_at(params), want, rtol=2e-5)
        log_det = zeta[-1] if hierarchical else 0.0  # tau through exp
        np.testing.assert_allclose(log_density(zeta), want + log_det, rtol=2e-5)


def test_poisson_exposure_and_offset():
    x, y = _data("poisson")
    exposure = np.linspace(0.5, 2.0, len(y))
    m1 = poisson_regression(x, y, exposure=exposure)
    m2 = poisson_regression(x, y, offset=np.log(exposure))
    zeta = np.random.default_rng(3).normal(size=m1.dim)
    params = m1.to_constrained(zeta)
    want = _reference("poisson", x, y, params, prior_scale=1.0, intercept_scale=10.0, hierarchical=False,
                      offset=np.log(exposure))
    np.testing.assert_allclose(m1.log_joint_at(params), want, rtol=2e-5)
    np.testing.assert_allclose(m2.log_joint_at(params), want, rtol=2e-5)
    with pytest.raises(ValueError, match="either exposure or offset"):
        poisson_regression(x, y, exposure=exposure, offset=exposure)
    with pytest.raises(ValueError, match=r"exposure must be positive; exposure\[0\]"):
        poisson_regression(x, y, exposure=np.zeros(len(y)))


@pytest.mark.parametrize("kind", ["logistic", "poisson"])
@pytest.mark.parametrize("eta", [-50.0, 50.0])
def test_stable_at_extreme_eta(kind, eta):
    x = np.array([[1.0], [-1.0], [0.5]])
    y = np.array([1.0, 0.0, 1.0]) if kind == "logistic" else np.array([3.0, 0.0, 1.0])
    build = logistic_regression if kind == "logistic" else poisson_regression
    model = build(x, y, standardize=False, intercept=True)
    params = {"intercept": jnp.asarray(eta), "beta": jnp.zeros(1)}
    value, grads = jax.value_and_grad(model.log_joint_at)(params)
    assert np.isfinite(value)
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
    # the likelihood is exactly right at the extreme too
    if kind == "logistic":
        want = np.sum(y * eta - np.logaddexp(0.0, eta))
    else:
        want = np.sum(y * eta - np.exp(eta) - special.gammaln(y + 1))
    prior = stats.norm.logpdf(eta, 0, 10.0) + stats.norm.logpdf(0.0, 0, 1.0 if kind == "poisson" else 2.5)
    np.testing.assert_allclose(value, want + prior, rtol=1e-5)


def test_standardisation_recorded_and_used():
    x, y = _data("logistic")
    x[:, 2] = 5.0  # a constant column keeps scale 1
    model = logistic_regression(x, y, feature_names=["a", "b", "c"])
    np.testing.assert_allclose(model.data["x_mean"], x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(model.data["x_scale"], [x[:, 0].std(), x[:, 1].std(), 1.0], rtol=1e-5)
    np.testing.assert_allclose(model.data["x"].mean(0), 0.0, atol=1e-5)
    assert model.info.standardize and model.info.feature_names == ("a", "b", "c")
    raw = logistic_regression(x, y, standardize=False)
    np.testing.assert_allclose(raw.data["x"], x, rtol=1e-6)
    # predictions on the training X reproduce the in-model linear predictor
    draws = {"intercept": jnp.array([0.2, -0.1]), "beta": jnp.array([[1.0, -0.5, 0.3], [0.1, 0.2, 0.0]])}
    pred = predict(model, draws, x)
    eta = draws["intercept"][:, None] + draws["beta"] @ model.data["x"].T
    np.testing.assert_allclose(pred.draws, jax.nn.sigmoid(eta), rtol=1e-5)
    # coefficients back on the original scale give the same eta on raw features
    orig = coefficients_on_original_scale(model, draws)
    np.testing.assert_allclose(orig["intercept"][:, None] + orig["beta"] @ x.T, eta, rtol=1e-4, atol=1e-4)
    assert parameter_labels(model) == {"intercept": ("(intercept)",), "beta": ("a", "b", "c")}


@pytest.mark.parametrize("kind", ["logistic", "poisson"])
def test_predict_shapes_and_monotone(kind, key):
    x, y = _data(kind, d=2)
    build = logistic_regression if kind == "logistic" else poisson_regression
    model = build(x, y, hierarchical_scale=True)
    draws = {"intercept": 0.1 * jax.random.normal(key, (50,)),
             "beta": jnp.abs(jax.random.normal(jax.random.fold_in(key, 1), (50, 2))) + 0.1,
             "tau": jnp.ones(50)}
    grid = np.column_stack([np.linspace(-5, 10, 7), np.full(7, 2.0)])
    pred = predict(model, draws, grid, levels=(0.1, 0.5, 0.9))
    assert pred.mean.shape == (7,) and pred.quantiles.shape == (3, 7) and pred.draws.shape == (50, 7)
    assert np.all(np.diff(np.asarray(pred.mean)) > 0)  # every beta > 0: increasing in x_0
    assert np.all(np.diff(np.asarray(pred.quantiles), axis=0) >= 0)
    if kind == "logistic":
        assert np.all((pred.draws >= 0) & (pred.draws <= 1))
    else:
        assert np.all(pred.draws > 0)
        doubled = predict(model, draws, grid, exposure=np.full(7, 2.0))
        np.testing.assert_allclose(doubled.mean, 2 * pred.mean, rtol=1e-5)


def test_model_is_jittable_with_data_as_argument():
    x, y = _data("logistic")
    model = logistic_regression(x, y)
    leaves = jax.tree_util.tree_leaves(model)
    assert len(leaves) == 4  # x, y, x_mean, x_scale travel as data
    fn = jax.jit(lambda m, z: m.log_density(z))
    z = jnp.zeros(model.dim)
    np.testing.assert_allclose(fn(model, z), model.log_density(z), rtol=1e-6)
    batch = jax.vmap(model.log_density)(jnp.zeros((5, model.dim)))
    assert batch.shape == (5,)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((np.ones(5), np.ones(5)), {}, r"X must have shape \(N, D\)"),
        ((np.ones((5, 2)), np.ones(4)), {}, r"y must have shape \(5,\)"),
        ((np.array([[1.0, np.nan], [0.0, 1.0]]), np.ones(2)), {}, r"X has a non-finite value nan at row 0, column 1"),
        ((np.ones((3, 1)), np.array([0.0, 1.0, 2.0])), {}, r"y must contain only 0 and 1.*y\[2\] = 2"),
        ((np.ones((3, 1)), np.array([0.0, 1.0, np.inf])), {}, r"y has a non-finite value"),
        ((np.ones((3, 1)), np.ones(3)), {"prior_scale": -1.0}, r"prior_scale must be positive"),
        ((np.ones((3, 1)), np.ones(3)), {"feature_names": ["a", "b"]}, r"feature_names must have one name"),
    ],
)
def test_logistic_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        logistic_regression(*args, **kwargs)


def test_poisson_bad_input_and_predict_errors():
    with pytest.raises(ValueError, match=r"non-negative integer counts.*y\[1\] = 1.5"):
        poisson_regression(np.ones((3, 1)), np.array([0.0, 1.5, 2.0]))
    with pytest.raises(ValueError, match=r"non-negative integer counts.*y\[0\] = -1"):
        poisson_regression(np.ones((3, 1)), np.array([-1.0, 1.0, 2.0]))
    model = poisson_regression(np.arange(6.0).reshape(3, 2), np.array([0.0, 1.0, 2.0]))
    draws = {"intercept": jnp.zeros(4), "beta": jnp.zeros((4, 2))}
    with pytest.raises(ValueError, match="X_new must have 2 columns"):
        predict(model, draws, np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"draws is missing parameters \['beta'\]"):
        predict(model, {"intercept": jnp.zeros(4)}, np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"draws\['beta'\] must have shape"):
        predict(model, {"intercept": jnp.zeros(4), "beta": jnp.zeros(2)}, np.ones((3, 2)))
    with pytest.raises(TypeError, match="model must come from"):
        predict(aj.Model(lambda p: 0.0, {"beta": aj.real()}), draws, np.ones((3, 2)))


def test_predict_reads_a_dataframe_by_its_column_names():
    """A DataFrame of new rows is matched to the model's features by name: another column order (or an
    extra column such as the target) gave other numbers silently, or an error about the column count."""
    pd = pytest.importorskip("pandas")
    x, y = _data("logistic", d=3)
    frame = pd.DataFrame(x, columns=["age", "dose", "weight"])
    model = logistic_regression(frame, y)
    draws = {"intercept": jnp.full(4, 0.2), "beta": jnp.tile(jnp.array([1.0, -2.0, 0.5]), (4, 1))}
    new = frame.iloc[:5]
    expected = np.asarray(predict(model, draws, new.to_numpy()).mean)
    reordered = new[["weight", "age", "dose"]].assign(y=y[:5])
    np.testing.assert_allclose(np.asarray(predict(model, draws, reordered).mean), expected, rtol=1e-6)
    mean, scale = (np.asarray(model.data[k], np.float64) for k in ("x_mean", "x_scale"))
    eta = 0.2 + ((x[:5] - mean) / scale) @ np.array([1.0, -2.0, 0.5])
    np.testing.assert_allclose(expected, special.expit(eta), rtol=1e-5)
    with pytest.raises(ValueError, match=r"X_new lacks the model's feature columns \['dose'\]"):
        predict(model, draws, new[["age", "weight"]])
    # columns that name no feature: read by position, as an array is
    unnamed = pd.DataFrame(new.to_numpy())
    np.testing.assert_allclose(np.asarray(predict(model, draws, unnamed).mean), expected, rtol=1e-6)


def test_predict_names_bad_levels():
    x, y = _data("logistic", d=2)
    model = logistic_regression(x, y)
    draws = {"intercept": jnp.zeros(4), "beta": jnp.zeros((4, 2))}
    with pytest.raises(TypeError, match=r"levels must be quantile levels in \[0, 1\].*got 'low'"):
        predict(model, draws, x[:3], levels="low")
    with pytest.raises(ValueError, match=r"levels must be quantile levels in \[0, 1\]"):
        predict(model, draws, x[:3], levels=(0.1, float("nan")))


def test_bundled_data_models_build():
    from advi_jax.data import load_dataset

    x, y, names = load_dataset("breast_cancer")
    model = logistic_regression(x, y, feature_names=names)
    assert model.dim == 31 and np.isfinite(model.log_density(jnp.zeros(31)))
    x, y, names = load_dataset("randhie")
    model = poisson_regression(x, y, feature_names=names)
    assert model.dim == 10 and np.isfinite(model.log_density(jnp.zeros(10)))


def test_package_exports_resolve():
    import advi_jax

    for name in advi_jax.__all__:
        assert getattr(advi_jax, name) is not None, name
    assert {"from_numpyro", "data", "models"} <= set(advi_jax.__all__)
    assert advi_jax.models.logistic_regression is logistic_regression
