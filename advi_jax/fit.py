"""The ADVI optimisation loop: a pure (init, step) pair, a compiled `fit`, and its Result.

`fit` runs the step inside a jitted `lax.while_loop` over chunks of `chunk_size` steps. The
model is an *argument* of the jitted function (its data are leaves of the `Model` pytree), the
configuration is static, and the chunk bounds are traced integers, so a second `fit` of the same
model and configuration compiles nothing, whatever `num_steps` is. Between chunks Python only
updates the progress bar and checks the stop flag computed inside the loop.

Stopping rule (optional, `tol_rel_obj`), after Stan's: every `eval_every` steps the mean of the
per-step ELBO estimates over those steps is compared with the previous such mean; the relative
change |new - old| / |new| goes into a circular buffer of `window` entries, and once the buffer
is full the fit stops when the mean or the median of the buffer falls below `tol_rel_obj`.
Stan evaluates the ELBO with extra draws every 100 iterations and starts checking at once;
averaging the steps' own estimates costs no extra draws, and waiting for a full buffer avoids
stopping on one lucky comparison.

Non-finite steps: a step whose ELBO estimate or gradient is not finite leaves the parameters
and the optimiser state unchanged and is counted; after `max_consecutive_nonfinite` such
steps in a row the fit stops, keeps the last finite parameters, and says why. The count is
`Result.num_nonfinite` and appears in `Result.stop_reason` and `summary()`.

Step-size search (`learning_rate="adapt"`), after Stan's `adapt` phase: Stan runs
`adapt_iter = 50` iterations of its own adaptive-gradient rule for each eta in
(100, 10, 1, 0.1, 0.01), from the same starting point, evaluates the ELBO, keeps the eta with
the best ELBO, and stops with an error when every eta diverges. Stan's eta scales a step that
is normalised by a running gradient magnitude, so eta = 1 moves each coordinate by about 1 per
iteration early on; Adam's learning rate is directly the largest per-coordinate step, and the
grid here (`ADAPT_LEARNING_RATES`, 1 down to 1e-3 in half decades) covers the same range of
per-coordinate moves shifted to where Adam is stable. Every candidate runs `adapt_iter` (200)
steps from the same initial state with the same keys, all at once under `jax.vmap`; the ELBO of
each end point is then estimated with the same `num_eval_draws` draws (common random numbers,
so differences are not noise), and the best finite one wins. Candidates that produced a
non-finite ELBO are discarded; if none is left, or none improved on the initial ELBO, `fit`
raises a ValueError (Stan's "all step sizes diverged") rather than run a fit known to be bad.

Initialisation: `init=None` starts q at zero in R^K (Stan's default is uniform(-2, 2); zero is
the centre of that box and the prior centre of most standardised models); `init=` a dict of
constrained values or a (K,) vector starts there; `init="random"` draws `num_init_draws`
locations uniformly in (-init_radius, init_radius)^K (Stan's random inits) and starts from the
one whose q (with scale `init_scale`) has the highest ELBO estimate, using the same draws for
each candidate.

Precision: everything follows JAX's default float dtype. For float64, enable it before
building arrays, globally with `jax.config.update("jax_enable_x64", True)` or locally with
`with jax.enable_x64(True): result = aj.fit(...)`; the variational parameters, the ELBO trace
and the diagnostics are then float64.

Diagnostics (`diagnostics=True`, the default): after the fit, one jitted call draws
`num_diagnostic_draws` (4096) draws from q and computes the PSIS k-hat of log p - log q, the
importance-weighted ELBO with its standard error and the effective sample sizes (see
`advi_jax.diagnostics`); they are stored on the `Result` and printed by `summary()` with a
verdict. `fit` warns when k-hat exceeds 0.7.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import warnings
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from advi_jax import diagnostics as _diag
from advi_jax._types import Array, ArrayLike, PyTree, check_positive_int
from advi_jax.estimators import ESTIMATORS, get_estimator, min_num_samples
from advi_jax.families import Family, FullRankGaussian, get_family
from advi_jax.flatten import Model

__all__ = [
    "ADVI",
    "FitState",
    "StepInfo",
    "Result",
    "advi",
    "default_optimizer",
    "fit",
    "DEFAULT_LEARNING_RATE",
    "ADAPT_LEARNING_RATES",
    "DiagnosticWarning",
]

DEFAULT_LEARNING_RATE = 0.01
"""Adam's default peak step size: 1e-2 converged on every benchmark GLM (standardised features)
and the conjugate test models within a few thousand steps without tuning; 1e-1 oscillates on the
full-rank scales of poorly conditioned posteriors and 1e-3 needs ~10x more steps."""


ADAPT_LEARNING_RATES = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001)
"""Candidate Adam step sizes for `learning_rate="adapt"` (Stan's eta grid is 100, 10, 1, 0.1,
0.01 for its normalised step; see the module docstring)."""


class DiagnosticWarning(UserWarning):
    """Issued by `fit` when the PSIS k-hat says the approximation is unreliable."""


@functools.lru_cache(maxsize=None)
def default_optimizer(learning_rate: float = DEFAULT_LEARNING_RATE,
                      num_steps: int | None = None) -> optax.GradientTransformation:
    """The default optimiser: Adam, constant for the first half of the run, then cosine-decayed.

    With a constant step size the stochastic gradient keeps the iterates jittering around the
    optimum by roughly one step size, which on a regression posterior (sds ~0.1) is 0.1-0.25
    posterior sd of error in the means; decaying the step over the second half of `num_steps` to
    1% of its peak brings that to a few hundredths of an sd at no extra cost (measured on the
    conjugate linear-regression test model). Without `num_steps` the step size stays constant.
    Cached, so repeated fits with the same settings reuse one object and one compilation.
    """
    if num_steps is None:
        return optax.adam(learning_rate)
    half = max(num_steps // 2, 1)
    schedule = optax.join_schedules(
        [optax.constant_schedule(learning_rate),
         optax.cosine_decay_schedule(learning_rate, max(num_steps - half, 1), alpha=0.01)],
        [half])
    return optax.adam(schedule)


CALL_SECONDS = 0.25
"""Target wall time of one compiled call of the fit loop (between progress-bar updates)."""

AUTO_LAPLACE_MAX_DIM = 1000
"""With `init="auto"` (the default), models with K <= this start from the Laplace approximation
and run in its whitened coordinates (see `fit`); larger models start at zero."""


class FitState(NamedTuple):
    """State of the ADVI loop.

    Attributes:
      params: the family's variational parameters.
      opt_state: the optimiser's state.
      step: number of steps taken (int32 scalar).
      num_nonfinite: total steps skipped because the ELBO or gradient was not finite.
      consecutive_nonfinite: skipped steps in a row up to now.
    """

    params: PyTree
    opt_state: PyTree
    step: Array
    num_nonfinite: Array
    consecutive_nonfinite: Array


class StepInfo(NamedTuple):
    """What one step reports.

    Attributes:
      elbo: the step's ELBO estimate (NaN/inf when the step was skipped).
      finite: whether the ELBO and gradient were finite (the update was applied).
    """

    elbo: Array
    finite: Array


class ADVI(NamedTuple):
    """A pure (init, step) pair; see `advi`."""

    init: Callable[..., FitState]
    step: Callable[[Array, FitState], tuple[FitState, StepInfo]]


def _tree_all_finite(tree) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _select(pred, a, b):
    return jax.tree_util.tree_map(lambda x, y: jnp.where(pred, x, y), a, b)


def advi(model: Model, family: str | Family = "meanfield", *, optimizer: optax.GradientTransformation | None = None,
         estimator: str | Callable = "reparam", num_samples: int = 1, init_scale: float = 0.1) -> ADVI:
    """Build the pure ADVI `(init, step)` pair for `model`.

    `state = init(key, loc=None)` starts the family at `loc` (a (K,) vector in R^K, zeros by
    default) with scales `init_scale`; `state, info = step(key, state)` takes one optimiser step
    on the negative ELBO surrogate. Both are pure, so they can be jitted, scanned and vmapped
    (over keys, or over models with stacked data).

    Example:
      >>> import jax, jax.numpy as jnp, advi_jax as aj
      >>> model = aj.Model(lambda p: -0.5 * jnp.sum(p["x"] ** 2), {"x": aj.real((2,))})
      >>> init, step = aj.advi(model, "fullrank")
      >>> state = init(jax.random.key(0))
      >>> state, info = jax.jit(step)(jax.random.key(1), state)
    """
    family = get_family(family)
    optimizer = default_optimizer() if optimizer is None else optimizer
    estimator_fn = get_estimator(estimator)

    def init(key: Array, loc: ArrayLike | None = None) -> FitState:
        params = family.init(key, model.dim, loc=loc, scale=init_scale)
        zero = jnp.zeros((), jnp.int32)
        return FitState(params, optimizer.init(params), zero, zero, zero)

    def loss(params, key):
        surrogate, aux = estimator_fn(family, model.log_density, params, key, num_samples)
        return -surrogate, aux

    def step(key: Array, state: FitState) -> tuple[FitState, StepInfo]:
        (_, aux), grads = jax.value_and_grad(loss, has_aux=True)(state.params, key)
        finite = jnp.isfinite(aux.elbo) & _tree_all_finite(grads)

        def apply(_):
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
            return optax.apply_updates(state.params, updates), opt_state

        def keep(_):
            return state.params, state.opt_state

        # A skipped step keeps parameters and optimiser state as they were. lax.cond runs one
        # branch (under vmap it becomes a select of both, as a per-leaf select would be).
        params, opt_state = jax.lax.cond(finite, apply, keep, None)
        bad = (~finite).astype(jnp.int32)
        new = FitState(params, opt_state, state.step + 1, state.num_nonfinite + bad,
                       (state.consecutive_nonfinite + bad) * bad)
        return new, StepInfo(aux.elbo, finite)

    return ADVI(init, step)


# ----------------------------------------------------------------------------------------------
# The compiled loop

class _Config(NamedTuple):
    family: Family
    optimizer: Any
    estimator: Any
    num_samples: int
    init_scale: float
    chunk_size: int
    eval_every: int
    window: int
    tol_rel_obj: float  # <= 0: never stop on convergence
    max_consecutive_nonfinite: int


class _Convergence(NamedTuple):
    running_sum: Array
    previous: Array
    rel_changes: Array
    count: Array
    stop_code: Array  # 0 running, 1 converged (mean), 2 converged (median), 3 non-finite


_STOP_REASONS = {
    0: "reached num_steps",
    1: "converged: mean relative ELBO change below tol_rel_obj",
    2: "converged: median relative ELBO change below tol_rel_obj",
    3: "stopped: too many consecutive non-finite steps (last finite parameters kept)",
}


def _init_convergence(window: int, dtype) -> _Convergence:
    return _Convergence(jnp.zeros((), dtype), jnp.full((), jnp.nan, dtype), jnp.full((window,), jnp.inf, dtype),
                        jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def _update_convergence(cfg: _Config, conv: _Convergence, state: FitState, info: StepInfo) -> _Convergence:
    if cfg.tol_rel_obj <= 0:
        # No stopping rule (the default): only the non-finite stop, so the per-step loop carries
        # no bookkeeping it does not use (decided at trace time; cfg is static).
        code = jnp.where(state.consecutive_nonfinite >= cfg.max_consecutive_nonfinite, 3, 0)
        return conv._replace(stop_code=jnp.maximum(conv.stop_code, code))
    running = conv.running_sum + jnp.where(info.finite, info.elbo, 0.0)
    at_eval = (state.step % cfg.eval_every) == 0
    current = running / cfg.eval_every
    rel = jnp.abs(current - conv.previous) / jnp.maximum(jnp.abs(current), jnp.finfo(current.dtype).tiny)
    have_previous = jnp.isfinite(conv.previous)
    push = at_eval & have_previous
    rel_changes = jnp.where(push, conv.rel_changes.at[conv.count % cfg.window].set(rel), conv.rel_changes)
    count = conv.count + push.astype(jnp.int32)
    full = count >= cfg.window
    check = push & full & (cfg.tol_rel_obj > 0)
    code = jnp.where(check & (jnp.mean(rel_changes) < cfg.tol_rel_obj), 1,
                     jnp.where(check & (jnp.median(rel_changes) < cfg.tol_rel_obj), 2, 0))
    code = jnp.where(state.consecutive_nonfinite >= cfg.max_consecutive_nonfinite, 3, code)
    return _Convergence(
        running_sum=jnp.where(at_eval, 0.0, running),
        previous=jnp.where(at_eval, current, conv.previous),
        rel_changes=rel_changes,
        count=count,
        stop_code=jnp.maximum(conv.stop_code, code),
    )


@functools.partial(jax.jit, static_argnames=("cfg",))
def _run_chunk(model: Model, state: FitState, conv: _Convergence, key: Array, stop: Array, cfg: _Config):
    """Run steps from state.step until `stop` (or a stop flag), recording each step's ELBO."""
    algorithm = advi(model, cfg.family, optimizer=cfg.optimizer, estimator=cfg.estimator,
                     num_samples=cfg.num_samples, init_scale=cfg.init_scale)
    start = state.step
    trace = jnp.full((cfg.chunk_size,), jnp.nan, state.params.loc.dtype)
    # Step i uses fold_in(key, i) whatever the chunking; the chunk's keys are derived in one
    # vectorised call, cheaper than a scalar fold_in inside every step.
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(start + jnp.arange(cfg.chunk_size, dtype=start.dtype))

    def cond(carry):
        st, cv, _ = carry
        return (st.step < stop) & (cv.stop_code == 0)

    def body(carry):
        st, cv, tr = carry
        st_new, info = algorithm.step(keys[st.step - start], st)
        tr = tr.at[st.step - start].set(info.elbo)
        return st_new, _update_convergence(cfg, cv, st_new, info), tr

    return jax.lax.while_loop(cond, body, (state, conv, trace))


