"""VAE training: a pure jitted step, a compiled epoch (`lax.scan` over minibatches of an
on-device shuffled epoch), data-parallel placement, checkpoints and resume.

Reproducibility: a run has one training key; epoch `e` (0-based) uses `fold_in(key, e)` for
its shuffle, its dynamic binarisation and its per-step sampling keys. The checkpoint written
after each epoch stores the parameters, the optimizer state, the number of completed epochs and
the training key, so resuming continues with exactly the keys an uninterrupted run would use
and gives identical parameters.

Data parallelism: with a `jax.sharding.Mesh` over the devices (axis "data"; `advi_jax.data_mesh()`,
the same mesh `aj.fit_minibatch` takes; one process), the
training set and parameters are replicated, every minibatch is constrained to be sharded over
the batch axis, and XLA inserts the gradient all-reduce. The loss is a batch mean, so the result
equals single-device training up to floating-point summation order.

A non-finite loss (or parameters) at the end of an epoch stops training with
`NonFiniteLossError`; that epoch is not saved, so the last good checkpoint stays on disk.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from advi_jax._types import Array, PyTree
from advi_jax.diagnostics import check_key
from advi_jax.vae.modules import VAEConfig, build_vae
from advi_jax.vae.objectives import Objective, make_loss

__all__ = [
    "CHECKPOINT_NAME",
    "NonFiniteLossError",
    "TrainResult",
    "TrainState",
    "load_checkpoint",
    "make_train_epoch",
    "make_train_step",
    "save_checkpoint",
    "train",
]

CHECKPOINT_NAME = "checkpoint.npz"


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the last good checkpoint was kept."""


class TrainState(NamedTuple):
    """Everything a run needs to continue.

    Attributes:
      params: the VAE parameters (an `nnx.State` pytree).
      opt_state: the optax state.
      epoch: number of completed epochs (int).
      key: the training key; epoch e uses `fold_in(key, e)`.
    """

    params: PyTree
    opt_state: PyTree
    epoch: int
    key: Array


class TrainResult(NamedTuple):
    """Output of `train`.

    Attributes:
      state: the final `TrainState`.
      graphdef: the VAE graph definition (`nnx.merge(graphdef, state.params)` rebuilds it).
      history: per-epoch mean training loss (nats per image), all epochs including resumed ones.
      step_losses: (steps,) float32 loss of every training step, all epochs including resumed
        ones (checkpoints store it too); `plots.plot_loss_curve` draws it.
    """

    state: TrainState
    graphdef: nnx.GraphDef
    history: list[float]
    step_losses: np.ndarray | None = None


