"""Gradient variance of the ADVI estimators (`advi_jax.estimators.ESTIMATORS`): at fixed
variational parameters (`gradient_variance`) and along a fit (`track_gradient_variance`).

Estimator names and meanings are those of `advi_jax.estimators.ESTIMATORS` (no second list).
Every estimator in one call uses the same `num_samples`, so their variances compare at equal
sample counts. `num_samples=None` (the default) takes the smallest count that every requested
estimator accepts: 1 for the pathwise and plain score estimators, 2 as soon as the list holds
"score_baseline" (its leave-one-out baseline needs a second draw), so the default call with all
five estimators works. An explicit count below an estimator's minimum is a ValueError naming
both.

Example:
  >>> import jax, jax.numpy as jnp, advi_jax as aj
  >>> model = aj.Model(lambda p: -0.5 * jnp.sum(p["x"] ** 2), {"x": aj.real((2,))})
  >>> params = aj.MeanFieldGaussian().init(jax.random.key(0), model.dim)
  >>> stats = aj.gradient_variance(model, "meanfield", params, jax.random.key(1), num_draws=200, time_repeats=0)
  >>> bool(stats["score"].variance_trace > stats["reparam"].variance_trace)
  True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from advi_jax import compile_options
from advi_jax._types import Array, PyTree, check_positive_int
from advi_jax.diagnostics import check_key
from advi_jax.estimators import ESTIMATORS, get_estimator, min_num_samples
from advi_jax.families import Family, get_family
from advi_jax.checks import resolve_optimizer
from advi_jax.vi.advi import advi
from advi_jax.flatten import Model
from advi_jax.gradient_variance.instruments import (
    CONFIDENCE,
    GradientStats,
    _path_head,
    check_confidence,
    chunking,
    flat_gradient,
    gradient_stats_many,
    group_masks,
    grouped_moments,
    jackknife_interval,
    num_groups_for,
    pooled_and_left_out,
    student_t_quantile,
)

if TYPE_CHECKING:  # optax is imported where it is used (`import advi_jax` does not load it)
    import optax

__all__ = ["DEFAULT_ESTIMATORS", "VarianceTrace", "family_groups", "gradient_variance", "resolve_num_samples",
           "track_gradient_variance"]

DEFAULT_ESTIMATORS: tuple[str, ...] = tuple(ESTIMATORS)
"""Every estimator of `advi_jax.estimators.ESTIMATORS`, in its order."""


class VarianceTrace(NamedTuple):
    """Gradient variances recorded along a fit (see `track_gradient_variance`).

    Attributes:
      steps: (T,) int, the optimisation step of each record (0 = initial q).
      variance_trace: dict estimator name -> (T,) trace of the gradient covariance.
      loc_variance: dict estimator name -> (T,) summed variance of the location coordinates.
      scale_variance: dict estimator name -> (T,) summed variance of the scale coordinates.
      mean_norm: dict estimator name -> (T,) Euclidean norm of the mean gradient.
      elbo: (num_steps,) the fit's per-step ELBO estimates.
      params: the variational parameters at the end of the fit.
      variance_trace_interval: dict estimator name -> (2, T) confidence limits of `variance_trace`
        (delete-one-group jackknife on the log scale, as in `GradientStats`).
      confidence: the intervals' nominal coverage.
    """

    steps: Array
    variance_trace: dict[str, Array]
    loc_variance: dict[str, Array]
    scale_variance: dict[str, Array]
    mean_norm: dict[str, Array]
    elbo: Array
    params: PyTree
    variance_trace_interval: dict[str, Array]
    confidence: float


def family_groups(path) -> str:
    """Group of a Gaussian family's parameter leaf: "loc" for the location, "scale" otherwise."""
    return "loc" if path and _path_head(path) == "loc" else "scale"


# ----------------------------------------------------------------------------------------------
# Checks


def _estimator_names(estimators: str | Sequence[str | Callable]) -> dict[str, Callable]:
    if isinstance(estimators, str) or callable(estimators):
        estimators = (estimators,)
    try:
        estimators = tuple(estimators)
    except TypeError:
        raise TypeError(f"estimators must be a name or a sequence of names from {sorted(ESTIMATORS)}, "
                        f"got {estimators!r}") from None
    if not estimators:
        raise ValueError(f"estimators must name at least one of {sorted(ESTIMATORS)}")
    out: dict[str, Callable] = {}
    for item in estimators:
        if isinstance(item, str):
            if item not in ESTIMATORS:
                raise ValueError(f"unknown estimator {item!r}; choose from {sorted(ESTIMATORS)}")
            name = item
        elif callable(item):
            name = getattr(item, "__name__", "custom")
        else:
            raise TypeError(f"each estimator must be a name from {sorted(ESTIMATORS)} or a callable, got {item!r}")
        if name in out:
            raise ValueError(f"estimator {name!r} is listed twice")
        out[name] = get_estimator(item)
    return out


