"""Evaluation: test ELBO and importance-sampled log-likelihood.

`log_likelihood` estimates log p(x) = log E_q[p(x, z) / q(z | x)] with the encoder as proposal:
log p(x) ~ logsumexp_k log w_k - log K over K draws (K = 5000 for reported numbers, as in
Burda et al. 2016). The K draws are processed in chunks with a running `logaddexp`, so memory is
O(batch x chunk x D) whatever K is. The estimate is a stochastic lower bound that converges to
log p(x) as K grows. All values are nats per image.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from advi_jax._types import Array, PyTree
from advi_jax.families import get_family
from advi_jax.vae.objectives import AmortizedFamily, Objective, log_weights, per_example_bound

__all__ = ["evaluate_elbo", "log_likelihood"]


def _batched(fn, x: np.ndarray, batch_size: int, key: Array) -> np.ndarray:
    """Apply jitted `fn(key, batch) -> (B,)` over x in padded batches; returns (N,)."""
    x = np.asarray(x, np.float32)
    n = x.shape[0]
    num_batches = -(-n // batch_size)
    padded = np.zeros((num_batches * batch_size,) + x.shape[1:], np.float32)
    padded[:n] = x
    out = []
    for b in range(num_batches):
        out.append(np.asarray(fn(jax.random.fold_in(key, b), jnp.asarray(padded[b * batch_size:(b + 1) * batch_size]))))
    return np.concatenate(out)[:n]


def evaluate_elbo(graphdef: nnx.GraphDef, params: PyTree, x, key: Array, *, batch_size: int = 500,
                  objective: Objective | None = None) -> np.ndarray:
    """Per-image bound (default: the single-sample ELBO with analytic KL) on data x (N, D).

    Returns:
      (N,) numpy array of bounds in nats.
    """
    objective = objective or Objective()

    @jax.jit
    def fn(k, batch):
        return per_example_bound(nnx.merge(graphdef, params), k, batch, objective)[1]

    return _batched(fn, x, min(batch_size, len(x)), key)


def log_likelihood(graphdef: nnx.GraphDef, params: PyTree, x, key: Array, *, num_samples: int = 5000,
                   chunk_size: int = 500, batch_size: int = 100) -> np.ndarray:
    """Importance-sampled log p(x) per image.

    Args:
      graphdef, params: the split VAE.
      x: (N, D) data (binary for a Bernoulli decoder).
      key: PRNG key.
      num_samples: K importance samples per image.
      chunk_size: draws evaluated at once (memory ~ batch_size * chunk_size * D floats).
      batch_size: images per compiled call.

    Returns:
      (N,) numpy array: logsumexp_k log w_k - log K.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    chunk = min(chunk_size, num_samples)
    num_chunks = -(-num_samples // chunk)

    @jax.jit
    def fn(k, batch):
        vae = nnx.merge(graphdef, params)
        family = AmortizedFamily(get_family(vae.config.family))
        q_params = vae.encoder(batch)

        def body(acc, c):
            z = family.sample(q_params, jax.random.fold_in(k, c), chunk)
            log_w = log_weights(vae, q_params, z, batch)
            valid = (c * chunk + jnp.arange(chunk)) < num_samples
            log_w = jnp.where(valid[None, :], log_w, -jnp.inf)
            return jnp.logaddexp(acc, jax.nn.logsumexp(log_w, axis=1)), None

        init = jnp.full((batch.shape[0],), -jnp.inf, batch.dtype)
        acc, _ = jax.lax.scan(body, init, jnp.arange(num_chunks))
        return acc - math.log(num_samples)

    return _batched(fn, x, min(batch_size, len(x)), key)
