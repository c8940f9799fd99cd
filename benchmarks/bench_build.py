"""A script's first model: `aj.from_numpyro` and then the first default `aj.fit`, in a fresh process.

`benchmarks.bench_first_call` starts its clock after the model is built; a user's script pays for
the build too. Each row here is one fresh Python process (JAX imported and its CPU backend
started before the clock, the data loaded): the wall and CPU seconds of `aj.from_numpyro(model,
*data)`, the number of XLA programs it compiled, and the wall and CPU seconds of the build plus
the first `aj.fit(model, key=..., progress=False)`, with the number of XLA programs compiled in all. Checkouts (`--trees`) alternate, `--repeat`
rounds, each advi_jax from its own folder (first on PYTHONPATH).

Usage:
  python -m benchmarks.bench_build --trees ../main,. --repeat 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

DEFAULT_MODELS = ("eight_schools_noncentered", "breast_cancer_logistic", "wells_badly_scaled", "radon_noncentered")

_CHILD = r"""
import json, logging, sys, time, warnings
import jax
jax.config.update("jax_log_compiles", True)
compiles = []
class _Count(logging.Handler):
    def emit(self, record):
        if record.getMessage().startswith("Finished XLA compilation"):
            compiles.append(1)
for name in ("jax._src.interpreters.pxla", "jax._src.dispatch", "jax._src.compiler"):
    logger = logging.getLogger(name)
    logger.addHandler(_Count(level=logging.DEBUG)); logger.setLevel(logging.DEBUG); logger.propagate = False
import advi_jax as aj
from benchmarks.bench_first_call import _build
fn, args = _build(sys.argv[1])
jax.block_until_ready(jax.numpy.zeros(2) + 1.0)  # the backend is up before the clock
key = jax.random.key(0)
compiles.clear()
wall, cpu = time.perf_counter(), time.process_time()
model = aj.from_numpyro(fn, *args)
build_wall, build_cpu, build_compiles = time.perf_counter() - wall, time.process_time() - cpu, len(compiles)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    result = aj.fit(model, key=key, progress=False)
print(json.dumps({"build": round(build_wall, 3), "build_cpu": round(build_cpu, 3), "build_compiles": build_compiles,
                  "total": round(time.perf_counter() - wall, 3), "total_cpu": round(time.process_time() - cpu, 3),
                  "total_compiles": len(compiles),
                  "grads": int(result.num_grad_evals)}))
"""


def _run(tree: str, model: str, timeout: float) -> dict:
    cwd = os.path.abspath(tree)
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"),
               PYTHONPATH=os.pathsep.join([cwd] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    proc = subprocess.run([sys.executable, "-c", _CHILD, model], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"error": (proc.stderr or proc.stdout)[-600:]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--trees", default=".", help="comma list of checkouts to alternate")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    for round_ in range(args.repeat):
        print(f"round {round_ + 1}/{args.repeat}, load average {os.getloadavg()}", flush=True)
        for model in args.models.split(","):
            for tree in args.trees.split(","):
                row = _run(tree, model, args.timeout)
                label = os.path.basename(os.path.abspath(tree))
                if "error" in row:
                    print(f"  {label:18s} {model:26s} ERROR {row['error']}", flush=True)
                    continue
                print(f"  {label:18s} {model:26s} from_numpyro {row['build']:5.2f} s (cpu {row['build_cpu']:5.2f}, "
                      f"{row['build_compiles']:2d} compiles)  build + first fit {row['total']:5.2f} s "
                      f"(cpu {row['total_cpu']:5.2f}, {row['total_compiles']:2d} compiles)  grads {row['grads']}", flush=True)


if __name__ == "__main__":
    main()
