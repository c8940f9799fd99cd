"""Stochastic (minibatch) ADVI for large N: data subsampling with a scaled likelihood.

For a model whose log joint is a prior plus a sum of N per-datum terms,

    log p(x, z) = log p(z) + sum_{n=1}^N log p(x_n | z),

the minibatch estimate on a batch S of size B drawn without replacement,

    log p(z) + (N / B) sum_{n in S} log p(x_n | z),

is unbiased for the full log joint, so ADVI on it (a fresh batch each step, on top of the Monte
Carlo draws of q) is stochastic gradient ascent on the full-data ELBO (Hoffman, Blei, Wang &
Paisley 2013). The per-step ELBO estimates in `Result.elbo` are on the full-data scale.

Mark the per-datum term by building a `MinibatchModel`: a log prior, a log likelihood of a batch
(per datum, shape (B,), or already summed), the supports, and data whose every leaf has a leading
axis N. `fit_minibatch` runs epochs: each epoch draws a permutation of the N data
(`jax.random.permutation(fold_in(key, epoch), N)`), splits it into N // batch_size minibatches
(the remainder of each epoch's permutation is skipped; a different remainder every epoch), and
runs them in the one driver (`advi_jax.run.driver`) with the epoch's minibatch indices as its
per-step inputs: each step is the method's step (ADVI) on a `Model` of the batch with the scaled
log joint, so the stopping rule, non-finite handling, progress bar and Ctrl-C are those of `aj.fit`.

Where the data live:

* on the device (default when they fit in `max_device_bytes`): each step gathers its batch from
  the device copy; the whole epoch is one compiled call;
* on the host (`host=True`, or data larger than `max_device_bytes`): the permutation is computed
  once per epoch, batches are gathered in host memory `chunk_batches` minibatches at a time and
  moved with `jax.device_put`; the next chunk's copy is issued before the current chunk's result
  is read (JAX dispatch is asynchronous), so transfer and gather overlap compute (double
  buffering). Both paths use the same permutations and keys and give the same fit.

With a `mesh` (see `advi_jax.sharding.data_mesh`) each minibatch is sharded over the devices on
its batch axis and the variational parameters are replicated; XLA inserts the all-reduce of the
log-likelihood sum.

Example:
  >>> import jax, jax.numpy as jnp, numpy as np, advi_jax as aj
  >>> x = np.random.default_rng(0).normal(1.0, 1.0, size=10_000).astype(np.float32)
  >>> mb = aj.MinibatchModel(
  ...     log_prior=lambda p: -0.5 * p["mu"] ** 2,
  ...     log_likelihood=lambda p, batch: -0.5 * (batch - p["mu"]) ** 2,  # per datum, (B,)
  ...     support={"mu": aj.real()}, data=x)
  >>> result = aj.fit_minibatch(mb, key=jax.random.key(0), batch_size=500, num_epochs=50)
  >>> round(float(result.mean()["mu"]), 1)
  1.0

Diagnostics on the full data, within a bounded budget: PSIS k-hat needs log p(zeta) on ALL the
data at every diagnostic draw, which costs draws x N per-datum evaluations. `fit_minibatch` takes
S = min(num_diagnostic_draws, max(128, DIAGNOSTIC_BUDGET // N)) draws (DIAGNOSTIC_BUDGET = 2^26,
so S = 4096 up to N = 16,384 and 128 draws, 128 passes over the data, beyond N = 524,288) and
evaluates the likelihood in chunks of rows (about 2^22 draw x datum terms per compiled call, the
chunks copied from host memory when the data live there), so memory stays bounded too. The
k-hat threshold for S draws (`aj.khat_threshold`) accounts for the smaller S.

Where the fit would be silent but its reading is grey, the widened moment check runs as in `aj.fit`
(`fit_diagnostics.widen_if_grey`: J x S more full-data log-density evaluations, counted in
`num_logp_evals`), on the full-data model through the single-fit diagnostics' program, which holds
min(S, 256) x N draw x datum terms per batch: it runs where the data live on the device and that is at
most `WIDEN_MAX_TERMS` (N <= 262,144 at S >= 256), not with `host=True` or larger N
(`_widen_full_data`).

References:
  Hoffman, Blei, Wang & Paisley (2013), Stochastic variational inference, JMLR 14.
  Kucukelbir, Tran, Ranganath, Gelman & Blei (2017), Automatic differentiation variational
  inference, JMLR 18, section 3.4.
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from advi_jax import blas_threads, checks, gc_pause
from advi_jax._types import Array, check_positive_int
from advi_jax.base import Family
from advi_jax.flatten import MinibatchModel, Model
from advi_jax.importance import constrained_flat
from advi_jax.result import Report, Result, diagnose_ratios
from advi_jax.run import driver, precision
from advi_jax.run.single import run_diagnostics, warn_diagnostics
from advi_jax.vi import advi as _advi

if TYPE_CHECKING:  # optax is imported where it is used (`import advi_jax` does not load it)
    import optax

__all__ = ["fit_minibatch", "DIAGNOSTIC_BUDGET"]


def _nbytes(tree) -> int:
    return sum(int(np.prod(np.shape(x))) * np.dtype(getattr(x, "dtype", np.float64)).itemsize
               for x in jax.tree_util.tree_leaves(tree))


def _check_likelihood_shape(model: MinibatchModel, batch_size: int, loc: Array) -> None:
    full = model.full_model()
    params = jax.eval_shape(full.to_constrained, jax.ShapeDtypeStruct(loc.shape, loc.dtype))
    batch = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct((batch_size,) + np.shape(x)[1:],
                                                                  getattr(x, "dtype", np.float32)), model.data)
    out = jax.eval_shape(model.log_likelihood, params, batch)
    if out.shape not in ((), (batch_size,)):
        raise ValueError(f"log_likelihood(params, batch) must return per-datum values of shape ({batch_size},) or a "
                         f"scalar sum, got shape {out.shape}")
    prior = jax.eval_shape(model.log_prior, params)
    if prior.shape != ():
        raise ValueError(f"log_prior(params) must return a scalar, got shape {prior.shape}")



DIAGNOSTIC_BUDGET = 2**26
"""Per-datum likelihood evaluations the full-data diagnostics may spend (module docstring)."""

_TERMS_PER_CALL = 2**22


@functools.partial(jax.jit, static_argnames=("num_data", "num_batches", "batch_size"))
def _epoch_indices(perm_key: Array, epoch: Array, num_data: int, num_batches: int, batch_size: int) -> Array:
    """(num_batches, batch_size) the epoch's minibatch indices: a permutation of the data, cut."""
    perm = jax.random.permutation(jax.random.fold_in(perm_key, epoch), num_data)
    return perm[: num_batches * batch_size].reshape(num_batches, batch_size)


