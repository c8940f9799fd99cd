"""Pathfinder, DADVI and Batch-and-Match against NUTS references, with Blackjax's Pathfinder as a peer.

For each posterior of the suite (default: breast-cancer logistic regression, non-centred eight
schools, mixture weights) and each method, in one run: max |mean error| / sd and median |log sd
ratio| against the stored NUTS reference (benchmarks/references/), gradient and log-density
evaluations, and wall time including compilation (a fresh jit per method and model).

Each algorithm is run by a minimal jitted loop here (init, then step until converged or the step
budget), the same loop the driver runs, so the numbers isolate the algorithm.

Blackjax's `pathfinder.approximate` evaluations are counted with a debug callback on a
custom-VJP wrapper of the log density (value-and-gradient calls and plain calls counted apart);
its wall time is measured in a separate run without the counter.

Usage:
  python -m benchmarks.bench_algorithms [--models breast_cancer_logistic,...] [--out results/algorithms.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import advi_jax as aj
from advi_jax.vi import bam, dadvi, pathfinder
from benchmarks.accuracy import compare
from benchmarks.common import versions, write_json
from benchmarks.suite import available_models, flatten_draws

NUM_DRAWS = 4000
DEFAULT_MODELS = ("breast_cancer_logistic", "eight_schools_noncentered", "mixture_weights")
REFERENCES = os.path.join(os.path.dirname(__file__), "references")


def _loop(algo, max_steps: int):
    def go(key, loc):
        init_key, loop_key = jax.random.split(key)
        state = algo.init(init_key, loc)
        state, info = algo.step(jax.random.fold_in(loop_key, 0), state)

        def cond(c):
            return ~c[1].converged & (c[2] < max_steps)

        def body(c):
            state, _, n, grads, logps = c
            state, info = algo.step(jax.random.fold_in(loop_key, n), state)
            return state, info, n + 1, grads + info.num_grad_evals, logps + info.num_logp_evals

        c = (state, info, jnp.asarray(1, jnp.int32), info.num_grad_evals, info.num_logp_evals)
        state, info, n, grads, logps = jax.lax.while_loop(cond, body, c)
        extras = algo.extras(state) if algo.extras is not None else {}
        return algo.params(state), extras, grads, logps, n

    return jax.jit(go)


def _constrained(model, zeta: np.ndarray) -> dict:
    return flatten_draws(jax.device_get(jax.vmap(model.to_constrained)(jnp.asarray(zeta))))


def run_ours(model, module, family, options, max_steps, seed, use=("q",)):
    """Fit with one of our algorithms; rows for q's draws and, if asked, LR sds / resampled draws."""
    algo = module.build(model, family, options)
    start = time.perf_counter()
    params, extras, grads, logps, steps = jax.block_until_ready(
        _loop(algo, max_steps)(jax.random.key(seed), jnp.zeros(model.dim)))
    seconds = time.perf_counter() - start
    cost = {"grad evals": int(grads), "logp evals": int(logps), "steps": int(steps), "seconds": seconds}
    out = {}
    zeta = np.asarray(family.sample(params, jax.random.key(seed + 1), NUM_DRAWS))
    if "q" in use:
        out["q"] = (zeta, cost)
    if "lr" in use:
        # Draws with the fit's means and the linear-response marginal sds (real parameters only).
        noise = np.asarray(jax.random.normal(jax.random.key(seed + 2), (NUM_DRAWS, model.dim)))
        lr_cost = dict(cost, **{"grad evals": cost["grad evals"] + int(extras["lr_grad_evals"])})
        out["lr"] = (np.asarray(params.loc)[None, :] + noise * np.asarray(extras["lr_sd"])[None, :], lr_cost)
    if "draws" in use:
        out["draws"] = (np.asarray(extras["draws"]), dict(cost, khat=float(extras["khat"])))
    return out


def _counted(log_density, counts):
    def bump(name, x):
        counts[name] += int(np.size(x)) // int(np.shape(x)[-1])  # a batched call counts per row

    @jax.custom_vjp
    def f(x):
        jax.debug.callback(bump, "logp", x)
        return log_density(x)

    def fwd(x):
        jax.debug.callback(bump, "grad", x)
        value, vjp = jax.vjp(log_density, x)
        return value, vjp

    def bwd(vjp, ct):
        return vjp(ct)

    f.defvjp(fwd, bwd)
    return f


def run_blackjax(model, seed, maxiter):
    from blackjax.vi import pathfinder as bj

    def fit(log_density):
        def go(key, x0):
            state, _ = bj.approximate(key, log_density, x0, maxiter=maxiter)
            draws, _ = bj.sample(jax.random.fold_in(key, 1), state, NUM_DRAWS)
            return draws
        return jax.jit(go)

    start = time.perf_counter()
    draws = jax.block_until_ready(fit(model.log_density)(jax.random.key(seed), jnp.zeros(model.dim)))
    seconds = time.perf_counter() - start
    counts = {"grad": 0, "logp": 0}
    jax.block_until_ready(fit(_counted(model.log_density, counts))(jax.random.key(seed), jnp.zeros(model.dim)))
    return np.asarray(draws), {"grad evals": counts["grad"], "logp evals": counts["logp"], "steps": 1,
                               "seconds": seconds}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    rows = []
    mf, fr = aj.MeanFieldGaussian(), aj.FullRankGaussian()
    for name, suite_model in available_models(args.models.split(",")).items():
        with open(os.path.join(REFERENCES, f"{name}.json")) as f:
            reference = json.load(f)
        model = aj.from_numpyro(suite_model.fn, *suite_model.args)
        runs = {}
        runs["pathfinder fullrank"] = run_ours(model, pathfinder, fr, pathfinder.Options(), 1, args.seed)["q"]
        multi = run_ours(model, pathfinder, fr, pathfinder.Options(num_paths=4), 1, args.seed, use=("draws",))
        runs["pathfinder 4 paths (PSIS draws)"] = multi["draws"]
        for maxiter in (30, 1000):
            runs[f"blackjax pathfinder maxiter={maxiter}"] = run_blackjax(model, args.seed, maxiter)
        both = run_ours(model, dadvi, mf, dadvi.Options(), 200, args.seed, use=("q", "lr"))
        runs["dadvi meanfield (q sd)"] = both["q"]
        runs["dadvi meanfield (LR sd)"] = both["lr"]
        draws_fr = max(30, 2 * model.dim)  # a fullrank fit needs N > K
        runs[f"dadvi fullrank N={draws_fr}"] = run_ours(model, dadvi, fr, dadvi.Options(num_draws=draws_fr), 200,
                                                         args.seed)["q"]
        runs["bam B=16, 200 steps"] = run_ours(model, bam, fr, bam.Options(batch_size=16), 200, args.seed)["q"]
        for method, (zeta, cost) in runs.items():
            row = {"model": name, "method": method, **compare(_constrained(model, zeta), reference), **cost}
            rows.append(row)
            print(f"{name:28s} {method:36s} max|dmean|/sd {row['max |mean err| / sd']:7.3f}  "
                  f"med|log sd ratio| {row['med |log sd ratio|']:6.3f}  grads {row['grad evals']:7d}  "
                  f"logps {row['logp evals']:7d}  {row['seconds']:6.2f} s", flush=True)
    if args.out:
        write_json(args.out, {"rows": rows, "versions": versions()})
    return rows


if __name__ == "__main__":
    main()
