"""The accuracy suite's models build, go through `aj.from_numpyro`, and have a stored, converged reference."""

import numpy as np
import pytest

import advi_jax as aj  # noqa: E402
from benchmarks.accuracy import compare  # noqa: E402
from benchmarks.make_references import load_reference  # noqa: E402
from benchmarks.suite import MODELS, flatten_draws  # noqa: E402
from conftest import missing_data  # noqa: E402


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_has_reference(name):
    try:
        built = {name: MODELS[name]()}
    except aj.data.DataFileNotFound as err:  # german_credit / wells live in shared/data, not in the package
        built = {}
        reason = f"the data of {name} is not found: {str(err).split(';')[0]}"
    if name not in built:
        missing_data(reason)
    reference = load_reference(name)
    assert reference is not None, f"run python -m benchmarks.make_references --models {name}"
    assert reference["rhat_ok"] and reference["max_rhat"] < 1.01
    model = aj.from_numpyro(built[name].fn, *built[name].args)
    draws = {k: np.zeros((1,) + v.shape) for k, v in model.to_constrained(np.zeros(model.dim)).items()}
    assert set(flatten_draws(draws)) == set(reference["params"])
    assert np.isfinite(model.log_density(np.zeros(model.dim)))


def test_compare_is_zero_for_reference_moments():
    reference = {"params": {"a": {"mean": 1.0, "sd": 2.0}, "b": {"mean": 0.0, "sd": 0.0}}}
    x = np.array([-1.0, 3.0])  # mean 1, sd 2
    out = compare({"a": x, "b": np.zeros(2)}, reference)
    assert out["max |mean err| / sd"] == pytest.approx(0.0) and out["med |log sd ratio|"] == pytest.approx(0.0)
