"""Pathfinder, DADVI and Batch-and-Match through `aj.fit(method=...)` (the one driver)."""

import jax
import numpy as np
import pytest

import advi_jax as aj
from advi_jax.models import logistic_regression


@pytest.fixture(scope="module")
def model():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 2)).astype(np.float32)
    y = (rng.random(80) < 1 / (1 + np.exp(-(x @ np.array([1.0, -1.0]))))).astype(np.float32)
    return logistic_regression(x, y, prior_scale=2.5)


@pytest.mark.parametrize("method, family, options, extras", [
    ("pathfinder", "fullrank", {"num_paths": 2, "num_draws": 200}, {"draws", "khat", "elbo", "num_iters"}),
    ("dadvi", "meanfield", None, {"lr_covariance", "lr_sd", "mc_se", "lr_grad_evals"}),
    ("bam", "fullrank", {"batch_size": 8}, set()),
])
def test_fit_runs_each_method(model, method, family, options, extras):
    result = aj.fit(model, key=jax.random.key(0), method=method, family=family, options=options,
                    num_steps=60 if method == "bam" else None, progress=False, warn=False)
    assert result.method == method
    assert set(extras) <= set(result.extras)
    assert result.num_grad_evals > 0
    mean = np.asarray(result.family.mean(result.params))
    assert mean.shape == (3,) and np.all(np.isfinite(mean))
    # The slope signs of the simulated data are recovered.
    assert mean[1] > 0.3 and mean[2] < -0.3
    if method == "dadvi":
        # LR sds are the right size: between half and twice the mean-field sds, here.
        ratio = np.asarray(result.extras["lr_sd"]) / np.sqrt(np.asarray(result.family.variance(result.params)))
        assert np.all((ratio > 0.5) & (ratio < 2.0))
