"""Timeline of the first call of the default `aj.fit`: what each thread does when.

In a fresh process per model (the model built and JAX's backend started before the clock), the
first `aj.fit(model, key=jax.random.key(0), progress=False)` runs with JAX's compile log on; every
"Finished tracing", "Finished jaxpr to MLIR module conversion" and "Finished XLA compilation"
record becomes an interval (its end is the record's time, its start the end minus the logged
seconds) on the thread that logged it. The main thread's phases of `advi_jax.run.single.fit`
(the start, the waits on the compile-ahead thread, the loop's first (compiling) call and its run,
`finish`, the diagnostics) are timed by wrapping the functions it calls. Each row: thread, start
and end (seconds from the call), what. A summary gives the wall and CPU seconds, each thread's
CPU seconds (`time.thread_time` where the thread reports it: the compile-ahead thread's jobs
are wrapped) and the main thread's seconds spent waiting for the other; the process's busy cores per 0.25 s (from
its CPU time sampled every 10 ms) and the idle core-seconds over the call (cores the machine has
minus cores busy, the rest of the machine not counted).

`--serial` compiles everything on the calling thread (`advi_jax.run.ahead.disabled`); `--beside
python|native` runs a busy thread beside the fit, holding the GIL or only a core (does another
thread's Python work slow the main thread's tracing, or its XLA compile?).

Usage:
  python -m benchmarks.bench_timeline --models eight_schools_noncentered,radon_noncentered
  python -m benchmarks.bench_timeline --trees ../base,. --repeat 2 --quiet
  python -m benchmarks.bench_timeline --models eight_schools_noncentered --serial --beside python
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time

_LOGGED = re.compile(r"Finished (tracing|jaxpr to MLIR module conversion|XLA compilation of) "
                     r"(?:jit\()?([^ )]+)\)? .*?in ([0-9.e+-]+) sec")
_KIND = {"tracing": "trace", "jaxpr to MLIR module conversion": "lower", "XLA compilation of": "xla"}


def _spin(kind: str, stop: threading.Event) -> None:
    """Busy work beside the fit: "python" holds the GIL (a pure-Python loop, which Python makes
    yield it every 5 ms), "native" only a core (NumPy products, which release the GIL)."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((400, 400))
    while not stop.is_set():
        if kind == "python":
            total = 0
            for i in range(20_000):
                total += i
        else:
            a = np.tanh(a @ a)


def _child(name: str, serial: bool = False, beside: str = "") -> dict:
    import logging

    import jax

    jax.config.update("jax_log_compiles", True)
    import advi_jax as aj
    from advi_jax.run import ahead as ahead_module
    from advi_jax.run import driver, single
    from benchmarks.bench_first_call import _build

    fn, args = _build(name)
    model = aj.from_numpyro(fn, *args)
    jax.block_until_ready(jax.numpy.zeros(3) + 1)
    events: list[tuple[str, float, float, str]] = []
    origin = [0.0]

    class Handler(logging.Handler):
        def emit(self, record):
            found = _LOGGED.search(record.getMessage())
            if found and origin[0]:
                end = record.created - origin[0]
                events.append((record.threadName, end - float(found.group(3)), end,
                               f"{_KIND[found.group(1)]} {found.group(2)}"))

    handler = Handler(level=logging.DEBUG)
    for logger_name in ("jax._src.interpreters.pxla", "jax._src.dispatch", "jax._src.pjit", "jax._src.compiler",
                        "jax._src.interpreters.mlir"):
        logger = logging.getLogger(logger_name)
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        logger.propagate = False

    def timed(owner, attr, label):
        inner = getattr(owner, attr)

        def wrapper(*a, **k):
            t0 = time.time()
            try:
                return inner(*a, **k)
            finally:
                events.append((threading.current_thread().name, t0 - origin[0], time.time() - origin[0], label))

        if hasattr(inner, "lower"):  # a jitted function: the compile-ahead thread lowers it
            wrapper.lower = inner.lower
        setattr(owner, attr, wrapper)

    thread_cpu: dict[str, float] = {}
    run_jobs = ahead_module.Ahead._run_jobs

    def run_jobs_timed(self):
        c0 = time.thread_time()
        try:
            return run_jobs(self)
        finally:
            thread_cpu["ahead"] = time.thread_time() - c0

    ahead_module.Ahead._run_jobs = run_jobs_timed
    wait = ahead_module.Ahead.wait

    def wait_timed(self, job):
        t0 = time.time()
        try:
            return wait(self, job)
        finally:
            t1 = time.time()
            if t1 - t0 > 0.002:
                events.append(("MainThread", t0 - origin[0], t1 - origin[0], f"WAIT {job}"))

    ahead_module.Ahead.wait = wait_timed
    timed(single, "resolve_start", "START (trace+lower+compile+run)")
    timed(single, "finish", "call finish")
    timed(single, "run_diagnostics", "DIAGNOSTICS")
    drive = driver.drive

    def drive_timed(*a, **k):
        t0 = time.time()
        out = drive(*a, **k)
        t1 = time.time() - origin[0]
        events.append(("MainThread", t0 - origin[0], t0 - origin[0] + out.compile_seconds, "LOOP first call (compile)"))
        events.append(("MainThread", t1 - out.run_seconds, t1, "LOOP run"))
        return out

    single.driver = type(sys)("driver_proxy")
    single.driver.__dict__.update(driver.__dict__)
    single.driver.drive = drive_timed
    timed(single.driver, "init_loop", "call init_loop")
    samples: list[tuple[float, float]] = []  # (seconds from the call, process CPU seconds) every 10 ms
    sampling = threading.Event()

    def sample():
        while not sampling.is_set():
            samples.append((time.time() - origin[0], time.process_time()))
            time.sleep(0.01)

    key = jax.random.key(0)
    jax.block_until_ready(key)
    origin[0] = time.time()
    sampler = threading.Thread(target=sample, daemon=True, name="sampler")
    sampler.start()
    wall, cpu, main_cpu = time.perf_counter(), time.process_time(), time.thread_time()
    stop = threading.Event()
    spinner = threading.Thread(target=_spin, args=(beside, stop), daemon=True) if beside else None
    if spinner is not None:
        spinner.start()
    with ahead_module.disabled() if serial else contextlib.nullcontext():
        result = aj.fit(model, key=key, progress=False)
    stop.set()
    sampling.set()
    sampler.join()
    wall, cpu, main_cpu = time.perf_counter() - wall, time.process_time() - cpu, time.thread_time() - main_cpu
    events.sort(key=lambda e: (e[1], e[2]))

    def cores(a, b):  # the process's CPU seconds per wall second over [a, b] (from the samples)
        inside = [s for s in samples if a <= s[0] <= b]
        if len(inside) < 2 or inside[-1][0] - inside[0][0] <= 0:
            return None
        return round((inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0]), 2)

    modes = {}
    for label, program in (("start", "_start_program"), ("loop", "run_chunk"), ("diag", "draws_and_log_ratios")):
        jitted = {"start": getattr(sys.modules["advi_jax.run.start"], "_start_program", None),
                  "loop": driver.run_chunk,
                  "diag": getattr(sys.modules["advi_jax.importance"], "draws_and_log_ratios", None)}[label]
        found = [m for m in ("fast", "mid", "full") if jitted is not None and getattr(jitted, m)._cache_size()]
        modes[label] = "+".join(found) or "-"
    waits = sum(e[2] - e[1] for e in events if e[3].startswith("WAIT"))
    return {"model": name, "K": int(model.dim), "wall": round(wall, 3), "cpu": round(cpu, 3),
            "main_cpu": round(main_cpu, 3), "ahead_cpu": round(thread_cpu.get("ahead", 0.0), 3),
            "main_waits": round(waits, 3), "modes": modes, "grads": int(result.num_grad_evals),
            "events": [(t, round(a, 3), round(b, 3), what, cores(a, b)) for t, a, b, what in events],
            "strip": [cores(t / 4, (t + 1) / 4) for t in range(int(wall * 4) + 1)],
            "idle_core_seconds": round(sum(max(0.0, (os.cpu_count() or 1) - c) * 0.25
                                           for c in (cores(t / 4, (t + 1) / 4) for t in range(int(wall * 4)))
                                           if c is not None), 2),
            "first_xla": round(min((a for _, a, _, what in events if what.startswith("xla")), default=0.0), 3)}


