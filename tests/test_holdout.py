"""The held-out posteriors (`benchmarks.holdout`): same log joint as NumPyro, converged stored references."""

import numpy as np
import pytest

from benchmarks.holdout import ESS_BOUND, LIMIT_DIR, MODELS, load_reference
from benchmarks.make_references import _deterministic_sites
from benchmarks.suite import flatten_draws
from _numpyro_check import assert_matches_numpyro


@pytest.mark.parametrize("name", sorted(MODELS))
def test_holdout_model_matches_numpyro_and_has_a_converged_reference(name):
    _, params = assert_matches_numpyro(MODELS[name](), rtol=1e-5, atol=1e-5)
    reference = load_reference(name)
    assert reference is not None, f"run python -m benchmarks.holdout --make-references --models {name}"
    assert reference["rhat_ok"] and reference["max_rhat"] <= 1.01 and reference["min_ess"] >= ESS_BOUND
    assert reference["settings"]["chains"] >= 4
    labels = set(flatten_draws({k: np.zeros((1,) + np.shape(v)) for k, v in params.items()}))
    assert labels == set(reference["params"])
    limit = load_reference(name, LIMIT_DIR)
    assert limit is not None and set(limit["params"]) == labels


def test_deterministic_sites_of_a_model_with_an_improper_uniform_site():
    # NumPyro's ImproperUniform has no sampler: tracing with a plain seed raised NotImplementedError.
    import numpyro
    import numpyro.distributions as dist

    def model():
        c = numpyro.sample("c", dist.ImproperUniform(dist.constraints.ordered_vector, (), (3,)))
        numpyro.deterministic("gap", c[1:] - c[:-1])

    from benchmarks.suite import SuiteModel

    assert _deterministic_sites(SuiteModel(model, (), "")) == {"gap"}
