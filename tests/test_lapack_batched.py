"""Batched CPU Cholesky / triangular solves run one LAPACK call per batch element
(`advi_jax._lapack_batched`): the same numbers, and no hang where jaxlib's batch-parallel path
deadlocks its own thread pool."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import advi_jax.compile_options  # noqa: F401  (installs the lowering)
from advi_jax import _lapack_batched

pytestmark = pytest.mark.skipif(not _lapack_batched._affected(), reason="jaxlib >= 0.11.2 has no batch-parallel path")


def test_batched_calls_loop_over_unbatched_lapack_and_agree_with_float64():
    assert _lapack_batched.installed()
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 4, 6, 6)).astype(np.float32)
    a = a @ np.swapaxes(a, -1, -2) + 6 * np.eye(6, dtype=np.float32)
    b = rng.normal(size=(3, 4, 6, 2)).astype(np.float32)
    solve = jax.jit(lambda a, b: jax.scipy.linalg.solve_triangular(jnp.linalg.cholesky(a), b, lower=True))
    text = solve.lower(a, b).as_text()
    assert text.count("stablehlo.while") == 2 and "lapack_spotrf" in text and "lapack_strsm" in text
    want = np.stack([[np.linalg.solve(np.linalg.cholesky(a[i, j].astype(np.float64)), b[i, j]) for j in range(4)]
                     for i in range(3)])
    np.testing.assert_allclose(solve(a, b), want, rtol=1e-5, atol=1e-6)
    # gradients and a vmap of the whole thing go through the same rules
    grad = jax.jit(jax.grad(lambda a, b: jnp.sum(solve(a, b) ** 2)))(a, b)
    step = 1e-3
    e = np.zeros_like(a)
    e[1, 2, 3, 1] = e[1, 2, 1, 3] = step
    f64 = (lambda m: np.sum(np.linalg.solve(np.linalg.cholesky(m), b[1, 2].astype(np.float64)) ** 2))
    numeric = (f64(a[1, 2].astype(np.float64) + e[1, 2]) - f64(a[1, 2].astype(np.float64) - e[1, 2])) / (2 * step)
    np.testing.assert_allclose(grad[1, 2, 3, 1] + grad[1, 2, 1, 3], numeric, rtol=2e-3)
    # an unbatched call keeps jaxlib's LAPACK lowering, with no loop
    single = jax.jit(jnp.linalg.cholesky).lower(a[0, 0]).as_text()
    assert "lapack_spotrf" in single and "stablehlo.while" not in single


def test_vmapped_hessian_vector_products_of_a_batched_cholesky_finish():
    # Under jaxlib 0.10's batch-parallel LAPACK path this program hangs for good on a 2-core machine
    # (both pool threads wait in ParallelBatchMap for pieces queued behind each other); it runs in a
    # child process so that a hang fails the test instead of the suite.
    program = textwrap.dedent("""
        import jax, jax.numpy as jnp
        import advi_jax.compile_options
        n = 40
        x = jnp.linspace(0, 1, n)
        k0 = jnp.exp(-0.5 * (x[:, None] - x[None, :]) ** 2 / 0.01)
        def logp(t):
            chol = jnp.linalg.cholesky(jnp.exp(t[0]) * k0 + 1e-2 * jnp.eye(n))
            a = jax.scipy.linalg.solve_triangular(chol, t[1:], lower=True)
            return -0.5 * jnp.sum(a ** 2) - jnp.sum(jnp.log(jnp.diag(chol))) - 0.5 * t[0] ** 2
        grad = jax.grad(lambda e, z: -jnp.sum(jax.vmap(logp)(e + z)))
        hvps = jax.jit(lambda e, z, v: jax.vmap(lambda u: jax.jvp(lambda w: grad(w, z), (e,), (u,))[1])(v))
        z = 0.1 * jax.random.normal(jax.random.key(0), (30, n + 1))
        for i in range(20):
            out = hvps(jnp.full(n + 1, 1e-3 * i), z, jnp.eye(n + 1)[:8]).block_until_ready()
        print("finite", bool(jnp.all(jnp.isfinite(out))))
    """)
    env = {k: v for k, v in os.environ.items() if k != "ADVI_JAX_BATCHED_LAPACK"}
    env["JAX_PLATFORMS"] = "cpu"
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "finite True" in done.stdout
