"""The amortized case: variance of a VAE-style encoder gradient, on a self-contained linear
Gaussian example measured with the generic instrument `advi_jax.variance.gradient_stats`.

(The Flax VAE of `advi_jax.vae` was not available when this was written; its objectives can be
measured the same way, by handing `gradient_stats` a `(params, key) -> scalar` surrogate.)

Model (decoder fixed): `p(z) = N(0, I_d)`, `p(x | z) = N(W z, s^2 I_D)`. Encoder (amortized,
parameters `phi = {A, c, raw_scale}`): `q(z | x) = N(A x + c, diag(softplus(raw_scale))^2)`. With
`W` having orthogonal columns the exact posterior is diagonal,
`N(Sigma W^T x / s^2, Sigma)`, `Sigma = (I + W^T W / s^2)^{-1}`, so the encoder family contains it
(`optimal_encoder`). Objective: the importance-weighted bound with K samples per data point,
averaged over a batch,

    L(phi) = mean_b E[ log (1/K) sum_k w_bk ],   log w_bk = log p(x_b, z_bk) - log q(z_bk | x_b),

whose encoder gradient is estimated by

* ``reparam``: pathwise through `z = mu(x) + sigma eps`, all terms differentiated;
* ``stl``: pathwise with q's parameters stopped inside log q (Roeder et al. 2017; for K > 1
  this is biased, Tucker et al. 2019);
* ``dreg``: doubly reparameterised, `sum_k stop(w~_k^2) d log w_k / dz dz/dphi` with normalised
  weights `w~` (Tucker et al. 2019), unbiased, zero variance at the exact posterior;
* ``score``: REINFORCE with z held fixed: `stop(L_b) sum_k log q(z_k | x_b) + L_b(z fixed)`.

References:
  Tucker, Lawson, Gu & Maddison (2019). Doubly reparameterized gradient estimators for Monte Carlo
  objectives. ICLR.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from advi_jax._types import Array

__all__ = ["AMORTIZED_ESTIMATORS", "LinearGaussianDecoder", "linear_gaussian_example", "optimal_encoder",
           "amortized_surrogate"]

AMORTIZED_ESTIMATORS: tuple[str, ...] = ("reparam", "stl", "dreg", "score")
_LOG_2PI = math.log(2.0 * math.pi)


class LinearGaussianDecoder(NamedTuple):
    """p(x | z) = N(weight z, noise_scale^2 I).

    Attributes:
      weight: (D, d) with orthogonal columns.
      noise_scale: scalar s > 0.
    """

    weight: Array
    noise_scale: Array


def linear_gaussian_example(key: Array, data_dim: int = 6, latent_dim: int = 2,
                            batch_size: int = 32) -> tuple[LinearGaussianDecoder, Array]:
    """A decoder with orthogonal columns (norms 1..2, noise sd 0.7) and a batch (B, D) drawn from it."""
    k_w, k_z, k_x = jax.random.split(key, 3)
    q, _ = jnp.linalg.qr(jax.random.normal(k_w, (data_dim, latent_dim)))
    weight = q * jnp.linspace(1.0, 2.0, latent_dim)[None, :]
    decoder = LinearGaussianDecoder(weight, jnp.asarray(0.7))
    z = jax.random.normal(k_z, (batch_size, latent_dim))
    x = z @ weight.T + decoder.noise_scale * jax.random.normal(k_x, (batch_size, data_dim))
    return decoder, x


def optimal_encoder(decoder: LinearGaussianDecoder) -> dict[str, Array]:
    """Encoder parameters at which q(z | x) is the exact posterior for every x."""
    w, s2 = decoder.weight, decoder.noise_scale ** 2
    precision_diag = 1.0 + jnp.sum(w * w, axis=0) / s2  # W^T W is diagonal
    sigma2 = 1.0 / precision_diag
    scale = jnp.sqrt(sigma2)
    return {"A": (sigma2[:, None] * w.T) / s2, "c": jnp.zeros(w.shape[1]),
            "raw_scale": scale + jnp.log(-jnp.expm1(-scale))}


def _log_normal(x: Array, mean: Array, scale: Array) -> Array:
    z = (x - mean) / scale
    return jnp.sum(-0.5 * z * z - jnp.log(scale) - 0.5 * _LOG_2PI, axis=-1)


def amortized_surrogate(estimator: str, decoder: LinearGaussianDecoder, batch: Array,
                        num_samples: int = 8) -> Callable:
    """A `(encoder_params, key) -> scalar` whose gradient is the named encoder-gradient estimator.

    Args:
      estimator: one of `AMORTIZED_ESTIMATORS`.
      decoder: the fixed `LinearGaussianDecoder`.
      batch: (B, D) data.
      num_samples: importance samples K per data point (K = 1 gives the ELBO).

    Returns:
      The surrogate; its value is the batch-mean bound estimate for every estimator except
      "dreg" and "score", whose values are only gradient carriers.
    """
    if estimator not in AMORTIZED_ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose from {list(AMORTIZED_ESTIMATORS)}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    stop = jax.lax.stop_gradient

    def log_weights(phi_path, phi_q, x, eps):
        mean = x @ phi_path["A"].T + phi_path["c"]
        scale = jax.nn.softplus(phi_path["raw_scale"])
        z = mean[None, :] + scale[None, :] * eps  # (K, d)
        if estimator == "score":
            z = stop(z)
        log_prior = _log_normal(z, jnp.zeros_like(z), jnp.ones_like(z))
        log_lik = _log_normal(x[None, :], z @ decoder.weight.T, decoder.noise_scale * jnp.ones_like(x)[None, :])
        q_mean = x @ phi_q["A"].T + phi_q["c"]
        q_scale = jax.nn.softplus(phi_q["raw_scale"])
        log_q = _log_normal(z, q_mean[None, :], q_scale[None, :] * jnp.ones_like(z))
        return log_prior + log_lik - log_q, log_q

    def per_point(phi, x, key):
        eps = jax.random.normal(key, (num_samples, phi["c"].shape[0]))
        phi_q = stop(phi) if estimator in ("stl", "dreg") else phi
        log_w, log_q = log_weights(phi, phi_q, x, eps)
        bound = jax.nn.logsumexp(log_w) - math.log(num_samples)
        if estimator == "dreg":
            weights = stop(jax.nn.softmax(log_w))
            return jnp.sum(weights ** 2 * log_w)
        if estimator == "score":
            return stop(bound) * jnp.sum(log_q) + bound
        return bound

    def fn(phi, key: Array) -> Array:
        keys = jax.random.split(key, batch.shape[0])
        return jnp.mean(jax.vmap(per_point, in_axes=(None, 0, 0))(phi, batch, keys))

    return fn
