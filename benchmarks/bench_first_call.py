"""First-call wall time of the default `aj.fit` (compile included), per compiled program, against NumPyro.

For each model, in a fresh Python process per measurement (so every first call compiles from
nothing; the model is built and its data loaded before the clock starts):

* `advi_jax`: `aj.fit(model, key=..., progress=False)` with every default (`method="auto"`),
  first call and second call (another key, same shapes: nothing compiles). `--modes` runs it
  with the compiler options chosen by `advi_jax.compile_options` ("auto", the default rule),
  forced to XLA's defaults ("full") or forced to the fast options ("fast"), or "serial": "auto"
  with every program compiled on the calling thread (`advi_jax.run.ahead.disabled`; the
  background compile overlaps the start's only where the process gets two cores: on a loaded
  machine "serial" and "auto" take alike), or "cached": "auto" in a process that turned on the
  persistent compilation cache (`aj.enable_compilation_cache`) in a fresh folder that an earlier,
  unmeasured process of the same model filled (a script run a second time). `fast=` says which of the start, loop and
  diagnostics programs compiled with the fast options. Each row lists the XLA compile seconds of every
  compiled program (from JAX's compile log), the number of compiles, the seconds spent tracing
  and lowering to MLIR, and the process CPU time;
* `numpyro`: `SVI(model, AutoMultivariateNormal(model), Adam(0.01), Trace_ELBO()).run` for
  `--numpyro-steps` (10,000) steps, first and second call (`progress_bar=False`).

Measurements alternate between systems, `--repeat` rounds, so a loaded machine affects each alike;
the machine's load average is printed with each round. `--trees` adds checkouts to alternate
with (e.g. main's, for a before/after comparison): each advi_jax row then runs in a fresh process
from each checkout in turn (its directory first on PYTHONPATH), labelled with its folder name.

Usage:
  python -m benchmarks.bench_first_call
  python -m benchmarks.bench_first_call --models eight_schools_noncentered --modes auto,full --repeat 3
  python -m benchmarks.bench_first_call --modes serial,auto --repeat 3
  python -m benchmarks.bench_first_call --methods auto,pathfinder,dadvi,bam --skip numpyro
  python -m benchmarks.bench_first_call --modes auto,cached --skip numpyro   # a script run again
  python -m benchmarks.bench_first_call --synthetic 1000x10,100000x10 --modes fast,full --skip numpyro
  python -m benchmarks.bench_first_call --trees ../main,. --repeat 2 --skip numpyro
  python -m benchmarks.bench_first_call --models gp_marginal,hier_logistic_nc   # held-out (benchmarks.holdout)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

DEFAULT_MODELS = ("eight_schools_noncentered", "breast_cancer_logistic", "wells_badly_scaled", "radon_noncentered")
_COMPILE = re.compile(r"Finished XLA compilation of jit\((.*?)\) in ([0-9.e+-]+) sec")
_TRACE = re.compile(r"Finished (tracing|jaxpr to MLIR module conversion) .*? in ([0-9.e+-]+) sec")


def _synthetic_logistic(n: int, d: int):
    import numpy as np
    import numpyro
    import numpyro.distributions as dist

    from benchmarks.common import logistic_data

    x, y = logistic_data(n, d)

    def model(x, y):
        a = numpyro.sample("a", dist.Normal(0.0, 10.0))
        beta = numpyro.sample("beta", dist.Normal(0.0, 2.5).expand([x.shape[1]]).to_event(1))
        with numpyro.plate("n", x.shape[0]):
            numpyro.sample("y", dist.Bernoulli(logits=a + x @ beta), obs=y)

    return model, (np.asarray(x), np.asarray(y))


def _build(name: str):
    """(numpyro model function, its positional arguments)."""
    match = re.fullmatch(r"logistic_(\d+)x(\d+)", name)
    if match:
        return _synthetic_logistic(int(match.group(1)), int(match.group(2)))
    from benchmarks.holdout import MODELS as HOLDOUT  # the held-out posteriors (benchmarks.holdout) by name

    if name in HOLDOUT:
        return HOLDOUT[name]().fn, HOLDOUT[name]().args
    from benchmarks.suite import available_models

    found = available_models([name])
    if name not in found:
        raise SystemExit(f"model {name!r} is not available (its data file is missing)")
    return found[name].fn, found[name].args


class _CompileLog:
    """Collects JAX's compile log records (jax_log_compiles) of the calls in between."""

    def __init__(self):
        import logging

        self.records: list[str] = []
        outer = self

        class Handler(logging.Handler):
            def emit(self, record):
                outer.records.append(record.getMessage())

        self.handler = Handler(level=logging.DEBUG)
        for name in ("jax._src.interpreters.pxla", "jax._src.dispatch", "jax._src.pjit", "jax._src.compiler",
                     "jax._src.interpreters.mlir"):
            logger = logging.getLogger(name)
            logger.addHandler(self.handler)
            logger.setLevel(logging.DEBUG)
            logger.propagate = False

    def take(self) -> dict:
        programs: dict[str, float] = {}
        count, tracing = 0, 0.0
        for message in self.records:
            found = _COMPILE.search(message)
            if found:
                count += 1
                programs[found.group(1)] = programs.get(found.group(1), 0.0) + float(found.group(2))
                continue
            found = _TRACE.search(message)
            if found:
                tracing += float(found.group(2))
        self.records.clear()
        big = {k: round(v, 3) for k, v in sorted(programs.items(), key=lambda kv: -kv[1]) if v >= 0.05}
        return {"compiles": count, "xla_seconds": round(sum(programs.values()), 3),
                "trace_lower_seconds": round(tracing, 3), "programs": big}