def make_train_step(loss: Callable, optimizer: optax.GradientTransformation, *, jit: bool = True):
    """A pure training step.

    Args:
      loss: `loss(params, key, batch) -> (scalar, LossMetrics)` from `make_loss`.
      optimizer: an optax transformation.
      jit: return the jitted function (the epoch scan uses the plain one).

    Returns:
      `train_step(params, opt_state, batch, key) -> (params, opt_state, LossMetrics)`.
    """

    def train_step(params, opt_state, batch, key):
        grads, metrics = jax.grad(loss, has_aux=True)(params, key, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, metrics

    return jax.jit(train_step) if jit else train_step


def _progress_callback(bar):
    def update(step, running_loss):
        bar.n = int(step) + 1
        bar.set_postfix_str(f"loss {float(running_loss):.2f}", refresh=False)
        bar.refresh()

    return update


def make_train_epoch(loss: Callable, optimizer: optax.GradientTransformation, *, batch_size: int,
                     binarize: bool, mesh: Mesh | None = None, progress=None, refresh_every: int = 10,
                     donate: bool = True):
    """One compiled call per epoch.

    The epoch key is split into a shuffle key (a fresh permutation of the training set, dropping
    the last partial batch), a binarisation key (each minibatch is a fresh Bernoulli draw of the
    pixel intensities when `binarize`) and per-step sampling keys.

    Args:
      loss: from `make_loss`.
      optimizer: an optax transformation.
      batch_size: B; with a mesh it must be divisible by the number of devices.
      binarize: dynamic binarisation of intensities in [0, 1].
      mesh: optional 1-D "data" mesh; minibatches are sharded over it.
      progress: optional callable `(step, running_loss)` called on the host every
        `refresh_every` steps (a tqdm updater); None disables the callback.
      donate: donate the params and optimizer-state buffers to the call (saves memory on
        accelerators; the inputs cannot be reused afterwards).

    Returns:
      `train_epoch(params, opt_state, x_train, key) -> (params, opt_state, LossMetrics, finite)`
      with metrics stacked over the epoch's steps, x_train (N, D) on device, and `finite` a
      boolean scalar: every loss and every final parameter is finite.
    """
    step = make_train_step(loss, optimizer, jit=False)
    batch_sharding = NamedSharding(mesh, PartitionSpec("data")) if mesh is not None else None

    def train_epoch(params, opt_state, x_train, key):
        num_batches = x_train.shape[0] // batch_size
        shuffle_key, binarize_key, step_key = jax.random.split(key, 3)
        order = jax.random.permutation(shuffle_key, x_train.shape[0])[: num_batches * batch_size]
        order = order.reshape(num_batches, batch_size)

        def body(carry, inputs):
            params, opt_state, total = carry
            i, idx = inputs
            batch = jnp.take(x_train, idx, axis=0)
            if binarize:
                batch = jax.random.bernoulli(jax.random.fold_in(binarize_key, i), batch).astype(batch.dtype)
            if batch_sharding is not None:
                batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
            params, opt_state, metrics = step(params, opt_state, batch, jax.random.fold_in(step_key, i))
            total = total + metrics.loss
            if progress is not None:
                jax.lax.cond((i + 1) % refresh_every == 0,
                             lambda: jax.debug.callback(progress, i, total / (i + 1)), lambda: None)
            return (params, opt_state, total), metrics

        (params, opt_state, _), metrics = jax.lax.scan(
            body, (params, opt_state, jnp.zeros((), x_train.dtype)), (jnp.arange(num_batches), order))
        finite = jnp.all(jnp.isfinite(metrics.loss)) & _all_finite(params)
        return params, opt_state, metrics, finite

    return jax.jit(train_epoch, donate_argnums=(0, 1) if donate else ())


def _all_finite(tree) -> Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


@functools.lru_cache(maxsize=8)
def _cached_epoch(graphdef, objective, optimizer, batch_size, binarize, mesh):
    """Compiled epochs without a progress callback, reused across `train` calls (resume, tests)."""
    return make_train_epoch(make_loss(graphdef, objective), optimizer, batch_size=batch_size,
                            binarize=binarize, mesh=mesh)


# ----------------------------------------------------------------------------- checkpoints


def _saved_step_losses(path: Path) -> np.ndarray:
    """The per-step losses stored in a checkpoint (empty for checkpoints written before they were)."""
    with np.load(path, allow_pickle=False) as arrays:
        return arrays["step_losses"] if "step_losses" in arrays.files else np.zeros(0, np.float32)


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(jax.device_get(x)) for x in jax.tree_util.tree_leaves(tree)]


