"""Flax NNX encoder and decoder modules for variational autoencoders.

Why NNX (not Linen): NNX modules are ordinary Python objects whose parameters are split off
once into a plain pytree (`graphdef, params = nnx.split(vae, nnx.Param)`) and merged back inside
a pure function (`nnx.merge(graphdef, params)`), so the rest of advi_jax -- optax, `jax.jit`,
`jax.lax.scan`, `NamedSharding` placement and the npz checkpoint -- sees only an ordinary pytree
of arrays, the same way it sees the variational parameters of `aj.fit`. Linen would work
too, but its `init`/`apply` split and `variables` dictionaries add a second convention for no gain
here, and flax's documentation steers new code to NNX. The modules hold no `nnx.Rngs` after
construction: every random draw (the encoder's reparameterised samples) takes a key at call time,
in the objectives, so the networks themselves are deterministic functions.

Shapes: images are flattened to `D = 784` features; the convolutional modules reshape to
28 x 28 x 1 internally. The encoder maps a batch `x` of shape (B, D) to family parameters with a
leading batch axis (`MeanFieldParams` with `loc`, `raw_scale` of shape (B, L), or
`FullRankParams` with an extra `off_diag` of shape (B, L, L)); decoders map latents of shape
(..., L) to the parameters of p(x | z) with shape (..., D).

Example:
  >>> import jax
  >>> from advi_jax.vae import VAEConfig, build_vae
  >>> vae = build_vae(VAEConfig(latent=2, hidden=(16,)), jax.random.key(0))
  >>> vae.encoder(jax.numpy.zeros((3, 784))).loc.shape
  (3, 2)
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from advi_jax._types import Array
from advi_jax.families import FullRankParams, MeanFieldParams

__all__ = [
    "ACTIVATIONS",
    "ARCHITECTURES",
    "LIKELIHOODS",
    "ConvDecoder",
    "ConvEncoder",
    "GaussianOutput",
    "MLPDecoder",
    "MLPEncoder",
    "VAE",
    "VAEConfig",
    "build_vae",
]

ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu, "gelu": jax.nn.gelu, "softplus": jax.nn.softplus}
ARCHITECTURES = ("mlp", "conv")
LIKELIHOODS = ("bernoulli", "gaussian")
FAMILY_NAMES = ("meanfield", "fullrank")
_LOG_2PI = math.log(2.0 * math.pi)


class GaussianOutput(NamedTuple):
    """Parameters of a diagonal Gaussian likelihood p(x | z).

    Attributes:
      loc: (..., D) means.
      raw_scale: (..., D); scale = softplus(raw_scale) (a learned (D,) vector, broadcast).
    """

    loc: Array
    raw_scale: Array


def _check_choice(value, name: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Static description of a VAE (everything needed to rebuild it from a checkpoint).

    Attributes:
      latent: L, the latent dimension.
      data_dim: D, the number of observed features (784 for MNIST; "conv" needs 784).
      arch: "mlp" or "conv" (a small convolutional pair for 28 x 28 images).
      hidden: widths of the MLP hidden layers, shared by encoder and decoder (mirrored).
      activation: one of `ACTIVATIONS`.
      likelihood: "bernoulli" (decoder gives logits) or "gaussian" (mean and learned
        per-feature scale).
      family: "meanfield" (diagonal q) or "fullrank" (Cholesky head).
    """

    latent: int = 50
    data_dim: int = 784
    arch: str = "mlp"
    hidden: tuple[int, ...] = (200, 200)
    activation: str = "tanh"
    likelihood: str = "bernoulli"
    family: str = "meanfield"

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if not isinstance(self.latent, int) or self.latent < 1:
            raise ValueError(f"latent must be an int >= 1, got {self.latent!r}")
        if not isinstance(self.data_dim, int) or self.data_dim < 1:
            raise ValueError(f"data_dim must be an int >= 1, got {self.data_dim!r}")
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden widths must be >= 1, got {self.hidden}")
        _check_choice(self.arch, "arch", ARCHITECTURES)
        _check_choice(self.activation, "activation", ACTIVATIONS)
        _check_choice(self.likelihood, "likelihood", LIKELIHOODS)
        _check_choice(self.family, "family", FAMILY_NAMES)
        if self.arch == "conv" and self.data_dim != 784:
            raise ValueError(f"arch='conv' expects 28x28 images (data_dim=784), got data_dim={self.data_dim}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "VAEConfig":
        fields = json.loads(text)
        fields["hidden"] = tuple(fields["hidden"])
        return cls(**fields)


class _FamilyHead(nnx.Module):
    """Linear head from features to Gaussian family parameters (diagonal or Cholesky)."""

    def __init__(self, in_features: int, latent: int, family: str, *, rngs: nnx.Rngs):
        self.latent = latent
        self.family = family
        num_off = latent * (latent - 1) // 2 if family == "fullrank" else 0
        self.num_off = num_off
        self.linear = nnx.Linear(in_features, 2 * latent + num_off, rngs=rngs)

    def __call__(self, h: Array) -> MeanFieldParams | FullRankParams:
        out = self.linear(h)
        L = self.latent
        loc, raw = out[..., :L], out[..., L:2 * L]
        if self.family == "meanfield":
            return MeanFieldParams(loc, raw)
        rows, cols = jnp.tril_indices(L, -1)
        off = jnp.zeros(out.shape[:-1] + (L, L), out.dtype).at[..., rows, cols].set(out[..., 2 * L:])
        return FullRankParams(loc, raw, off)


class MLPEncoder(nnx.Module):
    """MLP x -> q(z | x) with a Gaussian family head.

    Args:
      data_dim: D.
      hidden: hidden widths.
      latent: L.
      activation: a name in `ACTIVATIONS`.
      family: "meanfield" or "fullrank".
      rngs: initialisation randomness only (not stored for later use).
    """

    def __init__(self, data_dim: int, hidden: tuple[int, ...], latent: int, *,
                 activation: str = "tanh", family: str = "meanfield", rngs: nnx.Rngs):
        widths = (data_dim,) + tuple(hidden)
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
        self.activation = activation
        self.head = _FamilyHead(widths[-1], latent, family, rngs=rngs)

    def __call__(self, x: Array) -> MeanFieldParams | FullRankParams:
        """Family parameters for a batch: x (B, D) -> params with leading axis B."""
        act = ACTIVATIONS[self.activation]
        h = x
        for layer in self.layers:
            h = act(layer(h))
        return self.head(h)


class _Likelihood:
    """Shared log p(x | z) and mean for decoders (mixin; `likelihood` and `raw_scale` set)."""

    likelihood: str

    def _output(self, h: Array):
        if self.likelihood == "bernoulli":
            return h
        return GaussianOutput(h, jnp.broadcast_to(self.raw_scale[...], h.shape))

    def log_prob(self, z: Array, x: Array) -> Array:
        """log p(x | z) summed over features: z (..., L), x broadcastable to (..., D) -> (...)."""
        return likelihood_log_prob(self.likelihood, self(z), x)

    def mean(self, z: Array) -> Array:
        """E[x | z], shape (..., D): sigmoid(logits) or the Gaussian mean."""
        out = self(z)
        return jax.nn.sigmoid(out) if self.likelihood == "bernoulli" else out.loc


def likelihood_log_prob(likelihood: str, out, x: Array) -> Array:
    """log p(x | decoder output) summed over the last axis.

    Args:
      likelihood: "bernoulli" (`out` are logits, (..., D)) or "gaussian" (`out` a GaussianOutput).
      out: decoder output.
      x: (..., D) observations, broadcast against `out`.

    Returns:
      (...) log-likelihoods.
    """
    if likelihood == "bernoulli":
        # x log sigmoid(l) + (1 - x) log sigmoid(-l) = x l - softplus(l)
        return jnp.sum(x * out - jax.nn.softplus(out), axis=-1)
    scale = jax.nn.softplus(out.raw_scale)
    z = (x - out.loc) / scale
    return jnp.sum(-0.5 * z * z - jnp.log(scale) - 0.5 * _LOG_2PI, axis=-1)


def _init_raw_scale(data_dim: int, likelihood: str):
    if likelihood == "gaussian":
        return nnx.Param(jnp.zeros((data_dim,)))  # scale softplus(0) ~ 0.69 at start
    return None


class MLPDecoder(_Likelihood, nnx.Module):
    """MLP z -> parameters of p(x | z); `hidden=()` gives a linear decoder (probabilistic PCA).

    Args:
      latent: L.
      hidden: hidden widths (applied in the given order).
      data_dim: D.
      activation: a name in `ACTIVATIONS`.
      likelihood: "bernoulli" (logits) or "gaussian" (mean plus a learned (D,) raw scale).
      rngs: initialisation randomness only.
    """

    def __init__(self, latent: int, hidden: tuple[int, ...], data_dim: int, *,
                 activation: str = "tanh", likelihood: str = "bernoulli", rngs: nnx.Rngs):
        widths = (latent,) + tuple(hidden) + (data_dim,)
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
        self.activation = activation
        self.likelihood = likelihood
        self.raw_scale = _init_raw_scale(data_dim, likelihood)

    def __call__(self, z: Array):
        """z (..., L) -> logits (..., D) or GaussianOutput."""
        act = ACTIVATIONS[self.activation]
        h = z
        for layer in self.layers[:-1]:
            h = act(layer(h))
        return self._output(self.layers[-1](h))


class ConvEncoder(nnx.Module):
    """Small convolutional encoder for 28 x 28 images: two stride-2 3x3 convolutions
    (32 and 64 channels) -> 7 x 7 x 64 -> dense -> family head.

    Args:
      latent: L.
      hidden: width of the dense layer after the convolutions.
      activation, family, rngs: as in `MLPEncoder`.
    """

    def __init__(self, latent: int, hidden: int = 256, *, activation: str = "relu",
                 family: str = "meanfield", rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 32, (3, 3), strides=(2, 2), padding="SAME", rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, (3, 3), strides=(2, 2), padding="SAME", rngs=rngs)
        self.dense = nnx.Linear(7 * 7 * 64, hidden, rngs=rngs)
        self.activation = activation
        self.head = _FamilyHead(hidden, latent, family, rngs=rngs)

    def __call__(self, x: Array):
        """x (B, 784) -> family params with leading axis B."""
        act = ACTIVATIONS[self.activation]
        h = x.reshape(x.shape[:-1] + (28, 28, 1))
        h = act(self.conv2(act(self.conv1(h))))
        h = act(self.dense(h.reshape(h.shape[:-3] + (-1,))))
        return self.head(h)


class ConvDecoder(_Likelihood, nnx.Module):
    """Mirror of `ConvEncoder`: dense -> 7 x 7 x 64 -> two stride-2 transposed convolutions
    (32 then 1 channel) -> 28 x 28 logits (or Gaussian means), flattened to 784.

    Args:
      latent: L.
      hidden: width of the first dense layer.
      activation, likelihood, rngs: as in `MLPDecoder`.
    """

    def __init__(self, latent: int, hidden: int = 256, *, activation: str = "relu",
                 likelihood: str = "bernoulli", rngs: nnx.Rngs):
        self.dense1 = nnx.Linear(latent, hidden, rngs=rngs)
        self.dense2 = nnx.Linear(hidden, 7 * 7 * 64, rngs=rngs)
        self.deconv1 = nnx.ConvTranspose(64, 32, (3, 3), strides=(2, 2), padding="SAME", rngs=rngs)
        self.deconv2 = nnx.ConvTranspose(32, 1, (3, 3), strides=(2, 2), padding="SAME", rngs=rngs)
        self.activation = activation
        self.likelihood = likelihood
        self.raw_scale = _init_raw_scale(784, likelihood)

    def __call__(self, z: Array):
        """z (..., L) -> logits (..., 784) or GaussianOutput."""
        act = ACTIVATIONS[self.activation]
        batch = z.shape[:-1]
        h = z.reshape((-1, z.shape[-1]))
        h = act(self.dense2(act(self.dense1(h)))).reshape((-1, 7, 7, 64))
        h = self.deconv2(act(self.deconv1(h)))
        return self._output(h.reshape(batch + (784,)))


class VAE(nnx.Module):
    """An encoder q(z | x), a decoder p(x | z) and the standard-normal prior p(z) = N(0, I_L).

    Attributes:
      encoder: maps x (B, D) to Gaussian family params with leading axis B.
      decoder: maps z (..., L) to likelihood params; has `log_prob(z, x)` and `mean(z)`.
      config: the `VAEConfig` it was built from (static).
    """

    def __init__(self, encoder: nnx.Module, decoder: nnx.Module, config: VAEConfig):
        self.encoder = encoder
        self.decoder = decoder
        self.config = config


def build_vae(config: VAEConfig, key: Array) -> VAE:
    """Build a VAE from a config, initialising weights from `key`.

    Args:
      config: a `VAEConfig`.
      key: a PRNG key used only for initialisation.

    Returns:
      A `VAE` module; split it with `nnx.split(vae, nnx.Param)`.
    """
    rngs = nnx.Rngs(params=key)
    c = config
    if c.arch == "mlp":
        encoder = MLPEncoder(c.data_dim, c.hidden, c.latent, activation=c.activation,
                             family=c.family, rngs=rngs)
        decoder = MLPDecoder(c.latent, tuple(reversed(c.hidden)), c.data_dim,
                             activation=c.activation, likelihood=c.likelihood, rngs=rngs)
    else:
        width = c.hidden[0] if c.hidden else 256
        encoder = ConvEncoder(c.latent, width, activation=c.activation, family=c.family, rngs=rngs)
        decoder = ConvDecoder(c.latent, width, activation=c.activation, likelihood=c.likelihood, rngs=rngs)
    return VAE(encoder, decoder, config)
