"""ADVI with a drift-triggered decay (`advi_jax.vi._advi_drift`, the low-rank default's schedule above K = 200)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

import advi_jax as aj
from advi_jax.optim import default_optimizer
from advi_jax.vi._advi_drift import DriftStop, advi_drift
from advi_jax.vi.advi import advi, describe_stop, stop_warning


def _model():
    scale = jnp.array([0.5, 1.0, 3.0])
    return aj.Model(lambda p: -0.5 * jnp.sum((p["x"] - 1.0) ** 2 / scale ** 2), {"x": aj.real((3,))})


def _run(pair, steps, key):
    state = pair.init(jax.random.key(0))
    step = jax.jit(pair.step)
    done_at = None
    for i in range(steps):
        state, info = step(jax.random.fold_in(key, i), state)
        if done_at is None and bool(info.converged):
            done_at = i + 1
    return state, done_at


def test_without_a_calm_window_it_runs_the_fixed_budget_schedule_exactly():
    # tol_drift and z_drift 0: no window is calm, so the decay starts at max_constant (a half here) of the
    # cap and runs to it, which is default_optimizer's schedule (constant for half the budget, then a cosine to 1%)
    model, key = _model(), jax.random.key(5)
    stop = DriftStop(max_steps=200, window=20, sub_batches=4, tol_drift=0.0, z_drift=0.0, min_steps=40,
                     max_constant=0.5, min_decay=10)
    ours, done = _run(advi_drift(model, "meanfield", stop=stop, estimator="stl", num_samples=2), 200, key)
    fixed, _ = _run(advi(model, "meanfield", optimizer=default_optimizer(0.01, 200), estimator="stl",
                         num_samples=2), 200, key)
    assert done is None and int(ours.decay_start) == 100 and int(ours.decay_steps) == 100 and not bool(ours.ruled)
    for a, b in zip(jax.tree_util.tree_leaves(ours.fit.params), jax.tree_util.tree_leaves(fixed.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    drift = np.asarray(ours.history[0])
    assert np.isnan(drift[0]) and np.all(drift[1:] > 0)  # every window's drift recorded, also through the decay


def test_calm_windows_start_a_decay_as_long_as_the_constant_phase_and_then_stop():
    # tol_drift inf: the third and fourth windows are calm (the first two have no window two back), so the
    # decay starts at step 80 and lasts 80 steps: the same iterates as Adam on that schedule, converged at 160
    model, key = _model(), jax.random.key(6)
    stop = DriftStop(max_steps=400, window=20, sub_batches=4, tol_drift=float("inf"), min_steps=40, min_decay=10)
    ours, done = _run(advi_drift(model, "meanfield", stop=stop, estimator="stl", num_samples=2), 160, key)
    schedule = optax.join_schedules([optax.constant_schedule(0.01), optax.cosine_decay_schedule(0.01, 80, 0.01)], [80])
    fixed, _ = _run(advi(model, "meanfield", optimizer=optax.adam(schedule), estimator="stl", num_samples=2), 160, key)
    assert done == 160 and bool(ours.ruled) and (int(ours.decay_start), int(ours.decay_steps)) == (80, 80)
    for a, b in zip(jax.tree_util.tree_leaves(ours.fit.params), jax.tree_util.tree_leaves(fixed.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_the_drift_is_the_largest_change_of_window_means_against_its_standard_error():
    # each window's iterates are summarised by sub-batch means: the window mean and its standard error;
    # a coordinate must be calm against the last window and against the one before it
    model = _model()
    stop = DriftStop(max_steps=1000, window=20, sub_batches=4, tol_drift=0.001, z_drift=3.0, min_steps=40)
    pair = advi_drift(model, "meanfield", stop=stop, estimator="stl", num_samples=1)
    state = pair.init(jax.random.key(0))
    family = aj.MeanFieldGaussian()
    step = jax.jit(pair.step)
    rows = []
    for i in range(60):
        state, _ = step(jax.random.fold_in(jax.random.key(1), i), state)
        rows.append(np.concatenate([np.asarray(family.mean(state.fit.params)),
                                    0.5 * np.log(np.asarray(family.variance(state.fit.params)))]))
    subs = np.asarray(rows, np.float64).reshape(3, 4, 5, 6).mean(axis=2)  # (window, sub-batch, coordinate)
    mean, var = subs.mean(axis=1), subs.var(axis=1, ddof=1) / 4
    units = np.concatenate([np.exp(mean[2, 3:]), np.ones(3)])
    change = np.abs(mean[2] - mean[:2]) / units  # from the window before, and the one before that
    se = np.sqrt(var[2] + var[:2]) / units
    np.testing.assert_allclose(float(state.drift), change[1].max(), rtol=1e-4)
    np.testing.assert_allclose(float(state.history[0, 2]), change[1].max(), rtol=1e-4)
    np.testing.assert_allclose(float(state.excess), np.max(change / np.maximum(0.001, 3.0 * se)), rtol=1e-3)


def test_describe_and_warn():
    calm = {"drift_stop_drift": 0.01, "drift_stop_decay_start": 6000, "drift_stop_decay_steps": 6000,
            "drift_stop_ruled": True}
    assert "stopped drifting" in describe_stop("converged (the method's own test)", 4, calm, 40_000)
    assert stop_warning(4, calm, 40_000) is None
    moving = dict(calm, drift_stop_drift=0.8, drift_stop_decay_start=20_000, drift_stop_decay_steps=20_000,
                  drift_stop_ruled=False)
    assert "not stopped drifting" in describe_stop("reached num_steps", 0, moving, 40_000)
    assert "larger num_steps" in stop_warning(0, moving, 40_000)
    assert stop_warning(0, dict(moving, drift_stop_drift=0.02), 40_000) is None


def test_the_warning_uses_the_fits_own_window_and_threshold():
    # a user's own DriftStop (20-step windows, warn above 1.0 sd or above 0.001 sd): its extras carry both
    from advi_jax.vi._advi_drift import drift_extras

    model, key = _model(), jax.random.key(5)
    for warn_drift, warns in ((1e-3, True), (1e3, False)):
        stop = DriftStop(max_steps=200, window=20, sub_batches=4, tol_drift=0.0, z_drift=0.0, min_steps=40,
                         max_constant=0.5, min_decay=10, warn_drift=warn_drift)
        state, _ = _run(advi_drift(model, "meanfield", stop=stop, estimator="stl", num_samples=2), 200, key)
        extras = jax.device_get(drift_extras(stop)(state))
        assert int(extras["drift_stop_window"]) == 20 and float(extras["drift_stop_warn_drift"]) == np.float32(warn_drift)
        said = stop_warning(0, extras, 200)
        assert (said is not None) == warns
        if warns:
            assert "per 20-step window" in said
