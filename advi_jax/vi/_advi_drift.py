"""ADVI whose step size decays once its iterates stop drifting (the low-rank default above K = 200).

Adam with a constant step, then a cosine decay to 1% of it, is what a fixed budget runs
(`advi_jax.optim.default_optimizer`: the decay starts at half the budget). How long the constant
phase must be depends on the posterior: on the K > 200 posteriors of benchmarks/spot_large.py the
low-rank family reaches its answer within 5,000 constant steps on most, while where the data lie
far from zero a hierarchy's scale climbs for ~20,000 (benchmarks/PERFORMANCE.md). A fixed budget
is either wasted or, cut short, 8-39 sd off. This variant ends the constant phase when the
iterates have stopped moving and then decays for as long as that phase lasted:

* The iterates are summarised per WINDOW of `DriftStop.window` steps: the window's mean of q's
  marginal means and of its log marginal sds (both invariant to the rotation of a low-rank factor,
  which the ELBO does not see and the noise moves).
* A window's DRIFT is the largest change of those means from the previous window's, over all 2K
  coordinates, the means in sd of q and the log sds as they are. Noise alone makes it (the window
  mean of a stationary jitter), travel makes it larger; how large noise makes it differs by
  posterior (0.01-0.07 sd on most of spot_large's, 0.1-0.4 at K = 1,504), so a fixed threshold
  either never passes or passes travel. Each window is therefore also summarised in
  `sub_batches` batch means, whose spread gives each coordinate's standard error, and a coordinate
  is CALM when its change is under `tol_drift` OR under `z_drift` of its standard errors, both from
  the previous window and from the one before it (a trend moves twice as far over two windows;
  noise does not). A pure trend reads about 11 standard errors over one window whatever its
  speed (the trend itself widens the batch means' spread) and twice that over two.
* The constant phase ends after `calm_windows` windows in a row in which every coordinate is calm
  (and at least `min_steps` steps); the decay then runs `decay_factor` times as many steps as the
  constant phase took (at least `min_decay`), and the fit stops at its end (`StepInfo.converged`).
* `max_steps` caps the run: if the iterates still drift at `max_constant` of it, the decay starts
  there and runs to the cap; `describe_stop` says so and `stop_warning` warns when the drift was
  large then.

Everything is inside the step (a window's test runs under `lax.cond` when it closes): one compile.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from advi_jax._types import Array, ArrayLike
from advi_jax.base import Family, FitState, LogDensity, step_info
from advi_jax.estimators import get_estimator
from advi_jax.families import get_family

__all__ = ["DriftStop", "DriftState", "advi_drift", "drift_extras", "describe_drift_stop", "drift_stop_warning"]


class DriftStop(NamedTuple):
    """Settings of ADVI with a drift-triggered decay (static, hashable).

    Attributes:
      max_steps: the cap on steps (the driver's `num_steps`).
      learning_rate: Adam's constant step size.
      window: steps per window mean.
      sub_batches: each window's steps are summarised in this many batch means, whose spread gives
        the window mean's standard error per coordinate.
      tol_drift: a coordinate is calm when its window mean moved by less than this from the previous
        window's (means in sd of q, sds as log ratios) ...
      z_drift: ... or by less than this many standard errors of that change.
      calm_windows: windows in a row with every coordinate calm end the constant phase.
      min_steps: the constant phase runs at least this many steps ...
      max_constant: ... and at most this fraction of `max_steps`; then the decay runs to the cap.
      decay_factor: the decay runs this many times the constant phase's steps ...
      min_decay: ... and at least this many (and never past `max_steps`).
      alpha: the step size at the end of the decay, as a fraction of `learning_rate`.
      warn_drift: `stop_warning` warns when the decay had to start at `max_constant` with the last
        window's drift above this.
    """

    max_steps: int = 40_000
    learning_rate: float = 0.01
    window: int = 1000
    sub_batches: int = 20
    tol_drift: float = 0.05
    z_drift: float = 5.0
    calm_windows: int = 2
    min_steps: int = 3000
    max_constant: float = 0.75
    decay_factor: float = 1.0
    min_decay: int = 3000
    alpha: float = 0.01
    warn_drift: float = 0.1


class DriftState(NamedTuple):
    """The plain ADVI `FitState` (Adam's moments as its optimiser state) plus the windows."""

    fit: FitState
    sub_sum: Array  # (2K,) sums over the current sub-batch of q's marginal means and log sds
    subs: Array  # (sub_batches, 2K) this window's sub-batch means
    previous: Array  # (2, 2K) the last two closed windows' means, the last first (NaN before them)
    previous_var: Array  # (2, 2K) their squared standard errors
    drift: Array  # the last closed window's largest change (q's units)
    excess: Array  # ... and its largest change over what counts as calm (< 1: calm)
    decay_drift: Array  # the drift of the window that closed when the decay began (NaN before)
    calm: Array  # calm windows in a row
    decay_start: Array  # the step the decay began at (-1: constant phase)
    decay_steps: Array  # its length
    ruled: Array  # the decay was started by the drift test (not at `max_constant`)
    history: Array  # (2, windows): each closed window's drift and excess, NaN after the last


def _summary(family: Family, params: Any) -> Array:
    return jnp.concatenate([family.mean(params), 0.5 * jnp.log(family.variance(params))])


def advi_drift(model: LogDensity, family: str | Family = "lowrank", *, stop: DriftStop = DriftStop(),
               estimator: Any = "stl", num_samples: int = 4, init_scale: float = 0.1):
    """Build the `(init, step)` pair of ADVI with a drift-triggered decay (see the module docstring).

    Args:
      model: anything with `dim` and `log_density`.
      family: a family name or `Family`.
      stop: the `DriftStop` settings.
      estimator: a gradient estimator name or function.
      num_samples: draws of q per step.
      init_scale: initial scale of every coordinate of q.

    Returns:
      An `advi_jax.vi.advi.ADVI(init, step)`; the state is a `DriftState` (`state.fit.params` is the fit).

    Example:
      >>> import jax, jax.numpy as jnp, advi_jax as aj
      >>> from advi_jax.vi._advi_drift import DriftStop, advi_drift
      >>> model = aj.Model(lambda p: -0.5 * jnp.sum(p["x"] ** 2), {"x": aj.real((3,))})
      >>> init, step = advi_drift(model, "meanfield", stop=DriftStop(max_steps=200, window=20, min_steps=40))
      >>> state, info = jax.jit(step)(jax.random.key(1), init(jax.random.key(0)))
    """
    import optax

    from advi_jax.vi.advi import ADVI, _tree_all_finite

    family = get_family(family)
    estimator_fn = get_estimator(estimator)
    adam = optax.scale_by_adam()
    dim = int(model.dim)
    if stop.window % stop.sub_batches or stop.sub_batches < 2:
        raise ValueError(f"DriftStop.window ({stop.window}) must be a multiple of sub_batches ({stop.sub_batches}) >= 2")
    sub_steps = stop.window // stop.sub_batches
    num_windows = -(-int(stop.max_steps) // int(stop.window))
    last_constant = int(round(stop.max_constant * stop.max_steps))

    def init(key: Array, loc: ArrayLike | None = None) -> DriftState:
        params = family.init(key, dim, loc=loc, scale=init_scale)
        zero = jnp.zeros((), jnp.int32)
        dtype = jax.tree_util.tree_leaves(params)[0].dtype
        nan = jnp.array(jnp.nan, dtype)
        return DriftState(FitState(params, adam.init(params), zero, zero, zero), jnp.zeros(2 * dim, dtype),
                          jnp.zeros((stop.sub_batches, 2 * dim), dtype), jnp.full((2, 2 * dim), nan),
                          jnp.full((2, 2 * dim), nan), nan, nan, nan, zero, zero - 1, zero, jnp.zeros((), bool),
                          jnp.full((2, num_windows), nan))

    def loss(params, key):
        surrogate, aux = estimator_fn(family, model.log_density, params, key, num_samples)
        return -surrogate, aux

    def rate(state: DriftState, dtype) -> Array:
        t = state.fit.step
        frac = jnp.clip((t - state.decay_start) / jnp.maximum(state.decay_steps, 1), 0.0, 1.0).astype(dtype)
        cosine = stop.alpha + (1.0 - stop.alpha) * 0.5 * (1.0 + jnp.cos(math.pi * frac))
        return stop.learning_rate * jnp.where(state.decay_start >= 0, cosine, 1.0)

    def close_sub(state: DriftState, t: Array) -> DriftState:
        index = (t % stop.window) // sub_steps - 1  # -1: the window's last sub-batch
        return state._replace(sub_sum=jnp.zeros_like(state.sub_sum),
                              subs=state.subs.at[index].set(state.sub_sum / sub_steps))

    def close(state: DriftState, t: Array) -> DriftState:
        mean = jnp.mean(state.subs, axis=0)
        var = jnp.var(state.subs, axis=0, ddof=1) / stop.sub_batches
        sd = jnp.exp(mean[dim:])
        units = jnp.concatenate([sd, jnp.ones_like(sd)])  # means in sd of q, log sds as they are
        change = jnp.abs(mean[None] - state.previous) / units[None]  # (2, 2K): from the last window, and the one before
        se = jnp.sqrt(var[None] + state.previous_var) / units[None]
        drift = jnp.max(change[0])  # NaN at the first window (no previous one)
        # a trend moves the mean twice as far over two windows, while noise does not grow: both must be calm
        # (NaN from the second window before it has a window two back)
        excess = jnp.max(change / jnp.maximum(stop.tol_drift, stop.z_drift * se))
        calm = jnp.where(excess < 1.0, state.calm + 1, 0)
        constant = state.decay_start < 0
        ruled = constant & (calm >= stop.calm_windows) & (t >= stop.min_steps)
        forced = constant & ~ruled & (t >= last_constant)
        decay = jnp.maximum(jnp.round(stop.decay_factor * t).astype(jnp.int32), stop.min_decay)
        decay = jnp.minimum(decay, stop.max_steps - t)
        start = jnp.where(ruled | forced, t, state.decay_start)
        steps = jnp.where(ruled, decay, jnp.where(forced, stop.max_steps - t, state.decay_steps))
        index = t // stop.window - 1
        decay_drift = jnp.where(ruled | forced, drift, state.decay_drift)
        return state._replace(previous=jnp.stack([mean, state.previous[0]]),
                              previous_var=jnp.stack([var, state.previous_var[0]]), drift=drift, excess=excess, decay_drift=decay_drift,
                              calm=calm, decay_start=start, decay_steps=steps, ruled=state.ruled | ruled,
                              history=state.history.at[:, index].set(jnp.stack([drift, excess]), mode="drop"))

    def step(key: Array, state: DriftState):
        fit = state.fit
        (_, aux), grads = jax.value_and_grad(loss, has_aux=True)(fit.params, key)
        finite = jnp.isfinite(aux.elbo) & _tree_all_finite(grads)
        lr = rate(state, aux.elbo.dtype)

        def apply(_):
            updates, opt_state = adam.update(grads, fit.opt_state, fit.params)
            return jax.tree_util.tree_map(lambda p, u: p - lr * u, fit.params, updates), opt_state

        def keep(_):
            return fit.params, fit.opt_state

        params, opt_state = jax.lax.cond(finite, apply, keep, None)
        bad = (~finite).astype(jnp.int32)
        t = fit.step + 1
        new = state._replace(fit=FitState(params, opt_state, t, fit.num_nonfinite + bad,
                                          (fit.consecutive_nonfinite + bad) * bad),
                             sub_sum=state.sub_sum + _summary(family, params))
        new = jax.lax.cond(t % sub_steps == 0, lambda s: close_sub(s, t), lambda s: s, new)
        new = jax.lax.cond(t % stop.window == 0, lambda s: close(s, t), lambda s: s, new)
        done = new.ruled & (t >= new.decay_start + new.decay_steps)
        return new, step_info(aux.elbo, finite, num_samples, 0, converged=done)

    return ADVI(init, step)


def drift_extras(stop: DriftStop):
    """state -> what the drift rule saw: the drift of the window that closed when the decay began, the
    step it began at and its length, whether the drift test began it, and every window's drift
    (`drift_stop_history`, also through the decay)."""

    def extras(state: DriftState) -> dict:
        return {"drift_stop_drift": state.decay_drift, "drift_stop_decay_start": state.decay_start,
                "drift_stop_decay_steps": state.decay_steps, "drift_stop_ruled": state.ruled,
                "drift_stop_history": state.history,
                # the rule's own settings, for its warning (`drift_stop_warning`)
                "drift_stop_window": jnp.asarray(stop.window, jnp.int32),
                "drift_stop_warn_drift": jnp.asarray(stop.warn_drift, state.decay_drift.dtype)}

    return extras


def describe_drift_stop(reason: str, code: int, extras: dict, num_steps: int) -> str:
    """The driver's reason with what the drift rule did (for `Result.stop_reason`)."""
    from advi_jax.run.driver import STOP_REASONS

    start, steps = int(extras["drift_stop_decay_start"]), int(extras["drift_stop_decay_steps"])
    drift = float(extras["drift_stop_drift"])
    if code == 4:
        return (f"converged: ADVI's iterates stopped drifting (window drift {drift:.3g} sd of q) at step {start}, "
                f"and its step size then decayed over {steps} steps" + reason[len(STOP_REASONS[4]):])
    if code == 0 and start >= 0 and not bool(extras["drift_stop_ruled"]):
        return (f"reached num_steps ({num_steps}): ADVI's iterates had not stopped drifting (window drift {drift:.3g} sd "
                f"of q) by step {start}, where its step size began to decay" + reason[len("reached num_steps"):])
    return reason


def drift_stop_warning(code: int, extras: dict, num_steps: int, stop: DriftStop = DriftStop()) -> str | None:
    """A warning when the decay had to start at `DriftStop.max_constant` of the cap while the iterates still
    moved far (a `DiagnosticWarning`'s text), or None. The window and the threshold are the fit's own rule's
    (its extras carry them), else `stop`'s."""
    drift = float(extras["drift_stop_drift"])
    window = int(extras.get("drift_stop_window", stop.window))
    threshold = float(extras.get("drift_stop_warn_drift", stop.warn_drift))
    if code == 0 and not bool(extras["drift_stop_ruled"]) and drift > threshold:
        return (f"ADVI's iterates still drifted by {drift:.3g} sd of q per {window}-step window when its step size "
                f"began to decay at step {int(extras['drift_stop_decay_start'])} (num_steps={num_steps}): "
                "q may be short of the family's optimum; fit again with a larger num_steps")
    return None
