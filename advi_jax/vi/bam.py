"""Batch-and-Match (BaM): closed-form score-based updates of a full-covariance Gaussian.

Cai, Modi, Pillai, Margossian, Gower, Blei & Saul (2024). Each step draws a batch z_1..z_B from
q_t = N(mu_t, Sigma_t), evaluates the scores g_b = grad log p(z_b) ("batch"), and moves q to
the proximal point of a covariance-weighted score divergence fitted to the batch ("match"),
which is closed-form. With batch means zbar, gbar and covariances C (of z), Gamma (of g),

    U = lam Gamma + lam / (1 + lam) gbar gbar^T,
    V = Sigma_t + lam C + lam / (1 + lam) (mu_t - zbar)(mu_t - zbar)^T,
    Sigma_{t+1} solves Sigma U Sigma + Sigma = V,
    mu_{t+1} = mu_t / (1 + lam) + lam / (1 + lam) (Sigma_{t+1} gbar + zbar).

The quadratic matrix equation is solved through any factor S of V = S S^T: writing
Sigma = S X S^T turns it into X (S^T U S) X + X = I, so with M = S^T U S = F diag(m) F^T,
X = F diag(2 / (1 + sqrt(1 + 4 m))) F^T and Sigma_{t+1} = W W^T with
W = S F diag(2 / (1 + sqrt(1 + 4 m)))^{1/2}. The positive definite solution is unique, so every
factor gives the same Sigma_{t+1} in exact arithmetic; S is V's lower Cholesky factor (one
Cholesky and one eigendecomposition per step, where the symmetric root V^{1/2} would cost a
second eigendecomposition: at K = 90 in float32 on CPU an eigendecomposition takes about 2 ms, a
Cholesky factorisation 0.025 ms). Pure JAX, no non-symmetric matrix square root, no host
callback; the Cholesky factor of the result comes from a QR of W^T (no squaring of the condition
number).

Step size ("learning rate") lam_t = lam_0 / (t + 1) with lam_0 = B K by default (the paper's
schedule for its Gaussian experiments), or constant (`schedule="constant"`). A step whose update
is not finite is skipped (`finite=False`).

The ELBO reported per step is mean_b log p(z_b) + H(q_t) from the batch's log densities, which
come free with the scores (a value-and-gradient counts as one gradient evaluation).

Example:
  >>> import jax, jax.numpy as jnp, advi_jax as aj
  >>> from advi_jax.vi import bam
  >>> class Gauss:
  ...     dim = 2
  ...     def log_density(self, z):
  ...         return -0.5 * jnp.sum((z - 1.0) ** 2)
  >>> algo = bam.build(Gauss(), aj.FullRankGaussian(), bam.Options(batch_size=8))
  >>> state = algo.init(jax.random.key(0), jnp.zeros(2))
  >>> for i in range(30):
  ...     state, info = algo.step(jax.random.key(i), state)
  >>> jnp.round(algo.params(state).loc, 3).tolist()
  [1.0, 1.0]

References:
  Cai, Modi, Pillai, Margossian, Gower, Blei & Saul (2024), Batch and match: black-box
  variational inference with a score-based divergence, ICML.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from advi_jax._types import Array, check_positive_int
from advi_jax.base import VIAlgorithm, step_info
from advi_jax.families import Family, FullRankParams, _softplus_inverse

__all__ = ["NAME", "Options", "FAMILIES", "DEFAULT_NUM_STEPS", "WHITEN", "build", "loop_evals", "bam_update",
           "noise_step", "loop_compile_mode", "FAST_MAX_DIM"]

NAME = "bam"
FAMILIES = ("fullrank",)
DEFAULT_NUM_STEPS = 500
WHITEN = True
DETERMINISTIC = False  # the ELBO trace is a per-step Monte Carlo estimate: the result reports a mean of the last steps

_SCHEDULES = ("decay", "constant")
_LOG_2PI = math.log(2.0 * math.pi)


class Options(NamedTuple):
    """BaM settings (static).

    Attributes:
      batch_size: B, draws (and scores) per step.
      learning_rate: lam_0; None means B K.
      schedule: "decay" (lam_t = lam_0 / (t + 1)) or "constant".
      init_scale: the starting covariance is init_scale^2 I.
    """

    batch_size: int = 16
    learning_rate: float | None = None
    schedule: str = "decay"
    init_scale: float = 1.0


class State(NamedTuple):
    loc: Array  # (K,)
    cov: Array  # (K, K)
    chol: Array  # (K, K) lower Cholesky factor of cov
    count: Array  # steps taken


def _cholesky_of_factor(w: Array) -> Array:
    """Lower-triangular L with L L^T = W W^T, from a QR of W^T (positive diagonal)."""
    _, r = jnp.linalg.qr(w.T)
    signs = jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0).astype(r.dtype)
    return r.T * signs[None, :]


def bam_update(loc: Array, cov: Array, draws: Array, scores: Array, lam: Array) -> tuple[Array, Array, Array]:
    """One batch-and-match update.

    Args:
      loc: (K,) current mean.
      cov: (K, K) current covariance.
      draws: (B, K) draws of the current q.
      scores: (B, K) grad log p at the draws.
      lam: scalar step size > 0.

    Returns:
      (loc, cov, chol) of the updated Gaussian; chol is its lower Cholesky factor.
    """
    b = draws.shape[0]
    zbar, gbar = jnp.mean(draws, axis=0), jnp.mean(scores, axis=0)
    zc, gc = draws - zbar[None, :], scores - gbar[None, :]
    shrink = lam / (1.0 + lam)
    u = lam * (gc.T @ gc) / b + shrink * jnp.outer(gbar, gbar)
    diff = loc - zbar
    v = cov + lam * (zc.T @ zc) / b + shrink * jnp.outer(diff, diff)
    s = jnp.linalg.cholesky(0.5 * (v + v.T))  # V = S S^T; V >= Sigma_t > 0 (NaN otherwise: the step is skipped)
    m = s.T @ u @ s
    eig, f = jnp.linalg.eigh(0.5 * (m + m.T))
    eig = jnp.maximum(eig, 0.0)
    w = (s @ f) * jnp.sqrt(2.0 / (1.0 + jnp.sqrt(1.0 + 4.0 * eig)))[None, :]
    new_cov = w @ w.T
    new_loc = loc / (1.0 + lam) + shrink * (new_cov @ gbar + zbar)
    return new_loc, new_cov, _cholesky_of_factor(w)


def _check(family: Any, options: Any) -> None:
    if not isinstance(family, Family) or family.name not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES} (a Family object), got {family!r}")
    if not isinstance(options, Options):
        raise TypeError(f"options must be a bam.Options, got {type(options).__name__}")
    check_positive_int(options.batch_size, "options.batch_size")
    if options.schedule not in _SCHEDULES:
        raise ValueError(f"options.schedule must be one of {_SCHEDULES}, got {options.schedule!r}")
    for name in ("learning_rate", "init_scale"):
        value = getattr(options, name)
        if value is None and name == "learning_rate":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"options.{name} must be a finite number > 0, got {value!r}")


def noise_step(model, options: Options = Options()):
    """BaM's step given its standard normal draws: `step(noise, state) -> (state, StepInfo)`.

    `build`'s `step` draws `noise` (batch_size, K) from its key and calls this; a caller that
    draws all its randomness at once (the default fit's start, `advi_jax.run.start`: one random
    number generator in its program instead of one per loop) passes each step's slice.

    Args:
      model: anything with `dim` and `log_density(zeta)` on R^K.
      options: `Options` (not checked here: `build` checks them).

    Returns:
      The step function; a step whose update is not finite leaves the state as it was
      (`finite=False` in its info).

    Example:
      >>> import jax, jax.numpy as jnp, advi_jax as aj
      >>> from advi_jax.vi import bam
      >>> class Gauss:
      ...     dim = 1
      ...     def log_density(self, z):
      ...         return -0.5 * jnp.sum(z ** 2)
      >>> state = bam.build(Gauss(), aj.FullRankGaussian()).init(jax.random.key(0), jnp.ones(1))
      >>> step = bam.noise_step(Gauss())
      >>> new, info = step(jnp.array([[-1.0], [1.0]]), state)
      >>> bool(info.finite), int(new.count)
      (True, 1)
    """
    k = model.dim
    lam0 = None if options.learning_rate is None else float(options.learning_rate)
    value_and_grad = jax.vmap(jax.value_and_grad(model.log_density))

    def step(noise: Array, state: State):
        batch = noise.shape[0]
        draws = state.loc[None, :] + noise @ state.chol.T
        logp, scores = value_and_grad(draws)
        entropy = jnp.sum(jnp.log(jnp.diagonal(state.chol))) + 0.5 * k * (1.0 + _LOG_2PI)
        elbo = jnp.mean(logp) + entropy
        t = state.count.astype(state.loc.dtype)
        rate = float(options.batch_size * k) if lam0 is None else lam0
        lam = rate / (t + 1.0) if options.schedule == "decay" else jnp.asarray(rate, state.loc.dtype)
        loc, cov, chol = bam_update(state.loc, state.cov, draws, scores, lam)
        finite = (jnp.all(jnp.isfinite(loc)) & jnp.all(jnp.isfinite(chol)) & jnp.isfinite(elbo)
                  & jnp.all(jnp.diagonal(chol) > 0))
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        new = State(keep(loc, state.loc), keep(cov, state.cov), keep(chol, state.chol), state.count + 1)
        return new, step_info(elbo, finite, batch, 0, False)

    return step


def loop_evals(model, family: Family, options: Options, num_steps: int) -> int:
    """The log-density gradient evaluations of `aj.fit`'s loop, for its compiler options
    (`compile_options.compile_mode`): `batch_size` scores a step, `num_steps` steps (BaM has no
    stopping rule, so this is what it runs)."""
    del model, family
    return int(num_steps) * int(options.batch_size)


FAST_MAX_DIM = 32
"""The largest K for which `loop_compile_mode` keeps the fast options the size rule chose."""


def loop_compile_mode(model, family: Family, options: Options, mode: str) -> str:
    """The loop's XLA options: "mid" where the size rule (`loop_evals`) says fast but K >
    `FAST_MAX_DIM`, else the rule's. Each step eigendecomposes two K x K matrices and multiplies
    K x K factors, which the fast options' code runs about twice as slowly and the count of data
    evaluations cannot see: radon (K = 90, 2,842 data entries) ran its loop in 1.4-1.5 s a call
    compiled fast against 0.6-0.7 s with XLA's full options (benchmarks/PERFORMANCE.md)."""
    del family, options
    return "mid" if mode == "fast" and int(model.dim) > FAST_MAX_DIM else mode


