"""The accuracy suite's models build, go through `aj.from_numpyro`, and have a stored, converged reference."""

import numpy as np
import pytest

import advi_jax as aj  # noqa: E402
from benchmarks.accuracy import compare  # noqa: E402
from benchmarks.family_limit import load_family_limit  # noqa: E402
from benchmarks.make_references import load_reference  # noqa: E402
from benchmarks.suite import MODELS, NO_REFERENCE_YET, flatten_draws  # noqa: E402
from conftest import missing_data  # noqa: E402


def _unflatten_means(reference, like):
    """The reference means as a dict site -> array shaped like `like[site]` (labels 'site[i,j]')."""
    out = {}
    for site, value in like.items():
        value = np.asarray(value)
        if value.ndim == 0:
            out[site] = np.asarray(reference["params"][site]["mean"])
        else:
            flat = [reference["params"][f"{site}[{','.join(map(str, i))}]"]["mean"] for i in np.ndindex(*value.shape)]
            out[site] = np.asarray(flat).reshape(value.shape)
            if site == "corr_chol":  # the mean of correlation Cholesky factors has rows of norm < 1: project back
                out[site] = out[site] / np.linalg.norm(out[site], axis=-1, keepdims=True)
    return out


def test_suite_has_at_least_20_models():
    assert len(MODELS) >= 20
    assert set(NO_REFERENCE_YET) <= set(MODELS)


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
    model = aj.from_numpyro(built[name].fn, *built[name].args)
    assert np.isfinite(model.log_density(np.zeros(model.dim)))
    if name in NO_REFERENCE_YET:
        assert reference is None, f"{name} has a reference now: remove it from suite.NO_REFERENCE_YET"
        return
    assert reference is not None, f"run python -m benchmarks.make_references --models {name}"
    assert reference["rhat_ok"] and reference["max_rhat"] <= 1.01
    assert all(not p["rhat"] > 1.01 for p in reference["params"].values())  # nan: a constant entry
    assert reference["settings"]["chains"] >= 4
    like = model.to_constrained(np.zeros(model.dim))
    draws = {k: np.zeros((1,) + np.shape(v)) for k, v in like.items()}
    assert set(flatten_draws(draws)) == set(reference["params"])
    # The log joint is finite at the reference mean (every support but corr_chol's is convex, so the mean is in it).
    u = model.to_unconstrained(_unflatten_means(reference, like))
    assert np.all(np.isfinite(u)) and np.isfinite(model.log_density(u))


# Only the posteriors whose family limit is stored (python -m benchmarks.family_limit --models NAME
# adds one); the others are listed in benchmarks/PERFORMANCE.md as not yet computed.
@pytest.mark.parametrize("name", sorted(n for n in MODELS if load_family_limit(n) is not None))
def test_family_limit_matches_reference_labels(name):
    limit, reference = load_family_limit(name), load_reference(name)
    assert reference is not None, f"{name} has a family limit but no NUTS reference"
    assert set(limit["params"]) == set(reference["params"])
    assert limit["settings"]["family"] == "fullrank" and limit["settings"]["num_samples"] >= 16
    assert all(np.isfinite(p["mean"]) and p["sd"] >= 0 for p in limit["params"].values())


def test_compare_is_zero_for_reference_moments():
    reference = {"params": {"a": {"mean": 1.0, "sd": 2.0}, "b": {"mean": 0.0, "sd": 0.0}}}
    x = np.array([-1.0, 3.0])  # mean 1, sd 2
    out = compare({"a": x, "b": np.zeros(2)}, reference)
    assert out["max |mean err| / sd"] == pytest.approx(0.0) and out["med |log sd ratio|"] == pytest.approx(0.0)
