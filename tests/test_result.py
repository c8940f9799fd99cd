"""The immutable Result, its report and formatter, and honesty about non-finite log densities."""

import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import advi_jax as aj


def _gaussian(params):
    return -0.5 * jnp.sum(params["x"] ** 2)


def test_result_is_immutable_and_keeps_its_public_names(key):
    model = aj.Model(_gaussian, {"x": aj.real((2,))})
    result = aj.fit(model, key=key, num_steps=300, progress=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.khat = 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.params = None
    for name in ("elbo", "num_steps", "num_gradient_evals", "num_grad_evals", "num_logp_evals", "num_nonfinite",
                 "converged", "stop_reason", "seconds", "estimator", "num_samples", "khat", "iw_elbo", "iw_elbo_se",
                 "ess", "psis_ess", "num_diagnostic_draws", "learning_rate", "adaptation", "init_loc",
                 "init_method", "init_candidates", "init_scores", "method", "method_reason", "extras",
                 "compile_seconds", "run_seconds", "diagnostics_seconds", "nonfinite_share"):
        getattr(result, name)
    with pytest.raises(AttributeError):
        result.no_such_field
    text = result.summary()
    assert "cost:" in text and "compile" in text and "method=advi" in text


def test_to_arviz_names_the_missing_module(key, monkeypatch):
    model = aj.Model(_gaussian, {"x": aj.real((2,))})
    result = aj.fit(model, key=key, num_steps=50, progress=False, diagnostics=False)
    monkeypatch.setitem(sys.modules, "advi_jax.interop.arviz", None)
    with pytest.raises(ImportError, match="advi_jax.interop.arviz"):
        result.to_arviz()


def test_psis_with_nan_log_ratios_is_never_perfect():
    # equal finite ratios read as k-hat = -inf ("q matches the posterior's shape"); with NaN
    # ratios beside them that reading is false
    r = np.ones(4096, np.float32)
    r[:100] = np.nan
    out = aj.psis(jnp.asarray(r))
    assert out.khat == np.inf and "unreliable" in aj.khat_verdict(out.khat, 4096)


def test_a_fit_with_mass_where_the_log_density_is_nan_is_flagged(key):
    # log density NaN on half the space; the fit starts inside the valid region
    model = aj.Model(lambda p: jnp.where(p["x"][0] > 0, -0.5 * jnp.sum((p["x"] - 0.5) ** 2), jnp.nan),
                     {"x": aj.real((2,))})
    with pytest.warns(aj.DiagnosticWarning):
        result = aj.fit(model, key=key, num_steps=2000, init={"x": jnp.array([2.0, 0.0])}, progress=False)
    assert result.nonfinite_share > 0.01
    assert result.verdict.startswith("unreliable") and "NaN or -inf" in result.verdict
    assert not result.khat < 0.7
    assert not np.isfinite(result.report.diagnostics.elbo)  # never an ELBO over the finite draws only
    assert "NaN or -inf" in result.summary()


def test_minus_inf_mass_caps_the_verdict(key):
    # a truncated Gaussian (log density -inf for x < -3) fitted by an untruncated q: tiny mass there
    model = aj.Model(lambda p: jnp.where(p["x"][0] > -3.0, -0.5 * jnp.sum(p["x"] ** 2), -jnp.inf),
                     {"x": aj.real((1,))})
    result = aj.fit(model, key=key, num_steps=2000, init=None, progress=False, warn=False, num_samples=4)
    share = result.nonfinite_share
    assert 0 < share < 0.01
    assert not result.verdict.startswith("good")


def test_family_capabilities_are_declared():
    assert aj.MeanFieldGaussian.affine_closed and aj.FullRankGaussian.affine_closed
    assert aj.LowRankGaussian.affine_closed  # under the diagonal maps its starts use, as mean-field
    assert aj.MeanFieldGaussian.params_type is aj.MeanFieldParams

    class Incomplete(aj.Family):
        def init(self, key, dim, **kw):
            return None

    with pytest.raises(TypeError):
        Incomplete()


def test_estimator_records():
    from advi_jax.estimators import REGISTRY

    assert REGISTRY["score_baseline"].min_num_samples == 2 and REGISTRY["reparam"].fn is aj.ESTIMATORS["reparam"]
    assert all(isinstance(e, aj.base.Estimator) for e in REGISTRY.values())


def test_the_khat_advice_fits_the_family():
    from advi_jax.result import Diagnostics, verdict

    bad = Diagnostics(1.2, 0.0, 0.1, 0.0, 10.0, 10.0, 0.0, 4096)
    assert "family='fullrank'" in verdict(bad, family="meanfield")
    full = verdict(bad, family="fullrank")
    assert "family='fullrank'" not in full and "non-centred" in full


def test_summary_names_features_and_shows_deterministic_sites(key):
    numpyro = pytest.importorskip("numpyro")
    dist = numpyro.distributions
    x = np.random.default_rng(0).normal(size=(120, 2))
    y = (x[:, 0] + 0.3 * np.random.default_rng(1).normal(size=120) > 0).astype(float)
    glm = aj.models.logistic_regression(x, y, feature_names=["dose", "age"])
    text = aj.fit(glm, key=key, progress=False, warn=False).summary()
    assert "beta[dose]" in text and "beta[age]" in text and "beta[0]" not in text

    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
        numpyro.deterministic("twice_mu", 2.0 * mu)
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    data = jnp.asarray([1.0, 2.0, 3.0, 2.0])
    result = aj.fit(aj.from_numpyro(model, data), key=key, num_steps=1500, progress=False, warn=False)
    rows = {row["parameter"]: row for row in result.summary_rows(jax.random.key(3), 4000)}
    assert "twice_mu" in rows and "twice_mu" in result.summary()
    np.testing.assert_allclose(rows["twice_mu"]["mean"], 2 * rows["mu"]["mean"], rtol=1e-5)
    # posterior of mu: N(sum(y) / (n + 1/100), 1 / (n + 1/100)); the summary's sd is q's
    np.testing.assert_allclose(rows["mu"]["mean"], 8.0 / 4.01, atol=0.1)


def test_summary_shows_boolean_and_integer_deterministic_sites(key):
    """A numpyro.deterministic of a comparison (bool) or an argmax (int): the summary reads it as a number
    (a bool's mean is the share of True), not np.quantile's 'numpy boolean subtract' TypeError."""
    numpyro = pytest.importorskip("numpyro")
    dist = numpyro.distributions

    def model():
        a = numpyro.sample("a", dist.Normal(jnp.array([1.0, -1.0]), 1.0))
        numpyro.deterministic("first_positive", a[0] > 0)
        numpyro.deterministic("largest", jnp.argmax(a))

    result = aj.fit(aj.from_numpyro(model), key=key, method="laplace", progress=False, warn=False)
    rows = {row["parameter"]: row for row in result.summary_rows(jax.random.key(3), 4000)}
    assert abs(rows["first_positive"]["mean"] - 0.841) < 0.03  # P(N(1, 1) > 0)
    assert rows["first_positive"]["5%"] == 0.0 and rows["first_positive"]["95%"] == 1.0
    assert 0.0 <= rows["largest"]["mean"] <= 1.0 and "first_positive" in result.summary()


@pytest.fixture(scope="module")
def small_result():
    model = aj.Model(lambda p: -0.5 * jnp.sum(p["x"] ** 2) - 0.5 * p["s"] ** 2, {"x": aj.real((2,)), "s": aj.positive()})
    return aj.fit(model, key=jax.random.key(0), num_steps=200, progress=False, diagnostics=False, warn=False)


@pytest.mark.parametrize("bad, err", [(0, ValueError), (1, ValueError), ("100", TypeError), (2.5, TypeError)])
def test_summary_names_a_bad_num_draws(small_result, bad, err):
    """summary(num_draws=...) names num_draws (not `n` of the sample it makes); one draw has no sd (it gave
    NaN sds and NumPy's degrees-of-freedom warnings)."""
    with pytest.raises(err, match=r"num_draws must be an int >= 2"):
        small_result.summary(jax.random.key(1), num_draws=bad)
    with pytest.raises(err, match=r"num_draws must be an int >= 2"):
        small_result.summary_rows(jax.random.key(1), num_draws=bad)


def test_mean_names_a_bad_num_draws(small_result):
    with pytest.raises(ValueError, match=r"num_draws must be an int >= 1, got 0"):
        small_result.mean(num_draws=0)


def test_summary_labels_are_checked(small_result):
    key = jax.random.key(1)
    with pytest.raises(TypeError, match=r"labels must be a dict .*got list"):
        small_result.summary(key, labels=["a", "b"])
    with pytest.raises(ValueError, match=r"labels names \['sigma'\], which this model does not have; "
                                         r"its parameters are \['x', 's'\]"):
        small_result.summary(key, labels={"sigma": ["scale"]})
    with pytest.raises(TypeError, match=r"labels\['x'\] must be a sequence of 2 labels"):
        small_result.summary(key, labels={"x": "ab"})
    rows = small_result.summary_rows(key, 100, labels={"x": ["left", "right"], "s": "scale"})
    assert [row["parameter"] for row in rows] == ["x[left]", "x[right]", "scale"]
