"""Bijector tests, driven by one table of (bijector, unconstrained event shape).

Every bijector in `advi_jax.bijectors.__all__` has a row (a test checks that), and every row
goes through the same checks: round trips (fixed and hypothesis-drawn moderate inputs), outputs
inside the support, finite values, inverses and log-dets at |x| = 30 (float32) and 300 (float64),
`log_det == slogdet(jacfwd)` of the map onto the free coordinates (float64, 1e-5 relative),
inverse log-det = minus the forward log-det, consistent shapes, jit and vmap. NumPyro's
`biject_to` serves as an independent reference at the end.
"""

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from advi_jax import bijectors as B

# --- free coordinates and support membership, written independently of the library ---


def _vec(y):
    return jnp.reshape(y, (-1,))


def _drop_last(y):
    return y[:-1]


def _strict_lower(y):
    r, c = np.tril_indices(y.shape[0], -1)
    return y[r, c]


def _lower(y):
    r, c = np.tril_indices(y.shape[0])
    return y[r, c]


def _in_simplex(y, tol):
    return np.all(y >= 0) and abs(np.sum(y) - 1) <= tol


def _in_corr_cholesky(y, tol):
    return (np.allclose(np.triu(y, 1), 0) and np.all(np.diag(y) >= 0)
            and np.allclose(np.linalg.norm(y, axis=1), 1, atol=tol))


def _symmetric(y, tol):
    return np.allclose(y, y.T, rtol=tol, atol=tol * np.max(np.abs(y)))


def _in_corr_matrix(y, tol):
    return _symmetric(y, tol) and np.allclose(np.diag(y), 1, atol=tol)


def _in_cholesky_cov(y, tol):
    return np.allclose(np.triu(y, 1), 0) and np.all(np.diag(y) >= 0)


def _in_cov_matrix(y, tol):
    return _symmetric(y, tol) and np.all(np.diag(y) >= 0)


def _strictly_pd(y):
    """For moderate inputs: positive definite (a Cholesky factorisation exists)."""
    try:
        np.linalg.cholesky(0.5 * (y + y.T))
        return True
    except np.linalg.LinAlgError:
        return False


@dataclasses.dataclass(frozen=True)
class Case:
    """One row of the table."""

    id: str
    bijector: Any
    shape: tuple[int, ...]                 # unconstrained event shape
    free: Callable = _vec                  # constrained event -> its free coordinates
    member: Callable = lambda y, tol: True  # closed-support check (tolerant), any input
    strict: Callable = lambda y: True      # open-support check, moderate inputs only


LOW3, HIGH3 = jnp.array([-1.0, 0.0, 2.0]), jnp.array([1.0, 0.5, 10.0])
JOINT = B.Joint(
    {"w": B.Identity(), "p": B.StickBreaking(), "s": B.Exp(), "L": B.CorrCholesky()},
    {"w": (2,), "p": (3,), "s": (), "L": (3, 3)},
    {"p": (2,)},
)


def _joint_free(y):
    parts = [_vec(y["w"]), _vec(y["p"][:, :-1]), _vec(y["s"]), _strict_lower(y["L"])]
    return jnp.concatenate(parts)


def _joint_member(y, tol):
    return (all(_in_simplex(np.asarray(p), tol) for p in y["p"]) and np.all(y["s"] >= 0)
            and _in_corr_cholesky(np.asarray(y["L"]), tol))


