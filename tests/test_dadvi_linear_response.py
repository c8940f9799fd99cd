"""A DADVI fit's linear-response Gaussian as a result (`Result.linear_response`) and in `summary()`."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import advi_jax as aj
from advi_jax.vi import dadvi
from _vi_runner import conjugate_regression


def _conjugate():
    # Linear regression with known noise and a N(0, 2^2) prior: a correlated Gaussian posterior.
    k = 3
    x, y, mean, cov, prec = conjugate_regression(3, 40, [[1.0, 0.8, 0.0], [0.0, 0.6, 0.7], [0.0, 0.0, 0.5]])

    def log_density(p, data):
        xx, yy = data
        b = p["beta"]
        return -0.5 * jnp.sum((yy - xx @ b) ** 2) - 0.125 * jnp.sum(b**2)

    model = aj.Model(log_density, {"beta": aj.real((k,))}, data=(jnp.asarray(x), jnp.asarray(y)))
    return model, mean, cov, prec


def test_linear_response_result_is_the_exact_posterior_where_mean_field_q_is_not():
    model, mean, cov, prec = _conjugate()
    with jax.enable_x64(True), pytest.warns(aj.DiagnosticWarning, match=r"result\.linear_response\(\)"):
        result = aj.fit(model, key=jax.random.key(0), method="dadvi", family="meanfield", progress=False,
                        options=dadvi.Options(num_draws=10, moment_match=True, mc_tol=None))
    with jax.enable_x64(True):
        # q's variances are the inverse precision diagonal (at least 2x too small here) ...
        q_var = np.asarray(result.family.variance(result.params))
        np.testing.assert_allclose(q_var, 1.0 / np.diag(prec), rtol=1e-5)
        assert np.max(np.diag(cov) / q_var) > 2.0
        # ... while the linear-response Gaussian is the posterior itself (a Gaussian target, moment-matched draws).
        lr = result.linear_response(key=jax.random.key(1))
        assert lr.family.name == "fullrank"
        np.testing.assert_allclose(lr.family.mean(lr.params), mean, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(lr.family.covariance(lr.params), cov, rtol=1e-5, atol=1e-9)
        # Its own k-hat: log p - log q is constant for the exact posterior, so k-hat is far below q's.
        assert lr.khat < 0.2 < result.khat
        assert lr.iw_elbo > result.iw_elbo
        assert "linear-response Gaussian" in lr.method_reason
        assert lr.num_grad_evals == result.num_grad_evals and lr.extras is result.extras

        # The summary's lr columns are its constrained draws: sds within Monte Carlo error of the exact ones.
        rows = result.summary_rows(num_draws=20_000, key=jax.random.key(2))
        lr_sd = np.array([r["lr_sd"] for r in rows])
        q_sd = np.array([r["sd"] for r in rows])
        np.testing.assert_allclose(lr_sd, np.sqrt(np.diag(cov)), rtol=0.03)  # MC: 1 / sqrt(2 * 20000) = 0.5%
        np.testing.assert_allclose(q_sd, np.sqrt(1.0 / np.diag(prec)), rtol=0.03)
        np.testing.assert_allclose([r["lr_mean"] for r in rows], mean, atol=0.05 * np.sqrt(np.diag(cov)).max())
        text = result.summary(key=jax.random.key(2), num_draws=2000)
        assert "lr_sd" in text.splitlines()[0] and "result.linear_response()" in text


@pytest.mark.filterwarnings("ignore::advi_jax.DiagnosticWarning")  # q is mean-field or a short fit: it warns
def test_linear_response_columns_only_for_mean_field_and_errors_named():
    model, *_ = _conjugate()
    opts = dadvi.Options(num_draws=10, mc_tol=None)
    full = aj.fit(model, key=jax.random.key(0), method="dadvi", family="fullrank", progress=False,
                  options=dadvi.Options(num_draws=20, mc_tol=None))
    assert "lr_sd" not in full.summary_rows(num_draws=500)[0]  # a full-rank q has its own covariance
    assert full.linear_response().family.name == "fullrank"  # still available

    advi = aj.fit(model, key=jax.random.key(0), method="advi", num_steps=200, progress=False)
    assert "lr_sd" not in advi.summary_rows(num_draws=500)[0]
    with pytest.raises(ValueError, match="only method='dadvi'"):
        advi.linear_response()

    mf = aj.fit(model, key=jax.random.key(0), method="dadvi", family="meanfield", progress=False, options=opts)
    broken = dataclasses.replace(mf, report=dataclasses.replace(
        mf.report, extras={**mf.extras, "lr_covariance": -np.eye(3, dtype=np.float32)}))
    with pytest.raises(ValueError, match="not positive definite"):
        broken.linear_response()
    assert "lr_sd" not in broken.summary_rows(num_draws=500)[0]  # the summary goes on without the columns
