"""The accuracy suite's models build, go through `aj.from_numpyro`, and have a stored, converged reference."""

import jax
import numpy as np
import pytest

import advi_jax as aj  # noqa: E402
from benchmarks.accuracy import compare  # noqa: E402
from benchmarks.family_limit import load_family_limit  # noqa: E402
from benchmarks.make_references import load_reference  # noqa: E402
from benchmarks.suite import MODELS, NO_REFERENCE_YET, flatten_draws  # noqa: E402
from conftest import missing_data  # noqa: E402


def _unflatten_means(reference, like):
    """The reference means as a dict site -> array shaped like `like[site]` (labels 'site[i,j]')."""
    out = {}
    for site, value in like.items():
        shape = np.shape(value)
        if not shape:
            out[site] = np.asarray(reference["params"][site]["mean"])
        else:
            flat = [reference["params"][f"{site}[{','.join(map(str, i))}]"]["mean"] for i in np.ndindex(*shape)]
            out[site] = np.asarray(flat).reshape(shape)
            if site == "corr_chol":  # the mean of correlation Cholesky factors has rows of norm < 1: project back
                out[site] = out[site] / np.linalg.norm(out[site], axis=-1, keepdims=True)
    return out


def test_suite_has_at_least_20_models():
    assert len(MODELS) >= 20
    assert set(NO_REFERENCE_YET) <= set(MODELS)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_has_reference(name):
    try:
        built = {name: MODELS[name]()}
    except aj.data.DataFileNotFound as err:  # german_credit / wells live in shared/data, not in the package
        built = {}
        reason = f"the data of {name} is not found: {str(err).split(';')[0]}"
    if name not in built:
        missing_data(reason)
    reference = load_reference(name)
    model = aj.from_numpyro(built[name].fn, *built[name].args)
    assert np.isfinite(model.log_density(np.zeros(model.dim)))
    if name in NO_REFERENCE_YET:
        assert reference is None, f"{name} has a reference now: remove it from suite.NO_REFERENCE_YET"
        return
    assert reference is not None, f"run python -m benchmarks.make_references --models {name}"
    assert reference["rhat_ok"] and reference["max_rhat"] <= 1.01
    assert all(not p["rhat"] > 1.01 for p in reference["params"].values())  # nan: a constant entry
    assert reference["settings"]["chains"] >= 4
    like = jax.eval_shape(model.to_constrained, np.zeros(model.dim, np.float32))  # the sites' shapes, nothing run
    draws = {k: np.zeros((1,) + np.shape(v)) for k, v in like.items()}
    assert set(flatten_draws(draws)) == set(reference["params"])
    # The log joint is finite at the reference mean (every support but corr_chol's is convex, so the mean is in it).
    u = model.to_unconstrained(_unflatten_means(reference, like))
    assert np.all(np.isfinite(u)) and np.isfinite(model.log_density(u))


# Only the posteriors whose family limit is stored (python -m benchmarks.family_limit --models NAME
# adds one); the others are listed in benchmarks/PERFORMANCE.md as not yet computed.
@pytest.mark.parametrize("name", sorted(n for n in MODELS if load_family_limit(n) is not None))
def test_family_limit_matches_reference_labels(name):
    limit, reference = load_family_limit(name), load_reference(name)
    assert reference is not None, f"{name} has a family limit but no NUTS reference"
    assert set(limit["params"]) == set(reference["params"])
    assert limit["settings"]["family"] == "fullrank" and limit["settings"]["num_samples"] >= 16
    assert all(np.isfinite(p["mean"]) and p["sd"] >= 0 for p in limit["params"].values())


def test_compare_is_zero_for_reference_moments():
    reference = {"params": {"a": {"mean": 1.0, "sd": 2.0}, "b": {"mean": 0.0, "sd": 0.0}}}
    x = np.array([-1.0, 3.0])  # mean 1, sd 2
    out = compare({"a": x, "b": np.zeros(2)}, reference)
    assert out["max |mean err| / sd"] == pytest.approx(0.0) and out["med |log sd ratio|"] == pytest.approx(0.0)


