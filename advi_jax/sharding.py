"""Data-parallel ADVI across devices: shard the data's leading axis, replicate the parameters.

The log joint of a model with N independent data is a sum over the data, so its gradient is a
sum of per-shard gradients. `shard_data(model)` places every data leaf with
`NamedSharding(mesh, PartitionSpec("data"))` on a 1-D mesh over the local devices (the leading
axis split across devices, the rest of each leaf whole). The compiled fit loop then receives
sharded data as arguments; the variational parameters, small, stay replicated, and XLA's SPMD
partitioner runs each device's share of the log-likelihood and inserts the all-reduce of the
sum (and of its gradient). Nothing else changes: `aj.fit(aj.shard_data(model), key=...)` is the
same algorithm, with the same random numbers, as `aj.fit(model, key=...)`, up to the floating
point order of the sum.

The same works for `aj.fit_many` over B stacked datasets: `shard_data(stacked)` splits the
dataset axis B across devices (B / num_devices fits per device, no communication but the stop test).

For minibatch fits pass `mesh=aj.data_mesh()` to `aj.fit_minibatch`: each minibatch is sharded on
its batch axis.

Multi-host (several processes, each with its local devices; not covered by the tests): call
`jax.distributed.initialize()` at the start of every process (coordinator address, process count
and id from the arguments or the cluster environment), then build the mesh over *all* devices,
`data_mesh(jax.devices())`, and give each process only its own rows, assembled into one global
array with `jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), local_rows)`
for every data leaf. Every process runs the same `aj.fit` call with the same key; the all-reduce
then spans hosts.

Example:
  >>> import jax, jax.numpy as jnp, numpy as np, advi_jax as aj
  >>> x = jnp.asarray(np.random.default_rng(0).normal(size=(8 * jax.device_count(), 2)), jnp.float32)
  >>> model = aj.Model(lambda p, x: -0.5 * jnp.sum((x - p["mu"]) ** 2), {"mu": aj.real((2,))}, data=x)
  >>> sharded = aj.shard_data(model)
  >>> len(sharded.data.sharding.device_set) == jax.device_count()
  True
"""

from __future__ import annotations

from typing import Sequence, TypeVar

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["data_mesh", "shard_data"]

DATA_AXIS = "data"

M = TypeVar("M")


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D `Mesh` with axis "data": the one mesh of every data-parallel path in advi_jax.

    `shard_data`, `aj.fit_minibatch(mesh=...)` and the VAE trainer (`advi_jax.vae.train(mesh=...)`)
    all take it.

    Args:
      devices: the devices to spread the data over (default: `jax.devices()`, every device of
        every process; in a single process these are the local devices).

    Returns:
      `Mesh(devices, ("data",))`.

    Raises:
      ValueError: an empty device list.
      TypeError: an entry that is not a `jax.Device`.

    Example:
      >>> import jax, advi_jax as aj
      >>> aj.data_mesh().axis_names
      ('data',)
      >>> aj.data_mesh(jax.devices()[:1]).size
      1
    """
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices must be a non-empty list of jax devices")
    bad = [d for d in devices if not isinstance(d, jax.Device)]
    if bad:
        raise TypeError(f"devices must be jax devices (e.g. jax.devices()[:2]), got {type(bad[0]).__name__} "
                        f"{bad[0]!r}")
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def shard_data(model: M, mesh: Mesh | None = None) -> M:
    """Place the model's data sharded over the leading axis across the mesh's devices.

    Args:
      model: an `aj.Model` or `aj.MinibatchModel` (any pytree whose leaves are data arrays with a
        leading data axis N works).
      mesh: a 1-D mesh with axis "data"; default `data_mesh()` (every local device).

    Returns:
      The same kind of model with every data leaf a `jax.Array` sharded with
      `NamedSharding(mesh, PartitionSpec("data"))`. Scalars (0-d leaves) are replicated.

    Raises:
      ValueError: a leaf whose leading axis is not divisible by the number of devices (drop or
        pad rows in the model's own terms, e.g. with a per-row weight of 0, first).
    """
    mesh = data_mesh() if mesh is None else mesh
    if tuple(mesh.axis_names) != (DATA_AXIS,):
        raise ValueError(f"mesh must be 1-D with axis {DATA_AXIS!r} (aj.data_mesh()), got axes {mesh.axis_names}")
    num_devices = mesh.size
    sharded = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    replicated = NamedSharding(mesh, PartitionSpec())
    leaves = jax.tree_util.tree_leaves(model)
    if not leaves:
        raise ValueError("the model has no data to shard (build it with data=...)")
    for x in leaves:
        if np.ndim(x) and np.shape(x)[0] % num_devices:
            raise ValueError(f"a data leaf of shape {np.shape(x)} has a leading axis not divisible by the "
                             f"{num_devices} devices; drop or pad rows (padding with zero-weight rows keeps the "
                             "likelihood unchanged) first")

    def place(x):
        return jax.device_put(x, sharded if np.ndim(x) else replicated)

    return jax.tree_util.tree_map(place, model)
