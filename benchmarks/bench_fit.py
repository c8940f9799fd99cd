"""Time per step of ADVI on Bayesian logistic and Poisson regression, against peers and the machine's bound.

All in one process, same model (beta ~ N(0, I); y ~ Bernoulli(logits = X beta) or
y ~ Poisson(exp(X beta))), same number of steps, draws per step and optimiser (Adam 1e-2):

* ``advi_jax``       -- `aj.fit` as a user calls it (progress bar on, `init=None`, i.e. zero in
                        R^K, passed explicitly; `diagnostics=False` so that the 4096-draw k-hat
                        pass after the fit is not counted as steps); its second call, which
                        compiles nothing, gives the per-step time; the first call's extra time
                        is compilation. `aj defaults extra s` is what `aj.fit`'s defaults add
                        once per fit (Laplace start of `init="auto"`, PSIS diagnostics).
* ``aj glm``         -- the same with the likelihood written with `aj.glm_log_likelihood` (value
                        and gradient from one blocked pass over X).
* ``aj model``       -- the ready model `aj.models.logistic_regression` / `poisson_regression`
                        (no intercept, no standardisation, prior scale 1: the same posterior).
* ``svi.run``        -- NumPyro's `SVI.run` (AutoDiagonalNormal / AutoMultivariateNormal) as a
                        user calls it: it rebuilds and recompiles on every call, so wall / steps.
* ``svi scan``       -- NumPyro's `svi.update` in a jitted `lax.scan` (second call timed).
* ``blackjax``       -- `meanfield_vi` / `fullrank_vi` step in a jitted `lax.scan` (second call).
* ``hand``           -- a hand-written loop: reparameterised ELBO + closed-form entropy + optax
                        Adam in a jitted `lax.scan` (`hand_written_fit`, 30 lines; second call).

The machine's bound for one step: an ELBO gradient must read X at least once (bytes of X /
memory bandwidth, measured in the same run as the time of a jitted `jnp.sum(X)`) and do at
least 4 N D S flops (X beta and X^T r for S draws; flop rate measured with a jitted f32 matmul);
`x bound` is the step time divided by the larger of the two.

Usage:
  python -m benchmarks.bench_fit --quick
  python -m benchmarks.bench_fit --sizes 1000,10000,100000,1000000 --dims 10,100 --samples 1,8
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
from benchmarks.common import (logistic_data, machine, markdown_table, poisson_data, timed, versions,  # noqa: E402
                               write_json)

LR = 0.01


# ---------------------------------------------------------------------------------------------
# The models, written once as log joints of (params, data)
# ---------------------------------------------------------------------------------------------


def logistic_log_joint(params, data):
    x, y = data
    beta = params["beta"]
    eta = x @ beta
    # log sigmoid(s * eta) with s = 2y - 1, in the stable form min(z, 0) - log1p(exp(-|z|))
    z = (2.0 * y - 1.0) * eta
    return -0.5 * jnp.sum(beta**2) + jnp.sum(jnp.minimum(z, 0.0) - jnp.log1p(jnp.exp(-jnp.abs(z))))


def poisson_log_joint(params, data):
    x, y = data
    beta = params["beta"]
    eta = x @ beta
    return -0.5 * jnp.sum(beta**2) + jnp.sum(y * eta - jnp.exp(eta) - jax.scipy.special.gammaln(y + 1.0))


def glm_log_joint(kind):
    family = "bernoulli" if kind == "logistic" else "poisson"

    def log_joint(params, data):
        x, y = data
        beta = params["beta"]
        return -0.5 * jnp.sum(beta**2) + aj.glm_log_likelihood(x, y, beta, family=family)

    return log_joint


LOG_JOINTS = {"logistic": logistic_log_joint, "poisson": poisson_log_joint}
DATA = {"logistic": logistic_data, "poisson": poisson_data}


def steps_for(n: int, d: int) -> int:
    return int(np.clip(3e8 / (n * d * 4), 20, 2000))


# ---------------------------------------------------------------------------------------------
# advi_jax
# ---------------------------------------------------------------------------------------------


def _time_aj_fit(model, family, steps, samples, defaults_extra=False):
    """Per-step time of aj.fit's loop (second call) and its compile time (first call minus second).

    The loop is timed as peers run it: zero start (`init=None`), no post-fit diagnostics, progress
    bar on as a user sees it. With `defaults_extra`, also the one-off cost that `aj.fit`'s defaults
    add on top (the Laplace start of `init="auto"` for K <= 1000 and the 4096-draw PSIS
    diagnostics), measured on a second, compiled call.
    """
    kwargs = dict(family=family, num_steps=steps, num_samples=samples, optimizer=optax.adam(LR), init=None,
                  progress=True, diagnostics=False)
    t0 = time.perf_counter()
    aj.fit(model, key=jax.random.key(0), **kwargs)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = aj.fit(model, key=jax.random.key(1), **kwargs)
    jax.block_until_ready(res.params)
    second = time.perf_counter() - t0
    out = {"per_step": second / steps, "compile": max(first - second, 0.0)}
    if defaults_extra:
        defaults = {**kwargs, "init": "auto", "diagnostics": True}
        aj.fit(model, key=jax.random.key(0), **defaults)
        t0 = time.perf_counter()
        jax.block_until_ready(aj.fit(model, key=jax.random.key(1), **defaults).params)
        out["defaults extra s"] = max(time.perf_counter() - t0 - second, 0.0)
    return out


def bench_advi_jax(kind, x, y, family, steps, samples):
    return _time_aj_fit(aj.Model(LOG_JOINTS[kind], {"beta": aj.real((x.shape[1],))}, data=(x, y)), family, steps,
                        samples, defaults_extra=True)


def bench_advi_jax_glm(kind, x, y, family, steps, samples):
    return _time_aj_fit(aj.Model(glm_log_joint(kind), {"beta": aj.real((x.shape[1],))}, data=(x, y)), family, steps,
                        samples)


def bench_advi_jax_model(kind, x, y, family, steps, samples):
    build = aj.models.logistic_regression if kind == "logistic" else aj.models.poisson_regression
    model = build(np.asarray(x), np.asarray(y), prior_scale=1.0, intercept=False, standardize=False)
    return _time_aj_fit(model, family, steps, samples)


# ---------------------------------------------------------------------------------------------
# Peers
# ---------------------------------------------------------------------------------------------


def _numpyro_setup(kind, x, family, samples):
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoDiagonalNormal, AutoMultivariateNormal

    d = x.shape[1]

    def model(x, y):
        beta = numpyro.sample("beta", dist.Normal(jnp.zeros(d), 1.0).to_event(1))
        eta = x @ beta
        likelihood = dist.Bernoulli(logits=eta) if kind == "logistic" else dist.Poisson(jnp.exp(eta))
        numpyro.sample("y", likelihood, obs=y)

    guide = (AutoDiagonalNormal if family == "meanfield" else AutoMultivariateNormal)(model)
    return SVI(model, guide, optax.adam(LR), Trace_ELBO(num_particles=samples))


def bench_numpyro_run(kind, x, y, family, steps, samples):
    svi = _numpyro_setup(kind, x, family, samples)
    t, _ = timed(lambda: svi.run(jax.random.key(0), steps, x, y, progress_bar=False).params)
    return {"per_step": t / steps}


def bench_numpyro_scan(kind, x, y, family, steps, samples):
    svi = _numpyro_setup(kind, x, family, samples)

    @jax.jit
    def run(key, x, y):
        state = svi.init(key, x, y)

        def body(state, _):
            state, loss = svi.update(state, x, y)
            return state, loss

        return jax.lax.scan(body, state, None, length=steps)[1]

    t_first, _ = timed(run, jax.random.key(0), x, y)
    t, _ = timed(run, jax.random.key(1), x, y)
    return {"per_step": t / steps, "compile": max(t_first - t, 0.0)}


def bench_blackjax(kind, x, y, family, steps, samples):
    import blackjax

    d = x.shape[1]
    algo_fn = blackjax.meanfield_vi if family == "meanfield" else blackjax.fullrank_vi
    log_joint = LOG_JOINTS[kind]

    @jax.jit
    def run(key, x, y):
        def logdensity(z):
            return log_joint({"beta": z}, (x, y))

        algo = algo_fn(logdensity, optax.adam(LR), num_samples=samples, stl_estimator=False)
        state = algo.init(jnp.zeros(d))

        def body(state, k):
            state, info = algo.step(k, state)
            return state, info.elbo

        return jax.lax.scan(body, state, jax.random.split(key, steps))[1]

    t_first, _ = timed(run, jax.random.key(0), x, y)
    t, _ = timed(run, jax.random.key(1), x, y)
    return {"per_step": t / steps, "compile": max(t_first - t, 0.0)}


def hand_written_fit(log_density, data, dim, family, steps, samples, learning_rate=LR):
    """The 30-line baseline: reparameterised ELBO, closed-form Gaussian entropy, optax Adam, lax.scan.

    Returns a jitted `run(key, data) -> (params, elbo trace)`; q starts at N(0, 0.1^2 I).
    """
    optimizer = optax.adam(learning_rate)
    raw0 = jnp.log(jnp.expm1(0.1))  # softplus^{-1}(0.1)
    params = (jnp.zeros(dim), jnp.full(dim, raw0)) if family == "meanfield" else \
        (jnp.zeros(dim), jnp.full(dim, raw0), jnp.zeros((dim, dim)))

    def negative_elbo(params, key, data):
        eps = jax.random.normal(key, (samples, dim))
        scale = jax.nn.softplus(params[1])
        if family == "meanfield":
            z = params[0] + scale * eps
        else:
            chol = jnp.tril(params[2], -1) + jnp.diag(scale)
            z = params[0] + eps @ chol.T
        log_p = jax.vmap(lambda zi: log_density(zi, data))(z)
        return -(jnp.mean(log_p) + jnp.sum(jnp.log(scale)))  # entropy up to a constant

    @jax.jit
    def run(key, data):
        def body(carry, k):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(negative_elbo)(params, k, data)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), -loss

        (final, _), trace = jax.lax.scan(body, (params, optimizer.init(params)), jax.random.split(key, steps))
        return final, trace

    return run


def bench_hand_written(kind, x, y, family, steps, samples):
    log_joint = LOG_JOINTS[kind]
    run = hand_written_fit(lambda z, data: log_joint({"beta": z}, data), (x, y), x.shape[1], family, steps, samples)
    t_first, _ = timed(run, jax.random.key(0), (x, y))
    t, _ = timed(run, jax.random.key(1), (x, y))
    return {"per_step": t / steps, "compile": max(t_first - t, 0.0)}


OURS = {"advi_jax": bench_advi_jax, "aj glm": bench_advi_jax_glm, "aj model": bench_advi_jax_model}
PEERS = {"svi.run": bench_numpyro_run, "svi scan": bench_numpyro_scan, "blackjax": bench_blackjax,
         "hand": bench_hand_written}


# ---------------------------------------------------------------------------------------------
# The machine's bound
# ---------------------------------------------------------------------------------------------


def memory_bandwidth(x, repeat: int = 5) -> float:
    """Bytes per second of reading x: `jnp.sum(x)` repeated inside one jitted loop (best of `repeat`).

    The loop (enough passes for ~2e8 bytes, at most 2000) amortises the dispatch overhead that a
    single small call would be dominated by; each pass scales x by a factor that depends on the
    previous pass's result, so XLA cannot hoist the sum out of the loop. For X that fits in cache
    this is the cache's bandwidth, which is then the bound that applies.
    """
    nbytes = x.size * x.dtype.itemsize
    passes = int(np.clip(2e8 / nbytes, 1, 2000))

    @jax.jit
    def read_many(x):
        def body(_, acc):
            return acc + jnp.sum(x * (1.0 + 1e-30 * acc))

        return jax.lax.fori_loop(0, passes, body, jnp.zeros((), x.dtype))

    read_many(x).block_until_ready()
    t, _ = timed(read_many, x, repeat=repeat)
    return passes * nbytes / t


def matmul_rate(n: int = 1024, repeat: int = 10) -> float:
    """Flops per second of a jitted float32 n x n matmul (best of `repeat`)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    mm = jax.jit(jnp.matmul)
    mm(a, a).block_until_ready()
    t, _ = timed(mm, a, a, repeat=repeat)
    return 2.0 * n**3 / t


