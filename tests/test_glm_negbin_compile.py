"""The negative binomial's glm_exact loop compiled with the fast options up to `NEGBIN_FAST_MAX_ROWS` rows."""

import jax
import numpy as np
import pytest

import advi_jax as aj
from advi_jax import compile_options
from advi_jax.models import negbin_regression
from advi_jax.vi import glm_exact


def _negbin(n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    mean = np.exp(0.7 + 0.3 * x[:, 0] - 0.2 * x[:, 1])
    return negbin_regression(x, rng.negative_binomial(2.0, 2.0 / (2.0 + mean)))


def test_negbin_loop_mode_follows_the_row_limit():
    fam = aj.FullRankGaussian()
    small, large = _negbin(2_000), _negbin(glm_exact.NEGBIN_FAST_MAX_ROWS + 1)
    cpu = compile_options._on_cpu()
    assert glm_exact.loop_compile_mode(small, fam, glm_exact.Options(), "mid") == ("fast" if cpu else "mid")
    assert glm_exact.loop_compile_mode(large, fam, glm_exact.Options(), "mid") == "mid"
    assert glm_exact.loop_compile_mode(small, aj.LowRankGaussian(rank=2), glm_exact.Options(), "mid") == "mid"
    with compile_options.forced("full"):  # a forced mode is kept
        assert glm_exact.loop_compile_mode(small, fam, glm_exact.Options(), "full") == "full"


@pytest.mark.parametrize("family", ["fullrank", "meanfield"])
def test_fast_compiled_negbin_loop_equals_the_mid_compiled_one(family):
    """The NB fit with its loop compiled fast (the default at this N) reaches the "mid"-compiled fit's
    optimum. The two programs round differently in float32, so near the end their ELBO changes differ by
    rounding and one may stop a pass earlier (full rank here: 8 passes fast, 7 "mid", decrement 1e-7
    against 2e-5, i.e. ~5e-3 sd from the optimum): hence within a pass and 1e-2 sd."""
    model = _negbin(2_000, seed=1)
    fits = {}
    for mode in (None, "mid"):
        with compile_options.forced(mode):
            fits[mode] = aj.fit(model, key=jax.random.key(0), family=family, method="glm_exact", progress=False,
                                diagnostics=False)
    a, b = fits[None], fits["mid"]
    assert a.report.converged and b.report.converged and abs(a.report.num_steps - b.report.num_steps) <= 1
    sd = np.sqrt(np.asarray(b.family.variance(b.params)))
    np.testing.assert_array_less(np.abs(np.asarray(a.family.mean(a.params)) - np.asarray(b.family.mean(b.params))),
                                 1e-2 * sd)
    np.testing.assert_allclose(np.sqrt(np.asarray(a.family.variance(a.params))), sd, rtol=1e-2)
    np.testing.assert_allclose(float(np.asarray(a.elbo)[-1]), float(np.asarray(b.elbo)[-1]), rtol=1e-6)