def resolve_num_samples(num_samples: int | None, names: Sequence[str], argument: str = "num_samples") -> int:
    """The Monte Carlo sample count shared by `names`: None -> the largest of their minimums.

    Args:
      num_samples: an int >= 1, or None for the smallest count every estimator accepts.
      names: estimator names (custom estimators not in `ESTIMATORS` count as minimum 1).
      argument: the argument's name in error messages.

    Returns:
      The count.

    Raises:
      ValueError: a count below an estimator's minimum, naming the estimator and both numbers.
    """
    need = max([min_num_samples(n) for n in names if n in ESTIMATORS] + [1])
    if num_samples is None:
        return need
    num_samples = check_positive_int(num_samples, argument)
    for name in names:
        if name in ESTIMATORS and num_samples < min_num_samples(name):
            raise ValueError(f"estimator {name!r} needs {argument} >= {min_num_samples(name)}, got {num_samples}; "
                             f"pass {argument}={min_num_samples(name)} (or None) or drop {name!r}")
    return num_samples


def _check_model(model: Any) -> Model:
    if not isinstance(model, Model):
        raise TypeError(f"model must be an advi_jax Model (aj.Model or aj.from_numpyro), got {type(model).__name__}")
    from advi_jax.checks import check_log_joint_shape

    check_log_joint_shape(model, jnp.result_type(float))  # a scalar, every parameter declared (traced, not run)
    return model


def _check_params(family: Family, params: PyTree, dim: int) -> None:
    reference = jax.eval_shape(lambda: family.init(jax.random.key(0), dim))
    ref_def, got_def = jax.tree_util.tree_structure(reference), jax.tree_util.tree_structure(params)
    if ref_def != got_def:
        raise ValueError(f"params do not match family {family.name!r}: expected {ref_def}, got {got_def} "
                         f"(build them with family.init(key, model.dim) or take result.params from a fit)")
    for ref, leaf in zip(jax.tree_util.tree_leaves(reference), jax.tree_util.tree_leaves(params)):
        if tuple(np.shape(leaf)) != tuple(ref.shape):
            raise ValueError(f"params do not match family {family.name!r} for a model of dim {dim}: a leaf has "
                             f"shape {np.shape(leaf)}, expected {ref.shape}")


def _estimator_index(name: str) -> int:
    """A stable per-estimator key offset (its position in ESTIMATORS, or a hash of a custom name)."""
    names = list(ESTIMATORS)
    return names.index(name) if name in names else 1000 + sum(map(ord, name))


def _surrogate(estimator_fn: Callable, family: Family, model: Model, num_samples: int) -> Callable:
    def surrogate(p, k):
        return estimator_fn(family, model.log_density, p, k, num_samples)[0]

    return surrogate


# ----------------------------------------------------------------------------------------------
# At fixed parameters


