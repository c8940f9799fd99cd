"""Posterior predictive draws of y and the predictive check (over-dispersion flag)."""

import numpy as np
import pytest

import advi_jax as aj


def _poisson_data(n, overdispersed, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    rate = np.exp(0.5 + 0.3 * x[:, 0] - 0.2 * x[:, 1])
    if overdispersed:  # negative binomial with shape 1.5: variance = rate + rate^2 / 1.5
        rate = rate * rng.gamma(1.5, 1 / 1.5, n)
    return x, rng.poisson(rate)


def _true_draws(model, s, intercept, beta):
    sd = np.asarray(model.data["x_scale"])
    mean = np.asarray(model.data["x_mean"])
    b_std = np.asarray(beta) * sd
    a_std = intercept + np.asarray(beta) @ mean
    return {"intercept": np.full(s, a_std), "beta": np.tile(b_std, (s, 1))}


def test_posterior_predictive_moments_and_new_rows(key):
    x, y = _poisson_data(500, False)
    model = aj.models.poisson_regression(x, y)
    draws = _true_draws(model, 2000, 0.5, [0.3, -0.2])
    x_new = np.array([[0.0, 0.0], [1.0, -1.0]])
    y_rep = np.asarray(aj.models.posterior_predictive(model, draws, key, x_new, exposure=np.array([1.0, 2.0])))
    rate = np.exp(0.5 + x_new @ np.array([0.3, -0.2])) * np.array([1.0, 2.0])
    assert y_rep.shape == (2000, 2) and np.all(y_rep == np.round(y_rep)) and y_rep.min() >= 0
    se = np.sqrt(rate / 2000)
    assert np.all(np.abs(y_rep.mean(axis=0) - rate) < 5 * se)
    assert np.all(np.abs(y_rep.var(axis=0) / rate - 1) < 0.15)
    train = aj.models.posterior_predictive(model, draws, key)
    assert train.shape == (2000, 500)
    xl = np.random.default_rng(1).normal(size=(300, 1))
    logit = aj.models.logistic_regression(xl, (xl[:, 0] > 0) * 1.0)
    p_draws = {"intercept": np.zeros(3000), "beta": np.ones((3000, 1))}
    at_mean = np.array([[float(logit.data["x_mean"][0])]])
    y_new = np.asarray(aj.models.posterior_predictive(logit, p_draws, key, at_mean))
    assert set(np.unique(y_new)) <= {0.0, 1.0} and abs(y_new.mean() - 0.5) < 5 * np.sqrt(0.25 / 3000)


@pytest.mark.parametrize("overdispersed", [False, True])
def test_predictive_check_flags_overdispersion(overdispersed, key):
    x, y = _poisson_data(1500, overdispersed, seed=3)
    model = aj.models.poisson_regression(x, y)
    check = aj.models.predictive_check(model, _true_draws(model, 400, 0.5, [0.3, -0.2]), key)
    assert check.overdispersed is overdispersed
    assert ("negative-binomial" in check.message) is overdispersed
    ratio = y.var(ddof=1) / y.mean()
    assert check.observed["variance / mean"] == pytest.approx(ratio, rel=1e-6)
    assert check.y_rep.shape == (400, 1500)


def test_predictive_check_logistic_and_errors(key):
    x, y, names = aj.data.load_dataset("breast_cancer")
    model = aj.models.logistic_regression(x[:, :2], y)
    draws = {"intercept": np.zeros(50), "beta": np.zeros((50, 2))}
    check = aj.models.predictive_check(model, draws, key)
    # all-zero coefficients predict a rate of 0.5; the data have 212/569 ones
    assert check.observed["share of ones"] == pytest.approx(212 / 569)
    assert check.p_values["share of ones"] > 0.99 and not check.overdispersed
    with pytest.raises(TypeError, match="key"):
        aj.models.posterior_predictive(model, draws, 0)
    with pytest.raises(ValueError, match="missing parameters"):
        aj.models.posterior_predictive(model, {"beta": np.zeros((5, 2))}, key)


def test_predictive_check_figure_draws_observed_and_replicated(key):
    from advi_jax.cli.fit_plots import predictive_check_figure

    x, y = _poisson_data(400, True, seed=5)
    model = aj.models.poisson_regression(x, y)
    check = aj.models.predictive_check(model, _true_draws(model, 100, 0.5, [0.3, -0.2]), key)
    fig = predictive_check_figure(check)
    left, right = fig.get_axes()[:2]
    bars = [p.get_height() for p in left.patches]
    np.testing.assert_allclose(bars[:3], [(y == c).mean() for c in range(3)])  # observed count frequencies
    assert "OVER-DISPERSED" in right.get_title()
    assert right.get_lines()[-1].get_xdata()[0] == pytest.approx(check.observed["variance / mean"])
