"""ADVI: stochastic gradient ascent on the ELBO of a family, over any optax optimiser.

Kucukelbir, Tran, Ranganath, Gelman & Blei (2017). Each step draws `num_samples` reparameterised
draws of q (or uses the chosen estimator, `advi_jax.estimators`), takes the gradient of the
estimator's surrogate and applies one optimiser update.

Non-finite steps: a step whose ELBO estimate or gradient is not finite leaves the parameters and
the optimiser state unchanged, reports `finite=False` and is counted (`FitState.num_nonfinite`).
What this does to the gradient: a step is skipped WHOLE, never averaged over its finite draws
only (that would drop exactly the draws that land where the log density is NaN or -inf and so
bias every update towards that region). Skipping is still selection: the updates that run are
those whose draws all landed in the finite region, so when steps were skipped q may put mass
where the log density is not finite without any update having seen it. The fit therefore does
not trust itself: the result's diagnostics measure the share of q's mass there from fresh draws,
and any such mass makes the verdict at best "unreliable" (`advi_jax.result`).

Example:
  >>> import jax, jax.numpy as jnp, advi_jax as aj
  >>> model = aj.Model(lambda p: -0.5 * jnp.sum(p["x"] ** 2), {"x": aj.real((2,))})
  >>> init, step = aj.advi(model, "fullrank")
  >>> state = init(jax.random.key(0))
  >>> state, info = jax.jit(step)(jax.random.key(1), state)
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from advi_jax._types import Array, ArrayLike
from advi_jax.base import Family, FitState, LogDensity, StepInfo, VIAlgorithm, step_info
from advi_jax.estimators import get_estimator
from advi_jax.families import get_family
from advi_jax.optim import default_optimizer

if TYPE_CHECKING:  # optax is imported where it is used (`import advi_jax` does not load it)
    import optax

__all__ = ["ADVI", "Options", "AutoStop", "DriftStop", "advi", "advi_averaged", "build", "elbo_estimate", "adapt_learning_rate",
           "NAME", "FAMILIES", "DEFAULT_NUM_STEPS", "WHITEN", "describe_stop",
           "stop_warning"]

NAME = "advi"
FAMILIES = ("meanfield", "fullrank", "lowrank")
DEFAULT_NUM_STEPS = 10_000
WHITEN = True
DETERMINISTIC = False  # the ELBO trace is a per-step Monte Carlo estimate: the result reports a mean of the last steps
_SCORE_ESTIMATORS = ("score", "score_baseline")


class Options(NamedTuple):
    """ADVI's static settings (hashable: the optimiser is a cached optax object)."""

    optimizer: Any = None  # None: default_optimizer()
    estimator: Any = "reparam"
    num_samples: int = 1
    init_scale: float = 0.1
    stop: Any = None  # None: a fixed step budget with `optimizer`; an `AutoStop`: `advi_averaged`; a `DriftStop`:
    # `advi_drift` (either way the optimizer is unused)


class ADVI(NamedTuple):
    """A pure (init, step) pair; see `advi`."""

    init: Callable[..., FitState]
    step: Callable[[Array, FitState], tuple[FitState, StepInfo]]


def _tree_all_finite(tree) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def advi(model: LogDensity, family: str | Family = "meanfield", *, optimizer: optax.GradientTransformation | None = None,
         estimator: str | Callable = "reparam", num_samples: int = 1, init_scale: float = 0.1) -> ADVI:
    """Build the pure ADVI `(init, step)` pair for `model`.

    `state = init(key, loc=None)` starts the family at `loc` (a (K,) vector in R^K, zeros by
    default) with scales `init_scale`; `state, info = step(key, state)` takes one optimiser step
    on the negative ELBO surrogate (`info` is an `advi_jax.base.StepInfo`). Both are pure, so
    they can be jitted, scanned and vmapped (over keys, or over models with stacked data).

    Args:
      model: anything with `dim` and `log_density` (an `aj.Model`, a whitened view of one).
      family: a family name or `Family`.
      optimizer: an optax optimiser (default Adam at `DEFAULT_LEARNING_RATE`).
      estimator: a gradient estimator name or function.
      num_samples: draws of q per step.
      init_scale: initial scale of every coordinate of q.

    Returns:
      An `ADVI(init, step)` NamedTuple.
    """
    import optax

    family = get_family(family)
    optimizer = default_optimizer() if optimizer is None else optimizer
    estimator_fn = get_estimator(estimator)
    score = isinstance(estimator, str) and estimator in _SCORE_ESTIMATORS

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

        # A skipped step keeps parameters and optimiser state as they were (module docstring).
        params, opt_state = jax.lax.cond(finite, apply, keep, None)
        bad = (~finite).astype(jnp.int32)
        new = FitState(params, opt_state, state.step + 1, state.num_nonfinite + bad,
                       (state.consecutive_nonfinite + bad) * bad)
        grads_used, logp_used = (0, num_samples) if score else (num_samples, 0)
        return new, step_info(aux.elbo, finite, grads_used, logp_used)

    return ADVI(init, step)


