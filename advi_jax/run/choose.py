"""`method="auto"`: the one place that decides which algorithm a fit runs, and says why."""

from __future__ import annotations

from typing import Any

from advi_jax.base import Family

__all__ = ["choose_method"]


def choose_method(model: Any, family: Family, *, estimator: Any = "reparam", num_samples: int = 1,
                  optimizer: Any = None, learning_rate: Any = None, minibatch: bool = False) -> tuple[str, str]:
    """The method `aj.fit(method="auto")` runs, and the reason in words.

    The policy, in order:

    1. A ready GLM (`aj.models.logistic_regression` / `poisson_regression` without
       `hierarchical_scale`) with a mean-field or full-rank family, full data and no ADVI
       settings of the caller's: `"glm_exact"`. Its ELBO is exact (closed form or quadrature)
       and it reaches the family's optimum in a few passes over X (benchmarks/
       bench_time_to_answer.py: 4-6 passes, errors below 1e-3 posterior sd, where 10,000 ADVI
       steps end 0.03-0.06 sd away). A varying-intercept GLM (`group=`) goes the same way to
       `"glm_grouped"` (each exact method's `supports` says what it covers).
    2. Otherwise `"advi"`: the one method that runs every family, every estimator, any model
       and minibatches. A caller who passes `estimator=`, `num_samples=`, `optimizer=` or
       `learning_rate=` asked for ADVI's settings, so ADVI runs (nothing is silently dropped).

    Args:
      model: the model.
      family: the resolved `Family`.
      estimator, num_samples, optimizer, learning_rate: the ADVI settings the caller passed.
      minibatch: whether the fit sees the data in minibatches.

    Returns:
      (name in `advi_jax.vi.METHODS`, reason).

    Example:
      >>> import advi_jax as aj
      >>> from advi_jax.run import choose_method
      >>> choose_method(None, aj.MeanFieldGaussian())[0]
      'advi'
    """
    from advi_jax.vi import METHODS

    advi_settings = [name for name, value, default in (
        ("estimator", estimator, "reparam"), ("num_samples", num_samples, 1), ("optimizer", optimizer, None),
        ("learning_rate", learning_rate, None)) if not (value is default or value == default)]
    for exact in ("glm_exact", "glm_grouped"):  # the exact-ELBO methods, each says what it covers
        glm = METHODS.get(exact)
        if glm is not None and not minibatch and glm.supports(model, family):
            if not advi_settings:
                return exact, ("auto: a ready GLM, so the exact (closed-form / quadrature) ELBO and Newton steps "
                               "reach the family's optimum in a few passes over X")
            return "advi", (f"auto: ADVI because {', '.join(advi_settings)} was given (ADVI settings); "
                            f"method={exact!r} is the faster exact fit of this model")
    return "advi", "auto: ADVI runs every family, estimator and data size"
