"""The ready GLMs' first `aj.fit` call in a fresh process: wall and CPU time, and each program's compile.

Each measurement is one child process (`--child`) that imports advi_jax, builds a logistic or
Poisson regression on `benchmarks.common`'s synthetic data, makes the key (`jax.random.key(0)`,
timed apart: a user's own programs), then calls `aj.fit(model, key=key, family=...)` as a user
does (`method="auto"`: glm_exact) with the diagnostics on or off, then a second time. Reported:
the import, the fit's first call (wall and process CPU), the second call, the whole script, and
from JAX's compile log (`jax_log_compiles`) every program of the first call with its tracing,
lowering and XLA-compile seconds (on either of the fit's threads). `--trees` alternates
checkouts (each child imports that tree's advi_jax), so before / after run in one session.

Usage:
  python -m benchmarks.bench_glm_first_call                       # N = 1e4, D = 10, both kinds and families
  chrt -r 10 python -m benchmarks.bench_glm_first_call --trees ../base,. --repeat 3 --diagnostics 0,1
  python -m benchmarks.bench_glm_first_call --d 10,100 --programs # also list the programs
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import time

_STAGES = {"tracing": "trace", "jaxpr to MLIR module conversion": "lower", "XLA compilation of": "compile"}
_LINE = re.compile(r"Finished (tracing|jaxpr to MLIR module conversion|XLA compilation of) (?:jit\()?(\w+)\)?"
                   r"(?: for jit)? in ([0-9.e-]+) sec")


def child(kind: str, family: str, n: int, d: int, diagnostics: bool) -> dict:
    """One fresh process's measurement (run with --child)."""
    began = time.perf_counter()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    records: list = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append((time.perf_counter(), record.getMessage()))

    logger = logging.getLogger("jax")
    logger.addHandler(Collect(logging.DEBUG))
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    import advi_jax as aj
    from advi_jax.models import logistic_regression, poisson_regression
    from benchmarks.common import logistic_data, poisson_data

    imported = time.perf_counter()
    x, y = (logistic_data if kind == "logistic" else poisson_data)(n, d, 0)
    model = (logistic_regression if kind == "logistic" else poisson_regression)(x, y)
    jax.config.update("jax_log_compiles", True)
    del records[:]
    tick = time.perf_counter()
    key = jax.random.key(0)
    key_seconds = time.perf_counter() - tick
    del records[:]  # the key's programs (the user's) are timed apart
    tick, cpu = time.perf_counter(), time.process_time()
    res = aj.fit(model, key=key, family=family, progress=False, diagnostics=diagnostics, warn=False)
    jax.block_until_ready(res.params)
    first, first_cpu = time.perf_counter() - tick, time.process_time() - cpu
    programs, stages = [], {"trace": 0.0, "lower": 0.0, "compile": 0.0}
    for _, message in records:
        found = _LINE.search(message)
        if found:
            stage = _STAGES[found.group(1)]
            stages[stage] += float(found.group(3))
            if stage == "compile":
                programs.append(found.group(2))
    whole_first = time.perf_counter() - began
    jax.config.update("jax_log_compiles", False)
    tick = time.perf_counter()
    jax.block_until_ready(aj.fit(model, key=key, family=family, progress=False, diagnostics=diagnostics,
                                 warn=False).params)
    second = time.perf_counter() - tick
    return {"kind": kind, "family": family, "N": n, "D": d, "diagnostics": diagnostics,
            "import": imported - began, "key": key_seconds, "first": first, "first_cpu": first_cpu,
            "second": second, "script": whole_first, "steps": res.report.num_steps,
            "khat": None if res.report.diagnostics is None else float(res.report.diagnostics.khat),
            "programs": programs, "seconds": {k: round(v, 3) for k, v in stages.items()},
            "per_program": [m for _, m in records if _LINE.search(m)]}


def _run(tree: str, args: list[str]) -> dict:
    env = dict(os.environ)
    cwd = os.path.abspath(tree) if tree else None
    if cwd:
        env["PYTHONPATH"] = os.pathsep.join([cwd] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_glm_first_call", "--child", *args], env=env,
                          capture_output=True, text=True, timeout=600, cwd=cwd)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            row = json.loads(line)
            row["tree"] = os.path.basename(cwd) if cwd else "."
            return row
    return {"error": (proc.stderr or proc.stdout)[-800:], "args": args}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--child", nargs=5, metavar=("KIND", "FAMILY", "N", "D", "DIAG"), help=argparse.SUPPRESS)
    p.add_argument("--kinds", default="logistic,poisson")
    p.add_argument("--families", default="fullrank,meanfield")
    p.add_argument("--n", default="10000")
    p.add_argument("--d", default="10")
    p.add_argument("--diagnostics", default="0,1", help="comma list of 0 (off) / 1 (on, the default of aj.fit)")
    p.add_argument("--trees", default="", help="comma list of checkouts to alternate (default: this one)")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--programs", action="store_true", help="print each program's trace / lower / compile lines")
    a = p.parse_args(argv)
    if a.child:
        kind, family, n, d, diag = a.child
        print(json.dumps(child(kind, family, int(float(n)), int(d), diag == "1")))
        return
    trees = [t for t in a.trees.split(",") if t] or [""]
    rows = []
    for r in range(a.repeat):
        for n in a.n.split(","):
            for d in a.d.split(","):
                for kind in a.kinds.split(","):
                    for fam in a.families.split(","):
                        for diag in a.diagnostics.split(","):
                            for tree in trees:
                                row = _run(tree, [kind, fam, n, d, diag])
                                rows.append(row)
                                if "error" in row:
                                    print("ERROR", row["args"], row["error"])
                                    continue
                                print(f"[{r}] {row['tree']:14s} {kind:8s} {fam:9s} N={int(float(n)):>7d} D={d:>3s} "
                                      f"diag={int(row['diagnostics'])}: first {row['first']:.3f} s (cpu "
                                      f"{row['first_cpu']:.2f}), key {row['key']:.3f}, second {row['second']:.3f}, "
                                      f"import {row['import']:.2f}, script to end of first {row['script']:.2f} s; "
                                      f"{len(row['programs'])} programs {row['seconds']}  load "
                                      f"{os.getloadavg()[0]:.1f}", flush=True)
                                if a.programs:
                                    print("      " + ", ".join(row["programs"]))
                                    for line in row["per_program"]:
                                        print("        " + line)


if __name__ == "__main__":
    main()
