"""Large K: a hierarchical logistic regression with 10,000 group intercepts, low-rank vs mean-field.

y_i ~ Bernoulli(logit = alpha[g_i] + x_i beta), alpha_g ~ N(0, tau^2), tau ~ half-normal(1),
beta ~ N(0, I_3): K = G + 4 unconstrained parameters (G = 10,000 by default). A full-rank
Gaussian would need K^2 = 1e8 parameters and O(K^3) work per step; `LowRankGaussian(rank=r)`
needs K (r + 2). The low-rank family is run with each of `--estimators` (its factor's gradient is
mostly noise under the plain reparameterisation estimator; STL helps). Reported: seconds (compile included), per-step time of a second run, the final
ELBO (mean of the last 200 step estimates), the correlation of the fitted group means with the
true intercepts, and the fitted tau and beta.

Usage:
  python -m benchmarks.bench_lowrank                       # G = 10,000
  python -m benchmarks.bench_lowrank --groups 2000 --steps 1000
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

import advi_jax as aj  # noqa: E402
from benchmarks.common import machine, markdown_table, versions, write_json  # noqa: E402


def hierarchical_logistic(num_groups: int, per_group: int, seed: int = 0):
    """The model, the true intercepts and the true coefficients."""
    rng = np.random.default_rng(seed)
    d = 3
    alpha = rng.normal(0.0, 1.0, size=num_groups)
    beta = np.array([0.5, -0.5, 0.25])
    g = np.repeat(np.arange(num_groups), per_group)
    x = rng.normal(size=(g.size, d))
    y = (rng.random(g.size) < 1.0 / (1.0 + np.exp(-(alpha[g] + x @ beta)))).astype(np.float32)

    def log_joint(params, data):
        x, y, g = data
        z = (2.0 * y - 1.0) * (params["alpha"][g] + x @ params["beta"])
        tau = params["tau"]
        prior = (-0.5 * jnp.sum(params["beta"] ** 2) - 0.5 * tau**2 - num_groups * jnp.log(tau)
                 - 0.5 * jnp.sum(params["alpha"] ** 2) / tau**2)
        return prior + jnp.sum(jnp.minimum(z, 0.0) - jnp.log1p(jnp.exp(-jnp.abs(z))))

    support = {"alpha": aj.real((num_groups,)), "beta": aj.real((d,)), "tau": aj.positive()}
    data = (jnp.asarray(x, jnp.float32), jnp.asarray(y), jnp.asarray(g, jnp.int32))
    return aj.Model(log_joint, support, data=data), alpha, beta


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=10_000)
    parser.add_argument("--per-group", type=int, default=10)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--ranks", default="5,20")
    parser.add_argument("--estimators", default="reparam,stl", help="estimators tried for the low-rank family")
    parser.add_argument("--out", default="benchmarks/results/bench_lowrank.json")
    args = parser.parse_args(argv)
    model, alpha, beta = hierarchical_logistic(args.groups, args.per_group)
    families = [("meanfield", aj.MeanFieldGaussian(), "reparam")] + [
        (f"lowrank(rank={r})", aj.LowRankGaussian(rank=r), est) for r in map(int, args.ranks.split(","))
        for est in args.estimators.split(",")]
    rows = []
    for name, family, estimator in families:
        kwargs = dict(family=family, num_steps=args.steps, learning_rate=0.02, progress=False, estimator=estimator)
        start = time.perf_counter()
        result = aj.fit(model, key=jax.random.key(0), **kwargs)
        first = time.perf_counter() - start
        start = time.perf_counter()
        aj.fit(model, key=jax.random.key(1), **kwargs)
        second = time.perf_counter() - start
        loc = np.asarray(result.family.mean(result.params))
        mean = result.mean()
        row = {"family": name, "estimator": estimator, "K": model.dim, "N": args.groups * args.per_group, "steps": result.num_steps,
               "seconds (1st, incl. compile)": first, "ms/step (2nd)": 1e3 * second / args.steps,
               "final ELBO": float(np.nanmean(result.elbo[-200:])),
               "corr(alpha fit, alpha true)": float(np.corrcoef(loc[: args.groups], alpha)[0, 1]),
               "tau": float(mean["tau"]), "max |beta - true|": float(np.abs(np.asarray(mean["beta"]) - beta).max()),
               "finite ELBO": bool(np.all(np.isfinite(result.elbo)))}
        rows.append(row)
        print(row, file=sys.stderr)
    table = markdown_table(rows, list(rows[0]))
    print(table)
    write_json(args.out, {"benchmark": "bench_lowrank", "versions": versions(), "machine": machine(),
                          "args": vars(args), "rows": rows, "markdown": table})


if __name__ == "__main__":
    main()