def _child_advi(name: str, mode: str) -> dict:
    import jax

    mode, _, method = mode.partition("@")  # "auto@pathfinder": aj.fit(..., method="pathfinder")
    method = method or "auto"

    jax.config.update("jax_log_compiles", True)
    import contextlib

    import advi_jax as aj

    try:
        from advi_jax import compile_options
    except ImportError:  # a version before advi_jax.compile_options: XLA's defaults
        compile_options = None
    if mode == "cached":  # the folder under $ADVI_JAX_CACHE_DIR, which the parent set
        try:
            from advi_jax.compilation_cache import enable_compilation_cache
        except ImportError:  # a version before aj.enable_compilation_cache: the command line's
            from advi_jax.cli import enable_compilation_cache
        enable_compilation_cache()
    fn, args = _build(name)
    model = aj.from_numpyro(fn, *args)
    log = _CompileLog()
    log.take()
    out = {"system": "advi_jax", "model": name, "mode": mode if method == "auto" else f"{mode}@{method}",
           "K": int(model.dim),
           "data_entries": sum(int(getattr(x, "size", 0)) for x in jax.tree_util.tree_leaves(model))}
    forced = contextlib.nullcontext() if compile_options is None else compile_options.forced(
        None if mode in ("auto", "serial", "cached") else mode)
    try:
        from advi_jax.run import ahead
    except ImportError:  # a version before advi_jax.run.ahead: everything compiles on the calling thread
        ahead = None
    serial = ahead.disabled() if (mode == "serial" and ahead is not None) else contextlib.nullcontext()
    with forced, serial:
        for call in (0, 1):
            wall, cpu = time.perf_counter(), time.process_time()
            result = aj.fit(model, key=jax.random.key(call), progress=False,
                            **({} if method == "auto" else {"method": method}))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            out[f"call{call}"] = {"wall": round(wall, 3), "cpu": round(cpu, 3), **log.take(),
                                  "start": round(result.start_seconds, 3),
                                  "loop_compile": round(result.compile_seconds, 3),
                                  "run": round(result.run_seconds, 3),
                                  "diagnostics": round(result.diagnostics_seconds, 3)}
    out.update(khat=round(float(result.khat), 3), grads=int(result.num_grad_evals), init=result.init_method,
               fast=_fast_programs())
    return out


def _fast_programs() -> str:
    """Which of the fit's main programs compiled with the fast options ("start+diag", "all", "none")."""
    try:
        from advi_jax import importance
        from advi_jax.run import driver
        from advi_jax.run import start as start_module
        programs = {"start": start_module._start_program, "loop": driver.run_chunk,
                    "diag": importance.draws_and_log_ratios}
        fast = [name for name, program in programs.items() if program.fast._cache_size()]
    except (ImportError, AttributeError):  # a version without per-program options
        return "?"
    return "all" if len(fast) == 3 else "+".join(fast) or "none"


