"""Robust fitting: stress models with honest k-hat, the non-finite skip, step-size search,
random init, float64, and errors for bad models."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import advi_jax as aj

FIT = dict(progress=False, warn=False, num_diagnostic_draws=2000)


def _fit(model, **kwargs):
    return aj.fit(model, key=jax.random.key(0), **{**FIT, **kwargs})


def _all_finite(tree):
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(tree))


def test_separable_logistic_finishes_without_nan_and_khat_flags_it():
    x = jnp.concatenate([jnp.linspace(-2.0, -0.1, 20), jnp.linspace(0.1, 2.0, 20)])
    X = jnp.stack([jnp.ones_like(x), x], axis=1)
    y = (x > 0).astype(jnp.float32)

    def log_joint(p, data):  # flat prior: the posterior is improper along the separating direction
        X, y = data
        eta = X @ p["beta"]
        return jnp.sum(y * jax.nn.log_sigmoid(eta) + (1.0 - y) * jax.nn.log_sigmoid(-eta))

    model = aj.Model(log_joint, {"beta": aj.real((2,))}, data=(X, y))
    with pytest.warns(aj.DiagnosticWarning):
        result = aj.fit(model, key=jax.random.key(0), num_steps=2000, progress=False, num_diagnostic_draws=2000)
    assert _all_finite(result.params)
    assert result.khat > 0.7
    assert "unreliable" in result.summary()


def test_poisson_with_huge_counts_and_features_finishes_finite():
    rng = np.random.default_rng(0)
    X = rng.uniform(0.0, 1.0, (100, 2)) * 1e6
    y = rng.poisson(np.exp(X @ (np.array([6.9, 6.9]) / 1e6))).astype(np.float32)
    assert y.max() > 5e5

    def log_joint(p, data):
        X, y = data
        eta = X @ p["beta"]
        return jnp.sum(y * eta - jnp.exp(eta) - jax.scipy.special.gammaln(y + 1.0)) - 0.5 * jnp.sum(p["beta"] ** 2)

    model = aj.Model(log_joint, {"beta": aj.real((2,))}, data=(jnp.asarray(X, jnp.float32), jnp.asarray(y)))
    # The default start (Laplace approximation, whitened coordinates) puts the step sizes on the
    # posterior's scale (~1e-9 here): the fit recovers the coefficients without a skipped step.
    good = _fit(model, family="meanfield", num_steps=1000)
    assert good.init_method == "laplace" and good.num_nonfinite == 0
    np.testing.assert_allclose(np.asarray(good.family.mean(good.params)) * 1e6, [6.9, 6.9], atol=0.01)
    # From zero, steps of any usual size overflow exp(eta): they are skipped and reported, the
    # fit stops with the last finite parameters, and the diagnostics say not to trust it.
    result = _fit(model, family="meanfield", num_steps=1000, init=None)
    assert _all_finite(result.params)
    assert result.num_nonfinite > 0
    assert str(result.num_nonfinite) in result.stop_reason
    assert not result.khat < 0.7


def test_neals_funnel_meanfield_khat_high():
    def log_joint(p):
        v, x = p["v"], p["x"]
        return jax.scipy.stats.norm.logpdf(v, 0.0, 3.0) + jnp.sum(jax.scipy.stats.norm.logpdf(x, 0.0, jnp.exp(v / 2)))

    model = aj.Model(log_joint, {"v": aj.real(), "x": aj.real((9,))})
    # k-hat near 0.8-0.95 here; from 2,000 draws its estimate ranged 0.60-1.17 over seeds, so 16,384
    result = _fit(model, family="meanfield", num_steps=2000, num_diagnostic_draws=16384)
    assert _all_finite(result.params)
    assert result.khat > 0.7


def test_nan_region_is_skipped_and_counted():
    def log_joint(p):  # NaN on thin stripes the optimiser crosses on its way to x = 3
        x = p["x"]
        return jnp.where(jnp.sin(50.0 * x) > 0.95, jnp.nan, -0.5 * (x - 3.0) ** 2)

    model = aj.Model(log_joint, {"x": aj.real()})
    result = _fit(model, num_steps=1500, max_consecutive_nonfinite=200)
    assert result.num_nonfinite > 0
    assert "skipped" in result.stop_reason
    assert _all_finite(result.params)
    assert abs(float(result.params.loc[0]) - 3.0) < 0.5
    assert f"skipped non-finite steps: {result.num_nonfinite}" in result.summary()


def test_consecutive_nonfinite_stop_keeps_last_finite_params():
    # Finite only in a tiny ball around 0: every draw of q lands outside it.
    model = aj.Model(lambda p: jnp.where(jnp.abs(p["x"]) < 1e-4, 0.0, jnp.nan), {"x": aj.real()})
    result = _fit(model, num_steps=500, max_consecutive_nonfinite=20)
    assert result.num_steps == 20 and result.num_nonfinite == 20
    assert "20 consecutive steps" in result.stop_reason
    assert _all_finite(result.params)


@functools.lru_cache(maxsize=None)
def _normal_model(mean=1.5, sd=0.5):
    """One model object per (mean, sd): fits of it with the same settings reuse compiled programs."""
    return aj.Model(lambda p: jnp.sum(jax.scipy.stats.norm.logpdf(p["x"], mean, sd)), {"x": aj.real((2,))})


def test_step_size_search_picks_the_best_candidate_and_fits():
    result = _fit(_normal_model(), family="meanfield", num_steps=1000, learning_rate="adapt", adapt_iter=100)
    info = result.adaptation
    assert result.learning_rate == info["learning_rate"] in info["learning_rates"]
    assert info["elbo"][info["learning_rates"].index(result.learning_rate)] == max(info["elbo"])
    assert max(info["elbo"]) > info["initial_elbo"]
    np.testing.assert_allclose(result.params.loc, [1.5, 1.5], atol=0.15)
    assert "(adapted)" in result.summary()


def test_step_size_search_discards_diverging_candidates():
    # exp(exp(x)) overflows once x > ~4.5: large steps diverge, small ones do not.
    model = aj.Model(lambda p: -0.5 * jnp.sum((p["x"] - 2.0) ** 2) - jnp.sum(jnp.exp(jnp.exp(p["x"])) * 1e-30),
                     {"x": aj.real((1,))})
    result = _fit(model, num_steps=500, learning_rate="adapt", adapt_iter=100,
                  adapt_learning_rates=(100.0, 0.03))
    assert result.learning_rate == 0.03
    assert not np.isfinite(result.adaptation["elbo"][0]) or result.adaptation["elbo"][0] < result.adaptation["elbo"][1]


def test_step_size_search_raises_when_every_candidate_fails():
    model = aj.Model(lambda p: jnp.where(jnp.abs(p["x"]) < 1e-4, 0.0, jnp.nan), {"x": aj.real()})
    with pytest.raises(ValueError, match="learning_rate='adapt'"):
        _fit(model, num_steps=10, learning_rate="adapt", adapt_iter=20, adapt_learning_rates=(0.1, 0.01))


def test_random_init_starts_from_the_best_candidate():
    result = _fit(_normal_model(), num_steps=10, init="random", num_init_draws=8)
    best = int(np.argmax(result.init_scores))
    np.testing.assert_array_equal(result.init_loc, result.init_candidates[best])
    assert result.init_candidates.shape == (8, 2)
    assert np.all(np.abs(result.init_candidates) <= 2.0)


def test_init_at_a_user_value():
    result = _fit(_normal_model(), num_steps=1, init={"x": jnp.array([0.3, -0.2])})
    np.testing.assert_allclose(result.init_loc, [0.3, -0.2], rtol=1e-6)


def test_float64_fit_keeps_float64():
    with jax.enable_x64(True):
        result = aj.fit(_normal_model(), key=jax.random.key(0), num_steps=300, **FIT)
        assert result.params.loc.dtype == jnp.float64
        assert result.elbo.dtype == np.float64
        # k-hat may be -inf: the default's natural-gradient ADVI fits this Gaussian exactly, so the
        # importance ratios are equal to rounding (the best case, `advi_jax.diagnostics.psis`)
        assert result.khat < 0.5 and np.isfinite(result.iw_elbo)
        draws = result.sample(jax.random.key(1), 10, resample="psis")
        assert draws["x"].dtype == jnp.float64


def test_result_diagnostics_and_psis_methods():
    result = _fit(_normal_model(), family="meanfield", num_steps=2000)
    assert result.khat < 0.5
    assert result.num_diagnostic_draws == 2000
    assert 0 < result.psis_ess <= 2000 and 0 < result.ess <= 2000
    # log normaliser of the normalised model is 0
    assert abs(result.iw_elbo) < 5 * result.iw_elbo_se + 0.02
    summary = result.summary()
    assert "PSIS k-hat" in summary and "good" in summary
    mean = result.psis_expectation(lambda p: p["x"], jax.random.key(2), 2000)
    np.testing.assert_allclose(mean, [1.5, 1.5], atol=0.05)
    draws = result.sample(jax.random.key(3), 500, resample="psis")
    assert draws["x"].shape == (500, 2)
    off = _fit(_normal_model(), num_steps=10, diagnostics=False)
    assert np.isnan(off.khat) and "not computed" in off.summary()


def test_bad_models_raise_clear_errors():
    vector = aj.Model(lambda p: p["x"] ** 2, {"x": aj.real((2,))})
    with pytest.raises(ValueError, match="log_joint must return a scalar"):
        _fit(vector, num_steps=1)
    # NaN wherever x <= 50: at the start (x = 1) and at every jittered start (x < e^2), so none is found
    minus_inf = aj.Model(lambda p: jnp.log(p["x"] - 50.0), {"x": aj.positive()})
    with pytest.raises(ValueError, match="'x': 1.0"):
        _fit(minus_inf, num_steps=1)
    nan_data = aj.Model(lambda p, d: jnp.sum(d * p["x"]), {"x": aj.real()}, data=jnp.array([1.0, jnp.nan]))
    with pytest.raises(ValueError, match="model.data"):
        _fit(nan_data, num_steps=1)
    # a parameter the log joint reads but support= does not declare: named, before anything compiles
    undeclared = aj.Model(lambda p: -jnp.sum(p["x"] ** 2) - p["sigma"] ** 2, {"x": aj.real((2,))})
    for call in (lambda: _fit(undeclared, num_steps=1), lambda: aj.laplace(undeclared),
                 lambda: aj.fit_many(undeclared, num_fits=2, key=jax.random.key(0), num_steps=1),
                 lambda: aj.gradient_variance(undeclared, "meanfield", aj.MeanFieldGaussian().init(jax.random.key(0), 2),
                                              jax.random.key(0), num_draws=10)):
        with pytest.raises(ValueError, match=r"KeyError\('sigma'\).*\['x'\].*declared in support="):
            call()


# --- ill-conditioned Gaussian: full-rank ADVI with the Laplace whitening is exact -------------


def _ill_conditioned_gaussian(k=100, condition=1e4, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(k, k)))
    cov = (q * np.logspace(0, -np.log10(condition), k)) @ q.T
    prec = np.linalg.inv(cov)
    prec = 0.5 * (prec + prec.T)
    mean = rng.normal(size=k)

    def log_joint(params, data):
        p, m = data
        d = params["x"] - m
        return -0.5 * d @ p @ d

    model = aj.Model(log_joint, {"x": aj.real((k,))},
                     data=(jnp.asarray(prec, jnp.float32), jnp.asarray(mean, jnp.float32)))
    log_z = 0.5 * k * np.log(2 * np.pi) + 0.5 * np.linalg.slogdet(cov)[1]
    return model, mean, cov, log_z


def test_100d_gaussian_condition_1e4_fullrank_is_exact():
    model, mean, cov, log_z = _ill_conditioned_gaussian()
    result = aj.fit(model, key=jax.random.key(0), family="fullrank", num_steps=2000, num_samples=8,
                    init="laplace", progress=False)
    mu = np.asarray(result.family.mean(result.params))
    c = np.asarray(result.family.covariance(result.params))
    assert np.max(np.abs(mu - mean) / np.sqrt(np.diag(cov))) < 0.1
    assert np.linalg.norm(c - cov) / np.linalg.norm(cov) < 0.15
    assert result.khat < 0.5
    assert abs(result.iw_elbo - log_z) < 0.1


def test_100d_gaussian_meanfield_is_flagged_by_khat():
    model, mean, cov, _ = _ill_conditioned_gaussian()
    with pytest.warns(aj.DiagnosticWarning):
        result = aj.fit(model, key=jax.random.key(0), family="meanfield", num_steps=1000, num_samples=8,
                        init="laplace", progress=False)
    # the mean is still right (mean-field matches the mean of a Gaussian), the fit is flagged
    assert np.max(np.abs(np.asarray(result.family.mean(result.params)) - mean) / np.sqrt(np.diag(cov))) < 0.2
    assert result.khat > 0.7


def test_inverse_cholesky_without_an_inverse():
    from advi_jax.vi.laplace import inverse_cholesky_lower
    rng = np.random.default_rng(3)
    a = rng.normal(size=(6, 6))
    h = a @ a.T + 6 * np.eye(6)
    low = np.asarray(inverse_cholesky_lower(jnp.asarray(h, jnp.float32)))
    assert np.allclose(np.triu(low, 1), 0.0)
    np.testing.assert_allclose(low @ low.T, np.linalg.inv(h), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", [aj.MeanFieldGaussian(), aj.FullRankGaussian(), aj.LowRankGaussian(rank=2)],
                         ids=lambda f: f.name)
def test_family_transform_is_the_pushforward(family):
    key = jax.random.key(5)
    params = family.init(key, 3, loc=jnp.array([0.5, -1.0, 2.0]), scale=0.7)
    shift = jnp.array([1.0, 2.0, 3.0])
    s = jnp.array([[2.0, 0.0, 0.0], [0.5, 1.0, 0.0], [-0.3, 0.2, 0.5]])
    if not isinstance(family, aj.FullRankGaussian):  # closed under the diagonal maps their starts use
        s = jnp.diag(jnp.diagonal(s))
    moved = family.transform(params, shift, s)
    draws = family.sample(params, key, 4)
    np.testing.assert_allclose(family.sample(moved, key, 4), shift[None, :] + draws @ s.T, rtol=1e-5, atol=1e-5)


def test_auto_init_falls_back_on_a_funnel_with_no_mode():
    """Centred eight schools: the density grows without bound as tau -> 0, so there is no Laplace
    approximation; the automatic start must not collapse q onto the funnel's neck."""
    y = jnp.array([28.0, 8, -3, 7, -1, 1, 18, 12])
    s = jnp.array([15.0, 10, 16, 11, 9, 11, 10, 18])

    def log_joint(p):
        return (-0.5 * p["mu"] ** 2 / 25 - 0.5 * p["tau"] ** 2 / 25
                - 0.5 * jnp.sum((p["theta"] - p["mu"]) ** 2) / p["tau"] ** 2 - 8 * jnp.log(p["tau"])
                - 0.5 * jnp.sum(((y - p["theta"]) / s) ** 2))

    model = aj.Model(log_joint, {"mu": aj.real(), "tau": aj.positive(), "theta": aj.real((8,))})
    with pytest.raises(ValueError, match="init='laplace'"):
        aj.laplace(model)
    with pytest.warns(aj.DiagnosticWarning):
        result = aj.fit(model, key=jax.random.key(0), family="meanfield", num_steps=2000, progress=False)
    assert result.init_method.startswith("zero (no Laplace start")
    assert float(result.mean()["tau"]) > 0.1 and result.khat > 0.7