TABLE = [
    Case("identity", B.Identity(), (3,)),
    Case("exp", B.Exp(), (3,), member=lambda y, t: np.all(y >= 0), strict=lambda y: np.all(y > 0)),
    Case("softplus", B.Softplus(), (3,), member=lambda y, t: np.all(y >= 0), strict=lambda y: np.all(y > 0)),
    Case("sigmoid", B.Sigmoid(), (2, 2), member=lambda y, t: np.all((y >= 0) & (y <= 1)),
         strict=lambda y: np.all((y > 0) & (y < 1))),
    Case("lower_bound", B.LowerBound(-2.0), (3,), member=lambda y, t: np.all(y >= -2),
         strict=lambda y: np.all(y > -2)),
    Case("upper_bound", B.UpperBound(1.5), (3,), member=lambda y, t: np.all(y <= 1.5),
         strict=lambda y: np.all(y < 1.5)),
    Case("interval_scalar", B.Interval(-1.0, 3.0), (3,), member=lambda y, t: np.all((y >= -1) & (y <= 3)),
         strict=lambda y: np.all((y > -1) & (y < 3))),
    Case("interval_array", B.Interval(LOW3, HIGH3), (3,),
         member=lambda y, t: np.all((y >= np.asarray(LOW3)) & (y <= np.asarray(HIGH3))),
         strict=lambda y: np.all((y > np.asarray(LOW3)) & (y < np.asarray(HIGH3)))),
    Case("affine", B.Affine(jnp.array([1.0, -2.0, 0.0]), jnp.array([2.0, -0.5, 3.0])), (3,)),
    Case("chain", B.Chain((B.Affine(1.0, 2.0), B.Exp())), (3,), member=lambda y, t: np.all(y >= 1),
         strict=lambda y: np.all(y > 1)),
    Case("invert", B.Invert(B.Affine(0.5, -3.0)), (3,)),
    Case("stick_breaking", B.StickBreaking(), (3,), _drop_last, _in_simplex, lambda y: np.all(y > 0)),
    Case("ordered", B.Ordered(), (4,), member=lambda y, t: np.all(np.diff(y) >= 0),
         strict=lambda y: np.all(np.diff(y) > 0)),
    Case("positive_ordered", B.PositiveOrdered(), (4,), member=lambda y, t: y[0] >= 0 and np.all(np.diff(y) >= 0),
         strict=lambda y: y[0] > 0 and np.all(np.diff(y) > 0)),
    Case("sum_to_zero", B.SumToZero(), (4,), _drop_last,
         lambda y, t: abs(np.sum(y)) <= t * max(1.0, np.sum(np.abs(y)))),
    Case("corr_cholesky", B.CorrCholesky(), (6,), _strict_lower, _in_corr_cholesky, lambda y: np.all(np.diag(y) > 0)),
    Case("corr_matrix", B.CorrMatrix(), (6,), _strict_lower, _in_corr_matrix, _strictly_pd),
    Case("cholesky_cov", B.CholeskyCov(), (6,), _lower, _in_cholesky_cov, lambda y: np.all(np.diag(y) > 0)),
    Case("cov_matrix", B.CovMatrix(), (6,), _lower, _in_cov_matrix, _strictly_pd),
    Case("joint", JOINT, (JOINT.dim,), _joint_free, _joint_member),
]
CASES = [pytest.param(c, id=c.id) for c in TABLE]
DTYPES = [pytest.param(jnp.float32, id="f32"), pytest.param(jnp.float64, id="f64")]
EXTREME = {jnp.float32: 30.0, jnp.float64: 300.0}


def _tol(dtype):
    return float(np.sqrt(np.finfo(dtype).eps)) * 4


def _size(case):
    return int(np.prod(case.shape))


def _inputs(case, dtype, scale=1.0, seed=0):
    x = scale * np.random.default_rng(seed).standard_normal(case.shape)
    return jnp.asarray(x, dtype)


def _leaves(y):
    return [np.asarray(v, np.float64) for v in jax.tree_util.tree_leaves(y)]


@functools.cache
def _compiled(case_id):
    """Jitted (forward, inverse-of-forward, both log-dets) for a case, compiled once per dtype."""
    b = next(c for c in TABLE if c.id == case_id).bijector
    return jax.jit(functools.partial(_both, b))


def _both(b, x):
    y, fld = b.forward_and_log_det(x)
    x2, ild = b.inverse_and_log_det(y)
    return y, fld, x2, ild


