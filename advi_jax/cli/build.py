"""`advi-jax build`: build the native GLM kernel now, ahead of the first fit that would use it.

The ready GLMs (`logistic_regression`, `poisson_regression`) and `aj.glm_log_likelihood` run
on CPU through a native kernel compiled once into a cache folder. Importing advi_jax starts
that build in the background; until it is done fits take the (slower) XLA pass. This command
waits for it, prints where the library is, and exits 1 with the reason (the compiler's output
included) when it cannot be built.
"""

from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    """Build (or find in the cache) the native GLM kernel; 0 when ready, 1 otherwise."""
    from advi_jax.models.glm import build_kernel, kernel_status

    ready = build_kernel(timeout=args.timeout)
    state, detail = kernel_status()
    if ready:
        print(f"advi-jax build: native GLM kernel ready: {detail}")
        return 0
    if state == "building":
        print(f"advi-jax build: still building after {args.timeout:g} s (it goes on in the background)",
              file=sys.stderr)
    else:
        print(f"advi-jax build: native GLM kernel {state}: {detail}", file=sys.stderr)
    return 1


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the `build` sub-command."""
    from advi_jax.cli import positive_float

    parser = subparsers.add_parser(
        "build", help="build the native GLM kernel now (otherwise built in the background on first import)",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timeout", type=positive_float, default=None,
                        help="seconds to wait at most (default: until the build ends)")
    parser.set_defaults(func=run)
    return parser
