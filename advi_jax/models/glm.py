"""GLM log-likelihoods that read the design matrix once per gradient.

For a generalised linear model the log-likelihood is sum_i l(y_i, eta_i) with eta = X beta + c
(+ offset), and its gradient is X^T r + (sum r) for c, with r_i = dl/deta_i. Plain autodiff
computes X @ beta in the forward pass and X^T @ r in the backward pass: two full reads of X,
and on XLA:CPU the transposed product of a row-major X runs ~10x slower than X @ beta. Here one
`fori_loop` walks X in row blocks small enough to stay in cache and, for each block, forms
eta_b = X_b beta, l_b, r_b and X_b^T r_b while X_b is hot: one read of X gives the value and
the gradient. A `jax.custom_vjp` hands that gradient to autodiff, so `jax.grad` of a log joint
that calls `glm_log_likelihood` reads X once. Under `jax.vmap` over samples of beta (as the ELBO
estimators do) the block products become matrix-matrix products, still one read of X for all
samples.

Per-datum forms (stable for any eta):
  * "bernoulli" (logit link): l = log sigmoid(s eta) = min(s eta, 0) - log1p(exp(-|eta|)),
    s = 2y - 1; r = y - sigmoid(eta).
  * "poisson" (log link): l = y eta - exp(eta) - log(y!); r = y - exp(eta).

On CPU the pass runs, by default, in a native kernel (`advi_jax/models/_native/glm_kernel.cc`,
called through `jax.ffi`): the same one read of X, tiled for L1 and split across cores. It is
built ahead of need, never on the clock of a fit: importing this module starts a background
build when the cache lacks it, and `build_kernel()` (or `python -m advi_jax build`) waits for
it. Until it is ready, or on other platforms, or without a C++ compiler, the XLA loop runs
(and a warning says so once); both give the same numbers to float rounding (tested). Which
pass a call takes is decided when `glm_log_likelihood` is called, before anything is traced
into the kernel. `kernel="xla"` forces the XLA loop.

Value without gradient (e.g. the importance diagnostics' 4,096 draws of q, evaluated in
batches under `lax.map`): the kernel's pass computes the gradient as well, which is wasted
there, so the undifferentiated value is an XLA pass over row blocks that computes the value
only; under `jax.vmap` over S coefficient vectors its block product is one matrix product
X_b @ B (one read of X for the whole batch).

`glm_log_likelihood_reference` is the plain autodiff version, kept as the reference both
passes are tested against.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

from advi_jax.models import _native
from advi_jax._types import Array, ArrayLike
from advi_jax._stack import user_stacklevel

__all__ = ["glm_log_likelihood", "glm_log_likelihood_difference", "glm_log_likelihood_reference", "GLM_FAMILIES",
           "build_kernel", "default_block_size", "kernel_status"]

GLM_FAMILIES = ("bernoulli", "poisson")
KERNELS = ("auto", "native", "xla")


def default_block_size(num_features: int) -> int:
    """Rows per block so that one block of float32 X is about 4 MiB (a power of two, >= 256).

    Large enough that the loop's per-iteration overhead is small next to the block's work,
    small enough to stay in the last-level cache between its two uses (measured on XLA:CPU:
    blocks of 512 rows ran ~1.6x slower than blocks of ~8k rows at D = 100).
    """
    rows = (4 * 1024 * 1024) // (4 * max(int(num_features), 1))
    return int(max(256, 1 << (max(rows, 1).bit_length() - 1)))


def _pointwise(family: str, y: Array, eta: Array) -> tuple[Array, Array]:
    """(log-likelihood terms, d/d eta) for one block; shapes as eta."""
    if family == "bernoulli":
        z = (2.0 * y - 1.0) * eta
        e = jnp.exp(-jnp.abs(eta))
        log_lik = jnp.minimum(z, 0.0) - jnp.log1p(e)
        # sigmoid(eta) from the same exponential: 1/(1+e) for eta >= 0, e/(1+e) otherwise
        sig = jnp.where(eta >= 0, 1.0, e) / (1.0 + e)
        return log_lik, y - sig
    mean = jnp.exp(eta)
    return y * eta - mean - gammaln(y + 1.0), y - mean


def _check(x, y, beta, family):
    if family not in GLM_FAMILIES:
        raise ValueError(f"family must be one of {GLM_FAMILIES}, got {family!r}")
    if jnp.ndim(x) != 2:
        raise ValueError(f"x must be a 2-D (N, D) design matrix, got shape {jnp.shape(x)}")
    if jnp.shape(y) != jnp.shape(x)[:1]:
        raise ValueError(f"y must have shape ({jnp.shape(x)[0]},) to match x, got {jnp.shape(y)}")
    if jnp.shape(beta) != jnp.shape(x)[1:]:
        raise ValueError(f"beta must have shape ({jnp.shape(x)[1]},) to match x, got {jnp.shape(beta)}")


def glm_log_likelihood_reference(x: ArrayLike, y: ArrayLike, beta: ArrayLike, intercept: ArrayLike = 0.0,
                                 offset: ArrayLike | None = None, family: str = "bernoulli") -> Array:
    """Plain (autodiff) GLM log-likelihood: sum_i l(y_i, x_i . beta + intercept + offset_i)."""
    _check(x, y, beta, family)
    eta = x @ beta + intercept
    if offset is not None:
        eta = eta + offset
    return jnp.sum(_pointwise(family, y, eta)[0])


def _blocked_pass(x, y, beta, intercept, offset, family, block_size):
    """One pass over X: (value, d/d beta, d/d intercept, d/d offset)."""
    n, d = x.shape
    dtype = jnp.result_type(x, beta)
    num_blocks, tail = divmod(n, block_size)

    def block_terms(xb, yb, ob):
        eta = xb @ beta + intercept
        if ob is not None:
            eta = eta + ob
        log_lik, r = _pointwise(family, yb, eta)
        # r @ X_b, not X_b.T @ r: XLA:CPU runs the row-vector-times-matrix form several times
        # faster on a row-major block (and it becomes (S, b) @ (b, D) under vmap over samples).
        return jnp.sum(log_lik), r @ xb, jnp.sum(r), r

    def body(i, carry):
        value, g_beta, g_c = carry
        start = i * block_size
        xb = jax.lax.dynamic_slice_in_dim(x, start, block_size)
        yb = jax.lax.dynamic_slice_in_dim(y, start, block_size)
        ob = None if offset is None else jax.lax.dynamic_slice_in_dim(offset, start, block_size)
        v, gb, gc, _ = block_terms(xb, yb, ob)
        return value + v, g_beta + gb, g_c + gc

    zero = jnp.zeros((), dtype)
    carry = (zero, jnp.zeros((d,), dtype), zero)
    if num_blocks:
        carry = jax.lax.fori_loop(0, num_blocks, body, carry)
    value, g_beta, g_c = carry
    if tail:
        start = num_blocks * block_size
        ob = None if offset is None else offset[start:]
        v, gb, gc, _ = block_terms(x[start:], y[start:], ob)
        value, g_beta, g_c = value + v, g_beta + gb, g_c + gc
    return value, g_beta, g_c


VALUE_BLOCK_ROWS = 8192  # rows per block of the value-only pass (bounds the (rows, S) block of eta under vmap)


def _row_block_sum(block_value, x, y, offset, block_size):
    """sum_b block_value(X_b, y_b, offset_b) over row blocks of at most `block_size` rows.

    The block sums are accumulated with a compensated (Kahan-Babuska) carry, so the sum over
    blocks adds no rounding beyond one rounding of the total (the blocks' own sums are XLA's).
    """
    n = x.shape[0]
    num_blocks, tail = divmod(n, block_size)
    if num_blocks == 1 and not tail:
        return block_value(x, y, offset)

    def add(carry, v):  # Neumaier's variant of Kahan summation: total + compensation
        total, comp = carry
        new = total + v
        lost = jnp.where(jnp.abs(total) >= jnp.abs(v), (total - new) + v, (v - new) + total)
        return new, comp + jnp.where(jnp.isfinite(new), lost, 0.0)  # an infinite sum stays infinite, not NaN

    def body(i, carry):
        start = i * block_size
        xb = jax.lax.dynamic_slice_in_dim(x, start, block_size)
        yb = jax.lax.dynamic_slice_in_dim(y, start, block_size)
        ob = None if offset is None else jax.lax.dynamic_slice_in_dim(offset, start, block_size)
        return add(carry, block_value(xb, yb, ob))

    shape = jax.eval_shape(block_value, x[:block_size], y[:block_size],
                           None if offset is None else offset[:block_size])
    zero = jnp.zeros(shape.shape, shape.dtype)
    carry = (zero, zero)
    if num_blocks:
        carry = jax.lax.fori_loop(0, num_blocks, body, carry)
    if tail:
        start = num_blocks * block_size
        carry = add(carry, block_value(x[start:], y[start:], None if offset is None else offset[start:]))
    return carry[0] + carry[1]


def _value_pass(x, y, beta, intercept, offset, family, block_size):
    """The value alone, in row blocks: sum_b sum l(y_b, X_b beta + c (+ offset_b)).

    Under `jax.vmap` over S coefficient vectors each block's product becomes X_b @ B, so one
    read of X serves the whole batch and no gradient is formed.
    """
    def block_value(xb, yb, ob):
        eta = xb @ beta + intercept
        if ob is not None:
            eta = eta + ob
        return jnp.sum(_pointwise(family, yb, eta)[0])

    return _row_block_sum(block_value, x, y, offset, min(block_size, VALUE_BLOCK_ROWS))


def glm_log_likelihood_difference(x: ArrayLike, y: ArrayLike, beta: ArrayLike, intercept: ArrayLike,
                                  beta_ref: ArrayLike, intercept_ref: ArrayLike, offset: ArrayLike | None = None,
                                  family: str = "bernoulli", block_size: int | None = None) -> Array:
    """`glm_log_likelihood(beta) - glm_log_likelihood(beta_ref)`, without the rounding of |log-likelihood|.

    The plain difference of the two sums carries the rounding of each sum, about
    eps x |log-likelihood| (with N = 1e6 rows in float32: |sum| ~ 1e5-1e6, rounding ~ 0.01-0.1),
    which swamps a difference of order 1e-3 (the spread of the importance log ratios of a
    near-exact fit at large N). Here the rows' differences l_i(eta_ref_i + delta_i) - l_i(eta_ref_i),
    delta_i = x_i . (beta - beta_ref) + (c - c_ref), are summed, in blocks with a compensated
    carry across blocks: each row's difference is rounded by ~eps |l_i| (~1e-7), so the sum by
    ~eps sqrt(N) instead of eps |sum| (measured at N = 1e6, float32: 3e-5, against a spread of
    1.3e-3 of the log ratios of a near-exact fit). The reference terms do not depend on the draw
    (computed once per row under vmap), so a (draw, row) costs what the value pass costs. (Forms
    with an error proportional to |delta| -- expm1 / log1p, a cumulant series -- were 3-4x slower
    on XLA:CPU and were not needed at these sizes.) Value only (no gradient); under `jax.vmap` over coefficient vectors each
    block's product is one matrix product, as in the value pass.

    Args:
      x, y, offset, family, block_size: as `glm_log_likelihood`.
      beta, intercept: the coefficients to evaluate.
      beta_ref, intercept_ref: the reference coefficients (e.g. the mean of q).

    Returns:
      (difference, reference): the scalar sum_i [l_i(beta, intercept) - l_i(beta_ref, intercept_ref)]
      and the plain sum_i l_i(beta_ref, intercept_ref), a by-product (its terms are formed anyway).

    Example:
      >>> import jax.numpy as jnp
      >>> from advi_jax.models.glm import glm_log_likelihood_difference
      >>> x = jnp.ones((10, 3)); y = jnp.ones(10)
      >>> d, at_ref = glm_log_likelihood_difference(x, y, jnp.full(3, 1e-3), 0.0, jnp.zeros(3), 0.0)
    """
    _check(x, y, beta, family)
    _check(x, y, beta_ref, family)
    x = jnp.asarray(x)
    dtype = jnp.result_type(x, beta)
    block_size = default_block_size(x.shape[1]) if block_size is None else int(block_size)
    beta, beta_ref = jnp.asarray(beta, dtype), jnp.asarray(beta_ref, dtype)
    intercept, intercept_ref = jnp.asarray(intercept, dtype), jnp.asarray(intercept_ref, dtype)
    step, step_c = beta - beta_ref, intercept - intercept_ref
    offset = None if offset is None else jnp.asarray(offset, dtype)

    def block_value(xb, yb, ob):
        eta_ref = xb @ beta_ref + intercept_ref
        if ob is not None:
            eta_ref = eta_ref + ob
        at_ref = _pointwise(family, yb, eta_ref)[0]
        delta = xb @ step + step_c
        return jnp.stack([jnp.sum(_pointwise(family, yb, eta_ref + delta)[0] - at_ref), jnp.sum(at_ref)])

    both = _row_block_sum(block_value, x, jnp.asarray(y, dtype), offset, min(block_size, VALUE_BLOCK_ROWS))
    return both[0], both[1]


# ---- the native pass ----------------------------------------------------------------------
#
# The FFI call takes canonical shapes: x (G, N, D), y (G, N), offset (G, N) or (0,) when absent,
# log y! (G, N) for the Poisson family or (0,), beta (G, S, D), c (G, S); it returns value
# (G, S), d/d beta (G, S, D) and d/d c (G, S). A custom vmap rule folds a vmapped coefficient
# axis into S (X is still read once for all of them) and a vmapped data axis into G.

def _ffi_pass(x, y, offset, lgy, beta, c, family):
    dtype = jnp.dtype(x.dtype)
    g, s, d = beta.shape
    out = (jax.ShapeDtypeStruct((g, s), dtype), jax.ShapeDtypeStruct((g, s, d), dtype),
           jax.ShapeDtypeStruct((g, s), dtype))
    call = jax.ffi.ffi_call(_native.GLM_TARGETS[dtype.name], out)
    return call(x, y, offset, lgy, beta, c, family=np.int64(GLM_FAMILIES.index(family)),
                max_threads=np.int64(_native.num_threads()))


@functools.cache
def _canonical(family: str):
    @jax.custom_batching.custom_vmap
    def canonical(x, y, offset, lgy, beta, c):
        return _ffi_pass(x, y, offset, lgy, beta, c, family)

    @canonical.def_vmap
    def rule(axis_size, in_batched, x, y, offset, lgy, beta, c):
        x_b, y_b, o_b, l_b, beta_b, c_b = in_batched
        b = axis_size

        def full(a, batched):
            return a if batched else jnp.broadcast_to(a, (b,) + a.shape)

        if not (x_b or y_b or o_b or l_b):
            # The same data for every member of the batch: one pass with B * S coefficient vectors.
            g, s, d = beta.shape[-3:]
            beta2 = jnp.moveaxis(full(beta, beta_b), 0, 1).reshape(g, b * s, d)
            c2 = jnp.moveaxis(full(c, c_b), 0, 1).reshape(g, b * s)
            value, g_beta, g_c = canonical(x, y, offset, lgy, beta2, c2)
            value = jnp.moveaxis(value.reshape(g, b, s), 1, 0)
            g_beta = jnp.moveaxis(g_beta.reshape(g, b, s, d), 1, 0)
            g_c = jnp.moveaxis(g_c.reshape(g, b, s), 1, 0)
        elif x_b:
            # A batch of datasets: fold it into the problem axis G.
            def fold(a):
                return a.reshape((a.shape[0] * a.shape[1],) + a.shape[2:])

            g = x.shape[1]
            offset2 = fold(full(offset, o_b)) if offset.shape[-1] != 0 else offset
            lgy2 = fold(full(lgy, l_b)) if lgy.shape[-1] != 0 else lgy
            value, g_beta, g_c = canonical(fold(x), fold(full(y, y_b)), offset2, lgy2, fold(full(beta, beta_b)),
                                           fold(full(c, c_b)))
            value, g_beta, g_c = (a.reshape((b, g) + a.shape[1:]) for a in (value, g_beta, g_c))
        else:
            # One X shared by batches of responses or offsets: one pass per batch member.
            batch = (full(y, y_b), full(offset, o_b), full(lgy, l_b), full(beta, beta_b), full(c, c_b))
            value, g_beta, g_c = jax.lax.map(lambda args: canonical(x, *args), batch)
        return (value, g_beta, g_c), (True, True, True)

    return canonical


def _native_pass(x, y, beta, intercept, offset, family):
    """(value, d/d beta, d/d intercept) of one problem through the FFI kernel."""
    off = jnp.zeros((0,), x.dtype) if offset is None else offset[None]
    lgy = gammaln(y + 1.0)[None] if family == "poisson" else jnp.zeros((0,), x.dtype)
    value, g_beta, g_c = _canonical(family)(x[None], y[None], off, lgy, beta[None, None],
                                            jnp.reshape(intercept, (1, 1)))
    return value[0, 0], g_beta[0, 0], g_c[0, 0]


@functools.partial(jax.custom_jvp, nondiff_argnums=(5, 6))
def _native_or_blocked(x, y, beta, intercept, offset, family, block_size):
    """The native pass on CPU, the XLA blocked pass elsewhere (chosen when lowering; only the native
    pass where CPU is the process's only platform)."""
    if _native.cpu_only():
        return _native_pass(x, y, beta, intercept, offset, family)
    return jax.lax.platform_dependent(
        x, y, beta, intercept, offset,
        cpu=lambda *a: _native_pass(*a, family),
        default=lambda *a: _blocked_pass(*a, family, block_size))


@_native_or_blocked.defjvp
def _native_or_blocked_jvp(family, block_size, primals, tangents):
    # Derivatives of the pass itself (second derivatives of the log-likelihood, e.g. the Laplace
    # Hessian) come from the differentiable XLA pass.
    return jax.jvp(lambda *a: _blocked_pass(*a, family, block_size), primals, tangents)


def _pass(x, y, beta, intercept, offset, family, block_size, kernel):
    # The kernel takes one float dtype for all its buffers; y, intercept and offset are already
    # cast to result_type(x, beta), so x and beta must agree (a float32 X with float64
    # coefficients takes the XLA pass).
    if kernel == "xla" or x.dtype != beta.dtype or x.dtype not in (jnp.float32, jnp.float64):
        return _blocked_pass(x, y, beta, intercept, offset, family, block_size)
    return _native_or_blocked(x, y, beta, intercept, offset, family, block_size)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _glm(x, y, beta, intercept, offset, family, block_size, kernel):
    # Not differentiated: the value alone (no gradient formed, a matrix product under vmap).
    del kernel
    return _value_pass(x, y, beta, intercept, offset, family, block_size)


def _glm_fwd(x, y, beta, intercept, offset, family, block_size, kernel):
    value, g_beta, g_c = _pass(x, y, beta, intercept, offset, family, block_size, kernel)
    return value, (g_beta, g_c, x, offset)


def _glm_bwd(family, block_size, kernel, residuals, cotangent):
    g_beta, g_c, x, offset = residuals
    # d/d offset_i = r_i would need a second pass; offsets are data, so their cotangent is zero.
    # x and y are data as well (the model's observations): zero cotangents.
    zero_offset = None if offset is None else jnp.zeros_like(offset)
    return (jnp.zeros_like(x), None, cotangent * g_beta, cotangent * g_c, zero_offset)


_glm.defvjp(_glm_fwd, _glm_bwd)


def glm_log_likelihood(x: ArrayLike, y: ArrayLike, beta: ArrayLike, intercept: ArrayLike = 0.0,
                       offset: ArrayLike | None = None, family: str = "bernoulli",
                       block_size: int | None = None, kernel: str = "auto") -> Array:
    """GLM log-likelihood whose gradient (in `beta`, `intercept`) reads `x` once.

    Args:
      x: (N, D) design matrix (data: no gradient is returned for it).
      y: (N,) responses (0/1 for "bernoulli", non-negative counts for "poisson").
      beta: (D,) coefficients.
      intercept: scalar added to every linear predictor.
      offset: optional (N,) known offsets (e.g. log exposure for Poisson); data, no gradient.
      family: "bernoulli" (logit link) or "poisson" (log link).
      block_size: rows per block of the XLA pass (static); default `default_block_size(D)`.
      kernel: "auto" (the native kernel on CPU when it could be built, the XLA pass otherwise),
        "native" (the same, but raise if the native kernel is unavailable) or "xla".

    Returns:
      Scalar sum of the per-datum log-likelihoods.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from advi_jax.models.glm import glm_log_likelihood
      >>> x = jnp.ones((10, 3)); y = jnp.ones(10)
      >>> g = jax.grad(lambda b: glm_log_likelihood(x, y, b))(jnp.zeros(3))
    """
    _check(x, y, beta, family)
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    kernel = _choose_kernel(kernel)
    block_size = default_block_size(jnp.shape(x)[1]) if block_size is None else int(block_size)
    if block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size}")
    x = jnp.asarray(x)
    dtype = jnp.result_type(x, beta)
    y = jnp.asarray(y, dtype)
    intercept = jnp.asarray(intercept, dtype)
    offset = None if offset is None else jnp.asarray(offset, dtype)
    return _glm(x, y, jnp.asarray(beta, dtype), intercept, offset, family, block_size, kernel)


