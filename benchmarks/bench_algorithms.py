"""Pathfinder, DADVI and Batch-and-Match against NUTS references, with Blackjax's Pathfinder as a peer.

For each posterior of the suite (default: breast-cancer logistic regression, non-centred eight
schools, mixture weights) and each method, in one run: max |mean error| / sd and median |log sd
ratio| against the stored NUTS reference (benchmarks/references/), gradient and log-density
evaluations, and wall time including compilation (a fresh jit per method and model).

Each algorithm is run by a minimal jitted loop here (init, then step until converged or the step
budget), the same loop the driver runs, so the numbers isolate the algorithm.

Blackjax's `pathfinder.approximate` gradient evaluations are counted with a debug callback on a
custom-VJP wrapper of the log density; its log-density evaluations are (maxiter + 1) * 200 by its
construction (an ELBO at every path slot); its wall time is measured in a run without the counter. (With maxiter=1000 the counted run
hung on eight schools in one trial, hence the default of blackjax's own maxiter=30 only.)

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
    """log_density with its value-and-gradient calls counted on the host (a debug callback)."""
    def bump():
        counts["grad"] += 1

    @jax.custom_vjp
    def f(x):
        return log_density(x)

    def fwd(x):
        jax.debug.callback(bump)
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
    counts = {"grad": 0}
    jax.block_until_ready(fit(_counted(model.log_density, counts))(jax.random.key(seed), jnp.zeros(model.dim)))
    # approximate() estimates the ELBO at every one of the maxiter + 1 path slots with 200 draws.
    return np.asarray(draws), {"grad evals": counts["grad"], "logp evals": (maxiter + 1) * 200, "steps": 1,
                               "seconds": seconds}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", default="", help="comma-separated method prefixes to skip")
    parser.add_argument("--blackjax-maxiter", default="30",
                        help="comma-separated maxiter values for blackjax's pathfinder (its default is 30)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    skip = tuple(p for p in args.skip.split(",") if p)
    rows = []
    mf, fr = aj.MeanFieldGaussian(), aj.FullRankGaussian()
    for name, suite_model in available_models(args.models.split(",")).items():
        with open(os.path.join(REFERENCES, f"{name}.json")) as f:
            reference = json.load(f)
        model = aj.from_numpyro(suite_model.fn, *suite_model.args)

        def report(method, zeta, cost):
            row = {"model": name, "method": method, **compare(_constrained(model, zeta), reference), **cost}
            rows.append(row)
            print(f"{name:26s} {method:36s} max|dmean|/sd {row['max |mean err| / sd']:7.3f}  "
                  f"med|log sd ratio| {row['med |log sd ratio|']:6.3f}  grads {row['grad evals']:8d}  "
                  f"logps {row['logp evals']:7d}  {row['seconds']:6.2f} s", flush=True)

        def wanted(method):
            return not method.startswith(skip) if skip else True

        seed = args.seed
        if wanted("pathfinder fullrank"):
            report("pathfinder fullrank", *run_ours(model, pathfinder, fr, pathfinder.Options(), 1, seed)["q"])
        if wanted("pathfinder 4 paths"):
            out = run_ours(model, pathfinder, fr, pathfinder.Options(num_paths=4), 1, seed, use=("draws",))
            report("pathfinder 4 paths (PSIS draws)", *out["draws"])
        for maxiter in (int(m) for m in args.blackjax_maxiter.split(",") if m):
            if wanted(f"blackjax pathfinder maxiter={maxiter}"):
                report(f"blackjax pathfinder maxiter={maxiter}", *run_blackjax(model, seed, maxiter))
        if wanted("dadvi meanfield"):
            out = run_ours(model, dadvi, mf, dadvi.Options(), 200, seed, use=("q", "lr"))
            report("dadvi meanfield (q sd)", *out["q"])
            report("dadvi meanfield (LR sd)", *out["lr"])
        draws_fr = max(30, 2 * model.dim)  # a fullrank fit needs N > K
        if wanted("dadvi fullrank"):
            report(f"dadvi fullrank N={draws_fr}",
                   *run_ours(model, dadvi, fr, dadvi.Options(num_draws=draws_fr), 200, seed)["q"])
        if wanted("bam"):
            report("bam B=16, 200 steps", *run_ours(model, bam, fr, bam.Options(batch_size=16), 200, seed)["q"])
    if args.out:
        write_json(args.out, {"rows": rows, "versions": versions()})
    return rows


if __name__ == "__main__":
    main()
