"""Amortized Gaussian family, VAE objectives (ELBO, IWAE-K) and encoder gradient estimators.

Notation, for one image x with encoder output q(z | x), decoder p(x | z) and prior
p(z) = N(0, I_L); K draws z_k = loc(x) + L(x) eps_k and log-weights
`log w_k = log p(x | z_k) + log p(z_k) - log q(z_k | x)`:

* ELBO:  E_q[log p(x | z)] - KL(q(z | x) || p(z)), the KL either in closed form
  (`kl="analytic"`) or by Monte Carlo, mean_k(log q(z_k) - log p(z_k)) (`kl="mc"`).
* IWAE-K (Burda, Grosse & Salakhutdinov 2016): log (1/K) sum_k w_k, a bound that tightens
  with K and equals the (K-sample) ELBO at K = 1.

Every objective is turned into a *surrogate* whose value is the bound and whose gradient is the
chosen estimator (the advi_jax convention of `estimators.py`):

* ``reparam``: pathwise gradient of the bound as written.
* ``stl`` ("sticking the landing", Roeder, Wu & Duvenaud 2017): the encoder's parameters are
  held fixed (stop-gradient on the family parameters it outputs) inside log q, but not in the
  sample path. Unbiased for the ELBO (needs the Monte Carlo KL form); for IWAE-K it is biased
  (Tucker et al. 2019), and is provided for comparison only.
* ``dreg`` (doubly reparameterized gradients, Tucker, Lawson, Gu & Maddison 2019), IWAE only:
  the encoder receives sum_k w~_k^2 d log w_k / d z_k  d z_k / d phi with q's parameters stopped
  inside log q (w~ the normalised weights), and the decoder the usual IWAE gradient
  sum_k w~_k grad_theta log w_k. Implemented by scaling the cotangent of each z_k by
  stop_gradient(w~_k) on the way back (the log-sum-exp already contributes the other factor),
  which needs one extra forward pass of the decoder to compute w~.

The batch of encoder outputs is handled by `AmortizedFamily`, which `jax.vmap`s the per-point
`advi_jax.families` methods (sampling, log_prob, entropy) over the batch axis; there is no second
Gaussian implementation here.

References:
  Kingma & Welling (2014), Auto-encoding variational Bayes.
  Burda, Grosse & Salakhutdinov (2016), Importance weighted autoencoders.
  Roeder, Wu & Duvenaud (2017), Sticking the landing.
  Tucker, Lawson, Gu & Maddison (2019), Doubly reparameterized gradient estimators for Monte
  Carlo objectives.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from advi_jax._types import Array, PyTree
from advi_jax.families import Family, get_family

__all__ = [
    "AMORTIZED_ESTIMATORS",
    "ESTIMATORS",
    "AmortizedFamily",
    "LossMetrics",
    "Objective",
    "bound_surrogate",
    "log_weights",
    "make_loss",
    "parse_objective",
    "per_example_bound",
    "standard_normal_log_prob",
]

AMORTIZED_ESTIMATORS: dict[str, str] = {
    "reparam": "pathwise through z = loc(x) + L(x) eps, every term differentiated (as "
               "advi_jax.estimators 'reparam'; with kl='mc' as 'reparam_mc_entropy')",
    "stl": "pathwise with q's parameters held fixed inside log q (as advi_jax.estimators 'stl'; "
           "biased for iwae-K, K > 1)",
    "score": "score function with the draws held fixed (as advi_jax.estimators 'score'); for "
             "iwae-K it adds the bound's explicit dependence on q, which has nonzero mean for K > 1",
    "dreg": "doubly reparameterised (Tucker et al. 2019), iwae-K only: unbiased, zero variance at "
            "the exact posterior",
}
"""The VAE-side estimator registry: the names of `advi_jax.estimators.ESTIMATORS` that apply to an
amortized bound, with the same meanings, plus "dreg" (which needs the importance-weighted bound)."""

ESTIMATORS = ("reparam", "stl", "dreg")
"""The estimators `make_loss` trains with (a subset of `AMORTIZED_ESTIMATORS`)."""

_LOG_2PI = math.log(2.0 * math.pi)


def _check_registry() -> None:
    from advi_jax.estimators import ESTIMATORS as CORE

    shared = set(AMORTIZED_ESTIMATORS) - {"dreg"}
    missing = shared - set(CORE)
    if missing or not set(ESTIMATORS) <= set(AMORTIZED_ESTIMATORS):
        raise ImportError(f"VAE estimator names {sorted(missing)} are not in advi_jax.estimators.ESTIMATORS")


_check_registry()


def _stop(tree):
    return jax.tree_util.tree_map(jax.lax.stop_gradient, tree)


@dataclasses.dataclass(frozen=True)
class AmortizedFamily:
    """A Gaussian family whose parameters carry a leading batch axis B (one q per data point).

    Every method `jax.vmap`s the corresponding `advi_jax.families.Family` method over B (and,
    for draws, over the K samples too, so each call sees single-event shapes).

    Attributes:
      family: the per-point family (`MeanFieldGaussian` or `FullRankGaussian`).
    """

    family: Family

    def sample_standard(self, params, noise: Array) -> Array:
        """Draws loc + L eps: params with leading axis B, noise (B, K, L) -> (B, K, L)."""
        per_point = jax.vmap(self.family.sample_standard, in_axes=(None, 0))  # over K
        return jax.vmap(per_point)(params, noise)

    def sample(self, params, key: Array, num_samples: int) -> Array:
        """`num_samples` reparameterised draws per data point, shape (B, K, L)."""
        loc = params.loc
        noise = jax.random.normal(key, loc.shape[:1] + (num_samples,) + loc.shape[1:], loc.dtype)
        return self.sample_standard(params, noise)

    def log_prob(self, params, z: Array) -> Array:
        """log q(z | x) for z (B, K, L) -> (B, K)."""
        per_point = jax.vmap(self.family.log_prob, in_axes=(None, 0))  # over K
        return jax.vmap(per_point)(params, z)

    def entropy(self, params) -> Array:
        """Closed-form entropies, shape (B,)."""
        return jax.vmap(self.family.entropy)(params)

    def kl_to_standard_normal(self, params) -> Array:
        """Closed-form KL(q(z | x) || N(0, I)), shape (B,).

        KL = -H[q] + (tr Sigma + |mu|^2 + L log 2 pi) / 2.
        """

        def one(p):
            quad = jnp.sum(self.family.variance(p)) + jnp.sum(p.loc * p.loc)
            return -self.family.entropy(p) + 0.5 * (quad + p.loc.shape[-1] * _LOG_2PI)

        return jax.vmap(one)(params)


def standard_normal_log_prob(z: Array) -> Array:
    """log N(z | 0, I) summed over the last axis: (..., L) -> (...)."""
    return -0.5 * jnp.sum(z * z, axis=-1) - 0.5 * z.shape[-1] * _LOG_2PI


@dataclasses.dataclass(frozen=True)
class Objective:
    """A training objective and its gradient estimator (static configuration).

    Attributes:
      kind: "elbo" or "iwae".
      num_samples: K, draws per data point (>= 1).
      estimator: "reparam", "stl" or "dreg" (IWAE only).
      kl: "analytic" or "mc" (ELBO only; "stl" needs "mc"); None picks "analytic" for
        reparam and "mc" for stl.
    """

    kind: str = "elbo"
    num_samples: int = 1
    estimator: str = "reparam"
    kl: str | None = None

    def __post_init__(self):
        if self.kind not in ("elbo", "iwae"):
            raise ValueError(f"objective kind must be 'elbo' or 'iwae', got {self.kind!r}")
        if isinstance(self.num_samples, bool) or not isinstance(self.num_samples, int) or self.num_samples < 1:
            raise ValueError(f"num_samples must be an int >= 1, got {self.num_samples!r}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {list(ESTIMATORS)}, got {self.estimator!r}")
        if self.estimator == "dreg" and self.kind != "iwae":
            raise ValueError("estimator 'dreg' applies to iwae-K objectives; for the ELBO use 'stl', "
                             "which DReG reduces to at K = 1")
        kl = self.kl
        if kl is None:
            kl = "analytic" if (self.kind == "elbo" and self.estimator == "reparam") else "mc"
        if kl not in ("analytic", "mc"):
            raise ValueError(f"kl must be 'analytic' or 'mc', got {kl!r}")
        if kl == "analytic" and (self.kind != "elbo" or self.estimator != "reparam"):
            raise ValueError(f"kl='analytic' applies to the ELBO with the reparam estimator only "
                             f"(got {self.kind} with {self.estimator}); use kl='mc'")
        object.__setattr__(self, "kl", kl)

    @property
    def name(self) -> str:
        return self.kind if (self.kind == "elbo" and self.num_samples == 1) else f"{self.kind}-{self.num_samples}"


def parse_objective(text: str, estimator: str = "reparam", kl: str | None = None) -> Objective:
    """Parse "elbo", "elbo-K" (a K-sample ELBO) or "iwae-K" into an `Objective`.

    Raises:
      ValueError: for any other spelling, naming the accepted forms.
    """
    match = re.fullmatch(r"(elbo|iwae)(?:-(\d+))?", str(text).strip().lower())
    if not match or (match.group(1) == "iwae" and match.group(2) is None):
        raise ValueError(f"objective must be 'elbo', 'elbo-K' or 'iwae-K' with K a positive integer "
                         f"(e.g. 'iwae-5'), got {text!r}")
    k = int(match.group(2)) if match.group(2) else 1
    if k < 1:
        raise ValueError(f"objective {text!r}: K must be >= 1")
    return Objective(match.group(1), k, estimator, kl)


def log_weights(vae, q_params, z: Array, x: Array, *, stop_q: bool = False) -> Array:
    """Importance log-weights log p(x | z) + log p(z) - log q(z | x).

    Args:
      vae: a merged `VAE` module.
      q_params: encoder output with leading batch axis B.
      z: (B, K, L) latent draws.
      x: (B, D) data.
      stop_q: hold q's parameters fixed inside log q (STL / DReG).

    Returns:
      (B, K) log-weights.
    """
    family = AmortizedFamily(get_family(vae.config.family))
    log_px = vae.decoder.log_prob(z, x[:, None, :])
    qp = _stop(q_params) if stop_q else q_params
    return log_px + standard_normal_log_prob(z) - family.log_prob(qp, z)


def _scale_cotangent(z: Array, scale: Array) -> Array:
    """Identity on values; multiplies the cotangent of z (B, K, L) by scale (B, K)."""
    z_stop = jax.lax.stop_gradient(z)
    return z_stop + scale[..., None] * (z - z_stop)


def bound_surrogate(log_weight_fn: Callable[[Array, bool], Array], z: Array, kind: str, estimator: str,
                    log_q_fn: Callable[[Array], Array] | None = None) -> Array:
    """Per-data-point surrogate of an ELBO or IWAE-K bound whose gradient is `estimator`.

    The one implementation of the amortized estimators (the VAE's objectives and the variance
    studies of `advi_jax.gradient_variance` both call it). With K draws `z` (B, K, L)
    reparameterised from the parameters and `log w_k = log_weight_fn(z, stop_q)`:

    * reparam: the bound as written; stl: the same with q's parameters stopped in log q;
    * dreg (iwae only): z's cotangent is scaled by the stopped normalised weights w~_k, so the
      encoder gets sum_k w~_k^2 d log w_k / dz dz/dphi and the decoder sum_k w~_k grad log w_k;
    * score: z held fixed; elbo: mean_k stop(log w_k) log q(z_k); iwae:
      stop(bound) sum_k log q(z_k) + bound(z fixed).

    Args:
      log_weight_fn: `(z, stop_q) -> (B, K)` log-weights log p(x, z) - log q(z | x), with q's
        parameters held fixed inside log q when `stop_q`.
      z: (B, K, L) reparameterised draws.
      kind: "elbo" (mean of log w over K) or "iwae" (log mean of w).
      estimator: a name in `AMORTIZED_ESTIMATORS`.
      log_q_fn: `z -> (B, K)` log q(z | x) (needed for "score").

    Returns:
      (B,) surrogate whose value is the bound (the score surrogate's value is the bound too).

    Raises:
      ValueError: an unknown estimator or kind, dreg with kind "elbo", score without log_q_fn.

    Example:
      >>> import jax.numpy as jnp
      >>> z = jnp.zeros((2, 3, 1))
      >>> bound_surrogate(lambda z, stop_q: -jnp.sum(z ** 2, -1), z, "iwae", "dreg").shape
      (2,)
    """
    if estimator not in AMORTIZED_ESTIMATORS:
        raise ValueError(f"estimator must be one of {list(AMORTIZED_ESTIMATORS)}, got {estimator!r}")
    if kind not in ("elbo", "iwae"):
        raise ValueError(f"kind must be 'elbo' or 'iwae', got {kind!r}")
    if estimator == "dreg" and kind != "iwae":
        raise ValueError("estimator 'dreg' applies to iwae-K bounds")
    log_k = math.log(z.shape[1])

    def reduce(log_w):
        return jnp.mean(log_w, axis=1) if kind == "elbo" else jax.nn.logsumexp(log_w, axis=1) - log_k

    if estimator == "score":
        if log_q_fn is None:
            raise ValueError("estimator 'score' needs log_q_fn")
        z = jax.lax.stop_gradient(z)
        log_q = log_q_fn(z)
        if kind == "elbo":
            log_w = log_weight_fn(z, True)  # z fixed and q stopped: carries the decoder's gradient only
            score = jax.lax.stop_gradient(log_w) * (log_q - jax.lax.stop_gradient(log_q))
            return jnp.mean(log_w, axis=1) + jnp.mean(score, axis=1)
        bound = reduce(log_weight_fn(z, False))
        return bound + jax.lax.stop_gradient(bound) * jnp.sum(log_q - jax.lax.stop_gradient(log_q), axis=1)
    if estimator == "dreg":
        weights = jax.nn.softmax(jax.lax.stop_gradient(log_weight_fn(jax.lax.stop_gradient(z), True)), axis=1)
        z = _scale_cotangent(z, weights)
    return reduce(log_weight_fn(z, estimator in ("stl", "dreg")))


def per_example_bound(vae, key: Array, x: Array, objective: Objective) -> tuple[Array, Array]:
    """Surrogate and bound for each data point.

    Args:
      vae: a merged `VAE` module.
      key: PRNG key for the K draws.
      x: (B, D) data.
      objective: an `Objective`.

    Returns:
      `(surrogate, bound)`, each (B,): equal in value, the surrogate's gradient is the estimator.
    """
    family = AmortizedFamily(get_family(vae.config.family))
    q_params = vae.encoder(x)
    z = family.sample(q_params, key, objective.num_samples)
    if objective.kind == "elbo" and objective.kl == "analytic":
        rec = jnp.mean(vae.decoder.log_prob(z, x[:, None, :]), axis=1)
        bound = rec - family.kl_to_standard_normal(q_params)
        return bound, bound
    bound = bound_surrogate(lambda zz, stop_q: log_weights(vae, q_params, zz, x, stop_q=stop_q), z,
                            objective.kind, objective.estimator, lambda zz: family.log_prob(q_params, zz))
    return bound, bound


class LossMetrics(NamedTuple):
    """Per-step metrics.

    Attributes:
      loss: scalar, minus the mean bound over the batch (nats per image).
      bound: scalar, the mean bound (ELBO or IWAE-K) over the batch.
    """

    loss: Array
    bound: Array


def make_loss(graphdef: nnx.GraphDef, objective: Objective) -> Callable[[PyTree, Array, Array], tuple[Array, LossMetrics]]:
    """A pure loss over the split parameters of a VAE.

    Args:
      graphdef: from `graphdef, params = nnx.split(vae, nnx.Param)`.
      objective: an `Objective`.

    Returns:
      `loss(params, key, batch) -> (scalar, LossMetrics)` with batch (B, D); the scalar is minus
      the mean surrogate, so `jax.grad(loss, has_aux=True)` gives the chosen estimator.

    Example:
      >>> import jax
      >>> from flax import nnx
      >>> from advi_jax.vae import VAEConfig, build_vae, make_loss, parse_objective
      >>> graphdef, params = nnx.split(build_vae(VAEConfig(latent=2, hidden=(8,)), jax.random.key(0)), nnx.Param)
      >>> loss = make_loss(graphdef, parse_objective("iwae-5", "dreg"))
      >>> value, metrics = loss(params, jax.random.key(1), jax.numpy.zeros((4, 784)))
    """

    def loss(params: PyTree, key: Array, batch: Array) -> tuple[Array, LossMetrics]:
        vae = nnx.merge(graphdef, params)
        surrogate, bound = per_example_bound(vae, key, batch, objective)
        mean_bound = jnp.mean(jax.lax.stop_gradient(bound))
        return -jnp.mean(surrogate), LossMetrics(-mean_bound, mean_bound)

    return loss
