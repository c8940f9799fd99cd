"""Variational autoencoders: the amortized case of ADVI (Flax NNX modules, objectives, training).

Import as `import advi_jax.vae` (it needs flax; the core of advi_jax does not). `load_mnist`,
`find_data_file` and `data_search_dirs` are `advi_jax.data`'s and `data_mesh` is
`advi_jax.data_mesh`, re-exported here for convenience (one implementation of each).

Example:
  >>> import jax
  >>> from advi_jax import vae
  >>> config = vae.VAEConfig(latent=2, hidden=(32,))
  >>> x = jax.random.uniform(jax.random.key(0), (200, 784))
  >>> result = vae.train(config, x, key=jax.random.key(1), epochs=1, batch_size=50, progress=False)
"""

from advi_jax.data import MNIST, data_search_dirs, find_data_file, load_mnist
from advi_jax.sharding import data_mesh
from advi_jax.vae.evaluate import Bounds, compile_bounds, evaluate_bounds, evaluate_elbo, log_likelihood
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
    "Bounds",
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
    "compile_bounds",
    "data_mesh",
    "data_search_dirs",
    "evaluate_bounds",
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