@functools.partial(jax.jit, static_argnames=("cfg",))
def _init_state(model: Model, key: Array, loc: Array, cfg: _Config) -> FitState:
    return advi(model, cfg.family, optimizer=cfg.optimizer, estimator=cfg.estimator,
                num_samples=cfg.num_samples, init_scale=cfg.init_scale).init(key, loc)


def _elbo_estimate(model: Model, family: Family, params: PyTree, key: Array, num_draws: int) -> Array:
    """Monte Carlo ELBO, mean log p(zeta) + H[q] over `num_draws` draws; -inf if not finite."""
    zeta = family.sample(params, key, num_draws)
    value = jnp.mean(jax.vmap(model.log_density)(zeta)) + family.entropy(params)
    return jnp.where(jnp.isfinite(value), value, -jnp.inf)


@functools.partial(jax.jit, static_argnames=("cfg", "adapt_iter", "num_eval_draws"))
def _adapt_learning_rate(model: Model, loc: Array, key: Array, learning_rates: Array, cfg: _Config,
                         adapt_iter: int, num_eval_draws: int):
    """ELBO after `adapt_iter` Adam steps for each learning rate (vmapped), and at the start."""
    run_key, eval_key = jax.random.split(key)

    def run(lr):
        algorithm = advi(model, cfg.family, optimizer=optax.adam(lr), estimator=cfg.estimator,
                         num_samples=cfg.num_samples, init_scale=cfg.init_scale)
        state = algorithm.init(run_key, loc)

        def body(st, i):
            return algorithm.step(jax.random.fold_in(run_key, i), st)[0], None

        state, _ = jax.lax.scan(body, state, jnp.arange(adapt_iter))
        return _elbo_estimate(model, cfg.family, state.params, eval_key, num_eval_draws), state.num_nonfinite

    start = cfg.family.init(run_key, model.dim, loc=loc, scale=cfg.init_scale, dtype=loc.dtype)
    initial = _elbo_estimate(model, cfg.family, start, eval_key, num_eval_draws)
    elbos, skipped = jax.vmap(run)(learning_rates)
    return initial, elbos, skipped


