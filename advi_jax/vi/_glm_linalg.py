"""Small dense linear algebra for `glm_exact`'s step in XLA's own operations, without LAPACK.

On CPU, JAX lowers `jnp.linalg.cholesky` and triangular solves to LAPACK through jaxlib, which
loads LAPACK's function pointers from `scipy.linalg.cython_lapack` on the first such lowering in
a process: importing `scipy.linalg` there cost 0.18-0.27 s (after `import advi_jax`, 2-core
machine), more than the rest of the ready GLMs' loop compile. For the step's K x K matrices
(K = D + 1 <= `MAX_DIM`) the factorisation and the solves are a few small loops of matrix-vector
products here (K^3 / 3 and K^2 flops; microseconds a step at K = 101), the same arithmetic as
LAPACK's unblocked Cholesky (equal to float rounding, not bit for bit). Above `MAX_DIM`,
LAPACK (blocked, faster where K^3 matters).

`glm_exact` uses the loops for the mean-field family only: there the whole fit, diagnostics
included, then needs no LAPACK (N = 1e4, D = 10, a fresh process: the first call 0.41-0.52 ->
0.34-0.43 s). The full-rank family's diagnostics solve with LAPACK anyway (`FullRankGaussian.log_prob`),
and its step has five such factorisations and solves, whose loops cost more XLA compile
(0.08-0.10 -> 0.18-0.21 s) than the import they would avoid; it keeps LAPACK.

A matrix that is not positive definite gives NaN entries (a negative or zero pivot), as
`jnp.linalg.cholesky` does; the step tests its factor for finiteness.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.linalg import cho_solve as _lapack_cho_solve

from advi_jax._types import Array

__all__ = ["MAX_DIM", "cholesky", "cho_solve"]

MAX_DIM = 128
"""Largest K factored by the loops here; larger ones go to LAPACK."""


def cholesky(a: Array, lapack: bool = False) -> Array:
    """Lower Cholesky factor L (L L' = a) of a symmetric positive-definite (K, K) `a`, reading its lower half.

    Column j: L[j, j] = sqrt(a[j, j] - |L[j, :j]|^2), L[i, j] = (a[i, j] - L[i, :j] . L[j, :j]) / L[j, j]
    for i > j; one matrix-vector product per column. `lapack=True` (or K > `MAX_DIM`): LAPACK's.
    """
    k = a.shape[-1]
    if lapack or k > MAX_DIM:
        return jnp.linalg.cholesky(a)
    idx = jnp.arange(k)

    def column(j, L):
        row = jnp.where(idx < j, L[j], 0.0)  # L[j, :j]
        pivot = jnp.sqrt(a[j, j] - row @ row)
        below = (a[:, j] - L @ row) / pivot
        return L.at[:, j].set(jnp.where(idx > j, below, jnp.where(idx == j, pivot, 0.0)))

    return jax.lax.fori_loop(0, k, column, jnp.zeros_like(a))


def cho_solve(L: Array, b: Array, lapack: bool = False) -> Array:
    """x with (L L') x = b for a lower (K, K) `L` and a (K,) `b`: forward then back substitution
    (`lapack=True`, or K > `MAX_DIM`: LAPACK's)."""
    k = L.shape[-1]
    if lapack or k > MAX_DIM:
        return _lapack_cho_solve((L, True), b)
    idx = jnp.arange(k)

    def forward(i, y):  # L y = b
        return y.at[i].set((b[i] - jnp.where(idx < i, L[i], 0.0) @ y) / L[i, i])

    y = jax.lax.fori_loop(0, k, forward, jnp.zeros_like(b))

    def back(t, x):  # L' x = y, from the last row up
        i = k - 1 - t
        return x.at[i].set((y[i] - jnp.where(idx > i, L[:, i], 0.0) @ x) / L[i, i])

    return jax.lax.fori_loop(0, k, back, jnp.zeros_like(b))
