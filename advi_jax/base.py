"""The contracts every algorithm, driver and result shares, as data.

This module imports nothing from the rest of the package except `_types`, so every other
module may import it. It holds:

* `LogDensity`: what an algorithm needs of a model: `dim` (K) and `log_density(zeta)` on R^K,
  Jacobian included. `aj.Model` satisfies it, and so does any object with those two members
  (a whitened view of a model, a model with a minibatch bound in).
* `StepInfo`: what one step of any algorithm reports to the driver.
* `VIAlgorithm`: the `(init, step, params)` triple every algorithm file in `advi_jax/vi/`
  returns. The driver (`advi_jax/run/`) owns the loop; an algorithm never does.

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

from typing import Any, Callable, NamedTuple, Protocol, runtime_checkable

import jax.numpy as jnp

from advi_jax._types import Array

__all__ = ["LogDensity", "StepInfo", "VIAlgorithm", "step_info"]


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
