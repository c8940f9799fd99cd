"""The low-rank glm_exact fit (advi_jax.vi._glm_lowrank) compiles its loop once, and reports the gradient it stopped at."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import advi_jax as aj
from advi_jax import compile_options
from advi_jax.models import negbin_regression, poisson_regression
from advi_jax.run import ahead, driver
from advi_jax.vi import glm_exact as G

KW = dict(method="glm_exact", progress=False, diagnostics=False, warn=False)


def test_the_loop_compiled_ahead_is_the_one_the_fit_calls():
    # The loop is traced on the background thread (`run.ahead`) from abstract arguments; the fit's own
    # call must find that program. optax's weak-typed initial scalars made it miss and trace (and
    # compile) the loop a second time. A row count no other test uses keeps the caches cold.
    assert ahead.enabled()
    rng = np.random.default_rng(3)
    x = rng.normal(size=(137, 2)).astype(np.float32)
    model = poisson_regression(x, rng.poisson(np.exp(0.3 * x[:, 0])).astype(np.float32))
    family = aj.LowRankGaussian(rank=1)
    before = driver.num_traces()
    first = aj.fit(model, key=jax.random.key(0), family=family, **KW)
    assert driver.num_traces() - before == 1
    second = aj.fit(model, key=jax.random.key(0), family=family, **KW)
    assert driver.num_traces() - before == 1
    np.testing.assert_array_equal(np.asarray(first.params.loc), np.asarray(second.params.loc))


def test_grad_max_is_the_objective_gradient_at_the_result():
    # `extras["grad_max"]` comes from the line search's last gradient (no second differentiation in
    # `finish`); it must equal max |d(-ELBO)/d(loc, raw_diag, factor)| at the returned parameters.
    with jax.enable_x64(True):
        rng = np.random.default_rng(4)
        x = rng.normal(size=(150, 3))
        model = negbin_regression(x, rng.poisson(np.exp(0.4 + 0.3 * x[:, 0])))
        family = aj.LowRankGaussian(rank=2)
        res = aj.fit(model, key=jax.random.key(0), family=family, num_steps=15, **KW)
        grads = jax.grad(lambda p: -G.exact_elbo(model, family, p))(res.params)
        expected = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads))
        reported = float(res.report.extras["grad_max"])
    assert res.params.loc.dtype == jnp.float64 and expected > 1e-6  # 15 steps: not at the optimum
    np.testing.assert_allclose(reported, expected, rtol=1e-8)


@pytest.mark.skipif(not compile_options._on_cpu(), reason="the fast options are CPU settings")
def test_loop_compile_mode_lowrank_by_kind_and_rows():
    # Logistic / Poisson low-rank loops compile fast up to LOWRANK_FAST_MAX_ROWS rows; the negative
    # binomial's and larger ones keep the mode they are given (measured trades in the docstring).
    rng = np.random.default_rng(5)
    family, opts = aj.LowRankGaussian(rank=2), G.Options()

    def model(kind, n):
        x = rng.normal(size=(n, 2)).astype(np.float32)
        if kind == "negbin":
            return negbin_regression(x, rng.poisson(2.0, n).astype(np.float32))
        return poisson_regression(x, rng.poisson(2.0, n).astype(np.float32))

    limit = G.LOWRANK_FAST_MAX_ROWS
    assert G.loop_compile_mode(model("poisson", limit), family, opts, "mid") == "fast"
    assert G.loop_compile_mode(model("poisson", limit + 1), family, opts, "mid") == "mid"
    assert G.loop_compile_mode(model("negbin", 1000), family, opts, "mid") == "mid"
    with compile_options.forced("mid"):
        assert G.loop_compile_mode(model("poisson", 1000), family, opts, "mid") == "mid"


@pytest.mark.skipif(not compile_options._on_cpu(), reason="the fast options are CPU settings")
def test_fast_compiled_lowrank_fit_equals_the_mid_compiled_one():
    # The fast options change the generated code, not the arithmetic: in float64 the same iterations
    # and the same optimum to rounding.
    with jax.enable_x64(True):
        rng = np.random.default_rng(6)
        x = rng.normal(size=(419, 3))
        model = poisson_regression(x, rng.poisson(np.exp(0.2 + 0.4 * x[:, 0] - 0.3 * x[:, 1])))
        family = aj.LowRankGaussian(rank=2)
        assert G.loop_compile_mode(model, family, G.Options(), "mid") == "fast"
        fits = {}
        for mode in (None, "mid"):
            with compile_options.forced(mode):
                fits[mode] = aj.fit(model, key=jax.random.key(0), family=family, **KW)
    a, b = fits[None], fits["mid"]
    assert a.report.num_steps == b.report.num_steps and a.report.converged
    np.testing.assert_allclose(np.asarray(a.params.loc), np.asarray(b.params.loc), atol=1e-9, rtol=0)
    np.testing.assert_allclose(np.asarray(a.params.factor), np.asarray(b.params.factor), atol=1e-7, rtol=0)
    np.testing.assert_allclose(float(a.elbo[-1]), float(b.elbo[-1]), rtol=1e-12)


@pytest.mark.skipif(not compile_options._on_cpu(), reason="the fast options are CPU settings")
def test_the_start_of_a_mid_compiled_loop_chooses_its_own_options():
    # The negative binomial's low-rank loop at 6,000 data entries compiles with the "mid" options (a
    # program of many L-BFGS steps); its start makes one evaluation and chooses by its own arithmetic
    # (`driver._init_mode`): the fast options here. Before, it took the loop's "mid" (0.6-1.3 s of
    # compile at N = 1e4 against about 0.1 s).
    rng = np.random.default_rng(8)
    x = rng.normal(size=(2000, 2)).astype(np.float32)
    model = negbin_regression(x, rng.poisson(np.exp(0.5 + 0.3 * x[:, 0])).astype(np.float32))
    family = aj.LowRankGaussian(rank=1)
    assert G.loop_compile_mode(model, family, G.Options(), compile_options.compile_mode(model)) == "mid"
    decided = dict(driver.init_loop._decided)
    res = aj.fit(model, key=jax.random.key(0), family=family, num_steps=3, **KW)
    assert [mode for key, mode in driver.init_loop._decided.items() if key not in decided] == ["fast"]
    assert res.report.num_steps == 3 and np.all(np.isfinite(np.asarray(res.params.loc)))
