"""The negative binomial's dispersion term D(y, phi) = lgamma(y + phi) - lgamma(phi) - y log phi: its
hand-written derivative in phi (`_glm_lik.rising_ratio_dphi`, used by the exact-ELBO fits through
`_glm_lik._rising_ratio`'s custom JVP instead of autodiff of `betaln`).

Checks: the derivative equals SciPy's digamma difference (float64) over counts 1..1000 and phi from
1e-3 to 100, and the phi >> y^2 branch's closed form; the custom JVP keeps `log_rising_ratio`'s values
bit for bit and its gradient is the derivative; the quadrature's gradient in (m_w, v_w) equals the
rule applied to the exact derivative; a derivative in the counts is refused.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import digamma as scipy_digamma

from advi_jax.models.glm_more import log_rising_ratio
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
    y, phi = 3.0, 1e4 * 4.0 ** 2 * 2  # beyond log_rising_ratio's phi > 1e4 (y + 1)^2 switch
    assert float(L.rising_ratio_dphi(jnp.asarray(y), jnp.asarray(phi))) == pytest.approx(-0.5 * y * (y - 1) / phi ** 2,
                                                                                          rel=1e-14)
    # D(1, phi) = 0 for every phi: its derivative is 0 to rounding of the Stirling form
    phis = jnp.asarray([10.0, 1e2, 1e3, 3e4])
    assert np.max(np.abs(np.asarray(L.rising_ratio_dphi(jnp.ones(4), phis)) * np.asarray(phis))) < 1e-12


def test_custom_jvp_values_and_gradient():
    y, phi = (jnp.asarray(a) for a in _grid())
    assert np.array_equal(np.asarray(L._rising_ratio(y, phi)), np.asarray(log_rising_ratio(y, phi)))
    grad = jax.vmap(jax.vmap(jax.grad(L._rising_ratio, 1)))(y, phi)
    np.testing.assert_array_equal(np.asarray(grad), np.asarray(L.rising_ratio_dphi(y, phi)))
    with pytest.raises(TypeError, match="counts"):
        jax.grad(L._rising_ratio, 0)(jnp.asarray(2.0), jnp.asarray(3.0))


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
