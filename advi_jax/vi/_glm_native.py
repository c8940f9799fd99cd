"""`glm_exact`'s pass over X through the native CPU kernel (`advi_jax/models/_native/glm_exact_kernel.cc`).

One FFI call per pass returns what `glm_exact._pass` returns (sum_i E[l_i] without the data-only
-lgamma(y_i + 1) of Poisson, which glm_exact adds once per fit, the likelihood's
gradient in the mean (K,) and its expected negative Hessian (K, K)) for the logistic and Poisson
ready models, mean-field or full-rank q, float32 or float64: the moments mu_i, v_i, the
quadrature and the sums g and X~' diag(w) X~ in one fused read of X, vectorised across rows and
shared over XLA's CPU threads. The logistic rule is `_glm_quad.NODE_TIERS` (or a fixed even
`num_nodes`), passed to the kernel as a table: the same node pairs and formulas as the XLA pass,
the tier chosen per tile of 32-256 rows by the largest sd there (the XLA pass: per block of
rows), so the two agree to the rule's measured error bound (both rules are within it of the
200-node rule). Elsewhere (an accelerator, probit, the negative binomial, an odd fixed node count,
the kernel not built) `glm_exact` takes its XLA pass; `Options(kernel="xla")` forces it.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from advi_jax.vi import _glm_quad
from advi_jax.vi._glm_quad import NODE_TIERS, _rule_cached

__all__ = ["KINDS", "covers", "data_constant", "native_or_xla"]

KINDS = ("logistic", "poisson")


def covers(kind: str, dtype, num_nodes: int | None, kernel: str) -> bool:
    """Whether the native pass applies to this model and options, and the kernel is loaded now.

    Never builds or waits; `kernel="native"` raises when the kernel is unavailable (as the GLM
    models' `kernel="native"` does), `kernel="xla"` is always False.
    """
    if kernel == "xla":
        return False
    from advi_jax.models import glm as _glm  # models import base; avoid a cycle

    fits = (kind in KINDS and jnp.dtype(dtype) in (jnp.float32, jnp.float64)
            and (num_nodes is None or num_nodes % 2 == 0))
    if kernel == "native" and not fits:
        raise ValueError(f"options.kernel='native' covers kinds {KINDS} in float32 / float64 with an even or "
                         f"adaptive num_nodes, got kind {kind!r}, dtype {jnp.dtype(dtype).name}, "
                         f"num_nodes {num_nodes!r}")
    return fits and _glm._choose_kernel(kernel) == "native"


@functools.cache
def _rule_table(num_nodes: int | None) -> np.ndarray:
    """(tiers, 2 + 2 P) float64: per tier [sd bound, pairs, positive nodes (P), their weights (P)], zero-padded."""
    tiers = NODE_TIERS if num_nodes is None else ((math.inf, int(num_nodes)),)
    most = max(n // 2 for _, n in tiers)
    table = np.zeros((len(tiers), 2 + 2 * most))
    for i, (bound, n) in enumerate(tiers):
        t, w = _rule_cached(n)
        half = n // 2
        table[i, 0], table[i, 1] = bound, half
        table[i, 2:2 + half] = t[n - half:]
        table[i, 2 + most:2 + most + half] = w[n - half:]
    return table


def _ffi(layout, data, m, factor, meanfield, num_nodes):
    from advi_jax.models import _native

    x, y, offset = data["x"], data["y"], data.get("offset")
    dtype = jnp.dtype(x.dtype)
    k = m.shape[0]
    empty = jnp.zeros((0,), dtype)
    y = jnp.asarray(y, dtype)
    # Poisson's -lgamma(y + 1) is not evaluated per pass: glm_exact adds its sum once per fit
    # (`_glm_quad.data_constant`), so the kernel's per-row log y! input is left empty.
    lgy = empty
    offset = empty if offset is None else jnp.asarray(offset, dtype)
    out = (jax.ShapeDtypeStruct((), dtype), jax.ShapeDtypeStruct((k,), dtype), jax.ShapeDtypeStruct((k, k), dtype))
    call = jax.ffi.ffi_call(_native.GLM_EXACT_TARGETS[dtype.name], out, vmap_method="sequential")
    return call(x, y, offset, lgy, m.astype(dtype), factor.astype(dtype), jnp.asarray(_rule_table(num_nodes), dtype),
                kind=np.int64(KINDS.index(layout.kind)), intercept=np.int64(bool(layout.intercept)),
                meanfield=np.int64(bool(meanfield)), max_threads=np.int64(_native.num_threads()))


def native_or_xla(xla_pass, layout, data, m, factor, meanfield, num_nodes, block):
    """The native pass on CPU, `xla_pass(layout, data, m, factor, meanfield, num_nodes, block)` elsewhere
    (chosen when lowering); call only where `covers` said True.

    Where CPU is the only platform of the process (`_native.cpu_only`), the native pass alone: the XLA
    pass is then not traced at all (`jax.lax.platform_dependent` traces every branch, which cost
    the glm_exact loop's first call 0.07 s of its 0.12 s of tracing at N = 1e4, D = 10).
    """
    from advi_jax.models import _native

    if _native.cpu_only():
        return _ffi(layout, data, m, factor, meanfield, num_nodes)
    return jax.lax.platform_dependent(
        data, m, factor,
        cpu=lambda d_, m_, f_: _ffi(layout, d_, m_, f_, meanfield, num_nodes),
        default=lambda d_, m_, f_: xla_pass(layout, d_, m_, f_, meanfield, num_nodes, block))


def data_constant(kind: str, y, dtype, kernel: str = "auto"):
    """`_glm_quad.data_constant` (-sum_i lgamma(y_i + 1) for Poisson and the negative binomial, else 0),
    by the native kernel on CPU where it is loaded (`kernel` as `glm_exact.Options.kernel`).

    The kernel evaluates the sum in double with a vectorised lgamma (3.2 ns a row); XLA's lgamma,
    in the unvectorised code of the fast compile options that the glm_exact loop programs use at
    small K, cost 30 ns a row (N = 1e6: 31 ms a fit; N = 1e5: 2.7-3.3 ms, a fifth of a second call).
    Elsewhere, and with `kernel="xla"`, the XLA sum.

    Args:
      kind: the model kind ("logistic", "probit", "poisson", "negbin").
      y: (N,) non-negative counts (traced or concrete).
      dtype: float dtype of the result.
      kernel: "auto", "native" or "xla".

    Returns:
      A scalar of `dtype`.

    Example:
      >>> import jax.numpy as jnp
      >>> float(data_constant("poisson", jnp.asarray([0.0, 1.0, 2.0]), jnp.float32))  # doctest: +ELLIPSIS
      -0.693...
    """
    from advi_jax.models import _native
    from advi_jax.models import glm as _glm  # models import base; avoid a cycle

    dtype = jnp.dtype(dtype)
    if (kind not in _glm_quad.CONSTANT_KINDS or kernel == "xla" or dtype not in (jnp.float32, jnp.float64)
            or _glm._choose_kernel("auto") != "native"):
        return _glm_quad.data_constant(kind, y, dtype)

    def native(y_):
        call = jax.ffi.ffi_call(_native.LOG_FACTORIAL_TARGETS[dtype.name], jax.ShapeDtypeStruct((), dtype),
                                vmap_method="sequential")
        return -call(jnp.ravel(jnp.asarray(y_, dtype)))

    if _native.cpu_only():
        return native(y)
    return jax.lax.platform_dependent(y, cpu=native, default=lambda y_: _glm_quad.data_constant(kind, y_, dtype))
