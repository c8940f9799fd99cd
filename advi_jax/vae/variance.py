"""Gradient-estimator variance for a VAE encoder (the amortized case of `advi_jax.variance`).

For a batch x_1..x_B and the importance-weighted bound with K draws per image,

    L(phi, theta) = mean_b log (1/K) sum_k w_bk,  log w_bk = log p_theta(x_b, z_bk) - log q_phi(z_bk | x_b),

the encoder gradient dL/dphi is estimated by

* ``reparam``: pathwise through z = mu_phi(x) + L_phi(x) eps, every term differentiated;
* ``stl``: pathwise with phi stopped inside log q (Roeder et al. 2017); biased for K > 1;
* ``dreg``: doubly reparameterised (Tucker et al. 2019), unbiased, zero variance at the exact
  posterior;
* ``score``: the score function with z held fixed: stop(L_b) sum_k log q(z_bk | x_b) + L_b(z fixed).

The first three are the VAE training objectives of `advi_jax.vae.objectives`; each estimator is
handed to the generic instrument `advi_jax.variance.gradient_stats` as a surrogate of the encoder
parameters alone (the decoder is held fixed), so the numbers are comparable with the
non-amortized `aj.gradient_variance`.

Example:
  >>> import jax
  >>> from flax import nnx
  >>> from advi_jax.vae import VAEConfig, build_vae
  >>> from advi_jax.vae.variance import encoder_gradient_variance
  >>> vae = build_vae(VAEConfig(latent=2, hidden=(16,)), jax.random.key(0))
  >>> graphdef, params = nnx.split(vae, nnx.Param)
  >>> batch = (jax.random.uniform(jax.random.key(1), (8, 784)) < 0.3).astype("float32")
  >>> stats = encoder_gradient_variance(graphdef, params, batch, jax.random.key(2), num_draws=50)  # doctest: +SKIP
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from advi_jax._types import Array, PyTree, check_positive_int
from advi_jax.variance import GradientStats, gradient_stats
from advi_jax.vae.objectives import AmortizedFamily, Objective, log_weights, per_example_bound
from advi_jax.families import get_family

__all__ = ["ENCODER_ESTIMATORS", "encoder_gradient_variance", "encoder_surrogate"]

ENCODER_ESTIMATORS: tuple[str, ...] = ("reparam", "stl", "dreg", "score")


def encoder_surrogate(graphdef: nnx.GraphDef, decoder_params: PyTree, batch: Array, estimator: str,
                      num_samples: int):
    """`(encoder_params, key) -> scalar` whose gradient is `estimator`'s estimate of dL/dphi."""
    if estimator not in ENCODER_ESTIMATORS:
        raise ValueError(f"estimator must be one of {ENCODER_ESTIMATORS}, got {estimator!r}")
    num_samples = check_positive_int(num_samples, "num_samples")
    if estimator != "score":
        objective = Objective("iwae", num_samples, estimator)

        def surrogate(encoder_params, key):
            vae = nnx.merge(graphdef, encoder_params, decoder_params)
            return jnp.mean(per_example_bound(vae, key, batch, objective)[0])

        return surrogate

    def score_surrogate(encoder_params, key):
        vae = nnx.merge(graphdef, encoder_params, decoder_params)
        family = AmortizedFamily(get_family(vae.config.family))
        q_params = vae.encoder(batch)
        z = jax.lax.stop_gradient(family.sample(q_params, key, num_samples))
        log_w = log_weights(vae, q_params, z, batch)
        bound = jax.nn.logsumexp(log_w, axis=1) - math.log(num_samples)
        log_q = jnp.sum(family.log_prob(q_params, z), axis=1)
        return jnp.mean(jax.lax.stop_gradient(bound) * log_q + bound)

    return score_surrogate


def encoder_gradient_variance(graphdef: nnx.GraphDef, params: PyTree, batch: Array, key: Array, *,
                              estimators=ENCODER_ESTIMATORS, num_samples: int = 5, num_draws: int = 200,
                              time_repeats: int = 10) -> dict[str, GradientStats]:
    """Mean, variance, SNR and cost of each estimator of the encoder gradient on `batch`.

    Args:
      graphdef, params: from `nnx.split(vae, nnx.Param)`.
      batch: (B, 784) images in [0, 1] (binarised for a Bernoulli decoder).
      key: PRNG key; draw i of every estimator uses `fold_in(key, i)`.
      estimators: names from `ENCODER_ESTIMATORS`.
      num_samples: K, draws per image of the importance-weighted bound.
      num_draws: independent gradient draws per estimator.
      time_repeats: timed calls for the cost of one gradient (0: skip timing).

    Returns:
      dict estimator name -> `GradientStats` over the encoder's parameters.
    """
    names = (estimators,) if isinstance(estimators, str) else tuple(estimators)
    unknown = [n for n in names if n not in ENCODER_ESTIMATORS]
    if unknown or not names:
        raise ValueError(f"estimators must be a non-empty subset of {ENCODER_ESTIMATORS}, got {estimators!r}")
    batch = jnp.asarray(batch)
    if batch.ndim != 2:
        raise ValueError(f"batch must be (B, D) flattened images, got shape {batch.shape}")
    encoder_params, decoder_params = params.split(nnx.PathContains("encoder"), ...)
    return {name: gradient_stats(encoder_surrogate(graphdef, decoder_params, batch, name, num_samples),
                                 encoder_params, key, num_draws=num_draws, time_repeats=time_repeats)
            for name in names}
