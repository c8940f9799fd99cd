"""The minibatch fit's full-data moment check reads the constrained space too (issue 15).

The target (as in tests/test_constrained_moments.py, with the data terms split over rows): mu ~ N(0, s^2)
(an identity coordinate) and sigma > 0 with log sigma ~ N(0, (r s)^2), r = 1.12, s = 0.75. The fit is
frozen at q = N(0, s^2 I) in (mu, log sigma) (`init` zero, `init_scale` s, a zero-step optimiser), so
q is exact in mu and 12% narrow in log sigma: a log sd ratio of 0.113, under `MOMENT_LOG_SD_TOL`,
while sigma's own sd is exp(0.225) = 1.25 times q's (log-normal sds: sqrt((exp(v) - 1) exp(v))).
"""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

import advi_jax as aj
from advi_jax import psis_moments as pm

S = 0.75
N = 64


def _log_prior(p):
    # the log-normal's -log sigma and mu's term; the data rows carry log sigma's quadratic term
    return -jnp.log(p["sigma"]) - 0.5 * (p["mu"] / S) ** 2


def _log_likelihood(p, rows):
    scale = rows[:, 0]
    return -0.5 * (jnp.log(p["sigma"]) / scale) ** 2 / N


def _model(ratio):
    rows = np.full((N, 1), ratio * S, np.float32)
    return aj.MinibatchModel(_log_prior, _log_likelihood, {"mu": aj.real(), "sigma": aj.positive()}, data=rows)


def _frozen_fit(model, seed):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = aj.fit_minibatch(model, key=jax.random.key(seed), batch_size=N, num_epochs=1, init=np.zeros(2),
                                  init_scale=S, optimizer=optax.sgd(0.0), progress=False)
    said = [str(w.message) for w in caught if issubclass(w.category, aj.DiagnosticWarning)]
    return result, said


def test_the_truth_of_the_target():
    lognormal_sd = lambda s: math.sqrt((math.exp(s * s) - 1.0) * math.exp(s * s))  # noqa: E731
    assert math.log(1.12) < pm.MOMENT_LOG_SD_TOL
    assert 0.2 < math.log(lognormal_sd(1.12 * S) / lognormal_sd(S)) < 0.25


def test_minibatch_fit_flags_a_constrained_sd_and_names_it():
    model = _model(1.12)
    hits = 0
    for seed in range(3):
        result, said = _frozen_fit(model, seed)
        np.testing.assert_allclose(np.sqrt(result.family.variance(result.params)), S, rtol=1e-5)  # q frozen
        d = result.report.diagnostics
        m = d.moments
        assert d.khat < 0.5 and m.flagged == ()  # k-hat and R^K both read "good"
        if not m.flagged_constrained:
            continue
        hits += 1
        assert m.flagged_constrained == ("sigma",) and m.space == "constrained"
        assert 0.15 <= m.worst_log_sd < 0.35, m  # the truth 0.225
        assert result.verdict.startswith("poor") and "sigma (constrained" in result.verdict
        assert len(said) == 1 and said[0].startswith("q is off at sigma (constrained): poor"), said
        assert "(PSIS k-hat = " in said[0] and "under its threshold 0.70" in said[0]  # k-hat last: it reads good
    assert hits >= 2, hits


def test_minibatch_fit_of_an_accurate_q_is_quiet():
    model = _model(1.02)  # sigma's sd ~4% off: noise alone
    for seed in range(3):
        result, said = _frozen_fit(model, 10 + seed)
        assert not result.report.diagnostics.moments.any_flagged, result.report.diagnostics.moments
        assert said == []
