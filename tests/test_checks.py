"""Every argument check written once (advi_jax.checks), and the entry points that share them."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import advi_jax as aj
from advi_jax import checks

MODEL = aj.Model(lambda p: -0.5 * jnp.sum(p["x"] ** 2), {"x": aj.real((2,))})
MINI = aj.MinibatchModel(lambda p: -0.5 * jnp.sum(p["x"] ** 2), lambda p, b: -0.5 * (b - p["x"][0]) ** 2,
                         {"x": aj.real((2,))}, data=jnp.zeros(50))


def test_number_flag_estimator_and_optimizer_checks():
    assert checks.check_number(2, "a") == 2.0
    with pytest.raises(ValueError, match="tol_rel_obj"):
        checks.check_number(-1.0, "tol_rel_obj")
    with pytest.raises(TypeError, match="init_scale"):
        checks.check_number("1", "init_scale")
    with pytest.raises(TypeError, match="progress"):
        checks.check_flag(1, "progress")
    with pytest.raises(ValueError, match="needs num_samples >= 2"):
        checks.check_estimator("score_baseline", 1)
    with pytest.raises(ValueError, match="estimator must be one of"):
        checks.check_estimator("nope", 1)
    with pytest.raises(ValueError, match="not both"):
        checks.resolve_optimizer(optax.adam(0.1), 0.1, 10)
    with pytest.raises(TypeError, match="GradientTransformation"):
        checks.resolve_optimizer("adam", None, 10)
    assert checks.resolve_learning_rate("adapt", None, allow_adapt=True) == (aj.optim.DEFAULT_LEARNING_RATE, True)
    with pytest.raises(ValueError, match="learning_rate"):
        checks.resolve_learning_rate("adapt", None)


@pytest.mark.parametrize("entry", ["fit", "fit_many", "fit_minibatch"])
def test_every_entry_point_gives_the_same_errors(entry, key):
    def call(**kwargs):
        if entry == "fit":
            return aj.fit(MODEL, progress=False, **kwargs)
        if entry == "fit_many":
            return aj.fit_many(MODEL, num_fits=2, **kwargs)
        return aj.fit_minibatch(MINI, batch_size=10, num_epochs=1, progress=False, **kwargs)

    with pytest.raises(TypeError, match="key"):
        call(key=0)
    with pytest.raises(ValueError, match="needs num_samples >= 2"):
        call(key=key, estimator="score_baseline")
    with pytest.raises(ValueError, match="not both"):
        call(key=key, optimizer=optax.adam(0.1), learning_rate=0.1)
    with pytest.raises(ValueError, match="tol_rel_obj"):
        call(key=key, tol_rel_obj=-1.0)
    with pytest.raises(TypeError, match="callback"):
        call(key=key, callback=3)


def test_initial_point_and_data_checks():
    with pytest.raises(ValueError, match="shape"):
        checks.initial_loc(MODEL, np.zeros(3), jnp.float32)
    bad = aj.Model(lambda p, d: -0.5 * jnp.sum((p["x"] - d) ** 2), {"x": aj.real((2,))},
                   data=jnp.array([1.0, jnp.nan]))
    with pytest.raises(ValueError, match="non-finite entries"):
        checks.check_data(bad.data)
    nan_model = aj.Model(lambda p: jnp.nan * jnp.sum(p["x"]), {"x": aj.real((2,))})
    with pytest.raises(ValueError, match="initial point"):
        checks.check_initial_point(nan_model, jnp.zeros(2))


def test_check_data_reads_device_arrays_once(monkeypatch):
    """A non-finite entry of a jax.Array is found (read on the host on CPU, in chunks); a jax.Array
    found finite is not read again, a new array is."""
    x = jax.device_put(np.arange(3000, dtype=np.float32).reshape(1000, 3))
    bad = x.at[777, 2].set(jnp.inf)
    with pytest.raises(ValueError, match=r"model.data\['b'\] has non-finite entries \(1 of 3000\)"):
        checks.check_data({"a": x, "b": bad})
    assert not checks._host_all_finite(np.asarray(bad), chunk=512)  # the inf sits in a later chunk
    checks.check_data({"a": x})
    monkeypatch.setattr(checks, "_host_all_finite", lambda *a, **k: pytest.fail("read again"))
    monkeypatch.setattr(checks, "_all_finite", lambda *a, **k: pytest.fail("read again"))
    checks.check_data({"a": x})  # remembered: nothing read
    with pytest.raises(BaseException, match="read again"):
        checks.check_data({"a": x + 1.0})  # another array is read