def _run_child(name: str, tree: str, serial: bool = False, beside: str = "") -> dict:
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    cwd = os.path.abspath(tree) if tree else None
    if cwd:
        env["PYTHONPATH"] = os.pathsep.join([cwd, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
                                            + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_timeline", "--child", name] + (["--serial"] if serial else [])
                          + (["--beside", beside] if beside else []), env=env,
                          capture_output=True, text=True, timeout=900, cwd=cwd)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            row = json.loads(line)
            row["tree"] = (os.path.basename(cwd) if cwd else ".") + (" serial" if serial else "") + (f" +{beside}" if beside else "")
            return row
    return {"model": name, "tree": tree, "error": (proc.stderr or proc.stdout)[-1500:]}


def _show(row: dict, events: bool) -> str:
    if "error" in row:
        return f"{row['tree']} {row['model']}: ERROR {row['error']}"
    lines = [f"{row['tree']:10s} {row['model']:28s} K={row['K']:3d} wall {row['wall']:.2f} s cpu {row['cpu']:.2f} "
             f"(main {row['main_cpu']:.2f}, ahead {row['ahead_cpu']:.2f}) main waits {row['main_waits']:.2f} s "
             f"grads {row['grads']} modes {row['modes']}\n    first XLA compile began at {row['first_xla']:.2f} s; "
             f"idle core-seconds {row['idle_core_seconds']:.2f} of {(os.cpu_count() or 1) * row['wall']:.2f}"]
    if events:
        lines.append("    cores busy per 0.25 s: " + " ".join("-" if c is None else f"{c:.1f}" for c in row["strip"]))
        for thread, a, b, what, busy in row["events"]:
            if b - a >= 0.01 or what.startswith(("WAIT", "START", "LOOP")):
                lane = "main " if thread == "MainThread" else "ahead" if "ahead" in thread else thread[:5]
                busy = f"  [{busy:.2f} cores]" if busy is not None else ""
                lines.append(f"    {lane} {a:6.3f} - {b:6.3f} ({b - a:5.3f})  {what}{busy}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="eight_schools_noncentered,wells_badly_scaled,breast_cancer_logistic,"
                        "radon_noncentered")
    parser.add_argument("--trees", default="")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--quiet", action="store_true", help="summary lines only")
    parser.add_argument("--serial", action="store_true", help="every program on the calling thread "
                        "(`advi_jax.run.ahead.disabled`), for comparison")
    parser.add_argument("--beside", default="", choices=("", "python", "native"),
                        help="a busy thread beside the fit: 'python' holds the GIL, 'native' a core only")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.serial, args.beside)), flush=True)
        return
    trees = [t for t in args.trees.split(",") if t] or [""]
    for round_ in range(args.repeat):
        print(f"round {round_ + 1}/{args.repeat}, load average {os.getloadavg()}", flush=True)
        for name in [m for m in args.models.split(",") if m]:
            for tree in trees:
                print(_show(_run_child(name, tree, args.serial, args.beside), not args.quiet), flush=True)


if __name__ == "__main__":
    main()