@functools.partial(jax.jit, static_argnames=("cfg", "num_init_draws", "num_eval_draws"))
def _random_init(model: Model, key: Array, radius: Array, cfg: _Config, num_init_draws: int,
                 num_eval_draws: int):
    """Uniform(-radius, radius)^K candidate locations and the ELBO of q centred at each."""
    loc_key, eval_key = jax.random.split(key)
    dtype = jnp.result_type(float)
    locs = jax.random.uniform(loc_key, (num_init_draws, model.dim), dtype, -radius, radius)

    def score(loc):
        params = cfg.family.init(eval_key, model.dim, loc=loc, scale=cfg.init_scale, dtype=dtype)
        return _elbo_estimate(model, cfg.family, params, eval_key, num_eval_draws)

    return locs, jax.vmap(score)(locs)


def _log_ratios(model: Model, family: Family, params: PyTree, key: Array, num_draws: int):
    """(num_draws, K) draws of q and their log p - log q, evaluated in batches of 256."""
    zeta = family.sample(params, key, num_draws)
    log_p = jax.lax.map(model.log_density, zeta, batch_size=min(num_draws, 256))
    return zeta, log_p - family.log_prob(params, zeta)


@functools.partial(jax.jit, static_argnames=("family", "num_draws"))
def _draws_and_log_ratios(model: Model, family: Family, params: PyTree, key: Array, num_draws: int):
    return _log_ratios(model, family, params, key, num_draws)


@functools.partial(jax.jit, static_argnames=("family", "num_draws"))
def _diagnose(model: Model, family: Family, params: PyTree, key: Array, num_draws: int):
    """Importance diagnostics of q against the model from `num_draws` fresh draws."""
    _, log_ratios = _log_ratios(model, family, params, key, num_draws)
    return _diag._diagnostics_core(log_ratios)



# ----------------------------------------------------------------------------------------------
# Laplace initialisation and whitening (init="laplace")


class LaplaceInfo(NamedTuple):
    """What the Laplace initialisation found.

    Attributes:
      mode: (K,) the mode of the log density on R^K (found by L-BFGS).
      scale_tril: (K, K) lower-triangular factor of the inverse negative Hessian at the mode
        (diagonal for families other than full-rank).
      iterations: L-BFGS iterations used.
      grad_norm: gradient norm at the mode.
      converged: whether L-BFGS stopped on its tolerance (gradient norm below 1e-3 sqrt(K), or
        an objective change below 10 machine epsilons relative) before `max_iter`, at a finite
        point that beats the start, with a gradient norm below max(1e-3 sqrt(K), 1e-3 x the
        starting one).
    """

    mode: Array
    scale_tril: Array
    iterations: Array
    grad_norm: Array
    converged: Array


@jax.tree_util.register_pytree_node_class
class _Whitened:
    """The log density in coordinates u with zeta = shift + scale_tril @ u, Jacobian included."""

    def __init__(self, base: Model, shift: Array, scale_tril: Array):
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
        # + log|det scale_tril|: the ELBO in u equals the ELBO in zeta, so traces stay comparable
        log_det = jnp.sum(jnp.log(jnp.diagonal(self.scale_tril)))
        return self.base.log_density(self.shift + self.scale_tril @ u) + log_det


def _inverse_cholesky_lower(precision: Array) -> Array:
    """Lower-triangular L with L L^T = precision^{-1}, by one Cholesky and one triangular solve.

    With P the reversal permutation, chol(P H P) = M gives H^{-1} = (P M^{-T} P)(P M^{-T} P)^T,
    and P M^{-T} P is lower triangular; no inverse of H is formed.
    """
    m = jnp.linalg.cholesky(precision[::-1, ::-1])
    m_inv = jax.scipy.linalg.solve_triangular(m, jnp.eye(m.shape[0], dtype=m.dtype), lower=True)
    return m_inv.T[::-1, ::-1]


