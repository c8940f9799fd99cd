"""The `advi-jax vae` sub-command: train a VAE on MNIST, evaluate it, write checkpoint and PNGs.

Outputs in `--out` (default `advi_jax_out/vae`): `checkpoint.npz` (params, optimizer state,
epoch, RNG key; rewritten after every epoch), `metrics.json`, `reconstructions.png`,
`prior_samples.png` and, for `--latent 2`, `latent_space.png`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from advi_jax.cli import positive_float, positive_int

EXAMPLES = """examples:
  advi-jax vae --epochs 5 --latent 2
  advi-jax vae --objective iwae-5 --estimator dreg --epochs 20
  advi-jax vae --arch conv --train-subset 10000 --epochs 3 --eval-k 500
  advi-jax vae --out runs/a --resume            # continue an interrupted run
"""


def _hidden(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split(",") if w.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated widths like 200,200, got {text!r}") from None
    if not widths or any(w < 1 for w in widths):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive widths like 200,200, got {text!r}")
    return widths


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `vae` on the `advi-jax` sub-command parsers."""
    from advi_jax.vae.modules import ACTIVATIONS, ARCHITECTURES, LIKELIHOODS
    from advi_jax.vae.objectives import ESTIMATORS

    p = subparsers.add_parser("vae", help="train and evaluate a VAE (MNIST by default)",
                              description="Train a variational autoencoder on MNIST and evaluate it.",
                              epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latent", type=positive_int, default=50, help="latent dimension L (default 50)")
    p.add_argument("--arch", choices=ARCHITECTURES, default="mlp", help="network architecture")
    p.add_argument("--hidden", type=_hidden, default=(200, 200), help="MLP hidden widths (default 200,200)")
    p.add_argument("--activation", choices=sorted(ACTIVATIONS), default=None,
                   help="default tanh for mlp, relu for conv")
    p.add_argument("--likelihood", choices=LIKELIHOODS, default="bernoulli")
    p.add_argument("--family", choices=("meanfield", "fullrank"), default="meanfield",
                   help="encoder family: diagonal or full-rank (Cholesky) Gaussian")
    p.add_argument("--epochs", type=positive_int, default=10)
    p.add_argument("--batch-size", type=positive_int, default=100)
    p.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate")
    p.add_argument("--objective", default="elbo", help="elbo, elbo-K or iwae-K (e.g. iwae-5)")
    p.add_argument("--estimator", choices=ESTIMATORS, default="reparam")
    p.add_argument("--kl", choices=("analytic", "mc"), default=None,
                   help="ELBO's KL term (default analytic for reparam, mc otherwise)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="advi_jax_out/vae", help="output folder")
    p.add_argument("--dataset", choices=("mnist", "binarized_mnist"), default="mnist",
                   help="mnist: dynamic binarisation each epoch; binarized_mnist: the fixed one")
    p.add_argument("--train-subset", type=positive_int, default=None, help="use the first N training images")
    p.add_argument("--test-subset", type=positive_int, default=None, help="evaluate on the first N test images")
    p.add_argument("--eval-k", type=positive_int, default=5000, help="importance samples for test log-likelihood")
    p.add_argument("--data-dir", default=None, help="folder searched first for mnist.npz")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz if present")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Train, evaluate and write outputs; returns the exit status."""
    import jax
    import numpy as np
    import optax

    from advi_jax.vae import plots
    from advi_jax.vae.data import load_mnist
    from advi_jax.vae.evaluate import evaluate_elbo, log_likelihood
    from advi_jax.vae.modules import VAEConfig
    from advi_jax.vae.objectives import parse_objective
    from advi_jax.vae.train import NonFiniteLossError, data_mesh, train

    objective = parse_objective(args.objective, args.estimator, args.kl)
    activation = args.activation or ("tanh" if args.arch == "mlp" else "relu")
    config = VAEConfig(latent=args.latent, arch=args.arch, hidden=args.hidden, activation=activation,
                       likelihood=args.likelihood, family=args.family)
    data = load_mnist(args.dataset, args.data_dir)
    x_train = data.x_train[: args.train_subset] if args.train_subset else data.x_train
    x_test = data.x_test[: args.test_subset] if args.test_subset else data.x_test
    y_test = None if data.y_test is None else data.y_test[: len(x_test)]
    if args.batch_size > len(x_train):
        raise ValueError(f"--batch-size {args.batch_size} exceeds the {len(x_train)} training images")
    num_devices = jax.local_device_count()
    if args.batch_size % num_devices:
        raise ValueError(f"--batch-size {args.batch_size} must be divisible by the {num_devices} local devices")
    mesh = data_mesh() if num_devices > 1 else None
    binarize = args.likelihood == "bernoulli" and not data.binarized
    key = jax.random.key(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    try:
        result = train(config, x_train, key=key, epochs=args.epochs, batch_size=args.batch_size,
                       objective=objective, optimizer=optax.adam(args.lr), binarize=binarize, out_dir=out,
                       resume=args.resume, mesh=mesh, progress=not args.no_progress)
    except NonFiniteLossError as err:
        print(f"advi-jax vae: {err}", file=sys.stderr)
        return 1
    train_seconds = time.perf_counter() - start

    # A fixed binarisation of the test set (seeded) when training used dynamic binarisation.
    eval_key = jax.random.fold_in(key, 1_000_003)
    x_eval = x_test
    if binarize:
        x_eval = np.asarray(jax.random.bernoulli(jax.random.fold_in(eval_key, 0), x_test), np.float32)
    graphdef, params = result.graphdef, result.state.params
    elbo = float(np.mean(evaluate_elbo(graphdef, params, x_eval, jax.random.fold_in(eval_key, 1))))
    print(f"test ELBO: {elbo:.2f} nats/image ({len(x_eval)} images)")
    ll = float(np.mean(log_likelihood(graphdef, params, x_eval, jax.random.fold_in(eval_key, 2),
                                      num_samples=args.eval_k)))
    print(f"test log-likelihood (K={args.eval_k}): {ll:.2f} nats/image, NLL {-ll:.2f}")

    plots.plot_reconstructions(graphdef, params, x_eval, out / "reconstructions.png")
    plots.plot_prior_samples(graphdef, params, jax.random.fold_in(eval_key, 3), out / "prior_samples.png")
    if config.latent == 2:
        plots.plot_latent_space(graphdef, params, x_eval, y_test, out / "latent_space.png")
    metrics = {"config": json.loads(config.to_json()), "objective": objective.name,
               "estimator": objective.estimator, "epochs": result.state.epoch, "train_loss": result.history,
               "test_elbo": elbo, "test_log_likelihood": ll, "eval_k": args.eval_k,
               "num_train": len(x_train), "num_test": len(x_eval), "train_seconds": train_seconds,
               "devices": num_devices}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"wrote {out}/checkpoint.npz, metrics.json and PNGs")
    return 0
