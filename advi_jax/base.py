"""The contracts every algorithm, driver and result shares, as data.

This module imports nothing from the rest of the package except `_types`, so every other
module may import it. It holds:

* `LogDensity`: what an algorithm needs of a model: `dim` (K) and `log_density(zeta)` on R^K,
  Jacobian included. `aj.Model` satisfies it, and so does any object with those two members
  (a whitened view of a model, a model with a minibatch bound in).
* `StepInfo`: what one step of any algorithm reports to the driver.
* `VIAlgorithm`: the `(init, step, params)` triple every algorithm file in `advi_jax/vi/`
  returns. The driver (`advi_jax/run/`) owns the loop; an algorithm never does.
* `Family`: the abstract variational family (required methods marked abstract, capabilities
  declared as class attributes: `affine_closed`, `params_type`); the concrete Gaussians live in
  `advi_jax.families`.
* `Estimator`: a gradient estimator's record in the registry of `advi_jax.estimators`.
* `FitState`: the state of a stochastic-gradient algorithm (ADVI) over optax.

An algorithm is a function `build(model, family, options) -> VIAlgorithm`, called inside the
driver's jitted function (so `model`'s data are traced arguments and `options` is a static,
hashable NamedTuple of the method's settings):

* `state = init(key, loc)`: the starting state; `loc` is a (K,) location in R^K.
* `state, info = step(key, state)`: one iteration; `info` is a `StepInfo`. A stochastic method
  reports `converged=False` and is stopped by the step budget or the driver's relative-ELBO
  rule; a deterministic method (Newton, L-BFGS) reports its own convergence test, and a
  one-shot method (Pathfinder) does all its work in one step and reports `converged=True`.
* `params(state)`: the family's variational parameters in that state (a pytree the `Family`
  understands), from which the result is built.
* `extras(state)` (optional, may be None): method-specific outputs computed once from the final
  state, as a dict of arrays (e.g. DADVI's linear-response covariance and Monte Carlo standard
  errors); the result exposes them as `result.extras`.

Costs are counted by the algorithm, since only it knows them: `num_grad_evals` is the number of
gradients of the log density the step evaluated (a value-and-gradient call counts once),
`num_logp_evals` the number of log-density values evaluated without a gradient (e.g. the
ELBO of a candidate in a line search). A Hessian-vector product counts as two gradients.
"""

from __future__ import annotations

import abc
import math
from typing import Any, Callable, ClassVar, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

from advi_jax._types import Array, ArrayLike, PyTree, check_positive_int, is_concrete

__all__ = ["LogDensity", "StepInfo", "VIAlgorithm", "step_info", "Family", "Estimator", "FitState"]


@runtime_checkable
class LogDensity(Protocol):
    """A log density on R^K: `dim` is K, `log_density` maps a (K,) vector to a scalar."""

    @property
    def dim(self) -> int: ...

    def log_density(self, zeta: Array) -> Array: ...


class StepInfo(NamedTuple):
    """What one step of an algorithm reports.

    Attributes:
      elbo: the step's ELBO (an estimate for stochastic methods, the objective's value for
        deterministic ones); NaN or inf when the step was not finite.
      finite: whether the step's ELBO and update were finite (the update was applied).
      num_grad_evals: int32, gradients of the log density this step evaluated.
      num_logp_evals: int32, log-density values evaluated without a gradient.
      converged: whether the algorithm's own convergence test passed at this step (always
        False for stochastic-gradient methods).
    """

    elbo: Array
    finite: Array
    num_grad_evals: Array
    num_logp_evals: Array
    converged: Array


def step_info(elbo: Array, finite: Array, num_grad_evals: Any = 0, num_logp_evals: Any = 0,
              converged: Any = False) -> StepInfo:
    """Build a `StepInfo` with the counters as int32 and the flags as bool scalars."""
    return StepInfo(elbo, jnp.asarray(finite, bool), jnp.asarray(num_grad_evals, jnp.int32),
                    jnp.asarray(num_logp_evals, jnp.int32), jnp.asarray(converged, bool))


class VIAlgorithm(NamedTuple):
    """An algorithm as three pure functions; see the module docstring.

    Attributes:
      init: `(key, loc) -> state`.
      step: `(key, state) -> (state, StepInfo)`.
      params: `state -> ` the family's variational parameters.
      extras: `state -> dict` of method-specific outputs, or None.
    """

    init: Callable[[Array, Array], Any]
    step: Callable[[Array, Any], tuple[Any, StepInfo]]
    params: Callable[[Any], Any]
    extras: Callable[[Any], dict] | None = None


