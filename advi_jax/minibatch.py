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
runs one compiled `lax.scan` of ADVI steps over them. The step is `advi_jax.fit.advi`'s step on a
`Model` of the batch with the scaled log joint, so non-finite steps are skipped as in `aj.fit`.

Where the data live:

* on the device (default when they fit in `max_device_bytes`): each step gathers its batch from
  the device copy; the whole epoch is one compiled call;
* on the host (`host=True`, or data larger than `max_device_bytes`): the permutation is computed
  once per epoch, batches are gathered in host memory `chunk_batches` minibatches at a time and
  moved with `jax.device_put`; the next chunk's copy is issued before the current chunk's compiled
  scan runs (JAX dispatch is asynchronous), so transfer and gather overlap compute (double
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

References:
  Hoffman, Blei, Wang & Paisley (2013), Stochastic variational inference, JMLR 14.
  Kucukelbir, Tran, Ranganath, Gelman & Blei (2017), Automatic differentiation variational
  inference, JMLR 18, section 3.4.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from advi_jax._types import Array, PyTree, check_positive_int, common_leading_size
from advi_jax.estimators import ESTIMATORS, min_num_samples
from advi_jax.families import Family, get_family
from advi_jax.fit import (
    DEFAULT_LEARNING_RATE,
    FitState,
    Result,
    _check_key,
    _initial_loc,
    advi,
    default_optimizer,
)
from advi_jax.flatten import Model
from advi_jax.supports import Support

__all__ = ["MinibatchModel", "fit_minibatch"]


@dataclasses.dataclass(frozen=True)
class _FullLogJoint:
    """log_prior(params) + sum log_likelihood(params, data): the full-data log joint."""

    log_prior: Callable
    log_likelihood: Callable

    def __call__(self, params, data):
        return self.log_prior(params) + jnp.sum(self.log_likelihood(params, data))


@dataclasses.dataclass(frozen=True)
class _ScaledLogJoint:
    """log_prior(params) + scale * sum log_likelihood(params, batch), scale = N / batch_size."""

    log_prior: Callable
    log_likelihood: Callable
    scale: float

    def __call__(self, params, batch):
        return self.log_prior(params) + self.scale * jnp.sum(self.log_likelihood(params, batch))


@jax.tree_util.register_pytree_node_class
class MinibatchModel:
    """A model with a per-datum likelihood, for minibatch (stochastic) ADVI.

    Args:
      log_prior: `log_prior(params) -> scalar`, everything but the data terms (constrained params).
      log_likelihood: `log_likelihood(params, batch) -> (B,)` per-datum log likelihoods, or their
        scalar sum, where `batch` is `data` with every leaf restricted to B rows.
      support: dict mapping parameter names to supports, as for `aj.Model`.
      data: pytree of arrays (numpy or jax), every leaf with the same leading axis N.
      num_data: the N of the N / B scaling; defaults to the data's leading axis (set it only when
        `data` is itself a sample standing in for a larger population).

    A `MinibatchModel` is a pytree whose leaves are its data (as for `Model`).

    Example:
      >>> import jax.numpy as jnp, numpy as np, advi_jax as aj
      >>> x, y = np.ones((1000, 3), np.float32), np.zeros(1000, np.float32)
      >>> mb = aj.MinibatchModel(
      ...     log_prior=lambda p: -0.5 * jnp.sum(p["beta"] ** 2),
      ...     log_likelihood=lambda p, b: -0.5 * (b[1] - b[0] @ p["beta"]) ** 2,
      ...     support={"beta": aj.real((3,))}, data=(x, y))
      >>> mb.num_data, mb.full_model().dim
      (1000, 3)
    """

    def __init__(self, log_prior: Callable, log_likelihood: Callable, support: Mapping[str, Support], data: PyTree,
                 num_data: int | None = None):
        if not callable(log_prior) or not callable(log_likelihood):
            raise TypeError("log_prior and log_likelihood must be callables: log_prior(params) -> scalar, "
                            "log_likelihood(params, batch) -> (B,) or scalar")
        n = common_leading_size(data, "data (the data axis N leads every array)")
        self.log_prior = log_prior
        self.log_likelihood = log_likelihood
        self.support = dict(support)
        self.data = data
        self.num_data = n if num_data is None else check_positive_int(num_data, "num_data")
        # Validates the supports (raises as aj.Model does).
        Model(_FullLogJoint(log_prior, log_likelihood), self.support, data=None)

    def tree_flatten(self):
        return (self.data,), (self.log_prior, self.log_likelihood, tuple(self.support.items()), self.num_data)

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        obj.log_prior, obj.log_likelihood, items, obj.num_data = aux
        obj.support = dict(items)
        obj.data = children[0]
        return obj

    @property
    def data_size(self) -> int:
        """The leading axis of the data actually held (usually `num_data`)."""
        return int(np.shape(jax.tree_util.tree_leaves(self.data)[0])[0])

    @property
    def dim(self) -> int:
        """K, the length of the flat unconstrained vector."""
        return self.full_model().dim

    def full_model(self) -> Model:
        """The full-data `Model`: log_prior + sum over all data of log_likelihood (scaled by
        num_data / data_size when `num_data` was overridden)."""
        scale = self.num_data / self.data_size
        joint = (_FullLogJoint(self.log_prior, self.log_likelihood) if scale == 1.0
                 else _ScaledLogJoint(self.log_prior, self.log_likelihood, scale))
        return Model(joint, self.support, data=self.data)

    def batch_model(self, batch: PyTree, batch_size: int) -> Model:
        """The `Model` of one minibatch: log_prior + (num_data / batch_size) sum log_likelihood(batch)."""
        return Model(_ScaledLogJoint(self.log_prior, self.log_likelihood, self.num_data / batch_size), self.support,
                     data=batch)

    def __repr__(self) -> str:
        return f"MinibatchModel(num_data={self.num_data}, dim={self.dim})"


@dataclasses.dataclass(frozen=True)
class _Cfg:
    family: Family
    optimizer: Any
    estimator: Any
    num_samples: int
    init_scale: float
    batch_size: int
    num_batches: int
    batch_sharding: Any  # a jax.sharding.Sharding for one batch, or None


def _step(model: MinibatchModel, batch: PyTree, state: FitState, step_key: Array, cfg: _Cfg):
    batch_model = model.batch_model(batch, cfg.batch_size)
    algorithm = advi(batch_model, cfg.family, optimizer=cfg.optimizer, estimator=cfg.estimator,
                     num_samples=cfg.num_samples, init_scale=cfg.init_scale)
    state, info = algorithm.step(jax.random.fold_in(step_key, state.step), state)
    return state, info.elbo


def _epoch_indices(perm_key: Array, epoch, num_data: int, cfg: _Cfg) -> Array:
    perm = jax.random.permutation(jax.random.fold_in(perm_key, epoch), num_data)
    return perm[: cfg.num_batches * cfg.batch_size].reshape(cfg.num_batches, cfg.batch_size)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _epoch_on_device(model: MinibatchModel, state: FitState, perm_key: Array, step_key: Array, epoch: Array,
                     cfg: _Cfg):
    """One epoch: a lax.scan over minibatches gathered from the device copy of the data."""
    indices = _epoch_indices(perm_key, epoch, model.data_size, cfg)

    def body(st, idx):
        batch = jax.tree_util.tree_map(lambda x: jnp.take(x, idx, axis=0), model.data)
        if cfg.batch_sharding is not None:
            batch = jax.lax.with_sharding_constraint(batch, cfg.batch_sharding)
        return _step(model, batch, st, step_key, cfg)

    return jax.lax.scan(body, state, indices)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _chunk_from_host(model: MinibatchModel, state: FitState, batches: PyTree, step_key: Array, cfg: _Cfg):
    """A lax.scan over a chunk of minibatches already on the device (leaves of shape (m, B, ...))."""
    return jax.lax.scan(lambda st, batch: _step(model, batch, st, step_key, cfg), state, batches)


@functools.partial(jax.jit, static_argnames=("cfg", "dim"))
def _init(key: Array, loc: Array, cfg: _Cfg, dim: int) -> FitState:
    params = cfg.family.init(key, dim, loc=loc, scale=cfg.init_scale)
    zero = jnp.zeros((), jnp.int32)
    return FitState(params, cfg.optimizer.init(params), zero, zero, zero)


@jax.jit
def _log_density_at(model: Model, zeta: Array) -> Array:
    return model.log_density(zeta)


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


def fit_minibatch(model: MinibatchModel, *, key: Array, batch_size: int, num_epochs: int,
                  family: str | Family = "meanfield", num_samples: int = 1,
                  optimizer: optax.GradientTransformation | None = None, estimator: str | Callable = "reparam",
                  learning_rate: float | None = None, init: Any = None, init_scale: float = 0.1,
                  host: bool | None = None, max_device_bytes: int = 2**30, chunk_batches: int = 64,
                  mesh: jax.sharding.Mesh | None = None, max_consecutive_nonfinite: int = 50,
                  check: bool = True) -> Result:
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

    Returns:
      A `Result` whose `model` is the full-data `Model` and whose `elbo` holds the per-step
      full-data-scaled ELBO estimates (num_epochs * (N // B) of them unless stopped).

    Raises:
      TypeError, ValueError: bad arguments, named, before anything is compiled.
    """
    if not isinstance(model, MinibatchModel):
        raise TypeError(f"model must be an aj.MinibatchModel, got {type(model).__name__} (use aj.fit for a Model)")
    key = _check_key(key)
    family_obj = get_family(family)
    if isinstance(estimator, str) and estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {sorted(ESTIMATORS)}, got {estimator!r}")
    batch_size = check_positive_int(batch_size, "batch_size")
    num_epochs = check_positive_int(num_epochs, "num_epochs")
    num_samples = check_positive_int(num_samples, "num_samples")
    chunk_batches = check_positive_int(chunk_batches, "chunk_batches")
    max_consecutive_nonfinite = check_positive_int(max_consecutive_nonfinite, "max_consecutive_nonfinite")
    if isinstance(estimator, str) and num_samples < min_num_samples(estimator):
        raise ValueError(f"estimator {estimator!r} needs num_samples >= {min_num_samples(estimator)}, "
                         f"got {num_samples}")
    n = model.data_size
    if batch_size > n:
        raise ValueError(f"batch_size={batch_size} exceeds the number of data {n}")
    if not (isinstance(init_scale, (int, float)) and math.isfinite(init_scale) and init_scale > 0):
        raise ValueError(f"init_scale must be a positive finite number, got {init_scale!r}")
    num_batches = n // batch_size
    total_steps = num_epochs * num_batches
    if optimizer is None:
        lr = DEFAULT_LEARNING_RATE if learning_rate is None else learning_rate
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"learning_rate must be a positive number, got {learning_rate!r}")
        optimizer = default_optimizer(float(lr), total_steps)
    elif learning_rate is not None:
        raise ValueError("pass either optimizer or learning_rate, not both")
    elif not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"optimizer must be an optax GradientTransformation, got {type(optimizer).__name__}")

    batch_sharding = None
    host_sharding = None
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
    loc = _initial_loc(full, init, dtype)
    _check_likelihood_shape(model, batch_size, loc)
    if check:
        value = float(_log_density_at(jax.tree_util.tree_map(jnp.asarray, full), loc))
        if not np.isfinite(value):
            raise ValueError(f"the full-data log density is {value} at the initial point; pass init= a point where "
                             "it is finite, or check the model")

    cfg = _Cfg(family_obj, optimizer, estimator, num_samples, float(init_scale), batch_size, num_batches,
               batch_sharding)
    init_key, perm_key, step_key = jax.random.split(key, 3)
    start_time = time.perf_counter()
    state = _init(init_key, loc, cfg, full.dim)
    traces = []
    stopped = False
    statics = jax.tree_util.tree_map(lambda _: None, model)  # the model without its data (host path)

    if not host:
        for epoch in range(num_epochs):
            state, elbo = _epoch_on_device(model, state, perm_key, step_key, jnp.asarray(epoch, jnp.int32), cfg)
            traces.append(elbo)
            if int(state.consecutive_nonfinite) >= max_consecutive_nonfinite:
                stopped = True
                break
    else:
        def chunks():
            for epoch in range(num_epochs):
                idx = np.asarray(_epoch_indices(perm_key, epoch, n, cfg))
                for lo in range(0, num_batches, chunk_batches):
                    rows = idx[lo: lo + chunk_batches]
                    yield jax.tree_util.tree_map(lambda x: x[rows], model.data)

        def put(batch):
            return batch if batch is None else jax.device_put(batch, host_sharding)

        it = chunks()
        nxt = put(next(it, None))
        while nxt is not None:
            current = nxt
            nxt = put(next(it, None))  # issued before the current chunk runs: transfer overlaps compute
            state, elbo = _chunk_from_host(statics, state, current, step_key, cfg)
            traces.append(elbo)
            if int(state.consecutive_nonfinite) >= max_consecutive_nonfinite:
                stopped = True
                break

    elbo = np.concatenate([np.asarray(t) for t in traces]) if traces else np.zeros((0,), np.dtype(dtype))
    steps = int(state.step)
    reason = ("stopped: too many consecutive non-finite steps (last finite parameters kept)" if stopped
              else f"reached num_epochs ({num_epochs} epochs of {num_batches} minibatches of {batch_size})")
    return Result(
        model=full,
        family=family_obj,
        params=state.params,
        elbo=elbo,
        num_steps=steps,
        num_gradient_evals=steps * num_samples,
        num_nonfinite=int(state.num_nonfinite),
        converged=False,
        stop_reason=reason,
        seconds=time.perf_counter() - start_time,
        estimator=estimator if isinstance(estimator, str) else getattr(estimator, "__name__", "custom"),
        num_samples=num_samples,
    )
