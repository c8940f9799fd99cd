"""Ready probit and negative-binomial regressions (advi_jax.models.regression_more, glm_more)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

import advi_jax as aj
from advi_jax.models import negbin_regression, posterior_predictive, predict, predictive_check, probit_regression
from advi_jax.models.glm_more import negbin_log_lik, probit_log_lik
from advi_jax.models.regression import dispersion_log_prior


def test_negbin_log_lik_matches_scipy_and_tends_to_poisson():
    y = np.array([0, 1, 3, 10, 40, 300], np.float32)
    for phi in (1e-3, 0.4, 3.0, 50.0, 1e5):
        for eta in (-3.0, 0.0, 2.5):
            mu = np.exp(eta)
            ref = stats.nbinom.logpmf(y, phi, phi / (phi + mu))
            got = np.asarray(negbin_log_lik(jnp.asarray(y), jnp.float32(eta), jnp.float32(phi)), np.float64)
            np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-4)
    # phi -> infinity: Poisson, and finite (no inf * 0) even where exp(log phi) overflows float32
    got = negbin_log_lik(jnp.asarray(y), jnp.float32(1.0), jnp.float32(3e38))
    np.testing.assert_allclose(got, stats.poisson.logpmf(y, np.e), rtol=1e-4, atol=1e-3)
    # the gradient in (eta, phi) is finite at extreme dispersions
    g = jax.grad(lambda e, p: jnp.sum(negbin_log_lik(jnp.asarray(y), e, p)), (0, 1))
    for phi in (1e-6, 1e12):
        assert all(np.isfinite(float(v)) for v in g(jnp.float32(0.5), jnp.float32(phi)))


def test_probit_log_lik_matches_scipy_in_the_tails():
    eta = np.array([-40.0, -8.0, -1.0, 0.0, 1.0, 8.0, 40.0], np.float32)
    for y in (0.0, 1.0):
        s = 2 * y - 1
        got = np.asarray(probit_log_lik(jnp.float32(y), jnp.asarray(eta)), np.float64)
        np.testing.assert_allclose(got, stats.norm.logcdf(s * eta.astype(np.float64)), rtol=1e-5, atol=1e-7)


def test_dispersion_prior_is_a_density_with_the_stated_tail_masses():
    total, _ = integrate.quad(lambda p: np.exp(float(dispersion_log_prior(jnp.float64(p), 1.0))), 0, np.inf,
                              limit=200)
    assert abs(total - 1.0) < 1e-4
    below_1, _ = integrate.quad(lambda p: np.exp(float(dispersion_log_prior(jnp.float64(p), 1.0))), 0, 1.0)
    assert abs(below_1 - np.exp(-1.0)) < 1e-4  # P(phi < 1) = P(kappa > 1) = e^-1


def test_models_shapes_priors_and_bad_input():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 2))
    nb = negbin_regression(x, rng.poisson(2.0, 30), exposure=np.ones(30), dispersion_scale=0.5)
    assert nb.names == ("intercept", "beta", "phi") and nb.info.kind == "negbin" and nb.info.dispersion_scale == 0.5
    # log joint = Normal priors + dispersion prior + NB likelihood, by hand
    params = {"intercept": jnp.float32(0.3), "beta": jnp.asarray([0.2, -0.1], jnp.float32), "phi": jnp.float32(1.7)}
    eta = nb.data["x"] @ params["beta"] + 0.3 + nb.data["offset"]
    by_hand = (stats.norm.logpdf(0.3, 0, 10) + stats.norm.logpdf([0.2, -0.1], 0, 1).sum()
               + float(dispersion_log_prior(jnp.float32(1.7), 0.5)) + float(jnp.sum(negbin_log_lik(nb.data["y"], eta, 1.7))))
    np.testing.assert_allclose(float(nb.log_joint(params, nb.data)), by_hand, rtol=1e-5)
    pr = probit_regression(x, (x[:, 0] > 0) * 1.0)
    assert pr.names == ("intercept", "beta") and repr(pr).startswith("ProbitRegression")
    with pytest.raises(ValueError, match="counts for negbin"):
        negbin_regression(x, np.full(30, 1.5))
    with pytest.raises(ValueError, match="0 and 1 for probit"):
        probit_regression(x, np.full(30, 2.0))
    with pytest.raises(ValueError, match="dispersion_scale"):
        negbin_regression(x, np.ones(30), dispersion_scale=0.0)
    with pytest.raises(ValueError, match="exposure/offset apply only"):
        aj.models.linear_predictor(pr, {"intercept": jnp.zeros(2), "beta": jnp.zeros((2, 2))}, x, exposure=np.ones(30))


def test_predictions_and_negbin_replications_have_the_nb2_variance():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 1))
    nb = negbin_regression(x, np.arange(4), standardize=False)
    s = 4000
    draws = {"intercept": jnp.full((s,), 1.0), "beta": jnp.zeros((s, 1)), "phi": jnp.full((s,), 2.0)}
    np.testing.assert_allclose(predict(nb, draws, x).mean, np.e, rtol=1e-5)
    y_rep = np.asarray(posterior_predictive(nb, draws, jax.random.key(0)))
    mu = np.e
    assert abs(y_rep.mean() - mu) < 4 * np.sqrt((mu + mu**2 / 2) / y_rep.size)
    var = y_rep.var()
    assert abs(var / (mu + mu**2 / 2.0) - 1) < 0.06  # NB2 variance, not Poisson's mu (ratio 2.4)
    pr = probit_regression(x, np.array([0, 1, 0, 1.0]), standardize=False)
    d = {"intercept": jnp.full((3,), 0.5), "beta": jnp.zeros((3, 1))}
    np.testing.assert_allclose(predict(pr, d, x).mean, stats.norm.cdf(0.5), rtol=1e-5)


def test_overdispersion_message_points_to_the_negbin_model(key):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(400, 1))
    y = rng.negative_binomial(0.7, 0.7 / (0.7 + np.exp(1.0 + 0.3 * x[:, 0])))
    model = aj.models.poisson_regression(x, y)
    draws = {"intercept": jnp.full((200,), float(np.log(y.mean()))), "beta": jnp.full((200, 1), 0.3)}
    check = predictive_check(model, draws, key)
    assert check.overdispersed and "aj.models.negbin_regression" in check.message
    nb = negbin_regression(x, y)
    nb_check = predictive_check(nb, dict(draws, phi=jnp.full((200,), 0.7)), key)
    assert not nb_check.overdispersed and nb_check.p_values["variance / mean"] > 0.01


def test_from_formula_builds_both():
    pd = pytest.importorskip("pandas")
    pytest.importorskip("formulaic")
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"a": rng.normal(size=50), "g": rng.choice(["u", "v"], 50), "n": rng.poisson(2.0, 50),
                       "b": rng.integers(0, 2, 50), "t": rng.uniform(1, 2, 50)})
    nb = negbin_regression.from_formula(df, "n ~ a + C(g)", exposure="t")
    assert nb.info.kind == "negbin" and "offset" in nb.data and nb.dim == 4
    assert probit_regression.from_formula(df, "b ~ a").info.kind == "probit"