class FitState(NamedTuple):
    """State of a stochastic-gradient algorithm (ADVI): parameters, optimiser state, counters.

    Attributes:
      params: the family's variational parameters.
      opt_state: the optimiser's state.
      step: number of steps taken (int32 scalar).
      num_nonfinite: total steps skipped because the ELBO or gradient was not finite.
      consecutive_nonfinite: skipped steps in a row up to now.
    """

    params: PyTree
    opt_state: PyTree
    step: Array
    num_nonfinite: Array
    consecutive_nonfinite: Array


class Estimator(NamedTuple):
    """A gradient estimator as registered in `advi_jax.estimators.REGISTRY`.

    Attributes:
      name: the `estimator=` string that selects it.
      fn: `(family, log_density, params, key, num_samples) -> (surrogate, aux)`; `jax.grad` of
        the surrogate is the estimator, `aux.elbo` the step's ELBO estimate.
      min_num_samples: the fewest draws per step it accepts (2 for a leave-one-out baseline).
    """

    name: str
    fn: Callable
    min_num_samples: int = 1


class Family(abc.ABC):
    """A variational family on R^K: pure functions of a parameter pytree.

    Subclasses implement the abstract methods and DECLARE what they can do:

    * `affine_closed`: True when the pushforward of q through zeta -> shift + S zeta is again in
      the family (`transform` implements it); for the mean-field and low-rank Gaussians, S diagonal
      (their starts whiten by a diagonal S). The driver runs a method in Laplace-whitened
      coordinates only for such families; nothing compares methods to find out.
    * `params_type`: the NamedTuple of its parameters (its parameter layout).

    `mean(params)` is the only accessor of the location a loop may use (no `.loc`); `sample`
    and `covariance`/`variance` have generic implementations a family may override.
    """

    name: str = "family"
    affine_closed: ClassVar[bool] = False
    params_type: ClassVar[type | None] = None

    @abc.abstractmethod
    def init(self, key: Array, dim: int, *, loc: ArrayLike | None = None, scale: float = 0.1, dtype=None):
        """Parameters of q with mean `loc` (default zeros) and scales `scale`."""

    @abc.abstractmethod
    def sample_standard(self, params, noise: Array) -> Array:
        """Map standard-normal `noise` of shape (..., noise dim) to draws of q, shape (..., K)."""

    @abc.abstractmethod
    def log_prob(self, params, zeta: ArrayLike) -> Array:
        """log q(zeta) for zeta of shape (..., K); returns shape (...)."""

    @abc.abstractmethod
    def entropy(self, params) -> Array:
        """The entropy of q (closed form)."""

    @abc.abstractmethod
    def scale_tril(self, params) -> Array:
        """(K, K) a lower-triangular factor of the covariance."""

    def mean(self, params) -> Array:
        """(K,) mean of q (the declared location accessor; the default reads `params.loc`)."""
        return params.loc

    def sample(self, params, key: Array, num_samples: int) -> Array:
        """`num_samples` reparameterised draws, shape (num_samples, K)."""
        loc = self.mean(params)
        noise = jax.random.normal(key, (num_samples,) + loc.shape, loc.dtype)
        return self.sample_standard(params, noise)

    def covariance(self, params) -> Array:
        """(K, K) covariance of q."""
        L = self.scale_tril(params)
        return L @ L.T

    def variance(self, params) -> Array:
        """(K,) marginal variances: the row sums of L^2 (L = `scale_tril`), the diagonal of L L^T
        without the (K, K, K) product of forming it."""
        return jnp.sum(self.scale_tril(params) ** 2, axis=-1)

    def transform(self, params, shift: Array, scale_tril: Array):
        """Parameters of the pushforward of q through zeta -> shift + scale_tril @ zeta.

        Only families that declare `affine_closed = True` implement it.
        """
        raise TypeError(f"family {self.name!r} does not support affine reparameterisation (init='laplace')")

    def _check_init(self, dim, loc, scale, dtype):
        dim = check_positive_int(dim, "dim")
        if isinstance(scale, bool) or not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive finite number, got {scale!r}")
        try:
            dtype = jnp.dtype(dtype) if dtype is not None else jnp.result_type(float)
        except TypeError:
            raise TypeError(f"dtype must be a float dtype such as jnp.float32, got {dtype!r}") from None
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"dtype must be a float dtype such as jnp.float32, got {dtype}")
        if loc is None:
            loc = jnp.zeros((dim,), dtype)
        else:
            loc = jnp.asarray(loc, dtype)
            if loc.shape != (dim,):
                raise ValueError(f"loc must have shape ({dim},), got {loc.shape}")
            if is_concrete(loc) and not bool(jnp.all(jnp.isfinite(loc))):
                raise ValueError(f"loc must be finite, got {loc.tolist()}")
        return dim, loc, dtype
