"""What splitting the start program in two could save on a first call (an estimate, no library change).

The first call's one idle stretch is the main thread tracing and lowering the start program
(`advi_jax.run.start._start_program`) with one core busy (benchmarks/PERFORMANCE.md, "critpath").
Split in two programs, the first (the Pathfinder path and the candidates' ELBOs: `_start_program`
with `bam_steps=0`) could compile while the second (BaM's refinement, `start._choose_and_refine`,
which also takes the candidates' ELBOs again: the two share BaM's scan) is traced and lowered. In a fresh process per row, from the same abstract arguments as the default
fit's start (K from the model, 100 BaM steps of 16 draws, the fast compiler options), this times:

* "whole": lowering (trace + lower) and XLA compile of `_start_program`;
* "split": lowering and compile of the first part, then of the second (in that order, so the
  second finds the model's transformations the first traced in JAX's caches, as a fit would).

The estimate of the split's critical path is T1 + max(X1, T2) + X2 (the first part compiling on
the second core while the second is lowered) against T + X for the whole program; the run of the
two parts is not included (about the whole's).

Usage:
  python -m benchmarks.bench_start_split --models eight_schools_noncentered,radon_noncentered --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _child(name: str, part: str) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import advi_jax as aj
    from advi_jax import compile_options
    from advi_jax.run import start
    from benchmarks.bench_first_call import _build

    fn, args = _build(name)
    model = aj.from_numpyro(fn, *args)
    k, dtype = int(model.dim), jnp.result_type(float)
    jax.block_until_ready(jnp.zeros(3) + 1)
    loc, key = jax.ShapeDtypeStruct((k,), dtype), jax.random.key(0)
    radius = np.asarray(2.0, np.dtype(dtype))
    steps, batch = start.BAM_START_STEPS, start.BAM_START_BATCH
    out = {"model": name, "part": part, "K": k}
    def noise(bam_steps):  # the host's draws, as a fit passes them
        return jax.ShapeDtypeStruct((start.start_num_draws(bam_steps, batch), k), dtype)

    if part == "whole":
        t0 = time.perf_counter()
        lowered = start._start_program.fast.lower(model, loc, key, False, 0.1, steps, batch, radius=radius,
                                                  noise=noise(steps))
        t1 = time.perf_counter()
        lowered.compile()
        out.update(lower=t1 - t0, xla=time.perf_counter() - t1)
        return out
    t0 = time.perf_counter()
    first = start._start_program.fast.lower(model, loc, key, False, 0.1, 0, batch, radius=radius, noise=noise(0))
    t1 = time.perf_counter()
    first.compile()
    t2 = time.perf_counter()
    refine = jax.jit(start._choose_and_refine, static_argnames=("batch_size",),
                     compiler_options=dict(compile_options.FAST_OPTIONS))
    draws = jax.ShapeDtypeStruct((start.start_elbo_grad_evals(0) // 3, k), dtype)
    second = refine.lower(model, jax.ShapeDtypeStruct((3, k), dtype), jax.ShapeDtypeStruct((3, k, k), dtype),
                          jax.ShapeDtypeStruct((3,), bool), draws, jax.ShapeDtypeStruct((steps, batch, k), dtype),
                          draws, batch_size=batch)
    t3 = time.perf_counter()
    second.compile()
    out.update(lower1=t1 - t0, xla1=t2 - t1, lower2=t3 - t2, xla2=time.perf_counter() - t3)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="eight_schools_noncentered,breast_cancer_logistic,wells_badly_scaled,"
                        "radon_noncentered")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(*args.child)), flush=True)
        return
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    for round_ in range(args.repeat):
        print(f"round {round_ + 1}/{args.repeat}, load average {os.getloadavg()}", flush=True)
        for name in [m for m in args.models.split(",") if m]:
            rows = {}
            for part in ("whole", "split"):
                proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_start_split", "--child", name, part],
                                      env=env, capture_output=True, text=True, timeout=600)
                lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
                if not lines:
                    print(f"  {name} {part}: ERROR {proc.stderr[-600:]}", flush=True)
                    break
                rows[part] = json.loads(lines[-1])
            if len(rows) < 2:
                continue
            w, s = rows["whole"], rows["split"]
            whole = w["lower"] + w["xla"]
            split = s["lower1"] + max(s["xla1"], s["lower2"]) + s["xla2"]
            print(f"  {name:28s} K={w['K']:3d} whole: lower {w['lower']:.2f} + xla {w['xla']:.2f} = {whole:.2f} s | "
                  f"split: lower {s['lower1']:.2f} + xla {s['xla1']:.2f}, then lower {s['lower2']:.2f} + xla "
                  f"{s['xla2']:.2f}; pipelined {split:.2f} s (saves {whole - split:+.2f} s; compile "
                  f"{s['xla1'] + s['xla2']:.2f} against {w['xla']:.2f} s)", flush=True)


if __name__ == "__main__":
    main()
