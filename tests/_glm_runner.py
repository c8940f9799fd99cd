"""A tiny jitted runner for `advi_jax.vi` algorithms (until the driver `advi_jax.run` lands).

`run(module, model, family, options, num_steps)` loops `init`/`step` in one `lax.while_loop`
until the step reports `converged` or the budget is spent, and returns
(params, elbo, num_steps, num_grad_evals, converged).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.jit, static_argnames=("module", "family", "options", "num_steps"))
def run(module, model, family, options, num_steps=100, loc=None):
    alg = module.build(model, family, options)
    if loc is None:
        loc = jnp.zeros((model.dim,), model.data["x"].dtype)
    state = alg.init(jax.random.key(0), loc)

    def cond(carry):
        _, i, done, _, _ = carry
        return (i < num_steps) & ~done

    def body(carry):
        state, i, _, evals, _ = carry
        state, info = alg.step(jax.random.fold_in(jax.random.key(1), i), state)
        return state, i + 1, info.converged, evals + info.num_grad_evals, info.elbo

    init = (state, jnp.int32(0), jnp.bool_(False), jnp.int32(0), jnp.asarray(-jnp.inf, loc.dtype))
    state, i, done, evals, elbo = jax.lax.while_loop(cond, body, init)
    return alg.params(state), elbo, i, evals, done