# ---- building the native kernel ahead of need -----------------------------------------------

_warned: set = set()


def _choose_kernel(kernel: str) -> str:
    """"native" or "xla" for this call, from the kernel's state now: never builds, never waits."""
    if kernel == "xla":
        return "xla"
    state = _native.start()  # no-op after the first call
    if state == "ready":
        return "native"
    if kernel == "native":
        hint = " (wait for it with advi_jax.models.glm.build_kernel())" if state == "building" else ""
        raise RuntimeError(f"kernel='native' but the native GLM kernel is unavailable: {_native.reason()}{hint}")
    if state not in _warned and state != "disabled":
        _warned.add(state)
        if state == "building":
            message = ("advi_jax: the native GLM kernel is still being built in the background, so this model uses "
                       "the XLA pass (same numbers, slower per step on CPU); build it ahead of time with "
                       "`python -m advi_jax build`")
        else:
            message = f"advi_jax: native CPU kernels unavailable, using the XLA path ({_native.reason()})"
        warnings.warn(message, RuntimeWarning, stacklevel=user_stacklevel())
    return "xla"


def build_kernel(timeout: float | None = None) -> bool:
    """Build (or load from the cache) the native GLM kernel now, waiting up to `timeout` seconds.

    Importing this module already starts a background build when the cache lacks the kernel;
    this waits for it (what `python -m advi_jax build` runs). Calls traced after it returns
    True take the native kernel on CPU.

    Args:
      timeout: seconds to wait at most; None waits for the build to finish.

    Returns:
      Whether the kernel is ready. When False, `kernel_status()` says why (including the
      compiler's output when it failed).

    Example:
      >>> from advi_jax.models.glm import build_kernel, kernel_status
      >>> ok = build_kernel()  # doctest: +SKIP
    """
    if timeout is not None and not (timeout >= 0):
        raise ValueError(f"timeout must be a non-negative number of seconds or None, got {timeout!r}")
    return _native.build(timeout)


def kernel_status() -> tuple[str, str]:
    """(state, detail) of the native GLM kernel, without building or waiting.

    Returns:
      state: "ready", "building", "failed" or "disabled" (`ADVI_JAX_NATIVE=0`); detail: the
      library's path when ready, otherwise why not (a failed compile includes its output).

    Example:
      >>> from advi_jax.models.glm import kernel_status
      >>> state, detail = kernel_status()
    """
    state = _native.start()
    return state, (str(_native.library_path()) if state == "ready" else _native.reason())


_native.start()  # load from the cache, or build in the background: never on a fit's clock
