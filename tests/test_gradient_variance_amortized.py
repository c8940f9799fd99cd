"""Tests of advi_jax.gradient_variance.amortized and the one DReG (advi_jax.vae.objectives.bound_surrogate)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advi_jax.gradient_variance import gradient_stats

amortized = pytest.importorskip("advi_jax.gradient_variance.amortized", reason="needs flax (the vae extra)")


def test_registry_extends_the_library_names():
    from advi_jax.estimators import ESTIMATORS
    from advi_jax.vae.objectives import AMORTIZED_ESTIMATORS
    from advi_jax.vae.objectives import ESTIMATORS as TRAINING

    assert set(AMORTIZED_ESTIMATORS) - {"dreg"} <= set(ESTIMATORS)
    assert set(TRAINING) <= set(AMORTIZED_ESTIMATORS)
    assert amortized.AMORTIZED_ESTIMATORS is AMORTIZED_ESTIMATORS


def test_dreg_and_stl_exact_at_optimum(key):
    decoder, batch = amortized.linear_gaussian_example(key, batch_size=16)
    optimum = amortized.optimal_encoder(decoder)
    stats = {e: gradient_stats(amortized.amortized_surrogate(e, decoder, batch, 4), optimum, key, num_draws=200,
                               time_repeats=0) for e in amortized.AMORTIZED_ESTIMATORS}
    assert float(stats["dreg"].variance_trace) < 1e-9 and float(stats["stl"].variance_trace) < 1e-9
    assert float(stats["reparam"].variance_trace) > 1e-2
    assert stats["score"].variance_trace_interval[0] > 100 * stats["reparam"].variance_trace_interval[1]


def test_dreg_equals_reference_formula(key):
    """grad of the DReG surrogate = mean_b sum_k stop(w~_bk^2) d log w_bk(z_bk(phi), stop phi) / d phi (Tucker eq. 7)."""
    decoder, batch = amortized.linear_gaussian_example(key, batch_size=5)
    phi = jax.tree_util.tree_map(lambda a: a + 0.3, amortized.optimal_encoder(decoder))
    k = jax.random.key(7)
    num_samples = 6
    got = jax.jit(jax.grad(amortized.amortized_surrogate("dreg", decoder, batch, num_samples)))(phi, k)

    def log_normal(x, mean, scale):
        return jnp.sum(-0.5 * ((x - mean) / scale) ** 2 - jnp.log(scale) - 0.5 * jnp.log(2 * jnp.pi), axis=-1)

    def reference(p):
        mean = batch @ p["A"].T + p["c"][None, :]
        scale = jax.nn.softplus(p["raw_scale"])
        eps = jax.random.normal(k, (batch.shape[0], num_samples, mean.shape[-1]))
        z = mean[:, None, :] + scale[None, None, :] * eps
        q = jax.lax.stop_gradient(p)
        q_mean, q_scale = batch @ q["A"].T + q["c"][None, :], jax.nn.softplus(q["raw_scale"])
        log_w = (log_normal(batch[:, None, :], z @ decoder.weight.T, decoder.noise_scale)
                 + log_normal(z, 0.0, 1.0) - log_normal(z, q_mean[:, None, :], q_scale[None, None, :]))
        w2 = jax.lax.stop_gradient(jax.nn.softmax(log_w, axis=1) ** 2)
        return jnp.mean(jnp.sum(w2 * log_w, axis=1))

    want = jax.jit(jax.grad(reference))(phi)
    for name in phi:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-6)
    assert float(jnp.max(jnp.abs(want["A"]))) > 1e-3  # a real gradient, not zeros


def test_elbo_score_is_the_library_score(key):
    """For the ELBO, 'score' means what advi_jax.estimators 'score' means: mean_k stop(log w_k) grad log q(z_k)."""
    from advi_jax.vae.objectives import bound_surrogate

    z0 = jax.random.normal(key, (1, 5, 2))
    target = jnp.array([0.5, -1.0])

    def surrogate(loc):
        z = loc[None, None, :] + z0

        def log_q(zz, stop=False):
            m = jax.lax.stop_gradient(loc) if stop else loc
            return -0.5 * jnp.sum((zz - m[None, None, :]) ** 2, axis=-1)

        def log_w(zz, stop_q):
            return -0.5 * jnp.sum((zz - target[None, None, :]) ** 2 / 4.0, axis=-1) - log_q(zz, stop_q)

        return jnp.sum(bound_surrogate(log_w, z, "elbo", "score", log_q))

    loc = jnp.array([0.1, 0.2])
    got = jax.grad(surrogate)(loc)
    z = loc[None, :] + z0[0]
    f = -0.5 * jnp.sum((z - target[None, :]) ** 2 / 4.0, axis=-1) + 0.5 * jnp.sum((z - loc[None, :]) ** 2, axis=-1)
    want = jnp.mean(f[:, None] * (z - loc[None, :]), axis=0)  # grad_loc log q(z) = z - loc
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_bad_estimator(key):
    decoder, batch = amortized.linear_gaussian_example(key, batch_size=4)
    with pytest.raises(ValueError, match="choose from"):
        amortized.amortized_surrogate("score_baseline", decoder, batch)
