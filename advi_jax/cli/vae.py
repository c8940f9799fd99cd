"""The `advi-jax vae` sub-command: train a VAE on MNIST, evaluate it, write checkpoint and PNGs.

Outputs in `--out` (default `advi_jax_out/vae`): `checkpoint.npz` (params, optimizer state,
epoch, RNG key, loss history; rewritten after every epoch), `metrics.json`, `loss.png` (the
training loss per step), `reconstructions.png`, `prior_samples.png` and, for `--latent 2`,
`latent_space.png`.

Evaluation cost: the test ELBO and the importance-sampled log-likelihood (the IWAE-K bound) come
from one pass of (test images) x K decoder evaluations, compiled in the background while the VAE
trains. The default (1000 test images, K = 50) costs a few per cent of one training epoch on a
CPU; `--paper-eval` gives Burda et al.'s (2016) setting (all 10,000 test images, K = 5000), which
takes 10-30 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from advi_jax.cli import positive_float, positive_int, seed_int

EXAMPLES = """examples:
  advi-jax vae --epochs 5 --latent 2
  advi-jax vae --objective iwae-5 --estimator dreg --epochs 20
  advi-jax vae --arch conv --train-subset 10000 --epochs 3 --eval-k 500
  advi-jax vae --epochs 100 --paper-eval         # report log p(x) as Burda et al. (2016): K=5000, 10k images
  advi-jax vae --dataset fashion_mnist --data-dir ~/data
  advi-jax vae --out runs/a --resume            # continue an interrupted run

data: mnist.npz (or fashion_mnist.npz, binarized_mnist.npz) is looked up in --data-dir,
$ADVI_JAX_DATA, ~/.cache/advi_jax, then shared/data beside the checkout; nothing is downloaded.
Any copy of the arrays works: x_train (60000, 28, 28) uint8 0..255, y_train (60000,) labels
0..9, x_test, y_test, saved with numpy.savez_compressed (the error message says more).
"""

PAPER_EVAL_K = 5000
DEFAULT_TEST_IMAGES = 1000
DEFAULT_EVAL_K = 50


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Examples kept as written; every option's default shown (unless its help already says it)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False \
                or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def _hidden(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split(",") if w.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated widths like 200,200, got {text!r}") from None
    if not widths or any(w < 1 for w in widths):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive widths like 200,200, got {text!r}")
    return widths


def _count_or_all(text: str) -> int | str:
    if text.strip().lower() == "all":
        return "all"
    return positive_int(text)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `vae` on the `advi-jax` sub-command parsers."""
    from advi_jax.data import MNIST_NAMES
    from advi_jax.vae.modules import ACTIVATIONS, ARCHITECTURES, LIKELIHOODS
    from advi_jax.vae.objectives import ESTIMATORS

    p = subparsers.add_parser("vae", help="train and evaluate a VAE (MNIST by default)",
                              description="Train a variational autoencoder on MNIST and evaluate it.",
                              epilog=EXAMPLES, formatter_class=_HelpFormatter)
    p.add_argument("--latent", type=positive_int, default=50, help="latent dimension L")
    p.add_argument("--arch", choices=ARCHITECTURES, default="mlp", help="network architecture")
    p.add_argument("--hidden", type=_hidden, default=(200, 200), help="MLP hidden widths (default: 200,200)")
    p.add_argument("--activation", choices=sorted(ACTIVATIONS), default=None,
                   help="hidden activation (default: tanh for mlp, relu for conv)")
    p.add_argument("--likelihood", choices=LIKELIHOODS, default="bernoulli", help="decoder likelihood p(x | z)")
    p.add_argument("--family", choices=("meanfield", "fullrank"), default="meanfield",
                   help="encoder family: diagonal or full-rank (Cholesky) Gaussian")
    p.add_argument("--epochs", type=positive_int, default=10, help="training epochs (in total, with --resume)")
    p.add_argument("--batch-size", type=positive_int, default=100, help="minibatch size")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate")
    p.add_argument("--objective", default="elbo", help="elbo, elbo-K or iwae-K (e.g. iwae-5)")
    p.add_argument("--estimator", choices=ESTIMATORS, default="reparam", help="encoder gradient estimator")
    p.add_argument("--kl", choices=("analytic", "mc"), default=None,
                   help="ELBO's KL term (default: analytic for reparam, mc otherwise)")
    p.add_argument("--seed", type=seed_int, default=0, help="random seed")
    p.add_argument("--out", default="advi_jax_out/vae", help="output folder (checked before training)")
    p.add_argument("--dataset", choices=MNIST_NAMES, default="mnist",
                   help="mnist / fashion_mnist: dynamic binarisation each epoch; binarized_mnist: the fixed one")
    p.add_argument("--data-dir", default=None,
                   help="folder searched first for the dataset file (default: none; then $ADVI_JAX_DATA, "
                        "~/.cache/advi_jax, shared/data beside the checkout)")
    p.add_argument("--train-subset", type=positive_int, default=None,
                   help="use the first N training images (default: all)")
    p.add_argument("--test-subset", type=_count_or_all, default=None,
                   help=f"evaluate on the first N test images, or 'all' (default: {DEFAULT_TEST_IMAGES}; "
                        "all with --paper-eval)")
    p.add_argument("--eval-k", type=positive_int, default=None,
                   help=f"importance samples K per test image for log p(x) (default: {DEFAULT_EVAL_K}; "
                        f"{PAPER_EVAL_K} with --paper-eval)")
    p.add_argument("--paper-eval", action="store_true",
                   help=f"evaluate as Burda et al. (2016): every test image, K = {PAPER_EVAL_K} "
                        "(10-30 minutes on a 2-core CPU); --test-subset / --eval-k still override")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz if present")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=run)
    return p