@functools.partial(jax.jit, static_argnames=("max_iter", "full"))
def _laplace(model: Model, loc: Array, max_iter: int, full: bool) -> LaplaceInfo:
    def objective(z):
        return -model.log_density(z)

    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    eps = jnp.finfo(loc.dtype).eps
    gtol = 1e-3 * jnp.sqrt(jnp.asarray(loc.shape[0], loc.dtype))

    def done(gnorm, change, value):
        return (gnorm <= gtol) | (change <= 10 * eps * (1 + jnp.abs(value)))

    def cond(carry):
        _, _, i, gnorm, change, value = carry
        return (i < max_iter) & ((i == 0) | (~done(gnorm, change, value) & jnp.isfinite(value)))

    def body(carry):
        z, state, i, _, _, previous = carry
        value, grad = value_and_grad(z, state=state)
        updates, state = solver.update(grad, state, z, value=value, grad=grad, value_fn=objective)
        return (optax.apply_updates(z, updates), state, i + 1, jnp.linalg.norm(grad), jnp.abs(previous - value),
                value)

    inf = jnp.asarray(jnp.inf, loc.dtype)
    init = (loc, solver.init(loc), jnp.zeros((), jnp.int32), inf, inf, inf)
    mode, _, iterations, gnorm, change, value = jax.lax.while_loop(cond, body, init)
    grad_norm = jnp.linalg.norm(jax.grad(objective)(mode))
    # A mode must be a finite point with a finite gradient that beats the starting point; the
    # relative-change test alone would accept L-BFGS stalling far out along a funnel's neck.
    # ... and whose gradient has shrunk: along a funnel (density unbounded as a scale -> 0) the
    # objective keeps falling with a gradient that does not.
    start_grad_norm = jnp.linalg.norm(jax.grad(objective)(loc))
    converged = (done(gnorm, change, value) & jnp.isfinite(value) & jnp.isfinite(grad_norm)
                 & (objective(mode) <= objective(loc))
                 & (grad_norm <= jnp.maximum(gtol, 1e-3 * start_grad_norm)))
    hessian = jax.hessian(objective)(mode)
    hessian = 0.5 * (hessian + hessian.T)
    if full:
        scale_tril = _inverse_cholesky_lower(hessian)
    else:
        scale_tril = jnp.diag(1.0 / jnp.sqrt(jnp.diagonal(hessian)))
    return LaplaceInfo(mode, scale_tril, iterations, grad_norm, converged)


@functools.partial(jax.jit, static_argnums=0)
def _transform(family: Family, params, shift: Array, scale_tril: Array):
    return family.transform(params, shift, scale_tril)


def laplace(model: Model, *, family: str | Family = "fullrank", init: ArrayLike | None = None,
            max_iter: int = 1000) -> LaplaceInfo:
    """Mode of the log density on R^K and a Cholesky factor of the inverse negative Hessian there.

    Cost: the L-BFGS iterations (typically 10-50 gradients of the log density) plus a K x K
    Hessian (about K gradient evaluations), so it suits K up to a few thousand.

    Raises:
      ValueError: when L-BFGS does not converge within `max_iter`, the mode or the Hessian is
        not finite, or the Hessian is not positive definite (the log density has no proper
        Gaussian approximation at its mode; e.g. a centred hierarchical model whose density
        grows without bound as a scale goes to zero).
    """
    family_obj = get_family(family)
    max_iter = check_positive_int(max_iter, "max_iter")
    dtype = jnp.result_type(float)
    loc = _initial_loc(model, init, dtype)
    info = _laplace(model, loc, max_iter, isinstance(family_obj, FullRankGaussian))
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


# ----------------------------------------------------------------------------------------------
# Result


def _quantile_table(draws: Mapping[str, np.ndarray], labels: Mapping[str, Any] | None = None) -> list[dict]:
    rows = []
    labels = labels or {}
    for name, value in draws.items():
        value = np.asarray(value)
        flat = value.reshape(value.shape[0], -1)
        shape = value.shape[1:]
        names = labels.get(name)
        if names is not None and len(names) != flat.shape[1]:
            raise ValueError(f"labels[{name!r}] must have {flat.shape[1]} entries, got {len(names)}")
        for j in range(flat.shape[1]):
            idx = np.unravel_index(j, shape) if shape else ()
            if names is not None:
                label = f"{name}[{names[j]}]" if shape else str(names[j])
            else:
                label = name + ("[" + ",".join(str(i) for i in idx) + "]" if shape else "")
            col = flat[:, j]
            q5, q50, q95 = np.quantile(col, [0.05, 0.5, 0.95])
            rows.append({"parameter": label, "mean": float(col.mean()), "sd": float(col.std(ddof=1)),
                         "5%": float(q5), "50%": float(q50), "95%": float(q95)})
    return rows


_RESAMPLE_OPTIONS = (None, "psis")