def save_checkpoint(path: str | os.PathLike, state: TrainState, config: VAEConfig, *,
                    meta: dict | None = None, history: list[float] | None = None,
                    step_losses: np.ndarray | None = None) -> Path:
    """Write a pickle-free npz checkpoint atomically (a temporary file, then rename).

    Stored: the config (JSON), `meta` (JSON: objective, batch size, ...), the epoch, the raw key
    data, the per-epoch loss history, the per-step losses and the leaves of params and optimizer
    state in tree order.

    Args:
      path: the npz file to write (its folder is created).
      state: the `TrainState`.
      config: the `VAEConfig`.
      meta: JSON-serialisable settings checked on resume.
      history: per-epoch mean losses.
      step_losses: per-step losses.

    Returns:
      `path` as a `Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "config": np.array(config.to_json()),
        "meta": np.array(json.dumps(meta or {}, sort_keys=True)),
        "epoch": np.array(int(state.epoch), np.int64),
        "key": np.asarray(jax.random.key_data(state.key)),
        "history": np.asarray(history or [], np.float64),
        "step_losses": np.asarray(step_losses if step_losses is not None else [], np.float32),
    }
    for i, leaf in enumerate(_leaves(state.params)):
        arrays[f"params/{i}"] = leaf
    for i, leaf in enumerate(_leaves(state.opt_state)):
        arrays[f"opt_state/{i}"] = leaf
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


def _restore(template, arrays, prefix: str, path) -> PyTree:
    leaves, treedef = jax.tree_util.tree_flatten(template)
    names = sorted((k for k in arrays.files if k.startswith(prefix + "/")), key=lambda k: int(k.split("/")[1]))
    if len(names) != len(leaves):
        raise ValueError(f"checkpoint {path} has {len(names)} {prefix} arrays, expected {len(leaves)}; "
                         f"it was written for a different model or optimizer")
    restored = []
    for name, leaf in zip(names, leaves):
        value = arrays[name]
        if value.shape != np.shape(leaf):
            raise ValueError(f"checkpoint {path}: {name} has shape {value.shape}, expected {np.shape(leaf)}")
        restored.append(jnp.asarray(value, dtype=jnp.asarray(leaf).dtype))
    return jax.tree_util.tree_unflatten(treedef, restored)


def load_checkpoint(path: str | os.PathLike, optimizer: optax.GradientTransformation | None = None):
    """Read a checkpoint written by `save_checkpoint`.

    Args:
      path: the npz file.
      optimizer: the optimizer used for training (needed to rebuild the optimizer state's
        structure); None restores only the parameters (opt_state is then None).

    Returns:
      `(state, graphdef, config, meta, history)`.

    Raises:
      ValueError: naming the file, when it is truncated, corrupt, not a checkpoint, or written
        for another model or optimizer.
    """
    path = Path(path)
    try:
        arrays = np.load(path, allow_pickle=False)
        config = VAEConfig.from_json(str(arrays["config"]))
        meta = json.loads(str(arrays["meta"]))
    except FileNotFoundError:
        raise
    except Exception as err:  # BadZipFile, EOFError, KeyError, ...: truncated, corrupt or another file
        raise ValueError(f"{path}: not a readable VAE checkpoint ({type(err).__name__}: {err}); delete it to "
                         "start afresh") from None
    with arrays:
        graphdef, template = nnx.split(build_vae(config, jax.random.key(0)), nnx.Param)
        params = _restore(template, arrays, "params", path)
        opt_state = _restore(optimizer.init(template), arrays, "opt_state", path) if optimizer else None
        key = jax.random.wrap_key_data(jnp.asarray(arrays["key"]))
        state = TrainState(params, opt_state, int(arrays["epoch"]), key)
        history = [float(v) for v in arrays["history"]]
    return state, graphdef, config, meta, history


# ----------------------------------------------------------------------------- the loop


_DEFAULT_OPTIMIZER = optax.adam(1e-3)


def _check_int(value, name: str, minimum: int = 1) -> int:
    """An int >= minimum (bools and floats refused), or a TypeError/ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def _check_train_data(x_train, config: VAEConfig, binarize: bool) -> np.ndarray:
    """x_train as (N, D) float32, checked on the host before anything is compiled.

    Every value must be finite; for a Bernoulli decoder (and for dynamic binarisation) every
    value must lie in [0, 1], the probability of a pixel being on. Raises ValueError naming the
    first bad row and value.
    """
    try:
        x = np.asarray(x_train, np.float32)
    except (TypeError, ValueError) as err:
        raise TypeError(f"x_train must be a numeric (N, {config.data_dim}) array, got {type(x_train).__name__}: "
                        f"{err}") from None
    if x.ndim != 2 or x.shape[1] != config.data_dim:
        raise ValueError(f"x_train must have shape (N, {config.data_dim}), got {x.shape}")
    if x.shape[0] == 0:
        raise ValueError("x_train holds no rows")
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(f"x_train has a non-finite value {x[row, col]} at row {row}, column {col} "
                         f"({int(bad.sum())} values in all); drop or impute them first")
    if binarize or config.likelihood == "bernoulli":
        low, high = float(x.min()), float(x.max())
        if low < 0.0 or high > 1.0:
            why = "dynamic binarisation draws Bernoulli(x)" if binarize else "the Bernoulli decoder models x"
            hint = " (pixel values 0..255? divide by 255)" if high > 1.0 and high <= 255.0 and low >= 0.0 else ""
            row = int(np.argwhere((x < 0.0) | (x > 1.0))[0, 0])
            raise ValueError(f"x_train must lie in [0, 1] ({why}), got values in [{low:g}, {high:g}], first "
                             f"outside at row {row}{hint}")
    return x


