"""PNG figures for a trained VAE (matplotlib is imported inside each function)."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from advi_jax._types import Array, PyTree

__all__ = ["plot_latent_space", "plot_prior_samples", "plot_reconstructions"]


def _figure_backend():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


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
                      path: str | os.PathLike, batch_size: int = 1000) -> None:
    """Scatter of the 2-D encoder means of x (N, 784), coloured by label when given."""
    plt = _figure_backend()
    vae = nnx.merge(graphdef, params)
    if vae.config.latent != 2:
        raise ValueError(f"the latent-space plot needs latent=2, got {vae.config.latent}")
    encode = jax.jit(lambda b: vae.encoder(b).loc)
    locs = np.concatenate([np.asarray(encode(jnp.asarray(x[i:i + batch_size], jnp.float32)))
                           for i in range(0, len(x), batch_size)])
    fig, ax = plt.subplots(figsize=(6, 5))
    points = ax.scatter(locs[:, 0], locs[:, 1], c=labels if labels is not None else "k", cmap="tab10",
                        s=3, alpha=0.7)
    if labels is not None:
        fig.colorbar(points, ax=ax, label="digit")
    ax.set_xlabel("z1")
    ax.set_ylabel("z2")
    ax.set_title("encoder means of test images")
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
