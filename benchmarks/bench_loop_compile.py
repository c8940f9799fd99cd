"""Compile and run cost of the default fit's ADVI loop program (`driver.run_chunk`) per compiler mode.

For each model, in this process: one default `aj.fit` (with every program compiled "fast", so no
loop program of the measured modes is cached) records the arguments of its loop calls; then, for
each mode of `advi_jax.compile_options` ("fast", "mid", "full"), the loop program is lowered
again from those arguments and compiled `--repeat` times (JAX's caches cleared before each), and
the compiled program runs the fit's longest chunk three times. Printed per mode: the compile's
process CPU time (min and median over the repeats; XLA's CPU compile runs partly on its own
threads, so CPU time is the total and suffers less from a loaded machine than wall time), the
optimised program's HLO instructions and fusions, the run time per step (best of three) and that
times the fit's steps (its gradients / 4 draws per step): what the loop costs a first call.

Usage:
  python -m benchmarks.bench_loop_compile --models radon_noncentered
  python -m benchmarks.bench_loop_compile --models radon_noncentered,breast_cancer_logistic --modes fast,mid --repeat 3
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

import advi_jax as aj  # noqa: E402
from advi_jax import compile_options  # noqa: E402
from advi_jax.run import choose, driver  # noqa: E402
from benchmarks.bench_first_call import _build  # noqa: E402

_OPTIONS = {"fast": compile_options.FAST_OPTIONS, "mid": compile_options.MID_OPTIONS, "full": {}}


def _loop_calls(name: str) -> tuple[list, int, int]:
    """The default fit's loop calls (args, kwargs), its K and its steps."""
    calls: list = []
    program = driver.run_chunk
    original = type(program).__call__

    def record(self, *args, **kwargs):
        if self is program:
            calls.append((args, kwargs))
        return original(self, *args, **kwargs)

    type(program).__call__ = record
    try:
        fn, args = _build(name)
        model = aj.from_numpyro(fn, *args)
        with compile_options.forced("fast"):
            result = aj.fit(model, key=jax.random.key(0), progress=False)
    finally:
        type(program).__call__ = original
    return calls, int(model.dim), int(result.num_grad_evals) // choose.AUTO_ADVI.num_samples


def measure(name: str, modes: list[str], repeat: int) -> list[dict]:
    """One row per mode (see the module docstring)."""
    calls, k, steps = _loop_calls(name)
    args, kwargs = max(calls, key=lambda c: int(c[0][3]) - int(c[0][1].step))  # the longest chunk
    fun = driver.run_chunk.__wrapped__
    rows = []
    for mode in modes:
        seconds = []
        for _ in range(repeat):
            jax.clear_caches()
            lowered = jax.jit(fun, static_argnames=("cfg",), compiler_options=dict(_OPTIONS[mode])).lower(
                *args, **kwargs)
            cpu = time.process_time()
            compiled = lowered.compile()
            seconds.append(time.process_time() - cpu)
        text = compiled.as_text()
        instructions = sum(1 for line in text.splitlines() if re.match(r"^\s+(ROOT )?%\S+ = ", line))
        dynamic = args[:5]  # the compiled program takes the non-static arguments
        jax.block_until_ready(compiled(*dynamic))
        runs = []
        for _ in range(3):
            wall = time.perf_counter()
            out = jax.block_until_ready(compiled(*dynamic))
            runs.append(time.perf_counter() - wall)
        ran = max(int(out[0].step) - int(args[1].step), 1)
        per_step = min(runs) / ran
        rows.append({"model": name, "K": k, "mode": mode, "compile_cpu_min": round(min(seconds), 2),
                     "compile_cpu_median": round(statistics.median(seconds), 2), "hlo_instructions": instructions,
                     "fusions": len(re.findall(r" fusion\(", text)), "us_per_step": round(per_step * 1e6),
                     "fit_steps": steps, "fit_run_s": round(per_step * steps, 2)})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="radon_noncentered")
    parser.add_argument("--modes", default="fast,mid,full")
    parser.add_argument("--repeat", type=int, default=2)
    a = parser.parse_args()
    modes = a.modes.split(",")
    unknown = [m for m in modes if m not in _OPTIONS]
    if unknown:
        raise SystemExit(f"--modes: unknown {unknown}; expected some of {list(_OPTIONS)}")
    for name in a.models.split(","):
        measure(name, modes, a.repeat)


if __name__ == "__main__":
    main()
