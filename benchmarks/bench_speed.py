"""Wall time of `advi-jax fit` (bundled data) and of `aj.fit` at N = 1e6, for two checkouts, alternated.

Each measurement runs in a fresh Python process (start-up and compilation included, as a user
meets them), so two source trees can be compared in one run on a shared machine: the runs
alternate between `--before` and `--after` and repeat `--repeats` times; report ranges.

* `cli`: `python -m advi_jax fit --quiet --out TMP` on the bundled breast-cancer data (full
  rank, the default). For a tree with the persistent compilation cache the first run starts from
  an empty cache folder (a first run on a machine) and the second reuses it.
* `cli-split`: the same command (with the compilation cache off, then warm), with its CPU time
  split into the main thread's, the whole process's (XLA compiles in threads of its own) and
  its child processes' (the figure process): on a loaded machine, where wall time mostly
  measures the load, the main thread's CPU plus the compilations it waits for is what a quiet
  machine's wall time follows.
* `cli-chain` (the `--after` tree only): CPU seconds of the command's background compilation
  (`advi_jax.cli.warmup`) and of `aj.fit` after it, against `aj.fit` alone: what the warm-up
  takes off the fit's path onto a second core.
* `large`: logistic regression, N = 1e6, D = 10 (and `--d` more), full-rank, `aj.fit` with its
  defaults (diagnostics on): first call (compilation included) and second call, with the
  report's split (start / compile / run / diagnostics) and the diagnostic draws.

Usage:
  python -m benchmarks.bench_speed --before /work/main --after . --repeats 2
  python -m benchmarks.bench_speed --after . --what large --d 10,100
  python -m benchmarks.bench_speed --after . --what cli-nocache,large,large-nodiag --d 10,100 --repeats 3

Each row has wall and CPU seconds (`cpu`: the child's user + system time for `cli`, the process
time of each `aj.fit` call for `large`); CPU time suffers far less than wall time from other
jobs on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LARGE = r"""
import json, sys, time
t0 = time.perf_counter()
import jax, numpy as np
import advi_jax as aj
from benchmarks.common import logistic_data
n, d, diagnostics = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
x, y = logistic_data(n, d, 0)
model = aj.models.logistic_regression(x, y)
out = {"import_and_data_s": time.perf_counter() - t0}
for call in ("first", "second"):
    t, c = time.perf_counter(), time.process_time()
    r = aj.fit(model, key=jax.random.key(0), family="fullrank", progress=False, warn=False, diagnostics=diagnostics)
    jax.block_until_ready(r.params)
    rp = r.report
    out[call] = {"wall": time.perf_counter() - t, "cpu": time.process_time() - c, "start": rp.start_seconds,
                 "compile": rp.compile_seconds,
                 "run": rp.run_seconds, "diagnostics": rp.diagnostics_seconds,
                 "draws": int(rp.diagnostics.num_draws) if rp.diagnostics is not None else 0,
                 "method": rp.method, "passes": int(rp.num_grad_evals),
                 "khat": float(r.khat) if rp.diagnostics is not None else None}
print("RESULT " + json.dumps(out))
"""


# `advi-jax fit` as a command line (`main()` reads sys.argv), then where its CPU time went: the main
# thread (what a quiet machine waits for, besides compilations), the whole process (XLA compiles in
# threads of its own) and its children (the figure process)
CLI_SPLIT = r"""
import os, resource, sys, time
w0 = time.perf_counter()
sys.argv = ["advi-jax", "fit", "--quiet", "--out", sys.argv[1]]
from advi_jax.cli import main
rc = main()
ch = resource.getrusage(resource.RUSAGE_CHILDREN)
print("RESULT", rc, time.perf_counter() - w0, time.thread_time(), time.process_time(), ch.ru_utime + ch.ru_stime)
"""


# The CPU seconds of the command's background compilation (`advi_jax.cli.warmup`) and of the fit
# it takes off the fit's path, run one after the other in one process (no compilation cache)
CLI_CHAIN = r"""
import os, sys, time
os.environ["XLA_FLAGS"] = "--xla_backend_optimization_level=0"  # as the command sets it for this table
import advi_jax as aj
from advi_jax.cli import warmup
from advi_jax.cli.fit import _posterior_program, prng_key
x, y, names = aj.data.load_dataset("breast_cancer")
model = aj.models.logistic_regression(x, y, feature_names=names)
key = prng_key(0)
c0 = time.process_time()
if sys.argv[1] == "1":
    warmup._compile(model, "fullrank", _posterior_program(), 4096, 400, True)
