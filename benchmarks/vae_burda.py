"""Burda et al. (2016) one-stochastic-layer VAE on dynamically binarized MNIST (a benchmark, not a test).

Architecture: 784-200-200-50 (encoder) and 50-200-200-784 (decoder), tanh, Bernoulli decoder,
diagonal Gaussian encoder; Adam. Published test NLL with K = 5000 after 3280 epochs:
VAE (k = 1) 86.76 nats, IWAE (k = 50) 84.78 nats. Here only a bounded number of epochs fits on a
CPU, so the NLL is far from converged; the learning curve shows the trend.

Also measures training throughput (images/s) of advi_jax.vae's compiled epoch (one `lax.scan`
call per epoch) and of its jitted `train_step` in a Python loop, against a plain Flax Linen +
optax loop with the same network and loss.

Usage (about 6 minutes on a shared 2-core CPU: ~225 s training, ~75 s for the K = 5000 NLL on
1000 test images, ~40 s of throughput timing):
  python benchmarks/vae_burda.py --epochs 40 --test-subset 1000 --out benchmarks/results/vae_burda.json

Result of that run (2026-11-21, jax 0.10.2, CPU): train loss 195.1 -> 99.1 over 40 epochs, still
falling ~0.1-0.2 nats/epoch; test ELBO -98.87 (all 10000 images); test NLL 91.81 +- 0.80
(K = 5000, first 1000 test images, fixed Bernoulli draw); throughput vs the plain Flax + optax
loop 0.90-1.14x for the compiled epoch and 0.91-0.93x for the train_step loop across two runs
(the machine is shared, so timings vary by ~10-15 %).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flax import linen, nnx  # noqa: E402

import advi_jax.vae as vae  # noqa: E402

PUBLISHED = {"vae_k1_nll": 86.76, "iwae_k50_nll": 84.78}


class _LinenVAE(linen.Module):
    """The same 784-200-200-50 VAE written plainly in Flax Linen."""

    latent: int = 50

    @linen.compact
    def __call__(self, x, key):
        h = jnp.tanh(linen.Dense(200)(x))
        h = jnp.tanh(linen.Dense(200)(h))
        out = linen.Dense(2 * self.latent)(h)
        loc, raw = out[:, : self.latent], out[:, self.latent:]
        scale = jax.nn.softplus(raw)
        z = loc + scale * jax.random.normal(key, loc.shape)
        h = jnp.tanh(linen.Dense(200)(z))
        h = jnp.tanh(linen.Dense(200)(h))
        logits = linen.Dense(784)(h)
        rec = jnp.sum(x * logits - jax.nn.softplus(logits), axis=-1)
        kl = 0.5 * jnp.sum(scale ** 2 + loc ** 2 - 1.0 - 2.0 * jnp.log(scale), axis=-1)
        return jnp.mean(kl - rec)


def throughput(x_train: np.ndarray, batch_size: int, num_steps: int, repeats: int) -> dict:
    """images/s of training loops over the same `num_steps` minibatches (best of `repeats`).

    The plain loop and the `train_step` loop get pre-binarized batches; the scan epoch is timed
    both on the same pre-binarized data (like for like) and with its own shuffle, gather and
    dynamic binarisation included.
    """
    config = vae.VAEConfig(latent=50, hidden=(200, 200), activation="tanh")
    optimizer = optax.adam(1e-3)
    graphdef, params = nnx.split(vae.build_vae(config, jax.random.key(0)), nnx.Param)
    opt_state = optimizer.init(params)
    loss = vae.make_loss(graphdef, vae.Objective())
    x_sub = jnp.asarray(x_train[: num_steps * batch_size])
    images = num_steps * batch_size

    epoch_binarize = vae.make_train_epoch(loss, optimizer, batch_size=batch_size, binarize=True, donate=False)
    epoch_plain = vae.make_train_epoch(loss, optimizer, batch_size=batch_size, binarize=False, donate=False)
    x_fixed = jax.random.bernoulli(jax.random.key(2), x_sub).astype(jnp.float32)

    def run_epoch():  # shuffle + gather + dynamic binarisation inside the compiled epoch
        jax.block_until_ready(epoch_binarize(params, opt_state, x_sub, jax.random.key(1)))

    def run_epoch_fixed():  # the same scan on pre-binarized data: the work of the plain loop
        jax.block_until_ready(epoch_plain(params, opt_state, x_fixed, jax.random.key(1)))

    # pre-binarized batches for the Python-loop variants (binarisation outside the timed loop)
    batches = x_fixed.reshape(num_steps, batch_size, -1)
    batches = [batches[i] for i in range(num_steps)]
    keys = list(jax.random.split(jax.random.key(3), num_steps))
    step = vae.make_train_step(loss, optimizer)

    def run_steps():
        p, s = params, opt_state
        for b, k in zip(batches, keys):
            p, s, _ = step(p, s, b, k)
        jax.block_until_ready(p)

    linen_model = _LinenVAE()
    linen_params = linen_model.init(jax.random.key(0), batches[0], jax.random.key(1))
    linen_opt_state = optimizer.init(linen_params)

    @jax.jit
    def linen_step(p, s, batch, key):
        value, grads = jax.value_and_grad(lambda q: linen_model.apply(q, batch, key))(p)
        updates, s = optimizer.update(grads, s, p)
        return optax.apply_updates(p, updates), s, value

    def run_linen():
        p, s = linen_params, linen_opt_state
        for b, k in zip(batches, keys):
            p, s, _ = linen_step(p, s, b, k)
        jax.block_until_ready(p)

    # interleave the three to share the (noisy, shared) machine fairly
    fns = {"advi_jax_scan_epoch_dynamic_binarisation": run_epoch, "advi_jax_scan_epoch": run_epoch_fixed,
           "advi_jax_train_step_loop": run_steps, "plain_linen_optax_loop": run_linen}
    times = {name: math.inf for name in fns}
    for fn in fns.values():
        fn()  # compile
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name] = min(times[name], time.perf_counter() - start)
    rates = {name: images / t for name, t in times.items()}
    rates["ratio_scan_vs_plain"] = rates["advi_jax_scan_epoch"] / rates["plain_linen_optax_loop"]
    rates["ratio_step_vs_plain"] = rates["advi_jax_train_step_loop"] / rates["plain_linen_optax_loop"]
    return rates


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--objective", default="elbo", help="elbo or iwae-K")
    parser.add_argument("--estimator", default="reparam")
    parser.add_argument("--test-subset", type=int, default=1000, help="images for the K=5000 NLL (0: all 10000)")
    parser.add_argument("--eval-k", type=int, default=5000)
    parser.add_argument("--throughput-steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "vae_burda.json"))
    args = parser.parse_args(argv)

    data = vae.load_mnist("mnist")
    print(f"devices: {jax.devices()}")
    rates = throughput(data.x_train, args.batch_size, args.throughput_steps, args.repeats)

    config = vae.VAEConfig(latent=50, hidden=(200, 200), activation="tanh")
    objective = vae.parse_objective(args.objective, args.estimator)
    start = time.perf_counter()
    result = vae.train(config, data.x_train, key=jax.random.key(args.seed), epochs=args.epochs,
                       batch_size=args.batch_size, objective=objective, optimizer=optax.adam(1e-3),
                       binarize=True, progress=False,
                       on_epoch=lambda e, l: print(f"epoch {e}: train loss {l:.2f}", flush=True))
    train_seconds = time.perf_counter() - start

    key = jax.random.key(args.seed + 1)
    x_test = np.asarray(jax.random.bernoulli(jax.random.fold_in(key, 0), data.x_test), np.float32)
    test_elbo = float(np.mean(vae.evaluate_elbo(result.graphdef, result.state.params, x_test,
                                                jax.random.fold_in(key, 1))))
    x_nll = x_test[: args.test_subset] if args.test_subset else x_test
    start = time.perf_counter()
    ll = vae.log_likelihood(result.graphdef, result.state.params, x_nll, jax.random.fold_in(key, 2),
                            num_samples=args.eval_k, chunk_size=500, batch_size=50)
    eval_seconds = time.perf_counter() - start
    nll = -float(np.mean(ll))
    nll_se = float(np.std(ll) / math.sqrt(len(ll)))

    report = {
        "setup": "Burda et al. 2016, 1 stochastic layer, 784-200-200-50 tanh, Bernoulli, dynamic binarisation",
        "objective": objective.name, "estimator": objective.estimator, "epochs": args.epochs,
        "batch_size": args.batch_size, "learning_curve_train_loss": result.history,
        "train_seconds": train_seconds,
        "test_elbo_all_10000": test_elbo,
        "test_nll": nll, "test_nll_se_over_images": nll_se, "test_nll_images": len(x_nll), "eval_k": args.eval_k,
        "eval_seconds": eval_seconds,
        "published": PUBLISHED,
        "throughput_images_per_s": rates, "throughput_batch_size": args.batch_size,
        "versions": {"jax": jax.__version__, "python": platform.python_version(),
                     "flax": __import__("flax").__version__, "optax": optax.__version__},
        "device": str(jax.devices()[0]), "cpu_count": os.cpu_count(),
    }
    print()
    print(f"{'quantity':<44}{'value':>14}")
    print(f"{'train loss, epoch 1 -> ' + str(args.epochs):<44}{result.history[0]:>7.2f} -> {result.history[-1]:.2f}")
    print(f"{'test ELBO (10000 images)':<44}{test_elbo:>14.2f}")
    print(f"{f'test NLL, K={args.eval_k} ({len(x_nll)} images)':<44}{nll:>14.2f}  (+- {nll_se:.2f})")
    print(f"{'published NLL VAE k=1 / IWAE k=50':<44}{'86.76 / 84.78':>14}")
    for name in ("advi_jax_scan_epoch_dynamic_binarisation", "advi_jax_scan_epoch", "advi_jax_train_step_loop",
                 "plain_linen_optax_loop"):
        print(f"{'images/s ' + name:<44}{rates[name]:>14.0f}")
    print(f"{'ratio scan epoch / plain loop':<44}{rates['ratio_scan_vs_plain']:>14.3f}")
    print(f"{'ratio train_step loop / plain loop':<44}{rates['ratio_step_vs_plain']:>14.3f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
