"""k-hat over its threshold from the automatic budget's draws is re-estimated from a larger fresh sample
where draws are cheap (`advi_jax.result.diagnose_confirmed`, issue 15): a noisy-high k-hat of bounded
importance weights reads low there and stops warning; a q that misses mass keeps a high k-hat and warns;
the extra draws count in `num_logp_evals`."""

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import advi_jax as aj
from advi_jax import result as R
from advi_jax.families import FullRankParams, MeanFieldParams, _softplus_inverse

# log p(z) = log N(z; 0, 1) + 0.6 clip(z, 0, 2.8)^2 (unnormalised): against q = N(0, 1) the importance
# weights are exp(0.6 clip(z, 0, 2.8)^2), bounded (k = -inf asymptotically), but they grow like a
# heavy tail up to z = 2.8, which 4,096 draws reach about 10 times: k-hat from 4,096 draws reads
# 0.85 +- 0.12 (over 0.7 in 9 of 10 draw sets), from 16,384 0.53 +- 0.07 (never; NumPy, 20 sets).
BOUNDED = aj.Model(lambda p: jnp.sum(-0.5 * p["z"] ** 2 + 0.6 * jnp.clip(p["z"], 0.0, 2.8) ** 2),
                   {"z": aj.real((1,))})
UNIT = MeanFieldParams(jnp.zeros((1,)), jnp.full((1,), _softplus_inverse(1.0)))


def correlated(dim=4, rho=0.95):
    """A Gaussian with correlation `rho`: mean-field's optimum (variances 1 / precision_ii) misses mass."""
    cov = np.full((dim, dim), rho) + (1 - rho) * np.eye(dim)
    prec = np.linalg.inv(cov)
    model = aj.Model(lambda p: -0.5 * p["x"] @ jnp.asarray(prec, jnp.float32) @ p["x"], {"x": aj.real((dim,))})
    params = MeanFieldParams(jnp.zeros((dim,)), _softplus_inverse(jnp.asarray(1 / np.sqrt(np.diag(prec)), jnp.float32)))
    return model, params


def test_confirmation_budget_follows_the_cost_rule():
    # small data: draws are free next to compiling, so 4 x 4,096
    assert R.confirmation_draws(4096, 0, 4000, 600) == 4 * 4096 == R.CONFIRM_DRAWS_MAX
    assert R.confirmation_draws(4096, 0, 4000, 0) == 16384
    # 2^27 / 18,000 entries = 7,457 -> 8,192 free draws: a re-estimate from 8,192
    assert R.confirmation_draws(4096, 0, 4000, 18_000) == 8192
    # large data after a few-pass fit: 256 draws was all the budget allowed, no re-estimate
    assert R.confirmation_draws(256, 0, 20, 11_000_000) == 0
    # a long fit on large data: 0.2 x 2 x 100,000 = 40,000 -> capped at 4 x 4,096
    assert R.confirmation_draws(4096, 0, 100_000, 11_000_000) == 16384
    # 0.2 x 2 x 12,000 = 4,800 -> 4,096: not more than S, none
    assert R.confirmation_draws(4096, 0, 12_000, 11_000_000) == 0


def test_noisy_high_khat_of_bounded_weights_reads_low_from_more_draws():
    family = aj.MeanFieldGaussian()
    confirmed = 0
    for seed in range(8):
        diag, (key, ratios), first = R.diagnose_confirmed(BOUNDED, family, UNIT, jax.random.key(seed), 4096, 16384)
        alone = R.diagnose(BOUNDED, family, UNIT, jax.random.key(seed), 4096)
        assert (first if first is not None else diag) == alone  # the first sample is the plain diagnostics'
        if alone.khat < 0.7:
            assert first is None and diag.num_draws == 4096
            continue
        confirmed += 1
        assert first.num_draws == 4096 and diag.num_draws == 16384 and ratios.shape == (16384,)
        assert diag.khat < 0.7, (seed, first.khat, diag.khat)  # bounded weights: the larger sample sees it
        # the stored key and ratios are the re-estimate's fresh draws (not the first sample's)
        assert not jnp.array_equal(jax.random.key_data(key), jax.random.key_data(jax.random.key(seed)))
        assert R.diagnose(BOUNDED, family, UNIT, key, 16384) == diag
    assert confirmed >= 4  # 4,096 draws read over 0.7 at most of these keys


def test_a_q_that_misses_mass_keeps_a_high_khat():
    model, params = correlated()
    family = aj.MeanFieldGaussian()
    for seed in range(3):
        diag, _, first = R.diagnose_confirmed(model, family, params, jax.random.key(seed), 4096, 16384)
        assert first is not None and first.khat >= 0.7
        assert diag.num_draws == 16384 and diag.khat >= 0.7 and R.over_threshold(diag)