def _child_numpyro(name: str, steps: int) -> dict:
    import jax
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoMultivariateNormal
    from numpyro.optim import Adam

    fn, args = _build(name)
    out = {"system": "numpyro", "model": name, "mode": f"AutoMVN {steps} steps"}
    for call in (0, 1):
        svi = SVI(fn, AutoMultivariateNormal(fn), Adam(0.01), Trace_ELBO())
        wall, cpu = time.perf_counter(), time.process_time()
        res = svi.run(jax.random.key(call), steps, *args, progress_bar=False)
        jax.block_until_ready(res.params)
        out[f"call{call}"] = {"wall": round(time.perf_counter() - wall, 3), "cpu": round(time.process_time() - cpu, 3)}
    return out


def _run_child(argv: list[str], timeout: float, tree: str = "", cache: str = "") -> dict:
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    if argv[0] == "advi" and argv[2] == "cached" and not cache:  # an unmeasured run fills a fresh folder first
        import shutil
        import tempfile

        cache = tempfile.mkdtemp(prefix="bench-first-call-cache-")
        try:
            _run_child(argv, timeout, tree, cache)
            return _run_child(argv, timeout, tree, cache)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    if cache:
        env["ADVI_JAX_CACHE_DIR"] = cache
    cwd = None
    if tree:  # that checkout's advi_jax (and benchmarks) first on the path
        cwd = os.path.abspath(tree)
        env["PYTHONPATH"] = os.pathsep.join([cwd] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_first_call", "--child", *argv], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            row = json.loads(line)
            if tree:
                row["tree"] = os.path.basename(cwd)
            return row
    return {"error": (proc.stderr or proc.stdout)[-800:], "argv": argv}


def _show(row: dict) -> str:
    if "error" in row:
        return f"  ERROR {row['argv']}: {row['error']}"
    first, second = row["call0"], row["call1"]
    system = row["system"] + (f"@{row['tree']}" if "tree" in row else "")
    text = (f"  {system:8s} {row['model'][:26]:26s} {row['mode'][:20]:20s} first {first['wall']:6.2f} s "
            f"(cpu {first['cpu']:5.2f})  second {second['wall']:6.3f} s")
    if row["system"] == "advi_jax":
        text += (f"  K={row['K']} entries={row['data_entries']} fast={row['fast']}  compiles {first['compiles']} "
                 f"xla {first['xla_seconds']:.2f} s trace+lower {first['trace_lower_seconds']:.2f} s  "
                 f"[start {first['start']:.2f} loop-compile {first['loop_compile']:.2f} run {first['run']:.2f} "
                 f"diag {first['diagnostics']:.2f}]  k-hat {row['khat']} grads {row['grads']}\n"
                 f"      programs: {first['programs']}")
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--synthetic", default="", help="logistic regressions NxD, e.g. 1000x10,100000x10")
    parser.add_argument("--modes", default="auto", help="comma list of auto, full, fast, serial (auto without "
                        "the background compile of advi_jax.run.ahead)")
    parser.add_argument("--methods", default="auto", help="comma list of aj.fit methods (auto, pathfinder, "
                        "dadvi, bam, advi, ...); each runs with every mode")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--numpyro-steps", type=int, default=10_000)
    parser.add_argument("--skip", default="", help="'numpyro' to skip the peer")
    parser.add_argument("--json", default="", help="write the rows to this file")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--trees", default="", help="comma list of checkouts whose advi_jax to alternate (default: "
                        "this one's only)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, name, extra = args.child
        row = _child_advi(name, extra) if kind == "advi" else _child_numpyro(name, int(extra))
        print(json.dumps(row), flush=True)
        return
    names = [m for m in args.models.split(",") if m] + [f"logistic_{s}" for s in args.synthetic.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    rows = []
    for round_ in range(args.repeat):
        print(f"round {round_ + 1}/{args.repeat}, load average {os.getloadavg()}", flush=True)
        for name in names:
            trees = [t for t in args.trees.split(",") if t] or [""]
            methods = [m for m in args.methods.split(",") if m]
            jobs = [(["advi", name, mode if method == "auto" else f"{mode}@{method}"], tree)
                    for method in methods for mode in modes for tree in trees]
            if "numpyro" not in args.skip:
                jobs.append((["numpyro", name, str(args.numpyro_steps)], ""))
            for job, tree in jobs:
                row = _run_child(job, args.timeout, tree)
                rows.append(row)
                print(_show(row), flush=True)
    if args.json:
        from benchmarks.common import machine, versions, write_json

        write_json(args.json, {"rows": rows, "versions": versions(), "machine": machine()})


if __name__ == "__main__":
    main()
