"""Large-N Bayesian logistic regression: the one-read bound, full-batch steps and minibatch epochs.

Synthetic data, D = 100 features, float32, N = 1e6 and 1e7 (X is 0.4 GB and 4 GB). In one run:

* ``read X``: a jitted `jnp.sum(X)`, the time one read of X takes on this machine (the bound a
  full-batch gradient step cannot beat), and the memory bandwidth it implies.
* full-batch step time (mean-field, S = 1 and 8 draws; the marginal time of a step, from runs of
  `--steps` and twice as many steps, so that once-per-call work is not counted): advi_jax with
  the one-read GLM likelihood (`aj.glm_log_likelihood`), advi_jax with the plain autodiff
  likelihood, and NumPyro's `svi.update` in a jitted `lax.scan` (AutoDiagonalNormal,
  Trace_ELBO), each as a multiple of the one-read bound.
* minibatch time per epoch (batch 1000, S = 1): `aj.fit_minibatch` against NumPyro SVI with a
  subsampled plate (`subsample_size=1000`) in a jitted `lax.scan` over one epoch of steps.

Usage:
  python -m benchmarks.bench_large                 # N = 1e6 and 1e7 (needs ~14 GB of memory)
  python -m benchmarks.bench_large --sizes 1000000 --steps 10
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
from benchmarks.common import machine, markdown_table, versions, write_json  # noqa: E402

D = 100
LR = 0.01


def make_data(n: int, seed: int = 0):
    """Standard-normal float32 features generated in chunks (no float64 copy of X)."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, D), np.float32)
    step = 1_000_000
    for i in range(0, n, step):
        x[i:i + step] = rng.standard_normal((min(step, n - i), D), dtype=np.float32)
    beta = rng.normal(0.0, 1.0 / np.sqrt(D), D).astype(np.float32)
    eta = x @ beta
    y = (rng.random(n, dtype=np.float32) < 1.0 / (1.0 + np.exp(-eta))).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(y)


def best_time(fn, *args, repeat=3):
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def blocked_log_joint(params, data):
    x, y = data
    return -0.5 * jnp.sum(params["beta"] ** 2) + aj.glm_log_likelihood(x, y, params["beta"], family="bernoulli")


def plain_log_joint(params, data):
    x, y = data
    return -0.5 * jnp.sum(params["beta"] ** 2) + aj.models.glm.glm_log_likelihood_reference(x, y, params["beta"])


def ours_step_time(log_joint, x, y, samples, steps):
    """Marginal time per step: (time of a 2 * steps fit - time of a steps fit) / steps.

    Each `aj.fit` call also does once-per-call work that reads X (the finiteness check of the
    data, about one read), which a plain wall / steps would spread over the steps.
    """
    model = aj.Model(log_joint, {"beta": aj.real((D,))}, data=(x, y))
    kwargs = dict(family="meanfield", num_samples=samples, optimizer=optax.adam(LR), progress=False,
                  init=None, diagnostics=False, check=False, chunk_size=2 * steps)
    aj.fit(model, key=jax.random.key(0), num_steps=steps, **kwargs)  # compiles

    def wall(num_steps):
        start = time.perf_counter()
        jax.block_until_ready(aj.fit(model, key=jax.random.key(1), num_steps=num_steps, **kwargs).params)
        return time.perf_counter() - start

    return (wall(2 * steps) - wall(steps)) / steps


def _numpyro_model(subsample_size=None):
    import numpyro
    import numpyro.distributions as dist

    def model(x, y):
        beta = numpyro.sample("beta", dist.Normal(jnp.zeros(D), 1.0).to_event(1))
        with numpyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
            numpyro.sample("y", dist.Bernoulli(logits=x[idx] @ beta), obs=y[idx])

    return model


