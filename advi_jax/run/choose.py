"""`method="auto"`: the one place that decides which algorithm a fit runs, and says why."""

from __future__ import annotations

from typing import Any

from advi_jax.base import Family

__all__ = ["choose_method"]


def choose_method(model: Any, family: Family, *, estimator: Any = "reparam", num_samples: int = 1,
                  optimizer: Any = None, minibatch: bool = False) -> tuple[str, str]:
    """The method `aj.fit(method="auto")` runs, and the reason in words.

    The policy (extended as methods land in `advi_jax.vi.METHODS`): ADVI, the one method that
    runs every family, every estimator and minibatches.

    Args:
      model: the model (its `dim` may inform the choice).
      family: the resolved `Family`.
      estimator, num_samples, optimizer: the ADVI settings the caller passed (a choice other
        than ADVI must not silently drop them).
      minibatch: whether the fit sees the data in minibatches.

    Returns:
      (name in `advi_jax.vi.METHODS`, reason).

    Example:
      >>> import advi_jax as aj
      >>> from advi_jax.run import choose_method
      >>> choose_method(None, aj.MeanFieldGaussian())[0]
      'advi'
    """
    return "advi", "auto: ADVI runs every family, estimator and data size"
