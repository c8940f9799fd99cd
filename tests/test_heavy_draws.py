"""The averaged natural-gradient ADVI's reading of heavy-tailed draws (`AutoStop.heavy_draws`).

Where single draws of q carry enormous gradients (a horseshoe's local scales), the default reads the
first `heavy_after` steps' draws as heavy-tailed and averages `heavy_draws` steps' draws into each
update from then on; elsewhere it must run exactly the plain step.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import advi_jax as aj
from advi_jax.run.choose import AUTO_ADVI
from advi_jax.vi._advi_averaged import advi_averaged
from advi_jax.vi._natural import draw_deviations, phi


def _half_cauchy_log(x, s):
    """log density of log(lambda) for lambda ~ half-Cauchy(0, s), up to a constant."""
    return x - jnp.log1p(jnp.exp(2.0 * (x - jnp.log(s))))


def _horseshoe(z, y):
    """A horseshoe regression on the identity design: y_d ~ N(beta_d, 1), beta_d ~ N(0, (tau lambda_d)^2),
    tau ~ half-Cauchy(0, 0.1), lambda_d ~ half-Cauchy(0, 1); z = (log tau, log lambda, beta)."""
    d = y.shape[0]
    log_tau, log_lam, beta = z[0], z[1:d + 1], z[d + 1:]
    scale = jnp.exp(log_tau + log_lam)
    return (_half_cauchy_log(log_tau, 0.1) + jnp.sum(_half_cauchy_log(log_lam, 1.0))
            + jnp.sum(-0.5 * (beta / scale) ** 2 - jnp.log(scale)) - 0.5 * jnp.sum((y - beta) ** 2))


_Y = jnp.zeros(20).at[0].set(5.0)  # one signal among 20 coefficients


def _run(log_density, dim, steps, seed=1, init_scale=0.5, **changes):
    model = aj.Model(lambda p: log_density(p["z"]), {"z": aj.real((dim,))})
    init, step = advi_averaged(model, "fullrank", stop=AUTO_ADVI.stop._replace(**changes), num_samples=4,
                               init_scale=init_scale)

    @jax.jit
    def go(state):
        def body(s, i):
            s, _ = step(jax.random.fold_in(jax.random.key(seed), i), s)
            return s, s.fit.params.loc

        return jax.lax.scan(body, state, jnp.arange(steps))

    return go(init(jax.random.key(0)))


def test_draw_deviations_are_each_draws_direction_less_the_mean_in_the_fisher_metric():
    rng = np.random.default_rng(0)
    u, eps = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    dirs = [(u[s], np.asarray(phi(0.5 * (np.outer(u[s], eps[s]) + np.outer(eps[s], u[s]))))) for s in range(4)]
    mean_m = np.mean([d[0] for d in dirs], axis=0)
    mean_x = np.mean([d[1] for d in dirs], axis=0)
    expected = []
    for m, x in dirs:
        dm, dx = m - mean_m, x - mean_x
        expected.append(np.sqrt(np.sum(dm ** 2) + np.sum(np.tril(dx, -1) ** 2) + 2.0 * np.sum(np.diag(dx) ** 2)))
    got = draw_deviations(jnp.asarray(u, jnp.float32), jnp.asarray(eps, jnp.float32))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5)


def test_the_horseshoe_reads_heavy_and_switches_a_gaussian_does_not():
    after = AUTO_ADVI.stop.heavy_after
    threshold = AUTO_ADVI.stop.heavy_fraction * after * 4
    heavy, _ = _run(lambda z: _horseshoe(z, _Y), 41, after + 10)
    assert int(heavy.group) == AUTO_ADVI.stop.heavy_draws == 8
    assert int(heavy.heavy) > 2 * threshold  # ~10% of the draws, against 2%
    scales = jnp.array([0.5, 1.0, 2.0, 1.5, 0.7])
    light, _ = _run(lambda z: -0.5 * jnp.sum(((z - 1.0) / scales) ** 2), 5, after + 10, init_scale=1.0)
    assert int(light.group) == 1
    assert int(light.heavy) == 0


def test_a_light_fit_runs_the_plain_steps_values_exactly():
    # a logistic-like, non-Gaussian target, past the reading: heavy_draws 8 (quiet) = heavy_draws 1
    def log_density(z):
        return jnp.sum(jax.nn.log_sigmoid(3.0 * z) - 0.3 * z ** 2) - 0.5 * (z[0] - z[1]) ** 2

    on, locs_on = _run(log_density, 3, 700, init_scale=1.0)
    off, locs_off = _run(log_density, 3, 700, init_scale=1.0, heavy_draws=1)
    assert int(on.group) == 1
    np.testing.assert_array_equal(np.asarray(locs_on), np.asarray(locs_off))
    np.testing.assert_array_equal(np.asarray(on.slots), np.asarray(off.slots))
    assert int(on.num_batches) == int(off.num_batches) and float(on.mcse) == float(off.mcse)


def test_after_the_switch_q_moves_once_per_eight_steps_and_the_average_counts_updates():
    after = AUTO_ADVI.stop.heavy_after
    state, locs = _run(lambda z: _horseshoe(z, _Y), 41, after + 64)
    locs = np.asarray(locs)
    moved = np.any(locs[1:] != locs[:-1], axis=1)  # moved[i]: step i + 1 changed q
    assert moved[: after - 1].all()
    tail = moved[after - 1:]  # steps after + 0 ... : updates at every 8th
    assert tail.sum() == 8 and (np.flatnonzero(tail) % 8 == 7).all()
    # 400 plain updates (16 batches of 25) and 8 grouped ones since: the batch in progress holds 8
    assert int(state.cur_count) + int(state.num_batches) * int(state.batch_steps) == after + 8


@pytest.mark.parametrize("changes", [dict(heavy_draws=0), dict(heavy_draws=2.5),
                                     dict(heavy_draws=8, preconditioner="adam", control_rate=0.0)])
def test_bad_heavy_draws_is_refused_by_name(changes):
    model = aj.Model(lambda p: -0.5 * jnp.sum(p["z"] ** 2), {"z": aj.real((2,))})
    with pytest.raises(ValueError, match="heavy_draws"):
        advi_averaged(model, "fullrank", stop=AUTO_ADVI.stop._replace(**changes))