def numpyro_step_time(x, y, samples, steps, subsample_size=None, marginal=True):
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoDiagonalNormal

    def runner(length):
        # A fresh guide per compiled function: an AutoGuide keeps state from the trace it was
        # first set up in, which another jitted function must not reuse.
        model = _numpyro_model(subsample_size)
        svi = SVI(model, AutoDiagonalNormal(model), optax.adam(LR), Trace_ELBO(num_particles=samples))

        @jax.jit
        def run(key, x, y):
            state = svi.init(key, x, y)
            return jax.lax.scan(lambda s, _: svi.update(s, x, y), state, None, length=length)[1]

        return run

    one = best_time(runner(steps), jax.random.key(0), x, y, repeat=1)
    if not marginal:
        return one / steps
    # Marginal time per step, as for advi_jax (svi.init evaluates the model once per call).
    return (best_time(runner(2 * steps), jax.random.key(0), x, y, repeat=1) - one) / steps


def ours_epoch_time(x, y, batch):
    mb = aj.MinibatchModel(
        log_prior=lambda p: -0.5 * jnp.sum(p["beta"] ** 2),
        log_likelihood=lambda p, b: aj.models.glm.glm_log_likelihood_reference(b[0], b[1], p["beta"]),
        support={"beta": aj.real((D,))}, data=(x, y))
    kwargs = dict(batch_size=batch, num_epochs=1, optimizer=optax.adam(LR), check=False)
    aj.fit_minibatch(mb, key=jax.random.key(0), **kwargs)
    start = time.perf_counter()
    result = aj.fit_minibatch(mb, key=jax.random.key(1), **kwargs)
    jax.block_until_ready(result.params)
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--samples", default="1,8")
    parser.add_argument("--steps", type=int, default=20, help="full-batch steps timed per method")
    parser.add_argument("--batch", type=int, default=1000, help="minibatch size")
    parser.add_argument("--out", default="benchmarks/results/bench_large.json")
    args = parser.parse_args(argv)
    rows = []
    for n in map(int, args.sizes.split(",")):
        x, y = make_data(n)
        read = best_time(jax.jit(jnp.sum), x)
        bandwidth = x.nbytes / read / 1e9
        print(f"N={n}: one read of X ({x.nbytes / 1e9:.2f} GB) = {1e3 * read:.1f} ms ({bandwidth:.1f} GB/s)",
              file=sys.stderr)
        steps = args.steps if n <= 1_000_000 else max(3, args.steps // 4)
        for s in map(int, args.samples.split(",")):
            row = {"N": n, "S": s, "read X ms": 1e3 * read, "GB/s": bandwidth}
            blocked = ours_step_time(blocked_log_joint, x, y, s, steps)
            plain = ours_step_time(plain_log_joint, x, y, s, steps)
            peer = numpyro_step_time(x, y, s, steps)
            row.update({"ours blocked ms/step": 1e3 * blocked, "blocked / read": blocked / read,
                        "ours autodiff ms/step": 1e3 * plain, "numpyro scan ms/step": 1e3 * peer,
                        "numpyro / ours": peer / blocked})
            rows.append(row)
            print(row, file=sys.stderr)
        epoch_steps = n // args.batch
        ours_epoch = ours_epoch_time(x, y, args.batch)
        peer_epoch = numpyro_step_time(x, y, 1, epoch_steps, subsample_size=args.batch, marginal=False) * epoch_steps
        row = {"N": n, "S": 1, "read X ms": 1e3 * read, "GB/s": bandwidth,
               f"ours epoch s (B={args.batch})": ours_epoch, "numpyro subsampled epoch s": peer_epoch,
               "numpyro / ours (epoch)": peer_epoch / ours_epoch, "epoch / read": ours_epoch / read}
        rows.append(row)
        print(row, file=sys.stderr)
        del x, y
    columns = list(dict.fromkeys(k for r in rows for k in r))
    table = markdown_table(rows, columns)
    print(table)
    write_json(args.out, {"benchmark": "bench_large", "versions": versions(), "machine": machine(),
                          "args": vars(args), "rows": rows, "markdown": table})


if __name__ == "__main__":
    main()
