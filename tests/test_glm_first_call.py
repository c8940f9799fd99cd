"""The ready GLMs' first call (issue 16): few programs, none for keys or the initial-point check,
bad data still named before anything compiles, and the same numbers as the slower-compiled path.

`advi_jax.run.host_keys` (the fit's keys on the host, bit for bit `jax.random`'s),
`advi_jax.checks.known_finite_at` (no compiled initial-point check for a ready GLM at zero),
`glm_exact.loop_compile_mode` (the loop's fast options where the native kernel does the passes)
and the driver's `STEP_KEYS = False` (no per-step keys for glm_exact).
"""

import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import advi_jax as aj
from advi_jax import checks, compile_options
from advi_jax.models import logistic_regression, poisson_regression
from advi_jax.run import host_keys
from advi_jax.vi import glm_exact

_COMPILED = re.compile(r"Finished XLA compilation of jit\((\w+)\)")


class _Names(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.names = []

    def emit(self, record):
        found = _COMPILED.search(record.getMessage())
        if found:
            self.names.append(found.group(1))


def _compiled(fn):
    """(fn's value, names of the programs XLA compiled during fn(), on any thread) from JAX's compile log."""
    handler, logger = _Names(), logging.getLogger("jax")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        with jax.log_compiles(True):
            out = fn()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return out, handler.names


def _data(kind, n, d, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    eta = x @ rng.normal(size=d) * 0.5 / np.sqrt(d)
    if kind == "logistic":
        return x, (rng.uniform(size=n) < 1 / (1 + np.exp(-eta))).astype(float)
    return x, rng.poisson(np.exp(eta + 0.3)).astype(float)


@pytest.mark.parametrize("partitionable", [True, False])
def test_host_fit_keys_are_jax_randoms_bits(partitionable):
    """split(key) and fold_in(key, 1) on the host equal jax.random's, bit for bit, under both
    counter layouts of `jax_threefry_partitionable`, over seeds and derived keys."""
    before = jax.config.jax_threefry_partitionable
    jax.config.update("jax_threefry_partitionable", partitionable)
    try:
        keys = [jax.random.key(s) for s in (0, 1, 7, 2**31 - 1, 123456789)]
        keys += list(jax.random.split(jax.random.key(42), 6))
        for key in keys:
            got = host_keys.fit_keys(key)
            assert got is not None
            init_key, run_key = jax.random.split(key)
            want = (init_key, run_key, jax.random.fold_in(key, 1))
            for g, w in zip(got, want):
                assert g.dtype == w.dtype and g.shape == ()
                np.testing.assert_array_equal(jax.random.key_data(g), jax.random.key_data(w))
    finally:
        jax.config.update("jax_threefry_partitionable", before)


def test_host_fit_keys_leave_other_keys_to_jax():
    assert host_keys.fit_keys(jax.random.key(0, impl="rbg")) is None
    assert host_keys.fit_keys(jax.random.split(jax.random.key(0), 2)) is None  # a batch of keys
    assert host_keys.fit_keys(np.zeros(2, np.uint32)) is None  # raw data: `check_key` wraps it first


def test_known_finite_at_a_ready_glm_at_zero_only():
    x, y = _data("poisson", 40, 3)
    model = poisson_regression(x, y)
    assert checks.known_finite_at(model, np.zeros(model.dim))
    assert not checks.known_finite_at(model, np.full(model.dim, 0.5))  # evaluated by the caller instead
    plain = aj.Model(lambda p: -0.5 * jnp.sum(p["x"] ** 2), {"x": aj.real((2,))})
    assert not checks.known_finite_at(plain, np.zeros(2))
    # An offset whose exp overflows float32 at the start: not known, so the compiled check decides.
    huge = poisson_regression(x, y, offset=np.full(40, 100.0))
    assert not checks.known_finite_at(huge, np.zeros(huge.dim))
    with pytest.raises(ValueError, match="is -inf at the initial point"):
        checks.check_initial_point(huge, jnp.zeros(huge.dim))
    # Responses replaced by ones outside the support (the constructor would refuse them).
    bad_y = jax.tree_util.tree_map(lambda a: a, model)
    bad_y.data["y"] = jnp.asarray(-np.ones(40), jnp.float32)
    assert not checks.known_finite_at(bad_y, np.zeros(bad_y.dim))


def test_bad_data_is_named_before_anything_compiles():
    """NaN in a ready GLM's design (data replaced after construction): aj.fit raises the data's name,
    from the host check, and no program is compiled for it."""
    x, y = _data("logistic", 57, 2)
    model = logistic_regression(x, y)
    model.data["x"] = jnp.asarray(np.where(np.arange(57)[:, None] == 3, np.nan, np.asarray(model.data["x"])),
                                  model.data["x"].dtype)
    key = jax.random.key(0)

    def fit():
        with pytest.raises(ValueError, match=r"model.data\['x'\] has non-finite entries \(2 of 114\)"):
            aj.fit(model, key=key, progress=False)

    _, names = _compiled(fit)
    assert names == []
    _, names = _compiled(lambda: jnp.sin(jnp.ones(3)) + 0.5)  # the log is read: a program is seen
    assert names
    with pytest.raises(ValueError, match="X has a non-finite value nan at row 3"):
        logistic_regression(np.where(np.arange(57)[:, None] == 3, np.nan, x), y)


@pytest.mark.parametrize("kind, family", [("logistic", "fullrank"), ("poisson", "meanfield")])
def test_a_ready_glm_fit_compiles_three_programs_and_one_for_diagnostics(kind, family):
    """The loop's initial state, the loop and the final parameters; the diagnostics' draws one more.
    No keys, no initial-point check, no eager conversions (N = 1,291: shapes no other test compiles)."""
    x, y = _data(kind, 1291, 4)
    model = (logistic_regression if kind == "logistic" else poisson_regression)(x, y)
    key = jax.random.key(3)
    res, names = _compiled(lambda: aj.fit(model, key=key, family=family, progress=False, diagnostics=False))
    assert res.method == "glm_exact" and res.report.converged
    assert sorted(names) == ["finish", "init_loop", "run_chunk"], names
    model2 = (logistic_regression if kind == "logistic" else poisson_regression)(x[:1290], y[:1290])
    res, names = _compiled(lambda: aj.fit(model2, key=key, family=family, progress=False, warn=False))
    assert res.report.diagnostics is not None and np.isfinite(res.report.diagnostics.khat)
    assert len(names) <= 4 and "centred_log_ratios" in names, names


@pytest.mark.parametrize("family", ["fullrank", "meanfield"])
def test_fast_compiled_loop_equals_the_mid_compiled_one(family):
    """The loop compiled fast (the default where the native kernel does the passes) gives the fit
    that XLA's "mid" options give, to float32 rounding, in the same number of steps."""
    x, y = _data("logistic", 3001, 12, seed=5)
    model = logistic_regression(x, y)
    fam = aj.families.get_family(family)
    assert glm_exact.loop_compile_mode(model, fam, glm_exact.Options(), "mid") == (
        "fast" if compile_options._on_cpu() and glm_exact._glm_native.covers("logistic", jnp.float32, None, "auto")
        else "mid")
    fits = {}
    for mode in (None, "mid"):
        with compile_options.forced(mode):
            fits[mode] = aj.fit(model, key=jax.random.key(0), family=family, progress=False, diagnostics=False)
    a, b = fits[None], fits["mid"]
    assert a.report.num_steps == b.report.num_steps
    sd = np.sqrt(np.asarray(b.family.variance(b.params)))
    np.testing.assert_allclose(np.asarray(a.family.mean(a.params)), np.asarray(b.family.mean(b.params)),
                               atol=1e-5 * sd.min(), rtol=0)
    np.testing.assert_allclose(np.sqrt(np.asarray(a.family.variance(a.params))), sd, rtol=1e-5)

