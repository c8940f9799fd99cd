"""Many independent ADVI fits in one compiled call: B datasets, or B seeds of one model.

`fit_many` runs the ADVI step of `advi_jax.fit.advi` under `jax.vmap` inside one jitted, masked
`lax.while_loop`: the loop runs while any fit is still active, and a fit that has reached
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

import dataclasses
import functools
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from advi_jax._types import Array, PyTree, check_positive_int, common_leading_size
from advi_jax.families import Family, get_family
from advi_jax.fit import (
    FitState,
    Result,
    _Config,
    _Convergence,
    _check_key,
    _check_number,
    _init_convergence,
    _STOP_REASONS,
    _update_convergence,
    advi,
    check_estimator,
    check_loop_args,
    resolve_optimizer,
)
from advi_jax.flatten import Model

__all__ = ["ManyResult", "fit_many", "stack_models"]


def _support_key(model: Model) -> list:
    return [(n, s.name, s.shape, s.unconstrained_size) for n, s in model.support.items()]


def stack_models(models: Sequence[Model]) -> Model:
    """Stack B models that differ only in their data into one Model with batched data.

    Args:
      models: B >= 1 `Model`s with the same `log_joint` (the same function object), the same
        supports (names, kinds and shapes; the first model's support objects are kept), and data pytrees of identical structure, shapes and dtypes.

    Returns:
      A `Model` whose data leaves have shape (B, ...) (leaf i of model b at index b); fit it with
      `fit_many(stacked, key=..., batched=True)` or map over it with `jax.vmap`.

    Raises:
      ValueError, TypeError: models that cannot be stacked, named by index.
    """
    models = list(models)
    if not models:
        raise ValueError("models must be a non-empty list of aj.Model")
    first = models[0]
    for i, m in enumerate(models):
        if not isinstance(m, Model):
            raise TypeError(f"models[{i}] must be an aj.Model, got {type(m).__name__}")
        if m.data is None:
            raise ValueError(f"models[{i}] has no data; stack_models stacks the data of models built with data=")
        if m.log_joint is not first.log_joint or _support_key(m) != _support_key(first):
            raise ValueError(f"models[{i}] has a different log_joint or support than models[0]; only the data "
                             "may differ (build every model from the same function and support dict)")
        if jax.tree_util.tree_structure(m.data) != jax.tree_util.tree_structure(first.data):
            raise ValueError(f"models[{i}].data has a different pytree structure than models[0].data")
        shapes = [(np.shape(x), jnp.result_type(x)) for x in jax.tree_util.tree_leaves(m.data)]
        first_shapes = [(np.shape(x), jnp.result_type(x)) for x in jax.tree_util.tree_leaves(first.data)]
        if shapes != first_shapes:
            raise ValueError(f"models[{i}].data leaves have shapes/dtypes {shapes}, models[0] has {first_shapes}; "
                             "pad or bucket datasets to equal shapes to fit them together")
    data = jax.tree_util.tree_map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *[m.data for m in models])
    return Model(first.log_joint, first.support, data=data)


def _batch_size_of(model: Model) -> int:
    return common_leading_size(model.data, "batched=True (the Model's data carry a leading batch axis)")


def _unbatch(model: Model, i: int) -> Model:
    return jax.tree_util.tree_map(lambda x: x[i], model)


def _vmapped_step(cfg: _Config, batched: bool):
    def one(model, key, state):
        algorithm = advi(model, cfg.family, optimizer=cfg.optimizer, estimator=cfg.estimator,
                         num_samples=cfg.num_samples, init_scale=cfg.init_scale)
        return algorithm.step(key, state)

    return jax.vmap(one, in_axes=(0 if batched else None, 0, 0))


def _select_batched(mask: Array, new, old):
    def pick(a, b):
        m = jnp.reshape(mask, mask.shape + (1,) * (a.ndim - 1))
        return jnp.where(m, a, b)

    return jax.tree_util.tree_map(pick, new, old)


@functools.partial(jax.jit, static_argnames=("cfg", "batched"))
def _run_many_chunk(model: Model, state: FitState, conv: _Convergence, keys: Array, stop: Array,
                    cfg: _Config, batched: bool):
    """Masked steps of B fits from state.step (B,) until each reaches `stop` or its stop flag."""
    step_all = _vmapped_step(cfg, batched)
    update_conv = jax.vmap(functools.partial(_update_convergence, cfg))
    start = state.step
    num_fits = start.shape[0]
    trace = jnp.full((num_fits, cfg.chunk_size), jnp.nan, state.params.loc.dtype)

    def active(st, cv):
        return (st.step < stop) & (cv.stop_code == 0)

    def cond(carry):
        st, cv, _ = carry
        return jnp.any(active(st, cv))

    def body(carry):
        st, cv, tr = carry
        live = active(st, cv)
        step_keys = jax.vmap(jax.random.fold_in)(keys, st.step)
        st_new, info = step_all(model, step_keys, st)
        cv_new = update_conv(cv, st_new, info)
        # A finished fit writes out of bounds (dropped) and keeps its state.
        index = jnp.where(live, st.step - start, cfg.chunk_size)
        tr = tr.at[jnp.arange(num_fits), index].set(info.elbo, mode="drop")
        return _select_batched(live, st_new, st), _select_batched(live, cv_new, cv), tr

    return jax.lax.while_loop(cond, body, (state, conv, trace))


@functools.partial(jax.jit, static_argnames=("cfg",))
def _init_many(key: Array, locs: Array, cfg: _Config) -> tuple[FitState, _Convergence, Array]:
    """Per-fit keys (fit i: fold_in(key, i), split into init and run keys), states and stop rules.

    One compiled call: eager `fold_in`/`split` under `vmap` would each compile on their own.
    """

    def one(i, loc):
        init_key, run_key = jax.random.split(jax.random.fold_in(key, i))
        params = cfg.family.init(init_key, loc.shape[0], loc=loc, scale=cfg.init_scale)
        zero = jnp.zeros((), jnp.int32)
        state = FitState(params, cfg.optimizer.init(params), zero, zero, zero)
        return state, _init_convergence(cfg.window, loc.dtype), run_key

    return jax.vmap(one)(jnp.arange(locs.shape[0]), locs)


@functools.partial(jax.jit, static_argnames=("batched",))
def _log_density_many(model: Model, locs: Array, batched: bool) -> Array:
    return jax.vmap(lambda m, z: m.log_density(z), in_axes=(0 if batched else None, 0))(model, locs)


@dataclasses.dataclass
class ManyResult:
    """The outcome of `fit_many`: B fits with batched parameters and per-fit diagnostics.

    Index it (`many[i]`, a `Result`) or iterate over `many.results`.

    Attributes:
      model: the (batched when `batched`) `Model`.
      family: the variational `Family`.
      params: the variational parameters, every leaf with a leading axis B.
      elbo: (B, max steps run) per-step ELBO estimates, NaN-padded after each fit's last step.
      num_steps: (B,) steps each fit ran.
      num_nonfinite: (B,) steps each fit skipped as non-finite.
      stop_codes: (B,) 0 reached num_steps, 1/2 converged (mean/median rule), 3 non-finite.
      stop_reasons: B strings, in words.
      converged: (B,) whether the relative-ELBO rule stopped the fit.
      batched: whether fit i used dataset i of the model's batched data.
      seconds: wall time of the whole call (compilation included).
    """

    model: Model
    family: Family
    params: PyTree
    elbo: np.ndarray
    num_steps: np.ndarray
    num_nonfinite: np.ndarray
    stop_codes: np.ndarray
    stop_reasons: list[str]
    converged: np.ndarray
    batched: bool
    seconds: float
    estimator: str = "reparam"
    num_samples: int = 1

    def __len__(self) -> int:
        return int(self.num_steps.shape[0])

    def __getitem__(self, i: int) -> Result:
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"index a ManyResult with an int (use .results for all), got {type(i).__name__}")
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"fit index {i} out of range for {n} fits")
        i = int(i) % n
        steps = int(self.num_steps[i])
        return Result(
            model=_unbatch(self.model, i) if self.batched else self.model,
            family=self.family,
            params=jax.tree_util.tree_map(lambda x: x[i], self.params),
            elbo=self.elbo[i, :steps],
            num_steps=steps,
            num_gradient_evals=steps * self.num_samples,
            num_nonfinite=int(self.num_nonfinite[i]),
            converged=bool(self.converged[i]),
            stop_reason=self.stop_reasons[i],
            seconds=self.seconds,
            estimator=self.estimator,
            num_samples=self.num_samples,
        )

    @property
    def results(self) -> list[Result]:
        """One `Result` per fit (`seconds` is the whole call's wall time in each)."""
        return [self[i] for i in range(len(self))]

    def means(self) -> Array:
        """(B, K) means of q in the unconstrained space R^K."""
        return jax.vmap(self.family.mean)(self.params)

    def __repr__(self) -> str:
        return (f"ManyResult(num_fits={len(self)}, family={self.family.name}, dim={self.model.dim}, "
                f"num_steps min/max={int(self.num_steps.min())}/{int(self.num_steps.max())}, "
                f"converged={int(self.converged.sum())}, seconds={self.seconds:.3g})")


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


def fit_many(model: Model | Sequence[Model], *, key: Array, num_fits: int | None = None, batched: bool = False,
             family: str | Family = "meanfield", num_steps: int = 10_000, num_samples: int = 1,
             optimizer: optax.GradientTransformation | None = None, estimator: str | Callable = "reparam",
             learning_rate: float | None = None, init: Any = None, init_scale: float = 0.1,
             tol_rel_obj: float | None = None, eval_every: int = 100, window: int = 10,
             max_consecutive_nonfinite: int = 50, chunk_size: int = 1000, check: bool = True) -> ManyResult:
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

    Returns:
      A `ManyResult` (index it for per-fit `Result`s).

    Raises:
      TypeError, ValueError: bad arguments, named, before anything is compiled.
    """
    if isinstance(model, (list, tuple)):
        model = stack_models(model)
        batched = True
    if not isinstance(model, Model):
        raise TypeError(f"model must be an aj.Model or a list of them, got {type(model).__name__}")
    key = _check_key(key)
    if batched:
        size = _batch_size_of(model)
        if num_fits is not None and check_positive_int(num_fits, "num_fits") != size:
            raise ValueError(f"num_fits={num_fits} but the batched data have {size} datasets; omit num_fits")
        num_fits = size
    elif num_fits is None:
        raise ValueError("pass num_fits=B for B restarts of one model, or batched=True (or a list of models) "
                         "for one fit per dataset")
    num_fits = check_positive_int(num_fits, "num_fits")
    family_obj = get_family(family)
    estimator, num_samples = check_estimator(estimator, num_samples)
    num_steps = check_positive_int(num_steps, "num_steps")
    eval_every, window, chunk_size, max_consecutive_nonfinite = check_loop_args(
        eval_every, window, chunk_size, max_consecutive_nonfinite)
    if tol_rel_obj is not None:
        tol_rel_obj = _check_number(tol_rel_obj, "tol_rel_obj")
    init_scale = _check_number(init_scale, "init_scale")
    optimizer = resolve_optimizer(optimizer, learning_rate, num_steps)

    dtype = jnp.result_type(float)
    locs = _initial_locs(model, init, num_fits, batched, dtype)
    if check:
        values = np.asarray(_log_density_many(model, locs, batched))
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise ValueError(f"the log density is not finite at the initial point of fits {bad[:10].tolist()}"
                             f"{' ...' if bad.size > 10 else ''}; pass init= points where it is, or check the data")

    cfg = _Config(family_obj, optimizer, estimator, num_samples, float(init_scale), chunk_size, eval_every, window,
                  float(tol_rel_obj or 0.0), max_consecutive_nonfinite)
    start_time = time.perf_counter()
    state, conv, run_keys = _init_many(key, locs, cfg)

    traces = []
    done = 0
    while True:
        stop = min(done + chunk_size, num_steps)
        state, conv, trace = _run_many_chunk(model, state, conv, run_keys, jnp.asarray(stop, jnp.int32), cfg,
                                             batched)
        steps = np.asarray(state.step)
        codes = np.asarray(conv.stop_code)
        furthest = int(steps.max())
        traces.append(np.asarray(trace[:, : furthest - done]))
        done = stop
        if done >= num_steps or np.all((codes != 0) | (steps >= num_steps)) or furthest < done:
            break
    elbo = np.concatenate(traces, axis=1)[:, : int(steps.max())]
    return ManyResult(
        model=model,
        family=family_obj,
        params=state.params,
        elbo=elbo,
        num_steps=steps,
        num_nonfinite=np.asarray(state.num_nonfinite),
        stop_codes=codes,
        stop_reasons=[_STOP_REASONS[int(c)] for c in codes],
        converged=np.isin(codes, (1, 2)),
        batched=batched,
        seconds=time.perf_counter() - start_time,
        estimator=estimator if isinstance(estimator, str) else getattr(estimator, "__name__", "custom"),
        num_samples=num_samples,
    )
