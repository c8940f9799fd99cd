"""Many independent ADVI fits in one compiled call: B datasets, or B seeds of one model.

`fit_many` runs a method's step (ADVI by default) under `jax.vmap` in the one driver
(`advi_jax.run.driver`): one jitted, masked `lax.while_loop`: the loop runs while any fit is still active, and a fit that has reached
`num_steps`, converged (Stan's relative-ELBO rule, `tol_rel_obj`) or stopped on too many
non-finite steps keeps its state unchanged from then on (`jnp.where` on a per-fit mask). The
loop runs in chunks of `chunk_size` steps whose bounds are traced, so a second call with the same
shapes and configuration compiles nothing.

Two ways to batch:

* **B datasets of the same shape**: a `Model` whose data leaves carry a leading batch axis B, made
  by `stack_models([model_1, ..., model_B])` (same log joint and supports, data of equal shapes)
  or directly as `aj.Model(log_joint, support, data=stacked_data)`, and passed with
  `batched=True` (a list of models is stacked for you). `log_joint(params, data)` still sees
  one dataset: the batch axis is mapped away.
* **B seeds / restarts of one model**: `num_fits=B`; every fit gets its own key
  (`fold_in(key, i)`) and, with `init` of shape (B, K), its own starting point.

Fits start at zero in R^K (or at `init`), as `aj.fit(..., init=None)` does: the Laplace start
that `aj.fit` uses by default for small K is not batched here, so for ill-conditioned posteriors
pass a good `init` or a smaller `learning_rate`. Fit i then equals
`aj.fit(model_i, key=fold_in(key, i), init=None)` step for step.

Example:
  >>> import jax, jax.numpy as jnp, numpy as np, advi_jax as aj
  >>> def log_joint(params, y):
  ...     return -0.5 * jnp.sum(params["mu"] ** 2) - 0.5 * jnp.sum((y - params["mu"]) ** 2)
  >>> ys = [jnp.asarray(np.full(100, float(i))) for i in (1, 2, 3)]
  >>> models = [aj.Model(log_joint, {"mu": aj.real()}, data=y) for y in ys]
  >>> many = aj.fit_many(models, key=jax.random.key(0), num_steps=2000)
  >>> len(many), many.num_steps.tolist()
  (3, [2000, 2000, 2000])
  >>> [round(float(r.mean()["mu"]), 1) for r in many.results]  # exact: 100 y / 101
  [1.0, 2.0, 3.0]
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from advi_jax import blas_threads, checks, gc_pause
from advi_jax._types import Array, check_positive_int, common_leading_size
from advi_jax.base import Family
from advi_jax.flatten import Model
from advi_jax.fit_diagnostics import widen_many
from advi_jax.result import ManyResult, diagnose
from advi_jax.run import driver, precision
from advi_jax.run.single import loop_compile, method_options, resolve_method, run_diagnostics
from advi_jax.vi import advi as _advi

if TYPE_CHECKING:  # optax is imported where it is used (`import advi_jax` does not load it)
    import optax

__all__ = ["fit_many", "stack_models"]


def _support_key(model: Model) -> list:
    return [(n, s.name, s.shape, s.unconstrained_size) for n, s in model.support.items()]


def stack_models(models: Sequence[Model]) -> Model:
    """Stack B models that differ only in their data into one Model with batched data.

    Args:
      models: B >= 1 `Model`s with the same `log_joint` (the same function object, or log joints that
        compare equal, as `from_numpyro`'s of one model function and static arguments do), the same
        supports (names, kinds and shapes; the first model's support objects are kept), and data pytrees of identical structure, shapes and dtypes.

    Returns:
      A `Model` whose data leaves have shape (B, ...) (leaf i of model b at index b), of the models'
      own class when their pytree metadata agree (B ready GLMs stack into a ready GLM, so
      `method="glm_exact"` fits them), else a plain `Model`; fit it with
      `fit_many(stacked, key=..., batched=True)` or map over it with `jax.vmap`.

    Raises:
      ValueError, TypeError: models that cannot be stacked, named by index.
    """
    models = list(models)
    if not models:
        raise ValueError("models must be a non-empty list of aj.Model")
    if all(isinstance(m, Model) and isinstance(m.data, dict) for m in models):
        # negative-binomial GLMs: their distinct-count tables (`glm_more.distinct_counts`) padded to one length
        from advi_jax.models.glm_more import pad_distinct

        datas = pad_distinct([m.data for m in models])
        models = [m if d is m.data else type(m).tree_unflatten(m.tree_flatten()[1], (d,))
                  for m, d in zip(models, datas)]
    first = models[0]
    for i, m in enumerate(models):
        if not isinstance(m, Model):
            raise TypeError(f"models[{i}] must be an aj.Model, got {type(m).__name__}")
        if m.data is None:
            raise ValueError(f"models[{i}] has no data; stack_models stacks the data of models built with data=")
        if m.log_joint != first.log_joint or _support_key(m) != _support_key(first):  # a function: `is not`
            raise ValueError(f"models[{i}] has a different log_joint or support than models[0]; only the data "
                             "may differ (build every model from the same function and support dict)")
        if jax.tree_util.tree_structure(m.data) != jax.tree_util.tree_structure(first.data):
            raise ValueError(f"models[{i}].data has a different pytree structure than models[0].data")
        shapes = [(np.shape(x), jnp.result_type(x)) for x in jax.tree_util.tree_leaves(m.data)]
        first_shapes = [(np.shape(x), jnp.result_type(x)) for x in jax.tree_util.tree_leaves(first.data)]
        if shapes != first_shapes:
            raise ValueError(f"models[{i}].data leaves have shapes/dtypes {shapes}, models[0] has {first_shapes}; "
                             "pad or bucket datasets to equal shapes to fit them together")
    def stack(*xs):
        return jnp.stack([jnp.asarray(x) for x in xs])

    if all(jax.tree_util.tree_structure(m) == jax.tree_util.tree_structure(first) for m in models):
        return jax.tree_util.tree_map(stack, *models)  # keeps the class (a ready GLM stays one)
    return Model(first.log_joint, first.support, data=jax.tree_util.tree_map(stack, *[m.data for m in models]))


def _batch_size_of(model: Model) -> int:
    return common_leading_size(model.data, "batched=True (the Model's data carry a leading batch axis)")


def _unbatch(model: Model, i: int) -> Model:
    return jax.tree_util.tree_map(lambda x: x[i], model)


@jax.jit
def _split_keys(key: Array, indices: Array) -> tuple[Array, Array]:
    """Fit i: `split(fold_in(key, i))` into its init and run keys, in one compiled call."""
    return jax.vmap(lambda i: tuple(jax.random.split(jax.random.fold_in(key, i))))(indices)


@functools.partial(jax.jit, static_argnames=("batched",))
def _log_density_many(model: Model, locs: Array, batched: bool) -> Array:
    """Every fit's log density at its initial point, in one program compiled once per model structure
    (a `jax.jit` of a fresh `jax.vmap` each call would compile again on every call)."""
    return jax.vmap(checks.log_density_at, in_axes=(0 if batched else None, 0))(model, locs)


def _disagreement(family: Family, params) -> float:
    means = np.asarray(jax.vmap(family.mean)(params))
    sds = np.sqrt(np.mean(np.asarray(jax.vmap(family.variance)(params)), axis=0))
    if means.shape[0] < 2:
        return float("nan")
    spread = np.max(np.abs(means[:, None, :] - means[None, :, :]), axis=(0, 1))
    return float(np.max(spread / np.maximum(sds, np.finfo(float).tiny)))


def _initial_locs(model: Model, init: Any, num_fits: int, batched: bool, dtype) -> Array:
    dim = model.dim
    if init is None:
        return jnp.zeros((num_fits, dim), dtype)
    if isinstance(init, dict):
        if batched:
            raise ValueError("init as a dict of constrained values is ambiguous for batched data; pass a (K,) or "
                             "(B, K) unconstrained array (model.to_unconstrained gives one)")
        loc = jnp.asarray(model.to_unconstrained(init), dtype)
        return jnp.broadcast_to(loc, (num_fits, dim))
    loc = jnp.asarray(init, dtype)
    if loc.shape == (dim,):
        return jnp.broadcast_to(loc, (num_fits, dim))
    if loc.shape == (num_fits, dim):
        return loc
    raise ValueError(f"init must be None, a dict, a ({dim},) vector or a ({num_fits}, {dim}) array, got shape "
                     f"{loc.shape}")


@blas_threads.during
@gc_pause.during
@precision.during
def fit_many(model: Model | Sequence[Model], *, key: Array, num_fits: int | None = None, batched: bool = False,
             family: str | Family = "meanfield", num_steps: int = 10_000, num_samples: int = 1,
             optimizer: optax.GradientTransformation | None = None, estimator: str | Callable = "reparam",
             learning_rate: float | None = None, init: Any = None, init_scale: float = 0.1,
             tol_rel_obj: float | None = None, eval_every: int = 100, window: int = 10,
             max_consecutive_nonfinite: int = 50, chunk_size: int = 1000, check: bool = True,
             method: str = "advi", progress: bool = False, diagnostics: bool = True,
             num_diagnostic_draws: int = 4096, warn: bool = False, options: Any = None,
             callback: Callable | None = None) -> ManyResult:
    """Fit B independent ADVI problems in one compiled, vmapped, masked loop.

    Every fit follows exactly the algorithm of `aj.fit` (same step, same stopping rule, same
    non-finite handling) with its own key; fits stop independently, and the loop ends when the
    last one does.

    Args:
      model: one `Model` (with `num_fits` for restarts, or `batched=True` when its data leaves
        have a leading batch axis B), or a list of B Models that differ only in their data
        (stacked with `stack_models`).
      key: PRNG key; fit i uses `fold_in(key, i)`.
      num_fits: B for restarts of one unbatched model; with batched data it may be omitted or
        must equal the batch size.
      batched: the model's data leaves carry a leading axis B, one dataset per fit.
      family, num_steps, num_samples, optimizer, estimator, learning_rate, init_scale,
        tol_rel_obj, eval_every, window, max_consecutive_nonfinite: as in `aj.fit`; every fit
        shares them (the optimizer's state is per fit).
      init: None (zeros), a dict of constrained values (unbatched only), a (K,) vector for every
        fit or a (B, K) array of per-fit starting points in R^K.
      chunk_size: steps per compiled call.
      check: evaluate every fit's log density at its initial point and raise if one is not finite.
      method: "auto" or a registered method that the driver can vmap (ADVI by default).
      progress: show a progress bar (steps of the furthest fit).
      diagnostics: compute per-fit PSIS diagnostics (`num_diagnostic_draws` draws each, one
        vmapped call); `many[i].khat`, `many.summary()`. A fit that would be silent but reads grey
        gets the widened moment check, as a single fit does (`fit_diagnostics.widen_many`: J x
        `num_diagnostic_draws` more log-density evaluations, counted in its `num_logp_evals`).
      warn: warn when any fit's diagnostics say it is unreliable.
      options: settings of a method other than ADVI.
      callback: as in `aj.fit`.

    Returns:
      A `ManyResult` (index it for per-fit `Result`s).

    Raises:
      TypeError, ValueError: bad arguments, named, before anything is compiled.
    """
    began = time.perf_counter()
    if isinstance(model, (list, tuple)):
        model = stack_models(model)
        batched = True
    if not isinstance(model, Model):
        raise TypeError(f"model must be an aj.Model or a list of them, got {type(model).__name__}")
    key, family_obj, estimator, num_samples, tol_rel_obj, callback = checks.common_args(
        key, family, estimator, num_samples, tol_rel_obj, callback, check=check, progress=progress,
        diagnostics=diagnostics, warn=warn)
    if batched:
        size = _batch_size_of(model)
        if num_fits is not None and check_positive_int(num_fits, "num_fits") != size:
            raise ValueError(f"num_fits={num_fits} but the batched data have {size} datasets; omit num_fits")
        num_fits = size
    elif num_fits is None:
        raise ValueError("pass num_fits=B for B restarts of one model, or batched=True (or a list of models) "
                         "for one fit per dataset")
    num_fits = check_positive_int(num_fits, "num_fits")
    num_steps = check_positive_int(num_steps, "num_steps")
    eval_every, window, chunk_size, max_consecutive_nonfinite = checks.check_loop_args(
        eval_every, window, chunk_size, max_consecutive_nonfinite)
    init_scale = checks.check_number(init_scale, "init_scale")
    num_diagnostic_draws = check_positive_int(num_diagnostic_draws, "num_diagnostic_draws", 100)
    module, method_name, _ = resolve_method(method, model, family_obj, estimator=estimator,
                                            num_samples=num_samples, optimizer=optimizer)
    if module is _advi:
        opts = _advi.Options(checks.resolve_optimizer(optimizer, learning_rate, num_steps), estimator, num_samples,
                             init_scale)
    else:
        opts = method_options(module, options)

    dtype = jnp.result_type(float)
    locs = _initial_locs(model, init, num_fits, batched, dtype)
    if check:
        checks.check_log_joint_shape(_unbatch(model, 0) if batched else model, dtype)
        values = np.asarray(_log_density_many(model, locs, batched))
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise ValueError(f"the log density is not finite at the initial point of fits {bad[:10].tolist()}"
                             f"{' ...' if bad.size > 10 else ''}; pass init= points where it is, or check the data")

    # the loop's XLA options by its evaluations, all fits' (a batched model's arrays hold every dataset already)
    mode = loop_compile(module, model, family_obj, opts, num_steps, num_samples, can_stop=bool(tol_rel_obj),
                        num_fits=num_fits, batched=batched)
    cfg = driver.Settings(module, family_obj, opts, chunk_size, eval_every, window, float(tol_rel_obj or 0.0),
                          max_consecutive_nonfinite, num_fits=num_fits, model_batched=batched, compile=mode)
    try:
        init_keys, run_keys = _split_keys(key, jnp.arange(num_fits))
        loop = driver.init_loop(model, init_keys, locs, cfg)
    except KeyboardInterrupt:
        raise KeyboardInterrupt("aj.fit_many was interrupted during start-up, before any fit state existed: "
                                "nothing to return") from None
    out = driver.drive(model, loop, run_keys, cfg, num_steps, progress=progress, desc=f"{num_fits} fits",
                       callback=callback)
    params = jax.vmap(lambda m, s: module.build(m, family_obj, opts).params(s),
                      in_axes=(0 if batched else None, 0))(model, out.loop.state)
    steps = np.asarray(out.loop.step)
    codes = np.asarray(out.stop_codes)
    nonfinite = np.asarray(out.loop.num_nonfinite)
    diag, note, diag_seconds = None, "not computed (fit_many(..., diagnostics=False))", 0.0
    widened = np.zeros(num_fits, np.int64)  # the widened moment check's draws per fit (`widen_many`)
    if diagnostics:
        diag_keys = jax.random.split(jax.random.fold_in(key, 1), num_fits)
        both, note, diag_seconds = run_diagnostics(
            lambda: widen_many(model, family_obj, params, diag_keys, diagnose(
                model, family_obj, params, diag_keys, num_diagnostic_draws, num_fits=num_fits, batched=batched),
                num_diagnostic_draws, batched), bool(np.any(codes < 0)))
        if both is not None:
            diag, widened = both
    elbo = out.elbo[:, : int(steps.max())] if out.elbo.shape[1] else out.elbo
    many = ManyResult(
        model=model, family=family_obj, params=params, elbo=elbo, num_steps=steps, num_nonfinite=nonfinite,
        stop_codes=codes,
        stop_reasons=[driver.stop_reason(int(c), int(n), max_consecutive_nonfinite) for c, n in zip(codes, nonfinite)],
        converged=np.isin(codes, (1, 2, 4)), batched=batched, seconds=time.perf_counter() - began,
        estimator=checks.estimator_name(estimator), num_samples=num_samples,
        num_grad_evals=np.asarray(out.loop.num_grad_evals), num_logp_evals=np.asarray(out.loop.num_logp_evals) + widened,
        diagnostics=diag, diagnostics_note=note or ("" if diag is not None else "not computed (fit_many(..., diagnostics=False))"),
        method=method_name, compile_seconds=out.compile_seconds, run_seconds=out.run_seconds,
        diagnostics_seconds=diag_seconds, disagreement=float("nan") if batched else _disagreement(family_obj, params))
    if warn and diag is not None:
        from advi_jax.run.single import warn_diagnostics

        for i in range(num_fits):
            warn_diagnostics(many[i], True)
    return many
