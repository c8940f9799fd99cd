"""Natural-gradient steps for the full-rank Gaussian in (mean, Cholesky factor) coordinates.

q = N(m, C C^T) with C lower triangular. The Fisher information of the Gaussian family splits into
a mean block, Sigma^-1, and a covariance block; for the Cholesky factor, writing a perturbation as
dC = C X (X lower triangular, so that dSigma = C (X + X^T) C^T), the Fisher metric is

    1/2 tr(Sigma^-1 dSigma Sigma^-1 dSigma) = 1/2 ||X + X^T||_F^2 = 2 sum_i X_ii^2 + sum_{i>j} X_ij^2.

A gradient G = dL/dC (lower triangular) pairs with dC as <G, C X> = <tril(C^T G), X>, so the
natural gradient (the maximiser of <grad, d> - 1/2 |d|_F^2) is

    mean:   Sigma g_m                     (the Newton step of the mean at the ELBO's optimum)
    factor: C Phi(C^T G),  Phi(A) = the lower triangle of A with its diagonal halved

(Tan 2021, "Analytic natural gradient updates for Cholesky factor in Gaussian variational
approximation"; derived here as above and checked against the autodiff Fisher in
tests/test_natural.py).

With the STL estimator and draws zeta = m + C eps, both need only u_s = C^T grad log p(zeta_s) +
eps_s (no triangular solve): C^T g_m = mean_s u_s, and C^T G = mean_s u_s eps_s^T (its strictly
upper part does not matter under Phi, and C^T of a strictly upper matrix stays strictly upper). At
a Gaussian target u_s is zero-mean linear in eps_s, so with antithetic pairs (eps, -eps) the mean
direction has no noise there, and the STL factor direction none at the optimum.

The step C <- C M with M lower triangular, M_ii = exp(rho X_ii), M_ij = rho X_ij (i > j) is the
natural step to first order and keeps diag(C) > 0 exactly; the mean moves by C (rho C^T g_m).
The step is shrunk to a trust region: its length in the Fisher metric, sqrt(|rho C^T g_m|^2 +
|rho X|^2 with the diagonal counted twice) (about sqrt(2 KL(q_new || q_old))), at most `max_step`.
That only acts far from the optimum (down a funnel's neck, or where a start is many sds off, a raw
natural step can be thousands of sds, and an entrywise clip of X does not bound C M's growth).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from advi_jax._types import Array

__all__ = ["natural_gradient", "natural_directions", "phi", "NaturalStep", "natural_step", "antithetic_noise",
           "square_control", "shrunk_coef", "draw_deviations", "NaturalDraws", "natural_draws", "natural_move"]

_LOG_2PI = 1.8378770664093453


def phi(a: Array) -> Array:
    """The lower triangle of a square matrix with its diagonal halved."""
    return jnp.tril(a, -1) + 0.5 * jnp.diag(jnp.diagonal(a))


def natural_gradient(scale_tril: Array, grad_loc: Array, grad_scale_tril: Array) -> tuple[Array, Array]:
    """The Fisher-natural gradient of a full-rank Gaussian N(m, C C^T) in (m, C) coordinates.

    Args:
      scale_tril: (K, K) lower-triangular C with a positive diagonal.
      grad_loc: (K,) the gradient with respect to m.
      grad_scale_tril: (K, K) the gradient with respect to C's lower triangle (its strictly upper
        part is ignored).

    Returns:
      (Sigma grad_loc, C Phi(C^T tril(grad_scale_tril))), the natural gradient (module docstring).

    Example:
      >>> import jax.numpy as jnp
      >>> dm, dc = natural_gradient(2.0 * jnp.eye(2), jnp.ones(2), jnp.eye(2))
      >>> dm.tolist(), jnp.diagonal(dc).tolist()
      ([4.0, 4.0], [2.0, 2.0])
    """
    c = scale_tril
    return c @ (c.T @ grad_loc), c @ phi(c.T @ jnp.tril(grad_scale_tril))


def antithetic_noise(key: Array, num_samples: int, dim: int, dtype) -> Array:
    """(num_samples, dim) standard normal draws, in antithetic pairs (eps, -eps) when num_samples is even."""
    if num_samples % 2:
        return jax.random.normal(key, (num_samples, dim), dtype)
    half = jax.random.normal(key, (num_samples // 2, dim), dtype)
    return jnp.concatenate([half, -half], axis=0)


def _drawn_once(key: Array, num_samples: int, dim: int, dtype, finite_rate: Array) -> Array:
    """`antithetic_noise`, computed once per step however many operations read the draws.

    XLA fuses an elementwise producer into every fusion that consumes it and removes optimisation
    barriers before fusing, so the generator (its bits' conversion and erf_inv, about 110 HLO
    instructions) was compiled four times into the natural step (radon_noncentered's loop program:
    3,582 -> 3,225 HLO instructions without the copies, 5% less compile CPU; the same numbers). A
    branch of a `lax.cond` is a separate computation whose result is materialised: the draws come
    from one, under a predicate that holds in every fit (a finite step size; a non-finite one, which
    makes the step non-finite anyway, gets zeros)."""
    return jax.lax.cond(finite_rate, lambda k: antithetic_noise(k, num_samples, dim, dtype),
                        lambda k: jnp.zeros((num_samples, dim), dtype), key)


def natural_directions(log_density, loc: Array, scale_tril: Array, eps: Array,
                       symmetric: bool = True) -> tuple[Array, Array, Array, Array]:
    """The STL ELBO estimate and natural-gradient directions from the draws zeta = m + C eps.

    Args:
      log_density: (K,) -> scalar.
      loc: (K,) mean m.
      scale_tril: (K, K) lower-triangular C, positive diagonal.
      eps: (S, K) standard normal draws.
      symmetric: estimate C^T G by the symmetric part of mean_s u_s eps_s^T (see below).

    Returns:
      (elbo, C^T g_m, X, finite) with g_m the STL gradient of the mean and X = Phi(C^T G) for G
      the STL gradient of C: the natural gradient is (C C^T g_m, C X) (module docstring). With
      `symmetric`, X = Phi of the symmetric part: by Stein's lemma E[u eps^T] = I + C^T E[Hessian]
      C is symmetric, so this is unbiased, and it halves the variance of the entries in a row whose
      u is noisy (a coordinate where log p is far from quadratic), which otherwise enter C M whole.

    Example:
      >>> import jax.numpy as jnp
      >>> elbo, d, x, ok = natural_directions(lambda z: -0.5 * jnp.sum(z ** 2), jnp.ones(2), jnp.eye(2),
      ...                                     jnp.array([[1.0, 0.0], [-1.0, 0.0]]))
      >>> d.tolist(), bool(ok)
      ([-1.0, -1.0], True)
    """
    elbo, u, x, finite = _directions(log_density, loc, scale_tril, eps, symmetric)
    return elbo, jnp.mean(u, axis=0), x, finite


def _directions(log_density, loc, scale_tril, eps, symmetric):
    """`natural_directions` with the rows u_s themselves in place of their mean."""
    k = loc.shape[-1]
    num = eps.shape[0]
    zeta = loc[None, :] + eps @ scale_tril.T
    log_p, grads = jax.vmap(jax.value_and_grad(log_density))(zeta)
    log_q = -0.5 * jnp.sum(eps * eps, axis=1) - jnp.sum(jnp.log(jnp.diagonal(scale_tril))) - 0.5 * k * _LOG_2PI
    elbo = jnp.mean(log_p - log_q)
    u = grads @ scale_tril + eps  # rows: C^T grad log p(zeta_s) + eps_s
    finite = jnp.isfinite(elbo) & jnp.all(jnp.isfinite(u))
    a = u.T @ eps / num
    if symmetric:
        a = 0.5 * (a + a.T)
    return elbo, u, phi(a), finite


def square_control(u: Array, eps: Array, coef: Array, pool: bool = False) -> tuple[Array, Array]:
    """The mean direction mean_s u_s less a control variate quadratic in the draws, and the variate's
    coefficients estimated from these draws.

    Antithetic pairs cancel the part of u that is odd in eps; what is left is even, and its leading
    noise is quadratic: u_i - E u_i ~ 1/2 sum_jk T_ijk (eps_j eps_k - delta_jk), T the third derivative
    of log p along C's columns. Two families of those terms are used, K^2 coefficients in all:

    * the squares, w_j = eps_j^2 - 1, in every coordinate i (coefficient B_ij = E[u_i w_j] / 2);
    * the products that involve the coordinate's own draw, eps_i eps_j (j != i), in coordinate i
      (coefficient G_ij = E[u_i eps_i eps_j]).

    All these regressors have mean zero and are uncorrelated (variance 2 and 1), so subtracting them
    with coefficients chosen independently of these draws leaves the expectation unchanged, and the
    expectations above are the least-squares coefficients. As T is symmetric, G_ij = T_iij pairs with
    B_ji = T_jii / 2: a coordinate h whose third derivatives T_hjj along many others are large (a
    hierarchical posterior's group-level scale, along its K group effects) puts its noise in its own
    squares (B's row h) AND in the products eps_h eps_j of every group effect j (G's column h). On
    radon the two (fitted to a hub, the scale's products) took the antithetic pairs' even-part
    variance from 1.99 to 0.17 summed over the 90 whitened coordinates, and the group-level scale's
    from 0.77 to 0.06 (benchmarks/PERFORMANCE.md, "hiercost"); a general quadratic has K^3 / 2
    coefficients, whose estimation noise and cost are too large at K ~ 100.

    With `pool`, the two estimates of each T_iij = T_jii (i != j) are averaged before they are
    returned, G_ij <- (G_ij + 2 B_ji) / 2 and B_ji <- G_ij / 2 (Stein's identities give E[u_i eps_i
    eps_j] = E[T_iij] and E[u_j w_i] = E[T_jii]): half the coefficients' noise, which is what the
    variate pays for (the natural step uses it: the binding coordinate's asymptotic variance per
    step, radon 0.30 -> 0.18 and births 1.12 -> 0.82, against 1.51 and 1.43 without the variate).

    Args:
      u: (S, K) rows C^T grad log p(zeta_s) + eps_s.
      eps: (S, K) the draws.
      coef: (2, K, K) the coefficients (B, G), independent of `eps` (e.g. running averages of earlier
        draws'); G's diagonal is ignored.
      pool: pool the estimates returned by the symmetry of T (above).

    Returns:
      (mean_s u_s less the variate, this draw set's estimates of (B, G) for later steps).

    Example:
      >>> import jax.numpy as jnp
      >>> eps = jnp.array([[2.0], [-2.0]])
      >>> u = 0.5 * (eps ** 2 - 1.0)  # noise entirely in the squared draw
      >>> direction, coef = square_control(u, eps, jnp.array([[[0.5]], [[0.0]]]))
      >>> float(direction[0]), float(coef[0, 0, 0])
      (0.0, 2.25)
    """
    num, k = eps.shape
    off = 1.0 - jnp.eye(k, dtype=eps.dtype)
    w = eps * eps - 1.0
    b, g = coef[0], coef[1] * off
    variate = jnp.mean(w @ b.T + eps * (eps @ g.T), axis=0)
    stat_b = 0.5 * (u.T @ w) / num
    stat_g = ((u * eps).T @ eps) / num * off
    if pool:  # G_ij and 2 B_ji estimate the same E[T_iij] (Stein's identities; T symmetric)
        stat_g = 0.5 * (stat_g + 2.0 * stat_b.T * off)
        stat_b = stat_b * (1.0 - off) + 0.5 * stat_g.T
    return jnp.mean(u, axis=0) - variate, jnp.stack([stat_b, stat_g])


def shrunk_coef(moments: Array, rate: float) -> Array:
    """The control variate's coefficients from running averages of their per-step estimates, each
    shrunk towards zero by its own noise (positive-part James-Stein).

    A coefficient b estimated as b^ with standard error s removes variance in proportion to
    b^2 - (b^ - b)^2 on average, so using it pays only where |b| > s: with K coefficients per
    coordinate, most of them zero (only some third derivatives are large), the unshrunk estimates
    add more noise than they remove (births: the group-level scale's even-part variance 2.6 -> 3.5
    per pair with coefficients from 1,000 pairs). Each is multiplied by max(0, 1 - s^2 / b^2), with s^2
    the variance of an exponential average of weight `rate` over independent per-step estimates.

    Args:
      moments: (2, 2, K, K) exponential averages of the per-step estimates (B, G) and of their squares.
      rate: the averages' weight of each step.

    Returns:
      (2, K, K) the coefficients (B, G) to use.

    Example:
      >>> import jax.numpy as jnp
      >>> mean = jnp.array([[[1.0]], [[0.01]]])
      >>> moments = jnp.stack([mean, mean ** 2 + 1.0])  # per-step variance 1
      >>> [round(float(v), 3) for v in shrunk_coef(moments, 0.01).ravel()]
      [0.995, 0.0]
    """
    mean, square = moments[0], moments[1]
    var = jnp.maximum(square - mean ** 2, 0.0) * rate / (2.0 - rate)
    factor = jnp.maximum(1.0 - var / jnp.maximum(mean ** 2, jnp.finfo(mean.dtype).tiny), 0.0)
    return mean * factor


def draw_deviations(u: Array, eps: Array) -> Array:
    """(S,) the length in the Fisher metric of each draw's own natural direction less the step's mean one.

    Draw s alone gives the directions (u_s, Phi(sym(u_s eps_s^T))), whose mean over the draws is the
    step's (without a control variate); its deviation from that mean, times rho / S, is how far this
    one draw moves q, in about sd of q (the module docstring's length). Where the log density's
    gradients are heavy-tailed over q (a horseshoe's scales, benchmarks/PERFORMANCE.md), single
    draws of q's tail carry most of a step's length.

    Args:
      u: (S, K) rows C^T grad log p(zeta_s) + eps_s.
      eps: (S, K) the draws.

    Example:
      >>> import jax.numpy as jnp
      >>> eps = jnp.array([[1.0], [-1.0]])
      >>> # u deviates from its mean 2 by 1, Phi(u eps) from its mean 0.5 by 1 (a diagonal: counted twice)
      >>> [round(v, 4) for v in draw_deviations(jnp.array([[3.0], [1.0]]), eps).tolist()]
      [1.7321, 1.7321]
    """
    # For symmetric A, B: <Phi(A), Phi(B)> in the metric (off-diagonal once, diagonal twice) is
    # <A, B>_F / 2; with A_s = sym(u_s eps_s^T), <A_s, A_t>_F = ((u_s.u_t)(e_s.e_t) + (u_s.e_t)(e_s.u_t)) / 2,
    # so the deviations need only S x S Gram matrices, not the S (K, K) directions.
    cross = u @ eps.T
    gram = 0.25 * ((u @ u.T) * (eps @ eps.T) + cross * cross.T) + u @ u.T
    row = jnp.mean(gram, axis=1)
    square = jnp.diagonal(gram) - 2.0 * row + jnp.mean(row)
    return jnp.sqrt(jnp.maximum(square, 0.0))


class NaturalDraws(NamedTuple):
    """One draw set's natural-gradient directions at q (`natural_draws`).

    Attributes:
      elbo: the STL ELBO estimate.
      finite: whether it and every gradient were finite.
      mean_dir: C^T grad_m ELBO, less the control variate when one was given.
      x: Phi(C^T G) (module docstring), the factor's direction.
      control_coef: the draws' estimate of the control variate's coefficients (zeros without one).
      deviations: (S,) `draw_deviations`.
    """

    elbo: Array
    finite: Array
    mean_dir: Array
    x: Array
    control_coef: Array
    deviations: Array


def natural_draws(log_density, loc: Array, scale_tril: Array, key: Array, num_samples: int, finite_rate: Array,
                  control: Array | None = None) -> NaturalDraws:
    """The directions of `natural_step` from one set of draws, before they move q (see `natural_step`)."""
    eps = _drawn_once(key, num_samples, loc.shape[-1], loc.dtype, finite_rate)
    elbo, u, x, finite = _directions(log_density, loc, scale_tril, eps, True)
    if control is None:
        mean_dir, coef = jnp.mean(u, axis=0), jnp.zeros((2,) + (loc.shape[-1],) * 2, loc.dtype)
    else:
        mean_dir, coef = square_control(u, eps, control, pool=True)
    return NaturalDraws(elbo, finite, mean_dir, x, coef, draw_deviations(u, eps))


def natural_move(loc: Array, scale_tril: Array, mean_dir: Array, x: Array, rate: Array,
                 max_step: float) -> tuple[Array, Array, Array]:
    """q moved by rho times the natural directions (mean_dir, x), shrunk to the trust region (module
    docstring): (new loc, new C, whether the step was shrunk)."""
    step_m = rate * mean_dir
    step_x = rate * x
    # the step's length in the Fisher metric (module docstring): about sqrt(2 KL(q_new || q_old))
    length = jnp.sqrt(jnp.sum(step_m ** 2) + jnp.sum(jnp.tril(step_x, -1) ** 2)
                      + 2.0 * jnp.sum(jnp.diagonal(step_x) ** 2))
    clipped = length > max_step
    shrink = jnp.where(clipped, max_step / jnp.where(clipped, length, 1.0), 1.0)
    step_m = shrink * step_m
    step_x = shrink * step_x
    m = jnp.tril(step_x, -1) + jnp.diag(jnp.exp(jnp.diagonal(step_x)))
    return loc + scale_tril @ step_m, scale_tril @ m, clipped


class NaturalStep(NamedTuple):
    """One natural-gradient step's outcome.

    Attributes:
      loc, scale_tril: the updated mean and Cholesky factor.
      elbo: the step's ELBO estimate at the old q.
      finite: whether the ELBO estimate and every gradient were finite (else nothing should change).
      whitened_mean_grad: C^T grad_m ELBO (the mean's natural gradient in sds of q before C), less
        the control variate when one was given.
      clipped: whether the step was shrunk to `max_step`.
      control_coef: this step's estimate of the control variate's coefficient (`square_control`;
        zeros without a control variate).
    """

    loc: Array
    scale_tril: Array
    elbo: Array
    finite: Array
    whitened_mean_grad: Array
    clipped: Array
    control_coef: Array


def natural_step(log_density, loc: Array, scale_tril: Array, key: Array, num_samples: int, rate: Array,
                 max_step: float, control: Array | None = None) -> NaturalStep:
    """One STL natural-gradient ascent step of the ELBO for q = N(loc, C C^T) (module docstring).

    Args:
      log_density: (K,) -> scalar, the unnormalised log density.
      loc: (K,) mean m.
      scale_tril: (K, K) lower-triangular C, positive diagonal.
      key: a PRNG key.
      num_samples: draws of q (antithetic pairs when even).
      rate: the step size rho.
      max_step: the largest length of the step in the Fisher metric (module docstring).
      control: (2, K, K) coefficients of the quadratic control variate of the mean direction
        (`square_control`), independent of this step's draws; None: no control variate.

    Returns:
      A `NaturalStep`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> out = natural_step(lambda x: -0.5 * jnp.sum((x - 1.0) ** 2), jnp.zeros(2), jnp.eye(2),
      ...                    jax.random.key(0), 4, 0.5, 1.0)
      >>> [round(v, 3) for v in out.loc.tolist()]
      [0.5, 0.5]
    """
    d = natural_draws(log_density, loc, scale_tril, key, num_samples, jnp.isfinite(rate), control)
    new_loc, new_c, clipped = natural_move(loc, scale_tril, d.mean_dir, d.x, rate, max_step)
    return NaturalStep(new_loc, new_c, d.elbo, d.finite, d.mean_dir, clipped, d.control_coef)
