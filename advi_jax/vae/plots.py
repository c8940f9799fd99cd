"""PNG figures for a trained VAE (matplotlib is imported inside each function)."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from advi_jax._types import Array, PyTree

__all__ = ["plot_latent_space", "plot_loss_curve", "plot_prior_samples", "plot_reconstructions"]


def _figure_backend():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_loss_curve(step_losses, path: str | os.PathLike, *, steps_per_epoch: int | None = None,
                    test_elbo: float | None = None) -> None:
    """The training loss (negative bound, nats/image) per step, with its per-epoch means.

    Args:
      step_losses: (S,) loss of every training step (`TrainResult.step_losses`).
      path: the PNG to write.
      steps_per_epoch: when given, the per-epoch means are drawn as markers at each epoch's end.
      test_elbo: when given, the test-set negative ELBO is drawn as a dashed line.

    Raises:
      ValueError: no finite losses to draw.

    Example:
      >>> plot_loss_curve(result.step_losses, "loss.png", steps_per_epoch=600)  # doctest: +SKIP
    """
    losses = np.asarray(step_losses, np.float64).ravel()
    if not np.isfinite(losses).any():
        raise ValueError("step_losses holds no finite loss to plot")
    plt = _figure_backend()
    steps = np.arange(1, losses.size + 1)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(steps, losses, lw=0.6, alpha=0.45, color="C0", label="minibatch loss")
    window = max(1, min(losses.size // 20, 200))
    if window > 1:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], smooth, lw=1.5, color="C0", label=f"running mean ({window} steps)")
    if steps_per_epoch:
        num_epochs = losses.size // steps_per_epoch
        if num_epochs:
            means = losses[: num_epochs * steps_per_epoch].reshape(num_epochs, steps_per_epoch).mean(1)
            ax.plot(steps_per_epoch * np.arange(1, num_epochs + 1), means, "o", color="C1", label="epoch mean")
    if test_elbo is not None and np.isfinite(test_elbo):
        ax.axhline(-test_elbo, ls="--", color="C3", label=f"test -ELBO {-test_elbo:.1f}")
    low, high = np.nanpercentile(losses[np.isfinite(losses)], [0.5, 99.5 if losses.size > 50 else 100])
    ax.set_ylim(low - 0.05 * (high - low + 1e-9), high + 0.05 * (high - low + 1e-9))
    ax.set_xlabel("training step")
    ax.set_ylabel("loss (negative bound, nats/image)")
    ax.set_title("VAE training loss")
    ax.legend(loc="upper right", fontsize=8)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def _grid(images: np.ndarray, rows: int, cols: int) -> np.ndarray:
    images = images.reshape(rows, cols, 28, 28)
    return images.transpose(0, 2, 1, 3).reshape(rows * 28, cols * 28)


def plot_reconstructions(graphdef: nnx.GraphDef, params: PyTree, x: np.ndarray, path: str | os.PathLike,
                         num_images: int = 10) -> None:
    """Top row: test images x (N, 784); bottom row: decoder means at the encoder means."""
    plt = _figure_backend()
    vae = nnx.merge(graphdef, params)
    x = np.asarray(x[:num_images], np.float32)
    recon = np.asarray(vae.decoder.mean(vae.encoder(jnp.asarray(x)).loc))
    fig, ax = plt.subplots(figsize=(num_images, 2.2))
    ax.imshow(_grid(np.concatenate([x, recon]), 2, len(x)), cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    ax.set_title("test images (top) and reconstructions (bottom)")
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


def plot_prior_samples(graphdef: nnx.GraphDef, params: PyTree, key: Array, path: str | os.PathLike,
                       rows: int = 8, cols: int = 8) -> None:
    """A rows x cols grid of decoder means at z ~ N(0, I)."""
    plt = _figure_backend()
    vae = nnx.merge(graphdef, params)
    z = jax.random.normal(key, (rows * cols, vae.config.latent))
    images = np.asarray(vae.decoder.mean(z))
    fig, ax = plt.subplots(figsize=(cols, rows))
    ax.imshow(_grid(images, rows, cols), cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    ax.set_title("samples from the prior (decoder means)")
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


def plot_latent_space(graphdef: nnx.GraphDef, params: PyTree, x: np.ndarray, labels: np.ndarray | None,
                      path: str | os.PathLike, batch_size: int = 1000, label_name: str = "digit") -> None:
    """Scatter of the 2-D encoder means of x (N, 784), coloured by label (named `label_name`) when given."""
    plt = _figure_backend()
    vae = nnx.merge(graphdef, params)
    if vae.config.latent != 2:
        raise ValueError(f"the latent-space plot needs latent=2, got {vae.config.latent}")
    encode = jax.jit(lambda b: vae.encoder(b).loc)
    locs = np.concatenate([np.asarray(encode(jnp.asarray(x[i:i + batch_size], jnp.float32)))
                           for i in range(0, len(x), batch_size)])
    fig, ax = plt.subplots(figsize=(6, 5))
    colours = {"c": "k"} if labels is None else {"c": labels, "cmap": "tab10"}  # no colormap without labels
    points = ax.scatter(locs[:, 0], locs[:, 1], s=3, alpha=0.7, **colours)
    if labels is not None:
        fig.colorbar(points, ax=ax, label=label_name)
    ax.set_xlabel("z1")
    ax.set_ylabel("z2")
    ax.set_title("encoder means of test images")
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