def gradient_variance(model: Model, family: str | Family, params: PyTree, key: Array,
                      estimators: str | Sequence[str | Callable] = DEFAULT_ESTIMATORS, num_draws: int = 1000,
                      num_samples: int | None = None, *, chunk_size: int | None = None,
                      time_repeats: int = 20, confidence: float = CONFIDENCE) -> dict[str, GradientStats]:
    """Variance, SNR and cost of each ELBO gradient estimator at fixed variational parameters.

    For each estimator `e` (see `advi_jax.estimators`), `num_draws` independent draws of
    `grad_lambda surrogate_e(lambda; eps)` with `num_samples` Monte Carlo samples each, summarised
    by `gradient_stats` (with confidence intervals). The estimators use independent keys
    (`fold_in(key, index of e in ESTIMATORS)`). Coordinates are grouped as "loc" (the family's
    `loc`) and "scale" (every other leaf).

    Args:
      model: an `aj.Model` (log density on R^K).
      family: "meanfield", "fullrank", or a `Family`.
      params: the family's parameters for this model (e.g. `result.params`).
      key: a PRNG key.
      estimators: names from `ESTIMATORS` (or estimator callables); default all five.
      num_draws: independent gradient draws per estimator (>= 2).
      num_samples: Monte Carlo samples inside each gradient, shared by all estimators; None
        (default) takes the smallest count all of them accept (2 with "score_baseline", else 1).
      chunk_size: draws per vmapped chunk (default: automatic).
      time_repeats: timed calls per estimator for `seconds_per_gradient` (0: skip timing).
      confidence: coverage of the intervals.

    Returns:
      dict estimator name -> `GradientStats`, in the order given.

    Raises:
      TypeError, ValueError: an unknown estimator (the valid ones are listed), num_draws < 2,
        num_samples below an estimator's minimum (both named), params that do not fit.

    Example:
      >>> import jax, jax.numpy as jnp, advi_jax as aj
      >>> model = aj.Model(lambda p: -0.5 * jnp.sum(p["x"] ** 2), {"x": aj.real((3,))})
      >>> params = aj.FullRankGaussian().init(jax.random.key(0), 3, scale=1.0)
      >>> stats = aj.gradient_variance(model, "fullrank", params, jax.random.key(1), ("stl",), 100, time_repeats=0)
      >>> float(stats["stl"].variance_trace) < 1e-8     # q equals the target: STL is exact
      True
    """
    model = _check_model(model)
    family = get_family(family)
    key = check_key(key)
    named = _estimator_names(estimators)
    num_samples = resolve_num_samples(num_samples, list(named))
    num_draws = check_positive_int(num_draws, "num_draws", minimum=2)
    confidence = check_confidence(confidence)
    _check_params(family, params, model.dim)
    jobs = [(_surrogate(fn, family, model, num_samples), params, jax.random.fold_in(key, _estimator_index(name)))
            for name, fn in named.items()]
    stats = gradient_stats_many(jobs, num_draws=num_draws, groups=family_groups, chunk_size=chunk_size,
                                time_repeats=time_repeats, confidence=confidence)
    return dict(zip(named, stats))


# ----------------------------------------------------------------------------------------------
# Along a fit


