"""Test configuration: CPU only, strict rank promotion, fixed keys, dtype tolerances."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True)
settings.load_profile("ci")

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


@pytest.fixture
def key():
    return jax.random.key(20261121)


def tolerance(dtype) -> float:
    """A relative tolerance suited to `dtype`."""
    return 1e-5 if jax.numpy.dtype(dtype) == jax.numpy.float64 else 2e-3