def _check_out(out: Path) -> None:
    """Create `out` and check that a file can be written there, before any training."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        if isinstance(err, (FileExistsError, NotADirectoryError)) or (out.exists() and not out.is_dir()):
            reason = "a file is in the way (a path component is a regular file, not a folder)"
        raise ValueError(f"--out {str(out)!r}: cannot write the output folder ({reason})") from None


def _compile_evaluation(config, key, x_shape: tuple[int, int], eval_k: int) -> None:
    """Compile `evaluate_bounds` for the network's shapes (run in a thread; failures are left to the real call)."""
    try:
        from flax import nnx

        from advi_jax.vae.evaluate import compile_bounds
        from advi_jax.vae.modules import build_vae

        graphdef, shapes = nnx.split(nnx.eval_shape(lambda: build_vae(config, key)), nnx.Param)
        compile_bounds(graphdef, shapes, x_shape, num_samples=eval_k)
    except Exception:  # noqa: BLE001 - an optimisation only: evaluate_bounds compiles on its own
        pass


def _eval_settings(args: argparse.Namespace) -> tuple[int | str, int]:
    """(test images or "all", K): explicit options, else --paper-eval's, else the cheap defaults."""
    test_subset = args.test_subset if args.test_subset is not None else (
        "all" if args.paper_eval else DEFAULT_TEST_IMAGES)
    eval_k = args.eval_k if args.eval_k is not None else (PAPER_EVAL_K if args.paper_eval else DEFAULT_EVAL_K)
    return test_subset, eval_k


