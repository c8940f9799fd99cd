"""Fuzz every bijector of the catalogue over its documented range, in float32 and float64.

The checks, the catalogue (each bijector paired with its support) and the input patterns live in
`benchmarks/bench_bijector_fuzz.py`, which runs 1e5 cases per bijector; here each row runs a few
hundred cases per precision (several thousand in all), every one of which must pass: forward
finite and a member of the support (positive definite for the matrix forms), finite log-dets,
a finite inverse, the round trip within the precision the constrained value carries, the
inverse log-det equal to minus the forward one, and (on a subset) the log-det equal to
slogdet(jacfwd). Below, one targeted test per failure the adversarial pass of issue 18 found.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import advi_jax as aj
from advi_jax import bijectors as B
from benchmarks import bench_bijector_fuzz as fuzz

NAMES = [r.name for r in fuzz.catalogue()]
CASES = 400  # per row and precision: 24 rows x 2 precisions x 400 = 19,200 cases per run (compiling dominates)


def test_catalogue_covers_every_bijector():
    covered = set()
    for row in fuzz.catalogue():
        stack = [row.bijector]
        while stack:
            b = stack.pop()
            covered.add(type(b).__name__)
            if isinstance(b, B.Joint):
                stack.extend(b.bijectors.values())
            else:
                stack.extend(getattr(b, "bijectors", ()))
                if isinstance(b, B.Invert):
                    stack.append(b.bijector)
    expected = set(B.__all__) - {"Bijector"}
    assert expected <= covered, f"bijectors without a fuzz row: {sorted(expected - covered)}"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", NAMES)
def test_fuzz(name, dtype):
    res = fuzz.run_row(name, dtype, CASES, seed=7, num_jacobian=16)
    assert res["cases"] == CASES and res["jacobian_cases"] == 16
    assert res["total_failures"] == 0 and not any(res["failures"].values()), (name, dtype, res["failures"])
    # The round trip is checked wherever the stored value determines x (its bound is below 1),
    # which leaves out only coordinates that rounding has made unreadable; every coordinate of
    # the moderate events (|x| <= 1) is checked, so nothing is skipped silently.
    assert res["moderate"] >= 20 and res["checked_moderate"] == res["moderate"], res
    assert res["checked_coordinates"] >= 0.1 * res["coordinates"], res


def test_inputs_reach_the_extremes():
    x = fuzz.inputs((6,), 400, 30.0, seed=1)
    assert np.max(np.abs(x)) == 30.0 and np.sum(np.all(np.abs(x) == 30.0, axis=1)) >= 5
    assert np.sum(np.max(np.abs(x), axis=1) <= 1.0) >= 20  # and moderate events too


# --- issue 18, item 2: the matrix forms are positive definite and invertible -----------------


@pytest.mark.parametrize("dtype, size", [("float32", 2.0), ("float32", 5.0), ("float64", 5.0), ("float64", 20.0)])
@pytest.mark.parametrize("support", ["corr_matrix", "cov_matrix"])
def test_matrix_forms_pd_and_invertible(support, dtype, size):
    k = 4
    s = getattr(aj, support)(k)
    n = int(np.prod(s.unconstrained_event_shape))
    patterns = np.stack([np.full(n, size), np.full(n, -size), np.where(np.arange(n) % 2, size, -size),
                         np.random.default_rng(0).uniform(-size, size, n)])
    with jax.enable_x64(dtype == "float64"):
        b = s.bijector

        @jax.jit
        def run(x):
            y = jax.vmap(b.forward)(x)
            return y, jax.vmap(b.inverse_and_log_det)(y), jax.vmap(s.contains)(y)

        y, (x2, ild), member = run(jnp.asarray(patterns, dtype))
        for m in np.asarray(y, np.float64):
            np.linalg.cholesky(m)  # raises if not positive definite
        assert np.all(member)
        assert np.all(np.isfinite(x2)) and np.all(np.isfinite(ild))


def test_matrix_inverse_finite_on_singular_input():
    with jax.enable_x64(True):
        ones = jnp.ones((3, 3))  # a singular "correlation matrix": every CPC is +-1
        x, ld = jax.jit(B.CorrMatrix().inverse_and_log_det)(ones)
        assert np.all(np.isfinite(x)) and np.isfinite(ld) and np.all(x > 15)
        x, ld = jax.jit(B.CovMatrix().inverse_and_log_det)(4.0 * ones)
        assert np.all(np.isfinite(x)) and np.isfinite(ld)


# --- issue 18, item 7: outputs at the documented extremes are members of the support ---------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_extreme_outputs_inside_support(dtype):
    big = fuzz.EXTREME[dtype]
    cases = [
        (aj.lower_bounded(-2.0, (2,)), [-big, big]),
        (aj.upper_bounded(1.5, (2,)), [-big, big]),
        (aj.interval(-1.0, 3.0, (2,)), [-big, big]),
        (aj.unit_interval((2,)), [-big, big]),
        (aj.ordered(3), [big, -big, -big]),
        (aj.positive_ordered(3), [big, -big, -big]),
        (aj.corr_cholesky(4), [big] * 6),
        (aj.simplex(4), [big] * 3),
    ]
    with jax.enable_x64(dtype == "float64"):
        @jax.jit  # every case in one program (one compile, not eight)
        def run(xs):
            return [(s.bijector.forward(v), s.contains(s.bijector.forward(v)), s.bijector.inverse(s.bijector.forward(v)))
                    for (s, _), v in zip(cases, xs)]

        for (s, x), (y, member, x2) in zip(cases, run([jnp.asarray(x, dtype) for _, x in cases])):
            assert bool(member), (s, x, y)
            assert np.all(np.isfinite(x2))


def test_contains_rejects_boundary_values():
    assert not bool(aj.interval(0.0, 1.0).contains(jnp.asarray(1.0)))
    assert not bool(aj.unit_interval().contains(jnp.asarray(0.0)))
    assert not bool(aj.lower_bounded(-2.0).contains(jnp.asarray(-2.0)))
    assert not bool(aj.ordered(3).contains(jnp.asarray([0.0, 1.0, 1.0])))
    assert not bool(aj.corr_matrix(2).contains(jnp.ones((2, 2))))
    assert bool(aj.simplex(3).contains(jnp.asarray([1.0, 0.0, 0.0])))  # the simplex is closed


def test_ordered_round_trip_float32_is_one_rounding():
    """y_k = y_{k-1} + exp(x_k) is summed in order, so the gap read back is the rounded step.

    The step exp(x_k) is stored inside y_k, whose ulp is u |y_k|: the best any float32 vector y can
    do is |dx_k| <= u (|y_{k-1}| + |y_k|) / exp(x_k) (about 2e-3 for x = (5, -5): a property of
    y, not of the map). The error is within a few of those units, never more.
    """
    x = jnp.asarray([[5.0, -5.0, 0.5, -4.0], [-5.0, 5.0, -5.0, 3.0], [0.0, -5.0, -5.0, -5.0]], jnp.float32)
    u = np.finfo(np.float32).eps / 2
    for b, cond in [(B.Ordered(), fuzz._cond_ordered), (B.PositiveOrdered(), fuzz._cond_positive_ordered)]:
        y = jax.vmap(b.forward)(x)
        x2 = jax.vmap(b.inverse)(y)
        limit = 4 * u * (1 + np.abs(x) + np.asarray(jax.vmap(cond)(x, y)))
        assert np.all(np.abs(np.asarray(x2) - np.asarray(x)) <= limit), (b, x2 - x, limit)
