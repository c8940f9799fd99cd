"""The garbage collector paused during a fit (`advi_jax.gc_pause`) and restored after."""

import gc

import jax
import jax.numpy as jnp
import pytest

import advi_jax as aj
from advi_jax import gc_pause


@pytest.fixture
def collector_enabled():
    was = gc.isenabled()
    gc.enable()
    yield
    if was:
        gc.enable()
    else:
        gc.disable()


def test_paused_restores_after_nesting_and_errors(collector_enabled):
    with gc_pause.paused():
        assert not gc.isenabled()
        with gc_pause.paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer block still runs
    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        with gc_pause.paused():
            raise RuntimeError("boom")
    assert gc.isenabled()


def test_paused_keeps_a_disabled_collector_disabled(collector_enabled):
    gc.disable()
    with gc_pause.paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_keep_leaves_the_collector_alone(collector_enabled, monkeypatch):
    monkeypatch.setenv("ADVI_JAX_GC", "keep")
    with gc_pause.paused():
        assert gc.isenabled()


def test_fit_runs_with_the_collector_paused_and_restores_it(collector_enabled):
    model = aj.Model(lambda p: -0.5 * jnp.sum((p["x"] - 1.0) ** 2), {"x": aj.real((2,))})
    seen = []
    result = aj.fit(model, key=jax.random.key(0), method="advi", family="meanfield", num_steps=200,
                    progress=False, diagnostics=False, callback=lambda progress: seen.append(gc.isenabled()))
    assert seen and not any(seen)
    assert gc.isenabled()
    assert abs(float(result.mean()["x"][0]) - 1.0) < 0.3
