"""Pathfinder: Gaussian approximations along an L-BFGS path, the best by ELBO (one-shot).

Zhang, Carpenter, Gelman & Vehtari (2022). L-BFGS maximises log p from the start; at every
accepted iterate x_l the L-BFGS history gives an inverse-Hessian estimate in the compact form
of Byrd, Nocedal & Schnabel (1994),

    H_l = diag(alpha) + beta gamma beta^T,  beta = [diag(alpha) Y, S]  (K x 2m),
    gamma = [[0, -R^{-1}], [-R^{-T}, R^{-T} (D + Y^T diag(alpha) Y) R^{-1}]],

with S, Y the last m position / gradient differences (of -log p), R the upper triangle of
S^T Y, D its diagonal, and alpha a diagonal inverse-Hessian estimate updated with every pair
(Gilbert & Lemarechal 1989). The Gaussian q_l = N(x_l + H_l grad log p(x_l), H_l) is sampled in
O(K m) through a thin QR of diag(alpha)^{-1/2} beta (Zhang et al., Alg. 4); its ELBO is estimated
with `num_elbo_draws` draws (log densities only) and the best q_l over the path is kept, on the
fly, so the path itself is never stored.

Multi-path (`num_paths > 1`): independent paths from `loc` and from `loc + U(-r, r)^K` jitter,
vmapped. The result's Gaussian is the best path's (by ELBO); `extras` holds `num_draws` draws
resampled by Pareto-smoothed importance weights from the pooled draws of all paths, with the
equal-weight mixture of the paths' Gaussians as the proposal density, and the k-hat of those
weights.

The family is only the form of the answer: "fullrank" gets the dense Cholesky factor of H at
the best iterate, "meanfield" its diagonal (the marginal variances).

Where log p or its gradient is not finite at a path's start, the path runs from the first finite
of `init_tries` jittered points (`advi_jax.vi._start_point`; Stan retries random inits the same way).

Costs: every value-and-gradient of log p (the start, each jittered try and every line-search trial)
is one gradient evaluation; ELBO and resampling draws are log-density evaluations.

Example:
  >>> import jax, jax.numpy as jnp, advi_jax as aj
  >>> from advi_jax.vi import pathfinder
  >>> class Gauss:
  ...     dim = 2
  ...     def log_density(self, z):
  ...         return -0.5 * jnp.sum((z - 1.0) ** 2 / jnp.array([1.0, 4.0]))
  >>> algo = pathfinder.build(Gauss(), aj.FullRankGaussian(), pathfinder.Options())
  >>> state, info = algo.step(jax.random.key(1), algo.init(jax.random.key(0), jnp.zeros(2)))
  >>> bool(info.converged), jnp.round(algo.params(state).loc, 1).tolist()
  (True, [1.0, 1.0])

References:
  Zhang, Carpenter, Gelman & Vehtari (2022), Pathfinder: parallel quasi-Newton variational
  inference, JMLR 23(306).
  Byrd, Nocedal & Schnabel (1994), Representations of quasi-Newton matrices and their use in
  limited memory methods, Math. Programming 63.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular
from jax.scipy.special import logsumexp

from advi_jax import compile_options
from advi_jax._types import Array, check_positive_int
from advi_jax.base import VIAlgorithm, step_info
from advi_jax.diagnostics import _psis_core
from advi_jax.families import Family, FullRankParams, MeanFieldParams, _softplus_inverse
from advi_jax.vi import _lbfgs
from advi_jax.vi._start_point import PathStart, _finite as _finite_point, jitter_factors, tried_points

__all__ = ["NAME", "Options", "FAMILIES", "DEFAULT_NUM_STEPS", "WHITEN", "build", "loop_evals",
           "Approximation", "lbfgs_path", "jitter_factors", "PathResult", "PathStart", "StartGaussian",
           "start_gaussian", "path_gaussian"]

NAME = "pathfinder"
FAMILIES = ("meanfield", "fullrank")
DEFAULT_NUM_STEPS = 1
# Pathfinder is itself a cheap start (it finds the mode on its way), and its extras (draws)
# are in the coordinates it ran in: it runs on the model as given.
WHITEN = False
DETERMINISTIC = True  # the ELBO trace is an objective's value, not a noisy estimate: the result reports its last value

_LOG_2PI = math.log(2.0 * math.pi)

PAIR_EPS = 2.220446049250313e-16
"""The epsilon of the paper's L-BFGS pair test s'y > PAIR_EPS y'y (Zhang et al. 2022, Algorithm 3;
Stan's Pathfinder), whatever the working dtype. The test bounds the inverse-Hessian estimate along
y from below by PAIR_EPS, an absolute variance in the model's unconstrained units: it is not a
rounding tolerance, so float32's machine epsilon (1.2e-7) in its place would reject every pair of a
posterior with a precision above 8.4e6 (an unconstrained sd below 3.4e-4, e.g. the intercept of a
Poisson regression on large counts), leaving q at the identity covariance along the whole path."""


class Options(NamedTuple):
    """Pathfinder settings (static).

    Attributes:
      num_paths: independent L-BFGS paths (vmapped); the first starts at `loc`.
      max_iters: L-BFGS iterations per path.
      history: m, the L-BFGS memory (pairs kept).
      num_elbo_draws: draws per ELBO estimate at each iterate.
      num_draws: draws returned in `extras["draws"]` (multi-path only), and drawn per path
        before resampling.
      init_radius: the other paths start at loc + U(-init_radius, init_radius).
      ftol: stop when the relative change of log p falls below max(ftol, 4 eps(dtype)).
      gtol: stop when max |grad log p| falls below gtol.
      max_line_search: trials per line search.
      elbo_penalty: iterates are ranked by ELBO estimate minus `elbo_penalty` standard errors
        (0 is the paper's rule). The maximum of noisy estimates favours lucky draws: an iterate
        whose q is slightly off has a noisy log p - log q and can out-score the exact q, whose
        log ratio is constant; one standard error of penalty removes most of that bias.
      wolfe_c2: the strong Wolfe curvature constant, |f'(t)| <= c2 |f'(0)| along the search
        direction. 0.9 (the quasi-Newton standard) usually accepts the first trial; a small value
        (e.g. 1e-3) makes each line search nearly exact, which costs about one more gradient per
        iteration but makes the directions conjugate, so on a Gaussian target with K <= history
        the inverse Hessian, hence q, is exact (BFGS's quadratic termination).
      patience: stop once this many iterations in a row found no better Gaussian (0: never).
        Down a funnel's neck the ELBO only falls after its first iterations, and the path would
        otherwise run to `max_iters` for nothing.
      init_tries: where log p or its gradient is not finite at a path's start (a log at a
        boundary, 0 * inf, overflow), the path runs from the first finite of this many jittered
        points (`jitter_factors`: the first in (-init_radius, init_radius)^K, Stan's random inits,
        the later ones in boxes shrinking to 1/1000 of it); each is one gradient evaluation. 0:
        none (the path then does not run).
    """

    num_paths: int = 1
    max_iters: int = 1000
    history: int = 6
    num_elbo_draws: int = 10
    num_draws: int = 1000
    init_radius: float = 2.0
    ftol: float = 1e-10
    gtol: float = 1e-8
    max_line_search: int = 30
    wolfe_c2: float = 0.9
    elbo_penalty: float = 1.0
    patience: int = 0
    init_tries: int = 100


class Approximation(NamedTuple):
    """A Pathfinder Gaussian N(mu, Sigma), Sigma = A A^T, A = diag(sqrt(alpha)) (I + Q (L - I) Q^T).

    Attributes:
      mu: (K,) mean.
      alpha: (K,) diagonal inverse-Hessian estimate.
      q: (K, r) orthonormal columns, r = min(K, 2m).
      chol: (r, r) lower-triangular L.
    """

    mu: Array
    alpha: Array
    q: Array
    chol: Array


class PathResult(NamedTuple):
    """What one path returns: its best approximation, its costs, and log p at its start."""

    elbo: Array
    approx: Approximation
    num_iters: Array
    num_grad_evals: Array
    num_logp_evals: Array
    start_log_density: Array  # log p(x0)
    best_iter: Array = None  # the iteration (1-based) whose Gaussian is the best; 0: none
    start: PathStart = None  # where the path began


class State(NamedTuple):
    starts: Array  # (P, K)
    elbo: Array  # (P,)
    approx: Approximation  # leading axis P
    num_iters: Array  # (P,)
    draws: Array  # (num_draws, K) or (0, K)
    khat: Array


# ----------------------------------------------------------------------------------------------
# The Gaussian of one iterate


def _approximation(x: Array, grad: Array, s: Array, y: Array, valid: Array, alpha: Array) -> Approximation:
    """The Gaussian at x from the (m, K) histories s, y of -log p and its gradient `grad` of -log p."""
    m, k = s.shape
    dtype = x.dtype
    sy = s @ y.T  # (m, m), [i, j] = s_i . y_j
    r_mat = jnp.triu(sy) + jnp.diag(jnp.where(valid, 0.0, 1.0).astype(dtype))
    d_mat = jnp.diag(jnp.diagonal(sy))
    ya = y * alpha[None, :]  # rows: diag(alpha) y_i
    r_inv = solve_triangular(r_mat, jnp.eye(m, dtype=dtype), lower=False)
    lower_right = r_inv.T @ (d_mat + ya @ y.T) @ r_inv
    zeros = jnp.zeros((m, m), dtype)
    gamma = jnp.block([[zeros, -r_inv], [-r_inv.T, lower_right]])
    beta = jnp.concatenate([ya.T, s.T], axis=1)  # (K, 2m)
    mu = x - (alpha * grad + beta @ (gamma @ (beta.T @ grad)))
    q, r_q = jnp.linalg.qr(beta / jnp.sqrt(alpha)[:, None])
    middle = jnp.eye(q.shape[1], dtype=dtype) + r_q @ gamma @ r_q.T
    chol = jnp.linalg.cholesky(0.5 * (middle + middle.T))
    return Approximation(mu, alpha, q, chol)


def _sample(approx: Approximation, noise: Array) -> Array:
    """Map (N, K) standard normals to draws mu + A u."""
    chol_minus = approx.chol - jnp.eye(approx.chol.shape[0], dtype=noise.dtype)
    white = noise + ((noise @ approx.q) @ chol_minus.T) @ approx.q.T
    return approx.mu[None, :] + jnp.sqrt(approx.alpha)[None, :] * white


def _log_norm(approx: Approximation) -> Array:
    k = approx.mu.shape[0]
    return (0.5 * jnp.sum(jnp.log(approx.alpha)) + jnp.sum(jnp.log(jnp.diagonal(approx.chol)))
            + 0.5 * k * _LOG_2PI)


def _log_prob(approx: Approximation, zeta: Array) -> Array:
    """log q(zeta) for (N, K) zeta, through A^{-1} = (I + Q (L^{-1} - I) Q^T) diag(alpha)^{-1/2}."""
    w = (zeta - approx.mu[None, :]) / jnp.sqrt(approx.alpha)[None, :]
    v = w @ approx.q  # (N, r)
    v_solved = solve_triangular(approx.chol, v.T, lower=True).T  # v L^{-T}
    u = w + (v_solved - v) @ approx.q.T
    return -0.5 * jnp.sum(u * u, axis=-1) - _log_norm(approx)


def _covariance_factor(approx: Approximation) -> Array:
    """(K, K) A with A A^T = Sigma (dense; not triangular)."""
    r = approx.chol.shape[0]
    middle = approx.q @ (approx.chol - jnp.eye(r, dtype=approx.mu.dtype)) @ approx.q.T
    return jnp.sqrt(approx.alpha)[:, None] * (jnp.eye(approx.mu.shape[0], dtype=approx.mu.dtype) + middle)


def _variance(approx: Approximation) -> Array:
    """(K,) marginal variances of the approximation, in O(K r^2)."""
    r = approx.chol.shape[0]
    inner = approx.chol @ approx.chol.T - jnp.eye(r, dtype=approx.mu.dtype)
    return approx.alpha * (1.0 + jnp.sum((approx.q @ inner) * approx.q, axis=1))


# ----------------------------------------------------------------------------------------------
# L-BFGS: the direction, the line search and the history update are the library's (`_lbfgs`);
# the path's own loop adds the diagonal estimate, a Gaussian and its ELBO at every iterate.


def _update_alpha(alpha: Array, s: Array, y: Array) -> Array:
    """Gilbert-Lemarechal diagonal inverse-Hessian update with the pair (s, y)."""
    a = jnp.sum(y * alpha * y)
    b = jnp.sum(y * s)
    c = jnp.sum(s * s / alpha)
    inv = a / (b * alpha) + y * y / b - a * s * s / (b * c * alpha * alpha)
    new = 1.0 / inv
    ok = jnp.all(jnp.isfinite(new) & (new > 0))
    return jnp.where(ok, new, alpha)


def lbfgs_path(log_density, x0: Array, key: Array, options: Options, noise: Array | None = None,
               jitter: Array | tuple[Array, Array] | None = None) -> PathResult:
    """Run one Pathfinder path from x0 and return its best Gaussian (by estimated ELBO).

    Args:
      log_density: (K,) -> scalar log p.
      x0: (K,) start.
      key: PRNG key for the ELBO draws.
      options: `Options`.
      noise: None (draw each iteration's ELBO draws from `key`), or the standard normals of
        every iteration, (max_iters, num_elbo_draws, K): a program that draws all its randomness
        at once compiles one random number generator instead of one per loop.
      jitter: None, or (T, K) offsets: where log p or its gradient is not finite at x0 (a log at
        a boundary, 0 * inf, overflow), the path runs from the first of x0 + jitter[t] where
        both are (Stan retries random initial points the same way); every point tried is one
        gradient evaluation. Or (key, radii): len(radii) offsets, try t's uniform in
        (-radii[t], radii[t])^K, drawn in the loop from `fold_in(key, t)` (no (T, K) array).
        None: the path runs from x0 or, where x0 is not finite, not at all.

    Returns:
      `PathResult` with the best ELBO, its `Approximation`, the iterations, the costs,
      log p(x0) and the `PathStart`.
    """
    k = x0.shape[0]
    m = options.history
    dtype = x0.dtype
    eps = jnp.finfo(dtype).eps
    ftol = max(float(options.ftol), 4.0 * float(eps))
    value_and_grad = jax.value_and_grad(lambda z: -log_density(z))
    logp_batch = jax.vmap(log_density)

    def elbo_of(approx, eps):
        z = _sample(approx, eps)
        ratio = logp_batch(z) + 0.5 * jnp.sum(eps * eps, axis=1) + _log_norm(approx)
        elbo = jnp.mean(ratio)
        stderr = jnp.std(ratio) / math.sqrt(options.num_elbo_draws)
        ok = jnp.isfinite(elbo) & jnp.isfinite(stderr)
        return jnp.where(ok, elbo, -jnp.inf), jnp.where(ok, elbo - options.elbo_penalty * stderr, -jnp.inf)

    # The path's first passes try its start: x0, then (where log p or its gradient is not finite
    # there) the jittered points in turn (`_start_point`), each through the line search's one
    # value-and-gradient call (its `probe`), until one is finite; the L-BFGS iterations follow.
    num_jitter, point_at = tried_points(x0, jitter)
    empty = jnp.zeros((m, k), dtype)
    ones = jnp.ones((k,), dtype)

    def start_approx(x):
        return Approximation(x, ones, jnp.zeros((k, min(k, 2 * m)), dtype), jnp.eye(min(k, 2 * m), dtype=dtype))

    def cond(c):
        return ~c["done"] & ((c["it"] < options.max_iters) | ~c["started"])

    def body(c):
        probing = ~c["started"]
        d = _lbfgs.direction(c["g"], c["s"], c["y"], c["n_valid"])
        found, x_new, f_new, g_new, trials = _lbfgs.line_search(
            value_and_grad, c["x"], c["f"], c["g"], d, 1e-4, options.wolfe_c2, options.max_line_search,
            probe=(probing, point_at(c["tries"])))
        # A pass that tried a start point: where it stands, and whether the path may begin there.
        first = c["tries"] == 0
        start_ok = _finite_point(f_new, g_new)
        tried = dict(tries=c["tries"] + 1, f_x0=jnp.where(first, f_new, c["f_x0"]),
                     g_x0_ok=jnp.where(first, jnp.all(jnp.isfinite(g_new)), c["g_x0_ok"]),
                     bad_values=c["bad_values"] + (~first & ~jnp.isfinite(f_new)).astype(jnp.int32),
                     started=start_ok, point=x_new)
        # An L-BFGS iteration.
        found = found & ~probing
        s_new, y_new = x_new - c["x"], g_new - c["g"]
        # The paper's pair test, s'y > PAIR_EPS y'y (not `_lbfgs.curvature_ok`'s scale-free one): it also
        # bounds the inverse-Hessian estimate, hence q's covariance, from below by PAIR_EPS along y
        # (an absolute floor, the same in float32 and float64: `PAIR_EPS`).
        sy, yy = jnp.dot(s_new, y_new), jnp.dot(y_new, y_new)
        accept = found & (sy > PAIR_EPS * yy) & (sy > 0)
        s_hist, y_hist, n_valid = _lbfgs.push(c["s"], c["y"], c["n_valid"], s_new, y_new, accept)
        alpha = jnp.where(accept, _update_alpha(c["alpha"], s_new, y_new), c["alpha"])
        valid = jnp.arange(m) >= m - n_valid
        approx = _approximation(x_new, g_new, s_hist, y_hist, valid, alpha)
        if noise is None:
            key, sub = jax.random.split(c["key"])
            draws = jax.random.normal(sub, (options.num_elbo_draws, k), dtype)
        else:
            key, draws = c["key"], jax.lax.dynamic_index_in_dim(noise, c["it"], keepdims=False)
        elbo, score = elbo_of(approx, draws)
        elbo, score = jnp.where(found, elbo, -jnp.inf), jnp.where(found, score, -jnp.inf)
        better = score > c["best_score"]
        best = jax.tree_util.tree_map(lambda a, b: jnp.where(better, a, b), approx, c["best"])
        rel = jnp.abs(f_new - c["f"]) / jnp.maximum(jnp.maximum(jnp.abs(f_new), jnp.abs(c["f"])), 1.0)
        small_grad = jnp.max(jnp.abs(g_new)) < options.gtol
        done = ~found | (rel < ftol) | small_grad
        best_iter = jnp.where(better, c["it"] + 1, c["best_iter"])
        if options.patience:
            done = done | (c["it"] + 1 - best_iter >= options.patience)
        x = jnp.where(found, x_new, c["x"])
        stepped = dict(x=x, f=jnp.where(found, f_new, c["f"]), g=jnp.where(found, g_new, c["g"]),
                       s=s_hist, y=y_hist, n_valid=n_valid, alpha=alpha, key=key,
                       best_elbo=jnp.where(better, elbo, c["best_elbo"]),
                       best_score=jnp.maximum(score, c["best_score"]), best=best, best_iter=best_iter,
                       it=c["it"] + 1, done=done, grads=c["grads"] + trials,
                       logps=c["logps"] + options.num_elbo_draws)
        # Probing: the point tried becomes the path's point (the last tried when none is finite,
        # as `first_finite`), the path is over when no point is left, and nothing else moves.
        probed = dict(c, x=x_new, f=f_new, g=g_new, best=start_approx(x_new), grads=c["grads"] + 1,
                      done=~start_ok & (c["tries"] >= num_jitter), **tried)
        stepped.update({name: c[name] for name in tried})
        return jax.tree_util.tree_map(lambda a, b: jnp.where(probing, a, b), probed, dict(c, **stepped))

    nan = jnp.asarray(jnp.nan, dtype)
    zero = jnp.asarray(0, jnp.int32)
    init = dict(x=x0, f=nan, g=jnp.zeros_like(x0), s=empty, y=empty, n_valid=zero, alpha=ones,
                key=key, best_elbo=jnp.asarray(-jnp.inf, dtype), best_score=jnp.asarray(-jnp.inf, dtype),
                best=start_approx(x0), best_iter=zero, it=zero, done=jnp.asarray(False), grads=zero, logps=zero,
                started=jnp.asarray(False), tries=zero, f_x0=nan, g_x0_ok=jnp.asarray(False), bad_values=zero,
                point=x0)
    out = jax.lax.while_loop(cond, body, init)
    began = PathStart(out["point"], out["tries"], out["started"], out["g_x0_ok"], out["bad_values"])
    return PathResult(out["best_elbo"], out["best"], out["it"], out["grads"], out["logps"], -out["f_x0"],
                      out["best_iter"], began)


# ----------------------------------------------------------------------------------------------
# Pathfinder as a start


class StartGaussian(NamedTuple):
    """One path's best Gaussian, as a start for another method.

    Attributes:
      mean: (K,) its mean.
      scale_tril: (K, K) lower-triangular factor of its covariance (positive diagonal), or the
        diagonal of the marginal sds for `diagonal=True`.
      elbo: its ELBO estimate (-inf when the path found no finite approximation).
      num_iters, num_grad_evals, num_logp_evals: the path's costs.
      best_iter: the L-BFGS iteration whose Gaussian this is (0: none was finite).
    """

    mean: Array
    scale_tril: Array
    elbo: Array
    num_iters: Array
    num_grad_evals: Array
    num_logp_evals: Array
    best_iter: Array = None


def _lower_factor(approx: Approximation) -> Array:
    """Lower-triangular L with L L^T = Sigma (positive diagonal), from a QR of A^T."""
    _, r_fac = jnp.linalg.qr(_covariance_factor(approx).T)
    signs = jnp.where(jnp.diagonal(r_fac) < 0, -1.0, 1.0).astype(r_fac.dtype)
    return r_fac.T * signs[None, :]


def start_gaussian(model: Any, loc: Array, key: Array, options: Options = Options(),
                   diagonal: bool = False) -> StartGaussian:
    """Run one Pathfinder path from `loc` and return its best Gaussian as (mean, factor).

    The cheap start of `aj.fit(method="auto")` (`advi_jax.run.start`): the best-ELBO Gaussian on
    the L-BFGS path has the posterior's location and rough scale even where the log density
    has no mode (a funnel), where the Laplace start has none.

    Args:
      model: anything with `dim` and `log_density` (a pytree, so it is a jit argument).
      loc: (K,) where the path starts.
      key: PRNG key for the ELBO draws.
      options: `Options` (`num_paths` is ignored: one path).
      diagonal: return the diagonal factor diag(marginal sds) instead of the full one.

    Returns:
      A `StartGaussian`.

    Example:
      >>> import jax, jax.numpy as jnp, advi_jax as aj
      >>> from advi_jax.vi import pathfinder
      >>> model = aj.Model(lambda p: -0.5 * jnp.sum((p["x"] - 1.0) ** 2 / 4.0), {"x": aj.real((2,))})
      >>> g = pathfinder.start_gaussian(model, jnp.zeros(2), jax.random.key(0))
      >>> jnp.round(g.mean, 2).tolist(), jnp.round(jnp.diagonal(g.scale_tril), 1).tolist()
      ([1.0, 1.0], [2.0, 2.0])
    """
    options = _check_options(options)
    return _start_gaussian(model, jnp.asarray(loc), key, options, bool(diagonal))


def path_gaussian(model: Any, loc: Array, key: Array, options: Options, diagonal: bool = False,
                  noise: Array | None = None, jitter: Array | None = None) -> tuple[StartGaussian, Array, PathStart]:
    """`start_gaussian` unjitted, for use inside another program: (StartGaussian, log p(loc),
    PathStart). `noise`, `jitter`: as in `lbfgs_path`."""
    path = lbfgs_path(model.log_density, loc, key, options, noise, jitter)
    if diagonal:
        factor = jnp.diag(jnp.sqrt(_variance(path.approx)))
    else:
        factor = _lower_factor(path.approx)
    found = StartGaussian(path.approx.mu, factor, path.elbo, path.num_iters, path.num_grad_evals,
                          path.num_logp_evals, path.best_iter)
    return found, path.start_log_density, path.start


@compile_options.jit(static_argnames=("options", "diagonal"))
def _start_gaussian(model, loc, key, options, diagonal):
    return path_gaussian(model, loc, key, options, diagonal)[0]


# ----------------------------------------------------------------------------------------------
# The algorithm


def _check_options(options: Any) -> Options:
    if not isinstance(options, Options):
        raise TypeError(f"options must be a pathfinder.Options, got {type(options).__name__}")
    for name in ("num_paths", "max_iters", "history", "num_elbo_draws", "num_draws", "max_line_search"):
        check_positive_int(getattr(options, name), f"options.{name}")
    for name in ("patience", "init_tries"):
        value = getattr(options, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"options.{name} must be an int >= 0, got {value!r}")
    for name in ("init_radius", "ftol", "gtol", "wolfe_c2", "elbo_penalty"):
        value = getattr(options, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"options.{name} must be a finite number >= 0, got {value!r}")
    if not 1e-4 < options.wolfe_c2 < 1.0:
        raise ValueError(f"options.wolfe_c2 must lie in (1e-4, 1), got {options.wolfe_c2!r}")
    return options


def _check_family(family: Any) -> Family:
    if not isinstance(family, Family) or family.name not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES} (a Family object), got {family!r}")
    return family


_JITTER_STREAM = 0x6A17  # fold_in data of a path's key for its jittered starts' draws


def loop_evals(model, family: Family, options: Options, num_steps: int) -> int:
    """The log-density evaluations `aj.fit`'s loop makes at most (about two gradients an L-BFGS
    iteration and `num_elbo_draws` log densities), for its compiler options
    (`compile_options.compile_mode`): `num_steps` runs of `num_paths` paths of `max_iters` iterations.

    Without it the loop counted as a fit's 20,000 (`compile_options.DEFAULT_EVALS`) and compiled with
    XLA's full options above 5,000 data entries. The cap, not a typical path's length: wells' badly
    scaled path runs about 600 iterations, and its loop compiled with the fast options (chosen from
    200 iterations, or from the loop's arithmetic) ran 2.4 s against 0.3-0.5 s, "mid" 0.5 s; with
    the cap (12,000 evaluations here) it compiles "mid": the first call 6.6 s against 8.7-14 s with
    XLA's defaults, the second 0.9 s (benchmarks/PERFORMANCE.md, "Pathfinder's and BaM's loop options")."""
    del model, family
    return int(num_steps) * int(options.num_paths) * int(options.max_iters) * (2 + int(options.num_elbo_draws))


def build(model, family: Family, options: Options = Options()) -> VIAlgorithm:
    """Pathfinder as a one-shot `VIAlgorithm` (all the work in one `step`, `converged=True`).

    Args:
      model: anything with `dim` and `log_density(zeta)` on R^K.
      family: `MeanFieldGaussian` or `FullRankGaussian`; the form of the returned Gaussian.
      options: `Options`.

    Returns:
      `VIAlgorithm`; `extras(state)` gives `elbo` (P,) per path, `num_iters` (P,), and with
      `num_paths > 1` `draws` (num_draws, K) PSIS-resampled across paths and their `khat`.

    Raises:
      ValueError / TypeError: for a family it cannot fit or malformed options.
    """
    family = _check_family(family)
    options = _check_options(options)
    num_paths = options.num_paths
    log_density = model.log_density

    def init(key: Array, loc: Array) -> State:
        loc = jnp.asarray(loc)
        k = loc.shape[0]
        dtype = loc.dtype
        jitter = jax.random.uniform(key, (num_paths - 1, k), dtype, -options.init_radius, options.init_radius)
        starts = jnp.concatenate([loc[None, :], loc[None, :] + jitter], axis=0)
        r = min(k, 2 * options.history)
        approx = Approximation(starts, jnp.ones((num_paths, k), dtype), jnp.zeros((num_paths, k, r), dtype),
                               jnp.broadcast_to(jnp.eye(r, dtype=dtype), (num_paths, r, r)))
        num_draws = options.num_draws if num_paths > 1 else 0
        return State(starts, jnp.full((num_paths,), -jnp.inf, dtype), approx,
                     jnp.zeros((num_paths,), jnp.int32), jnp.zeros((num_draws, k), dtype),
                     jnp.asarray(jnp.nan, dtype))

    def step(key: Array, state: State):
        path_key, draw_key, pick_key = jax.random.split(key, 3)
        keys = jax.random.split(path_key, num_paths)
        radii = options.init_radius * jitter_factors(options.init_tries) if options.init_tries else None

        def path(x0, kk):
            jitter = None if radii is None else (jax.random.fold_in(kk, _JITTER_STREAM), jnp.asarray(radii, x0.dtype))
            return lbfgs_path(log_density, x0, kk, options, jitter=jitter)

        paths = jax.vmap(path)(state.starts, keys)
        grads = jnp.sum(paths.num_grad_evals)
        logps = jnp.sum(paths.num_logp_evals)
        draws, khat = state.draws, state.khat
        if num_paths > 1:
            draws, khat = _resample(log_density, paths, draw_key, pick_key, options.num_draws)
            logps = logps + num_paths * options.num_draws
        best_elbo = jnp.max(paths.elbo)
        new = State(state.starts, paths.elbo, paths.approx, paths.num_iters, draws, khat)
        return new, step_info(best_elbo, jnp.isfinite(best_elbo), grads, logps, True)

    def params(state: State):
        best = jax.tree_util.tree_map(lambda a: a[jnp.argmax(state.elbo)], state.approx)
        if family.name == "meanfield":
            sd = jnp.sqrt(_variance(best))
            return MeanFieldParams(best.mu, _softplus_inverse(jnp.maximum(sd, jnp.finfo(sd.dtype).tiny)))
        chol = _lower_factor(best)
        diag = jnp.maximum(jnp.diagonal(chol), jnp.finfo(chol.dtype).tiny)
        return FullRankParams(best.mu, _softplus_inverse(diag), chol)

    def extras(state: State) -> dict:
        out = {"elbo": state.elbo, "num_iters": state.num_iters}
        if num_paths > 1:
            out.update(draws=state.draws, khat=state.khat)
        return out

    return VIAlgorithm(init, step, params, extras)


def _resample(log_density, paths: PathResult, draw_key, pick_key, num_draws: int):
    """PSIS resampling of the pooled draws of all paths against their equal-weight mixture."""
    num_paths, k = paths.approx.mu.shape
    dtype = paths.approx.mu.dtype
    noise = jax.random.normal(draw_key, (num_paths, num_draws, k), dtype)
    draws = jax.vmap(_sample)(paths.approx, noise).reshape(num_paths * num_draws, k)
    # A path that produced no finite approximation must not enter the mixture.
    usable = jnp.isfinite(paths.elbo)
    log_q = jax.vmap(lambda a: _log_prob(a, draws))(paths.approx)  # (P, N)
    log_q = jnp.where(usable[:, None], log_q, -jnp.inf)
    log_mix = logsumexp(log_q, axis=0) - jnp.log(jnp.maximum(jnp.sum(usable), 1).astype(dtype))
    from_usable = jnp.repeat(usable, num_draws)
    log_ratio = jnp.where(from_usable, jax.vmap(log_density)(draws) - log_mix, -jnp.inf)
    smoothed = _psis_core(log_ratio, True)
    index = jax.random.categorical(pick_key, smoothed.log_weights, shape=(num_draws,))
    return draws[index], smoothed.khat