@dataclasses.dataclass
class Result:
    """The outcome of `fit`.

    Attributes:
      model: the fitted `Model`.
      family: the variational `Family`.
      params: the variational parameters (last finite values).
      elbo: (num_steps_run,) per-step ELBO estimates (NaN where a step was skipped).
      num_steps: steps actually run.
      num_gradient_evals: num_steps * num_samples (gradients of the log density evaluated).
      num_nonfinite: steps skipped because the ELBO or gradient was not finite.
      converged: whether the relative-ELBO-change rule stopped the fit.
      stop_reason: why the fit ended, in words (mentions skipped non-finite steps).
      seconds: wall time of the optimisation (compilation included).
      estimator: the gradient estimator's name.
      num_samples: Monte Carlo draws per step.
      khat: PSIS k-hat of log p - log q over `num_diagnostic_draws` draws of q (NaN when
        `diagnostics=False`). < 0.5 good, 0.5-0.7 ok, > 0.7 unreliable.
      iw_elbo: importance-weighted ELBO log mean exp(log p - log q) from the same draws.
      iw_elbo_se: its Monte Carlo standard error (delta method).
      ess: effective sample size 1 / sum w_norm^2 of the raw importance weights.
      psis_ess: the same for the Pareto-smoothed weights.
      num_diagnostic_draws: draws of q behind the diagnostics (0 when skipped).
      learning_rate: Adam's step size used (None when a custom optimizer was passed).
      adaptation: with `learning_rate="adapt"`, a dict with the candidate `learning_rates`, the
        `elbo` reached by each, the `initial_elbo` and the chosen `learning_rate`; else None.
      init_loc: (K,) the initial location of q in R^K.
      init_method: how the fit started: "zero", "user", "random", "laplace", or "zero" with the
        reason the automatic Laplace start was not used.
      init_candidates: with `init="random"`, the (num_init_draws, K) candidate locations.
      init_scores: with `init="random"`, the ELBO estimate of q centred at each candidate; the
        fit starts from the candidate with the highest.
    """

    model: Model
    family: Family
    params: PyTree
    elbo: np.ndarray
    num_steps: int
    num_gradient_evals: int
    num_nonfinite: int
    converged: bool
    stop_reason: str
    seconds: float
    estimator: str = "reparam"
    num_samples: int = 1
    khat: float = float("nan")
    iw_elbo: float = float("nan")
    iw_elbo_se: float = float("nan")
    ess: float = float("nan")
    psis_ess: float = float("nan")
    num_diagnostic_draws: int = 0
    learning_rate: float | None = None
    adaptation: dict | None = None
    init_loc: np.ndarray | None = None
    init_method: str = "zero"
    init_candidates: np.ndarray | None = None
    init_scores: np.ndarray | None = None

    def sample_unconstrained(self, key: Array, n: int) -> Array:
        """(n, K) draws of q in R^K."""
        key = _diag.check_key(key)
        n = check_positive_int(n, "n")
        return self.family.sample(self.params, key, n)

    def sample(self, key: Array, n: int, resample: str | None = None,
               num_proposals: int | None = None) -> dict[str, Array]:
        """n constrained draws: dict name -> array with leading axis n.

        Args:
          key: PRNG key.
          n: number of draws.
          resample: None for independent draws of q; "psis" for sampling-importance-resampling:
            `num_proposals` draws of q are weighted by their Pareto-smoothed importance weights
            and n of them are picked with replacement, which corrects q towards the posterior
            when k-hat < 0.7 (the picks contain repeats; see `diagnostics.psis_resample`).
          num_proposals: draws of q to resample from (default max(4 n, 4096)).

        Returns:
          dict name -> (n, *shape) constrained draws.
        """
        key = _diag.check_key(key)
        n = check_positive_int(n, "n")
        if resample not in _RESAMPLE_OPTIONS:
            raise ValueError(f"resample must be one of {list(_RESAMPLE_OPTIONS)}, got {resample!r}")
        if resample is None:
            if num_proposals is not None:
                raise ValueError("num_proposals is only used with resample='psis'")
            zeta = self.sample_unconstrained(key, n)
        else:
            proposals = max(4 * n, 4096) if num_proposals is None else check_positive_int(num_proposals,
                                                                                          "num_proposals", 25)
            draw_key, pick_key = jax.random.split(key)
            zeta, log_ratios = _draws_and_log_ratios(self.model, self.family, self.params, draw_key, proposals)
            zeta = _diag.psis_resample(pick_key, zeta, log_ratios, n)
        return jax.vmap(self.model.to_constrained)(zeta)

    def importance_draws(self, key: Array, n: int = 4096) -> tuple[dict[str, Array], _diag.PSISResult]:
        """n draws of q (constrained) with their Pareto-smoothed importance weights.

        Returns:
          (draws, psis_result): draws is dict name -> (n, *shape); `psis_result.log_weights` are
          the normalised smoothed log weights and `psis_result.khat` the k-hat of these draws.
        """
        key = _diag.check_key(key)
        n = check_positive_int(n, "n", 25)
        zeta, log_ratios = _draws_and_log_ratios(self.model, self.family, self.params, key, n)
        return jax.vmap(self.model.to_constrained)(zeta), _diag._psis_core(log_ratios, True)

    def psis_expectation(self, fn: Callable[[dict[str, Array]], PyTree], key: Array, n: int = 4096) -> PyTree:
        """PSIS-corrected posterior expectation E_p[fn(params)] from n draws of q.

        `fn` takes one dict of constrained parameters and returns an array or pytree; it is
        vmapped over the draws and averaged with self-normalised Pareto-smoothed weights
        (`diagnostics.psis_expectation`). More accurate than the plain average under q when q
        is slightly off, and reliable while k-hat < 0.7 (`importance_draws` gives the k-hat of
        the draws used).

        Example:
          >>> second_moment = result.psis_expectation(lambda p: p["x"] ** 2, jax.random.key(1))  # doctest: +SKIP
        """
        if not callable(fn):
            raise TypeError(f"fn must be a function of a dict of constrained parameters, got {type(fn).__name__}")
        draws, smoothed = self.importance_draws(key, n)
        values = jax.vmap(fn)(draws)
        weights = jnp.exp(smoothed.log_weights)
        return jax.tree_util.tree_map(lambda v: jnp.tensordot(weights.astype(v.dtype), v, axes=1)
                                      if jnp.issubdtype(v.dtype, jnp.floating) else
                                      jnp.tensordot(weights, v.astype(weights.dtype), axes=1), values)

    def mean(self, key: Array | None = None, num_draws: int = 4000) -> dict[str, Array]:
        """Posterior means in the constrained space, by Monte Carlo over q.

        The constrained mean of q has no closed form for non-linear bijectors; without a `key`
        a fixed key (0) is used so repeated calls agree.
        """
        key = jax.random.key(0) if key is None else key
        return {k: jnp.mean(v, axis=0) for k, v in self.sample(key, num_draws).items()}

    def summary_rows(self, key: Array | None = None, num_draws: int = 4000,
                     labels: Mapping[str, Any] | None = None) -> list[dict]:
        """Per scalar parameter: mean, sd and 5/50/95% quantiles under q (constrained space).

        `labels` optionally maps a parameter name to labels of its flattened entries (e.g.
        feature names for regression coefficients, `aj.models.parameter_labels(model)`).
        """
        key = jax.random.key(0) if key is None else key
        sampled = self.sample(key, num_draws)
        order = [k for k in self.model.names if k in sampled] + [k for k in sampled if k not in self.model.names]
        return _quantile_table({k: np.asarray(sampled[k]) for k in order}, labels)

    @property
    def verdict(self) -> str:
        """The k-hat verdict in plain words (see `diagnostics.khat_verdict`)."""
        if self.num_diagnostic_draws == 0:
            return "not computed (fit(..., diagnostics=False))"
        return _diag.khat_verdict(self.khat, self.num_diagnostic_draws)

    def diagnostics_lines(self) -> list[str]:
        """The diagnostics part of `summary()`, one string per line."""
        if self.num_diagnostic_draws == 0:
            return ["diagnostics: not computed (fit(..., diagnostics=False))"]
        s = self.num_diagnostic_draws
        return [
            f"PSIS k-hat = {self.khat:.3f} from {s} draws of q: {self.verdict}",
            f"importance-weighted ELBO = {self.iw_elbo:.4f} +/- {self.iw_elbo_se:.2g} (Monte Carlo se); "
            f"importance ESS = {self.ess:.0f} raw, {self.psis_ess:.0f} Pareto-smoothed, of {s}",
        ]

    def summary(self, key: Array | None = None, num_draws: int = 4000,
                labels: Mapping[str, Any] | None = None) -> str:
        """A printable table of the posterior summary, the fit's outcome and its diagnostics."""
        rows = self.summary_rows(key, num_draws, labels)
        width = max([len("parameter")] + [len(r["parameter"]) for r in rows])
        cols = ["mean", "sd", "5%", "50%", "95%"]
        lines = [f"{'parameter':<{width}} " + " ".join(f"{c:>10}" for c in cols)]
        for r in rows:
            lines.append(f"{r['parameter']:<{width}} " + " ".join(f"{r[c]:>10.4g}" for c in cols))
        tail = self.elbo[-min(len(self.elbo), 100):]
        final = float(np.nanmean(tail)) if np.isfinite(tail).any() else float("nan")
        lines.append("")
        lr = "" if self.learning_rate is None else f" learning_rate={self.learning_rate:g}"
        lr += " (adapted)" if self.adaptation is not None else ""
        lines.append(f"family={self.family.name} estimator={self.estimator} num_samples={self.num_samples} "
                     f"steps={self.num_steps} gradient_evals={self.num_gradient_evals}{lr} init={self.init_method}")
        lines.append(f"ELBO (mean of last {len(tail)} steps) = {final:.4f}; {self.stop_reason}; "
                     f"skipped non-finite steps: {self.num_nonfinite}; {self.seconds:.2f} s")
        lines.extend(self.diagnostics_lines())
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"Result(family={self.family.name}, dim={self.model.dim}, num_steps={self.num_steps}, "
                f"converged={self.converged}, khat={self.khat:.3g}, stop_reason={self.stop_reason!r})")


