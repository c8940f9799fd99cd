"""The PSIS moment check on batched fits (`fit_many`): the same reading as a single fit's, made from
per-fit power sums computed on the device in the one vmapped diagnostics call.

The target is `test_khat_moments`' skewed one: u = log x, x ~ Gamma(0.7, 1) in coordinate 0 (the
Gaussian family's optimum has sd 1 / sqrt(0.7) = 1.195 against the posterior's 1.683: 29% narrow,
which k-hat from 4,096 draws often reads as "ok"), and a near-Gaussian coordinate 1 (shape 20).
"""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import advi_jax as aj
from advi_jax.families import MeanFieldParams, get_family
from advi_jax import diagnostics as D
from advi_jax.fit_diagnostics import diagnose
from advi_jax.importance import centred_log_ratios
from advi_jax.psis_moments import moment_check

SHAPE = 0.7


def _log_gamma(p, shape):
    return jnp.sum(shape * p["u"] - jnp.exp(p["u"]))


def _model():
    return aj.Model(_log_gamma, {"u": aj.real((2,))}, data=jnp.asarray([SHAPE, 20.0], jnp.float32))


def _qs(num_fits):
    """B mean-field q's: fit 0 at the family's optimum for coordinate 0 (sd 1.195, 29% narrow),
    fit 1 with that sd 2x too wide, the others near the optimum with small perturbations."""
    family = get_family("meanfield")
    # The optimum of a m - exp(m + s^2 / 2) + log s: s^2 = 1 / a, m = log a - s^2 / 2.
    s = np.array([1 / math.sqrt(SHAPE), 1 / math.sqrt(20.0)])
    m = np.log([SHAPE, 20.0]) - s ** 2 / 2
    scale = np.ones((num_fits, 2))
    scale[1, 0] = 2.0
    scale[2:, 0] = 1.0 + 0.02 * np.arange(num_fits - 2)
    locs = np.broadcast_to(m, (num_fits, 2)).astype(np.float32)
    raw = np.log(np.expm1(s * scale))  # the family's softplus parametrisation of the sds
    return family, MeanFieldParams(jnp.asarray(locs), jnp.asarray(raw, jnp.float32))


def test_batched_moments_equal_the_host_reading_of_the_same_draws():
    # The batched diagnostics draw with the keys vmapped (their streams differ from a single fit's
    # with the same key), so the reference takes the same vmapped draws and reads them on the host in
    # float64 (`moment_check`, as a single fit does).
    model = _model()
    family, params = _qs(4)
    keys = jax.random.split(jax.random.key(3), 4)
    batched = diagnose(model, family, params, keys, 4096, num_fits=4)
    zeta, centred, _ = jax.jit(jax.vmap(lambda p, k: centred_log_ratios(model, family, p, k, 4096)))(params, keys)
    assert len(batched.moments) == 4
    for i in range(4):
        ratios = np.asarray(centred[i], np.float64)
        b = moment_check(np.asarray(zeta[i]), D._psis_core(ratios, True, np).log_weights)
        a = batched.moments[i]
        assert a.flagged == b.flagged, (i, a, b)
        assert a.worst_index == b.worst_index and a.num_draws == b.num_draws == 4096
        # float32 PSIS weights and power sums on the device against float64 on the host
        np.testing.assert_allclose([a.worst_mean, a.worst_log_sd, a.worst_mean_se, a.worst_log_sd_se],
                                   [b.worst_mean, b.worst_log_sd, b.worst_mean_se, b.worst_log_sd_se],
                                   rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(float(batched.khat[i]), float(D._psis_core(ratios, True, np).khat), atol=1e-3)
    # fit 0 (29% narrow) reads the PSIS sd wider than q's; fit 1 (2x too wide) narrower
    assert batched.moments[0].flagged == (0,) and batched.moments[0].worst_log_sd > 0.15
    assert batched.moments[1].flagged == (0,) and batched.moments[1].worst_log_sd < -0.3


def test_fit_many_flags_and_warns_by_the_moment_check():
    model = _model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        many = aj.fit_many(model, key=jax.random.key(0), num_fits=3, family="meanfield", num_steps=3000,
                           num_samples=4, warn=True)
    said = [str(w.message) for w in caught if issubclass(w.category, aj.DiagnosticWarning)]
    for i in range(3):
        r = many[i]
        sd = float(np.sqrt(r.family.variance(r.params))[0])
        assert abs(sd - 1 / math.sqrt(SHAPE)) < 0.1  # at (or near) the family's optimum: 29% narrow
        d = r.report.diagnostics
        assert d.moments is not None and d.moments.flagged == (0,), (i, d.khat, d.moments)
        assert r.verdict.startswith("poor") or d.khat >= aj.diagnostics.khat_threshold(d.num_draws)
    # one warning per fit, naming the parameter the moment check flagged
    assert len(said) == 3 and all("u[0] (unconstrained" in s for s in said), said


# --- minibatch fits: the moment check of the full-data diagnostics' draws --------------------------

_rng = np.random.default_rng(7)
N = 1000
_x1 = _rng.normal(size=N)
X = np.stack([_x1, 0.6 * _x1 + 0.8 * _rng.normal(size=N)], axis=1)  # predictors correlated 0.6
Y = X @ np.array([1.0, -0.5]) + _rng.normal(size=N)
PREC = np.eye(2) + X.T @ X  # the exact posterior (unit noise, N(0, 1) priors)
COV = np.linalg.inv(PREC)


def _log_prior(params):
    return -0.5 * jnp.sum(params["beta"] ** 2)


def _log_likelihood(params, batch):
    x, y = batch
    return -0.5 * (y - x @ params["beta"]) ** 2


def test_minibatch_mean_field_fit_is_flagged_by_the_moment_check():
    # Mean-field q on a posterior correlated -0.6: its optimum's sds are the conditional ones,
    # 1 / sqrt(PREC_jj), 20% under the marginal sds; k-hat for that reads about 1 - 0.8^2 = 0.36,
    # "good". The moment check of the full-data diagnostics' draws sees the sds, and the PSIS sd
    # estimates the posterior's marginal one.
    model = aj.MinibatchModel(_log_prior, _log_likelihood, {"beta": aj.real((2,))},
                              data=(X.astype(np.float32), Y.astype(np.float32)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = aj.fit_minibatch(model, key=jax.random.key(0), family="meanfield", batch_size=100, num_epochs=200,
                                  num_samples=4, learning_rate=0.02, init_scale=0.03, progress=False)
    said = [str(w.message) for w in caught if issubclass(w.category, aj.DiagnosticWarning)]
    sd = np.sqrt(np.asarray(result.family.variance(result.params)))
    np.testing.assert_allclose(sd, 1 / np.sqrt(np.diag(PREC)), rtol=0.1)  # at the mean-field optimum
    d = result.report.diagnostics
    assert d.moments is not None and d.moments.num_draws == d.num_draws
    assert d.khat < 0.7 and len(d.moments.flagged) >= 1, (d.khat, d.moments)
    true_log_ratio = np.log(np.sqrt(np.diag(COV)) * np.sqrt(np.diag(PREC)))[d.moments.worst_index]  # 0.22
    assert abs(d.moments.worst_log_sd - true_log_ratio) < 0.08, (d.moments, true_log_ratio)
    assert result.verdict.startswith("poor")
    assert len(said) == 1 and "beta[" in said[0], said
