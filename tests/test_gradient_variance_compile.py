"""The gradient-variance tools compile their programs by the library's arithmetic rule and, for several
estimators, on threads before running each alone: the numbers are those of one estimator at a time,
and those of XLA's full options up to rounding."""

import jax
import jax.numpy as jnp
import numpy as np

import advi_jax as aj
from advi_jax import compile_options

PRECISION = jnp.array([1.0, 4.0, 0.25, 2.0])


def _model():
    return aj.Model(lambda p: -0.5 * jnp.sum(PRECISION * (p["x"] - 0.5) ** 2), {"x": aj.real((4,))})


def _params():
    return aj.MeanFieldParams(jnp.array([0.3, 0.0, 1.0, -0.2]), jnp.array([-0.5, 0.2, 0.7, 0.0]))


def test_several_estimators_equal_one_at_a_time():
    model, params, key = _model(), _params(), jax.random.key(3)
    names = ("reparam", "stl", "score_baseline")
    together = aj.gradient_variance(model, "meanfield", params, key, names, num_draws=600, num_samples=2,
                                    time_repeats=3)
    for name in names:
        alone = aj.gradient_variance(model, "meanfield", params, key, name, num_draws=600, num_samples=2,
                                     time_repeats=0)[name]
        np.testing.assert_array_equal(np.asarray(together[name].variance), np.asarray(alone.variance))
        np.testing.assert_array_equal(np.asarray(together[name].mean), np.asarray(alone.mean))
        assert 0 < together[name].seconds_per_gradient < 1.0  # timed, each alone after the compiles
    # the estimators differ: STL's variance is not reparam's
    assert not np.allclose(np.asarray(together["stl"].variance), np.asarray(together["reparam"].variance))


def test_rule_compiled_numbers_equal_full_options_up_to_rounding():
    model, params, key = _model(), _params(), jax.random.key(4)
    ruled = aj.gradient_variance(model, "meanfield", params, key, ("reparam", "stl"), num_draws=400, time_repeats=0)
    trace = aj.track_gradient_variance(model, "meanfield", jax.random.key(5), 60, every=20, estimators=("stl",),
                                       num_draws=50)
    with compile_options.forced("full"):
        full = aj.gradient_variance(model, "meanfield", params, key, ("reparam", "stl"), num_draws=400,
                                    time_repeats=0)
        trace_full = aj.track_gradient_variance(model, "meanfield", jax.random.key(5), 60, every=20,
                                                estimators=("stl",), num_draws=50)
    for name in ("reparam", "stl"):
        np.testing.assert_allclose(np.asarray(ruled[name].variance), np.asarray(full[name].variance), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(trace.variance_trace["stl"]), np.asarray(trace_full.variance_trace["stl"]),
                               rtol=1e-3)
    np.testing.assert_allclose(np.asarray(trace.elbo), np.asarray(trace_full.elbo), rtol=1e-4, atol=1e-4)
