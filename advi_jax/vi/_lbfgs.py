"""The library's L-BFGS: two-loop recursion, a strong Wolfe line search, and a minimiser built on them.

One program holds ONE copy of the objective's value and gradient: the line search is a
`lax.while_loop` whose body calls `value_and_grad` once, and the minimiser evaluates its starting
point through that same call (the search's `probe`: a pass that evaluates the given point only).
XLA compiles every call site of a function separately, and a large objective (the low-rank
negative binomial GLM's exact ELBO) costs seconds of compile per copy; optax's L-BFGS with its zoom
line search traces it three times.

Pieces:

* `two_loop(grad, s, y, valid)`: H grad by the two-loop recursion (Nocedal & Wright, Alg. 7.4),
  H0 = s'y / y'y of the newest pair, or min(1, 1/|grad|) I with no pair (a first step of length
  at most 1);
* `line_search(...)`: bracketing with secant steps on the directional derivative, trials from
  t = 1, accepting the first point meeting the strong Wolfe conditions (Armijo c1, curvature c2);
* `direction`, `push`, `curvature_ok`: the descent direction (steepest descent where the two-loop
  one is not a descent direction), the history update, and its test (s'y > eps |s| |y|);
* `init` / `iterate`: the minimiser one pass at a time (for an algorithm whose `step` is one
  L-BFGS iteration, `advi_jax.vi._glm_lowrank`); `minimize`: the whole loop (the Laplace mode,
  `advi_jax.vi.laplace`). Pathfinder (`advi_jax.vi.pathfinder`) uses the first three pieces under
  its own loop (its history also feeds a diagonal update and a Gaussian at every iterate).

Costs: `State.num_evals` counts every value-and-gradient evaluation (the start, each line-search
trial), carried in the loop, so it is the number of times the objective actually ran.

Example:
  >>> import jax.numpy as jnp
  >>> from advi_jax.vi import _lbfgs
  >>> out = _lbfgs.minimize(lambda x: jnp.sum((x - 2.0) ** 2), jnp.zeros(3), max_iters=50, gtol=1e-6)
  >>> bool(out.converged), jnp.round(out.x, 4).tolist()
  (True, [2.0, 2.0, 2.0])
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from advi_jax._types import Array

__all__ = ["two_loop", "line_search", "direction", "push", "curvature_ok", "State", "init", "iterate", "minimize"]


def two_loop(grad: Array, s: Array, y: Array, valid: Array) -> Array:
    """H grad by the L-BFGS two-loop recursion (newest pair last, invalid pairs skipped)."""
    m = s.shape[0]
    sy = jnp.sum(s * y, axis=1)
    rho = jnp.where(valid, 1.0 / jnp.where(valid, sy, 1.0), 0.0)

    def backward(q, i):
        a = rho[i] * jnp.dot(s[i], q)
        return q - a * y[i], a

    q, a_rev = jax.lax.scan(backward, grad, jnp.arange(m - 1, -1, -1))
    a = a_rev[::-1]
    yy = jnp.sum(y[-1] * y[-1])
    gnorm = jnp.sqrt(jnp.sum(grad * grad))
    first = jnp.minimum(1.0, 1.0 / jnp.maximum(gnorm, jnp.finfo(grad.dtype).tiny))
    h0 = jnp.where(valid[-1], sy[-1] / jnp.where(valid[-1], yy, 1.0), first)
    r = h0 * q

    def forward(r, i):
        b = rho[i] * jnp.dot(y[i], r)
        return r + s[i] * (a[i] - b), None

    r, _ = jax.lax.scan(forward, r, jnp.arange(m))
    return r


def direction(grad: Array, s: Array, y: Array, n_valid: Array) -> Array:
    """The L-BFGS search direction -H grad from the newest `n_valid` pairs (the last rows of s, y);
    -grad where that is not a descent direction."""
    m = s.shape[0]
    valid = jnp.arange(m) >= m - n_valid
    d = -two_loop(grad, s, y, valid)
    return jnp.where(jnp.dot(d, grad) < 0, d, -grad)


def push(s: Array, y: Array, n_valid: Array, s_new: Array, y_new: Array, accept: Array):
    """Append the pair (s_new, y_new) to the (m, K) histories (newest last) where `accept`.
    Returns (s, y, n_valid)."""
    m = s.shape[0]
    s = jnp.where(accept, jnp.roll(s, -1, axis=0).at[-1].set(s_new), s)
    y = jnp.where(accept, jnp.roll(y, -1, axis=0).at[-1].set(y_new), y)
    n_valid = jnp.where(accept, jnp.minimum(n_valid + 1, m), n_valid)
    return s, y, n_valid


def curvature_ok(s_new: Array, y_new: Array) -> Array:
    """Whether the pair keeps the inverse-Hessian estimate positive definite beyond rounding:
    s'y > eps |s| |y| (a scale-free test: the objective's scale and the curvature's size do not
    matter, so a posterior whose scale is 1e-9 keeps its pairs)."""
    eps = jnp.finfo(s_new.dtype).eps
    sy = jnp.dot(s_new, y_new)
    return sy > eps * jnp.sqrt(jnp.dot(s_new, s_new) * jnp.dot(y_new, y_new))


def line_search(value_and_grad, x, f, g, d, c1, c2, max_trials, probe=None, resolution=False):
    """Strong Wolfe line search on f along d: bracketing with secant steps.

    The next trial is the zero of the secant of the directional derivative through the bracket
    ends (safeguarded; bisection when the derivative is not increasing), so on a quadratic the
    second trial is the exact minimiser along d. Trials start at t = 1.

    `probe`: None, or (flag, point): where `flag` is true the search evaluates `point` only (one
    trial) and returns it with f and g there (a minimiser's start), so that the start and the line
    searches share one value-and-gradient call site (one copy of the objective in the program).

    `resolution`: after the first trial, also stop when the next trial's predicted decrease
    t |f'(0)| is below the objective's rounding, eps (1 + |f|): there Armijo is decided by
    rounding, and a search at a float32 minimum would otherwise spend all `max_trials`
    evaluations finding nothing. (The first trial, the quasi-Newton step, is always made.)

    Returns (found, x_new, f_new, g_new, trials): `found` is False when no Armijo point was
    met; a point meeting Armijo but not the curvature condition is returned after `max_trials`
    (or when `resolution` stops the search).
    """
    slope = jnp.dot(g, d)
    dtype = x.dtype
    inf = jnp.asarray(jnp.inf, dtype)
    floor = jnp.finfo(dtype).eps * (1.0 + jnp.abs(f))

    def cond(c):
        going = ~c[0] & (c[-1] < max_trials)
        if resolution:
            going = going & ~((c[-1] > 0) & (-c[1] * slope <= floor))
        return going

    def body(c):
        _, t, lo, dlo, hi, dhi, _, _, _, x_lo, f_lo, g_lo, n = c
        x_t = x + t * d
        if probe is not None:
            x_t = jnp.where(probe[0], probe[1], x_t)
        f_t, g_t = value_and_grad(x_t)
        d_t = jnp.dot(g_t, d)
        finite = jnp.isfinite(f_t) & jnp.all(jnp.isfinite(g_t))
        armijo = finite & (f_t <= f + c1 * t * slope)
        done = armijo & (jnp.abs(d_t) <= -c2 * slope)
        if probe is not None:
            done = done | probe[0]
        # New bracket: [lo, hi] with f'(lo) < 0; hi is where Armijo failed or f' turned positive.
        to_hi = ~armijo | (d_t > 0)
        lo_new = jnp.where(to_hi, lo, t)
        dlo_new = jnp.where(to_hi, dlo, d_t)
        hi_new = jnp.where(to_hi, t, hi)
        dhi_new = jnp.where(to_hi, jnp.where(finite, d_t, -inf), dhi)
        bracketed = jnp.isfinite(hi_new)
        denom = dhi_new - dlo_new
        secant = lo_new - dlo_new * (hi_new - lo_new) / jnp.where(denom > 0, denom, 1.0)
        width = hi_new - lo_new
        inside = jnp.clip(secant, lo_new + 0.01 * width, hi_new - 0.01 * width)
        t_in = jnp.where((denom > 0) & (dhi_new > 0) & jnp.isfinite(secant), inside, lo_new + 0.5 * width)
        # Not bracketed yet: extrapolate by the secant through (lo_prev, t), within [1.5 t, 10 t].
        grow = d_t - dlo
        extra = t - d_t * (t - lo) / jnp.where(grow > 0, grow, 1.0)
        t_out = jnp.where((grow > 0) & jnp.isfinite(extra), jnp.clip(extra, 1.5 * t, 10.0 * t), 4.0 * t)
        t_new = jnp.where(bracketed, t_in, t_out)
        x_lo = jnp.where(armijo & ~to_hi, x_t, x_lo)
        f_lo = jnp.where(armijo & ~to_hi, f_t, f_lo)
        g_lo = jnp.where(armijo & ~to_hi, g_t, g_lo)
        return done, t_new, lo_new, dlo_new, hi_new, dhi_new, x_t, f_t, g_t, x_lo, f_lo, g_lo, n + 1

    one = jnp.asarray(1.0, dtype)
    zero = jnp.asarray(0.0, dtype)
    init = (jnp.asarray(False), one, zero, slope, inf, inf, x, f, g, x, f, g, jnp.asarray(0, jnp.int32))
    out = jax.lax.while_loop(cond, body, init)
    found_wolfe, _, lo, _, _, _, x_t, f_t, g_t, x_lo, f_lo, g_lo, n = out
    found = found_wolfe | (lo > 0)
    x_new = jnp.where(found_wolfe, x_t, x_lo)
    f_new = jnp.where(found_wolfe, f_t, f_lo)
    g_new = jnp.where(found_wolfe, g_t, g_lo)
    return found & (slope < 0), x_new, f_new, g_new, n


class State(NamedTuple):
    """The minimiser's state (every leaf strong-typed, so a program compiled ahead from abstract
    arguments is the one a concrete call finds).

    Attributes:
      x, f, g: the current point, the objective and its gradient there (f NaN before the start
        was evaluated).
      f_prev: the objective before the last iteration (NaN before the first and after one that
        found no step).
      s, y: (m, K) the last position / gradient differences, newest last; `n_valid` of them hold pairs.
      iterations: line searches run (the start's evaluation is not one).
      num_evals: value-and-gradient evaluations so far (the start's and every trial's).
      started: the start has been evaluated.
      failed: the minimiser cannot go on: the start is not finite, or a steepest-descent line
        search (with the history cleared) found no decrease.
      f_start, g_start_norm: the objective and the gradient's 2-norm at the start.
    """

    x: Array
    f: Array
    g: Array
    f_prev: Array
    s: Array
    y: Array
    n_valid: Array
    iterations: Array
    num_evals: Array
    started: Array
    failed: Array
    f_start: Array
    g_start_norm: Array


def init(x0: Array, history: int = 10) -> State:
    """The state before the start is evaluated (the first `iterate` evaluates x0)."""
    x0 = jnp.asarray(x0)
    k, dtype = x0.shape[0], x0.dtype
    nan = jnp.full((), jnp.nan, dtype)
    zero = jnp.zeros((), jnp.int32)
    no = jnp.zeros((), bool)
    empty = jnp.zeros((history, k), dtype)
    return State(x0, nan, jnp.zeros_like(x0), nan, empty, empty, zero, zero, zero, no, no, nan, nan)


def iterate(value_and_grad: Callable, state: State, c1: float = 1e-4, c2: float = 0.9,
            max_line_search: int = 20) -> State:
    """One pass: evaluate the start (before it was), else one L-BFGS iteration.

    An iteration searches along `direction` and pushes the accepted pair. A search that finds no
    Armijo point leaves x where it was and clears the history, so that the next iteration tries
    steepest descent; when that finds none either, the state is `failed` (a minimum to the
    precision of the arithmetic, or an objective that is not finite around x)."""
    probing = ~state.started
    d = direction(state.g, state.s, state.y, state.n_valid)
    found, x_new, f_new, g_new, trials = line_search(
        value_and_grad, state.x, state.f, state.g, d, c1, c2, max_line_search, probe=(probing, state.x),
        resolution=True)
    evals = state.num_evals + trials
    # The start's pass: x stays, f and g are its.
    start_ok = jnp.isfinite(f_new) & jnp.all(jnp.isfinite(g_new))
    probed = state._replace(f=f_new, g=g_new, num_evals=evals, started=jnp.ones((), bool), failed=~start_ok,
                            f_start=f_new, g_start_norm=jnp.linalg.norm(g_new))
    # An iteration.
    s_new, y_new = x_new - state.x, g_new - state.g
    s, y, n_valid = push(state.s, state.y, state.n_valid, s_new, y_new, found & curvature_ok(s_new, y_new))
    n_valid = jnp.where(found, n_valid, 0)
    stepped = state._replace(
        x=jnp.where(found, x_new, state.x), f=jnp.where(found, f_new, state.f), g=jnp.where(found, g_new, state.g),
        f_prev=jnp.where(found, state.f, jnp.nan), s=s, y=y, n_valid=n_valid, iterations=state.iterations + 1,
        num_evals=evals, failed=~found & (state.n_valid == 0))
    return jax.tree_util.tree_map(lambda a, b: jnp.where(probing, a, b), probed, stepped)


class Result(NamedTuple):
    """What `minimize` returns.

    Attributes:
      x, value, grad: the last point, the objective and its gradient there.
      iterations: L-BFGS iterations (line searches).
      num_evals: value-and-gradient evaluations, the start's included.
      converged: the gradient norm fell to `gtol` or the objective's change to `ftol` relative.
      stalled: no decrease was found along steepest descent (the state's `failed`, from a finite
        start): x is a minimum to the precision of the arithmetic, or the objective is not finite
        around it.
      start_value, start_grad_norm: the objective and the gradient's 2-norm at x0.
    """

    x: Array
    value: Array
    grad: Array
    iterations: Array
    num_evals: Array
    converged: Array
    stalled: Array
    start_value: Array
    start_grad_norm: Array


def minimize(fun: Callable, x0: Array, *, max_iters: int, gtol: float, ftol: float = 0.0, history: int = 10,
             c1: float = 1e-4, c2: float = 0.9, max_line_search: int = 20) -> Result:
    """Minimise fun: (K,) -> scalar from x0 by L-BFGS (jit- and vmap-friendly; fun traced once).

    Stops when ||grad||_2 <= gtol, when |f_prev - f| <= ftol (1 + |f|) after an iteration, when
    no decrease is found (`Result.stalled`), or after `max_iters` iterations. The line search
    gives up once the decrease it could still find is below the objective's rounding
    (`line_search(resolution=True)`), so a `gtol` much below sqrt(eps |f| lambda_max) ends
    `stalled` there rather than `converged` (a float32 objective at its minimum costs a few
    evaluations, not 2 `max_line_search`).

    Args:
      fun: the objective (a closure may hold traced data).
      x0: (K,) the start.
      max_iters: the most L-BFGS iterations (static).
      gtol, ftol: the tolerances above (ftol 0: none).
      history: m, the pairs kept.
      c1, c2: the strong Wolfe constants.
      max_line_search: trials per line search.

    Returns:
      A `Result`.
    """
    value_and_grad = jax.value_and_grad(fun)

    def small(state):
        gnorm = jnp.sqrt(jnp.sum(state.g * state.g))
        small = gnorm <= gtol
        if ftol > 0:
            small = small | (jnp.abs(state.f_prev - state.f) <= ftol * (1.0 + jnp.abs(state.f)))
        return state.started & ~state.failed & small

    def cond(carry):
        state, done = carry
        return ~done & ~state.failed & (state.iterations < max_iters)

    def body(carry):
        state = iterate(value_and_grad, carry[0], c1, c2, max_line_search)
        return state, small(state)

    state, converged = jax.lax.while_loop(cond, body, (init(x0, history), jnp.zeros((), bool)))
    stalled = state.failed & jnp.isfinite(state.f_start)
    return Result(state.x, state.f, state.g, state.iterations, state.num_evals, converged, stalled,
                  state.f_start, state.g_start_norm)
