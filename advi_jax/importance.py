"""The draws of q and their log importance ratios, computed accurately enough for PSIS.

The diagnostics (`advi_jax.result.diagnose`), `Result.importance_draws` and PSIS resampling read
`r_s = log p(zeta_s) - log q(zeta_s)` at draws `zeta_s ~ q`. Only the spread of the r_s matters
to k-hat, the ESS and the PSIS weights; a constant shift does not. For a near-exact fit that
spread is small (sd ~1e-3 for a GLM with N = 1e6 rows), while in float32 each `log p` carries a
rounding of about eps x |log p| (~0.1 at |log p| ~ 6e5): the plain ratios are then rounding
noise, and PSIS fits a tail to it. So the ratios are computed *centred* at the mean m of q,

    r_s = shift + centred_s,    shift = log p(m) - log q(m),
    centred_s = [log p(zeta_s) - log p(m)] - [log q(zeta_s) - log q(m)],

with the first bracket and log p(m) from `model.log_density_relative(zeta, m)` when the model
has one (the ready logistic and Poisson GLMs: a sum of per-row differences, `advi_jax.models.relative`;
it returns (log p(zeta) - log p(m), log p(m))), else plainly (no worse than before). The centred
ratios and the shift are returned separately so that the shift's magnitude never rounds the
centred values again; the host adds them in float64. All of it is one compiled program per
model structure, family and S (`draws_and_log_ratios`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from advi_jax import compile_options
from advi_jax._types import Array, PyTree
from advi_jax.base import Family

__all__ = ["sampling_key", "centred_log_ratios", "log_ratios", "draws_and_log_ratios"]

_GOLDEN = 0x9E3779B9


def sampling_key(key: Array) -> Array:
    """The key the result's own draws of q are made with: an "rbg" key (XLA's RngBitGenerator)
    holding a threefry key's bits (other keys are kept as they are).

    Compiling threefry for a batch of draws takes 2-5x as long on CPU as RngBitGenerator
    (measured: 2.3-2.9 s against 0.5 s on a loaded 2-core machine), and the diagnostics, the
    summary and `Result.sample` each compile one such sampler on first use. The streams are
    deterministic for a given key and jax version (not across versions, and not equal to
    `family.sample(params, key, n)` with the threefry key itself).
    """
    if str(jax.random.key_impl(key)) != "threefry2x32":
        return key
    data = jax.random.key_data(key)
    return jax.random.wrap_key_data(jnp.concatenate([data, data ^ jnp.uint32(_GOLDEN)]), impl="rbg")


def centred_log_ratios(model, family: Family, params: PyTree, key: Array, num_draws: int,
                       batch_size: int = 256) -> tuple[Array, Array, Array]:
    """(num_draws, K) draws of q (made with `sampling_key(key)`), their centred log ratios and the shift.

    `log p(zeta_s) - log q(zeta_s) = shift + centred_s` (module docstring); the log density is
    evaluated `batch_size` draws at a time.

    Returns:
      (zeta, centred, shift): (S, K), (S,) and a scalar.
    """
    zeta = family.sample(params, sampling_key(key), num_draws)
    batch = min(num_draws, batch_size)
    relative = getattr(model, "log_density_relative", None)
    if relative is None:
        log_p = jax.lax.map(model.log_density, zeta, batch_size=batch)
        return zeta, log_p - family.log_prob(params, zeta), jnp.zeros((), zeta.dtype)
    ref = jax.lax.stop_gradient(family.mean(params))
    log_p_rel, log_p_ref = jax.lax.map(lambda z: relative(z, ref), zeta, batch_size=batch)
    log_q = family.log_prob(params, jnp.concatenate([ref[None], zeta]))
    return zeta, log_p_rel - (log_q[1:] - log_q[0]), log_p_ref[0] - log_q[0]


def log_ratios(model, family: Family, params: PyTree, key: Array, num_draws: int,
               batch_size: int = 256) -> tuple[Array, Array]:
    """(num_draws, K) draws of q (made with `sampling_key(key)`) and their log p - log q (in the
    working dtype: `centred_log_ratios` keeps the accurate centred values apart from the shift)."""
    zeta, centred, shift = centred_log_ratios(model, family, params, key, num_draws, batch_size)
    return zeta, shift + centred


draws_and_log_ratios = compile_options.jit(centred_log_ratios, static_argnames=("family", "num_draws", "batch_size"),
                                           mode=lambda model, args: args["num_draws"])
"""`centred_log_ratios`, compiled once per model structure, family and S."""