@functools.partial(jax.jit, static_argnames=("family", "num_draws"))
def _draws_prior(prior: Model, family: Family, params, key: Array, num_draws: int):
    """q's draws, their prior-and-Jacobian log ratios and the same draws in the constrained space
    (`importance.constrained_flat`: the sites a bijector changes), for the moment check of both spaces."""
    zeta = family.sample(params, key, num_draws)
    return zeta, jax.vmap(prior.log_density)(zeta) - family.log_prob(params, zeta), constrained_flat(prior, zeta)


@jax.jit
def _likelihood_sums(statics: MinibatchModel, prior: Model, zeta: Array, rows: Any) -> Array:
    def one(z):
        return jnp.sum(statics.log_likelihood(prior.to_constrained(z), rows))

    return jax.vmap(one)(zeta)


def _full_data_diagnostics(model: MinibatchModel, family: Family, params, key: Array, num_draws: int):
    """Diagnostics of q against the FULL data: prior + Jacobian at every draw, plus the
    likelihood summed over row chunks (each chunk copied to the device when the data are on
    the host), scaled by num_data / data_size."""
    prior = model.prior_model()
    zeta, ratios, cons = _draws_prior(prior, family, params, key, num_draws)
    statics = jax.tree_util.tree_map(lambda _: None, model)
    size = model.data_size
    step = max(1, _TERMS_PER_CALL // num_draws)
    total = jnp.zeros_like(ratios)
    for lo in range(0, size, step):
        rows = jax.tree_util.tree_map(lambda x: jnp.asarray(x[lo: lo + step]), model.data)
        total = total + _likelihood_sums(statics, prior, zeta, rows)
    return diagnose_ratios(ratios + (model.num_data / size) * total, zeta, cons, prior)


WIDEN_MAX_TERMS = DIAGNOSTIC_BUDGET
"""The most draw x datum terms one batch of the widened moment check's full-data program may hold
(`_widen_full_data`)."""


def _widen_full_data(full: Model, family: Family, params, key: Array, diag, num_draws: int, host: bool,
                     num_rows: int):
    """The widened moment check where the fit would be silent but reads grey (`fit_diagnostics.widen_if_grey`,
    as a single fit: its components' keys from the diagnostics key, `num_draws` draws each), on the
    full-data model `full`.

    Its draws come from the single-fit diagnostics' program (`importance.draws_and_log_ratios`), which
    evaluates the full-data log density `min(S, 256)` draws at a time in one compiled call: it runs where
    the data live on the device and one batch holds at most `WIDEN_MAX_TERMS` draw x datum terms
    (N <= 262,144 at S >= 256); elsewhere (`host=True`, larger N) the plain check's reading stands."""
    from advi_jax.fit_diagnostics import widen_if_grey

    if diag is None or host or min(int(num_draws), 256) * int(num_rows) > WIDEN_MAX_TERMS:
        return diag
    return widen_if_grey(full, family, params, key, diag, num_draws)


@blas_threads.during
@gc_pause.during
@precision.during
def fit_minibatch(model: MinibatchModel, *, key: Array, batch_size: int, num_epochs: int,
                  family: str | Family = "meanfield", num_samples: int = 1,
                  optimizer: optax.GradientTransformation | None = None, estimator: str | Callable = "reparam",
                  learning_rate: float | None = None, init: Any = None, init_scale: float = 0.1,
                  host: bool | None = None, max_device_bytes: int = 2**30, chunk_batches: int = 64,
                  mesh: jax.sharding.Mesh | None = None, max_consecutive_nonfinite: int = 50,
                  check: bool = True, tol_rel_obj: float | None = None, eval_every: int = 100, window: int = 10,
                  progress: bool = True, diagnostics: bool = True, num_diagnostic_draws: int = 4096,
                  warn: bool = True, callback: Callable | None = None) -> Result:
    """Minibatch ADVI: epochs of shuffled minibatches with the likelihood scaled by N / batch_size.

    Args:
      model: a `MinibatchModel`.
      key: PRNG key (required). Epoch e shuffles with `fold_in(k_perm, e)`; step t draws with
        `fold_in(k_step, t)` (k_perm, k_step split from `key`).
      batch_size: B, data per step (static); each epoch takes N // B steps.
      num_epochs: passes over the data.
      family, num_samples, optimizer, estimator, learning_rate, init, init_scale: as in `aj.fit`;
        the default optimizer decays its step over the second half of the num_epochs * (N // B)
        steps, which removes most of the minibatch jitter from the final parameters.
      host: keep the data in host memory and stream chunks of minibatches to the device; default
        (None): only when the data exceed `max_device_bytes`.
      max_device_bytes: the data size above which `host=None` streams from host memory.
      chunk_batches: minibatches per host-to-device transfer when streaming.
      mesh: a 1-D `jax.sharding.Mesh` with axis "data" (e.g. `aj.data_mesh()`): shard each
        minibatch over its devices (batch_size must be divisible by the mesh size).
      max_consecutive_nonfinite: stop (at the end of an epoch or chunk) after this many
        non-finite steps in a row.
      check: evaluate the full-data log density at the initial point and raise if not finite.
      tol_rel_obj, eval_every, window: the relative-ELBO stopping rule of `aj.fit` (None: never).
      progress: show a progress bar (updated after each epoch or streamed chunk).
      diagnostics: compute PSIS k-hat, IW-ELBO and ESS on the FULL data after the fit, from at
        most `num_diagnostic_draws` draws within the module's budget (module docstring).
      num_diagnostic_draws: the most diagnostic draws (>= 100).
      warn: warn when the diagnostics say the fit is unreliable.
      callback: as in `aj.fit` (called after each epoch or streamed chunk).

    Returns:
      A `Result` (Ctrl-C keeps the last completed epoch or chunk) whose `model` is the full-data `Model` and whose `elbo` holds the per-step
      full-data-scaled ELBO estimates (num_epochs * (N // B) of them unless stopped).

    Raises:
      TypeError, ValueError: bad arguments, named, before anything is compiled.
    """
    began = time.perf_counter()
    if not isinstance(model, MinibatchModel):
        raise TypeError(f"model must be an aj.MinibatchModel, got {type(model).__name__} (use aj.fit for a Model)")
    key, family_obj, estimator, num_samples, tol_rel_obj, callback = checks.common_args(
        key, family, estimator, num_samples, tol_rel_obj, callback, check=check, progress=progress,
        diagnostics=diagnostics, warn=warn)
    batch_size = check_positive_int(batch_size, "batch_size")
    num_epochs = check_positive_int(num_epochs, "num_epochs")
    chunk_batches = check_positive_int(chunk_batches, "chunk_batches")
    eval_every, window, _, max_consecutive_nonfinite = checks.check_loop_args(eval_every, window, 1,
                                                                             max_consecutive_nonfinite)
    num_diagnostic_draws = check_positive_int(num_diagnostic_draws, "num_diagnostic_draws", 100)
    n = model.data_size
    if batch_size > n:
        raise ValueError(f"batch_size={batch_size} exceeds the number of data {n}")
    init_scale = checks.check_number(init_scale, "init_scale")
    num_batches = n // batch_size
    total_steps = num_epochs * num_batches
    optimizer = checks.resolve_optimizer(optimizer, learning_rate, total_steps)

    batch_sharding = host_sharding = None
    if mesh is not None:
        from jax.sharding import NamedSharding, PartitionSpec

        if tuple(mesh.axis_names) != ("data",):
            raise ValueError(f"mesh must be 1-D with axis 'data' (aj.data_mesh()), got axes {mesh.axis_names}")
        if batch_size % mesh.size:
            raise ValueError(f"batch_size={batch_size} must be divisible by the {mesh.size} devices of the mesh")
        batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
        host_sharding = NamedSharding(mesh, PartitionSpec(None, "data"))

    if host is None:
        host = _nbytes(model.data) > max_device_bytes
    if host:
        model = jax.tree_util.tree_map(np.asarray, model)
    elif not all(isinstance(x, jax.Array) for x in jax.tree_util.tree_leaves(model.data)):
        model = jax.tree_util.tree_map(jnp.asarray, model)

    dtype = jnp.result_type(float)
    full = model.full_model()
    loc = checks.initial_loc(full, init, dtype)
    _check_likelihood_shape(model, batch_size, loc)
    if check:
        value = float(checks.log_density_at(jax.tree_util.tree_map(jnp.asarray, full), loc))
        if not np.isfinite(value):
            raise ValueError(f"the full-data log density is {value} at the initial point; pass init= a point where "
                             "it is finite, or check the model")

    chunk = num_batches if not host else min(chunk_batches, num_batches)
    cfg = driver.Settings(_advi, family_obj, _advi.Options(optimizer, estimator, num_samples, init_scale), chunk,
                          eval_every, window, float(tol_rel_obj or 0.0), max_consecutive_nonfinite,
                          inputs="batches" if host else "indices", batch_size=batch_size,
                          batch_sharding=batch_sharding)
    init_key, perm_key, step_key = jax.random.split(key, 3)
    statics = jax.tree_util.tree_map(lambda _: None, model)  # the model without its data (host path)
    run_model = statics if host else model
    try:
        loop = driver.init_loop(run_model, init_key, loc, cfg)
    except KeyboardInterrupt:
        raise KeyboardInterrupt("aj.fit_minibatch was interrupted during start-up, before any fit state existed: "
                                "nothing to return") from None
    start_seconds = time.perf_counter() - began

    def device_inputs():
        for epoch in range(num_epochs):
            yield _epoch_indices(perm_key, jnp.asarray(epoch, jnp.int32), n, num_batches, batch_size), num_batches

    def host_inputs():
        for epoch in range(num_epochs):
            idx = np.asarray(_epoch_indices(perm_key, jnp.asarray(epoch, jnp.int32), n, num_batches, batch_size))
            for lo in range(0, num_batches, chunk):
                rows = idx[lo: lo + chunk]
                count = rows.shape[0]
                if count < chunk:  # pad to the chunk's static shape (the padding steps never run)
                    rows = np.concatenate([rows, np.repeat(rows[:1], chunk - count, axis=0)])
                batches = jax.tree_util.tree_map(lambda x: x[rows], model.data)
                yield jax.device_put(batches, host_sharding), count

    out = driver.drive(run_model, loop, step_key, cfg, total_steps, inputs=host_inputs() if host else device_inputs(),
                       progress=progress, desc="minibatch ADVI", callback=callback)
    code = int(out.stop_codes)
    params = out.loop.state.params
    num_nonfinite = int(out.loop.num_nonfinite)
    diag, note, diag_seconds = None, "not computed (diagnostics=False)", 0.0
    widened = 0  # the widened moment check's draws (full-data log-density evaluations)
    if diagnostics:
        draws = min(num_diagnostic_draws, max(128, DIAGNOSTIC_BUDGET // max(n, 1)))
        diag_key = jax.random.fold_in(key, 1)
        diag, note, diag_seconds = run_diagnostics(
            lambda: _widen_full_data(full, family_obj, params, diag_key, _full_data_diagnostics(
                model, family_obj, params, diag_key, draws), draws, host, n), code < 0)
        if diag is not None and diag.moments is not None:
            widened = int(diag.moments.widened_draws)
    reached = f"reached num_epochs ({num_epochs} epochs of {num_batches} minibatches of {batch_size})"
    report = Report(
        elbo=out.elbo, num_steps=int(out.loop.step), num_grad_evals=int(out.loop.num_grad_evals),
        num_logp_evals=int(out.loop.num_logp_evals) + widened, num_nonfinite=num_nonfinite, converged=code in (1, 2, 4),
        stop_reason=driver.stop_reason(code, num_nonfinite, max_consecutive_nonfinite, reached), stop_code=code,
        method="advi", method_reason="minibatch ADVI", estimator=checks.estimator_name(estimator),
        num_samples=num_samples, seconds=time.perf_counter() - began, start_seconds=start_seconds,
        compile_seconds=out.compile_seconds, run_seconds=out.run_seconds, diagnostics_seconds=diag_seconds,
        diagnostics=diag, diagnostics_note=note or ("" if diag is not None else "not computed (diagnostics=False)"),
        learning_rate=None, init_loc=np.asarray(loc), init_method="zero" if init is None else "user")
    result = Result(full, family_obj, params, report)
    warn_diagnostics(result, warn)
    return result
