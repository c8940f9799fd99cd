"""advi_jax: automatic-differentiation variational inference in JAX.

Example:
  >>> import jax, jax.numpy as jnp, advi_jax as aj
  >>> model = aj.Model(lambda p: -0.5 * jnp.sum(p["x"] ** 2) - p["s"], {"x": aj.real((2,)), "s": aj.positive()})
  >>> result = aj.fit(model, key=jax.random.key(0), num_steps=1000, progress=False)  # doctest: +SKIP

Names are imported when first used (PEP 562 `__getattr__`): `import advi_jax` loads no JAX,
and `aj.fit` imports the modules behind it on its first access (about 0.6 s of advi_jax's own
modules and 1 s of JAX on a slow machine, none of it needed by `advi-jax fit --help` or by the
command's figure process, which starts before JAX is imported). What a name resolves to, and
`from advi_jax import X`, are as with eager imports; the imports `_EXPORTS` lists are the ones
the package made at its top before, in the same modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from advi_jax import _xla_cpu

_xla_cpu.guard()  # before JAX starts: jaxlib 0.10.2-0.11 miscompile some CPU reductions (advi_jax._xla_cpu)

# public name -> the module it comes from; None: the name is that submodule of advi_jax
_EXPORTS = {
    "bijectors": None,
    "data": None,
    "models": None,
    "gradient_variance": None,  # the package, callable as gradient_variance(...)
    "enable_compilation_cache": "advi_jax.compilation_cache",
    **dict.fromkeys(("ImportanceDiagnostics", "PSISResult", "importance_diagnostics", "importance_ess", "iw_elbo",
                     "khat_threshold", "khat_verdict", "psis", "psis_expectation", "psis_resample"),
                    "advi_jax.diagnostics"),
    **dict.fromkeys(("ESTIMATORS", "EstimatorInfo", "elbo_surrogate"), "advi_jax.estimators"),
    **dict.fromkeys(("FullRankGaussian", "FullRankParams", "LowRankGaussian", "LowRankParams", "MeanFieldGaussian",
                     "MeanFieldParams"), "advi_jax.families"),
    **dict.fromkeys(("Family", "FitState", "StepInfo", "VIAlgorithm"), "advi_jax.base"),
    **dict.fromkeys(("MinibatchModel", "Model"), "advi_jax.flatten"),
    "glm_log_likelihood": "advi_jax.models.glm",
    "from_numpyro": "advi_jax.interop",
    **dict.fromkeys(("ManyResult", "Result"), "advi_jax.result"),
    **dict.fromkeys(("DiagnosticWarning", "fit", "fit_many", "fit_minibatch", "stack_models"), "advi_jax.run"),
    **dict.fromkeys(("data_mesh", "shard_data"), "advi_jax.sharding"),
    **dict.fromkeys(("Support", "bijector_for", "cholesky_cov", "corr_cholesky", "corr_matrix", "cov_cholesky",
                     "cov_matrix", "interval", "lower_bounded", "ordered", "positive", "positive_ordered", "real",
                     "simplex", "sum_to_zero", "unit_interval", "upper_bounded"), "advi_jax.supports"),
    **dict.fromkeys(("ADVI", "advi"), "advi_jax.vi.advi"),
    **dict.fromkeys(("LaplaceInfo", "laplace"), "advi_jax.vi.laplace"),
    **dict.fromkeys(("GradientStats", "VarianceTrace", "track_gradient_variance"), "advi_jax.gradient_variance"),
}


def __getattr__(name: str):
    """Import the public `name` on its first use (module docstring) and keep it as an attribute."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'advi_jax' has no attribute {name!r}")
    source = _EXPORTS[name]
    if source is None:
        value = importlib.import_module(f"advi_jax.{name}")
    else:
        value = getattr(importlib.import_module(source), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # what the names are, for type checkers and editors (not run)
    from advi_jax import bijectors, data, models
    from advi_jax.compilation_cache import enable_compilation_cache
    from advi_jax.diagnostics import (
        ImportanceDiagnostics,
        PSISResult,
        importance_diagnostics,
        importance_ess,
        iw_elbo,
        khat_threshold,
        khat_verdict,
        psis,
        psis_expectation,
        psis_resample,
    )
    from advi_jax.estimators import ESTIMATORS, EstimatorInfo, elbo_surrogate
    from advi_jax.families import (
        FullRankGaussian,
        FullRankParams,
        LowRankGaussian,
        LowRankParams,
        MeanFieldGaussian,
        MeanFieldParams,
    )
    from advi_jax.base import Family, FitState, StepInfo, VIAlgorithm
    from advi_jax.flatten import MinibatchModel, Model
    from advi_jax.models.glm import glm_log_likelihood
    from advi_jax.interop import from_numpyro
    from advi_jax.result import ManyResult, Result
    from advi_jax.run import DiagnosticWarning, fit, fit_many, fit_minibatch, stack_models
    from advi_jax.sharding import data_mesh, shard_data
    from advi_jax.supports import (
        Support,
        bijector_for,
        cholesky_cov,
        corr_cholesky,
        corr_matrix,
        cov_cholesky,
        cov_matrix,
        interval,
        lower_bounded,
        ordered,
        positive,
        positive_ordered,
        real,
        simplex,
        sum_to_zero,
        unit_interval,
        upper_bounded,
    )
    from advi_jax.vi.advi import ADVI, advi
    from advi_jax.vi.laplace import LaplaceInfo, laplace
    from advi_jax import gradient_variance  # the package, callable as gradient_variance(...)
    from advi_jax.gradient_variance import GradientStats, VarianceTrace, track_gradient_variance


__version__ = "0.1.0"

__all__ = [
    "ADVI",
    "DiagnosticWarning",
    "ESTIMATORS",
    "EstimatorInfo",
    "Family",
    "FitState",
    "FullRankGaussian",
    "FullRankParams",
    "GradientStats",
    "ImportanceDiagnostics",
    "LaplaceInfo",
    "LowRankGaussian",
    "LowRankParams",
    "ManyResult",
    "MeanFieldGaussian",
    "MeanFieldParams",
    "MinibatchModel",
    "Model",
    "PSISResult",
    "Result",
    "StepInfo",
    "Support",
    "VIAlgorithm",
    "VarianceTrace",
    "advi",
    "bijector_for",
    "bijectors",
    "cholesky_cov",
    "corr_cholesky",
    "corr_matrix",
    "cov_cholesky",
    "cov_matrix",
    "data",
    "data_mesh",
    "elbo_surrogate",
    "enable_compilation_cache",
    "fit",
    "fit_many",
    "fit_minibatch",
    "from_numpyro",
    "glm_log_likelihood",
    "gradient_variance",
    "importance_diagnostics",
    "importance_ess",
    "interval",
    "iw_elbo",
    "khat_threshold",
    "khat_verdict",
    "laplace",
    "lower_bounded",
    "models",
    "ordered",
    "positive",
    "positive_ordered",
    "psis",
    "psis_expectation",
    "psis_resample",
    "real",
    "shard_data",
    "simplex",
    "stack_models",
    "sum_to_zero",
    "track_gradient_variance",
    "unit_interval",
    "upper_bounded",
]
