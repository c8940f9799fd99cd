"""`glm_exact`'s native CPU pass (advi_jax/models/_native/glm_exact_kernel.cc, advi_jax/vi/_glm_native.py).

Against the XLA pass (same rule: equal to rounding), autodiff of the exact objective (gradient and
Hessian in the mean), the adaptive rule's tiers, vmap, and a whole fit on either path.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import advi_jax as aj
from advi_jax.models import _native, logistic_regression, poisson_regression
from advi_jax.vi import _glm_native, glm_exact as G
from advi_jax.vi._glm_quad import data_constant, expected_log_lik_auto


def test_the_native_kernel_is_built_here():
    """CI machines have a C++ compiler: the exact pass's kernel must load, not silently fall back."""
    assert _native.available(), _native.reason()
    assert _glm_native.covers("logistic", jnp.float32, None, "auto")


def _model(kind, n, d, intercept, offset, dtype, scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, d)) * scale).astype(dtype)
    eta = x @ rng.normal(size=d) * 0.5 / np.sqrt(d) + 0.2
    if kind == "logistic":
        y = (rng.uniform(size=n) < 1 / (1 + np.exp(-eta))).astype(dtype)
        return logistic_regression(x, y, intercept=intercept)
    off = rng.normal(size=n).astype(dtype) * 0.3 if offset else None
    y = rng.poisson(np.exp(eta + (0 if off is None else off))).astype(dtype)
    return poisson_regression(x, y, offset=off, intercept=intercept)


def _point(k, dtype, sd, seed=1):
    rng = np.random.default_rng(seed)
    m = jnp.asarray(rng.normal(size=k) * 0.2, dtype)
    a = rng.normal(size=(k, k))
    cov = a @ a.T / k + 0.5 * np.eye(k)
    L = jnp.asarray(np.linalg.cholesky(cov) * sd, dtype)
    return m, L, jnp.asarray(np.sqrt(np.diag(cov)) * sd, dtype)


def _both(model, m, factor, meanfield, num_nodes):
    layout = G._layout(model)
    xla = jax.jit(lambda data, m, f: G._pass(layout, data, m, f, meanfield, num_nodes, 256))
    native = jax.jit(lambda data, m, f: _glm_native._ffi(layout, data, m, f, meanfield, num_nodes))
    return xla(model.data, m, factor), native(model.data, m, factor)


@pytest.mark.parametrize("kind", ["logistic", "poisson"])
@pytest.mark.parametrize("meanfield", [False, True])
@pytest.mark.parametrize("d, intercept, offset", [(1, True, False), (3, False, True), (10, True, True),
                                                  (13, False, False), (40, True, False)])
def test_native_pass_equals_the_xla_pass_float64(kind, meanfield, d, intercept, offset):
    """Same fixed rule on both paths: equal to float64 rounding. D covers the padded column blocks
    (K = 2, 3, 11, 13, 41), N = 1037 a last tile shorter than the others, with and without an intercept
    and an offset."""
    with jax.enable_x64(True):
        model = _model(kind, 1037, d, intercept, offset, np.float64)
        m, L, s = _point(model.dim, jnp.float64, 0.3)
        factor = s if meanfield else L
        (v0, g0, h0), (v1, g1, h1) = _both(model, m, factor, meanfield, 16)
        np.testing.assert_allclose(v1, v0, rtol=1e-11)
        np.testing.assert_allclose(g1, g0, rtol=1e-9, atol=1e-9 * float(jnp.max(jnp.abs(g0))))
        np.testing.assert_allclose(h1, h0, rtol=1e-9, atol=1e-9 * float(jnp.max(jnp.abs(h0))))
        np.testing.assert_allclose(h1, h1.T, rtol=0, atol=0)


