"""Alias kept for existing imports: the VAE encoder-gradient variance lives in
`advi_jax.gradient_variance.amortized` (one package for every variance study)."""

from advi_jax.gradient_variance.amortized import AMORTIZED_ESTIMATORS, encoder_gradient_variance, encoder_surrogate

ENCODER_ESTIMATORS = tuple(AMORTIZED_ESTIMATORS)

__all__ = ["ENCODER_ESTIMATORS", "encoder_gradient_variance", "encoder_surrogate"]
