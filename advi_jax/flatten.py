"""The ADVI change of variables: a dict of constrained parameters <-> one flat vector in R^K.

`Model` pairs a log joint on the constrained space with a dict of supports and exposes

    log_density(zeta) = log p(x, T^{-1}(zeta)) + log|det J_{T^{-1}}(zeta)|,   zeta in R^K,

with `to_constrained`, `to_unconstrained` and `dim = K`. Parameters are laid out in the flat
vector in the order of the `support` dict, each as its unconstrained event flattened row-major.
The change of variables itself is one `bijectors.Joint` over the supports' bijectors
(`Model.bijector`), so the layout and the log-det live in a single implementation.

A `Model` is a pytree whose only leaves are its `data`: pass data through `data=` (the log
joint is then called as `log_joint(params, data)`), and jitted functions that take the model
as an argument receive the data as arguments rather than baking them in as constants (which
makes compilation slow for large data), and `jax.vmap` can map over a batch of datasets.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from advi_jax._types import Array, ArrayLike, PyTree, check_positive_int, common_leading_size
from advi_jax.bijectors import Joint
from advi_jax.supports import Support

__all__ = ["Model", "MinibatchModel"]


def _joint(support: Mapping[str, Support]) -> Joint:
    """The block bijector R^K -> dict of constrained parameters for a dict of supports."""
    return Joint(
        {n: s.bijector for n, s in support.items()},
        {n: s.event_shape for n, s in support.items()},
        {n: s.batch_shape for n, s in support.items()},
    )


@jax.tree_util.register_pytree_node_class
class Model:
    """A differentiable model on constrained parameters, viewed on R^K.

    Args:
      log_joint: `log_joint(params)` (or `log_joint(params, data)` when `data` is given)
        returning the scalar unnormalised log p(x, z); `params` maps names to constrained arrays.
      support: dict mapping each parameter name to its `Support` (e.g. `aj.positive()`).
      data: optional pytree of arrays handed to `log_joint` as its second argument.

    Example:
      >>> import jax.numpy as jnp, advi_jax as aj
      >>> m = aj.Model(lambda p: -0.5 * jnp.sum(p["mu"] ** 2) - p["sigma"],
      ...              support={"mu": aj.real((2,)), "sigma": aj.positive()})
      >>> m.dim
      3
    """

    def __init__(self, log_joint: Callable, support: Mapping[str, Support], data: PyTree = None):
        if not callable(log_joint):
            raise TypeError(f"log_joint must be callable, got {type(log_joint).__name__}")
        if not isinstance(support, Mapping) or len(support) == 0:
            raise TypeError("support must be a non-empty dict mapping parameter names to supports, "
                            f"e.g. {{'beta': aj.real((3,))}}, got {support!r}")
        for name, s in support.items():
            if not isinstance(name, str):
                raise TypeError(f"support keys must be parameter names (str), got {name!r}")
            if not isinstance(s, Support):
                raise TypeError(f"support for {name!r} must be an advi_jax Support such as aj.real() "
                                f"or aj.positive(), got {type(s).__name__}")
            if not s.continuous:
                raise ValueError(f"support for {name!r} is {s.name}, which is discrete; ADVI needs continuous "
                                 "supports (marginalise the parameter out)")
        self.log_joint = log_joint
        self.support = dict(support)
        self.data = data
        self._setup()

    def _setup(self) -> None:
        self.bijector = _joint(self.support)
        sizes = [s.unconstrained_size for s in self.support.values()]
        self._offsets = tuple(int(o) for o in np.cumsum([0] + sizes))

    # --- pytree protocol: data are leaves, everything else is static ---
    def tree_flatten(self):
        return (self.data,), (self.log_joint, tuple(self.support.items()))

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        obj.log_joint, items = aux
        obj.support = dict(items)
        obj.data = children[0]
        obj._setup()
        return obj

    # --- layout ---
    @property
    def dim(self) -> int:
        """K, the length of the flat unconstrained vector."""
        return self._offsets[-1]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.support)

    def slices(self) -> dict[str, slice]:
        """Where each parameter's unconstrained values sit in the flat vector."""
        return {n: slice(self._offsets[i], self._offsets[i + 1]) for i, n in enumerate(self.support)}

    def _check_zeta(self, zeta: ArrayLike) -> Array:
        zeta = jnp.asarray(zeta)
        if zeta.ndim != 1 or zeta.shape[0] != self.dim:
            raise ValueError(f"zeta must have shape ({self.dim},) (one flat unconstrained vector; use jax.vmap "
                             f"for a batch), got {zeta.shape}")
        if not jnp.issubdtype(zeta.dtype, jnp.floating):
            zeta = zeta.astype(jnp.result_type(float))
        return zeta

    # --- transforms ---
    def unflatten(self, zeta: ArrayLike) -> dict[str, Array]:
        """Split a flat (K,) vector into unconstrained arrays of shape batch + unconstrained event."""
        return self.bijector.split(self._check_zeta(zeta))

    def to_constrained_and_log_det(self, zeta: ArrayLike) -> tuple[dict[str, Array], Array]:
        """(constrained params, log|det J_{T^{-1}}(zeta)|) for one flat (K,) vector."""
        return self.bijector.forward_and_log_det(self._check_zeta(zeta))

    def to_constrained(self, zeta: ArrayLike) -> dict[str, Array]:
        """Map a flat (K,) vector to a dict of constrained parameters."""
        return self.to_constrained_and_log_det(zeta)[0]

    def to_unconstrained(self, params: Mapping[str, ArrayLike]) -> Array:
        """Map a dict of constrained parameters to the flat (K,) vector.

        Raises:
          ValueError: a missing or unknown name, a wrong shape, or (for concrete values) a value
            outside its support.
        """
        self._check_params(params)
        return _to_unconstrained(self, {name: params[name] for name in self.support})

    def _check_params(self, params: Mapping[str, ArrayLike]) -> None:
        """Raise unless `params` has exactly the model's names, their shapes and (concrete) values in support."""
        if not isinstance(params, Mapping):
            raise TypeError(f"params must be a dict of constrained values, got {type(params).__name__}")
        missing = [n for n in self.support if n not in params]
        extra = [n for n in params if n not in self.support]
        if missing or extra:
            raise ValueError(f"params must have exactly the names {list(self.support)}; "
                             f"missing {missing}, unknown {extra}")
        for name, s in self.support.items():
            value = params[name]
            if np.shape(value) != s.shape:
                raise ValueError(f"{name!r} must have shape {s.shape} for support {s.name}, got {np.shape(value)}")
            s.check(value, name)

    def log_joint_at(self, params: Mapping[str, Array]) -> Array:
        """The user's log joint at constrained `params` (passes `data` when the model has it)."""
        return self.log_joint(params) if self.data is None else self.log_joint(params, self.data)

    def log_density(self, zeta: ArrayLike) -> Array:
        """log p(x, T^{-1}(zeta)) + log|det J_{T^{-1}}(zeta)| for one flat (K,) vector (vmap for batches).

        Evaluated through one jitted function (`_log_density`): a program that calls the log
        density in several places (a line search, ELBO draws, a gradient) traces the user's log
        joint once, and vmap and grad transform that trace instead of tracing it again.
        """
        return _log_density(self, self._check_zeta(zeta))

    def log_density_uncached(self, zeta: ArrayLike) -> Array:
        """`log_density` traced afresh (not through the cached jitted function); the start-up shape
        check uses it, so a later compilation traces the user's log joint again."""
        params, log_det = self.to_constrained_and_log_det(zeta)
        return self.log_joint_at(params) + log_det

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}: {s.name}{list(s.shape)}" for n, s in self.support.items())
        return f"Model(dim={self.dim}, {{{inner}}})"


