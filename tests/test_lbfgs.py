"""The library's L-BFGS (advi_jax.vi._lbfgs): minima, honest evaluation counts, one trace of the objective."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import advi_jax as aj
from advi_jax.vi import _lbfgs, laplace


def _rosenbrock(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def _quadratic():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    h = a @ a.T + 0.5 * np.eye(6)  # condition ~ 100
    b = rng.normal(size=6)
    return h, b, np.linalg.solve(h, b)


def test_quadratic_reaches_its_known_minimiser():
    with jax.enable_x64(True):
        h, b, x_star = _quadratic()
        h, b = jnp.asarray(h), jnp.asarray(b)
        # gtol 1e-7: near 1e-8 the decrease left (g' H^-1 g / 2 ~ 1e-16) is below the objective's
        # float64 rounding, where the line search stops (`stalled`).
        out = jax.jit(lambda x0: _lbfgs.minimize(lambda x: 0.5 * x @ h @ x - b @ x, x0, max_iters=200,
                                                 gtol=1e-7))(jnp.zeros(6))
        assert out.x.dtype == jnp.float64
        assert float(jnp.linalg.norm(out.grad)) <= 1e-7
    assert bool(out.converged) and not bool(out.stalled)
    np.testing.assert_allclose(np.asarray(out.x), x_star, atol=3e-7, rtol=0)
    assert int(out.num_evals) >= int(out.iterations) + 1  # the start and at least one trial per search


@pytest.mark.parametrize("k", [2, 10])
def test_rosenbrock_reaches_its_minimum(k):
    with jax.enable_x64(True):
        x0 = jnp.where(jnp.arange(k) % 2 == 0, -1.2, 1.0)
        out = jax.jit(lambda x: _lbfgs.minimize(_rosenbrock, x, max_iters=500, gtol=1e-9))(x0)
        assert bool(out.converged)
        np.testing.assert_allclose(np.asarray(out.x), np.ones(k), atol=1e-6, rtol=0)
        assert float(out.value) < 1e-12
        # The start's value and gradient norm come back with the result.
        np.testing.assert_allclose(float(out.start_value), float(_rosenbrock(x0)), rtol=1e-14)
        np.testing.assert_allclose(float(out.start_grad_norm), float(jnp.linalg.norm(jax.grad(_rosenbrock)(x0))),
                                   rtol=1e-14)


def test_num_evals_is_the_number_of_calls_of_the_objective():
    # A host callback in the objective counts the evaluations the compiled run makes (one per
    # execution of the objective's body, in whichever loop or branch), to compare with the count
    # carried in the loop. (Before: the same count from a Python counter in an eager run under
    # `disable_jit`, 53 calls, with the compiled run checked to take the same path; that eager
    # run cost ~17 CPU-s of op-by-op dispatch, this one 0.6.)
    calls = []

    def counted(x):
        jax.debug.callback(lambda: calls.append(1))
        return _rosenbrock(x)

    with jax.enable_x64(True):
        x0 = jnp.asarray([-1.2, 1.0, -1.2])
        out = jax.jit(lambda x: _lbfgs.minimize(counted, x, max_iters=60, gtol=1e-9))(x0)
        jax.effects_barrier()
    assert bool(out.converged)
    assert int(out.num_evals) == len(calls) > int(out.iterations) + 1


def test_the_objective_is_traced_once_per_compile():
    traces = []

    def counted(x):
        traces.append(1)
        return _rosenbrock(x)

    out = jax.jit(lambda x: _lbfgs.minimize(counted, x, max_iters=100, gtol=1e-4))(jnp.zeros(4))
    assert len(traces) == 1 and int(out.num_evals) > 10


class _Quartic:
    """A log density on R^3 with a unique mode, counting the calls of its Python (`calls`: traces) and,
    with a host callback, the evaluations a compiled program runs (`runs`)."""

    dim = 3

    def __init__(self):
        self.calls = []
        self.runs = []

    def log_density(self, z):
        self.calls.append(1)
        jax.debug.callback(lambda: self.runs.append(1))
        return -0.5 * jnp.sum((z - jnp.arange(3.0)) ** 2 / jnp.asarray([1.0, 4.0, 9.0])) - 0.1 * jnp.sum(z ** 4)


def test_laplace_traces_the_log_density_twice_and_counts_its_evaluations():
    # One copy in the L-BFGS loop, one in the Hessian (optax's L-BFGS traced it three times, and
    # the mode tests four more); `num_grad_evals` is L-BFGS's count, not an estimate.
    model = _Quartic()
    jax.make_jaxpr(lambda x: laplace._find_mode(model, x, 100, True))(jnp.zeros(3))
    assert len(model.calls) == 2
    counted = _Quartic()
    info = jax.jit(lambda x: laplace._find_mode(counted, x, 100, True))(jnp.zeros(3))
    jax.effects_barrier()
    assert bool(info.converged) and int(info.iterations) < int(info.num_grad_evals) < 100
    grad = jax.grad(_Quartic().log_density)(info.mode)
    assert float(jnp.linalg.norm(grad)) < 1e-3 * np.sqrt(3)
    # The compiled run evaluates the log density once per L-BFGS evaluation, plus once in the
    # Hessian (one forward-over-reverse pass). (Before: the same 10 calls counted in an eager run
    # under `disable_jit`, 7.9 CPU-s; the compiled run's count needs no second run.)
    assert len(counted.runs) - 1 == int(info.num_grad_evals)


def test_vmap_over_starting_points_equals_a_loop():
    with jax.enable_x64(True):
        starts = jnp.asarray([[-1.2, 1.0], [2.0, 2.0], [0.0, 0.0], [-0.5, 3.0]])

        def solve(x0):
            return _lbfgs.minimize(_rosenbrock, x0, max_iters=200, gtol=1e-8)

        batched = jax.jit(jax.vmap(solve))(starts)
        for i, x0 in enumerate(starts):
            one = jax.jit(solve)(x0)
            # Equal to rounding: a batched dot product may sum in another order.
            np.testing.assert_allclose(np.asarray(batched.x[i]), np.asarray(one.x), atol=1e-12, rtol=0)
            assert int(batched.num_evals[i]) == int(one.num_evals)
            assert int(batched.iterations[i]) == int(one.iterations)
    assert len(set(np.asarray(batched.num_evals).tolist())) > 1  # the starts took different paths


def test_a_tiny_scale_keeps_its_curvature_pairs():
    # A Poisson regression with features ~1e6 (posterior sd ~3e-9, Hessian entries ~1e17): a pair
    # test relative to y'y (s'y > eps y'y) rejects every pair and leaves steepest descent crawling;
    # the scale-free test keeps them, and L-BFGS converges in a few dozen evaluations.
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.uniform(0.0, 1.0, (100, 2)) * 1e6)
        y = jnp.asarray(rng.poisson(np.exp(np.asarray(x) @ np.array([6.9, 6.9]) / 1e6)), jnp.float64)

        def objective(b):
            eta = x @ b
            return -(jnp.sum(y * eta - jnp.exp(eta)) - 0.5 * jnp.sum(b * b))

        out = _lbfgs.minimize(objective, jnp.zeros(2), max_iters=200, gtol=0.0, ftol=1e-14)
        h = jax.hessian(objective)(out.x)
        newton = out.x - jnp.linalg.solve(h, jax.grad(objective)(out.x))
        assert bool(out.converged) and int(out.num_evals) < 60
        np.testing.assert_allclose(np.asarray(out.x), np.asarray(newton), atol=1e-12, rtol=0)


def test_a_start_that_is_not_finite_stops_after_one_evaluation():
    out = _lbfgs.minimize(lambda x: jnp.sum(jnp.log(x)), jnp.asarray([-1.0, 1.0]), max_iters=50, gtol=1e-6)
    assert int(out.num_evals) == 1 and int(out.iterations) == 0
    assert not bool(out.converged) and not bool(out.stalled)
    np.testing.assert_array_equal(np.asarray(out.x), [-1.0, 1.0])


def test_iterate_one_pass_at_a_time_equals_minimize():
    # `_glm_lowrank` runs `iterate` once per step: the start's pass, then one iteration each.
    with jax.enable_x64(True):
        x0 = jnp.asarray([-1.2, 1.0])
        whole = _lbfgs.minimize(_rosenbrock, x0, max_iters=12, gtol=0.0)
        step = jax.jit(lambda s: _lbfgs.iterate(jax.value_and_grad(_rosenbrock), s))
        state = _lbfgs.init(x0)
        for _ in range(13):
            state = step(state)
    assert int(state.iterations) == 12 == int(whole.iterations)
    assert int(state.num_evals) == int(whole.num_evals)
    np.testing.assert_allclose(np.asarray(state.x), np.asarray(whole.x), atol=1e-13, rtol=0)


def test_the_lowrank_glm_fit_traces_its_objective_once(monkeypatch):
    # The low-rank exact-ELBO fit's loop holds one copy of its objective (optax's L-BFGS traced
    # it three times: the first step's evaluation and the zoom line search's two branches), and
    # its `num_grad_evals` are the evaluations its line searches made.
    from advi_jax.models import negbin_regression
    from advi_jax.vi import _glm_lowrank

    calls = []
    original = _glm_lowrank.lowrank_likelihood

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(_glm_lowrank, "lowrank_likelihood", counted)
    rng = np.random.default_rng(7)
    x = rng.normal(size=(143, 2)).astype(np.float32)  # a row count no other test uses: cold caches
    model = negbin_regression(x, rng.poisson(np.exp(0.3 * x[:, 0])).astype(np.float32))
    res = aj.fit(model, key=jax.random.key(0), family=aj.LowRankGaussian(rank=1), method="glm_exact",
                 progress=False, diagnostics=False, warn=False)
    assert len(calls) == 1
    assert res.converged and res.num_steps < res.num_grad_evals < 3 * res.num_steps + 40
