"""A minimal jitted runner for `VIAlgorithm`s in tests (the package's driver lives in advi_jax/run/)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def run(algo, key, loc, max_steps: int):
    """init, then step until `converged` or `max_steps`; returns (params, state, totals).

    totals: dict of the summed grad / logp evaluations, the steps taken and the last StepInfo.
    """

    def go(key, loc):
        init_key, loop_key = jax.random.split(key)
        state = algo.init(init_key, loc)
        state, info = algo.step(jax.random.fold_in(loop_key, 0), state)

        def cond(c):
            _, info, n, _, _ = c
            return ~info.converged & (n < max_steps)

        def body(c):
            state, _, n, grads, logps = c
            state, info = algo.step(jax.random.fold_in(loop_key, n), state)
            return state, info, n + 1, grads + info.num_grad_evals, logps + info.num_logp_evals

        c = (state, info, jnp.asarray(1, jnp.int32), info.num_grad_evals, info.num_logp_evals)
        state, info, n, grads, logps = jax.lax.while_loop(cond, body, c)
        return algo.params(state), state, dict(grad_evals=grads, logp_evals=logps, steps=n, info=info)

    return jax.jit(go)(key, loc)
