"""The negative binomial's exact-ELBO pass and `aj.fit`, one process per tree (for before / after runs).

Data: the bundled RAND HIE doctor visits (`aj.data.load_dataset("randhie")`, 20,190 rows, 9 features,
over-dispersed counts), rows resampled with replacement to N and one N(0, 1) column added (D = 10).
In one fresh process: the first `aj.fit` call (compile included), a second call, then the pass
(`_glm_lik.negbin_pass`, jitted, at the first fit's optimum) timed as the best of 10 calls. Prints
one JSON line, with the ELBO and mean so that trees can be compared for equal optima.

Run from the root of the tree under test (the script itself may live in another tree):
  `chrt -r 10 python /path/to/benchmarks/bench_nb_distinct.py --n 100000 --family fullrank`
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--family", default="fullrank")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    t0 = time.perf_counter()
    import advi_jax as aj
    from advi_jax.vi import _glm_lik
    from advi_jax.vi import glm_exact as G

    data = aj.data.load_dataset("randhie")
    rng = np.random.default_rng(0)
    rows = rng.integers(0, data.x.shape[0], args.n)
    x = np.column_stack([np.asarray(data.x)[rows], rng.normal(size=args.n)])
    model = aj.models.negbin_regression(x, np.asarray(data.y)[rows])
    t_import = time.perf_counter() - t0
    t = time.perf_counter()
    first = aj.fit(model, family=args.family, key=jax.random.key(0), progress=False)
    jax.block_until_ready(first.params)
    t_first = time.perf_counter() - t
    t = time.perf_counter()
    second = aj.fit(model, family=args.family, key=jax.random.key(0), progress=False)
    jax.block_until_ready(second.params)
    t_second = time.perf_counter() - t

    fam = aj.families.get_family(args.family)
    meanfield = args.family == "meanfield"
    factor = fam.scale(first.params) if meanfield else fam.scale_tril(first.params)
    layout = G._layout(model)
    block = G._block_size(layout, G.Options())
    run = jax.jit(lambda d, m, f: _glm_lik.negbin_pass(layout, d, m, f, meanfield, None, block))
    jax.block_until_ready(run(model.data, first.params.loc, factor))
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        jax.block_until_ready(run(model.data, first.params.loc, factor))
        times.append(time.perf_counter() - t)
    print(json.dumps({
        "tree": aj.__file__.rsplit("/advi_jax/", 1)[0], "n": args.n, "family": args.family,
        "distinct": int(len(np.unique(model.data["y"]))),
        "import_build_s": round(t_import, 3), "first_fit_s": round(t_first, 3), "second_fit_s": round(t_second, 4),
        "steps": int(first.num_steps), "pass_ms_best": round(1e3 * min(times), 2),
        "pass_ms_median": round(1e3 * float(np.median(times)), 2),
        "elbo": float(np.asarray(first.elbo)[-1]), "method": first.method,
        "loc": [float(v) for v in np.asarray(first.params.loc)],
    }))


if __name__ == "__main__":
    main()
