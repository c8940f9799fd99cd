"""Wall time of `import advi_jax` and of `advi-jax fit` (start-up included), two trees alternated.

Each number is one fresh process started from here (run this under `chrt -r 10` on a shared
machine: the children inherit the priority). Per tree a cache folder of its own
(`XDG_CACHE_HOME`) holds the native GLM kernel, built once before timing, so no run builds it in
the background; "cold" empties its XLA compilation cache (`xla-*`) first, "warm" runs after a
run that filled it. Rows:

* `import`: `python -c "import advi_jax"`.
* `import+fit`: `python -c "import advi_jax; advi_jax.fit"` (what reaching `aj.fit` costs; the
  same as `import` where the package imports everything at its top).
* `cli cold`, `cli warm`: `python -m advi_jax fit --quiet --out TMP` (bundled breast-cancer data,
  full rank, `glm_exact`, the three PNGs).
* `cli no-plots`: the same with `--no-plots`, cache warm.

CPU seconds are the process's and its children's (the figure process and its forks) user +
system time.

`--pyc` lets Python keep compiled bytecode (in a temporary `PYTHONPYCACHEPREFIX`, filled by the
untimed first run; `PYTHONDONTWRITEBYTECODE` unset), as an installed package has it; without it
an environment that sets `PYTHONDONTWRITEBYTECODE` compiles advi_jax's modules at every start.

    chrt -r 10 python -m benchmarks.bench_cli_wall --trees /work/wt/base,. --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = ("import", "import+fit", "cli cold", "cli warm", "cli no-plots")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(argv: list[str], env: dict, cwd: str) -> tuple[float, float, int]:
    cpu = _children_cpu()
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          timeout=600)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} failed: {proc.stderr[-2000:]}")
    return wall, _children_cpu() - cpu, proc.returncode


def _env(tree: Path, cache: Path, pyc: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("ADVI_JAX_CACHE_DIR", "PYTHONPATH")}
    env.update(PYTHONPATH=str(tree), JAX_PLATFORMS="cpu", XDG_CACHE_HOME=str(cache))
    if pyc:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(cache / "pyc")
    return env


def one(case: str, tree: Path, cache: Path, pyc: bool = False) -> dict:
    env = _env(tree, cache, pyc)
    with tempfile.TemporaryDirectory() as tmp:
        if case == "import":
            argv = [sys.executable, "-c", "import advi_jax"]
        elif case == "import+fit":
            argv = [sys.executable, "-c", "import advi_jax; advi_jax.fit"]
        else:
            argv = [sys.executable, "-m", "advi_jax", "fit", "--quiet", "--out", str(Path(tmp) / "out")]
            if case == "cli no-plots":
                argv.append("--no-plots")
            if case == "cli cold":
                for folder in (cache / "advi_jax").glob("xla-*"):
                    shutil.rmtree(folder, ignore_errors=True)
        wall, cpu, _ = _run(argv, env, tmp)
    return {"wall": round(wall, 3), "cpu": round(cpu, 3)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trees", default="/work/wt/base,.", help="comma list of checkouts, alternated")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--pyc", action="store_true", help="keep compiled bytecode (see the module docstring)")
    a = p.parse_args(argv)
    trees = [Path(t).resolve() for t in a.trees.split(",")]
    cases = a.cases.split(",")
    caches = {}
    for tree in trees:  # the native kernel, once per cache folder (not timed)
        caches[tree] = Path(tempfile.mkdtemp(prefix="bench_cli_wall_"))
        subprocess.run([sys.executable, "-m", "advi_jax", "build"], env=_env(tree, caches[tree], a.pyc), check=True,
                       capture_output=True)
        one("cli warm", tree, caches[tree], a.pyc)  # fills the XLA cache for the first "warm" row (and the .pyc)
    rows = []
    for rep in range(a.repeats):
        for tree in trees:
            for case in cases:
                row = {"tree": str(tree), "repeat": rep, "case": case, **one(case, tree, caches[tree], a.pyc)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    for tree in trees:
        shutil.rmtree(caches[tree], ignore_errors=True)
    print(f"\n{'case':<14}" + "".join(f"{str(t)[-24:]:>40}" for t in trees))
    for case in cases:
        cells = []
        for tree in trees:
            got = [r for r in rows if r["tree"] == str(tree) and r["case"] == case]
            walls, cpus = [r["wall"] for r in got], [r["cpu"] for r in got]
            cells.append(f"{min(walls):.2f}-{max(walls):.2f} s (med {statistics.median(walls):.2f}; "
                         f"cpu {min(cpus):.2f}-{max(cpus):.2f})")
        print(f"{case:<14}" + "".join(f"{c:>40}" for c in cells))


if __name__ == "__main__":
    main()
