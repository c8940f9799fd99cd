"""Many small fits: 256 logistic regressions (N=200, D=5, 1000 steps each), three ways.

Same model (beta ~ N(0, I), y ~ Bernoulli(logits = X beta)), mean-field Gaussian, one draw per
step, Adam 1e-2 without decay, 1000 steps per fit, one dataset per fit:

* (a) ``svi.run loop``   -- a Python loop of NumPyro `SVI.run` (AutoDiagonalNormal), as a user
                           writes it; it re-traces and re-compiles on every call. Slow (~0.5 s a
                           fit), so only `--max-run-fits` fits are timed and the total is
                           extrapolated linearly to all fits (reported as such).
* (b) ``svi scan loop``  -- a Python loop over one jitted `lax.scan` of `svi.update` (data passed
                           as arguments, compiled once); its compile is included.
* (c) ``aj.fit_many``    -- all fits in one compiled vmapped masked while loop, compile included
                           (first call); the second call, which compiles nothing, is also shown.

Usage:
  python -m benchmarks.bench_many                # 256 fits, 16 timed for (a)
  python -m benchmarks.bench_many --num-fits 32 --max-run-fits 4
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
from benchmarks.common import logistic_data, machine, versions, write_json  # noqa: E402

LR = 0.01


def log_joint(params, data):
    x, y = data
    beta = params["beta"]
    z = (2.0 * y - 1.0) * (x @ beta)
    return -0.5 * jnp.sum(beta**2) + jnp.sum(jnp.minimum(z, 0.0) - jnp.log1p(jnp.exp(-jnp.abs(z))))


def _numpyro_svi(d):
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoDiagonalNormal

    def model(x, y):
        beta = numpyro.sample("beta", dist.Normal(jnp.zeros(d), 1.0).to_event(1))
        numpyro.sample("y", dist.Bernoulli(logits=x @ beta), obs=y)

    guide = AutoDiagonalNormal(model)
    return SVI(model, guide, optax.adam(LR), Trace_ELBO()), guide


def bench_svi_run(xs, ys, steps, max_fits):
    svi, guide = _numpyro_svi(xs.shape[-1])
    timed_fits = min(max_fits, len(xs))
    means = []
    start = time.perf_counter()
    for i in range(timed_fits):
        out = svi.run(jax.random.key(i), steps, xs[i], ys[i], progress_bar=False)
        means.append(np.asarray(out.params["auto_loc"]))
    seconds = time.perf_counter() - start
    return {"timed_fits": timed_fits, "seconds_timed": seconds,
            "seconds_total_extrapolated": seconds / timed_fits * len(xs), "means": np.stack(means)}


def bench_svi_scan(xs, ys, steps):
    svi, _ = _numpyro_svi(xs.shape[-1])

    @jax.jit
    def run(key, x, y):
        state = svi.init(key, x, y)
        state, losses = jax.lax.scan(lambda s, _: svi.update(s, x, y), state, None, length=steps)
        return svi.get_params(state)["auto_loc"], losses

    start = time.perf_counter()
    means = [np.asarray(jax.block_until_ready(run(jax.random.key(i), xs[i], ys[i])[0])) for i in range(len(xs))]
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(run(jax.random.key(0), xs[0], ys[0]))
    one = time.perf_counter() - start
    return {"seconds_total": seconds, "seconds_one_fit_compiled": one, "means": np.stack(means)}


def bench_fit_many(xs, ys, steps):
    model = aj.Model(log_joint, {"beta": aj.real((xs.shape[-1],))}, data=(jnp.asarray(xs), jnp.asarray(ys)))
    optimizer = optax.adam(LR)

    def run(seed):
        start = time.perf_counter()
        many = aj.fit_many(model, key=jax.random.key(seed), batched=True, num_steps=steps, optimizer=optimizer)
        jax.block_until_ready(many.params)
        return time.perf_counter() - start, many

    first, many = run(0)
    second, _ = run(1)
    sds = np.sqrt(np.asarray(jax.vmap(many.family.variance)(many.params)))
    return {"seconds_first_call": first, "seconds_second_call": second, "means": np.asarray(many.means()), "sds": sds,
            "num_steps": many.num_steps}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-fits", type=int, default=256)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--d", type=int, default=5)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--max-run-fits", type=int, default=16,
                        help="fits timed for the svi.run loop; its total is extrapolated linearly")
    parser.add_argument("--out", default="benchmarks/results/bench_many.json")
    args = parser.parse_args(argv)

    data = [logistic_data(args.n, args.d, seed=i) for i in range(args.num_fits)]
    xs = np.stack([x for x, _ in data])
    ys = np.stack([y for _, y in data])

    ours = bench_fit_many(xs, ys, args.steps)
    print(f"(c) aj.fit_many: {ours['seconds_first_call']:.3f} s incl. compile, "
          f"{ours['seconds_second_call']:.3f} s second call", file=sys.stderr)
    scan = bench_svi_scan(xs, ys, args.steps)
    print(f"(b) svi scan loop: {scan['seconds_total']:.3f} s incl. compile", file=sys.stderr)
    run = bench_svi_run(xs, ys, args.steps, args.max_run_fits)
    print(f"(a) svi.run loop: {run['seconds_timed']:.2f} s for {run['timed_fits']} fits -> "
          f"{run['seconds_total_extrapolated']:.1f} s extrapolated to {args.num_fits}", file=sys.stderr)

    # The three agree on the posterior means up to optimisation noise (constant step, one draw per
    # step, different random streams and initialisations), small next to the posterior sds.
    k = run["timed_fits"]
    sd_scale = np.std(ours["means"], axis=0).mean()
    agreement = {
        "max |fit_many - svi scan| mean": float(np.abs(ours["means"] - scan["means"]).max()),
        "mean |fit_many - svi scan| mean": float(np.abs(ours["means"] - scan["means"]).mean()),
        "mean fitted posterior sd (fit_many)": float(np.mean(ours["sds"])),
        "max |fit_many - svi.run| mean": float(np.abs(ours["means"][:k] - run["means"]).max()),
        "spread of the means across datasets (for scale)": float(sd_scale),
    }
    ratios = {
        "svi.run loop (extrapolated) / fit_many (incl. compile)":
            run["seconds_total_extrapolated"] / ours["seconds_first_call"],
        "svi scan loop (incl. compile) / fit_many (incl. compile)": scan["seconds_total"] / ours["seconds_first_call"],
        "svi scan loop / fit_many second call": scan["seconds_total"] / ours["seconds_second_call"],
    }
    lines = [
        f"{args.num_fits} logistic regressions, N={args.n}, D={args.d}, {args.steps} steps each, mean-field, "
        f"Adam {LR}",
        f"(a) NumPyro svi.run loop:   {run['seconds_total_extrapolated']:8.2f} s  "
        f"(extrapolated from {run['timed_fits']} fits timed: {run['seconds_timed']:.2f} s)",
        f"(b) jitted svi.update scan: {scan['seconds_total']:8.3f} s  (compile included; one compiled fit "
        f"{scan['seconds_one_fit_compiled'] * 1e3:.1f} ms)",
        f"(c) aj.fit_many:            {ours['seconds_first_call']:8.3f} s  (compile included; second call "
        f"{ours['seconds_second_call']:.3f} s)",
    ] + [f"    {name}: {value:.1f}x" for name, value in ratios.items()] + [
        f"    {name}: {value:.3g}" for name, value in agreement.items()]
    print("\n".join(lines))
    write_json(args.out, {
        "benchmark": "bench_many", "versions": versions(), "machine": machine(), "args": vars(args),
        "seconds": {"svi.run loop extrapolated": run["seconds_total_extrapolated"],
                    "svi.run loop timed": run["seconds_timed"], "svi.run fits timed": run["timed_fits"],
                    "svi scan loop": scan["seconds_total"], "fit_many first call": ours["seconds_first_call"],
                    "fit_many second call": ours["seconds_second_call"]},
        "ratios": ratios, "agreement": agreement, "summary": lines,
    })


if __name__ == "__main__":
    main()
