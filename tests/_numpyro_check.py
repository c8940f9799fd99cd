"""A benchmark posterior's `from_numpyro` model against NumPyro's own log joint and transforms."""

import jax
import numpy as np

import advi_jax as aj


def assert_matches_numpyro(built, rtol: float, atol: float):
    """`built` (a `benchmarks.suite.SuiteModel`): the log joint at a random point of R^K equals NumPyro's
    `log_density` (to `rtol`) and the point maps back through `to_unconstrained` (to `atol`).

    Returns:
      (model, constrained parameters at that point).
    """
    from numpyro.infer.util import log_density

    model = aj.from_numpyro(built.fn, *built.args)
    zeta = 0.7 * jax.random.normal(jax.random.key(0), (model.dim,))
    params = model.to_constrained(zeta)
    with jax.numpy_rank_promotion("allow"):  # NumPyro's own Beta.log_prob broadcasts by rank
        expected, _ = log_density(built.fn, built.args, {}, params)
    np.testing.assert_allclose(float(model.log_joint_at(params)), float(expected), rtol=rtol)
    np.testing.assert_allclose(np.asarray(model.to_unconstrained(params)), np.asarray(zeta), atol=atol)
    return model, params
