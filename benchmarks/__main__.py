"""One entry point for the benchmark suite: speed (`bench_fit`) and accuracy (`accuracy`).

Writes, under `--out-dir` (default `benchmarks/results/`, git-ignored):

* `benchmarks.json`: library versions, machine info (CPU, JAX devices, measured matmul rate),
  the arguments, the wall time of each part, and every row of both parts;
* `benchmarks.md`: the speed table and the accuracy tables in Markdown;
* `bench_fit.{json,md}` and `accuracy.{json,md}`: each part on its own.

Usage:
  python -m benchmarks --quick          # small N, 4 accuracy models, 2000 steps: a few minutes on 2 cores
  python -m benchmarks                  # the full grid (N 1e3..1e6, D 10 and 100) and all suite models
  python -m benchmarks --only accuracy --steps 10000

Reference posteriors for the accuracy part come from `python -m benchmarks.make_references`
(committed under `benchmarks/references/`). Datasets outside the package are looked up with
`aj.data.find_data_file` (set `ADVI_JAX_DATA` to the folder holding them).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

# The suite compares against NumPyro and blackjax: the `bench` extra installs them.
BENCH_MODULES = ("blackjax", "numpyro")


def missing_bench_modules() -> list[str]:
    """The packages of the `bench` extra that are not installed."""
    import importlib.util

    missing = []
    for name in BENCH_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a broken install, or sys.modules[name] = None
            found = False
        if not found:
            missing.append(name)
    return missing


def _bench_extra_message(names) -> str:
    from advi_jax._extras import DISTRIBUTION

    return (f"python -m benchmarks needs {', '.join(names)} (the peers it compares against), not installed: "
            f"pip install '{DISTRIBUTION}[bench]' (from a checkout: pip install -e '.[bench]')")


_missing = missing_bench_modules()
if _missing and __name__ == "__main__":
    print(f"error: {_bench_extra_message(_missing)}", file=sys.stderr)
    sys.exit(2)

from benchmarks import accuracy, bench_fit  # noqa: E402
from benchmarks.common import machine, versions, write_json  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small configurations (under 10 minutes on 2 cores)")
    parser.add_argument("--only", choices=("speed", "accuracy"), default=None, help="run one part only")
    parser.add_argument("--steps", type=int, default=None, help="accuracy: optimisation steps per fit")
    parser.add_argument("--out-dir", default=os.path.join("benchmarks", "results"))
    args = parser.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    quick = ["--quick"] if args.quick else []
    start = time.perf_counter()
    parts, markdown = {}, [f"# advi_jax benchmarks{' (--quick)' if args.quick else ''}\n"]
    if args.only in (None, "speed"):
        t0 = time.perf_counter()
        parts["speed"] = bench_fit.main(quick + ["--out", os.path.join(args.out_dir, "bench_fit.json")])
        parts["speed"]["seconds"] = time.perf_counter() - t0
        rates = parts["speed"]["machine"]
        markdown.append("## Speed: ms per step (second call, compiled), ratios to advi_jax, and the machine's bound\n\n"
                        f"Matmul rate {rates['matmul_gflops']:.0f} GFLOP/s; memory bandwidth measured per X.\n\n"
                        + parts["speed"]["markdown"] + "\n")
    if args.only in (None, "accuracy"):
        t0 = time.perf_counter()
        extra = ["--steps", str(args.steps)] if args.steps else []
        parts["accuracy"] = accuracy.main(quick + extra + ["--out", os.path.join(args.out_dir, "accuracy.json")])
        parts["accuracy"]["seconds"] = time.perf_counter() - t0
        markdown.append("## Accuracy\n\n" + parts["accuracy"]["markdown"])
    seconds = time.perf_counter() - start
    markdown.append(f"\nTotal wall time {seconds:.0f} s ("
                    + ", ".join(f"{name} {p['seconds']:.0f} s" for name, p in parts.items()) + ").\n")
    text = "\n".join(markdown)
    write_json(os.path.join(args.out_dir, "benchmarks.json"),
               {"quick": args.quick, "versions": versions(), "machine": machine(), "seconds": seconds,
                "parts": {name: {k: v for k, v in p.items() if k != "markdown"} for name, p in parts.items()}})
    with open(os.path.join(args.out_dir, "benchmarks.md"), "w") as f:
        f.write(text)
    print(text)
    print(f"wrote {os.path.join(args.out_dir, 'benchmarks.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
