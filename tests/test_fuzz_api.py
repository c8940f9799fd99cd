"""Property-based fuzzing of the public API with invalid arguments.

Every call must fail eagerly with a ValueError or TypeError whose message names the bad
argument (never a JAX tracer error, never a crash inside compilation).
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import advi_jax as aj

MODEL = aj.Model(lambda p: -0.5 * jnp.sum(p["x"] ** 2) - p["s"], {"x": aj.real((2,)), "s": aj.positive()})
KEY = jax.random.key(0)
FAMILY = aj.MeanFieldGaussian()
PARAMS = FAMILY.init(KEY, 3)

non_int = st.sampled_from([1.5, "3", None, True, [2], float("nan")])
non_positive_int = st.integers(max_value=0)
bad_count = st.one_of(non_int, non_positive_int)
bad_number = st.sampled_from([0.0, -1.0, float("nan"), float("inf"), "0.1", None, True, [0.1]])
bad_key = st.sampled_from([0, "key", None, np.zeros(3), jnp.zeros((2, 2), jnp.uint32), 1.5])
bad_name = st.text(min_size=1, max_size=8).filter(lambda s: s not in ("meanfield", "fullrank", "reparam", "stl",
                                                                       "score", "score_baseline", "random",
                                                                       "reparam_mc_entropy", "adapt"))

FIT_ARGS = {
    "key": bad_key,
    "family": st.one_of(bad_name, st.sampled_from([3, None, object()])),
    "num_steps": bad_count,
    "num_samples": bad_count,
    "estimator": st.one_of(bad_name, st.sampled_from([3, 2.5])),
    "learning_rate": st.one_of(bad_number.filter(lambda v: v is not None), bad_name),
    "init": st.sampled_from(["zero", np.zeros(5), np.full(3, np.nan), {"x": np.zeros(2)}, {"y": 1.0}, 7, "x"]),
    "init_scale": bad_number,
    "num_init_draws": bad_count,
    "init_radius": bad_number,
    "tol_rel_obj": bad_number.filter(lambda v: v is not None),
    "eval_every": bad_count,
    "window": bad_count,
    "max_consecutive_nonfinite": bad_count,
    "chunk_size": bad_count,
    "num_diagnostic_draws": st.one_of(non_int, st.integers(max_value=99)),
    "adapt_iter": bad_count,
    "adapt_learning_rates": st.sampled_from([(), (0.1, -1.0), "fast", (float("nan"),), None]),
    "progress": st.sampled_from(["yes", 1, None]),
    "diagnostics": st.sampled_from(["no", 0, None]),
}


def _names_argument(err: Exception, name: str) -> bool:
    return name in str(err)


@given(data=st.data(), name=st.sampled_from(sorted(FIT_ARGS)))
def test_fit_rejects_each_bad_argument_by_name(data, name):
    value = data.draw(FIT_ARGS[name], label=name)
    kwargs = {"key": KEY, "num_steps": 1, "progress": False, name: value}
    with pytest.raises((ValueError, TypeError)) as info:
        aj.fit(MODEL, **kwargs)
    assert _names_argument(info.value, name), (name, value, str(info.value))


@given(model=st.sampled_from([None, 3, "model", lambda p: 0.0, {"x": aj.real()}]))
def test_fit_rejects_non_models(model):
    with pytest.raises(TypeError, match="model"):
        aj.fit(model, key=KEY, progress=False)


@given(log_joint=st.sampled_from([None, 3, "f", [1]]),
       support=st.sampled_from([None, {}, {"x": "real"}, {1: aj.real()}, [aj.real()]]),
       which=st.sampled_from(["log_joint", "support"]))
def test_model_rejects_bad_arguments(log_joint, support, which):
    args = {"log_joint": lambda p: 0.0, "support": {"x": aj.real()}}
    args[which] = log_joint if which == "log_joint" else support
    with pytest.raises((ValueError, TypeError)) as info:
        aj.Model(**args)
    assert which in str(info.value)


@given(family=st.sampled_from([aj.MeanFieldGaussian(), aj.FullRankGaussian()]),
       name=st.sampled_from(["dim", "loc", "scale", "dtype"]), data=st.data())
def test_family_init_rejects_bad_arguments(family, name, data):
    bad = {
        "dim": bad_count,
        "loc": st.sampled_from([np.zeros(4), np.zeros((3, 1)), np.full(3, np.inf)]),
        "scale": bad_number,
        "dtype": st.sampled_from(["nonsense", jnp.int32, bool]),
    }[name]
    kwargs = {"loc": None, "scale": 0.1, "dtype": None}
    dim = 3
    value = data.draw(bad, label=name)
    if name == "dim":
        dim = value
    else:
        kwargs[name] = value
    with pytest.raises((ValueError, TypeError)) as info:
        family.init(KEY, dim, **kwargs)
    assert name in str(info.value)


@given(name=st.sampled_from(["estimator", "family", "log_density", "key", "num_samples"]), data=st.data())
def test_elbo_surrogate_rejects_bad_arguments(name, data):
    bad = {
        "estimator": st.one_of(bad_name, st.sampled_from([3, None])),
        "family": st.sampled_from(["meanfield", None, 3]),
        "log_density": st.sampled_from([None, 3, "f"]),
        "key": bad_key,
        "num_samples": bad_count,
    }[name]
    args = {"estimator": "reparam", "family": FAMILY, "log_density": lambda z: -jnp.sum(z**2), "params": PARAMS,
            "key": KEY, "num_samples": 2}
    args[name] = data.draw(bad, label=name)
    with pytest.raises((ValueError, TypeError)) as info:
        aj.elbo_surrogate(**args)
    assert name in str(info.value)


@given(ctor=st.sampled_from(["real", "positive", "unit_interval"]),
       shape=st.sampled_from([-1, (2, -3), "ab", 1.5, (2.5,), None]))
def test_support_constructors_reject_bad_shapes(ctor, shape):
    with pytest.raises((ValueError, TypeError)) as info:
        getattr(aj, ctor)(shape)
    assert "shape" in str(info.value)


@given(low=st.sampled_from([float("nan"), "a", 2.0, float("inf")]))
def test_interval_rejects_bad_bounds(low):
    with pytest.raises((ValueError, TypeError)) as info:
        aj.interval(low, 1.0)
    assert "low" in str(info.value)


bad_ratios = st.sampled_from([None, "r", {"a": 1}, np.zeros((3, 3)), np.zeros(0), np.array([True, False]),
                              np.array(["a", "b"]), 3.0])


@given(fn=st.sampled_from(["psis", "iw_elbo", "importance_ess", "importance_diagnostics"]), value=bad_ratios)
def test_diagnostics_reject_bad_log_ratios(fn, value):
    with pytest.raises((ValueError, TypeError)) as info:
        getattr(aj, fn)(value)
    assert "log_ratios" in str(info.value) or "log_weights" in str(info.value)


@given(num_draws=bad_count)
def test_khat_threshold_rejects_bad_counts(num_draws):
    with pytest.raises((ValueError, TypeError), match="num_draws"):
        aj.khat_threshold(num_draws)


@given(name=st.sampled_from(["key", "draws", "num_draws"]), data=st.data())
def test_psis_resample_rejects_bad_arguments(name, data):
    bad = {"key": bad_key, "draws": st.sampled_from([np.zeros(5), {}, np.zeros((3, 2))]), "num_draws": bad_count}
    args = {"key": KEY, "draws": np.zeros(50), "log_ratios": np.zeros(50), "num_draws": 10}
    args[name] = data.draw(bad[name], label=name)
    with pytest.raises((ValueError, TypeError)) as info:
        aj.psis_resample(**args)
    assert name in str(info.value)