c1 = time.process_time()
aj.fit(model, key=key, family="fullrank", progress=False, warn=False)
print("RESULT", c1 - c0, time.process_time() - c1)
"""


def _env(tree: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), JAX_PLATFORMS="cpu")
    return env


def _cache_folders() -> list[Path]:
    base = Path(os.environ.get("ADVI_JAX_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME")
                                                             or Path.home() / ".cache") / "advi_jax")
    return sorted(base.glob("xla-*")) if base.exists() else []


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_cli(tree: Path, cold: bool, no_cache: bool = False) -> dict:
    """One `advi-jax fit` in a fresh process: wall and CPU seconds (CPU suffers less from a loaded machine).

    `cold` empties the persistent compilation cache first; `no_cache` turns it off
    (`ADVI_JAX_COMPILATION_CACHE=0`: every program compiled, as on a first run).
    """
    if cold:
        for folder in _cache_folders():
            shutil.rmtree(folder, ignore_errors=True)
    env = _env(tree)
    if no_cache:
        env["ADVI_JAX_COMPILATION_CACHE"] = "0"
    with tempfile.TemporaryDirectory() as tmp:
        cpu = _children_cpu()
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "advi_jax", "fit", "--quiet", "--out", tmp], cwd=tmp,
                              env=env, capture_output=True, text=True, timeout=600)
        wall = time.perf_counter() - start
        cpu = _children_cpu() - cpu
    cost = next((line for line in proc.stdout.splitlines() if line.startswith("cost:")), "")
    return {"wall": wall, "cpu": cpu, "rc": proc.returncode, "cost": cost.split("; ", 1)[-1]}


def run_cli_split(tree: Path, no_cache: bool) -> dict:
    """One `advi-jax fit` in a fresh process, with its CPU time split: the main thread, the process
    (main thread + XLA's compile threads + background threads) and its child processes."""
    env = _env(tree)
    if no_cache:
        env["ADVI_JAX_COMPILATION_CACHE"] = "0"
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, "-c", CLI_SPLIT, tmp], cwd=tmp, env=env, capture_output=True,
                              text=True, timeout=600)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        return {"error": proc.stderr[-2000:]}
    rc, wall, main_thread, process, children = line.split()[1:]
    return {"wall": float(wall), "main_thread_cpu": float(main_thread), "process_cpu": float(process),
            "children_cpu": float(children), "rc": int(rc)}


def run_cli_chain(tree: Path, warm_up: bool) -> dict:
    """CPU seconds of the warm-up's compilations and of `aj.fit` (diagnostics on) after them."""
    env = dict(_env(tree), ADVI_JAX_COMPILATION_CACHE="0")
    proc = subprocess.run([sys.executable, "-c", CLI_CHAIN, str(int(warm_up))], cwd=str(tree), env=env,
                          capture_output=True, text=True, timeout=600)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        return {"error": proc.stderr[-2000:]}
    warm, fit = (float(v) for v in line.split()[1:])
    return {"warm_up_cpu": warm, "fit_cpu": fit}


def run_large(tree: Path, n: int, d: int, diagnostics: bool = True) -> dict:
    proc = subprocess.run([sys.executable, "-c", LARGE, str(n), str(d), str(int(diagnostics))],
                          cwd=str(tree),  # "" on sys.path is cwd
                          env=_env(tree), capture_output=True, text=True, timeout=900)
    line = next((line for line in proc.stdout.splitlines() if line.startswith("RESULT ")), None)
    if line is None:
        return {"error": proc.stderr[-2000:]}
    return json.loads(line[len("RESULT "):])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--before", type=Path, default=None, help="a checkout to compare with (e.g. main)")
    p.add_argument("--after", type=Path, default=Path("."), help="this checkout")
    p.add_argument("--what", default="cli,large", help="comma list of: cli (cold, then warm cache), "
                   "cli-nocache (ADVI_JAX_COMPILATION_CACHE=0), cli-split (no cache, then warm: the main "
                   "thread's, the process's and the child processes' CPU seconds), cli-chain (--after only: "
                   "CPU seconds of the command's background compilation and of the fit after it, against "
                   "the fit alone), "
                   "large (aj.fit at --n, --d, diagnostics on), "
                   "large-nodiag (the same, diagnostics=False)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--n", type=float, default=1e6)
    p.add_argument("--d", default="10")
    p.add_argument("--out", default="results/bench_speed.json")
    a = p.parse_args(argv)
    trees = [("before", a.before.resolve())] if a.before else []
    trees.append(("after", a.after.resolve()))
    what = set(a.what.split(","))
    rows = []
    for rep in range(a.repeats):
        for label, tree in trees:
            if "cli" in what:
                for run in ("cold", "warm"):
                    row = {"tree": label, "repeat": rep, "what": f"cli {run}", **run_cli(tree, run == "cold")}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            if "cli-nocache" in what:
                row = {"tree": label, "repeat": rep, "what": "cli no cache", **run_cli(tree, False, True)}
                rows.append(row)
                print(json.dumps(row), flush=True)
            if "cli-split" in what:
                for run in ("no cache", "warm"):
                    row = {"tree": label, "repeat": rep, "what": f"cli split {run}",
                           **run_cli_split(tree, run == "no cache")}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            if "cli-chain" in what and label == "after":
                for warm_up in (True, False):
                    row = {"tree": label, "repeat": rep, "what": f"cli chain warm-up={warm_up}",
                           **run_cli_chain(tree, warm_up)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            for kind in ("large", "large-nodiag"):
                if kind not in what:
                    continue
                for d in (int(v) for v in a.d.split(",")):
                    row = {"tree": label, "repeat": rep, "what": f"{kind} N={int(a.n)} D={d}",
                           **run_large(tree, int(a.n), d, kind == "large")}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"rows": rows, "load average": os.getloadavg()}, indent=1))


if __name__ == "__main__":
    main()
