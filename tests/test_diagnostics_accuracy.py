"""The importance log ratios behind k-hat are accurate to well below their spread (float32, large N).

A near-exact fit of a GLM with many rows has log ratios log p - log q that spread by ~1e-3 while
|log p| ~ 1e5: evaluated plainly in float32, the ratios are rounding noise and k-hat reads that
noise. The diagnostics centre them at q's mean with a per-row difference
(`advi_jax.importance`, `advi_jax.models.relative`); these tests compare with float64 ratios of
the same draws, and check that a genuinely poor fit still warns through the same path.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import advi_jax as aj
from advi_jax.diagnostics import psis
from advi_jax.importance import centred_log_ratios
from advi_jax.models.glm import glm_log_likelihood_difference

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _logistic(n, d, rho=0.0, seed=0):
    rng = np.random.default_rng(seed)
    common = rng.normal(size=(n, 1))
    x = (np.sqrt(rho) * common + np.sqrt(1 - rho) * rng.normal(size=(n, d))).astype(np.float32)
    y = (rng.random(n) < 1 / (1 + np.exp(-x @ np.linspace(-1, 1, d)))).astype(np.float32)
    return aj.models.logistic_regression(x, y, standardize=False)


def _to64(tree):
    return jax.tree_util.tree_map(
        lambda a: jnp.asarray(a, jnp.float64) if hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating) else a,
        tree)


def _khat(r):
    return float(psis(np.asarray(r - np.mean(r), np.float32)).khat)


def test_large_n_float32_ratios_match_float64_and_the_near_exact_fit_does_not_warn():
    model = _logistic(200_000, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = aj.fit(model, key=jax.random.key(0), family="fullrank", method="glm_exact", progress=False)
    assert not [w for w in caught if "k-hat" in str(w.message)]
    assert res.khat < 0.7
    evaluate = jax.jit(lambda m, z: jax.lax.map(m.log_density, z, batch_size=256))
    zeta, centred, shift = jax.jit(centred_log_ratios, static_argnames=("family", "num_draws"))(
        model, res.family, res.params, jax.random.key(7), num_draws=256)
    plain = np.asarray(evaluate(model, zeta) - res.family.log_prob(res.params, zeta), np.float64)
    with jax.enable_x64(True):
        z64 = jnp.asarray(np.asarray(zeta), jnp.float64)
        exact = np.asarray(evaluate(_to64(model), z64) - res.family.log_prob(_to64(res.params), z64))
    centred = np.asarray(centred, np.float64) + float(shift)
    spread = exact.std()

    def error(r):
        e = r - exact
        return np.std(e - e.mean())

    assert error(plain) > 0.5 * spread  # the plain float32 ratios are mostly rounding noise here
    assert error(centred) < 0.01 * spread  # the centred ones are accurate to 1% of their spread
    assert abs(float(np.mean(centred - exact))) < 1.0  # the shift is log p(m) - log q(m), to float32
    assert _khat(centred) == pytest.approx(_khat(exact), abs=0.03)


def test_a_poor_fit_still_warns_through_the_accurate_path():
    # mean-field q of strongly correlated coefficients: too narrow along the correlation, heavy ratios
    res = aj.fit(_logistic(20_000, 4, rho=0.99), key=jax.random.key(0), family="meanfield", method="glm_exact",
                 progress=False, warn=False)
    assert res.khat > 0.7 and res.verdict.startswith("unreliable")
    with pytest.warns(UserWarning, match="k-hat") as caught:
        aj.fit(_logistic(20_000, 4, rho=0.99), key=jax.random.key(0), family="meanfield", method="glm_exact",
               progress=False)
    # the warning gives the spread of the ratios k-hat was read from (the same draws as `res`'s)
    ratios = np.asarray(res.report.diagnostic_sample[1], np.float64)
    message = next(str(w.message) for w in caught if "k-hat" in str(w.message))
    assert f"log p - log q has sd {np.std(ratios[np.isfinite(ratios)]):.3g}" in message, message


@pytest.mark.parametrize("family", ["bernoulli", "poisson"])
def test_glm_difference_matches_the_plain_difference_in_float64(family):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 3))
    y = (rng.random(3000) < 0.5) * 1.0 if family == "bernoulli" else rng.poisson(2.0, 3000) * 1.0
    offset = rng.normal(size=3000) * 0.1
    with jax.enable_x64(True):
        ref = jnp.array([0.3, -0.2, 0.1])
        for step in (1e-4, 1e-2, 1.0, 5.0):
            beta = ref + step * jnp.array([1.0, 0.5, -2.0])
            plain = (aj.models.glm.glm_log_likelihood(x, y, beta, 0.1 + step, offset, family)
                     - aj.models.glm.glm_log_likelihood(x, y, ref, 0.1, offset, family))
            got, at_ref = glm_log_likelihood_difference(x, y, beta, 0.1 + step, ref, 0.1, offset, family, block_size=512)
            assert float(at_ref) == pytest.approx(float(aj.models.glm.glm_log_likelihood(x, y, ref, 0.1, offset, family)), rel=1e-12)
            assert float(got) == pytest.approx(float(plain), rel=1e-9, abs=1e-9)
    # float32, extreme steps: finite (or -inf where the Poisson log-likelihood itself overflows), never NaN
    x32 = jnp.asarray(x, jnp.float32)
    for step in (-200.0, 200.0):
        got, _ = glm_log_likelihood_difference(x32, jnp.asarray(y, jnp.float32), jnp.full(3, step, jnp.float32), 0.0,
                                               jnp.zeros(3, jnp.float32), 0.0, family=family)
        assert not np.isnan(float(got))
        assert np.isfinite(float(got)) or (family == "poisson" and float(got) == -np.inf)
