"""The one-read blocked GLM log-likelihood against the plain autodiff reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advi_jax.glm import default_block_size, glm_log_likelihood, glm_log_likelihood_reference


def _data(family, n=1037, d=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = rng.integers(0, 2, n) if family == "bernoulli" else rng.poisson(2.0, n)
    return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), jnp.asarray(rng.normal(size=n) * 0.2, jnp.float32)


@pytest.mark.parametrize("family", ["bernoulli", "poisson"])
@pytest.mark.parametrize("with_offset", [False, True])
def test_value_and_gradients_match_autodiff_under_vmap(family, with_offset):
    x, y, offset = _data(family)
    offset = offset if with_offset else None
    betas = jnp.asarray(np.random.default_rng(1).normal(size=(8, x.shape[1])) * 0.3, jnp.float32)

    def blocked(b, c):  # block of 128 rows: 8 full blocks and a tail of 13
        return glm_log_likelihood(x, y, b, c, offset, family, block_size=128)

    def reference(b, c):
        return glm_log_likelihood_reference(x, y, b, c, offset, family)

    grad = jax.vmap(jax.value_and_grad(blocked, argnums=(0, 1)), in_axes=(0, None))
    grad_ref = jax.vmap(jax.value_and_grad(reference, argnums=(0, 1)), in_axes=(0, None))
    (v, (gb, gc)), (v_ref, (gb_ref, gc_ref)) = jax.jit(grad)(betas, 0.3), jax.jit(grad_ref)(betas, 0.3)
    scale = float(jnp.max(jnp.abs(v_ref)))
    np.testing.assert_allclose(v, v_ref, rtol=1e-5, atol=1e-6 * scale)
    np.testing.assert_allclose(gb, gb_ref, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(gb_ref))))
    np.testing.assert_allclose(gc, gc_ref, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(gc_ref))))


def test_float64_agrees_to_tight_tolerance():
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        x = jnp.asarray(rng.normal(size=(500, 4)))
        y = jnp.asarray(rng.integers(0, 2, 500), jnp.float64)
        b = jnp.asarray(rng.normal(size=4))
        g = jax.grad(lambda b: glm_log_likelihood(x, y, b, block_size=64))(b)
        g_ref = jax.grad(lambda b: glm_log_likelihood_reference(x, y, b))(b)
        assert g.dtype == jnp.float64
        np.testing.assert_allclose(g, g_ref, rtol=1e-10)


def test_extreme_linear_predictors_stay_finite():
    x = jnp.asarray([[1.0], [1.0], [-1.0], [-1.0]])
    y = jnp.asarray([1.0, 0.0, 1.0, 0.0])
    for beta in (-80.0, 80.0):
        v, g = jax.value_and_grad(lambda b: glm_log_likelihood(x, y, b, family="bernoulli", block_size=2))(
            jnp.asarray([beta]))
        v_ref = glm_log_likelihood_reference(x, y, jnp.asarray([beta]), family="bernoulli")
        assert np.isfinite(v) and np.all(np.isfinite(g))
        np.testing.assert_allclose(v, v_ref, rtol=1e-6)  # = -160: two terms of log sigmoid(-80)
    v = glm_log_likelihood(x, jnp.asarray([3.0, 0.0, 1.0, 2.0]), jnp.asarray([20.0]), family="poisson")
    assert np.isfinite(v)


def test_the_design_matrix_is_read_in_one_pass():
    """The gradient's jaxpr has one loop over blocks holding the only two products with X."""
    x, y, _ = _data("bernoulli", n=4096)
    jaxpr = jax.make_jaxpr(jax.grad(lambda b: glm_log_likelihood(x, y, b, block_size=512)))(jnp.zeros(6))
    text = str(jaxpr)
    assert text.count("scan[") + text.count("while[") == 1
    assert text.count("dot_general") == 2  # X_b @ beta and r @ X_b, both inside the loop
    assert "transpose" not in text


def test_bad_input_is_named():
    x, y, _ = _data("bernoulli", n=10)
    with pytest.raises(ValueError, match="family"):
        glm_log_likelihood(x, y, jnp.zeros(6), family="gamma")
    with pytest.raises(ValueError, match="beta"):
        glm_log_likelihood(x, y, jnp.zeros(5))
    with pytest.raises(ValueError, match="y"):
        glm_log_likelihood(x, y[:5], jnp.zeros(6))
    assert default_block_size(100) == 8192 and default_block_size(10_000) == 256
