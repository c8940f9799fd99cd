"""Bridges to other probabilistic programming libraries: NumPyro models in, ArviZ data out."""

from advi_jax.interop.arviz import to_arviz
from advi_jax.interop.numpyro import NumPyroModel, from_numpyro, numpyro_deterministics, support_from_constraint

__all__ = ["NumPyroModel", "from_numpyro", "numpyro_deterministics", "support_from_constraint", "to_arviz"]
