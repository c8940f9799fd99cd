"""ELBO surrogates: scalar functions whose value is an ELBO estimate and whose gradient with
respect to the variational parameters is a chosen gradient estimator.

All estimators draw `num_samples` samples at once and evaluate the log density with `jax.vmap`
(no Python loop). With `f(zeta) = log p(zeta) - log q(zeta)` (log p the model's log density on
R^K, Jacobian included) and the ELBO `L = E_q[f]`:

* ``reparam`` -- pathwise: zeta = loc + L eps, L = mean log p(zeta) + H[q] (closed form). The default.
* ``stl`` -- "sticking the landing" (Roeder, Wu & Duvenaud 2017): pathwise on
  mean(log p(zeta) - log q_{stop}(zeta)), where q's parameters are held fixed (stop-gradient)
  inside log q but not inside the sample path. The dropped term, the score of q, has expectation
  zero, so the estimator stays unbiased, and its variance vanishes when q equals the posterior.
* ``reparam_mc_entropy`` -- pathwise on mean(log p(zeta) - log q(zeta)): the entropy estimated by
  Monte Carlo with gradients through both the path and q's parameters.
* ``score`` -- REINFORCE / score function (Williams 1992; Ranganath, Gerrish & Blei 2014):
  mean(f(zeta) grad log q(zeta)) with the draws held fixed. Needs no gradient of log p.
* ``score_baseline`` -- the score function with a leave-one-out baseline: each draw's f is
  centred by the mean of the *other* draws' f (Kool, van Hoof & Welling 2019), which keeps the
  estimator unbiased (the baseline is independent of the draw it multiplies) without any state
  carried between steps. Needs `num_samples >= 2`.

Each estimator has signature `(family, log_density, params, key, num_samples) -> (surrogate, aux)`
with `aux` an `EstimatorInfo`; `jax.grad` of the surrogate (first output) is the estimator.

Example:
  >>> import jax, jax.numpy as jnp, advi_jax as aj
  >>> fam = aj.MeanFieldGaussian()
  >>> params = fam.init(jax.random.key(0), 2)
  >>> log_density = lambda z: -0.5 * jnp.sum(z ** 2)
  >>> grads = jax.grad(lambda p: aj.elbo_surrogate("stl", fam, log_density, p, jax.random.key(1), 8)[0])(params)
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from advi_jax._types import Array
from advi_jax.base import Estimator, Family

__all__ = ["ESTIMATORS", "REGISTRY", "EstimatorInfo", "elbo_surrogate", "get_estimator", "min_num_samples"]

LogDensity = Callable[[Array], Array]


class EstimatorInfo(NamedTuple):
    """Auxiliary output of an estimator.

    Attributes:
      elbo: scalar ELBO estimate from this step's draws.
    """

    elbo: Array


def _stop(tree):
    return jax.tree_util.tree_map(jax.lax.stop_gradient, tree)


def _draws(family: Family, params, key, num_samples):
    return family.sample(params, key, num_samples)


def reparam(family: Family, log_density: LogDensity, params, key: Array, num_samples: int):
    """Pathwise gradient, closed-form entropy."""
    zeta = _draws(family, params, key, num_samples)
    elbo = jnp.mean(jax.vmap(log_density)(zeta)) + family.entropy(params)
    return elbo, EstimatorInfo(elbo)


def stl(family: Family, log_density: LogDensity, params, key: Array, num_samples: int):
    """Sticking the landing: pathwise with the score term of log q removed."""
    zeta = _draws(family, params, key, num_samples)
    f = jax.vmap(log_density)(zeta) - family.log_prob(_stop(params), zeta)
    elbo = jnp.mean(f)
    return elbo, EstimatorInfo(elbo)


def reparam_mc_entropy(family: Family, log_density: LogDensity, params, key: Array, num_samples: int):
    """Pathwise with a Monte Carlo entropy (gradients through path and parameters)."""
    zeta = _draws(family, params, key, num_samples)
    elbo = jnp.mean(jax.vmap(log_density)(zeta) - family.log_prob(params, zeta))
    return elbo, EstimatorInfo(elbo)


def _score_terms(family, log_density, params, key, num_samples):
    zeta = jax.lax.stop_gradient(_draws(family, params, key, num_samples))
    log_q = family.log_prob(params, zeta)
    f = jax.lax.stop_gradient(jax.vmap(log_density)(zeta) - log_q)
    return f, log_q


def _with_value(value: Array, grad_term: Array) -> Array:
    """A scalar equal to `value` whose gradient is the gradient of `grad_term`."""
    return jax.lax.stop_gradient(value) + grad_term - jax.lax.stop_gradient(grad_term)


def score(family: Family, log_density: LogDensity, params, key: Array, num_samples: int):
    """Score-function (REINFORCE) estimator without a baseline."""
    f, log_q = _score_terms(family, log_density, params, key, num_samples)
    elbo = jnp.mean(f)
    return _with_value(elbo, jnp.mean(f * log_q)), EstimatorInfo(elbo)


def score_baseline(family: Family, log_density: LogDensity, params, key: Array, num_samples: int):
    """Score-function estimator with a leave-one-out baseline (needs num_samples >= 2)."""
    f, log_q = _score_terms(family, log_density, params, key, num_samples)
    elbo = jnp.mean(f)
    baseline = (jnp.sum(f) - f) / (num_samples - 1)
    return _with_value(elbo, jnp.mean((f - baseline) * log_q)), EstimatorInfo(elbo)


REGISTRY: dict[str, Estimator] = {
    e.name: e for e in (
        Estimator("reparam", reparam),
        Estimator("stl", stl),
        Estimator("reparam_mc_entropy", reparam_mc_entropy),
        Estimator("score", score),
        Estimator("score_baseline", score_baseline, min_num_samples=2),
    )
}
"""Every estimator as an `advi_jax.base.Estimator` record (name, function, minimum draws)."""

ESTIMATORS: dict[str, Callable] = {name: e.fn for name, e in REGISTRY.items()}
"""Name -> function view of `REGISTRY` (the public mapping `aj.ESTIMATORS`)."""


def min_num_samples(name: str) -> int:
    """The smallest `num_samples` an estimator accepts."""
    return REGISTRY[name].min_num_samples if name in REGISTRY else 1


def get_estimator(name: str | Callable) -> Callable:
    """Resolve an estimator name (see `ESTIMATORS`), or pass a callable through."""
    if callable(name):
        return name
    if isinstance(name, str) and name in ESTIMATORS:
        return ESTIMATORS[name]
    raise ValueError(f"estimator must be one of {sorted(ESTIMATORS)} or a callable, got {name!r}")


def elbo_surrogate(estimator: str | Callable, family: Family, log_density: LogDensity, params, key: Array,
                   num_samples: int = 1):
    """`(surrogate, aux)` for the named estimator; `jax.grad` of `surrogate` is the estimator.

    Args:
      estimator: a name in `ESTIMATORS` or a callable with the same signature.
      family: a `Family` (e.g. `MeanFieldGaussian()`).
      log_density: function (K,) -> scalar, the model's log density on R^K.
      params: the family's parameters.
      key: PRNG key for the draws.
      num_samples: number of draws (static).

    Returns:
      surrogate: scalar ELBO estimate whose gradient is the estimator.
      aux: `EstimatorInfo`.
    """
    from advi_jax._types import check_positive_int

    if not (isinstance(estimator, str) or callable(estimator)):
        raise TypeError(f"estimator must be one of {sorted(ESTIMATORS)} or a callable, got {type(estimator).__name__}")
    if isinstance(estimator, str) and estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {sorted(ESTIMATORS)} or a callable, got {estimator!r}")
    if not isinstance(family, Family):
        raise TypeError(f"family must be a Family such as aj.MeanFieldGaussian(), got {type(family).__name__}")
    if not callable(log_density):
        raise TypeError(f"log_density must be a function (K,) -> scalar, got {type(log_density).__name__}")
    if not (isinstance(key, jax.Array) and (jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ()
                                            or key.dtype == jnp.uint32 and key.shape == (2,))):
        raise TypeError(f"key must be a single PRNG key such as jax.random.key(0), got {type(key).__name__}"
                        f"{getattr(key, 'shape', '')}")
    num_samples = check_positive_int(num_samples, "num_samples")
    if isinstance(estimator, str) and num_samples < min_num_samples(estimator):
        raise ValueError(f"estimator {estimator!r} needs num_samples >= {min_num_samples(estimator)}, got {num_samples}")
    return get_estimator(estimator)(family, log_density, params, key, num_samples)