def track_gradient_variance(model: Model, family: str | Family, key: Array, num_steps: int, *,
                            every: int | None = None,
                            estimators: str | Sequence[str | Callable] = DEFAULT_ESTIMATORS,
                            num_draws: int = 200, num_samples: int | None = None, fit_estimator: str = "reparam",
                            fit_num_samples: int | None = None,
                            optimizer: optax.GradientTransformation | None = None,
                            learning_rate: float | None = None, init_scale: float = 0.1,
                            loc: Any = None, chunk_size: int | None = None,
                            confidence: float = CONFIDENCE) -> VarianceTrace:
    """Run an ADVI fit and record each estimator's gradient variance every `every` steps.

    The fit is `advi(model, family, estimator=fit_estimator, num_samples=fit_num_samples)`'s pure
    step inside one jitted `lax.scan`; every `every` steps (and at the end) each estimator in
    `estimators` is measured at the current parameters from `num_draws` extra gradient draws
    (keys independent of the fit's; the measurements do not influence the fit). On a Gaussian
    target with a full-rank family, STL's variance falls toward zero as q approaches the
    posterior; the reparameterisation estimator's does not.

    Args:
      model: an `aj.Model`.
      family: "meanfield", "fullrank", or a `Family`.
      key: a PRNG key.
      num_steps: optimisation steps (>= 1).
      every: steps between records (default: num_steps // 20, at least 1).
      estimators: names from `ESTIMATORS` to measure (default all five).
      num_draws: gradient draws per estimator per record (>= 2).
      num_samples: Monte Carlo samples inside each measured gradient (None: as in `gradient_variance`).
      fit_estimator: the estimator that drives the fit.
      fit_num_samples: Monte Carlo samples per fit step (None: the fit estimator's minimum).
      optimizer: an optax optimizer (default: `fit`'s default at `learning_rate`).
      learning_rate: Adam's step size when `optimizer` is None.
      init_scale: initial scale of q.
      loc: initial location of q, a (K,) vector (default zeros).
      chunk_size: draws per vmapped chunk.
      confidence: coverage of `variance_trace_interval`.

    Returns:
      A `VarianceTrace` with T = num_steps // every + 1 records at steps
      0, every, ..., (T - 2) * every, num_steps.

    Raises:
      TypeError, ValueError: as `gradient_variance`, plus every > num_steps.

    Example:
      >>> import jax, jax.numpy as jnp, advi_jax as aj
      >>> model = aj.Model(lambda p: -0.5 * jnp.sum(p["x"] ** 2), {"x": aj.real((2,))})
      >>> trace = aj.track_gradient_variance(model, "fullrank", jax.random.key(0), 100, every=50,
      ...                                    estimators=("stl",), num_draws=10)
      >>> trace.steps.tolist()
      [0, 50, 100]
    """
    model = _check_model(model)
    family = get_family(family)
    key = check_key(key)
    num_steps = check_positive_int(num_steps, "num_steps")
    every = max(1, num_steps // 20) if every is None else check_positive_int(every, "every")
    if every > num_steps:
        raise ValueError(f"every must be <= num_steps ({num_steps}), got {every}")
    named = _estimator_names(estimators)
    num_samples = resolve_num_samples(num_samples, list(named))
    num_draws = check_positive_int(num_draws, "num_draws", minimum=2)
    confidence = check_confidence(confidence)
    if isinstance(fit_estimator, str) and fit_estimator not in ESTIMATORS:
        raise ValueError(f"unknown fit_estimator {fit_estimator!r}; choose from {sorted(ESTIMATORS)}")
    fit_num_samples = resolve_num_samples(fit_num_samples, [fit_estimator] if isinstance(fit_estimator, str) else [],
                                          "fit_num_samples")
    optimizer = resolve_optimizer(optimizer, learning_rate, num_steps)

    algorithm = advi(model, family, optimizer=optimizer, estimator=fit_estimator, num_samples=fit_num_samples,
                     init_scale=init_scale)
    fit_key, init_key, measure_key = jax.random.split(key, 3)
    state = algorithm.init(init_key, loc)
    flat, _ = ravel_pytree(state.params)
    masks = group_masks(state.params, family_groups)
    loc_mask = jnp.asarray(masks.get("loc", np.zeros(flat.shape, bool)))
    size, num_chunks = chunking(num_draws, flat.shape[0], chunk_size)
    num_groups = num_groups_for(num_draws)
    t = student_t_quantile(0.5 + confidence / 2, max(num_groups - 1, 1))
    grads = {name: flat_gradient(_surrogate(fn, family, model, num_samples)) for name, fn in named.items()}
    num_blocks = num_steps // every
    # Record r is taken at step r * every (r < num_blocks) and the last one at num_steps.
    record_steps = jnp.concatenate([jnp.arange(num_blocks) * every, jnp.array([num_steps])]).astype(jnp.int32)

    def measure(params, record):
        out = {}
        k_record = jax.random.fold_in(measure_key, record)
        for name, grad_fn in grads.items():
            k = jax.random.fold_in(k_record, _estimator_index(name))
            g = grouped_moments(grad_fn, params, k, num_draws, size, num_chunks, num_groups, flat.dtype)
            (n, mean, m2), (n_loo, _, m2_loo) = pooled_and_left_out(g)
            variance = m2 / (n - 1)
            var_loo = m2_loo / jnp.maximum(n_loo - 1, 1.0)[:, None]
            trace = jnp.sum(variance)
            lo, hi, _ = jackknife_interval(trace, jnp.sum(var_loo, axis=1), t, log=True)
            out[name] = (trace, jnp.sum(jnp.where(loc_mask, variance, 0.0)),
                         jnp.sum(jnp.where(loc_mask, 0.0, variance)), jnp.sqrt(jnp.sum(mean ** 2)),
                         jnp.stack([lo, hi]))
        return out

    def run_until(state, elbo, stop):
        def body(carry):
            st, trace = carry
            st_new, info = algorithm.step(jax.random.fold_in(fit_key, st.step), st)
            return st_new, trace.at[st.step].set(info.elbo)

        return jax.lax.while_loop(lambda carry: carry[0].step < stop, body, (state, elbo))

    def run(state):
        def record(carry, r):
            st, elbo = carry
            measured = measure(st.params, r)
            stop = record_steps[jnp.minimum(r + 1, num_blocks)]
            return run_until(st, elbo, stop), measured

        elbo = jnp.full((num_steps,), jnp.nan, flat.dtype)
        (state, elbo), measured = jax.lax.scan(record, (state, elbo), jnp.arange(num_blocks + 1))
        return state, measured, elbo

    # One program: the fit's steps and every record's gradient draws. Its time is not reported, so it
    # is compiled by the library's arithmetic rule (fast where the saving outweighs the slower code).
    evals = num_steps * fit_num_samples + (num_blocks + 1) * len(named) * num_draws * num_samples
    state, measured, elbo = compile_options.compile_by_cost(jax.jit(run), (state,), model, evals, trips=every)(state)
    pick = lambda i: {name: measured[name][i] for name in named}  # noqa: E731  (keep the caller's order)
    intervals = {name: jnp.moveaxis(measured[name][4], 0, 1) for name in named}  # (T, 2) -> (2, T)
    return VarianceTrace(record_steps, pick(0), pick(1), pick(2), pick(3), elbo, state.params, intervals,
                         confidence)
