"""The adaptive Gauss-Hermite rule of glm_exact (one loop over node pairs) against the per-tier rule.

The loop must give, for every tier, the numbers of evaluating that tier's rule node by node
(`expected_log_lik` with the tier's node count), and its value must differentiate to its own
first and curvature outputs (the custom JVP). A wrong pairing, a wrong tier or a dropped chunk
changes the value by far more than the tolerance.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advi_jax.cli import fast_compile_for_small_data
from advi_jax.vi import _glm_lik
from advi_jax.vi import _glm_quad as Q


@pytest.mark.parametrize("kind,tiers", [("logistic", Q.NODE_TIERS), ("probit", _glm_lik.PROBIT_NODE_TIERS)])
def test_adaptive_rule_equals_each_tier(kind, tiers):
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        bounds = [0.0] + [b for b, _ in tiers[:-1]] + [8.0]
        for (low, high), (_, nodes) in zip(zip(bounds[:-1], bounds[1:]), tiers):
            mu = jnp.asarray(rng.normal(size=40) * 3.0)
            sd = rng.uniform(low, high, size=40)
            sd[0] = high if np.isfinite(high) else 8.0  # the block's largest sd picks the tier
            var, y = jnp.asarray(sd ** 2), jnp.asarray(rng.integers(0, 2, 40) * 1.0)
            auto = jax.jit(Q.expected_log_lik_auto, static_argnums=0)(kind, y, mu, var)
            ref = jax.jit(Q.expected_log_lik, static_argnums=0)(kind, y, mu, var, *Q.quadrature(nodes, jnp.float64))
            for a, r in zip(auto, ref):
                np.testing.assert_allclose(np.asarray(a), np.asarray(r), rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("kind", ["logistic", "probit"])
def test_value_differentiates_to_first_and_curvature(kind):
    rng = np.random.default_rng(1)
    with jax.enable_x64(True):
        mu, var = jnp.asarray(rng.normal(size=12)), jnp.asarray(rng.uniform(0.1, 3.0, size=12))
        y = jnp.asarray(rng.integers(0, 2, 12) * 1.0)
        _, first, curvature = jax.jit(Q.expected_log_lik_auto, static_argnums=0)(kind, y, mu, var)
        g_mu, g_var = jax.jit(jax.grad(lambda m, v: jnp.sum(Q.expected_log_lik_auto(kind, y, m, v)[0]), (0, 1)))(
            mu, var)
        np.testing.assert_allclose(g_mu, first, rtol=1e-12)
        np.testing.assert_allclose(2.0 * g_var, curvature, rtol=1e-12)
        # Forward over reverse (jax.hessian) differentiates the first output: the same second
        # derivative as autodiff of the node-by-node rule of the tier (sd <= sqrt(3): 32 nodes).
        hess = jax.jit(jax.hessian(lambda m: jnp.sum(Q.expected_log_lik_auto(kind, y, m, var)[0])))(mu)
        t, w = Q.quadrature(32, jnp.float64)
        ref = jax.jit(jax.hessian(lambda m: jnp.sum(Q.expected_log_lik(kind, y, m, var, t, w)[0])))(mu)
        np.testing.assert_allclose(np.diagonal(hess), np.diagonal(ref), rtol=1e-10, atol=1e-12)


def test_fast_compile_flag_only_on_a_command_line_run(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert not fast_compile_for_small_data(10, 3)  # a call from Python (as here) leaves XLA alone
    import os

    assert "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", "")