@pytest.mark.parametrize("meanfield", [False, True])
@pytest.mark.parametrize("sd", [0.02, 0.4, 1.5, 4.0])
def test_native_adaptive_rule_float32_matches_xla(meanfield, sd):
    """The adaptive rule in float32 over the tiers (sd of eta from ~0.05 to ~15: 8, 32 and 128 nodes)
    agrees with the XLA pass to float32 rounding plus the rule's error bound."""
    model = _model("logistic", 3001, 10, True, False, np.float32)
    m, L, s = _point(model.dim, jnp.float32, sd)
    factor = s if meanfield else L
    (v0, g0, h0), (v1, g1, h1) = _both(model, m, factor, meanfield, None)
    np.testing.assert_allclose(v1, v0, rtol=2e-6)
    np.testing.assert_allclose(g1, g0, rtol=1e-3, atol=2e-5 * float(jnp.max(jnp.abs(g0))))
    np.testing.assert_allclose(h1, h0, rtol=1e-3, atol=2e-5 * float(jnp.max(jnp.abs(h0))))


@pytest.mark.parametrize("kind", ["logistic", "poisson"])
def test_native_pass_is_the_derivative_of_the_objective(kind):
    """g = d/dm sum_i psi_i and H = -d^2/dm^2 sum_i psi_i (Bonnet / Price: E[l''] = d^2 psi / d mu^2),
    by autodiff of the plain objective (XLA moments + the rule), float64. The pass's value leaves out
    the data-only -sum lgamma(y + 1) (Poisson), which `data_constant` restores exactly."""
    with jax.enable_x64(True):
        model = _model(kind, 517, 4, True, kind == "poisson", np.float64)
        m, L, _ = _point(model.dim, jnp.float64, 0.2)
        layout = G._layout(model)
        data = model.data

        def objective(mean):
            mu, var = G._moments(layout, data["x"], data.get("offset"), mean, L, False)
            return jnp.sum(expected_log_lik_auto(kind, data["y"], mu, var, 32)[0])

        value, g, h = jax.jit(lambda m_: _glm_native._ffi(layout, data, m_, L, False, 32))(m)
        # the autodiff references in one jitted program (run eagerly, op by op, they compiled
        # every operation of the value, gradient and Hessian on its own)
        ref = jax.jit(lambda m_: (objective(m_), jax.grad(objective)(m_), jax.hessian(objective)(m_)))(m)
        np.testing.assert_allclose(value + data_constant(kind, data["y"]), ref[0], rtol=1e-11)
        np.testing.assert_allclose(g, ref[1], rtol=1e-8, atol=1e-9)
        np.testing.assert_allclose(h, -ref[2], rtol=1e-6, atol=1e-7)


def test_native_pass_under_vmap_equals_separate_calls():
    model = _model("logistic", 700, 5, True, False, np.float32)
    layout = G._layout(model)
    ms = jnp.stack([_point(model.dim, jnp.float32, 0.3, seed=s)[0] for s in range(3)])
    L = _point(model.dim, jnp.float32, 0.3)[1]
    batched = jax.jit(jax.vmap(lambda m_: _glm_native._ffi(layout, model.data, m_, L, False, None)))(ms)
    for i in range(3):
        one = _glm_native._ffi(layout, model.data, ms[i], L, False, None)
        for a, b in zip(batched, one):
            np.testing.assert_allclose(a[i], b, rtol=1e-6)


@pytest.mark.parametrize("family", [aj.FullRankGaussian(), aj.MeanFieldGaussian()])
def test_fit_on_the_native_path_equals_the_xla_path(family):
    """A whole glm_exact fit (init + steps to convergence), float64, on each path: the same optimum."""
    with jax.enable_x64(True):
        model = _model("logistic", 2000, 6, True, False, np.float64)
        out = {}
        for kernel in ("native", "xla"):
            alg = G.build(model, family, G.Options(kernel=kernel, tol=1e-12))
            state = alg.init(jax.random.key(0), jnp.zeros(model.dim))
            step = jax.jit(alg.step)
            for _ in range(40):
                state, info = step(jax.random.key(0), state)
                if bool(info.converged):
                    break
            assert bool(info.converged)
            out[kernel] = (np.asarray(state.loc), np.sqrt(np.asarray(family.variance(alg.params(state)))))
        (m0, s0), (m1, s1) = out["xla"], out["native"]
        assert np.max(np.abs(m1 - m0) / s0) < 1e-6
        assert np.max(np.abs(s1 / s0 - 1)) < 1e-6


