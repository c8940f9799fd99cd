"""The default start program alone: trace+lower seconds, StableHLO ops, XLA compile CPU, and a digest of its outputs.

Builds a model (a suite, held-out or synthetic name, as `bench_first_call`), lowers the start program
of the default `aj.fit` (`advi_jax.run.start._start_program`: Pathfinder -> candidates -> BaM, from
zero, key 0) with the compiler options the default would pick, compiles it once (process CPU seconds:
the number to compare on a loaded machine), runs it and prints a SHA-1 of every output, so that two
checkouts' start programs can be compared for bit-identity. One process per measurement; alternate
checkouts by PYTHONPATH.

Usage:
  for t in ../base .; do PYTHONPATH=$t python -m benchmarks.bench_start_compile radon_noncentered; done
"""

from __future__ import annotations

import hashlib
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import advi_jax as aj  # noqa: E402
from advi_jax import compile_options  # noqa: E402
from advi_jax.run import start as st  # noqa: E402
from benchmarks.bench_first_call import _build  # noqa: E402


def main(name: str) -> None:
    fn, args = _build(name)
    model = aj.from_numpyro(fn, *args)
    call = (model, jnp.zeros(model.dim), jax.random.key(0), False, 0.1, st.BAM_START_STEPS, st.BAM_START_BATCH)
    kwargs = dict(radius=np.asarray(2.0, np.float32))
    mode = compile_options.compile_mode(model, st.start_evals(st.BAM_START_STEPS, st.BAM_START_BATCH))
    jitted = {"fast": st._start_program.fast, "mid": st._start_program.mid}.get(mode, st._start_program.full)
    began = time.process_time()
    lowered = jitted.lower(*call, **kwargs)
    lowering = time.process_time() - began
    ops = sum(1 for line in lowered.as_text().splitlines()
              if "=" in line and ("stablehlo." in line or "chlo." in line))
    began = time.process_time()
    lowered.compile()
    compiling = time.process_time() - began
    out = jax.device_get(st._start_program(*call, **kwargs))
    digest = hashlib.sha1(b"".join(np.asarray(x).tobytes() for x in jax.tree_util.tree_leaves(out))).hexdigest()
    print(f"{name} ({aj.__file__.rsplit('/', 2)[0]}) mode {mode}: trace+lower cpu {lowering:.2f} s, {ops} ops, "
          f"compile cpu {compiling:.2f} s, outputs sha1 {digest[:12]}, path gradients {int(out.path.num_grad_evals)}")


if __name__ == "__main__":
    for arg in sys.argv[1:] or ["radon_noncentered"]:
        main(arg)
