"""First and second `aj.fit` call of the exact-ELBO GLM paths beyond the plain passes, one process per tree.

Cases (`--case`): `grouped` (`grouped_poisson_regression`, `method="glm_grouped"`, 50 groups),
`lowrank` (`method="glm_exact"` with `LowRankGaussian(--rank)`, `--rank 0` for `family="lowrank"`;
`--kind poisson`, `negbin` or `logistic`), and
`exact` (`method="glm_exact"`, `--family meanfield|fullrank`; `--kind negbin` for its compile). Data:
synthetic Poisson (`benchmarks.common.poisson_data`, D = `--d`; `logistic_data` for `logistic`), or
for `negbin` the bundled RAND HIE
doctor visits resampled to N rows with N(0, 1) columns added up to D (as `bench_nb_distinct`).
Diagnostics off (the fit alone). In one fresh process: the first call (compile included), then the
least of `--repeat-second` second calls (wall, CPU, and the compiled loop's `report.run_seconds`).
The first call's compile is split by JAX's own duration events (`jax.monitoring`: seconds of tracing,
lowering to MLIR and XLA's backend compile, summed over its programs and over threads).
Prints one JSON line with the steps, ELBO and mean so that trees can be compared for equal results.

Run from the root of the tree under test (the script itself may live in another tree):
  `cd TREE && PYTHONPATH=. chrt -r 10 python /path/to/benchmarks/bench_glm_paths.py --case grouped --n 100000`
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402


def make_model(aj, args):
    rng = np.random.default_rng(0)
    if args.kind == "negbin":
        data = aj.data.load_dataset("randhie")
        rows = rng.integers(0, data.x.shape[0], args.n)
        x = np.asarray(data.x)[rows]
        extra = max(args.d - x.shape[1], 0)
        x = np.column_stack([x, rng.normal(size=(args.n, extra))])[:, :args.d]
        return aj.models.negbin_regression(x, np.asarray(data.y)[rows])
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks.common import logistic_data, poisson_data

    if args.kind == "logistic":
        return aj.models.logistic_regression(*logistic_data(args.n, args.d))
    x, y = poisson_data(args.n, args.d)
    if args.case == "grouped":
        g = rng.integers(0, args.groups, args.n)
        y = rng.poisson(np.exp(0.5 * (g % 7 - 3) / 3.0) * (y + 0.5)).astype(np.float32)
        return aj.models.grouped_poisson_regression(x, y, group=g)
    return aj.models.poisson_regression(x, y)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", default="grouped", choices=("grouped", "lowrank", "exact"))
    parser.add_argument("--kind", default="poisson", choices=("poisson", "negbin", "logistic"))
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--d", type=int, default=10)
    parser.add_argument("--groups", type=int, default=50)
    parser.add_argument("--family", default="fullrank")
    parser.add_argument("--rank", type=int, default=2, help="the low-rank case's rank; 0: family=\"lowrank\" "
                        "(the family's default rank, as `aj.fit(model, family=\"lowrank\")`)")
    parser.add_argument("--repeat-second", type=int, default=3)
    parser.add_argument("--x64", action="store_true")
    args = parser.parse_args()
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    import advi_jax as aj

    model = make_model(aj, args)
    if args.case == "grouped":
        kw = {"method": "glm_grouped", "family": args.family}
    elif args.case == "lowrank":
        kw = {"method": "glm_exact", "family": aj.LowRankGaussian(rank=args.rank) if args.rank else "lowrank"}
    else:
        kw = {"method": "glm_exact", "family": args.family}

    def fit():
        t = time.perf_counter()
        res = aj.fit(model, key=jax.random.key(0), progress=False, diagnostics=False, **kw)
        jax.block_until_ready(res.params)
        return res, time.perf_counter() - t

    compile_s = {"jaxpr_trace_duration": 0.0, "jaxpr_to_mlir_module_duration": 0.0, "backend_compile_duration": 0.0}

    def on_event(event, duration, **_):
        name = event.rsplit("/", 1)[-1]
        if name in compile_s:
            compile_s[name] += duration

    jax.monitoring.register_event_duration_secs_listener(on_event)
    c0 = time.process_time()
    first, t_first = fit()
    cpu_first = time.process_time() - c0
    first_compile = dict(compile_s)
    seconds, loops, cpus = [], [], []
    for _ in range(args.repeat_second):
        c = time.process_time()
        res, t = fit()
        cpus.append(time.process_time() - c)
        seconds.append(t)
        loops.append(res.report.run_seconds)
    print(json.dumps({
        "tree": aj.__file__.rsplit("/advi_jax/", 1)[0], "case": args.case, "kind": args.kind, "n": args.n,
        "family": args.family if args.case != "lowrank" else f"lowrank{args.rank}",
        "first_s": round(t_first, 3), "first_cpu_s": round(cpu_first, 3),
        "first_trace_s": round(first_compile["jaxpr_trace_duration"], 3),
        "first_lower_s": round(first_compile["jaxpr_to_mlir_module_duration"], 3),
        "first_xla_s": round(first_compile["backend_compile_duration"], 3),
        "second_ms": round(1e3 * min(seconds), 1), "second_cpu_ms": round(1e3 * min(cpus), 1),
        "loop_ms": round(1e3 * min(loops), 1), "steps": int(first.num_steps),
        "grads": int(first.num_grad_evals) if hasattr(first, "num_grad_evals") else None,
        "converged": bool(first.converged), "elbo": float(np.asarray(first.elbo)[-1]),
        "loc": [float(v) for v in np.asarray(first.params.loc)],
    }))


if __name__ == "__main__":
    main()