def test_kernel_option_is_validated():
    model = _model("logistic", 50, 2, True, False, np.float32)
    with pytest.raises(ValueError, match="options.kernel"):
        G.build(model, aj.FullRankGaussian(), G.Options(kernel="gpu"))
    with pytest.raises(ValueError, match="num_nodes"):
        G.build(model, aj.FullRankGaussian(), G.Options(kernel="native", num_nodes=7))


@pytest.mark.parametrize("sd", [0.05, 0.2, 0.5])
def test_native_adaptive_rule_is_within_its_error_bound_of_200_nodes(sd):
    """The tier the kernel picks per tile (8 / 32 / 128 nodes by the largest sd of eta there: here up
    to 0.39, 1.6 and 3.9) keeps the pass within the measured error bound of a 200-node rule (float64,
    measured 1e-11 or less relative); a tier picked one too low errs by 1e-7 or more."""
    with jax.enable_x64(True):
        model = _model("logistic", 1037, 10, True, False, np.float64)
        layout = G._layout(model)
        m, L, _ = _point(model.dim, jnp.float64, sd)
        adaptive = _glm_native._ffi(layout, model.data, m, L, False, None)
        exact = _glm_native._ffi(layout, model.data, m, L, False, 200)
        np.testing.assert_allclose(adaptive[0], exact[0], rtol=1e-10)
        np.testing.assert_allclose(adaptive[1], exact[1], rtol=0, atol=1e-8 * float(jnp.max(jnp.abs(exact[1]))))
        np.testing.assert_allclose(adaptive[2], exact[2], rtol=0, atol=1e-8 * float(jnp.max(jnp.abs(exact[2]))))


def test_native_data_constant_equals_the_sum_of_log_factorials():
    """The kernel's vectorised sum of lgamma(y + 1) (shift below 16, Stirling above, its own log) equals
    a float64 sum of math.lgamma over integers and non-integers on both sides of the shift, float64
    and float32, under jit."""
    import math

    rng = np.random.default_rng(3)
    y = np.concatenate([np.arange(0.0, 40.0), rng.poisson(3.0, 3000), rng.uniform(0.0, 40.0, 2000),
                        [15.999, 16.0, 16.001, 1e5 + 0.25, 1e9]])
    exact = -math.fsum(math.lgamma(v + 1.0) for v in y)
    with jax.enable_x64(True):
        f64 = jax.jit(lambda y_: _glm_native.data_constant("negbin", y_, jnp.float64))(jnp.asarray(y))
        np.testing.assert_allclose(float(f64), exact, rtol=1e-14)
        for v in (0.0, 0.5, 15.0, 16.0, 100.5):  # per element too (a shift error would hide in a big sum)
            one = _glm_native.data_constant("poisson", jnp.asarray([v]), jnp.float64)
            np.testing.assert_allclose(-float(one), math.lgamma(v + 1.0), rtol=1e-14, atol=1e-14)
    y32 = y[:-1].astype(np.float32)
    exact32 = -math.fsum(math.lgamma(float(v) + 1.0) for v in y32)
    f32 = jax.jit(lambda y_: _glm_native.data_constant("poisson", y_, jnp.float32))(jnp.asarray(y32))
    np.testing.assert_allclose(float(f32), exact32, rtol=1e-7)
    assert float(_glm_native.data_constant("logistic", jnp.asarray(y32), jnp.float32)) == 0.0