def build(model, family: Family, options: Options = Options()) -> VIAlgorithm:
    """Batch-and-Match as a `VIAlgorithm` (one batch and one closed-form match per `step`).

    Args:
      model: anything with `dim` and `log_density(zeta)` on R^K.
      family: `FullRankGaussian`.
      options: `Options`.

    Returns:
      `VIAlgorithm`; stochastic, so `converged` is always False.

    Raises:
      ValueError / TypeError: for another family or malformed options.
    """
    _check(family, options)
    k = model.dim
    batch = options.batch_size
    step_noise = noise_step(model, options)

    def init(key: Array, loc: Array) -> State:
        del key
        loc = jnp.asarray(loc)
        eye = jnp.eye(k, dtype=loc.dtype)
        return State(loc, options.init_scale**2 * eye, options.init_scale * eye, jnp.asarray(0, jnp.int32))

    def step(key: Array, state: State):
        return step_noise(jax.random.normal(key, (batch, k), state.loc.dtype), state)

    def params(state: State) -> FullRankParams:
        diag = jnp.maximum(jnp.diagonal(state.chol), jnp.finfo(state.chol.dtype).tiny)
        return FullRankParams(state.loc, _softplus_inverse(diag), state.chol)

    return VIAlgorithm(init, step, params, None)
