"""Variational autoencoders: the amortized case of ADVI (Flax NNX modules, objectives, training).

Import as `import advi_jax.vae` (it needs flax; the core of advi_jax does not).

Example:
  >>> import jax
  >>> from advi_jax import vae
  >>> config = vae.VAEConfig(latent=2, hidden=(32,))
  >>> x = jax.random.uniform(jax.random.key(0), (200, 784))
  >>> result = vae.train(config, x, key=jax.random.key(1), epochs=1, batch_size=50, progress=False)
"""

from advi_jax.vae.data import MNIST, data_search_dirs, find_data_file, load_mnist
from advi_jax.vae.evaluate import evaluate_elbo, log_likelihood
from advi_jax.vae.modules import (
    ConvDecoder,
    ConvEncoder,
    GaussianOutput,
    MLPDecoder,
    MLPEncoder,
    VAE,
    VAEConfig,
    build_vae,
    likelihood_log_prob,
)
from advi_jax.vae.objectives import (
    ESTIMATORS,
    AmortizedFamily,
    LossMetrics,
    Objective,
    log_weights,
    make_loss,
    parse_objective,
    per_example_bound,
    standard_normal_log_prob,
)
from advi_jax.vae.train import (
    NonFiniteLossError,
    TrainResult,
    TrainState,
    data_mesh,
    load_checkpoint,
    make_train_epoch,
    make_train_step,
    save_checkpoint,
    train,
)

__all__ = [
    "ESTIMATORS",
    "MNIST",
    "VAE",
    "AmortizedFamily",
    "ConvDecoder",
    "ConvEncoder",
    "GaussianOutput",
    "LossMetrics",
    "MLPDecoder",
    "MLPEncoder",
    "NonFiniteLossError",
    "Objective",
    "TrainResult",
    "TrainState",
    "VAEConfig",
    "build_vae",
    "data_mesh",
    "data_search_dirs",
    "evaluate_elbo",
    "find_data_file",
    "likelihood_log_prob",
    "load_checkpoint",
    "load_mnist",
    "log_likelihood",
    "log_weights",
    "make_loss",
    "make_train_epoch",
    "make_train_step",
    "parse_objective",
    "per_example_bound",
    "save_checkpoint",
    "standard_normal_log_prob",
    "train",
]