# ----------------------------------------------------------------------------------------------
# fit


_check_key = _diag.check_key

_INIT_OPTIONS = "None, 'random', 'laplace', a dict of constrained values, or a (K,) vector in R^K"


def check_estimator(estimator: Any, num_samples: Any) -> tuple[Any, int]:
    """Validate an estimator (name or callable) and `num_samples`; returns (estimator, num_samples)."""
    if isinstance(estimator, str) and estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {sorted(ESTIMATORS)}, got {estimator!r}")
    if not isinstance(estimator, str) and not callable(estimator):
        raise TypeError(f"estimator must be one of {sorted(ESTIMATORS)} or a callable, got {type(estimator).__name__}")
    num_samples = check_positive_int(num_samples, "num_samples")
    if isinstance(estimator, str) and num_samples < min_num_samples(estimator):
        raise ValueError(f"estimator {estimator!r} needs num_samples >= {min_num_samples(estimator)}, "
                         f"got {num_samples}")
    return estimator, num_samples


def check_loop_args(eval_every: Any, window: Any, chunk_size: Any,
                    max_consecutive_nonfinite: Any) -> tuple[int, int, int, int]:
    """Validate the compiled loop's integer settings (shared by `fit` and `fit_many`)."""
    return (check_positive_int(eval_every, "eval_every"), check_positive_int(window, "window"),
            check_positive_int(chunk_size, "chunk_size"),
            check_positive_int(max_consecutive_nonfinite, "max_consecutive_nonfinite"))


def resolve_optimizer(optimizer: Any, learning_rate: Any, num_steps: int) -> optax.GradientTransformation:
    """`optimizer` if given (checked), else `default_optimizer(learning_rate, num_steps)`."""
    if optimizer is None:
        lr = DEFAULT_LEARNING_RATE if learning_rate is None else _check_number(learning_rate, "learning_rate")
        return default_optimizer(float(lr), num_steps)
    if learning_rate is not None:
        raise ValueError("pass either optimizer or learning_rate, not both")
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"optimizer must be an optax GradientTransformation, got {type(optimizer).__name__}")
    return optimizer


def _check_number(value: Any, name: str, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a {'positive ' if positive else ''}finite number, got "
                        f"{type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or (positive and value <= 0):
        raise ValueError(f"{name} must be a {'positive ' if positive else ''}finite number, got {value!r}")
    return value


def _initial_loc(model: Model, init: Any, dtype) -> Array:
    if init is None:
        return jnp.zeros((model.dim,), dtype)
    if isinstance(init, Mapping):
        try:
            return jnp.asarray(model.to_unconstrained(init), dtype)
        except (TypeError, ValueError) as err:
            raise type(err)(f"init: {err}") from None
    if isinstance(init, (str, bytes)) or not isinstance(init, (jax.Array, np.ndarray, list, tuple)):
        raise TypeError(f"init must be {_INIT_OPTIONS}; got {init!r}")
    loc = np.asarray(init)
    if not (np.issubdtype(loc.dtype, np.floating) or np.issubdtype(loc.dtype, np.integer)) or loc.dtype == bool:
        raise TypeError(f"init must be a real vector, got dtype {loc.dtype}")
    if loc.shape != (model.dim,):
        raise ValueError(f"init must be a dict of constrained values or a ({model.dim},) unconstrained vector, "
                         f"got shape {loc.shape}")
    if not np.all(np.isfinite(loc)):
        raise ValueError(f"init has non-finite entries: {loc.tolist()}")
    return jnp.asarray(loc, dtype)


@jax.jit
def _log_density_at(model: Model, zeta: Array) -> Array:
    return model.log_density(zeta)


def _check_log_joint_shape(model: Model, dtype) -> None:
    """Raise if the log density is not a float scalar (checked by shape only, nothing runs)."""
    out = jax.eval_shape(_log_density_at, model, jax.ShapeDtypeStruct((model.dim,), dtype))
    if out.shape != ():
        raise ValueError(f"model.log_joint must return a scalar log density, got shape {out.shape} "
                         "(sum the per-observation terms)")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"model.log_joint must return a float scalar, got dtype {out.dtype}")


def _check_initial_point(model: Model, loc: Array) -> None:
    """Raise a clear error if the log density is not a finite scalar at the initial point."""
    _check_log_joint_shape(model, loc.dtype)
    value = _log_density_at(model, loc)
    if not np.isfinite(float(value)):
        params = model.to_constrained(loc)
        shown = {k: np.round(np.asarray(v), 4).tolist() for k, v in params.items()}
        raise ValueError(f"the log density is {float(value)} at the initial point {shown}; the log joint must be "
                         "finite there (pass init= a point where it is, or check the model)")


@jax.jit
def _all_finite(x: Array) -> Array:
    return jnp.all(jnp.isfinite(x))


def _check_data(model: Model) -> None:
    # On device in one fused read: a NumPy isfinite pass over X on the host cost about 0.1 s per
    # `fit` call at N = 1e6, D = 100. The host copy is made only to count the bad entries.
    for path, leaf in jax.tree_util.tree_leaves_with_path(model.data):
        if isinstance(leaf, (jax.Array, np.ndarray)) and not isinstance(leaf, jax.core.Tracer):
            if np.issubdtype(leaf.dtype, np.inexact) and not bool(_all_finite(leaf)):
                arr = np.asarray(leaf)
                where = jax.tree_util.keystr(path) or "data"
                raise ValueError(f"model.data{where if where != 'data' else ''} has non-finite entries "
                                 f"({int(np.sum(~np.isfinite(arr)))} of {arr.size}); remove or impute them")


def _stop_reason(stop_code: int, num_nonfinite: int, max_consecutive: int) -> str:
    if stop_code == -1:
        reason = "interrupted by the user (last parameters kept)"
    elif stop_code == 3:
        reason = (f"stopped: {max_consecutive} consecutive steps had a non-finite ELBO or gradient "
                  f"({num_nonfinite} skipped in all); the last finite parameters are kept")
    else:
        reason = _STOP_REASONS[stop_code]
    if stop_code != 3 and num_nonfinite > 0:
        reason += (f" ({num_nonfinite} steps with a non-finite ELBO or gradient were skipped: q put draws where "
                   "the log density is not finite)")
    return reason