def run(args: argparse.Namespace) -> int:
    """Train, evaluate and write outputs; returns the exit status."""
    import jax
    import numpy as np
    import optax

    from advi_jax import data_mesh
    from advi_jax.data import load_mnist
    from advi_jax.vae import plots
    from advi_jax.vae.evaluate import evaluate_bounds
    from advi_jax.vae.modules import VAEConfig
    from advi_jax.vae.objectives import parse_objective
    from advi_jax.vae.train import NonFiniteLossError, train

    objective = parse_objective(args.objective, args.estimator, args.kl)
    activation = args.activation or ("tanh" if args.arch == "mlp" else "relu")
    config = VAEConfig(latent=args.latent, arch=args.arch, hidden=args.hidden, activation=activation,
                       likelihood=args.likelihood, family=args.family)
    if args.data_dir is not None and not os.path.isdir(os.path.expanduser(args.data_dir)):
        raise ValueError(f"--data-dir {args.data_dir!r} is not a folder")
    test_subset, eval_k = _eval_settings(args)
    out = Path(args.out).expanduser()
    _check_out(out)

    data = load_mnist(args.dataset, data_dir=args.data_dir)
    x_train = data.x_train[: args.train_subset] if args.train_subset else data.x_train
    x_test = data.x_test if test_subset == "all" else data.x_test[:test_subset]
    y_test = None if data.y_test is None else data.y_test[: len(x_test)]
    if args.batch_size > len(x_train):
        raise ValueError(f"--batch-size {args.batch_size} exceeds the {len(x_train)} training images")
    num_devices = jax.local_device_count()
    if args.batch_size % num_devices:
        raise ValueError(f"--batch-size {args.batch_size} must be divisible by the {num_devices} local devices")
    mesh = data_mesh(jax.local_devices()) if num_devices > 1 else None
    binarize = args.likelihood == "bernoulli" and not data.binarized
    key = jax.random.key(args.seed)
    progress = not args.no_progress
    print(f"data: {data.path} ({len(x_train)} training, {len(x_test)} test images)")

    # Compile the evaluation in the background while the VAE trains (it then costs only its arithmetic).
    precompile = threading.Thread(target=_compile_evaluation, args=(config, key, (len(x_test), 784), eval_k),
                                  daemon=True)
    precompile.start()
    start = time.perf_counter()
    try:
        result = train(config, x_train, key=key, epochs=args.epochs, batch_size=args.batch_size,
                       objective=objective, optimizer=optax.adam(args.lr), binarize=binarize, out_dir=out,
                       resume=args.resume, mesh=mesh, progress=progress)
    except NonFiniteLossError as err:
        print(f"advi-jax vae: {err}", file=sys.stderr)
        return 1
    train_seconds = time.perf_counter() - start
    print(f"trained {result.state.epoch} epochs in {train_seconds:.1f} s; final training loss "
          f"{result.history[-1]:.2f} nats/image" if result.history else "no epoch to train")

    precompile.join()
    # A fixed binarisation of the test set (seeded; NumPy, so nothing to compile) when training
    # used dynamic binarisation.
    start = time.perf_counter()
    eval_key = jax.random.fold_in(key, 1_000_003)
    x_eval = x_test
    if binarize:
        x_eval = (np.random.default_rng([args.seed, 1_000_003]).random(x_test.shape) < x_test).astype(np.float32)
    graphdef, params = result.graphdef, result.state.params
    bounds = evaluate_bounds(graphdef, params, x_eval, jax.random.fold_in(eval_key, 2), num_samples=eval_k,
                             progress=f"evaluating (K={eval_k})" if progress else False)
    elbo, elbo_se = float(np.mean(bounds.elbo)), float(np.std(bounds.elbo) / np.sqrt(len(x_eval)))
    ll, se = float(np.mean(bounds.log_likelihood)), float(np.std(bounds.log_likelihood) / np.sqrt(len(x_eval)))
    eval_seconds = time.perf_counter() - start
    note = "" if (eval_k, test_subset) == (PAPER_EVAL_K, "all") else "; --paper-eval for K=5000 on every test image"
    print(f"test ELBO: {elbo:.2f} +/- {elbo_se:.2f} nats/image; test log-likelihood (IWAE bound, K={eval_k}): "
          f"{ll:.2f} +/- {se:.2f} nats/image, NLL {-ll:.2f} ({len(x_eval)} images{note})")
    print(f"evaluation took {eval_seconds:.1f} s ({100 * eval_seconds / max(train_seconds, 1e-9):.0f}% of training)")

    steps_per_epoch = len(x_train) // args.batch_size
    plots.plot_loss_curve(result.step_losses, out / "loss.png", steps_per_epoch=steps_per_epoch, test_elbo=elbo)
    plots.plot_reconstructions(graphdef, params, x_eval, out / "reconstructions.png")
    plots.plot_prior_samples(graphdef, params, jax.random.fold_in(eval_key, 3), out / "prior_samples.png")
    if config.latent == 2:
        plots.plot_latent_space(graphdef, params, x_eval, y_test, out / "latent_space.png",
                                label_name="digit" if args.dataset != "fashion_mnist" else "class")
    metrics = {"config": json.loads(config.to_json()), "dataset": args.dataset, "data_file": str(data.path),
               "objective": objective.name, "estimator": objective.estimator, "epochs": result.state.epoch,
               "train_loss": result.history, "test_elbo": elbo, "test_elbo_se": elbo_se, "test_log_likelihood": ll,
               "test_log_likelihood_se": se, "eval_k": eval_k, "num_train": len(x_train),
               "num_test": len(x_eval), "train_seconds": train_seconds, "eval_seconds": eval_seconds,
               "devices": num_devices}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"wrote {out}/checkpoint.npz, metrics.json, loss.png and the other PNGs")
    return 0
