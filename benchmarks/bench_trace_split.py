"""Where the first `aj.fit`'s tracing and lowering time goes, per compiled program.

For each model: one default fit with every program compiled on the calling thread
(`advi_jax.run.ahead.disabled`) records each program of `advi_jax.compile_options` with its
arguments, and times the model's own Python (the NumPyro model function, handlers and
distributions included) over the fit. Then, with JAX's caches cleared before each round, each
program is traced (`.trace`) and lowered to StableHLO (`.lower`) alone, and the row gives its thread
CPU seconds (the minimum over `--repeat` rounds, which a loaded machine inflates least), its
equations (recursively) and how many of them sit inside the model's log-density calls
(`_log_density`, after vmap/jvp/transpose), once as the fit runs it and once with NumPyro's
sample validation off (`numpyro.validation_enabled(False)`: each `log_prob` then skips its
support mask, `where(in_support, log_prob, -inf)`; not what the fit does, shown for its size).
The first line also gives the seconds spent in Python's garbage collector during the fit.

Usage:
  python -m benchmarks.bench_trace_split
  python -m benchmarks.bench_trace_split --models radon_noncentered --repeat 5
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import time
import warnings

DEFAULT_MODELS = ("breast_cancer_logistic", "wells_badly_scaled", "radon_noncentered")


def _size(jaxpr, inside: bool = False) -> tuple[int, int]:
    """(equations, equations inside the model's log-density calls), recursively."""
    from jax._src.core import jaxprs_in_params

    total = model = 0
    for eqn in jaxpr.eqns:
        here = inside or (eqn.primitive.name in ("jit", "pjit") and "_log_density" in str(eqn.params.get("name")))
        total, model = total + 1, model + int(here)
        for sub in jaxprs_in_params(eqn.params):
            t, m = _size(sub, here)
            total, model = total + t, model + m
    return total, model


def _name(program) -> str:
    """A program's name: its function's, or (a wrapped partial without one) the wrapped function's."""
    name = getattr(program, "__name__", None)
    if name is None:
        inner = getattr(getattr(program, "__wrapped__", None), "func", None)
        name = getattr(inner, "__name__", f"program_{id(program):x}")
    return name


def _record(model) -> tuple[dict, float, float]:
    """Each program's first call (self, args, kwargs) in a serial default fit, the fit's gc seconds, its CPU seconds."""
    import jax

    import advi_jax as aj
    from advi_jax import compile_options as co
    from advi_jax.run import ahead

    seen: dict = {}
    call, lower = co._SizedJit.__call__, co._SizedJit.lower

    def recording(original):
        def wrapped(self, *args, **kwargs):
            seen.setdefault(_name(self), (self, args, kwargs))
            return original(self, *args, **kwargs)
        return wrapped

    collected, started = [0.0], [0.0]

    def on_gc(phase, info):
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            collected[0] += time.perf_counter() - started[0]

    co._SizedJit.__call__, co._SizedJit.lower = recording(call), recording(lower)
    gc.callbacks.append(on_gc)
    cpu = time.process_time()
    try:
        with ahead.disabled(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            aj.fit(model, key=jax.random.key(0), progress=False)
    finally:
        co._SizedJit.__call__, co._SizedJit.lower = call, lower
        gc.callbacks.remove(on_gc)
    return seen, collected[0], time.process_time() - cpu


def _measure(seen: dict, repeat: int, validate: bool) -> dict:
    import jax
    import numpyro

    rows: dict = collections.defaultdict(lambda: {"trace": [], "lower": []})
    with contextlib.nullcontext() if validate else numpyro.validation_enabled(False):
        for _ in range(repeat):
            jax.clear_caches()
            for name, (program, args, kwargs) in seen.items():
                jitted = program._pick(args, kwargs)
                t0 = time.thread_time()
                traced = jitted.trace(*args, **kwargs)
                t1 = time.thread_time()
                traced.lower()
                t2 = time.thread_time()
                rows[name]["trace"].append(t1 - t0)
                rows[name]["lower"].append(t2 - t1)
                rows[name]["eqns"] = _size(traced.jaxpr.jaxpr)
        jax.clear_caches()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    import advi_jax as aj
    from benchmarks.bench_first_call import _build

    import numpyro.infer.util as numpyro_util

    spent = [0.0]
    log_density = numpyro_util.log_density

    def timed(*a, **k):  # NumPyro's log_density: the handlers, the model function, the distributions
        start = time.thread_time()
        try:
            return log_density(*a, **k)
        finally:
            spent[0] += time.thread_time() - start

    numpyro_util.log_density = timed  # from_numpyro looks it up when it builds the model
    for name in args.models.split(","):
        fn, fn_args = _build(name)
        model = aj.from_numpyro(fn, *fn_args)
        spent[0] = 0.0
        seen, gc_seconds, cpu = _record(model)
        print(f"{name} (K={model.dim}): serial first fit cpu {cpu:.2f} s, of which the model's Python "
              f"(NumPyro handlers + distributions) {spent[0]:.3f} s, garbage collection {gc_seconds:.3f} s")
        results = {mode: _measure(seen, args.repeat, mode) for mode in (True, False)}
        totals = collections.Counter()
        print(f"  {'program':22s} {'as fit: trace':>15s} {'lower':>6s} {'eqns (in model)':>16s}   "
              f"{'no validation: trace':>20s} {'lower':>6s} {'eqns (in model)':>16s}")
        for program in seen:
            line = f"  {program[:22]:22s}"
            for mode in (True, False):
                row = results[mode][program]
                trace, lower = min(row["trace"]), min(row["lower"])
                totals[(mode, "trace")] += trace
                totals[(mode, "lower")] += lower
                eqns = f"{row['eqns'][0]} ({row['eqns'][1]})"
                line += f" {trace:{15 if mode else 20}.3f} {lower:6.3f} {eqns:>16s}  "
            print(line)
        print(f"  {'total':22s} {totals[(True, 'trace')]:15.3f} {totals[(True, 'lower')]:6.3f} {'':16s}   "
              f"{totals[(False, 'trace')]:20.3f} {totals[(False, 'lower')]:6.3f}")


if __name__ == "__main__":
    main()
