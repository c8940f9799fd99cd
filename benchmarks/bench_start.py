"""Where the default fit's start program (`advi_jax.run.start._start_program`) spends its work.

For each suite posterior and each variant of the start's budgets (L-BFGS iterations, Pathfinder's
ELBO draws per iteration, BaM steps, the candidates' ELBO draws), in one process: the program's
XLA compile seconds (fast options, as the default fit compiles it), its run seconds (warm, the
median of `--calls` calls with other keys), the path's iterations, the iteration of its best
Gaussian, the gradients, which Gaussian the start chose, and the chosen Gaussian's ELBO from
`--draws` common draws against the stored family limit's ELBO (the full-rank optimum: the gap is
what the fit after the start still has to climb), over `--seeds` keys.

Usage:
  python -m benchmarks.bench_start --models wells_badly_scaled --variants base,iters50
  python -m benchmarks.bench_start            # the default models and every variant
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import advi_jax as aj  # noqa: E402
from advi_jax.run import start as _start  # noqa: E402

MODELS = ("eight_schools_noncentered", "breast_cancer_logistic", "wells_badly_scaled", "radon_noncentered",
          "neals_funnel", "eight_schools_centered", "radon_centered", "births_lognormal_ts", "stochastic_volatility")

# name -> (L-BFGS iterations, Pathfinder ELBO draws per iteration, BaM steps, BaM batch, candidates' ELBO draws,
#          the path's patience (0 when not given))
VARIANTS = {
    "base": (200, 10, 100, 16, 64, 50),  # the default fit's (START_BUDGET, BAM_START_STEPS, BAM_START_BATCH)
    "nopatience": (200, 10, 100, 16, 64),  # main before the path's patience
    "iters100": (100, 10, 100, 16, 64, 50),
    "iters50": (50, 10, 100, 16, 64, 50),
    "pdraws5": (200, 5, 100, 16, 64, 50),
    "bam50": (200, 10, 50, 16, 64, 50),
    "bam25": (200, 10, 25, 16, 64, 50),
    "edraws32": (200, 10, 100, 16, 32, 50),
}




def _elbo(model, mean, factor, noise):
    z = mean[None, :] + noise @ factor.T
    logp = jax.vmap(model.log_density)(z)
    return float(jnp.mean(logp) + jnp.sum(jnp.log(jnp.abs(jnp.diagonal(factor))))
                 + 0.5 * mean.shape[0] * (1.0 + jnp.log(2.0 * jnp.pi)))


def measure(name: str, variants: list[str], seeds: list[int], draws: int, calls: int) -> list[dict]:
    from benchmarks.family_limit import load_family_limit
    from benchmarks.suite import available_models

    found = available_models([name])[name]
    model = aj.from_numpyro(found.fn, *found.args)
    limit = load_family_limit(name)
    k = model.dim
    loc = jnp.zeros((k,), jnp.result_type(float))
    noise = jax.random.normal(jax.random.key(123), (draws, k), loc.dtype)
    rows = []
    for vname in variants:
        variant = VARIANTS[vname]
        budget = _start.StartBudget(path_iters=variant[0], path_elbo_draws=variant[1], elbo_draws=variant[4],
                                    path_patience=variant[5] if len(variant) > 5 else 0)
        args = dict(diagonal=False, init_scale=0.1, bam_steps=variant[2], batch_size=variant[3], budget=budget)
        t0 = time.perf_counter()
        lowered = _start._start_program.fast.lower(model, loc, jax.random.key(0), **args)
        t1 = time.perf_counter()
        compiled = lowered.compile()
        t2 = time.perf_counter()
        gaps, picks, iters, best_iters, grads, runs = [], [], [], [], [], []
        for seed in seeds:
            out = jax.block_until_ready(compiled(model, loc, jax.random.key(seed)))
            times = []
            for c in range(calls):
                t = time.perf_counter()
                jax.block_until_ready(compiled(model, loc, jax.random.key(1000 + c)))
                times.append(time.perf_counter() - t)
            runs.append(statistics.median(times))
            before, after = (float(v) for v in out.bam_elbos)
            use_bam = variant[2] > 0 and after > before
            mean, factor = (out.bam_mean, out.bam_factor) if use_bam else (out.mean, out.factor)
            elbo = _elbo(model, mean, factor, noise)
            gaps.append(elbo - limit["elbo"] if limit else elbo)
            picks.append(("bam/" if use_bam else "") + ("path", "I", "s2I")[int(out.best)])
            iters.append(int(out.path.num_iters))
            best_iters.append(int(out.path.best_iter))
            grads.append(int(out.path.num_grad_evals) + variant[2] * variant[3])
        rows.append(dict(model=name, K=k, variant=vname, trace_lower=round(t1 - t0, 3), compile=round(t2 - t1, 3),
                         run=round(statistics.median(runs), 3), iters=iters, best_iter=best_iters, grads=grads,
                         picks=picks, gap=[round(g, 3) for g in gaps]))
        print(rows[-1], flush=True)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--draws", type=int, default=4096)
    parser.add_argument("--calls", type=int, default=3)
    args = parser.parse_args(argv)
    for name in args.models.split(","):
        measure(name, args.variants.split(","), [int(s) for s in args.seeds.split(",")], args.draws, args.calls)


if __name__ == "__main__":
    main()