def _choose_learning_rate(model, loc, key, cfg, learning_rates, adapt_iter, num_eval_draws):
    rates = jnp.asarray(learning_rates, loc.dtype)
    initial, elbos, skipped = _adapt_learning_rate(model, loc, key, rates, cfg, adapt_iter, num_eval_draws)
    initial, elbos, skipped = float(initial), np.asarray(elbos), np.asarray(skipped)
    usable = np.isfinite(elbos)
    info = {"learning_rates": tuple(float(r) for r in learning_rates), "elbo": elbos.tolist(),
            "skipped_steps": skipped.tolist(), "initial_elbo": initial}
    if not usable.any() or not (np.max(np.where(usable, elbos, -np.inf)) > initial):
        raise ValueError(f"learning_rate='adapt': every candidate step size {info['learning_rates']} diverged or "
                         f"failed to improve the initial ELBO {initial:.4g} within adapt_iter={adapt_iter} steps "
                         f"(ELBOs reached: {elbos.tolist()}); check the model, or pass a smaller learning_rate")
    best = int(np.argmax(np.where(usable, elbos, -np.inf)))
    info["learning_rate"] = float(learning_rates[best])
    return float(learning_rates[best]), info


def fit(model: Model, *, key: Array, family: str | Family = "meanfield", num_steps: int = 10_000,
        num_samples: int = 1, optimizer: optax.GradientTransformation | None = None,
        estimator: str | Callable = "reparam", learning_rate: float | str | None = None, init: Any = "auto",
        init_scale: float = 0.1, num_init_draws: int = 10, init_radius: float = 2.0,
        tol_rel_obj: float | None = None, eval_every: int = 100, window: int = 10,
        max_consecutive_nonfinite: int = 50, chunk_size: int = 1000, progress: bool = True,
        check: bool = True, diagnostics: bool = True, num_diagnostic_draws: int = 4096,
        adapt_iter: int = 200, adapt_learning_rates: tuple[float, ...] = ADAPT_LEARNING_RATES,
        warn: bool = True) -> Result:
    """Fit a Gaussian variational approximation to `model` by stochastic gradient ascent on the ELBO.

    Args:
      model: an `aj.Model`.
      key: PRNG key (required; no default seed).
      family: "meanfield", "fullrank", or a `Family`.
      num_steps: maximum optimisation steps.
      num_samples: Monte Carlo draws per step (static).
      optimizer: any optax optimizer; default `default_optimizer(learning_rate, num_steps)`: Adam,
        constant then cosine-decayed over the second half of the run.
      estimator: gradient estimator name (see `advi_jax.estimators.ESTIMATORS`).
      learning_rate: Adam's step size when `optimizer` is None (default `DEFAULT_LEARNING_RATE`),
        or "adapt" for Stan-style step-size search over `adapt_learning_rates` (module docstring).
      init: "auto" (the default): "laplace" when K <= `AUTO_LAPLACE_MAX_DIM` and the family
        allows it, falling back to zero when the Laplace approximation does not exist (no
        finite mode, a Hessian that is not positive definite; `result.init_method` says why);
        None (zero in R^K, Stan's default); a dict of constrained values; a (K,) vector;
        "random" (best of `num_init_draws` uniform draws in (-init_radius, init_radius)^K); or
        "laplace": find the mode with L-BFGS, take L0 = a Cholesky factor of the inverse negative
        Hessian there (its diagonal for mean-field), and run ADVI in the whitened coordinates
        u = L0^{-1}(zeta - mode), where the posterior is close to N(0, I) and Adam's step size is
        on the scale of the posterior in every direction (q starts at N(0, I) there, so
        `init_scale` is not used); the result is mapped back exactly (loc = mode + L0 loc_u,
        L = L0 L_u). Best for ill-conditioned posteriors of moderate K (the Hessian is K x K).
      init_scale: initial standard deviation of every coordinate of q.
      num_init_draws: candidate locations for `init="random"`.
      init_radius: half-width of the box random initial locations are drawn from (Stan: 2).
      tol_rel_obj: stop when the relative ELBO change falls below this (Stan's rule; None: never).
      eval_every: steps per ELBO average for the stopping rule.
      window: relative changes kept for the stopping rule.
      max_consecutive_nonfinite: stop after this many non-finite steps in a row.
      chunk_size: the most steps one compiled call runs (its trace buffer; static); calls are
        sized to take about `CALL_SECONDS`, and the progress bar updates after each.
      progress: show a progress bar with the smoothed ELBO.
      check: evaluate the log density at the initial point first and raise if it is not finite.
      diagnostics: after the fit, compute the PSIS k-hat, the importance-weighted ELBO and the
        importance ESS from `num_diagnostic_draws` draws of q (one jitted call).
      num_diagnostic_draws: draws of q for the diagnostics (>= 100; k-hat needs a few thousand
        to be reliable, see `diagnostics.khat_threshold`).
      adapt_iter: steps per candidate step size with `learning_rate="adapt"`.
      adapt_learning_rates: the candidate step sizes (positive numbers).
      warn: issue a `DiagnosticWarning` when k-hat exceeds the reliability threshold.

    Returns:
      A `Result`.

    Raises:
      TypeError, ValueError: bad arguments, named, before anything is compiled; a log joint
        that is not a finite scalar at the initial point; a failed step-size search.

    Example:
      >>> import jax, jax.numpy as jnp, advi_jax as aj
      >>> model = aj.Model(lambda p: -0.5 * jnp.sum((p["x"] - 1.0) ** 2), {"x": aj.real((2,))})
      >>> result = aj.fit(model, key=jax.random.key(0), num_steps=2000, progress=False)
      >>> result.mean()["x"].round(1)
      Array([1., 1.], dtype=float32)
      >>> bool(result.khat < 0.5)
      True
    """
    if not isinstance(model, Model):
        raise TypeError(f"model must be an advi_jax Model (aj.Model or aj.from_numpyro), got {type(model).__name__}")
    key = _check_key(key)
    family_obj = get_family(family)
    estimator, num_samples = check_estimator(estimator, num_samples)
    num_steps = check_positive_int(num_steps, "num_steps")
    eval_every, window, chunk_size, max_consecutive_nonfinite = check_loop_args(
        eval_every, window, chunk_size, max_consecutive_nonfinite)
    num_init_draws = check_positive_int(num_init_draws, "num_init_draws")
    num_diagnostic_draws = check_positive_int(num_diagnostic_draws, "num_diagnostic_draws", 100)
    adapt_iter = check_positive_int(adapt_iter, "adapt_iter")
    if tol_rel_obj is not None:
        tol_rel_obj = _check_number(tol_rel_obj, "tol_rel_obj")
    init_scale = _check_number(init_scale, "init_scale")
    init_radius = _check_number(init_radius, "init_radius")
    for flag, name in ((progress, "progress"), (check, "check"), (diagnostics, "diagnostics"), (warn, "warn")):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{name} must be True or False, got {flag!r}")
    if not isinstance(adapt_learning_rates, (tuple, list)) or not adapt_learning_rates:
        raise TypeError(f"adapt_learning_rates must be a non-empty tuple of positive numbers, got "
                        f"{adapt_learning_rates!r}")
    adapt_learning_rates = tuple(_check_number(r, "adapt_learning_rates") for r in adapt_learning_rates)
    adapt = isinstance(learning_rate, str) and learning_rate == "adapt"
    if isinstance(learning_rate, str) and not adapt:
        raise ValueError(f"learning_rate must be a positive number, None or 'adapt', got {learning_rate!r}")
    if optimizer is None:
        lr = DEFAULT_LEARNING_RATE if learning_rate is None or adapt else \
            _check_number(learning_rate, "learning_rate")
    elif learning_rate is not None:
        raise ValueError("pass either optimizer or learning_rate, not both")
    elif not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"optimizer must be an optax GradientTransformation, got {type(optimizer).__name__}")
    random_init = isinstance(init, str) and init == "random"
    auto_init = isinstance(init, str) and init == "auto"
    can_whiten = type(family_obj).transform is not Family.transform
    if isinstance(init, str) and init == "laplace" and not can_whiten:
        raise ValueError(f"init='laplace' needs a family closed under affine maps ('meanfield' or 'fullrank'); "
                         f"family {family_obj.name!r} is not")
    laplace_init = (isinstance(init, str) and init == "laplace") or (
        auto_init and can_whiten and model.dim <= AUTO_LAPLACE_MAX_DIM)
    if isinstance(init, str) and not (random_init or laplace_init or auto_init):
        raise ValueError(f"init must be {_INIT_OPTIONS}; got {init!r}")
    _check_data(model)

    dtype = jnp.result_type(float)
    _check_log_joint_shape(model, dtype)
    start_time = time.perf_counter()
    cfg = _Config(family_obj, optimizer if optimizer is not None else default_optimizer(float(lr), num_steps), estimator,
                  num_samples, init_scale, chunk_size, eval_every, window, float(tol_rel_obj or 0.0),
                  max_consecutive_nonfinite)
    init_scores = init_candidates = None
    if random_init:
        locs, scores = _random_init(model, jax.random.fold_in(key, 3), jnp.asarray(init_radius, dtype), cfg,
                                    num_init_draws, 64)
        init_scores, init_candidates = np.asarray(scores), np.asarray(locs)
        if not np.isfinite(init_scores).any():
            raise ValueError(f"init='random': the ELBO is not finite at any of the {num_init_draws} random initial "
                             f"points in (-{init_radius}, {init_radius})^K; lower init_radius or pass init=")
        loc = locs[int(np.argmax(np.where(np.isfinite(init_scores), init_scores, -np.inf)))]
    else:
        loc = _initial_loc(model, None if isinstance(init, str) else init, dtype)
    init_method = ("random" if random_init else "zero" if init is None or isinstance(init, str) else "user")
    if check:
        _check_initial_point(model, loc)
    run_model, laplace_info = model, None
    if laplace_init:
        try:
            laplace_info = laplace(model, family=family_obj, init=loc)
        except ValueError as err:
            if not auto_init:
                raise
            init_method = f"zero (no Laplace start: {str(err).split(': ', 1)[-1].split(';')[0]})"
        else:
            run_model = _Whitened(model, laplace_info.mode, laplace_info.scale_tril)
            loc = jnp.zeros_like(loc)
            cfg = cfg._replace(init_scale=1.0)
            init_method = "laplace"

    adaptation = None
    if adapt and optimizer is None:
        lr, adaptation = _choose_learning_rate(run_model, loc, jax.random.fold_in(key, 2), cfg, adapt_learning_rates,
                                               adapt_iter, 256)
        cfg = cfg._replace(optimizer=default_optimizer(lr, num_steps))
    elif adapt:
        raise ValueError("learning_rate='adapt' tunes Adam's step size; it cannot be combined with optimizer=")

    init_key, run_key = jax.random.split(key)
    state = _init_state(run_model, init_key, loc, cfg)
    conv = _init_convergence(window, dtype)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_steps, desc="ADVI", unit="step", leave=True, dynamic_ncols=True)
    traces = []
    done = 0
    stop_code = 0
    try:
        # Each call runs up to `chunk_size` steps (the trace buffer); how many is chosen here, from
        # the measured time per step, so that a call takes about CALL_SECONDS: fast models run
        # long calls (little per-call overhead), slow ones keep the progress bar moving. The
        # bound is a traced argument, so varying it compiles nothing.
        per_call = min(chunk_size, 100)
        while done < num_steps and stop_code == 0:
            stop = min(done + per_call, num_steps)
            tick = time.perf_counter()
            state, conv, trace = _run_chunk(run_model, state, conv, run_key, jnp.asarray(stop, jnp.int32), cfg)
            new_done, stop_code, skipped, trace = jax.device_get(
                (state.step, conv.stop_code, state.num_nonfinite, trace))
            new_done, stop_code = int(new_done), int(stop_code)
            ran = new_done - done
            chunk = np.asarray(trace[:ran])
            traces.append(chunk)
            if ran and done > 0:  # the first call includes compilation
                per_step = (time.perf_counter() - tick) / ran
                per_call = int(np.clip(CALL_SECONDS / max(per_step, 1e-9), 1, chunk_size))
            elif done == 0:
                per_call = chunk_size if ran == 0 else per_call
            if bar is not None:
                bar.update(ran)
                smooth = np.nanmean(chunk[-min(len(chunk), 100):]) if np.isfinite(chunk).any() else float("nan")
                bar.set_postfix(elbo=f"{smooth:.4g}", skipped=int(skipped), refresh=False)
            done = new_done
    except KeyboardInterrupt:
        stop_code = -1
    finally:
        if bar is not None:
            bar.close()
    elbo = np.concatenate(traces) if traces else np.zeros((0,), np.dtype(dtype))
    num_nonfinite = int(state.num_nonfinite)
    params = state.params
    if laplace_info is not None:
        params = _transform(family_obj, params, laplace_info.mode, laplace_info.scale_tril)
        loc = laplace_info.mode
    result = Result(
        model=model,
        family=family_obj,
        params=params,
        elbo=elbo,
        num_steps=done,
        num_gradient_evals=done * num_samples,
        num_nonfinite=num_nonfinite,
        converged=stop_code in (1, 2),
        stop_reason=_stop_reason(stop_code, num_nonfinite, max_consecutive_nonfinite),
        seconds=time.perf_counter() - start_time,
        estimator=estimator if isinstance(estimator, str) else getattr(estimator, "__name__", "custom"),
        num_samples=num_samples,
        learning_rate=float(lr) if optimizer is None else None,
        adaptation=adaptation,
        init_loc=np.asarray(loc),
        init_method=init_method,
        init_candidates=init_candidates,
        init_scores=init_scores,
    )
    if diagnostics:
        diag = _diagnose(model, family_obj, params, jax.random.fold_in(key, 1), num_diagnostic_draws)
        result.khat = float(diag.khat)
        result.iw_elbo = float(diag.iw_elbo)
        result.iw_elbo_se = float(diag.iw_elbo_se)
        result.ess = float(diag.ess)
        result.psis_ess = float(diag.psis_ess)
        result.num_diagnostic_draws = num_diagnostic_draws
        bound = _diag.khat_threshold(num_diagnostic_draws)
        if warn and not result.khat < bound:
            warnings.warn(f"PSIS k-hat = {result.khat:.2f} >= {bound:.2f}: {result.verdict}", DiagnosticWarning,
                          stacklevel=2)
    return result
