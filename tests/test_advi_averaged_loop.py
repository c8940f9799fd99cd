"""The averaged ADVI's loop program: what it computes per step and per closed batch (its compile
cost is the default fit's first call on K ~ 100 models; issue 15).

The statistics of a closed batch are computed in one product and one reduction
(`_advi_averaged._window_tests`); these tests hold them to the one-statistic-at-a-time formulas
they replaced, and bound what the step traces (one vmapped log density, no (slots, K, K) product).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import advi_jax as aj
from advi_jax.families import get_family
from advi_jax.run import choose as policy
from advi_jax.vi._advi_averaged import _summary, _tail, _window_tests
from advi_jax.vi.advi import advi_averaged


def _masked_mean(x, mask):
    w = mask.astype(x.dtype)
    return jnp.tensordot(w, x, axes=1) / jnp.maximum(jnp.sum(w), 1.0)


def _reference(s, newton, tail, last, first, changes):
    """The statistics one at a time, as `close_batch` computed them before `_window_tests`."""
    h = jnp.sum(tail).astype(s.dtype)
    centred = jnp.where(tail[:, None], s - _masked_mean(s, tail)[None, :], 0.0)
    se = jnp.sqrt(jnp.sum(centred ** 2, axis=0) / jnp.maximum(h - 1.0, 1.0) / h)
    d = _masked_mean(s, last) - _masked_mean(s, first)
    step_mean = _masked_mean(newton, tail)
    step_centred = jnp.where(tail[:, None], newton - step_mean[None, :], 0.0)
    step_se = jnp.sqrt(jnp.sum(step_centred ** 2, axis=0) / jnp.maximum(h - 1.0, 1.0) / h)
    k = newton.shape[1]
    largest = (jnp.max(se), jnp.max(jnp.abs(d)), jnp.max(step_se), jnp.max(jnp.abs(step_mean)),
               jnp.max(jnp.abs(step_mean) - 2.0 * step_se), jnp.max(changes), jnp.max(changes[:k]))
    return se, d, largest


@pytest.mark.parametrize("filled", [1, 2, 5, 17, 32])
def test_window_tests_equal_the_one_statistic_at_a_time_formulas(filled):
    k, m = 7, 32
    keys = jax.random.split(jax.random.key(filled), 3)
    s = jax.random.normal(keys[0], (m, 2 * k)) * jnp.linspace(0.1, 3.0, 2 * k)[None, :]
    newton = jax.random.normal(keys[1], (m, k)) - 0.3
    changes = jnp.abs(jax.random.normal(keys[2], (2 * k,)))
    tail, first, last = _tail(jnp.asarray(filled), m)
    got = jax.jit(_window_tests)(s, newton, tail, last, first, changes)
    se, d, largest = _reference(s, newton, tail, last, first, changes)
    np.testing.assert_allclose(got.se, se, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got.drifts, d, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.array(got.largest), np.array(largest), rtol=1e-6, atol=1e-6)
    # the maxima of the (K,) rows are not taken from the -inf padding
    assert np.all(np.isfinite(np.array(got.largest)))


def test_window_tests_keep_a_nan_coordinate():
    k, m = 3, 8
    s = jnp.ones((m, 2 * k)).at[3, 1].set(jnp.nan)
    newton = jnp.zeros((m, k))
    tail, first, last = _tail(jnp.asarray(6), m)
    got = _window_tests(s, newton, tail, last, first, jnp.zeros(2 * k))
    assert np.isnan(float(got.largest[0])) and np.isnan(float(got.largest[1]))  # MCSE and drift see it
    assert float(got.largest[3]) == 0.0  # the Newton step's rows do not


def test_summary_reads_the_sds_of_the_family_without_the_covariance():
    family = get_family("fullrank")
    params = family.init(jax.random.key(0), 6, scale=1.0)
    params = params._replace(off_diag=jax.random.normal(jax.random.key(1), (6, 6)),
                             raw_diag=jax.random.normal(jax.random.key(2), (6,)))
    mean, sd = _summary(family)(params)
    np.testing.assert_allclose(sd, np.sqrt(np.diag(np.asarray(family.covariance(params)))), rtol=1e-5)
    np.testing.assert_array_equal(mean, family.mean(params))
    meanfield = get_family("meanfield")
    mf = meanfield.init(jax.random.key(0), 4, scale=0.5)
    np.testing.assert_allclose(_summary(meanfield)(mf)[1], np.sqrt(meanfield.variance(mf)), rtol=1e-6)


def _step_jaxpr(dim):
    traced = [0]

    def log_density(p):
        traced[0] += 1
        return -0.5 * jnp.sum(p["x"] ** 2) - 0.1 * jnp.sum(p["x"] ** 4)

    model = aj.Model(log_density, {"x": aj.real((dim,))})
    stop = policy.AUTO_ADVI.stop
    init, step = advi_averaged(model, "fullrank", stop=stop, num_samples=policy.AUTO_ADVI.num_samples,
                               estimator="stl")
    state = init(jax.random.key(0), jnp.zeros(dim))
    traced[0] = 0
    jaxpr = jax.make_jaxpr(step)(jax.random.key(1), state)
    return jaxpr, traced[0], int(stop.num_slots)


def _eqns(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _eqns(inner)


def test_the_default_step_traces_one_log_density_and_no_product_per_slot():
    """The natural step evaluates the log density at all its draws in one vmapped call (one trace,
    its gradient included), and a closed batch reads each slot's sds without an (m, K, K) product."""
    dim = 5
    jaxpr, traced, m = _step_jaxpr(dim)
    assert traced == 1
    batched_kk = [e for e in _eqns(jaxpr.jaxpr) if e.primitive.name == "dot_general"
                  and e.outvars[0].aval.shape == (m, dim, dim)]
    assert not batched_kk
    # the loop's size: the step (with its closed batch) stays within a budget of equations
    # (818 at this change for K = 5, against 900; 947 with the heavy-draw reading and its grouped
    # updates, `AutoStop.heavy_draws`, against 1,000; a second copy of the statistics would exceed it)
    assert sum(1 for _ in _eqns(jaxpr.jaxpr)) < 1000


def test_the_natural_step_draws_are_the_antithetic_noise_bit_for_bit():
    from advi_jax.vi._natural import _drawn_once, antithetic_noise, natural_step

    key = jax.random.key(3)
    for num in (4, 5):
        got = jax.jit(_drawn_once, static_argnums=(1, 2, 3))(key, num, 6, jnp.float32, jnp.asarray(True))
        np.testing.assert_array_equal(got, antithetic_noise(key, num, 6, jnp.float32))
    assert not np.any(np.asarray(_drawn_once(key, 4, 6, jnp.float32, jnp.asarray(False))))
    # the step itself: its ELBO estimate is that of these draws
    log_density = lambda x: -0.5 * jnp.sum((x - 1.0) ** 2)  # noqa: E731
    loc, scale = jnp.zeros(6), 0.5 * jnp.eye(6)
    out = jax.jit(natural_step, static_argnums=(0, 4))(log_density, loc, scale, key, 4, 0.1, 1.0)
    eps = antithetic_noise(key, 4, 6, jnp.float32)
    zeta = loc[None, :] + eps @ scale.T
    log_q = -0.5 * jnp.sum(eps ** 2, axis=1) - jnp.sum(jnp.log(jnp.diagonal(scale))) - 3.0 * jnp.log(2 * jnp.pi)
    np.testing.assert_allclose(out.elbo, jnp.mean(jax.vmap(log_density)(zeta) - log_q), rtol=1e-5)