def train(config: VAEConfig, x_train, *, key: Array, epochs: int, batch_size: int = 100,
          objective: Objective | None = None, optimizer: optax.GradientTransformation | None = None,
          binarize: bool = True, out_dir: str | os.PathLike | None = None, resume: bool = False,
          mesh: Mesh | None = None, progress: bool = True,
          on_epoch: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train a VAE for `epochs` epochs (in total, counting resumed ones).

    Args:
      config: the `VAEConfig`.
      x_train: (N, D) finite training data; in [0, 1] (pixel-on probabilities) for a Bernoulli
        decoder or when `binarize`.
      key: PRNG key (`jax.random.key(seed)`); split into an initialisation key and the training key.
      epochs: total number of epochs (an int >= 1).
      batch_size: B (N >= B; the last partial batch of each shuffled epoch is dropped).
      objective: default `Objective()` (the single-sample ELBO with analytic KL).
      optimizer: default `optax.adam(1e-3)`.
      binarize: dynamic binarisation (a fresh Bernoulli draw of x each epoch).
      out_dir: where `checkpoint.npz` is written after every epoch (None: no checkpoints).
      resume: continue from `out_dir/checkpoint.npz` when it exists.
      mesh: a 1-D "data" mesh for data-parallel training (`data_mesh()`); None: default device.
      progress: show a tqdm bar per epoch with the running loss.
      on_epoch: called with (epoch, mean loss) after each finished epoch.

    Returns:
      A `TrainResult`.

    Raises:
      TypeError: `key` is not a PRNG key, `epochs` / `batch_size` is not an int, `objective` is not an
        `Objective` (a string such as "iwae-5" goes through `parse_objective`) or `optimizer` not optax's.
      ValueError: (before anything is compiled) `epochs` < 1, bad sizes, non-finite data, data
        outside [0, 1] for a Bernoulli decoder (e.g. 0..255 pixel values), or a checkpoint
        written for another config.
      NonFiniteLossError: the loss became NaN/inf; the last good checkpoint is kept.
    """
    objective = Objective() if objective is None else objective
    if not isinstance(objective, Objective):  # e.g. the command line's spelling, "iwae-5"
        raise TypeError(f"objective must be an Objective, e.g. parse_objective('iwae-5') or Objective(), got "
                        f"{type(objective).__name__} {objective!r}")
    optimizer = optimizer or _DEFAULT_OPTIMIZER
    if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))):
        raise TypeError(f"optimizer must be an optax GradientTransformation such as optax.adam(1e-3), got "
                        f"{type(optimizer).__name__} {optimizer!r}")
    key = check_key(key)
    epochs = _check_int(epochs, "epochs")
    batch_size = _check_int(batch_size, "batch_size")
    x_train = _check_train_data(x_train, config, binarize)
    if batch_size > x_train.shape[0]:
        raise ValueError(f"batch_size must be between 1 and the number of training images "
                         f"({x_train.shape[0]}), got {batch_size}")
    if mesh is not None and batch_size % mesh.size:
        raise ValueError(f"batch_size {batch_size} must be divisible by the number of devices ({mesh.size})")
    meta = {"objective": objective.name, "estimator": objective.estimator, "kl": objective.kl,
            "batch_size": batch_size, "binarize": binarize, "num_train": int(x_train.shape[0])}

    ckpt_path = Path(out_dir) / CHECKPOINT_NAME if out_dir is not None else None
    history: list[float] = []
    step_losses = [np.zeros(0, np.float32)]
    if resume and ckpt_path is not None and ckpt_path.is_file():
        state, graphdef, saved_config, saved_meta, history = load_checkpoint(ckpt_path, optimizer)
        step_losses = [_saved_step_losses(ckpt_path)]
        if saved_config != config:
            raise ValueError(f"cannot resume: {ckpt_path} was written for {saved_config}, not {config}")
        if saved_meta != meta:
            raise ValueError(f"cannot resume: {ckpt_path} was written with settings {saved_meta}, "
                             f"now {meta}")
    else:
        init_key, train_key = jax.random.split(key)
        graphdef, params = nnx.split(build_vae(config, init_key), nnx.Param)
        state = TrainState(params, optimizer.init(params), 0, train_key)

    params, opt_state = state.params, state.opt_state
    if mesh is not None:
        replicated = NamedSharding(mesh, PartitionSpec())
        params, opt_state = jax.device_put((params, opt_state), replicated)
        x_device = jax.device_put(x_train, replicated)
    else:
        x_device = jnp.asarray(x_train)

    bar = None
    callback = None
    num_batches = x_train.shape[0] // batch_size
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_batches, leave=True, dynamic_ncols=True)
        callback = _progress_callback(bar)
    if callback is None:
        train_epoch = _cached_epoch(graphdef, objective, optimizer, batch_size, binarize, mesh)
    else:
        train_epoch = make_train_epoch(make_loss(graphdef, objective), optimizer, batch_size=batch_size,
                                       binarize=binarize, mesh=mesh, progress=callback,
                                       refresh_every=max(1, min(10, num_batches)))
    try:
        for epoch in range(state.epoch, epochs):
            if bar is not None:
                bar.reset(total=num_batches)
                bar.set_description(f"epoch {epoch + 1}/{epochs}")
            new_params, new_opt_state, metrics, finite = train_epoch(
                params, opt_state, x_device, jax.random.fold_in(state.key, epoch))
            losses = np.asarray(metrics.loss)
            if not bool(finite):
                bad = int(np.argmax(~np.isfinite(losses))) if not np.all(np.isfinite(losses)) else num_batches - 1
                kept = (f"the last good checkpoint ({ckpt_path}, after epoch {state.epoch}) was kept"
                        if ckpt_path is not None and state.epoch > 0 else "no checkpoint was written")
                raise NonFiniteLossError(f"loss became non-finite in epoch {epoch + 1} (step {bad + 1}); "
                                         f"training stopped and {kept}")
            params, opt_state = new_params, new_opt_state
            mean_loss = float(np.mean(losses))
            history.append(mean_loss)
            step_losses.append(losses.astype(np.float32))
            state = TrainState(params, opt_state, epoch + 1, state.key)
            if bar is not None:
                bar.n = num_batches
                bar.set_postfix_str(f"loss {mean_loss:.2f}")
                bar.refresh()
            if ckpt_path is not None:
                save_checkpoint(ckpt_path, state, config, meta=meta, history=history,
                                step_losses=np.concatenate(step_losses))
            if on_epoch is not None:
                on_epoch(epoch + 1, mean_loss)
    finally:
        if bar is not None:
            bar.close()
    return TrainResult(state, graphdef, history, np.concatenate(step_losses))
