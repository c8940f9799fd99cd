"""End-to-end ADVI: exact conjugate posteriors, a positive-constrained model, vmap, compile-once."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import advi_jax as aj

# --- conjugate Bayesian linear regression: prior N(0, I), noise sd 1 (known) -------------------
_rng = np.random.default_rng(0)
N, D = 100, 3
X = _rng.normal(size=(N, D)) @ np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 1.0]])
Y = X @ np.array([1.0, -2.0, 0.5]) + _rng.normal(size=N)
PREC = np.eye(D) + X.T @ X
COV = np.linalg.inv(PREC)
MEAN = COV @ X.T @ Y
SD = np.sqrt(np.diag(COV))


def _linreg_log_joint(params, data):
    x, y = data
    beta = params["beta"]
    return -0.5 * jnp.sum(beta**2) - 0.5 * jnp.sum((y - x @ beta) ** 2)


LINREG = aj.Model(_linreg_log_joint, {"beta": aj.real((D,))},
                  data=(jnp.asarray(X, jnp.float32), jnp.asarray(Y, jnp.float32)))


def _check_fullrank(family, params):
    mu = np.asarray(family.mean(params))
    cov = np.asarray(family.covariance(params))
    assert np.all(np.abs(mu - MEAN) / SD < 0.05), np.abs(mu - MEAN) / SD
    np.testing.assert_allclose(cov, COV, rtol=0.1, atol=0.1 * np.abs(COV).max())


def test_fullrank_recovers_the_exact_posterior(key):
    result = aj.fit(LINREG, key=key, family="fullrank", num_steps=4000, num_samples=8, progress=False)
    _check_fullrank(result.family, result.params)
    # the Laplace start's gradients are counted too, and reported on their own
    assert result.num_steps == 4000 and result.num_gradient_evals == 32000 + result.extras["start_grad_evals"]
    assert 0 < result.extras["start_grad_evals"] < 100
    assert result.elbo.shape == (4000,) and np.all(np.isfinite(result.elbo))


def test_meanfield_recovers_mean_and_meanfield_variances(key):
    result = aj.fit(LINREG, key=key, family="meanfield", num_steps=4000, num_samples=8, progress=False)
    mu = np.asarray(result.family.mean(result.params))
    var = np.asarray(result.family.variance(result.params))
    # The KL(q || p)-optimal mean-field Gaussian has the exact mean and variances 1 / diag(precision).
    assert np.all(np.abs(mu - MEAN) / SD < 0.05), np.abs(mu - MEAN) / SD
    np.testing.assert_allclose(var, 1.0 / np.diag(PREC), rtol=0.1)


def test_elbo_trace_approaches_the_exact_log_evidence(key):
    result = aj.fit(LINREG, key=key, family="fullrank", num_steps=4000, num_samples=8, progress=False)
    # log of the normalising constant of the unnormalised log joint (without 2 pi terms of the data)
    log_z = 0.5 * D * np.log(2 * np.pi) - 0.5 * np.linalg.slogdet(PREC)[1] - 0.5 * (Y @ Y - MEAN @ PREC @ MEAN)
    assert abs(float(np.mean(result.elbo[-500:])) - log_z) < 0.05


# --- a positive-constrained conjugate model: Poisson rate with a Gamma prior ------------------
A0, B0 = 2.0, 1.0
COUNTS = np.random.default_rng(1).poisson(3.0, size=50)


def _poisson_log_joint(params, counts):
    rate = params["rate"]
    return (A0 - 1) * jnp.log(rate) - B0 * rate + jnp.sum(counts * jnp.log(rate) - rate)


def test_positive_constrained_posterior_matches_gamma(key):
    model = aj.Model(_poisson_log_joint, {"rate": aj.positive()}, data=jnp.asarray(COUNTS, jnp.float32))
    result = aj.fit(model, key=key, num_steps=3000, num_samples=4, progress=False)
    a, b = A0 + COUNTS.sum(), B0 + len(COUNTS)
    draws = np.asarray(result.sample(jax.random.fold_in(key, 1), 50_000)["rate"])
    assert abs(draws.mean() / (a / b) - 1) < 0.02
    assert abs(draws.std() / (np.sqrt(a) / b) - 1) < 0.05
    assert abs(float(result.mean()["rate"]) / (a / b) - 1) < 0.02


# --- vmap of a whole fit over seeds, with the public pure (init, step) pair ------------------


def test_vmap_whole_fit_over_eight_seeds(key):
    num_steps = 4000
    optimizer = aj.optim.default_optimizer(0.01, num_steps)
    init, step = aj.advi(LINREG, "fullrank", optimizer=optimizer, num_samples=8)

    def run(k):
        k_init, k_run = jax.random.split(k)
        state = init(k_init)

        def body(state, i):
            return step(jax.random.fold_in(k_run, i), state)

        state, info = jax.lax.scan(body, state, jnp.arange(num_steps))
        return state.params, info.elbo

    params, elbo = jax.jit(jax.vmap(run))(jax.random.split(key, 8))
    assert elbo.shape == (8, num_steps)
    family = aj.FullRankGaussian()
    for i in range(8):
        _check_fullrank(family, jax.tree_util.tree_map(lambda x: x[i], params))


# --- compile once ------------------------------------------------------------------------------


def test_fit_compiles_once_across_chunks_and_calls(key):
    traces = []

    def log_joint(params, data):
        traces.append(1)
        return _linreg_log_joint(params, data)

    model = aj.Model(log_joint, {"beta": aj.real((D,))}, data=LINREG.data)
    before = aj.run.num_traces()
    aj.fit(model, key=key, num_steps=2000, chunk_size=250, progress=False)
    after_first = aj.run.num_traces()
    traced_first = len(traces)
    # same model and settings, other key, other data values of the same shape: nothing new compiles
    other = aj.Model(log_joint, model.support, data=(LINREG.data[0] * 2.0, LINREG.data[1]))
    other = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(model), jax.tree_util.tree_leaves(other))
    aj.fit(other, key=jax.random.fold_in(key, 1), num_steps=2000, chunk_size=250, progress=False)
    assert after_first - before == 1  # eight chunks, one compilation
    assert aj.run.num_traces() == after_first
    assert len(traces) == traced_first  # the log joint was not traced again


def test_convergence_rule_stops_early(key):
    result = aj.fit(LINREG, key=key, family="meanfield", num_steps=50_000, num_samples=8, tol_rel_obj=0.01,
                    window=5, progress=False)
    assert result.converged and result.num_steps < 50_000
    assert "converged" in result.stop_reason
    assert result.elbo.shape == (result.num_steps,)


def test_any_optax_optimizer_and_estimator(key):
    result = aj.fit(LINREG, key=key, family="fullrank", num_steps=3000, num_samples=4, estimator="stl",
                    optimizer=optax.chain(optax.clip_by_global_norm(10.0), optax.adam(0.01)), progress=False)
    mu = np.asarray(result.family.mean(result.params))
    assert np.all(np.abs(mu - MEAN) / SD < 0.5)


def test_summary_and_draws(key):
    result = aj.fit(LINREG, key=key, num_steps=500, progress=False)
    draws = result.sample(key, 10)
    assert draws["beta"].shape == (10, D)
    text = result.summary()
    assert "beta[2]" in text and "mean" in text and "95%" in text


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(family="gaussian"), "family"),
        (dict(estimator="pathwise"), "estimator"),
        (dict(num_steps=0), "num_steps"),
        (dict(num_samples=0), "num_samples"),
        (dict(estimator="score_baseline", num_samples=1), "num_samples"),
        (dict(init_scale=-1.0), "init_scale"),
        (dict(init=jnp.zeros(5)), "init"),
        (dict(learning_rate=-0.1), "learning_rate"),
    ],
)
def test_fit_rejects_bad_arguments(kwargs, match, key):
    with pytest.raises((ValueError, TypeError), match=match):
        aj.fit(LINREG, key=key, progress=False, **kwargs)


def test_fit_requires_a_key_and_a_model():
    with pytest.raises(TypeError, match="key"):
        aj.fit(LINREG, key=0, progress=False)
    with pytest.raises(TypeError, match="model"):
        aj.fit(lambda p: 0.0, key=jax.random.key(0), progress=False)


def test_nonfinite_initial_point_is_reported(key):
    model = aj.Model(lambda p: jnp.log(p["x"] - 5.0), {"x": aj.positive()})
    with pytest.raises(ValueError, match="initial point"):
        aj.fit(model, key=key, progress=False)


def test_nonfinite_data_is_reported_before_fitting(key):
    x = np.ones((50, 3), np.float32)
    x[7, 1] = np.nan
    x[9, 2] = np.inf
    y = np.zeros(50, np.int32)  # integer leaves are not checked (always finite)

    def log_joint(p, data):
        return -0.5 * jnp.sum(p["b"] ** 2) - 0.5 * jnp.sum((data[0] @ p["b"] - data[1]) ** 2)

    model = aj.Model(log_joint, {"b": aj.real((3,))}, data=(jnp.asarray(x), jnp.asarray(y)))
    with pytest.raises(ValueError, match=r"model.data\[0\] has non-finite entries \(2 of 150\)"):
        aj.fit(model, key=key, progress=False)
    clean = aj.Model(log_joint, {"b": aj.real((3,))}, data=(jnp.asarray(np.nan_to_num(x, posinf=1.0)), jnp.asarray(y)))
    assert aj.fit(clean, key=key, num_steps=10, progress=False, diagnostics=False).num_steps == 10
