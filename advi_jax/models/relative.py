"""Log densities of the ready GLMs relative to a reference point, accurate to the size of the difference.

The importance diagnostics need `log p(zeta_s) - log q(zeta_s)` to an accuracy well below its
spread over the draws. For a ready GLM with N rows, `log p` is a sum of N terms of magnitude
~1e5-1e6 at N = 1e6, so in float32 each evaluation carries a rounding of ~0.01-0.1, while a
near-exact fit's log ratios spread by ~1e-3: the diagnostics would read rounding noise. Here
`log p(zeta) - log p(zeta_ref)` is formed term by term: the likelihood as a sum of per-row
differences (`glm.glm_log_likelihood_difference`), the prior and the Jacobian as differences of
O(K)-sized values, so its rounding scales with the difference, not with |log p|.

On CPU with the native GLM kernel built, the likelihood's differences for a batch of draws (the
diagnostics evaluate this function under `vmap` over draws) are one call of the kernel's
difference entry point (`_native.GLM_DIFF_TARGETS`): X is read once for all draws, the rows are
shared over the CPU's threads, and nothing but that call is compiled for the pass (the XLA form,
`glm_log_likelihood_difference`, is a blocked loop that took 0.5 s of CPU to compile at N = 1e6).
Per row it forms the same differences, so its accuracy is the XLA form's or better (its block
sums are accumulated in double). Elsewhere (no kernel, another platform, mixed dtypes) the XLA form.

`RegressionModel.log_density_relative` calls `log_density_relative` here; models without that
method are evaluated as plain differences by `advi_jax.result` (no gain, no loss).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

from advi_jax._types import Array, ArrayLike
from advi_jax.models import _native
from advi_jax.models import glm as _glm
from advi_jax.models.glm import glm_log_likelihood_difference
from advi_jax.models.regression import RegressionModel, _log_prior

__all__ = ["log_density_relative", "likelihood_difference", "ACCURATE_KINDS"]

ACCURATE_KINDS = {"logistic": "bernoulli", "poisson": "poisson"}
"""The regression kinds with a per-row difference (the others are plain differences)."""


def log_density_relative(model: RegressionModel, zeta: ArrayLike, zeta_ref: ArrayLike) -> tuple[Array, Array]:
    """(`model.log_density(zeta) - model.log_density(zeta_ref)`, `model.log_density(zeta_ref)`), the first
    without the rounding of |log p|.

    Args:
      model: a ready GLM (`logistic_regression`, `poisson_regression`, ...).
      zeta, zeta_ref: (K,) points in R^K (vmap for batches of `zeta`).

    Returns:
      (difference, log p(zeta_ref)), scalars (the second a by-product of the first); for kinds
      outside `ACCURATE_KINDS` (probit, negative binomial) the plain difference.

    Example:
      >>> import numpy as np, jax.numpy as jnp, advi_jax as aj
      >>> x = np.random.default_rng(0).normal(size=(50, 2)); y = (x[:, 0] > 0).astype(float)
      >>> model = aj.models.logistic_regression(x, y)
      >>> d, at_ref = log_density_relative(model, jnp.full(3, 0.01), jnp.zeros(3))
    """
    info = model.info
    if info.kind not in ACCURATE_KINDS:
        at_ref = model.log_density(zeta_ref)
        return model.log_density(zeta) - at_ref, at_ref
    params, log_det = model.to_constrained_and_log_det(zeta)
    ref, log_det_ref = model.to_constrained_and_log_det(zeta_ref)
    data = model.data
    intercept = params["intercept"] if info.intercept else 0.0
    intercept_ref = ref["intercept"] if info.intercept else 0.0
    log_lik, log_lik_ref = likelihood_difference(data["x"], data["y"], params["beta"], intercept, ref["beta"],
                                                 intercept_ref, data.get("offset"), ACCURATE_KINDS[info.kind])
    prior_ref = _log_prior(ref, info) + log_det_ref
    return (log_det + _log_prior(params, info) - prior_ref) + log_lik, prior_ref + log_lik_ref


def likelihood_difference(x: ArrayLike, y: ArrayLike, beta: ArrayLike, intercept: ArrayLike, beta_ref: ArrayLike,
                          intercept_ref: ArrayLike, offset: ArrayLike | None = None, family: str = "bernoulli"
                          ) -> tuple[Array, Array]:
    """`glm.glm_log_likelihood_difference` through the native kernel on CPU when it is built (module docstring).

    Under `jax.vmap` over `beta` / `intercept` (a batch of draws) the kernel is called once for the
    whole batch. Same arguments and returns as `glm_log_likelihood_difference`.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.ones((10, 3)); y = jnp.ones(10)
      >>> d, at_ref = likelihood_difference(x, y, jnp.full(3, 1e-3), 0.0, jnp.zeros(3), 0.0)
    """
    x = jnp.asarray(x)
    dtype = jnp.result_type(x, beta)
    native = (_glm._choose_kernel("auto") == "native" and x.dtype == dtype and dtype in (jnp.float32, jnp.float64)
              and x.ndim == 2 and x.shape[1] >= 1 and jnp.ndim(beta) == 1 and jnp.shape(beta) == x.shape[1:])
    if not native:
        return glm_log_likelihood_difference(x, y, beta, intercept, beta_ref, intercept_ref, offset, family)
    y = jnp.asarray(y, dtype)
    beta, beta_ref = jnp.asarray(beta, dtype), jnp.asarray(beta_ref, dtype)
    intercept, intercept_ref = jnp.asarray(intercept, dtype), jnp.asarray(intercept_ref, dtype)
    offset = None if offset is None else jnp.asarray(offset, dtype)
    if _native.cpu_only():  # nothing but CPU: no other branch to trace
        return _native_difference(x, y, beta, intercept, beta_ref, intercept_ref, offset, family)
    return jax.lax.platform_dependent(
        x, y, beta, intercept, beta_ref, intercept_ref, offset,
        cpu=lambda *a: _native_difference(*a, family),
        default=lambda *a: glm_log_likelihood_difference(*a, family))


def _native_difference(x, y, beta, intercept, beta_ref, intercept_ref, offset, family):
    dtype = x.dtype
    off = jnp.zeros((0,), dtype) if offset is None else offset
    lgy = gammaln(y + 1.0) if family == "poisson" else jnp.zeros((0,), dtype)
    ref = jnp.concatenate([beta_ref, intercept_ref[None]])
    step, step_c = (beta - beta_ref)[None], (intercept - intercept_ref)[None]
    diff, at_ref = _difference_call(family)(x, y, off, lgy, ref, step, step_c)
    return diff[0], at_ref[0]


def _ffi_difference(x, y, offset, lgy, ref, step, step_c, family):
    dtype = jnp.dtype(x.dtype)
    out = (jax.ShapeDtypeStruct(step_c.shape, dtype), jax.ShapeDtypeStruct(step_c.shape, dtype))
    call = jax.ffi.ffi_call(_native.GLM_DIFF_TARGETS[dtype.name], out)
    return call(x, y, offset, lgy, ref, step, step_c, family=np.int64(_glm.GLM_FAMILIES.index(family)),
                max_threads=np.int64(_native.num_threads()))


@functools.cache
def _difference_call(family: str):
    """The kernel call (x, y, offset, lgy, ref, step (S, D), step_c (S,)) -> (diff (S,), at_ref (S,)), whose
    vmap over the steps folds the batch into S (one read of X for all of them)."""

    @jax.custom_batching.custom_vmap
    def call(x, y, offset, lgy, ref, step, step_c):
        return _ffi_difference(x, y, offset, lgy, ref, step, step_c, family)

    @call.def_vmap
    def rule(axis_size, in_batched, *args):
        x, y, offset, lgy, ref, step, step_c = args
        if not any(in_batched[:5]):  # the same data and reference for every member: one call
            s, d = step.shape[-2:]
            step = step if in_batched[5] else jnp.broadcast_to(step, (axis_size, s, d))
            step_c = step_c if in_batched[6] else jnp.broadcast_to(step_c, (axis_size, s))
            diff, at_ref = call(x, y, offset, lgy, ref, step.reshape(axis_size * s, d), step_c.reshape(-1))
            return (diff.reshape(axis_size, s), at_ref.reshape(axis_size, s)), (True, True)
        # A batch of data or of references (several fits): one call per member, unbatched inputs shared.
        batched = [a for a, b in zip(args, in_batched) if b]

        def one(members):
            it = iter(members)
            return call(*(next(it) if b else a for a, b in zip(args, in_batched)))

        return jax.lax.map(one, batched), (True, True)

    return call