def test_newton_family_limit_solves_the_gaussian_family_stationarity_conditions():
    """`family_limit --newton` (the variational Newton fixed point with Stein's-lemma Hessians) is
    exact on a correlated Gaussian, and on a non-Gaussian target it reaches the known full-rank
    optimum: for log p = -sum x_k^4 / 4 the conditions E_q[grad] = 0, -E_q[Hessian] = Sigma^-1
    give mu = 0 and Sigma = 3^(-1/2) I (E[3 x^2] = 3 sigma^2 = 1 / sigma^2)."""
    import jax.numpy as jnp

    from benchmarks.family_limit import newton_limit

    cov = np.array([[2.0, 0.6, 0.1], [0.6, 1.0, -0.3], [0.1, -0.3, 0.5]])
    mean = np.array([5.0, -3.0, 0.5])
    precision = jnp.asarray(np.linalg.inv(cov), jnp.float32)
    gauss = aj.Model(lambda p: -0.5 * (p["x"] - mean) @ precision @ (p["x"] - mean), {"x": aj.real((3,))})
    mu, L, info = newton_limit(gauss, seed=0, iters=40, draws=512, log=lambda _: None,
                               start=(jnp.zeros(3), jnp.eye(3)))
    np.testing.assert_allclose(np.asarray(mu), mean, atol=2e-3)
    np.testing.assert_allclose(np.asarray(L @ L.T), cov, atol=2e-3)
    quartic = aj.Model(lambda p: -0.25 * jnp.sum(p["x"] ** 4), {"x": aj.real((2,))})
    mu, L, info = newton_limit(quartic, seed=1, iters=30, draws=8192, log=lambda _: None,
                               start=(jnp.ones(2), jnp.eye(2)))
    np.testing.assert_allclose(np.asarray(mu), 0.0, atol=0.02)
    np.testing.assert_allclose(np.asarray(L @ L.T), np.eye(2) / np.sqrt(3.0), atol=0.02)
    assert np.all(info["mean_mcse"] < 0.02)


def test_newton_with_fixed_draws_is_exact_on_a_gaussian_and_its_residuals_vanish_only_at_the_optimum():
    """`--newton --fixed-draws` (one draw set, undamped, stopped at a tolerance) solves the sample
    conditions exactly on a Gaussian target (the Stein regression is exact there for any draws);
    `stationarity` is ~0 at the answer and reports a moved mean / a scaled covariance."""
    import jax
    import jax.numpy as jnp

    from benchmarks.family_limit import _antithetic, newton_limit, stationarity

    with jax.enable_x64(True):
        cov = np.array([[2.0, 0.6, 0.1], [0.6, 1.0, -0.3], [0.1, -0.3, 0.5]])
        mean = np.array([5.0, -3.0, 0.5])
        precision = jnp.asarray(np.linalg.inv(cov))
        gauss = aj.Model(lambda p: -0.5 * (p["x"] - mean) @ precision @ (p["x"] - mean), {"x": aj.real((3,))})
        mu, L, info = newton_limit(gauss, seed=0, iters=50, draws=64, log=lambda _: None,
                                   start=(jnp.zeros(3), jnp.eye(3)), fixed_draws=True, rho=1.0, tol=1e-10)
        assert info["iterations"] < 50
        np.testing.assert_allclose(np.asarray(mu), mean, atol=1e-8)
        np.testing.assert_allclose(np.asarray(L @ L.T), cov, atol=1e-8)
        eps = _antithetic(jax.random.key(3), 256, 3, jnp.float64)
        at = stationarity(gauss, mu, L, eps)
        assert at["mean_step"] < 1e-8 and at["precision_residual"] < 1e-8
        moved = stationarity(gauss, mu + jnp.sqrt(jnp.diag(L @ L.T)) * jnp.array([0.1, 0.0, 0.0]), L, eps)
        assert moved["mean_step"] == pytest.approx(0.1, rel=1e-6)
        scaled = stationarity(gauss, mu, 1.1 * L, eps)  # L^T Sigma^-1 L - I = 1.21 - 1
        assert scaled["precision_residual"] == pytest.approx(0.21, rel=1e-6)


def test_fast_equivalent_log_density_is_checked_against_the_suite_model(monkeypatch):
    """A fast equivalent is used only after its log joint and gradient match the suite model's: an
    identical one passes, one that differs by 1e-6 in the log joint is refused. (Every family_limit
    run makes the same check of stochastic_volatility's scan form; compiling the suite's T x T form
    takes ~10 s, too long for the default suite.)"""
    import jax
    import numpyro
    import numpyro.distributions as dist

    from benchmarks import family_limit
    from benchmarks.suite import SuiteModel

    def normal(y):
        numpyro.sample("y", dist.Normal(numpyro.sample("m", dist.Normal(0.0, 1.0)), 1.0), obs=y)

    def shifted(y):
        normal(y)
        numpyro.factor("extra", 1e-6 * (1.0 + y[0] ** 2))

    with jax.enable_x64(True):
        toy = SuiteModel(normal, (np.array([0.5, -1.0]),), "toy")
        monkeypatch.setitem(family_limit.FAST_EQUIVALENTS, "toy", normal)
        model, fast = family_limit.limit_model("toy", toy, check_draws=8)  # the model itself passes
        assert fast is not model and fast.dim == model.dim == 1
        monkeypatch.setitem(family_limit.FAST_EQUIVALENTS, "toy", shifted)
        with pytest.raises(ValueError, match="differs"):
            family_limit.limit_model("toy", toy, check_draws=8)
