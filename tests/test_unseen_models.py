"""The posteriors the default was not tuned on (`benchmarks.suite_unseen`, issue 15): `from_numpyro`'s
log joint and bijectors agree with NumPyro's on each, through the constructions they add (a
`FoldedDistribution` half-t, an `OrderedTransform` prior, `gammaincc` in a factor, `ImproperUniform`
positive and real-vector sites with factor priors, a `Categorical` with logits)."""

import pytest

from benchmarks.suite import MODELS, UNSEEN_MODELS
from benchmarks.suite_unseen import RATS_N, RATS_Y
from _numpyro_check import assert_matches_numpyro


@pytest.mark.slow  # one NumPyro trace + compile per model (2-7 s each on an idle 2-core machine)
@pytest.mark.parametrize("name", UNSEEN_MODELS)
def test_unseen_model_log_joint_equals_numpyro(name):
    assert_matches_numpyro(MODELS[name](), rtol=2e-5, atol=2e-4)

def test_rats_table_has_the_published_summaries():
    # BDA3 section 5.3: 71 experiments, the current one 4 of 14; the 70 historical y / n have
    # sample mean 0.136 and sd 0.103 (the moment estimates alpha = 1.4, beta = 8.6 come from them).
    assert RATS_Y.shape == RATS_N.shape == (71,) and (RATS_Y[-1], RATS_N[-1]) == (4, 14)
    rate = RATS_Y[:70] / RATS_N[:70]
    assert rate.mean() == pytest.approx(0.136, abs=5e-4) and rate.std(ddof=1) == pytest.approx(0.103, abs=5e-4)
    assert RATS_Y.sum() == 267 and RATS_N.sum() == 1739