def step_bound(x, samples: int, bandwidth: float, flop_rate: float) -> float:
    """Seconds: the larger of one read of X and 4 N D S flops at the measured rates."""
    n, d = x.shape
    return max(x.size * x.dtype.itemsize / bandwidth, 4.0 * n * d * samples / flop_rate)


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def run(kinds, families, sizes, dims, samples_list, ours, peers, log=print) -> tuple[list[dict], dict]:
    flop_rate = matmul_rate()
    rows = []
    for kind in kinds:
        for family in families:
            for n in sizes:
                for d in dims:
                    x_np, y_np = DATA[kind](n, d)
                    x, y = jnp.asarray(x_np), jnp.asarray(y_np)
                    bandwidth = memory_bandwidth(x)
                    for s in samples_list:
                        steps = steps_for(n, d)
                        bound = step_bound(x, s, bandwidth, flop_rate)
                        row = {"model": kind, "family": family, "N": n, "D": d, "S": s, "steps": steps,
                               "bound ms": 1e3 * bound, "GB/s": bandwidth / 1e9}
                        times = {}
                        for name in ours + peers:
                            r = (OURS.get(name) or PEERS[name])(kind, x, y, family, steps, s)
                            times[name] = r["per_step"]
                            row[f"{name} ms"] = 1e3 * r["per_step"]
                            if "compile" in r:
                                row[f"{name} compile s"] = r["compile"]
                            if "defaults extra s" in r:
                                row["aj defaults extra s"] = r["defaults extra s"]
                        base = times[ours[0]]
                        row["x bound"] = base / bound
                        for name in peers:
                            row[f"{name} / ours"] = times[name] / base
                        rows.append(row)
                        log({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
    return rows, {"matmul_gflops": flop_rate / 1e9}


def table(rows, ours, peers) -> str:
    columns = ["model", "family", "N", "D", "S", "steps"] + [f"{n} ms" for n in ours + peers] + \
        [f"{n} / ours" for n in peers] + ["bound ms", "x bound", f"{ours[0]} compile s", "aj defaults extra s"]
    return markdown_table(rows, columns)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N = 1e3 and 1e4, D = 10, S = 1 (about 3 minutes)")
    parser.add_argument("--models", default="logistic,poisson")
    parser.add_argument("--sizes", default="1000,10000,100000,1000000")
    parser.add_argument("--dims", default="10,100")
    parser.add_argument("--samples", default="1")
    parser.add_argument("--families", default="meanfield,fullrank")
    parser.add_argument("--ours", default=",".join(OURS))
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--out", default="benchmarks/results/bench_fit.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.dims, args.samples = "1000,10000", "10", "1"
    ours, peers = args.ours.split(","), [p for p in args.peers.split(",") if p]
    start = time.perf_counter()
    rows, rates = run(args.models.split(","), args.families.split(","), list(map(int, args.sizes.split(","))),
                      list(map(int, args.dims.split(","))), list(map(int, args.samples.split(","))), ours, peers,
                      log=lambda r: print(r, file=sys.stderr, flush=True))
    text = table(rows, ours, peers)
    print(text)
    payload = {"benchmark": "bench_fit", "versions": versions(), "machine": {**machine(), **rates},
               "args": vars(args), "seconds": time.perf_counter() - start, "rows": rows, "markdown": text}
    write_json(args.out, payload)
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(text + "\n")
    return payload


if __name__ == "__main__":
    main()
