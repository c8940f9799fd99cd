"""The negative binomial's dispersion term D(y, phi) = lgamma(y + phi) - lgamma(phi) - y log phi: its value
(`glm_more.log_rising_ratio`) and its hand-written derivative in phi (`glm_more.rising_ratio_dphi`), used by
the exact-ELBO fits through `_glm_lik.expected_rising`'s custom JVP instead of autodiff of the value.

Checks: the value equals the exact sum sum_{k<y} log1p(k / phi) over counts 0..1e4 and phi from 1e-3 to 1e8
(float64, 1e-12 (1 + |D|)); the integral of the derivative over each step of that grid equals the value's
difference (value and derivative consistent to rounding; the earlier `betaln` value disagreed by 1e-6);
the derivative equals SciPy's digamma difference (float64) over counts 1..1000 and phi from 1e-3 to 100,
and the exact sum -sum_{k<y} k / (phi (phi + k)) for phi >> y^2; value and gradient finite at extreme
inputs in float32 and float64; `expected_rising`'s custom JVP keeps the rule's values of `log_rising_ratio` bit for
bit and its tangent is the rule applied to the derivative; the quadrature's gradient in (m_w, v_w) equals the rule applied to the exact derivative;
a derivative in the counts is refused.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import digamma as scipy_digamma

from advi_jax.models.glm_more import log_rising_ratio, rising_ratio_dphi
from advi_jax.vi import _glm_lik as L
from advi_jax.vi._glm_quad import quadrature


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _grid():
    ys = np.concatenate([np.arange(1.0, 41.0), [100.0, 300.0, 1000.0]])
    phis = np.exp(np.linspace(np.log(1e-3), np.log(100.0), 801))
    return np.meshgrid(ys, phis, indexing="ij")


def test_derivative_matches_digamma_difference():
    y, phi = _grid()
    exact = scipy_digamma(y + phi) - scipy_digamma(phi) - y / phi
    got = np.asarray(L.rising_ratio_dphi(jnp.asarray(y), jnp.asarray(phi)))
    # in units of the terms (phi dD/dphi is of order y): measured 1.2e-13
    assert np.max(np.abs(got - exact) * phi / y) < 1e-11
    # the branch switch at phi = 10 is continuous to that precision
    at = np.asarray(L.rising_ratio_dphi(jnp.asarray(5.0), jnp.asarray([10.0 - 1e-12, 10.0])))
    assert abs(at[0] - at[1]) < 1e-12  # the true change over 1e-12 is 1.4e-14


def test_derivative_branches_zero_count_and_large_phi():
    assert float(L.rising_ratio_dphi(jnp.asarray(0.0), jnp.asarray(3.0))) == 0.0
    for y, phi in ((3.0, 3.2e5), (3.0, 1e12), (40.0, 1e7)):  # phi >> y^2: -y (y - 1) / (2 phi^2) to leading order
        exact = -sum(k / (phi * (phi + k)) for k in range(int(y)))
        assert float(L.rising_ratio_dphi(jnp.asarray(y), jnp.asarray(phi))) == pytest.approx(exact, rel=1e-13, abs=0.0)
    # D(1, phi) = 0 for every phi: its derivative is 0 to rounding of the Stirling form
    phis = jnp.asarray([10.0, 1e2, 1e3, 3e4])
    assert np.max(np.abs(np.asarray(L.rising_ratio_dphi(jnp.ones(4), phis)) * np.asarray(phis))) < 1e-12


def test_custom_jvp_values_and_gradient():
    """`expected_rising`'s value is the rule applied to `log_rising_ratio`, its JVP the rule applied to the
    written derivative (one contraction: equal to rounding); a tangent in the counts is refused."""
    y = jnp.asarray([0.0, 1.0, 3.0, 9.0, 40.0, 300.0])
    m_w, v_w = jnp.asarray([-5.0, 0.2, 2.2, 2.4, 9.0, 1.0]), jnp.asarray([0.04, 0.3, 0.01, 1.0, 0.2, 2.5])
    t, w = (a[None, :] for a in quadrature(L.OMEGA_NODE_TIERS[0][1], jnp.float64))
    phi = jnp.exp(m_w[:, None] + jnp.sqrt(v_w)[:, None] * t)
    assert np.array_equal(np.asarray(L.expected_rising(y, m_w, v_w)),
                          np.asarray(jnp.sum(w * log_rising_ratio(y[:, None], phi), axis=-1)))
    dm, dv = jnp.asarray([1.0, -2.0, 0.5, 1.0, 3.0, 0.1]), jnp.asarray([0.3, 1.0, -1.0, 2.0, 0.0, 1.0])
    _, tangent = jax.jvp(lambda a, b: L.expected_rising(y, a, b), (m_w, v_w), (dm, dv))
    slope = phi * rising_ratio_dphi(y[:, None], phi)
    want = np.sum(w * slope * (dm[:, None] + t * dv[:, None] / (2 * jnp.sqrt(v_w)[:, None])), axis=-1)
    np.testing.assert_allclose(np.asarray(tangent), want, rtol=1e-13, atol=1e-13)
    with pytest.raises(TypeError, match="counts"):
        jax.grad(L.expected_rising, 0)(jnp.asarray(2.0), jnp.asarray(0.3), jnp.asarray(0.1))


def test_quadrature_gradient_in_moments():
    counts = jnp.asarray([0.0, 1.0, 2.0, 7.0, 8.0, 9.0, 30.0, 200.0])
    mult = jnp.asarray([5, 9, 4, 3, 2, 2, 1, 1], jnp.int32)
    data = {"y_distinct": counts, "y_count": mult}
    m_w, v_w = 0.7, 0.09
    g_m, g_v = jax.grad(lambda a, b: L.distinct_dispersion(data, a, b), (0, 1))(jnp.asarray(m_w), jnp.asarray(v_w))
    t, w = (np.asarray(a) for a in quadrature(L.OMEGA_NODE_TIERS[0][1], jnp.float64))
    phi = np.exp(m_w + np.sqrt(v_w) * t)[None, :]
    y = np.asarray(counts)[:, None]
    d_omega = np.where(y > 0, phi * (scipy_digamma(y + phi) - scipy_digamma(phi) - y / phi), 0.0)
    n = np.asarray(mult, float)[:, None]
    assert float(g_m) == pytest.approx(np.sum(n * w * d_omega), rel=1e-11)
    assert float(g_v) == pytest.approx(np.sum(n * w * d_omega * t / (2 * np.sqrt(v_w))), rel=1e-10)


def _exact_d(ys, phis):
    """D(y, phi) = sum_{k<y} log1p(k / phi) for each y in `ys` (integers) and phi in `phis`: eps-accurate terms."""
    return np.stack([np.sum(np.log1p(np.arange(int(y))[:, None] / phis[None, :]), axis=0) for y in ys])


_YS = np.unique(np.concatenate([np.arange(0.0, 41.0), np.round(np.exp(np.linspace(np.log(41.0), np.log(1e4), 25)))]))
_PHIS = np.exp(np.linspace(np.log(1e-3), np.log(1e8), 301))


def test_value_matches_exact_sum():
    y, phi = np.meshgrid(_YS, _PHIS, indexing="ij")
    exact = _exact_d(_YS, _PHIS)
    got = np.asarray(log_rising_ratio(jnp.asarray(y), jnp.asarray(phi)))
    # measured 1.0e-14 (the earlier betaln form: 1.1e-6 at y = 2, phi = 8; SciPy's gammaln difference 3e-7 at 1e8)
    assert np.max(np.abs(got - exact) / (1.0 + np.abs(exact))) < 1e-12
    assert np.all(got[_YS == 0] == 0.0) and np.max(np.abs(got[_YS == 1])) < 1e-14  # D(0, .) = D(1, .) = 0


def test_value_and_derivative_consistent():
    """The integral of dD/dphi over each step of the phi grid (40-point Gauss-Legendre, exact for this smooth
    integrand) equals the value's difference over the step, to the value's rounding."""
    x, w = np.polynomial.legendre.leggauss(40)
    lo, hi = _PHIS[:-1], _PHIS[1:]
    pts = 0.5 * (lo + hi)[:, None] + 0.5 * (hi - lo)[:, None] * x  # (steps, 40)
    ys = jnp.asarray(_YS)[:, None, None]
    integral = np.sum(np.asarray(rising_ratio_dphi(ys, jnp.asarray(pts)[None])) * w, axis=-1) * 0.5 * (hi - lo)
    d = np.asarray(log_rising_ratio(jnp.asarray(_YS)[:, None], jnp.asarray(_PHIS)[None, :]))
    scale = 1.0 + np.abs(d[:, 1:]) + np.abs(d[:, :-1])
    # measured 4.6e-15 (the betaln value against this derivative: ~1e-6, near phi = 8)
    assert np.max(np.abs(integral - (d[:, 1:] - d[:, :-1])) / scale) < 1e-12
    # and autodiff of the value (the NB model's log density differentiates it) is the written derivative
    yy, pp = np.meshgrid(_YS, _PHIS, indexing="ij")
    auto = jax.jit(jax.vmap(jax.grad(log_rising_ratio, 1)))(jnp.asarray(yy.ravel()), jnp.asarray(pp.ravel()))
    written = np.asarray(rising_ratio_dphi(jnp.asarray(yy.ravel()), jnp.asarray(pp.ravel())))
    assert np.max(np.abs(np.asarray(auto) - written) * pp.ravel() / np.maximum(yy.ravel(), 1.0)) < 1e-12


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_finite_at_extreme_inputs(dtype):
    info = jnp.finfo(dtype)
    y = jnp.asarray([0.0, 1.0, 2.0, 7.0, 300.0, 1e4, 1e6], dtype)[:, None]
    phi = jnp.asarray([float(info.tiny), 1e-30, 1e-3, 10.0, 1e8, 1e20, float(info.max), np.inf], dtype)[None, :]
    value = jax.jit(log_rising_ratio)(y, phi)
    assert value.dtype == dtype and bool(jnp.all(jnp.isfinite(value)))
    assert bool(jnp.all(value[0] == 0.0)) and bool(jnp.all(value[:, -1] == 0.0))  # y = 0; phi = inf (Poisson)
    # the derivative in omega = log phi, as the fits take it: phi dD/dphi -> -(y - 1) as phi -> 0, 0 as phi -> inf;
    # written, and by autodiff of the value (the NB model's log density)
    omega = jnp.asarray([-60.0, -7.0, 0.0, 2.3, 18.0, 46.0, 85.0], dtype)[None, :]
    yb, ob = jnp.broadcast_arrays(y, omega)
    written = jax.jit(lambda a, b: jnp.exp(b) * rising_ratio_dphi(a, jnp.exp(b)))(yb, ob)
    auto = jax.jit(jax.vmap(jax.vmap(jax.grad(lambda a, b: log_rising_ratio(a, jnp.exp(b)), 1))))(yb, ob)
    for g in (written, auto):
        assert g.dtype == dtype and bool(jnp.all(jnp.isfinite(g)))
        assert float(g[3, 0]) == pytest.approx(-6.0, rel=1e-5) and abs(float(g[3, -1])) < 1e-30
    # the fits' expectation over omega and its gradient in (m_w, v_w), at extreme means
    m_w = jnp.asarray([-60.0, -7.0, 0.0, 2.3, 18.0, 46.0, 75.0], dtype)
    grads = jax.jit(jax.vmap(jax.grad(lambda a, b, c: L.expected_rising(a, b, c), (1, 2)), (0, None, None)))
    for m in m_w:
        g_m, g_v = grads(y[:, 0], m, jnp.asarray(0.01, dtype))
        assert bool(jnp.all(jnp.isfinite(g_m))) and bool(jnp.all(jnp.isfinite(g_v)))