def test_no_confirmation_without_cheap_draws_or_below_threshold():
    model, params = correlated()
    family = aj.MeanFieldGaussian()
    diag, _, first = R.diagnose_confirmed(model, family, params, jax.random.key(0), 4096, 0)
    assert first is None and diag.num_draws == 4096 and diag.khat >= 0.7
    exact = FullRankParams(jnp.zeros((1,)), jnp.full((1,), _softplus_inverse(1.0)), jnp.zeros((1, 1)))
    gauss = aj.Model(lambda p: -0.5 * jnp.sum(p["z"] ** 2), {"z": aj.real((1,))})
    diag, _, first = R.diagnose_confirmed(gauss, aj.FullRankGaussian(), exact, jax.random.key(0), 4096, 16384)
    assert first is None and diag.num_draws == 4096


def test_fit_counts_the_extra_draws_and_still_warns():
    model, _ = correlated()
    with pytest.warns(aj.DiagnosticWarning, match=r"PSIS k-hat = .* from 16384 fresh draws \(the first 4096 read"):
        res = aj.fit(model, family="meanfield", method="advi", num_steps=1500, key=jax.random.key(3), progress=False)
    first = res.report.first_diagnostics
    assert first is not None and first.num_draws == 4096 and first.khat >= 0.7
    assert res.num_diagnostic_draws == 16384 and res.khat >= 0.7
    assert res.num_logp_evals == 16384  # ADVI evaluates no log density without a gradient: all of it is the re-estimate
    assert len(res.report.diagnostic_sample[1]) == 16384
    lines = res.diagnostics_lines()
    assert lines[0].startswith(f"PSIS k-hat = {res.khat:.3f} from 16384 draws")
    assert "re-estimated from 16384 fresh draws: the first 4096 read" in lines[1]
    # an explicit number of draws is the user's: no re-estimate
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fixed = aj.fit(model, family="meanfield", method="advi", num_steps=1500, key=jax.random.key(3),
                       progress=False, num_diagnostic_draws=4096)
    assert fixed.report.first_diagnostics is None and fixed.num_logp_evals == 0
    assert fixed.khat == first.khat  # the same first sample


def test_summary_psis_estimates_use_the_larger_sample():
    # the bounded-weights target as a fit's result: q fixed at N(0, 1) (zero steps of ADVI would move it,
    # so the Result is built from the diagnostics directly, as `aj.fit` builds it)
    family = aj.MeanFieldGaussian()
    seed = next(s for s in range(8) if R.diagnose(BOUNDED, family, UNIT, jax.random.key(s), 4096).khat >= 0.7)
    diag, sample, first = R.diagnose_confirmed(BOUNDED, family, UNIT, jax.random.key(seed), 4096, 16384)
    assert first is not None and 0.5 <= diag.khat < 0.7
    report = R.Report(elbo=np.zeros(1), num_steps=1, num_grad_evals=1, num_logp_evals=16384, num_nonfinite=0,
                      converged=True, stop_reason="", diagnostics=diag, diagnostic_sample=sample,
                      first_diagnostics=first)
    res = R.Result(BOUNDED, family, UNIT, report)
    rows = res.summary_rows()  # reuses the 16,384 draws and their PSIS weights
    z = np.asarray(res.sample(sample[0], 16384)["z"], np.float64)[:, 0]
    weights = np.exp(np.asarray(aj.psis(jnp.asarray(sample[1])).log_weights, np.float64))
    assert rows[0]["psis_mean"] == pytest.approx(float(np.sum(weights * z) / np.sum(weights)), rel=1e-4)
    # p's mean: the flat-plus-rising stretch over (0, 2.8) pulls it well above q's 0
    assert rows[0]["psis_mean"] > 0.5 > abs(rows[0]["mean"])
    fresh = res.summary_rows(key=jax.random.key(5), num_draws=1000)  # fresh draws: at least the 16,384
    assert fresh[0]["psis_mean"] == pytest.approx(rows[0]["psis_mean"], abs=0.05)


def test_importance_sampling_defaults_to_the_fits_larger_sample():
    # after a re-estimate from 16,384 draws, the weights a user asks for come from as many draws
    family = aj.MeanFieldGaussian()
    seed = next(s for s in range(8) if R.diagnose(BOUNDED, family, UNIT, jax.random.key(s), 4096).khat >= 0.7)
    diag, sample, first = R.diagnose_confirmed(BOUNDED, family, UNIT, jax.random.key(seed), 4096, 16384)
    report = R.Report(elbo=np.zeros(1), num_steps=1, num_grad_evals=1, num_logp_evals=16384, num_nonfinite=0,
                      converged=True, stop_reason="", diagnostics=diag, diagnostic_sample=sample,
                      first_diagnostics=first)
    res = R.Result(BOUNDED, family, UNIT, report)
    draws, smoothed = res.importance_draws(jax.random.key(1))
    assert draws["z"].shape == (16384, 1) and smoothed.log_weights.shape == (16384,)
    # the same key and count as an explicit request: the same estimate
    key = jax.random.key(2)
    assert float(res.psis_expectation(lambda p: p["z"][0], key)) == float(
        res.psis_expectation(lambda p: p["z"][0], key, 16384))
    assert res.importance_draws(key, 100)[0]["z"].shape == (100, 1)  # an explicit n is the user's
    plain = R.Result(BOUNDED, family, UNIT, dataclasses.replace(report, diagnostics=first, first_diagnostics=None))
    assert plain.importance_draws(key)[0]["z"].shape == (4096, 1)
