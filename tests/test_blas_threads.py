"""`advi_jax.blas_threads`: a fit's LAPACK calls run on one OpenBLAS thread (spinning idle threads
made radon's first fit 30-207 s under load; benchmarks/PERFORMANCE.md, "OpenBLAS's spinning threads")."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import advi_jax as aj
from advi_jax import blas_threads

LIBRARIES = blas_threads.openblas_libraries()
needs_openblas = pytest.mark.skipif(not LIBRARIES, reason="no OpenBLAS found in this environment (another BLAS)")


def _counts() -> list[int]:
    return [get() for get, _ in LIBRARIES]


def _set(count: int) -> None:
    for _, set_ in LIBRARIES:
        set_(count)


@needs_openblas
def test_one_thread_sets_and_restores_the_counts():
    before = _counts()
    _set(2)
    try:
        with blas_threads.one_thread(90):
            assert _counts() == [1] * len(LIBRARIES)
        assert _counts() == [2] * len(LIBRARIES)
        with blas_threads.one_thread(blas_threads.MAX_DIM + 1):  # large K: the threads pay, left alone
            assert _counts() == [2] * len(LIBRARIES)
    finally:
        for (_, set_), count in zip(LIBRARIES, before):
            set_(count)


@needs_openblas
@pytest.mark.filterwarnings("ignore:ADVI's stopping rule")
def test_fit_runs_its_programs_on_one_openblas_thread(key):
    """The counts the fit's compiled programs see (read by a host callback in the log density while
    they run) are 1, and the caller's are back after the fit."""
    seen = []

    def record(x):
        seen.append(_counts())

    def log_density(p):
        jax.debug.callback(record, p["x"])
        return -0.5 * jnp.sum(p["x"] ** 2) - 0.5 * jnp.sum((p["x"][1:] - 0.5 * p["x"][:-1]) ** 2)

    model = aj.Model(log_density, {"x": aj.real((3,))})
    before = _counts()
    _set(2)
    try:
        result = aj.fit(model, key=key, num_steps=200, progress=False, diagnostics=False)
        assert _counts() == [2] * len(LIBRARIES)
    finally:
        for (_, set_), count in zip(LIBRARIES, before):
            set_(count)
    assert np.all(np.isfinite(np.asarray(result.family.mean(result.params))))
    assert seen and all(counts == [1] * len(LIBRARIES) for counts in seen)


@needs_openblas
@pytest.mark.parametrize("entry", ["fit_many", "fit_minibatch"])
def test_fit_many_and_minibatch_run_on_one_openblas_thread(key, entry):
    """`aj.fit_many` (here with a list of models) and `aj.fit_minibatch` run their compiled programs
    with OpenBLAS on one thread too (a host callback in the log density reads the counts), and the
    caller's counts are back after."""
    seen = []

    def record(x):
        seen.append(_counts())

    def log_prior(p):
        jax.debug.callback(record, p["mu"])
        return -0.5 * jnp.sum(p["mu"] ** 2)

    before = _counts()
    _set(2)
    try:
        if entry == "fit_many":
            def log_joint(p, c):
                return log_prior(p) - 0.5 * (p["mu"] - c) ** 2

            models = [aj.Model(log_joint, {"mu": aj.real()}, data=jnp.asarray(c)) for c in (0.0, 1.0)]
            result = aj.fit_many(models, key=key, num_steps=50, diagnostics=False)
            means = np.asarray(result.means())
        else:
            data = jnp.linspace(-1.0, 1.0, 20)
            model = aj.MinibatchModel(log_prior, lambda p, b: -0.5 * (b - p["mu"]) ** 2, {"mu": aj.real()}, data=data)
            result = aj.fit_minibatch(model, key=key, batch_size=10, num_epochs=5, progress=False, diagnostics=False)
            means = np.asarray(result.mean()["mu"])
        assert _counts() == [2] * len(LIBRARIES)
    finally:
        for (_, set_), count in zip(LIBRARIES, before):
            set_(count)
    assert np.all(np.isfinite(means))
    assert seen and all(counts == [1] * len(LIBRARIES) for counts in seen)