def build(model: LogDensity, family: Family, options: Options) -> VIAlgorithm:
    """ADVI as a `VIAlgorithm` for the driver (see `advi_jax.base`); with `options.stop` the
    averaged, self-stopping variant (`advi_averaged`)."""
    if isinstance(options.stop, DriftStop):
        pair = advi_drift(model, family, stop=options.stop, estimator=options.estimator,
                          num_samples=options.num_samples, init_scale=options.init_scale)
        return VIAlgorithm(pair.init, pair.step, lambda state: state.fit.params, drift_extras(options.stop))
    if options.stop is not None:
        pair = advi_averaged(model, family, stop=options.stop, estimator=options.estimator,
                             num_samples=options.num_samples, init_scale=options.init_scale)
        return VIAlgorithm(pair.init, pair.step, averaged_params(family), averaged_extras(family, options.stop))
    pair = advi(model, family, optimizer=options.optimizer, estimator=options.estimator,
                num_samples=options.num_samples, init_scale=options.init_scale)
    return VIAlgorithm(pair.init, pair.step, lambda state: state.params)


def elbo_estimate(model: LogDensity, family: Family, params: Any, key: Array, num_draws: int) -> Array:
    """Monte Carlo ELBO, mean log p(zeta) + H[q] over `num_draws` draws; -inf if not finite."""
    zeta = family.sample(params, key, num_draws)
    value = jnp.mean(jax.vmap(model.log_density)(zeta)) + family.entropy(params)
    return jnp.where(jnp.isfinite(value), value, -jnp.inf)


@functools.partial(jax.jit, static_argnames=("family", "options", "adapt_iter", "num_eval_draws"))
def adapt_learning_rate(model: LogDensity, loc: Array, key: Array, learning_rates: Array, family: Family,
                        options: Options, adapt_iter: int, num_eval_draws: int):
    """Stan-style step-size search: the ELBO after `adapt_iter` Adam steps for each rate.

    Every candidate runs from the same state with the same keys, all at once under `jax.vmap`;
    the ELBO of each end point is estimated with the same `num_eval_draws` draws (common random
    numbers, so differences are not noise).

    Returns:
      (initial ELBO, (R,) ELBO per learning rate, (R,) skipped steps per learning rate).
    """
    import optax

    run_key, eval_key = jax.random.split(key)

    def run(lr):
        algorithm = advi(model, family, optimizer=optax.adam(lr), estimator=options.estimator,
                         num_samples=options.num_samples, init_scale=options.init_scale)
        state = algorithm.init(run_key, loc)

        def body(st, i):
            return algorithm.step(jax.random.fold_in(run_key, i), st)[0], None

        state, _ = jax.lax.scan(body, state, jnp.arange(adapt_iter))
        return elbo_estimate(model, family, state.params, eval_key, num_eval_draws), state.num_nonfinite

    start = family.init(run_key, model.dim, loc=loc, scale=options.init_scale, dtype=loc.dtype)
    initial = elbo_estimate(model, family, start, eval_key, num_eval_draws)
    elbos, skipped = jax.vmap(run)(learning_rates)
    return initial, elbos, skipped


from advi_jax.vi._advi_averaged import (AutoStop, advi_averaged, averaged_extras, averaged_params,  # noqa: E402
                                        describe_stop as _describe_averaged, stop_warning as _averaged_warning)
from advi_jax.vi._advi_drift import (DriftStop, advi_drift, describe_drift_stop, drift_extras,  # noqa: E402
                                     drift_stop_warning)


def describe_stop(reason: str, code: int, extras: dict, num_steps: int) -> str:
    """The driver's stop reason in the words of ADVI's stopping rule, where one ran (`AutoStop`'s
    averaged iterates, `advi_jax.vi._advi_averaged`, or `DriftStop`'s decay, `advi_jax.vi._advi_drift`)."""
    if "drift_stop_drift" in extras:
        return describe_drift_stop(reason, code, extras, num_steps)
    return _describe_averaged(reason, code, extras, num_steps)


def stop_warning(code: int, extras: dict, num_steps: int) -> str | None:
    """What a user must be told about ADVI's own stop, or None (see `describe_stop`).

    Example:
      >>> stop_warning(4, {"auto_stop_mcse": 0.01, "auto_stop_halvings": 1, "auto_stop_change": 0.02}, 100) is None
      True
    """
    if "drift_stop_drift" in extras:
        return drift_stop_warning(code, extras, num_steps)
    return _averaged_warning(code, extras, num_steps)