def test_table_covers_every_bijector():
    covered = set()
    for case in TABLE:
        stack = [case.bijector]
        while stack:
            b = stack.pop()
            covered.add(type(b).__name__)
            stack.extend(getattr(b, "bijectors", {}).values() if isinstance(b, B.Joint) else
                         list(getattr(b, "bijectors", ())) + ([b.bijector] if isinstance(b, B.Invert) else []))
    expected = set(B.__all__) - {"Bijector"}
    assert expected <= covered, f"bijectors without a table row: {sorted(expected - covered)}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_round_trip_and_support_fixed(case, dtype):
    with jax.enable_x64(dtype == jnp.float64):
        for seed, scale in [(0, 0.0), (1, 1.0), (2, 2.0)]:
            # L L^T (corr_matrix) squares the conditioning: keep float32 inputs a bit smaller
            bound = 2.5 if dtype == jnp.float64 else 1.75
            x = jnp.clip(_inputs(case, dtype, scale, seed), -bound, bound)
            y, fld, x2, ild = _compiled(case.id)(x)
            atol = 2e-4 if dtype == jnp.float32 else 1e-10
            np.testing.assert_allclose(x2, x, rtol=5e-4 if dtype == jnp.float32 else 1e-9, atol=atol)
            assert case.member(jax.tree_util.tree_map(np.asarray, y), _tol(dtype))
            if not isinstance(y, dict):
                assert case.strict(np.asarray(y))
            assert jnp.result_type(fld) == dtype and np.shape(fld) == ()


@pytest.mark.parametrize("case", CASES)
@given(data=st.data())
def test_round_trip_hypothesis(case, data):
    x = data.draw(hnp.arrays(np.float64, case.shape, elements=st.floats(-3.0, 3.0, width=64)))
    with jax.enable_x64(True):
        y, _, x2, _ = _compiled(case.id)(jnp.asarray(x))
        np.testing.assert_allclose(x2, x, rtol=1e-8, atol=1e-8)
        assert case.member(jax.tree_util.tree_map(np.asarray, y), _tol(np.float64))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_finite_at_extremes(case, dtype):
    big = EXTREME[dtype]
    n = _size(case)
    rng = np.random.default_rng(3)
    patterns = [np.full(n, big), np.full(n, -big), np.where(np.arange(n) % 2, big, -big),
                rng.uniform(-big, big, n), np.zeros(n)]
    with jax.enable_x64(dtype == jnp.float64):
        for p in patterns:
            y, fld, x2, ild = _compiled(case.id)(jnp.asarray(p.reshape(case.shape), dtype))
            assert all(np.all(np.isfinite(v)) for v in _leaves(y)), (p, y)
            assert np.isfinite(fld), (p, fld)
            # the matrix forms too: their outputs keep a Cholesky factorisation (issue 18)
            assert np.isfinite(ild) and np.all(np.isfinite(x2)), (p, ild, x2)
            assert case.member(jax.tree_util.tree_map(np.asarray, y), _tol(dtype))


