"""Tests of the ADVI change of variables (`Model`) and of the supports it flattens.

The central check: for a normalised prior p on a constrained support, the flattened density
`log p(T^{-1}(zeta)) + log|det J_{T^{-1}}(zeta)|` integrates to 1 over R^K. Importance sampling
with a Student-t proposal estimates log Z, which must be 0 within a few Monte Carlo standard
errors (forgetting the Jacobian, or getting it wrong by a constant, shifts log Z far outside).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy import stats

import advi_jax as aj
from advi_jax.bijectors import Joint

import numpyro.distributions as dist  # noqa: E402


def _gamma(p):
    return stats.gamma.logpdf(p["s"], 3.0, scale=0.5)


def _beta_on_interval(p):
    # y = -1 + 4 u with u ~ Beta(2, 5): density Beta(u) / 4
    return stats.beta.logpdf((p["y"] + 1.0) / 4.0, 2.0, 5.0) - jnp.log(4.0)


def _dirichlet(p):
    return dist.Dirichlet(jnp.array([2.0, 3.0, 4.0])).log_prob(p["w"])


def _dirichlet_batch(p):
    conc = jnp.array([[2.0, 3.0, 4.0], [1.5, 1.0, 5.0]])
    return jnp.sum(jax.vmap(lambda c, w: dist.Dirichlet(c).log_prob(w))(conc, p["w"]))


def _lkj(p):
    return dist.LKJCholesky(3, concentration=2.0).log_prob(p["L"])


NORMALISED = {
    "gamma_positive": (_gamma, {"s": aj.positive()}),
    "beta_interval": (_beta_on_interval, {"y": aj.interval(-1.0, 3.0)}),
    "dirichlet_simplex": (_dirichlet, {"w": aj.simplex(3)}),
    "dirichlet_batch": (_dirichlet_batch, {"w": aj.simplex(3, batch_shape=(2,))}),
    "lkj_corr_cholesky": (_lkj, {"L": aj.corr_cholesky(3)}),
}


@pytest.mark.parametrize("name", list(NORMALISED))
def test_flattened_density_integrates_to_one(name, key):
    log_joint, support = NORMALISED[name]
    num = 20000
    df, scale = 5.0, 1.2
    with jax.enable_x64(True):
        model = aj.Model(log_joint, support)

        @jax.jit
        def log_weights(k):
            zeta = scale * jax.random.t(k, df, (num, model.dim), jnp.float64)
            log_q = jnp.sum(stats.t.logpdf(zeta / scale, df) - jnp.log(scale), axis=-1)
            return jax.vmap(model.log_density)(zeta) - log_q

        log_w = np.asarray(log_weights(jax.random.fold_in(key, len(name))))
    assert np.all(np.isfinite(log_w))
    w = np.exp(log_w - log_w.max())
    log_z = np.log(w.mean()) + log_w.max()
    se = w.std() / (w.mean() * np.sqrt(num))  # delta-method standard error of log Z
    assert se < 0.05, f"proposal too poor for a meaningful check (se={se})"
    assert abs(log_z) < 4 * se + 1e-3, f"log Z = {log_z:.4f} +- {se:.4f}, expected 0"


def _mixed_model():
    support = {
        "mu": aj.real((2,)),
        "sigma": aj.positive(),
        "y": aj.interval(jnp.array([-1.0, 0.0]), jnp.array([1.0, 5.0])),
        "w": aj.simplex(3, batch_shape=(2,)),
        "o": aj.ordered(3),
        "po": aj.positive_ordered(2),
        "z": aj.sum_to_zero(3),
        "L": aj.corr_cholesky(3),
        "C": aj.corr_matrix(3),
        "S": aj.cov_matrix(2),
        "F": aj.cholesky_cov(2, batch_shape=(2,)),
    }

    def log_joint(p):
        return (-0.5 * jnp.sum(p["mu"] ** 2) - p["sigma"] + jnp.sum(jnp.log(p["w"]))
                - 0.5 * jnp.sum(p["o"] ** 2) + jnp.sum(jnp.log(p["L"][jnp.diag_indices(3)]))
                - jnp.trace(p["S"]) - 0.5 * jnp.sum(p["F"] ** 2))

    return aj.Model(log_joint, support)


MODEL = _mixed_model()


def test_model_layout_uses_joint():
    m = MODEL
    assert isinstance(m.bijector, Joint)
    assert m.dim == m.bijector.dim == 2 + 1 + 2 + 4 + 3 + 2 + 2 + 3 + 3 + 3 + 6
    shapes = m.bijector.forward_shape((m.dim,))
    assert shapes == {n: s.shape for n, s in m.support.items()}


def test_round_trip_vmap_and_gradient(key):
    m = MODEL
    # eager round trip: to_unconstrained checks the concrete values against the supports
    zeta = jax.random.normal(jax.random.fold_in(key, 1), (m.dim,))
    np.testing.assert_allclose(m.to_unconstrained(_to_constrained(zeta)), zeta, rtol=2e-3, atol=2e-3)
    with jax.enable_x64(True):
        zetas = jax.random.normal(key, (4, m.dim), jnp.float64)
        back = jax.jit(jax.vmap(lambda z: m.to_unconstrained(m.to_constrained(z))))(zetas)
        np.testing.assert_allclose(back, zetas, rtol=1e-8, atol=1e-9)
        batched = jax.jit(jax.vmap(m.log_density))(zetas)
        single = jax.jit(m.log_density)
        np.testing.assert_allclose(batched, [single(z) for z in zetas], rtol=1e-12)
        grads = jax.jit(jax.vmap(jax.grad(m.log_density)))(jnp.concatenate([zetas, 5.0 * zetas]))
        assert grads.shape == (8, m.dim) and np.all(np.isfinite(grads))


_to_constrained = jax.jit(MODEL.to_constrained)


def test_model_is_a_pytree_argument():
    m = _mixed_model()
    out = jax.jit(lambda model, z: model.log_density(z))(m, jnp.zeros(m.dim))
    assert np.isfinite(out)


def test_batch_shape_supports():
    s = aj.simplex(3, batch_shape=(2,))
    assert s.shape == (2, 3) and s.event_shape == (3,) and s.unconstrained_size == 4
    m = aj.Model(lambda p: 0.0, {"w": s, "L": aj.corr_cholesky(2, batch_shape=(3,))})
    assert m.dim == 4 + 3
    p = m.to_constrained(jnp.linspace(-1.0, 1.0, m.dim))
    assert p["w"].shape == (2, 3) and p["L"].shape == (3, 2, 2)
    np.testing.assert_allclose(p["w"].sum(-1), 1.0, rtol=1e-6)
    assert aj.cov_cholesky is aj.cholesky_cov


@pytest.mark.parametrize("ctor", [aj.simplex, aj.ordered, aj.positive_ordered, aj.sum_to_zero, aj.corr_cholesky,
                                  aj.corr_matrix, aj.cholesky_cov, aj.cov_matrix])
def test_constructor_arguments_are_validated(ctor):
    with pytest.raises(ValueError, match="K must be an int >= 2"):
        ctor(1)
    with pytest.raises(TypeError, match="K must be an int"):
        ctor(3.0)
    with pytest.raises(ValueError, match="batch_shape"):
        ctor(3, batch_shape=(-1,))
    assert ctor(3, batch_shape=(2,)).batch_shape == (2,)


def test_interval_bound_errors():
    with pytest.raises(ValueError, match="low < high"):
        aj.interval(1.0, 0.0)
    with pytest.raises(ValueError, match="low < high"):
        aj.interval(jnp.array([0.0, 2.0]), jnp.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="high must be finite"):
        aj.interval(0.0, jnp.inf)
    with pytest.raises(ValueError, match="low must be finite"):
        aj.interval(jnp.nan, 1.0)


BAD_VALUES = {
    "w": jnp.array([[0.2, 0.3, 0.5], [0.5, 0.6, -0.1]]),  # negative entry
    "w_sum": jnp.array([[0.5, 0.6, 0.1], [0.2, 0.3, 0.5]]),  # sums to 1.2
    "o": jnp.array([1.0, 0.5, 2.0]),                  # not increasing
    "po": jnp.array([-1.0, 2.0]),                     # negative first entry
    "z": jnp.array([1.0, 1.0, -1.0]),                 # does not sum to 0
    "L": jnp.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]),  # row norm != 1
    "C": jnp.array([[1.0, 0.9, 0.0], [0.9, 1.0, 0.9], [0.0, 0.9, 1.0]]),  # not positive definite
    "S": jnp.array([[1.0, 0.2], [0.3, 1.0]]),         # not symmetric
    "F": jnp.array([[[1.0, 0.0], [0.3, -1.0]], [[1.0, 0.0], [0.0, 1.0]]]),  # negative diagonal
    "sigma": jnp.array(-1.0),
    "y": jnp.array([0.0, 6.0]),                       # above its upper bound 5
}


@pytest.mark.parametrize("bad", list(BAD_VALUES))
def test_value_outside_support_names_the_parameter(bad):
    m = MODEL
    name = bad.split("_")[0]
    good = _to_constrained(jnp.zeros(m.dim))
    assert np.all(np.isfinite(m.to_unconstrained(good)))
    with pytest.raises(ValueError, match=f"'{name}' is outside its support"):
        m.to_unconstrained({**good, name: BAD_VALUES[bad]})


def test_shape_and_name_errors():
    m = MODEL
    good = _to_constrained(jnp.zeros(m.dim))
    with pytest.raises(ValueError, match="'w' must have shape \\(2, 3\\)"):
        m.to_unconstrained({**good, "w": jnp.ones(3) / 3})
    with pytest.raises(ValueError, match="missing \\['S'\\]"):
        m.to_unconstrained({k: v for k, v in good.items() if k != "S"})
    with pytest.raises(ValueError, match="zeta must have shape"):
        m.log_density(jnp.zeros(m.dim + 1))
    with pytest.raises(TypeError, match="support for 'x'"):
        aj.Model(lambda p: 0.0, {"x": "positive"})


def test_public_names_resolve_and_are_sorted():
    assert list(aj.__all__) == sorted(aj.__all__)
    for name in aj.__all__:
        assert getattr(aj, name) is not None
    for name in aj.bijectors.__all__:
        assert getattr(aj.bijectors, name) is not None
