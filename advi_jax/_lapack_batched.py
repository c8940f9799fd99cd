"""Batched Cholesky factorisations and triangular solves on the CPU as one LAPACK call per batch element.

jaxlib before 0.11.2 runs a batched LAPACK call (`potrf`, `trsm`, ...) on XLA:CPU by splitting the
batch over the intra-op thread pool and blocking until the pieces finish. When the program runs as
many such calls at once as the pool has threads, each waits for pieces queued behind the others
and the process hangs at 0% CPU for good. On a 2-core machine two calls suffice: a DADVI fit of a
latent Gaussian-process model (a Cholesky and triangular solves per draw, vmapped over the draws,
differentiated twice) hung in its first step, and so does the minimal program in
`tests/test_lapack_batched.py` (a vmapped Hessian-vector product of a vmapped Cholesky and
solve). jaxlib 0.11.2 takes that parallel path out of its open-source builds.

`install()` (called when `advi_jax.compile_options` is imported, i.e. before any fit compiles)
lowers these two primitives on the CPU, whenever their operands carry batch dimensions, as a loop
(`lax.map`) of unbatched LAPACK calls, which never enter the batch-parallel path (what 0.11.2 does
for every batch); an unbatched call keeps jaxlib's lowering unchanged. (XLA's own expansions instead
cost 4-5x on a GP model.) It is process-wide
(JAX's lowering rules are), touches only these batched calls, and does nothing on jaxlib 0.11.2 or
later. `ADVI_JAX_BATCHED_LAPACK=1` keeps jaxlib's lowering.
"""

from __future__ import annotations

import os

_STATE: dict = {}


def _affected() -> bool:
    import jaxlib

    try:
        version = tuple(int(p) for p in jaxlib.__version__.split(".")[:3])
    except ValueError:
        return True
    return version < (0, 11, 2)


def installed() -> bool:
    """Whether the batched calls are lowered as loops of unbatched LAPACK calls in this process."""
    return bool(_STATE.get("installed"))


def install() -> bool:
    """Lower batched CPU Cholesky / triangular solves as loops of unbatched LAPACK calls (see the module
    docstring); True when installed (now or before), False where not needed or switched off."""
    if _STATE.get("installed"):
        return True
    if os.environ.get("ADVI_JAX_BATCHED_LAPACK", "") == "1" or not _affected():
        return False
    try:
        from jax import lax
        from jax._src.interpreters import mlir
        from jax._src.lax import linalg
        lapack_cholesky, lapack_solve = linalg._cholesky_cpu_lowering, linalg._triangular_solve_cpu_lower
    except (ImportError, AttributeError):  # JAX's internals moved: leave its lowering alone
        return False

    def each(bind, *operands):
        """`bind` (an unbatched LAPACK call) over the flattened batch, one element after another."""
        batch = operands[0].shape[:-2]
        flat = [x.reshape((-1,) + x.shape[-2:]) for x in operands]
        out = lax.map(lambda xs: bind(*xs), flat)
        return out.reshape(batch + out.shape[-2:])

    def cholesky(ctx, operand):
        if len(ctx.avals_in[0].shape) > 2:
            return mlir.lower_fun(lambda x: each(linalg.cholesky_p.bind, x), multiple_results=False)(ctx, operand)
        return lapack_cholesky(ctx, operand)

    def triangular_solve(ctx, a, b, **params):
        if len(ctx.avals_in[0].shape) > 2:
            return mlir.lower_fun(lambda x, y: each(lambda u, v: linalg.triangular_solve_p.bind(u, v, **params),
                                                    x, y), multiple_results=False)(ctx, a, b)
        return lapack_solve(ctx, a, b, **params)

    mlir.register_lowering(linalg.cholesky_p, cholesky, platform="cpu")
    mlir.register_lowering(linalg.triangular_solve_p, triangular_solve, platform="cpu")
    _STATE.update(installed=True, restore=lambda: (
        mlir.register_lowering(linalg.cholesky_p, lapack_cholesky, platform="cpu"),
        mlir.register_lowering(linalg.triangular_solve_p, lapack_solve, platform="cpu")))
    return True


def uninstall() -> None:
    """Give jaxlib its own lowering back (for measurements; programs already compiled keep theirs)."""
    restore = _STATE.pop("restore", None)
    if restore is not None:
        restore()
    _STATE["installed"] = False
