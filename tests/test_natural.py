"""The natural-gradient preconditioner of the averaged ADVI (`advi_jax.vi._natural`): the closed
form equals F^-1 grad for the Gaussian family's Fisher computed by autodiff, the STL directions
equal the autodiff STL gradient put through it, and the averaged run recovers an exact Gaussian."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import advi_jax as aj
from advi_jax.vi._advi_averaged import averaged_params
from advi_jax.vi._natural import _directions, antithetic_noise, natural_directions, natural_gradient, square_control
from advi_jax.vi.advi import AutoStop, advi_averaged

K = 3
ROWS, COLS = np.tril_indices(K)


def _random_q(seed):
    rng = np.random.default_rng(seed)
    c = np.tril(rng.normal(size=(K, K)) * 0.4)
    c[np.diag_indices(K)] = rng.uniform(0.5, 1.5, K)
    return jnp.asarray(rng.normal(size=K), jnp.float32), jnp.asarray(c, jnp.float32)


def _unpack(theta):
    return theta[:K], jnp.zeros((K, K), theta.dtype).at[ROWS, COLS].set(theta[K:])


def _kl(theta0, theta):
    """KL(q_theta0 || q_theta) of two Gaussians in (mean, Cholesky lower triangle) coordinates."""
    m0, c0 = _unpack(theta0)
    m, c = _unpack(theta)
    a = jax.scipy.linalg.solve_triangular(c, c0, lower=True)
    b = jax.scipy.linalg.solve_triangular(c, m - m0, lower=True)
    return 0.5 * (jnp.sum(a ** 2) + jnp.sum(b ** 2) - K) + jnp.sum(jnp.log(jnp.abs(jnp.diagonal(c)))) - jnp.sum(
        jnp.log(jnp.abs(jnp.diagonal(c0))))


@pytest.mark.parametrize("seed", [0, 1])
def test_closed_form_equals_the_inverse_fisher_times_the_gradient(seed):
    loc, c = _random_q(seed)
    theta0 = jnp.concatenate([loc, c[ROWS, COLS]])
    # The Fisher information is the Hessian of KL(q0 || q) at q = q0.
    fisher = np.asarray(jax.hessian(lambda t: _kl(theta0, t))(theta0), np.float64)
    rng = np.random.default_rng(10 + seed)
    grad = rng.normal(size=theta0.shape[0])
    expected = np.linalg.solve(fisher, grad)
    g_m, g_c = _unpack(jnp.asarray(grad, jnp.float32))
    got_m, got_c = natural_gradient(c, g_m, g_c + jnp.triu(jnp.ones((K, K)), 1))  # the upper part is ignored
    got = np.concatenate([np.asarray(got_m), np.asarray(got_c)[ROWS, COLS]])
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-4)
    # and it is not the plain gradient (the test can tell them apart)
    assert np.max(np.abs(got - grad)) > 0.1


def test_stl_directions_equal_the_autodiff_stl_gradient_through_the_closed_form():
    loc, c = _random_q(2)
    target_mean = jnp.array([0.3, -1.0, 2.0])

    def log_p(z):  # not Gaussian, so that the STL gradient is not zero
        return -0.5 * jnp.sum((z - target_mean) ** 2) - 0.1 * jnp.sum(z ** 4)

    eps = jax.random.normal(jax.random.key(0), (6, K))

    def stl_elbo(m, cc):
        cc = jnp.tril(cc)
        zeta = m[None, :] + eps @ cc.T
        frozen = jax.lax.stop_gradient((m, cc))
        diff = jax.scipy.linalg.solve_triangular(frozen[1], (zeta - frozen[0][None, :]).T, lower=True).T
        log_q = -0.5 * jnp.sum(diff ** 2, axis=1) - jnp.sum(jnp.log(jnp.diagonal(frozen[1])))
        return jnp.mean(jax.vmap(log_p)(zeta) - log_q)

    g_m, g_c = jax.grad(stl_elbo, argnums=(0, 1))(loc, c)
    nat_m, nat_c = natural_gradient(c, g_m, g_c)
    elbo, mean_dir, x, finite = natural_directions(log_p, loc, c, eps, symmetric=False)
    assert bool(finite)
    np.testing.assert_allclose(np.asarray(c @ mean_dir), np.asarray(nat_m), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(c @ x), np.asarray(nat_c), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(elbo), float(stl_elbo(loc, c)) + 0.5 * K * np.log(2 * np.pi), rtol=1e-5)


def test_the_symmetrised_factor_direction_is_unbiased():
    """E[u eps^T] = I + C^T E[Hessian] C is symmetric (Stein's lemma), so the symmetric part used by
    default estimates the same X: checked on a non-Gaussian target with 400,000 draws, where the raw
    estimate's asymmetry is within its Monte Carlo error and the two agree to it."""
    loc, c = _random_q(3)

    def log_p(z):
        return -0.5 * jnp.sum(z ** 2) - 0.1 * jnp.sum(z ** 4) + 0.3 * z[0] * z[1] ** 2

    eps = jax.random.normal(jax.random.key(4), (400_000, K))
    _, _, raw, _ = natural_directions(log_p, loc, c, eps, symmetric=False)
    _, _, sym, _ = natural_directions(log_p, loc, c, eps)
    np.testing.assert_allclose(np.asarray(sym), np.asarray(raw), atol=0.03)
    assert np.max(np.abs(np.asarray(raw))) > 0.3  # far from zero: the comparison is not trivial


COV = np.array([[2.0, 0.6, 0.1], [0.6, 1.0, -0.3], [0.1, -0.3, 0.5]])
MEAN = np.array([5.0, -3.0, 0.5])


@pytest.mark.parametrize("control_rate", [0.0, 0.01])
def test_the_natural_averaged_run_recovers_an_exact_gaussian(control_rate):
    precision = jnp.asarray(np.linalg.inv(COV), jnp.float32)
    mean = jnp.asarray(MEAN, jnp.float32)
    model = aj.Model(lambda p: -0.5 * (p["x"] - mean) @ precision @ (p["x"] - mean), {"x": aj.real((3,))})
    stop = AutoStop(preconditioner="natural", learning_rate=0.05, control_rate=control_rate)
    init, step = advi_averaged(model, "fullrank", stop=stop, num_samples=4, estimator="stl", init_scale=0.1)
    family = aj.FullRankGaussian()

    @jax.jit
    def run(key):
        state = init(key, jnp.zeros(3))  # 2-5 sd from the mean, 10x too narrow

        def body(s, i):
            s, info = step(jax.random.fold_in(key, i), s)
            return s, info.converged

        return jax.lax.scan(body, state, jnp.arange(1500))

    state, converged = run(jax.random.key(0))
    assert bool(np.any(np.asarray(converged)))
    params = averaged_params(family)(state)
    np.testing.assert_allclose(np.asarray(family.mean(params)), MEAN, atol=1e-2 * np.sqrt(COV.diagonal()).max())
    np.testing.assert_allclose(np.asarray(family.covariance(params)), COV, atol=1e-2)
    assert int(state.clipped_steps) < 50  # the guard acts only during the transit, if at all


def test_natural_needs_the_fullrank_family_and_stl():
    model = aj.Model(lambda p: -0.5 * jnp.sum(p["x"] ** 2), {"x": aj.real((2,))})
    with pytest.raises(ValueError, match="fullrank"):
        advi_averaged(model, "meanfield", stop=AutoStop(preconditioner="natural"), estimator="stl")
    with pytest.raises(ValueError, match="estimator must be 'stl'"):
        advi_averaged(model, "fullrank", stop=AutoStop(preconditioner="natural"), estimator="reparam")
    with pytest.raises(ValueError, match="preconditioner"):
        advi_averaged(model, "fullrank", stop=AutoStop(preconditioner="newton"), estimator="stl")
    with pytest.raises(ValueError, match="control_rate"):
        advi_averaged(model, "fullrank", stop=AutoStop(control_rate=0.01), estimator="stl")  # Adam
    with pytest.raises(ValueError, match="control_rate"):
        advi_averaged(model, "fullrank", stop=AutoStop(preconditioner="natural", control_rate=-0.1), estimator="stl")


HUB_K = 12


def _hub_log_p(z):
    """A non-centred hierarchical shape: a scale coordinate z[0] and HUB_K - 1 effects whose
    curvature it sets (third derivatives T_0jj along every effect: the noise the variate is for)."""
    a = z[1:] * jnp.exp(0.4 * z[0])
    return -0.5 * z[0] ** 2 - 0.5 * jnp.sum(z[1:] ** 2) - 0.5 * jnp.sum((a - 0.3) ** 2)


def test_the_quadratic_control_variate_keeps_the_expectation_and_cuts_the_variance():
    """Monte Carlo over 4,000 independent 4-draw steps (antithetic pairs) at a q near the hub target's
    optimum: the mean direction with the variate has the plain one's expectation (every coordinate
    within 4.5 standard errors of the paired difference) and a much smaller variance (the scale's
    coordinate and the total, at least 4x), with coefficients estimated from other draws."""
    k = HUB_K
    loc = jnp.zeros(k).at[0].set(-0.3)
    c = jnp.diag(jnp.full(k, 0.8)).at[0, 0].set(0.9)
    # the coefficients: from 20,000 separate draws, averaged as the averaged ADVI does (independent)
    fit_eps = antithetic_noise(jax.random.key(1), 20_000, k, jnp.float32)
    _, u_fit, _, _ = _directions(_hub_log_p, loc, c, fit_eps, True)
    _, coef = square_control(u_fit, fit_eps, jnp.zeros((2, k, k)), pool=True)  # as the natural step does

    def one(key):
        eps = antithetic_noise(key, 4, k, jnp.float32)
        _, u, _, _ = _directions(_hub_log_p, loc, c, eps, True)
        controlled, _ = square_control(u, eps, coef)
        return jnp.mean(u, axis=0), controlled

    plain, controlled = jax.vmap(one)(jax.random.split(jax.random.key(2), 4000))
    plain, controlled = np.asarray(plain, np.float64), np.asarray(controlled, np.float64)
    diff = controlled - plain
    se = diff.std(axis=0, ddof=1) / np.sqrt(len(diff))
    assert np.all(np.abs(diff.mean(axis=0)) < 4.5 * se + 1e-6), (diff.mean(axis=0), se)
    assert plain.var(axis=0)[0] > 4.0 * controlled.var(axis=0)[0], (plain.var(axis=0)[0], controlled.var(axis=0)[0])
    assert plain.var(axis=0).sum() > 4.0 * controlled.var(axis=0).sum()
    # the plain direction is noisy here (the comparison is not trivial)
    assert plain.var(axis=0)[0] > 0.05


def test_the_quadratic_control_variate_is_exact_for_a_quadratic_even_part():
    """u = C^T grad log p + eps with a purely quadratic even part is left with no noise at the true
    coefficients: u_i = 1/2 sum_jk T_ijk (eps_j eps_k - delta_jk) + odd terms, T symmetric."""
    k = 4
    rng = np.random.default_rng(0)
    t = rng.normal(size=(k, k, k))
    t = sum(np.transpose(t, p) for p in [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]) / 6
    # keep only the terms the variate covers: T_ijj (squares) and T_iij (own products), zero elsewhere
    mask = np.zeros((k, k, k), bool)
    for i in range(k):
        for j in range(k):
            mask[i, j, j] = mask[i, i, j] = mask[i, j, i] = True
    t = np.where(mask, t, 0.0)
    eps = jnp.asarray(rng.normal(size=(6, k)))
    e = np.asarray(eps)
    u = 0.5 * (np.einsum("ijk,sj,sk->si", t, e, e) - np.einsum("ijj->i", t)[None, :])
    b = 0.5 * np.einsum("ijj->ij", t)
    g = np.einsum("iij->ij", t)
    direction, _ = square_control(jnp.asarray(u), eps, jnp.asarray(np.stack([b, g])))
    np.testing.assert_allclose(np.asarray(direction), 0.0, atol=1e-5)
    assert np.max(np.abs(u.mean(axis=0))) > 0.1


def test_the_pooled_coefficients_rest_on_the_symmetry_of_the_third_derivatives():
    """E[u_i eps_i eps_j] = E[T_iij] and 2 E[u_j (eps_i^2 - 1)] / 2 = E[T_jii] are the same number
    (T symmetric), which `pool=True` uses: on the hub target with 200,000 draws the two unpooled
    estimates agree within their Monte Carlo error, and the pooled ones satisfy the identity exactly."""
    k = HUB_K
    loc = jnp.zeros(k).at[0].set(-0.3)
    c = jnp.diag(jnp.full(k, 0.8)).at[0, 0].set(0.9)
    eps = antithetic_noise(jax.random.key(3), 200_000, k, jnp.float32)
    _, u, _, _ = _directions(_hub_log_p, loc, c, eps, True)
    _, raw = square_control(u, eps, jnp.zeros((2, k, k)))
    _, pooled = square_control(u, eps, jnp.zeros((2, k, k)), pool=True)
    off = ~np.eye(k, dtype=bool)
    g, b2t = np.asarray(raw[1])[off], 2.0 * np.asarray(raw[0]).T[off]
    assert np.max(np.abs(g)) > 0.2  # the hub's products carry real coefficients
    # the standard error of the difference, from the antithetic pairs (the independent units)
    un, en = np.asarray(u, np.float64), np.asarray(eps, np.float64)
    half = len(en) // 2
    d = (un * en)[:, :, None] * en[:, None, :] - (en ** 2 - 1.0)[:, :, None] * un[:, None, :]  # [s, i, j]
    d = 0.5 * (d[:half] + d[half:])
    se = d.std(axis=0, ddof=1)[off] / np.sqrt(half)
    assert np.all(np.abs(g - b2t) < 4.5 * se + 1e-6), np.max(np.abs(g - b2t) / se)
    np.testing.assert_allclose(np.asarray(pooled[1])[off], 2.0 * np.asarray(pooled[0]).T[off], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.diagonal(np.asarray(pooled[0])), np.diagonal(np.asarray(raw[0])), rtol=1e-6)