@jax.jit
def _log_density(model: Model, zeta: Array) -> Array:
    return model.log_density_uncached(zeta)


@jax.jit
def _to_unconstrained(model: Model, params: dict[str, Array]) -> Array:
    # One compiled program: run eagerly, the inverse bijectors' many small operations are each
    # compiled and dispatched on their own (seconds for a model with a dozen supports).
    return model.bijector.inverse(params)


# ----------------------------------------------------------------------------------------------
# A model with a per-datum likelihood (minibatch fits, `aj.fit_minibatch`)


@dataclasses.dataclass(frozen=True)
class _FullLogJoint:
    """log_prior(params) + sum log_likelihood(params, data): the full-data log joint."""

    log_prior: Callable
    log_likelihood: Callable

    def __call__(self, params, data):
        return self.log_prior(params) + jnp.sum(self.log_likelihood(params, data))


@dataclasses.dataclass(frozen=True)
class _PriorOnly:
    """log_prior(params), as a log joint without data."""

    log_prior: Callable

    def __call__(self, params):
        return self.log_prior(params)


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
        """K, the length of the flat unconstrained vector (read from the supports; no data needed)."""
        return Model(_FullLogJoint(self.log_prior, self.log_likelihood), self.support, data=None).dim

    def prior_model(self) -> Model:
        """The `Model` of the prior alone, log_prior(params) (its log density has the Jacobian)."""
        return Model(_PriorOnly(self.log_prior), self.support, data=None)

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
