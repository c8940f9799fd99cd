"""Calibrate and check the arithmetic rule of `advi_jax.compile_options` (fast or "mid" per program).

For each model, in a fresh Python process per compile mode ("fast", "mid": every program of the
default `aj.fit` forced to it, compiled on the calling thread), the default fit runs twice; for
the start program, the driver's loop and the diagnostics' draws it records the compile CPU time
(`jit(...).lower(...).compile()`), the run time of the second fit's calls (the loop per step)
and the program's `compile_options.arithmetic` (while loops counted once, so the loop's figures
are per step). Then it prints, per program, the fast code's extra run time against the "mid"
code's, measured and estimated (`FAST_EXTRA_SECONDS`), the compile CPU saved per equation, a
non-negative least-squares fit of the per-unit constants on the loops (relative errors), and the
rule's choice for the loop over its expected steps (`run.single._expected_steps`).

Usage:
  python -m benchmarks.bench_compile_rule
  python -m benchmarks.bench_compile_rule --models breast_cancer_logistic,radon_noncentered
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

DEFAULT_MODELS = ("breast_cancer_logistic", "wells_badly_scaled", "radon_noncentered", "eight_schools_noncentered",
                  "german_credit_logistic", "births_poisson_state", "garch11", "lkj_mvn", "radon_varying_slopes")
PROGRAMS = ("_start_program", "run_chunk", "centred_log_ratios")


def _child(name: str, mode: str) -> dict:
    import jax

    import advi_jax as aj
    from advi_jax import compile_options
    from advi_jax.run import ahead
    from benchmarks.bench_first_call import _build

    fn, args = _build(name)
    model = aj.from_numpyro(fn, *args)
    record: dict = {}
    call = compile_options._SizedJit.__call__

    def timed_call(self, *a, **k):
        version, program = self._pick(a, k), self.__name__
        if program not in PROGRAMS:
            return call(self, *a, **k)
        row = record.setdefault(program, {"calls": 0, "run": 0.0, "steps": 0})
        if "compile_cpu" not in row:
            lowered = version.lower(*a, **k)
            row["arithmetic"] = compile_options.arithmetic(self.full.trace(*a, **k).jaxpr)._asdict()
            tick = time.process_time()
            lowered.compile()
            row["compile_cpu"] = time.process_time() - tick
        tick = time.perf_counter()
        out = jax.block_until_ready(version(*a, **k))
        seconds = time.perf_counter() - tick
        if program == "run_chunk":
            before = int(a[1].step)
            if int(a[3]) > before:  # not the driver's zero-step (compile) call
                row["run"] += seconds
                row["steps"] += int(out[0].step) - before
        else:
            row["run"] += seconds
            row["calls"] += 1
        return out

    compile_options._SizedJit.__call__ = timed_call
    with compile_options.forced(mode), ahead.disabled():
        for key in (0, 1):
            for row in record.values():
                row.update(calls=0, run=0.0, steps=0)
            result = aj.fit(model, key=jax.random.key(key), progress=False, warn=False)
    return {"model": name, "mode": mode, "K": int(model.dim), "grads": int(result.num_grad_evals),
            "steps": int(result.num_steps), "programs": record}


def _run_child(name: str, mode: str, timeout: float) -> dict | None:
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_compile_rule", "--child", name, mode], env=env,
                          capture_output=True, text=True, timeout=timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    print(f"  ERROR {name} {mode}: {(proc.stderr or proc.stdout)[-600:]}", flush=True)
    return None


def _per_call(row: dict, program: str) -> float:
    return row["run"] / max(row["steps"], 1) if program == "run_chunk" else row["run"] / max(row["calls"], 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(*args.child)), flush=True)
        return
    import numpy as np
    from scipy.optimize import nnls

    from advi_jax import compile_options as co

    units = ("elementwise", "transcendental", "dot", "linalg", "operations")
    print(f"load average {os.getloadavg()}", flush=True)
    loops_x, loops_y = [], []
    for name in [m for m in args.models.split(",") if m]:
        fast, mid = _run_child(name, "fast", args.timeout), _run_child(name, "mid", args.timeout)
        if fast is None or mid is None:
            continue
        print(f"{name} (K={fast['K']}, {fast['steps']} loop steps, {fast['grads']} gradients)", flush=True)
        for program in PROGRAMS:
            f, m = fast["programs"].get(program), mid["programs"].get(program)
            if not f or not m:
                continue
            cost = co.Arithmetic(**f["arithmetic"])
            measured = _per_call(f, program) - _per_call(m, program)
            estimated = float(np.dot(co.FAST_EXTRA_SECONDS[1:], cost[1:]))
            saved = m["compile_cpu"] - f["compile_cpu"]
            per = "step" if program == "run_chunk" else "call"
            text = (f"  {program:18s} fast - mid run per {per}: measured {measured * 1e6:9.1f} us, estimated "
                    f"{estimated * 1e6:9.1f} us;  compile CPU fast {f['compile_cpu']:.2f} s, mid {m['compile_cpu']:.2f} s "
                    f"({saved / cost.eqns * 1e3:.2f} ms per equation, {cost.eqns} equations)")
            if program == "run_chunk":
                from advi_jax.run.choose import AUTO_ADVI
                from advi_jax.run.single import _expected_steps

                trips = _expected_steps(AUTO_ADVI.num_steps(fast["K"]), True)
                extra, budget = estimated * trips, co.FAST_SAVED_SECONDS_PER_EQN * cost.eqns
                text += (f";  over {trips} steps: extra {extra:.2f} s against {budget:.2f} s saved: "
                         f"{'fast' if extra <= budget else 'mid'}")
                loops_x.append([cost[1 + i] for i in range(len(units))])
                loops_y.append(measured)
            print(text, flush=True)
    if len(loops_y) >= len(units):
        x, y = np.asarray(loops_x), np.asarray(loops_y)
        weight = 1.0 / np.maximum(np.abs(y), 30e-6)
        for keep in ((0, 1, 4), tuple(range(len(units)))):
            coef, _ = nnls(x[:, keep] * weight[:, None], y * weight)
            fitted = dict.fromkeys(units, 0.0)
            fitted.update({units[i]: float(c) for i, c in zip(keep, coef)})
            print("NNLS on the loops (s per unit):", {k: f"{v:.3g}" for k, v in fitted.items()}, flush=True)


if __name__ == "__main__":
    main()
