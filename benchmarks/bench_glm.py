"""One read of X per step: `aj.glm_log_likelihood` vs autodiff of the plain GLM log likelihood.

Bayesian logistic regression (beta ~ N(0, I)); two identical models except for the likelihood
line: ``plain`` writes `sum log sigmoid(s * (X @ beta))` and lets reverse mode compute `X^T r`
in a second, transposed read of X; ``blocked`` calls `aj.glm_log_likelihood`, which computes
value and gradient in one pass over row blocks. Timed: `aj.fit` per step (its second call,
which compiles nothing), for each of `--samples` draws per step.

`--diagnostics` times instead what the default importance diagnostics (4,096 draws of q, their
log density evaluated without a gradient) add to `aj.fit(model, num_steps=2000)`: the ready
`aj.models.logistic_regression` against a hand-written log joint of the same model.

Usage:
  python -m benchmarks.bench_glm                     # N = 100,000, D = 100
  python -m benchmarks.bench_glm --n 1000000 --d 10
  python -m benchmarks.bench_glm --diagnostics --n 100000 --d 10
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import advi_jax as aj  # noqa: E402
from benchmarks.common import logistic_data, machine, markdown_table, versions, write_json  # noqa: E402


def plain_log_joint(params, data):
    x, y = data
    beta = params["beta"]
    z = (2.0 * y - 1.0) * (x @ beta)
    return -0.5 * jnp.sum(beta**2) + jnp.sum(jnp.minimum(z, 0.0) - jnp.log1p(jnp.exp(-jnp.abs(z))))


def make_blocked_log_joint(block_size):
    def blocked_log_joint(params, data):
        x, y = data
        beta = params["beta"]
        return -0.5 * jnp.sum(beta**2) + aj.glm_log_likelihood(x, y, beta, family="bernoulli", block_size=block_size)

    return blocked_log_joint


def per_step(log_joint, data, d, steps, samples):
    model = aj.Model(log_joint, {"beta": aj.real((d,))}, data=data)
    opt = optax.adam(0.01)
    kwargs = dict(num_steps=steps, num_samples=samples, optimizer=opt, progress=False)
    aj.fit(model, key=jax.random.key(0), **kwargs)
    start = time.perf_counter()
    result = aj.fit(model, key=jax.random.key(1), **kwargs)
    jax.block_until_ready(result.params)
    return (time.perf_counter() - start) / steps, result


def diagnostics_cost(n, d, steps):
    """Rows: seconds of `aj.fit` with diagnostics off and on (the second of two calls each)."""
    from advi_jax.models.glm import build_kernel

    build_kernel()
    x, y = logistic_data(n, d)
    ready = aj.models.logistic_regression(x, y)

    def hand(params, data):
        xs, ys = data
        z = (2.0 * ys - 1.0) * (xs @ params["beta"] + params["intercept"])
        return (jnp.sum(jnp.minimum(z, 0.0) - jnp.log1p(jnp.exp(-jnp.abs(z))))
                - 0.5 * jnp.sum((params["beta"] / 2.5) ** 2) - 0.5 * (params["intercept"] / 10.0) ** 2)

    handwritten = aj.Model(hand, {"beta": aj.real((d,)), "intercept": aj.real()},
                           data=(jnp.asarray(ready.data["x"]), jnp.asarray(ready.data["y"])))
    rows = []
    for name, model in (("ready logistic_regression", ready), ("hand-written log joint", handwritten)):
        seconds = {}
        for diagnostics in (False, True, False, True):  # the second call of each is timed
            start = time.perf_counter()
            result = aj.fit(model, key=jax.random.key(0), method="advi", num_steps=steps, progress=False,
                            diagnostics=diagnostics)
            jax.block_until_ready(result.params)
            seconds[diagnostics] = time.perf_counter() - start
        cost = seconds[True] - seconds[False]
        rows.append({"model": name, "N": n, "D": d, "steps": result.num_steps, "fit s": seconds[False],
                     "fit + diagnostics s": seconds[True], "diagnostics s": cost,
                     "diagnostics / fit": cost / seconds[False]})
        print(rows[-1], file=sys.stderr)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--d", type=int, default=100)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--samples", default="1,8")
    parser.add_argument("--block-size", type=int, default=1024)
    parser.add_argument("--diagnostics", action="store_true",
                        help="time the default diagnostics of aj.fit (2000 steps) instead of steps")
    parser.add_argument("--out", default="benchmarks/results/bench_glm.json")
    args = parser.parse_args(argv)
    if args.diagnostics:
        rows = diagnostics_cost(args.n, args.d, 2000)
        table = markdown_table(rows, list(rows[0]))
        print(table)
        write_json(args.out, {"benchmark": "bench_glm --diagnostics", "versions": versions(), "machine": machine(),
                              "args": vars(args), "rows": rows, "markdown": table})
        return
    x, y = logistic_data(args.n, args.d)
    data = (jnp.asarray(x), jnp.asarray(y))
    rows = []
    for s in map(int, args.samples.split(",")):
        plain, r1 = per_step(plain_log_joint, data, args.d, args.steps, s)
        blocked, r2 = per_step(make_blocked_log_joint(args.block_size), data, args.d, args.steps, s)
        row = {"N": args.n, "D": args.d, "S": s, "plain ms/step": 1e3 * plain, "blocked ms/step": 1e3 * blocked,
               "plain / blocked": plain / blocked,
               "max |loc plain - loc blocked|": float(np.abs(np.asarray(r1.params.loc - r2.params.loc)).max())}
        rows.append(row)
        print(row, file=sys.stderr)
    table = markdown_table(rows, list(rows[0]))
    print(table)
    write_json(args.out, {"benchmark": "bench_glm", "versions": versions(), "machine": machine(),
                          "args": vars(args), "rows": rows, "markdown": table})


if __name__ == "__main__":
    main()