def test_step_size_search_from_a_start_already_at_the_optimum_fits():
    """With the default start (Laplace / Pathfinder-whitened), a Gaussian posterior's q starts at the family's
    optimum: no step size can raise the ELBO in the search, and the search must not call that a failure."""
    result = _fit(_normal_model(), learning_rate="adapt", adapt_iter=100, num_steps=500)
    info = result.adaptation
    assert result.learning_rate == info["learning_rate"] == info["learning_rates"][int(np.argmax(info["elbo"]))]
    np.testing.assert_allclose(result.family.mean(result.params), [1.5, 1.5], atol=0.05)
    np.testing.assert_allclose(np.sqrt(result.family.variance(result.params)), [0.5, 0.5], rtol=0.1)


def test_an_improper_posterior_says_its_parameters_are_not_finite():
    # A flat log density: q's scale and location grow until they overflow. The stop reason must not
    # claim finite parameters, and the fit warns.
    model = aj.Model(lambda p: 0.0 * jnp.sum(p["x"]), {"x": aj.real((2,))})
    with pytest.warns(UserWarning):
        result = aj.fit(model, key=jax.random.key(0), progress=False)
    finite = all(bool(np.isfinite(np.asarray(leaf)).all()) for leaf in jax.tree_util.tree_leaves(result.params))
    assert not finite
    assert "q's parameters are not finite" in result.stop_reason, result.stop_reason
    assert "the last finite parameters are kept" not in result.stop_reason