@pytest.mark.parametrize("case", CASES)
def test_log_det_matches_jacobian(case):
    b = case.bijector

    @jax.jit
    def both(x):
        jac = jax.jacfwd(lambda v: case.free(b.forward(v)))(x)
        jac = jac.reshape(jac.shape[0], -1)
        assert jac.shape[0] == jac.shape[1], "free coordinates must match the input dimension"
        return b.forward_log_det_jacobian(x), jnp.linalg.slogdet(jac)

    with jax.enable_x64(True):
        for seed in (10, 11):
            log_det, (sign, expected) = both(_inputs(case, jnp.float64, 1.0, seed))
            assert sign != 0
            np.testing.assert_allclose(log_det, expected, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("case", CASES)
def test_inverse_log_det_is_minus_forward(case):
    with jax.enable_x64(True):
        for seed in (20, 21):
            _, fld, _, ild = _compiled(case.id)(jnp.clip(_inputs(case, jnp.float64, 1.5, seed), -3, 3))
            np.testing.assert_allclose(ild, -fld, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("case", CASES)
def test_shapes(case):
    b = case.bijector
    x = jax.ShapeDtypeStruct(case.shape, jnp.float32)
    y = jax.eval_shape(b.forward, x)
    out_shape = b.forward_shape(case.shape)
    if isinstance(y, dict):
        assert out_shape == {k: v.shape for k, v in y.items()}
        assert b.inverse_shape(out_shape) == case.shape
    else:
        assert tuple(out_shape) == y.shape
        assert tuple(b.inverse_shape(y.shape)) == case.shape
    assert jax.eval_shape(b.inverse, y).shape == case.shape


@pytest.mark.parametrize("case", CASES)
def test_jit_and_vmap(case):
    b = case.bijector
    xs = jnp.stack([_inputs(case, jnp.float32, 1.0, s) for s in range(3)])
    # the bijector is a pytree: it can be an argument of a jitted, vmapped function
    ys, lds, xs_back, ilds = jax.jit(lambda bb, x: jax.vmap(lambda v: _both(bb, v))(x))(b, xs)
    assert lds.shape == (3,) and ilds.shape == (3,)
    for i in range(3):
        y_i, ld_i, _, _ = _compiled(case.id)(xs[i])
        jax.tree_util.tree_map(lambda a, c: np.testing.assert_allclose(a[i], c, rtol=1e-5, atol=1e-6), ys, y_i)
        np.testing.assert_allclose(lds[i], ld_i, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(xs_back, xs, rtol=2e-3, atol=2e-3)


def test_known_values():
    fwd = lambda b: jax.jit(b.forward)  # noqa: E731
    with jax.enable_x64(True):
        np.testing.assert_allclose(fwd(B.StickBreaking())(jnp.zeros(4)), np.full(5, 0.2))
        np.testing.assert_allclose(B.SumToZero().forward_log_det_jacobian(jnp.ones(4)), -0.5 * np.log(5))
        np.testing.assert_allclose(fwd(B.CorrCholesky())(jnp.zeros(3)), np.eye(3))
        np.testing.assert_allclose(fwd(B.CovMatrix())(jnp.zeros(3)), np.eye(2))
        np.testing.assert_allclose(fwd(B.Ordered())(jnp.array([-1.0, 0.0, np.log(2.0)])), [-1.0, 0.0, 2.0])
        y = fwd(B.SumToZero())(jnp.arange(1.0, 5.0))
        np.testing.assert_allclose(jnp.linalg.norm(y), np.linalg.norm(np.arange(1.0, 5.0)))  # isometry


def test_shape_errors():
    with pytest.raises(ValueError, match="K\\(K-1\\)/2"):
        B.CorrCholesky().forward(jnp.zeros(4))
    with pytest.raises(ValueError, match="K\\(K\\+1\\)/2"):
        B.CovMatrix().forward_shape((4,))
    with pytest.raises(ValueError, match="vector event"):
        B.StickBreaking().forward(jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="'p'"):
        JOINT.inverse({"w": jnp.zeros(2), "p": jnp.ones((3,)) / 3, "s": jnp.ones(()), "L": jnp.eye(3)})
    with pytest.raises(ValueError, match="names"):
        JOINT.inverse({"w": jnp.zeros(2)})


# --- NumPyro as an independent reference -------------------------------------------------------


def _numpyro_pairs():
    import numpyro.distributions.constraints as numpyro_c
    return [
        ("positive", B.Exp(), numpyro_c.positive, 3),
        ("interval", B.Interval(-1.0, 3.0), numpyro_c.interval(-1.0, 3.0), 3),
        ("simplex", B.StickBreaking(), numpyro_c.simplex, 3),
        ("ordered", B.Ordered(), numpyro_c.ordered_vector, 4),
        ("positive_ordered", B.PositiveOrdered(), numpyro_c.positive_ordered_vector, 4),
        ("corr_cholesky", B.CorrCholesky(), numpyro_c.corr_cholesky, 6),
        ("corr_matrix", B.CorrMatrix(), numpyro_c.corr_matrix, 6),
        ("lower_cholesky", B.CholeskyCov(), numpyro_c.lower_cholesky, 6),
        ("positive_definite", B.CovMatrix(), numpyro_c.positive_definite, 6),
    ]


# Where NumPyro uses the same parameterisation, values and log-dets must agree exactly.
# positive_ordered (NumPyro: exp of an ordered vector), lower_cholesky and positive_definite
# (NumPyro packs the diagonal last) parameterise differently.
_SAME_PARAMETERISATION = {"positive", "interval", "simplex", "ordered", "corr_cholesky", "corr_matrix"}


@pytest.mark.parametrize("index", range(9))
def test_against_numpyro(index):
    from numpyro.distributions.transforms import biject_to
    name, ours, constraint, n = _numpyro_pairs()[index]
    theirs = biject_to(constraint)
    @jax.jit
    def compare(x):
        y_theirs = theirs(x)
        ld_theirs = jnp.sum(theirs.log_abs_det_jacobian(x, y_theirs))
        y_ours, ld_ours = ours.forward_and_log_det(x)
        g = lambda v: ours.inverse(theirs(v))  # noqa: E731
        x_ours = g(x)
        log_det_g = jnp.linalg.slogdet(jax.jacfwd(g)(x))[1]
        return (y_theirs, ld_theirs, y_ours, ld_ours, ours.forward(x_ours),
                ours.forward_log_det_jacobian(x_ours), ours.inverse_log_det_jacobian(y_theirs), log_det_g)

    with jax.enable_x64(True):
        for seed in (0, 1):
            x = jnp.asarray(np.random.default_rng(seed).normal(size=n))
            y_theirs, ld_theirs, y_ours, ld_ours, y_back, ld_at_g, ild, log_det_g = compare(x)
            if name in _SAME_PARAMETERISATION:
                np.testing.assert_allclose(y_ours, y_theirs, rtol=1e-10, atol=1e-12)
                np.testing.assert_allclose(ld_ours, ld_theirs, rtol=1e-10, atol=1e-12)
            # Either way, NumPyro's point is in our support, and the change-of-variables identity
            #   log|J_theirs(x)| = log|J_ours(g(x))| + log|det J_g(x)|,  g = ours^{-1} o theirs,
            # ties the two log-dets together (a wrong log-det on either side breaks it).
            np.testing.assert_allclose(y_back, y_theirs, rtol=1e-9, atol=1e-10)
            np.testing.assert_allclose(ld_theirs, ld_at_g + log_det_g, rtol=1e-8, atol=1e-9)
            np.testing.assert_allclose(ild + ld_theirs, log_det_g, rtol=1e-8, atol=1e-9)


def test_simplex_pushforward_matches_numpyro_by_monte_carlo(key):
    """The pushforward of N(0, I) through both stick-breakings has the same law (same offset)."""
    from numpyro.distributions.transforms import biject_to
    from numpyro.distributions.constraints import simplex
    @jax.jit  # one compiled program, not the two maps' operations one by one
    def both(key):
        ours = jax.vmap(B.StickBreaking().forward)(jax.random.normal(key, (20000, 3)))
        return ours, jax.vmap(biject_to(simplex))(jax.random.normal(jax.random.fold_in(key, 1), (20000, 3)))

    ours, theirs = both(key)
    se = jnp.sqrt(jnp.var(ours, 0) / 20000 + jnp.var(theirs, 0) / 20000)
    assert np.all(np.abs(np.mean(ours, 0) - np.mean(theirs, 0)) < 4 * se)
