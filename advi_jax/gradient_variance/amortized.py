"""The amortized case: variance of encoder-gradient estimators of the ELBO / IWAE-K bound.

Two subjects, one set of estimators (`advi_jax.vae.objectives.AMORTIZED_ESTIMATORS`: the names
of `advi_jax.estimators.ESTIMATORS` with the same meanings, plus "dreg") and one implementation
of them (`advi_jax.vae.objectives.bound_surrogate`, which the VAE also trains with):

* a self-contained linear Gaussian example whose exact posterior the encoder family contains
  (`linear_gaussian_example`, `optimal_encoder`, `amortized_surrogate`), where DReG and STL
  have zero variance at the optimum;
* a Flax VAE (`encoder_gradient_variance`, `encoder_surrogate`), the decoder held fixed.

Each estimator becomes a `(encoder_params, key) -> scalar` surrogate measured with
`gradient_stats`, so the numbers (and their intervals) compare with `aj.gradient_variance`.

Linear Gaussian model (decoder fixed): `p(z) = N(0, I_d)`, `p(x | z) = N(W z, s^2 I_D)`, encoder
`q(z | x) = N(A x + c, diag(softplus(raw_scale))^2)`. With orthogonal columns of `W` the exact
posterior `N(Sigma W^T x / s^2, Sigma)`, `Sigma = (I + W^T W / s^2)^{-1}`, is diagonal.

This module needs flax (it imports `advi_jax.vae`); `advi_jax.gradient_variance` loads it on
first use.

Example:
  >>> import jax
  >>> from advi_jax.gradient_variance import amortized, gradient_stats
  >>> decoder, batch = amortized.linear_gaussian_example(jax.random.key(0), batch_size=8)
  >>> s = gradient_stats(amortized.amortized_surrogate("dreg", decoder, batch, 4),
  ...                    amortized.optimal_encoder(decoder), jax.random.key(1), num_draws=50, time_repeats=0)
  >>> float(s.variance_trace) < 1e-8
  True

References:
  Tucker, Lawson, Gu & Maddison (2019). Doubly reparameterized gradient estimators for Monte Carlo
  objectives. ICLR.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from advi_jax._types import Array, PyTree, check_positive_int
from advi_jax.families import get_family
from advi_jax.gradient_variance.instruments import GradientStats, gradient_stats_many
from advi_jax.vae.objectives import AMORTIZED_ESTIMATORS, AmortizedFamily, bound_surrogate, log_weights

__all__ = ["AMORTIZED_ESTIMATORS", "LinearGaussianDecoder", "amortized_surrogate", "encoder_gradient_variance",
           "encoder_surrogate", "linear_gaussian_example", "optimal_encoder"]

_LOG_2PI = math.log(2.0 * math.pi)


def _check_estimator(estimator: str) -> None:
    if estimator not in AMORTIZED_ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose from {list(AMORTIZED_ESTIMATORS)}")


# ----------------------------------------------------------------------------------------------
# Linear Gaussian example


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
    """A decoder with orthogonal columns (norms 1..2, noise sd 0.7) and a batch (B, D) drawn from it.

    Args:
      key: PRNG key.
      data_dim, latent_dim: D and d (d <= D).
      batch_size: B.

    Returns:
      `(decoder, batch)`.

    Raises:
      ValueError: latent_dim > data_dim or a size < 1.
    """
    data_dim, latent_dim = check_positive_int(data_dim, "data_dim"), check_positive_int(latent_dim, "latent_dim")
    batch_size = check_positive_int(batch_size, "batch_size")
    if latent_dim > data_dim:
        raise ValueError(f"latent_dim must be <= data_dim ({data_dim}), got {latent_dim}")
    k_w, k_z, k_x = jax.random.split(key, 3)
    q, _ = jnp.linalg.qr(jax.random.normal(k_w, (data_dim, latent_dim)))
    weight = q * jnp.linspace(1.0, 2.0, latent_dim)[None, :]
    decoder = LinearGaussianDecoder(weight, jnp.asarray(0.7))
    z = jax.random.normal(k_z, (batch_size, latent_dim))
    x = z @ weight.T + decoder.noise_scale * jax.random.normal(k_x, (batch_size, data_dim))
    return decoder, x


def optimal_encoder(decoder: LinearGaussianDecoder) -> dict[str, Array]:
    """Encoder parameters `{A, c, raw_scale}` at which q(z | x) is the exact posterior for every x."""
    w, s2 = decoder.weight, decoder.noise_scale ** 2
    sigma2 = 1.0 / (1.0 + jnp.sum(w * w, axis=0) / s2)  # W^T W is diagonal
    scale = jnp.sqrt(sigma2)
    return {"A": (sigma2[:, None] * w.T) / s2, "c": jnp.zeros(w.shape[1]),
            "raw_scale": scale + jnp.log(-jnp.expm1(-scale))}


def _log_normal(x: Array, mean: Array, scale: Array) -> Array:
    z = (x - mean) / scale
    return jnp.sum(-0.5 * z * z - jnp.log(scale) - 0.5 * _LOG_2PI, axis=-1)


def amortized_surrogate(estimator: str, decoder: LinearGaussianDecoder, batch: Array,
                        num_samples: int = 8) -> Callable:
    """A `(encoder_params, key) -> scalar` whose gradient is the named estimator of the IWAE-K bound.

    Args:
      estimator: a name in `AMORTIZED_ESTIMATORS`.
      decoder: the fixed `LinearGaussianDecoder`.
      batch: (B, D) data.
      num_samples: importance samples K per data point (K = 1: the ELBO).

    Returns:
      The surrogate; its value is the batch-mean bound.

    Raises:
      ValueError: an unknown estimator or num_samples < 1.
    """
    _check_estimator(estimator)
    num_samples = check_positive_int(num_samples, "num_samples")
    batch = jnp.asarray(batch)

    def fn(phi, key: Array) -> Array:
        def q_params(p):
            return batch @ p["A"].T + p["c"][None, :], jax.nn.softplus(p["raw_scale"])

        mean, scale = q_params(phi)
        eps = jax.random.normal(key, (batch.shape[0], num_samples, mean.shape[-1]), mean.dtype)
        z = mean[:, None, :] + scale[None, None, :] * eps  # (B, K, d)

        def log_q(zz, stop_q=False):
            m, s = q_params(jax.lax.stop_gradient(phi) if stop_q else phi)
            return _log_normal(zz, m[:, None, :], s[None, None, :] * jnp.ones_like(zz))

        def log_w(zz, stop_q):
            log_lik = _log_normal(batch[:, None, :], zz @ decoder.weight.T,
                                  decoder.noise_scale * jnp.ones_like(batch)[:, None, :])
            return log_lik + _log_normal(zz, 0.0, jnp.ones_like(zz)) - log_q(zz, stop_q)

        return jnp.mean(bound_surrogate(log_w, z, "iwae", estimator, log_q))

    return fn


# ----------------------------------------------------------------------------------------------
# A Flax VAE


def encoder_surrogate(graphdef, decoder_params: PyTree, batch: Array, estimator: str, num_samples: int) -> Callable:
    """`(encoder_params, key) -> scalar` whose gradient is `estimator`'s estimate of dL/dphi (IWAE-K).

    Args:
      graphdef: from `nnx.split(vae, nnx.Param)`.
      decoder_params: the decoder's share of the parameters (held fixed).
      batch: (B, D) data.
      estimator: a name in `AMORTIZED_ESTIMATORS`.
      num_samples: K.

    Returns:
      The surrogate.

    Raises:
      ValueError: an unknown estimator or num_samples < 1.
    """
    from flax import nnx

    _check_estimator(estimator)
    num_samples = check_positive_int(num_samples, "num_samples")

    def surrogate(encoder_params, key):
        vae = nnx.merge(graphdef, encoder_params, decoder_params)
        family = AmortizedFamily(get_family(vae.config.family))
        q_params = vae.encoder(batch)
        z = family.sample(q_params, key, num_samples)
        return jnp.mean(bound_surrogate(lambda zz, stop_q: log_weights(vae, q_params, zz, batch, stop_q=stop_q),
                                        z, "iwae", estimator, lambda zz: family.log_prob(q_params, zz)))

    return surrogate


def encoder_gradient_variance(graphdef, params: PyTree, batch: Array, key: Array, *,
                              estimators: str | Sequence[str] = tuple(AMORTIZED_ESTIMATORS), num_samples: int = 5,
                              num_draws: int = 200, time_repeats: int = 10) -> dict[str, GradientStats]:
    """Mean, variance, SNR (with intervals) and cost of each estimator of a VAE's encoder gradient.

    Args:
      graphdef, params: from `nnx.split(vae, nnx.Param)`.
      batch: (B, D) images in [0, 1] (binarised for a Bernoulli decoder).
      key: PRNG key; draw i of every estimator uses `fold_in(key, i)`.
      estimators: names from `AMORTIZED_ESTIMATORS` (default all four).
      num_samples: K, draws per image of the importance-weighted bound.
      num_draws: independent gradient draws per estimator (>= 2).
      time_repeats: timed calls for the cost of one gradient (0: skip timing).

    Returns:
      dict estimator name -> `GradientStats` over the encoder's parameters.

    Raises:
      ValueError: an unknown or empty estimator list, a batch that is not (B, D).

    Example:
      >>> import jax
      >>> from flax import nnx
      >>> from advi_jax.vae import VAEConfig, build_vae
      >>> vae = build_vae(VAEConfig(latent=2, hidden=(16,)), jax.random.key(0))
      >>> graphdef, params = nnx.split(vae, nnx.Param)
      >>> batch = (jax.random.uniform(jax.random.key(1), (8, 784)) < 0.3).astype("float32")
      >>> stats = encoder_gradient_variance(graphdef, params, batch, jax.random.key(2), num_draws=50)  # doctest: +SKIP
    """
    from flax import nnx

    names = (estimators,) if isinstance(estimators, str) else tuple(estimators)
    unknown = [n for n in names if n not in AMORTIZED_ESTIMATORS]
    if unknown or not names:
        raise ValueError(f"estimators must be a non-empty subset of {list(AMORTIZED_ESTIMATORS)}, got {estimators!r}")
    batch = jnp.asarray(batch)
    if batch.ndim != 2:
        raise ValueError(f"batch must be (B, D) flattened images, got shape {batch.shape}")
    encoder_params, decoder_params = params.split(nnx.PathContains("encoder"), ...)
    jobs = [(encoder_surrogate(graphdef, decoder_params, batch, name, num_samples), encoder_params, key)
            for name in names]
    return dict(zip(names, gradient_stats_many(jobs, num_draws=num_draws, time_repeats=time_repeats)))
