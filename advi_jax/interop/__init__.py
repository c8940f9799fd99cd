"""Bridges to other probabilistic programming libraries (NumPyro)."""

from advi_jax.interop.numpyro import NumPyroModel, from_numpyro, numpyro_deterministics, support_from_constraint

__all__ = ["NumPyroModel", "from_numpyro", "numpyro_deterministics", "support_from_constraint"]
