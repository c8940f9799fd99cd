"""Newton steps after L-BFGS in the Laplace approximation (`advi_jax.vi.laplace._polish`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import advi_jax as aj
from conftest import eight_schools_noncentred
from advi_jax.vi import laplace

SCALES = np.array([1.0, 300.0, 0.02, 40.0, 5000.0])


def _badly_scaled_logistic(dtype):
    """A logistic regression on predictors whose scales span five orders of magnitude (like wells'
    raw distances and arsenic levels), a N(0, 10^2) prior on the coefficients."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2000, SCALES.size)) * SCALES
    beta = rng.normal(size=SCALES.size) / SCALES
    y = (rng.uniform(size=2000) < 1 / (1 + np.exp(-(0.3 + x @ beta)))).astype(float)
    x, y = jnp.asarray(x, dtype), jnp.asarray(y, dtype)

    def log_density(p):
        eta = p["a"] + x @ p["b"]
        return jnp.sum(y * eta - jnp.logaddexp(0.0, eta)) - 0.005 * (p["a"] ** 2 + jnp.sum(p["b"] ** 2))

    return aj.Model(log_density, {"a": aj.real(()), "b": aj.real((SCALES.size,))})


def test_float32_mode_matches_float64_on_badly_scaled_predictors():
    with jax.enable_x64(True):
        exact = aj.laplace(_badly_scaled_logistic(jnp.float64), init=np.zeros(6), max_iter=5000)
        mode64 = np.asarray(exact.mode)
        sd = np.sqrt(np.sum(np.asarray(exact.scale_tril) ** 2, axis=1))
    info = aj.laplace(_badly_scaled_logistic(jnp.float32))
    assert bool(info.converged)
    err = np.abs(np.asarray(info.mode, np.float64) - mode64) / sd
    assert err.max() < 0.02, err
    sd32 = np.sqrt(np.sum(np.asarray(info.scale_tril, np.float64) ** 2, axis=1))
    assert np.abs(np.log(sd32 / sd)).max() < 0.02


def test_a_mode_l_bfgs_stops_short_of_is_found():
    # Non-centred eight schools has a mode on R^K (tau's log-Jacobian keeps it off zero); float32
    # L-BFGS stopped there on its relative-change test with the gradient still large, and
    # `aj.laplace` said there was no mode.
    with jax.enable_x64(True):
        exact = aj.laplace(eight_schools_noncentred(), init=np.zeros(10), max_iter=5000)
        mode64 = np.asarray(exact.mode)
        sd = np.sqrt(np.sum(np.asarray(exact.scale_tril) ** 2, axis=1))
    info = aj.laplace(eight_schools_noncentred())
    assert bool(info.converged)
    assert (np.abs(np.asarray(info.mode, np.float64) - mode64) / sd).max() < 0.02


def test_polish_counts_each_hessian_and_stops_at_the_mode_of_a_quadratic():
    a = jnp.array([[3.0, 1.0], [1.0, 2.0]])
    b = jnp.array([1.0, -2.0])
    objective = lambda z: 0.5 * z @ a @ z - b @ z  # noqa: E731
    x, value, grad, hessian, dec, points = laplace._polish(objective, jnp.zeros(2), objective(jnp.zeros(2)))
    np.testing.assert_allclose(x, np.linalg.solve(np.asarray(a), np.asarray(b)), rtol=1e-5)
    np.testing.assert_allclose(hessian, a, rtol=1e-6)
    assert float(dec) <= laplace.NEWTON_DECREMENT and int(points) == 2  # L-BFGS's end, then one full step


def test_polish_stops_where_the_hessian_is_not_positive_definite():
    objective = lambda z: -jnp.sum(z ** 2)  # noqa: E731  (a maximum, no mode)
    x0 = jnp.array([0.5, -0.25])
    x, _, _, _, dec, points = laplace._polish(objective, x0, objective(x0))
    np.testing.assert_array_equal(x, x0)
    assert not np.isfinite(float(dec)) and int(points) == 1


@pytest.mark.parametrize("full", [True, False])
def test_no_proper_gaussian_is_still_an_error(full):
    # A log density unbounded along a direction: no mode, with or without the Newton steps.
    model = aj.Model(lambda p: jnp.sum(p["x"]) - 0.5 * p["x"][0] ** 2, {"x": aj.real((2,))})
    with pytest.raises(ValueError, match="init='laplace'"):
        aj.laplace(model, family="fullrank" if full else "meanfield")


def test_a_start_stops_at_its_rougher_decrement_and_bad_settings_are_named():
    model = _badly_scaled_logistic(jnp.float32)
    full = aj.laplace(model)
    rough = aj.laplace(model, newton_tol=laplace.START_DECREMENT)
    assert bool(rough.converged) and int(rough.num_grad_evals) <= int(full.num_grad_evals)
    with jax.enable_x64(True):
        exact = aj.laplace(_badly_scaled_logistic(jnp.float64), init=np.zeros(6), max_iter=5000)
        sd = np.sqrt(np.sum(np.asarray(exact.scale_tril) ** 2, axis=1))
        err = np.abs(np.asarray(rough.mode, np.float64) - np.asarray(exact.mode)) / sd
    assert err.max() < 0.5  # within the start's tolerance (about 0.3 sd)
    with pytest.raises(ValueError, match="newton_steps"):
        aj.laplace(model, newton_steps=-1)
    with pytest.raises(ValueError, match="newton_tol"):
        aj.laplace(model, newton_tol=0.0)
