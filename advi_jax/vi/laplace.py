"""The Laplace approximation: the mode of the log density on R^K and its inverse-Hessian Gaussian.

Two uses:

* as the whitened START of other methods (`aj.fit(init="laplace")`, and `init="auto"` for small
  K): find the mode with L-BFGS, take L0 = a Cholesky factor of the inverse negative Hessian
  there (its diagonal for mean-field), and run the method in the coordinates
  u = L0^{-1}(zeta - mode) (`Whitened`), where the posterior is close to N(0, I); the result is
  mapped back exactly by the family's `transform` (families with `affine_closed = True`);
* as a one-shot METHOD (`aj.fit(method="laplace")`): q = N(mode, L0 L0^T), done in one step.

Cost: the L-BFGS iterations (`_lbfgs.minimize`; typically 10-50 gradients of the log density),
where L-BFGS stopped short of the mode a few Newton steps (`_polish`, a Hessian each), plus a K x K
Hessian (about K gradient evaluations, counted as 2K: one forward-over-reverse pass
per column), so it suits K up to a few thousand.

Example:
  >>> import jax.numpy as jnp, advi_jax as aj
  >>> model = aj.Model(lambda p: -0.5 * jnp.sum((p["x"] - 1.0) ** 2), {"x": aj.real((2,))})
  >>> info = aj.laplace(model)
  >>> info.mode.round(3).tolist()
  [1.0, 1.0]
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from advi_jax import checks, compile_options, gc_pause
from advi_jax._types import Array, ArrayLike, check_positive_int
from advi_jax.base import Family, LogDensity, VIAlgorithm, step_info
from advi_jax.checks import initial_loc
from advi_jax.families import FullRankGaussian, get_family
from advi_jax.vi import _lbfgs

__all__ = ["LaplaceInfo", "Whitened", "laplace", "inverse_cholesky_lower", "transform", "build", "Options",
           "NAME", "FAMILIES", "DEFAULT_NUM_STEPS", "WHITEN", "NEWTON_STEPS", "NEWTON_DECREMENT", "START_DECREMENT"]

NAME = "laplace"
FAMILIES = ("meanfield", "fullrank")
DEFAULT_NUM_STEPS = 1
WHITEN = False
DETERMINISTIC = True  # the ELBO trace is an objective's value, not a noisy estimate: the result reports its last value


NEWTON_STEPS = 5
"""The most Newton steps (and halvings of one) `aj.laplace` takes after L-BFGS (`_polish`), each a
gradient and a Hessian."""
NEWTON_DECREMENT = 1e-4
"""`_polish` stops when the Newton decrement g^T H^-1 g, the squared distance to the quadratic
model's mode in the Hessian's metric (posterior sds for a Gaussian), is at most this: 0.01 sd."""
START_DECREMENT = 0.1
"""The Newton decrement a Laplace START (`advi_jax.run.start`) stops at: about 0.3 sd from the mode,
which whitening needs no closer (the method run from it moves on)."""


class Options(NamedTuple):
    """Static settings of the one-shot Laplace method."""

    max_iter: int = 1000
    newton_steps: int = NEWTON_STEPS


class LaplaceInfo(NamedTuple):
    """What the Laplace approximation found.

    Attributes:
      mode: (K,) the mode of the log density on R^K (found by L-BFGS, then Newton steps (`_polish`, at most
        `newton_steps`) until the Newton decrement is at most `NEWTON_DECREMENT`).
      scale_tril: (K, K) lower-triangular factor of the inverse negative Hessian at the mode
        (diagonal for families other than full-rank).
      iterations: L-BFGS iterations used (the Newton steps not included).
      grad_norm: gradient norm at the mode.
      converged: whether L-BFGS stopped on its tolerance (gradient norm below 1e-3 sqrt(K), or
        an objective change below 10 machine epsilons relative) before `max_iter`, at a finite
        point that beats the start, with a gradient norm below max(1e-3 sqrt(K), 1e-3 x the
        starting one; or stopped where no decrease was found even along steepest descent, the
        same tests passing); or the Newton steps' decrement fell to `NEWTON_DECREMENT` at a finite
        point that beats the start.
      num_grad_evals: value-and-gradient evaluations of the log density L-BFGS used (the start's
        and every line-search trial's), plus the Newton steps' (a Hessian, with its gradient, at each
        point after L-BFGS's end, counted as 2K); the final Hessian's are not included.
    """

    mode: Array
    scale_tril: Array
    iterations: Array
    grad_norm: Array
    converged: Array
    num_grad_evals: Array = None


@jax.tree_util.register_pytree_node_class
class Whitened:
    """A log density in coordinates u with zeta = shift + scale_tril @ u, Jacobian included.

    Satisfies `advi_jax.base.LogDensity` (`dim`, `log_density`), so every algorithm runs on it
    as on the model itself. The constant log|det scale_tril| is added so that the ELBO in u
    equals the ELBO in zeta and traces stay comparable.
    """

    def __init__(self, base: LogDensity, shift: Array, scale_tril: Array):
        self.base, self.shift, self.scale_tril = base, shift, scale_tril

    def tree_flatten(self):
        return (self.base, self.shift, self.scale_tril), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)

    @property
    def dim(self) -> int:
        return self.base.dim

    def log_density(self, u: Array) -> Array:
        log_det = jnp.sum(jnp.log(jnp.diagonal(self.scale_tril)))
        return self.base.log_density(self.shift + self.scale_tril @ u) + log_det


def inverse_cholesky_lower(precision: Array) -> Array:
    """Lower-triangular L with L L^T = precision^{-1}, by one Cholesky and one triangular solve.

    With P the reversal permutation, chol(P H P) = M gives H^{-1} = (P M^{-T} P)(P M^{-T} P)^T,
    and P M^{-T} P is lower triangular; no inverse of H is formed.

    Args:
      precision: (K, K) symmetric positive definite.

    Returns:
      (K, K) lower triangular (NaN when `precision` is not positive definite).
    """
    m = jnp.linalg.cholesky(precision[::-1, ::-1])
    m_inv = jax.scipy.linalg.solve_triangular(m, jnp.eye(m.shape[0], dtype=m.dtype), lower=True)
    return m_inv.T[::-1, ::-1]


def _value_grad_hessian(objective):
    """x -> (value, gradient, symmetrised Hessian), the objective traced once (forward over reverse)."""

    def grad_with_value(x):
        value, grad = jax.value_and_grad(objective)(x)
        return grad, (value, grad)

    def evaluate(x):
        hessian, (value, grad) = jax.jacfwd(grad_with_value, has_aux=True)(x)
        return value, grad, 0.5 * (hessian + hessian.T)

    return evaluate


def _newton_step(grad: Array, hessian: Array) -> tuple[Array, Array]:
    """H^-1 g by a Cholesky solve, and the decrement g^T H^-1 g (NaN where H is not positive definite)."""
    chol = jnp.linalg.cholesky(hessian)
    step = jax.scipy.linalg.cho_solve((chol, True), grad)
    return step, grad @ step


def _polish(objective, x: Array, value: Array, max_steps: int = NEWTON_STEPS, tol: float = NEWTON_DECREMENT):
    """The Hessian at L-BFGS's end `x`, then Newton steps until the decrement is at most `tol`.

    Why. L-BFGS stops on a small relative change of the objective; on a badly conditioned
    posterior in float32 that can be far from the mode: wells with raw-scale predictors (K = 6)
    ended 3.0 posterior sds from the float64 mode (decrement 4.0), and two Newton steps took it to
    1e-5 sd; radon (K = 90) went from 0.12 to 0.002 sd (lead, eighteenth session).

    One gradient-and-Hessian call site (`_value_grad_hessian`): each evaluated point is a full
    step from the last accepted one, or, where the objective rose or is not finite there, half the
    previous trial's step. It stops where the Hessian is not positive definite (the decrement is
    NaN), after `max_steps` steps, or when a halved step is below 1/16 of the full one. Returns
    the last accepted point (L-BFGS's end at least), its value, gradient and Hessian, its decrement
    and the points evaluated.
    """
    evaluate = _value_grad_hessian(objective)
    k = x.shape[0]
    zero = jnp.zeros((), jnp.int32)

    def cond(s):
        n, _, _, _, _, dec, _, _, _, ok = s
        return (n <= max_steps) & ok & ~(dec <= tol)

    def body(s):
        n, x, value, grad, hessian, dec, step, cand, length, _ = s
        c_value, c_grad, c_hessian = evaluate(cand)
        c_step, c_dec = _newton_step(c_grad, c_hessian)
        first = n == 0
        better = jnp.isfinite(c_value) & (first | (c_value <= value))
        take = first | (better & jnp.isfinite(c_dec))
        pick = lambda a, b: jnp.where(take, a, b)  # noqa: E731
        x, value, grad, hessian = pick(cand, x), pick(c_value, value), pick(c_grad, grad), pick(c_hessian, hessian)
        dec, step = pick(c_dec, dec), pick(c_step, step)
        length = jnp.where(take, 1.0, 0.5 * length).astype(length.dtype)
        ok = jnp.isfinite(dec) & jnp.isfinite(value) & (length >= 1.0 / 16)
        return n + 1, x, value, grad, hessian, dec, step, x - length * step, length, ok

    state = (zero, x, value, jnp.zeros_like(x), jnp.zeros((k, k), x.dtype), jnp.full((), jnp.inf, x.dtype),
             jnp.zeros_like(x), x, jnp.ones((), x.dtype), jnp.ones((), bool))
    n, x, value, grad, hessian, dec, _, _, _, _ = jax.lax.while_loop(cond, body, state)
    return x, value, grad, hessian, dec, n


def _find_mode(model: LogDensity, loc: Array, max_iter: int, full: bool, newton_steps: int = NEWTON_STEPS,
               newton_tol: float = NEWTON_DECREMENT) -> LaplaceInfo:
    def objective(z):
        return -model.log_density(z)

    eps = jnp.finfo(loc.dtype).eps
    gtol = 1e-3 * jnp.sqrt(jnp.asarray(loc.shape[0], loc.dtype))
    # `_lbfgs.minimize`: one value-and-gradient call site in the program (the start's evaluation
    # and every line-search trial), and the start's value and gradient norm come back with the mode.
    found = _lbfgs.minimize(objective, loc, max_iters=max_iter, gtol=gtol, ftol=10 * eps)
    # Newton steps from there (`_polish`): L-BFGS's relative-change stop can be sds short of the mode.
    mode, value, grad, hessian, decrement, points = _polish(objective, found.x, found.value, newton_steps,
                                                            newton_tol)
    grad_norm = jnp.linalg.norm(grad)
    # A mode must be a finite point with a finite gradient that beats the starting point, and
    # whose gradient has shrunk (or whose Newton decrement has): along a funnel (density unbounded
    # as a scale -> 0) the objective keeps falling with a gradient that does not, and the
    # relative-change test alone would accept L-BFGS stalling far out along the neck. A search that
    # found no decrease even along steepest descent (`stalled`) stops as a converged one would, and
    # the same tests judge it.
    converged = ((found.converged | found.stalled | (decrement <= newton_tol))
                 & jnp.isfinite(value) & jnp.isfinite(grad_norm) & (value <= found.start_value)
                 & ((grad_norm <= jnp.maximum(gtol, 1e-3 * found.start_grad_norm)) | (decrement <= newton_tol)))
    if full:
        scale_tril = inverse_cholesky_lower(hessian)
    else:
        scale_tril = jnp.diag(1.0 / jnp.sqrt(jnp.diagonal(hessian)))
    return LaplaceInfo(mode, scale_tril, found.iterations, grad_norm, converged,
                       found.num_evals + (points - 1) * 2 * loc.shape[0])


def _find_mode_evals(model: LogDensity, args: dict) -> int:
    """`_find_mode`'s most log-density evaluations for its XLA options (`compile_options.compile_mode`):
    about two per L-BFGS iteration (the step and, rarely more, the line search's trials), 2K for
    the Hessian (forward over reverse), and each Newton step's (`_polish`). Radon (K = 90, 2,842 numbers of data): the fast options,
    0.9 s of compile against 2.0 s with XLA's defaults (lead, eighteenth session)."""
    k = int(model.dim)
    return 2 * int(args["max_iter"]) + (1 + int(args.get("newton_steps", NEWTON_STEPS))) * 2 * k


_find_mode_jit = compile_options.jit(_find_mode, mode=_find_mode_evals, static_argnames=("max_iter", "full", "newton_steps",
                                                                                        "newton_tol"))


@compile_options.jit(model_arg=None, static_argnums=0)
def transform(family: Family, params, shift: Array, scale_tril: Array):
    """`family.transform(params, shift, scale_tril)`, compiled (maps a whitened fit back)."""
    return family.transform(params, shift, scale_tril)


@checks.second_derivatives(lambda kw: "aj.laplace")
@gc_pause.during
def laplace(model: LogDensity, *, family: str | Family = "fullrank", init: ArrayLike | None = None,
            max_iter: int = 1000, newton_steps: int = NEWTON_STEPS, newton_tol: float = NEWTON_DECREMENT) -> LaplaceInfo:
    """Mode of the log density on R^K and a Cholesky factor of the inverse negative Hessian there.

    Args:
      model: an `aj.Model` (or any `LogDensity` with `to_unconstrained` when `init` is a dict).
      family: "fullrank" for the full factor, anything else for the diagonal one.
      init: the L-BFGS start (None: zeros; a dict of constrained values; a (K,) vector).
      max_iter: the most L-BFGS iterations.
      newton_steps: the most Newton steps after L-BFGS (`_polish`; 0: L-BFGS's end). Each costs a
        Hessian (2K gradients); they run only while the Newton decrement exceeds `newton_tol`.
      newton_tol: the Newton decrement at which the steps stop (a positive number; the default
        `NEWTON_DECREMENT` is 0.01 sd from the mode; a start of another method takes
        `START_DECREMENT`, about 0.3 sd, where a rough mode serves). A point whose decrement is at
        most this also counts as converged when L-BFGS's own tests did not pass.

    Returns:
      A `LaplaceInfo`.

    Raises:
      ValueError: when L-BFGS does not converge within `max_iter`, the mode or the Hessian is
        not finite, or the Hessian is not positive definite (the log density has no proper
        Gaussian approximation at its mode; e.g. a centred hierarchical model whose density
        grows without bound as a scale goes to zero).
    """
    family_obj = get_family(family)
    max_iter = check_positive_int(max_iter, "max_iter")
    loc = initial_loc(model, init, jnp.result_type(float))
    checks.check_log_joint_shape(model, loc.dtype)  # a scalar, every parameter declared: before compiling
    newton_steps = check_positive_int(newton_steps, "newton_steps", 0)
    if not (isinstance(newton_tol, (int, float)) and not isinstance(newton_tol, bool) and newton_tol > 0):
        raise ValueError(f"newton_tol must be a positive number, got {newton_tol!r}")
    info = _find_mode_jit(model, loc, max_iter, isinstance(family_obj, FullRankGaussian), newton_steps,
                          float(newton_tol))
    ok = bool(jnp.all(jnp.isfinite(info.mode))) and bool(jnp.all(jnp.isfinite(info.scale_tril)))
    if not ok:
        raise ValueError("init='laplace': the mode or the Hessian of the log density is not finite or the Hessian "
                         "is not positive definite (the mode may be at infinity or the posterior improper in some "
                         "direction); use init=None or 'random'")
    if not bool(info.converged):
        raise ValueError(f"init='laplace': L-BFGS found no mode (stopped after {int(info.iterations)} of at most "
                         f"{max_iter} iterations, gradient norm {float(info.grad_norm):.3g}); the log density may have "
                         "no mode (e.g. a funnel); use init=None or 'random'")
    return info


_ELBO_DRAWS = 64


class _State(NamedTuple):
    params: object
    done: Array


def build(model: LogDensity, family: Family, options: Options) -> VIAlgorithm:
    """The Laplace approximation as a one-shot `VIAlgorithm`: one step finds the mode and the
    Hessian and reports `converged=True` (or `finite=False` when there is no proper Gaussian at
    the mode: a non-finite or indefinite Hessian, no convergence)."""
    if not family.affine_closed:
        raise ValueError(f"method='laplace' needs a family closed under affine maps ('meanfield' or 'fullrank'); "
                         f"family {family.name!r} is not")
    full = isinstance(family, FullRankGaussian)

    def init(key, loc):
        return _State(family.init(key, model.dim, loc=loc, scale=1.0), jnp.zeros((), bool))

    def step(key, state):
        info = _find_mode(model, family.mean(state.params), options.max_iter, full, options.newton_steps)
        unit = family.init(key, model.dim, scale=1.0, dtype=info.mode.dtype)
        params = family.transform(unit, info.mode, info.scale_tril)
        ok = (jnp.all(jnp.isfinite(info.mode)) & jnp.all(jnp.isfinite(info.scale_tril)) & info.converged)
        params = jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), params, state.params)
        # The ELBO of q from _ELBO_DRAWS draws (the driver's trace and stopping rule read it).
        zeta = family.sample(params, key, _ELBO_DRAWS)
        elbo = jnp.mean(jax.vmap(model.log_density)(zeta)) + family.entropy(params)
        elbo = jnp.where(ok, elbo, jnp.nan)
        # L-BFGS's value-and-gradient evaluations, counted in its loop; the Hessian: 2K.
        grads = info.num_grad_evals + 2 * model.dim
        return _State(params, ok), step_info(elbo, ok, grads, _ELBO_DRAWS, ok)

    return VIAlgorithm(init, step, lambda state: state.params)
