"""to_arviz: posterior draws (with deterministic sites and feature coordinates), log p / log q per
draw, the fit's report as attributes, and ArviZ's own functions on the result."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

az = pytest.importorskip("arviz", reason="to_arviz needs the arviz extra (pip install '.[arviz]')")

import advi_jax as aj  # noqa: E402
from advi_jax.interop.arviz import to_arviz  # noqa: E402

# Normal mean with known sd: y_i ~ N(mu, 1), mu ~ N(0, 10^2): the posterior is Gaussian.
Y = np.array([1.2, 0.4, 2.1, 1.7, 0.9, 1.5])
POST_VAR = 1.0 / (1.0 / 100.0 + len(Y))
POST_MEAN = POST_VAR * Y.sum()


@pytest.fixture(scope="module")
def conjugate_result():
    return _conjugate_fit()


def _conjugate_fit():
    def log_joint(p, y):
        return -0.5 * p["mu"] ** 2 / 100.0 - 0.5 * jnp.sum((y - p["mu"]) ** 2)

    model = aj.Model(log_joint, {"mu": aj.real()}, data=jnp.asarray(Y, jnp.float32))
    return aj.fit(model, key=jax.random.key(0), num_steps=1500, progress=False)


def test_conjugate_posterior_and_sample_stats(conjugate_result):
    result = conjugate_result
    idata = to_arviz(result, num_draws=4000, key=jax.random.key(1))
    mu = idata.posterior["mu"].values
    assert mu.shape == (1, 4000)
    se = math.sqrt(POST_VAR / 4000)
    assert abs(mu.mean() - POST_MEAN) < 5 * se + 0.02
    assert abs(mu.std() - math.sqrt(POST_VAR)) < 0.05 * math.sqrt(POST_VAR)
    summary = az.summary(idata, kind="stats")
    assert abs(summary.loc["mu", "mean"] - POST_MEAN) < 0.03
    stats = idata.sample_stats
    lp, log_q, log_w = (stats[k].values[0] for k in ("lp", "log_q", "log_weight"))
    # log q is the Gaussian density of the draw: check it against the closed form of q
    loc = float(result.family.mean(result.params)[0])
    sd = float(jnp.sqrt(result.family.variance(result.params))[0])
    zeta = mu[0]
    expected_log_q = -0.5 * ((zeta - loc) / sd) ** 2 - math.log(sd) - 0.5 * math.log(2 * math.pi)
    np.testing.assert_allclose(log_q, expected_log_q, rtol=1e-4, atol=1e-4)
    expected_lp = -0.5 * zeta ** 2 / 100.0 - 0.5 * ((Y[None, :] - zeta[:, None]) ** 2).sum(axis=1)
    np.testing.assert_allclose(lp, expected_lp, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(log_w, lp - log_q, rtol=1e-6, atol=1e-5)
    # q is (nearly) the exact posterior: the mean log weight is the ELBO, near log Z
    log_z = (0.5 * math.log(2 * math.pi * POST_VAR) + 0.5 * POST_MEAN ** 2 / POST_VAR - 0.5 * (Y ** 2).sum())
    assert abs(log_w.mean() - log_z) < 0.05
    attrs = idata.posterior.attrs
    assert attrs["inference_library"] == "advi_jax" and attrs["khat"] == pytest.approx(result.khat)
    assert attrs["num_gradient_evals"] == result.num_gradient_evals
    np.testing.assert_array_equal(attrs["elbo"], np.asarray(result.elbo, np.float64))


def test_regression_coordinates_and_plots(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    x, y, names = aj.data.load_dataset("breast_cancer")
    model = aj.models.logistic_regression(x[:, :3], y, feature_names=names[:3])
    result = aj.fit(model, key=jax.random.key(0), num_steps=300, progress=False)
    idata = to_arviz(result, num_draws=200, key=jax.random.key(2))
    assert idata.posterior["beta"].dims == ("chain", "draw", "feature")
    assert list(idata.posterior["feature"].values) == list(names[:3])
    np.testing.assert_array_equal(idata.observed_data["y"].values, y)
    summary = az.summary(idata, var_names=["beta"], kind="stats")
    assert [f"beta[{n}]" for n in names[:3]] == list(summary.index)
    az.plot_posterior(idata, var_names=["beta"])
    axes = az.plot_forest(idata, var_names=["beta", "intercept"])
    assert len(axes) >= 1
    idata.to_netcdf(tmp_path / "fit.nc")
    assert az.from_netcdf(tmp_path / "fit.nc").posterior.attrs["khat"] == pytest.approx(result.khat)


def test_numpyro_deterministic_sites_in_posterior():
    numpyro = pytest.importorskip("numpyro")
    import numpyro.distributions as dist

    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
        sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
        numpyro.deterministic("snr", mu / sigma)
        with numpyro.plate("n", y.shape[0]):
            numpyro.sample("y", dist.Normal(mu, sigma), obs=y)

    m = aj.from_numpyro(model, Y)
    result = aj.fit(m, key=jax.random.key(0), num_steps=200, progress=False, diagnostics=False)
    idata = to_arviz(result, num_draws=300, key=jax.random.key(3))
    post = idata.posterior
    assert set(post.data_vars) == {"mu", "sigma", "snr"}
    np.testing.assert_allclose(post["snr"].values, post["mu"].values / post["sigma"].values, rtol=1e-5)
    assert float(post["sigma"].min()) > 0
    # the draws are result.sample's for the same key (one compiled program, deterministic sites inside it)
    same = result.sample(jax.random.key(3), 300)
    for name in ("mu", "sigma"):
        np.testing.assert_array_equal(post[name].values[0], np.asarray(same[name]))


@pytest.mark.parametrize("bad, err", [(1, ValueError), (2.5, TypeError), (True, TypeError)])
def test_bad_num_draws(bad, err, conjugate_result):
    result = conjugate_result
    with pytest.raises(err, match="num_draws"):
        to_arviz(result, num_draws=bad)


def test_formula_model_names_are_coordinates():
    pd = pytest.importorskip("pandas", reason="formulas need the formula extra")
    pytest.importorskip("formulaic", reason="formulas need the formula extra")
    from types import SimpleNamespace

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"x": rng.normal(size=50), "g": rng.choice(["a", "b", "c"], 50)})
    df["y"] = (df.x > 0).astype(float)
    model = aj.models.logistic_regression.from_formula(df, "y ~ x + C(g)")
    family = aj.MeanFieldGaussian()
    params = family.init(jax.random.key(0), model.dim)
    result = SimpleNamespace(model=model, family=family, params=params, elbo=np.zeros(3), khat=0.1, iw_elbo=-1.0,
                             iw_elbo_se=0.01, num_gradient_evals=3, estimator="reparam", verdict="good",
                             final_elbo=0.0)
    idata = to_arviz(result, num_draws=20, key=jax.random.key(1))
    assert list(idata.posterior["feature"].values) == ["x", "C(g)[T.b]", "C(g)[T.c]"]
    assert idata.posterior["beta"].shape == (1, 20, 3)


def test_grouped_model_names_its_groups():
    """A varying-intercept GLM's `u` is labelled by its groups, as in `summary()` (not u_dim_0 = 0, 1, ...)."""
    rng = np.random.default_rng(0)
    state = rng.choice(["CA", "NY", "TX"], size=120)
    x = rng.normal(size=(120, 2))
    y = rng.poisson(np.exp(0.5 + x @ [0.3, -0.2] + (state == "CA") * 0.5))
    model = aj.models.poisson_regression(x, y, group=state, feature_names=["a", "b"])
    result = aj.fit(model, key=jax.random.key(0), progress=False, diagnostics=False)
    idata = to_arviz(result, num_draws=50, key=jax.random.key(1))
    post = idata.posterior
    assert post["u"].dims == ("chain", "draw", "group")
    assert list(post["group"].values) == ["CA", "NY", "TX"]
    assert list(post["feature"].values) == ["a", "b"]
    rows = az.summary(idata, var_names=["u"], kind="stats").index
    assert list(rows) == ["u[CA]", "u[NY]", "u[TX]"]
    # the labels follow the entries: u[CA] is result.sample's u[:, 0] for the same key
    np.testing.assert_array_equal(post["u"].sel(group="CA").values[0],
                                  np.asarray(result.sample(jax.random.key(1), 50)["u"][:, 0]))


def test_batch_of_keys_is_named(conjugate_result):
    """Three keys instead of one: the argument is named (not JAX's error about key data deep inside)."""
    with pytest.raises(TypeError, match=r"key must be a single PRNG key .*\(3,\)"):
        to_arviz(conjugate_result, num_draws=10, key=jax.random.split(jax.random.key(0), 3))


def test_raw_key_gives_the_draws_of_sample(conjugate_result):
    """A raw uint32 key (jax.random.PRNGKey, or its NumPy copy) works as it does for `Result.sample`."""
    raw = np.asarray(jax.random.PRNGKey(4))
    idata = to_arviz(conjugate_result, num_draws=10, key=raw)
    np.testing.assert_array_equal(idata.posterior["mu"].values[0],
                                  np.asarray(conjugate_result.sample(raw, 10)["mu"]))
