"""The native difference pass of the ready GLMs' log densities (`advi_jax.models.relative`, the
importance diagnostics' log ratios) against float64 differences of the same coefficients: its
Taylor-series path (every |delta| <= 0.25 in a tile, float32), its exact path (larger steps, float64),
the fold of a vmapped batch of draws into one call, and a vmapped batch of references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advi_jax.models import _native
from advi_jax.models.glm import build_kernel, glm_log_likelihood, glm_log_likelihood_difference
from advi_jax.models.relative import likelihood_difference


@pytest.fixture(scope="module", autouse=True)
def _native_kernel_built():
    assert build_kernel(), _native.reason()


def _data(family, n, d, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (rng.random(n) < 0.3) * 1.0 if family == "bernoulli" else rng.poisson(2.0, n) * 1.0
    return rng, x, y.astype(np.float32), (0.1 * rng.normal(size=n)).astype(np.float32)


def _exact(x, y, betas, cs, ref, c_ref, offset, family):
    """float64 differences at the float32 coefficients (no rounding of the coefficients themselves)."""
    with jax.enable_x64(True):
        f64 = lambda a: jnp.asarray(np.asarray(a, np.float64))  # noqa: E731
        off = None if offset is None else f64(offset)
        fn = jax.vmap(lambda b, c: glm_log_likelihood_difference(f64(x), f64(y), b, c, f64(ref), f64(c_ref), off,
                                                                 family))
        return np.asarray(fn(f64(betas), f64(cs))[0])


@pytest.mark.parametrize("family", ["bernoulli", "poisson"])
@pytest.mark.parametrize("with_offset", [False, True])
def test_float32_differences_beat_the_xla_form_against_float64(family, with_offset):
    rng, x, y, offset = _data(family, 4000, 7, 1)
    offset = offset if with_offset else None
    ref = jnp.asarray(0.1 * rng.normal(size=7), jnp.float32)
    # small steps (the series path: |delta| ~ 0.01) and large ones (the exact path: |delta| up to ~3)
    for scale, tol in ((3e-3, 1e-5), (0.5, 2e-5)):
        betas = ref[None, :] + jnp.asarray(scale * rng.normal(size=(128, 7)), jnp.float32)
        cs = jnp.asarray(-0.5 + scale * rng.normal(size=128), jnp.float32)
        native = jax.jit(jax.vmap(lambda b, c: likelihood_difference(x, y, b, c, ref, -0.5, offset, family)))
        xla = jax.jit(jax.vmap(lambda b, c: glm_log_likelihood_difference(x, y, b, c, ref, -0.5, offset, family)))
        (got, at_ref), (plain, plain_ref) = native(betas, cs), xla(betas, cs)
        exact = _exact(x, y, betas, cs, ref, -0.5, offset, family)
        err, err_xla = np.abs(np.asarray(got) - exact), np.abs(np.asarray(plain) - exact)
        # errors a small fraction of the spread the diagnostics read, and no worse than the XLA form's
        assert err.max() < tol * exact.std(), (scale, err.max(), exact.std())
        assert np.std(err) <= 1.5 * np.std(err_xla) + 1e-6
        assert np.all(np.asarray(at_ref) == np.asarray(at_ref)[0])
        assert float(at_ref[0]) == pytest.approx(float(plain_ref[0]), rel=1e-5)


def test_series_path_is_far_more_accurate_than_the_plain_per_row_difference():
    _, x, y, _ = _data("bernoulli", 30_000, 10, 2)
    rng = np.random.default_rng(3)
    ref = jnp.asarray(0.1 * rng.normal(size=10), jnp.float32)
    betas = ref[None, :] + jnp.asarray(3e-3 * rng.normal(size=(64, 10)), jnp.float32)
    cs = jnp.full(64, -0.5, jnp.float32)
    native = jax.jit(jax.vmap(lambda b, c: likelihood_difference(x, y, b, c, ref, -0.5)))
    xla = jax.jit(jax.vmap(lambda b, c: glm_log_likelihood_difference(x, y, b, c, ref, -0.5)))
    got, plain = np.asarray(native(betas, cs)[0]), np.asarray(xla(betas, cs)[0])
    exact = _exact(x, y, betas, cs, ref, -0.5, None, "bernoulli")
    # measured: 7e-7 against 1e-5 (spread ~25)
    assert np.std(got - exact) < 0.2 * np.std(plain - exact)


@pytest.mark.parametrize("family", ["bernoulli", "poisson"])
def test_float64_and_unbatched_calls_match_the_plain_difference(family):
    rng, x, y, offset = _data(family, 3000, 3, 4)
    with jax.enable_x64(True):
        x64, y64, off64 = (jnp.asarray(a, jnp.float64) for a in (x, y, offset))
        ref = jnp.array([0.3, -0.2, 0.1])
        for step in (1e-4, 1e-2, 1.0):
            beta = ref + step * jnp.array([1.0, 0.5, -2.0])
            plain = (glm_log_likelihood(x64, y64, beta, 0.1 + step, off64, family)
                     - glm_log_likelihood(x64, y64, ref, 0.1, off64, family))
            fn = jax.jit(lambda b, step=step: likelihood_difference(x64, y64, b, 0.1 + step, ref, 0.1, off64, family))
            got, at_ref = fn(beta)
            assert float(got) == pytest.approx(float(plain), rel=1e-9, abs=1e-9)
            at_ref_plain = glm_log_likelihood(x64, y64, ref, 0.1, off64, family)
            assert float(at_ref) == pytest.approx(float(at_ref_plain), rel=1e-12)


def test_vmapped_references_and_nested_batches():
    rng, x, y, _ = _data("bernoulli", 5000, 4, 5)
    refs = jnp.asarray(0.1 * rng.normal(size=(3, 4)), jnp.float32)  # three fits: their own reference each
    betas = refs[:, None, :] + jnp.asarray(0.01 * rng.normal(size=(3, 32, 4)), jnp.float32)

    def per_fit(ref, bs):
        return jax.vmap(lambda b: likelihood_difference(x, y, b, 0.0, ref, 0.0))(bs)

    got = jax.jit(jax.vmap(per_fit))(refs, betas)
    def per_fit_xla(ref, bs):
        return jax.vmap(lambda b: glm_log_likelihood_difference(x, y, b, 0.0, ref, 0.0))(bs)

    want = jax.vmap(per_fit_xla)(refs, betas)
    np.testing.assert_allclose(np.asarray(got[0]), np.asarray(want[0]), rtol=1e-4, atol=2e-4)
    # the value at each fit's reference against float64 (the kernel sums the rows in double: its error is
    # the float32 rows' own rounding, ~1e-8 relative here), and against XLA's float32 sum (~1e-6)
    with jax.enable_x64(True):
        exact = [float(glm_log_likelihood(jnp.asarray(x, jnp.float64), jnp.asarray(y, jnp.float64),
                                          jnp.asarray(r, jnp.float64), 0.0)) for r in np.asarray(refs)]
    np.testing.assert_allclose(np.asarray(got[1]), np.repeat(np.asarray(exact)[:, None], 32, axis=1), rtol=2e-7)
    np.testing.assert_allclose(np.asarray(got[1]), np.asarray(want[1]), rtol=1e-5)


def test_extreme_steps_are_never_nan():
    for family in ("bernoulli", "poisson"):
        _, x, y, _ = _data(family, 3000, 3, 6)
        for step in (-200.0, 200.0):
            got, _ = likelihood_difference(x, y, jnp.full(3, step, jnp.float32), 0.0, jnp.zeros(3, jnp.float32), 0.0,
                                           family=family)
            assert not np.isnan(float(got))
            assert np.isfinite(float(got)) or (family == "poisson" and float(got) == -np.inf)


def test_a_vmapped_batch_of_datasets():
    rng = np.random.default_rng(7)
    xs = jnp.asarray(rng.normal(size=(2, 500, 3)), jnp.float32)
    ys = jnp.asarray(rng.random((2, 500)) < 0.5, jnp.float32)
    steps = jnp.asarray(0.01 * rng.normal(size=(2, 16, 3)), jnp.float32)
    ref = jnp.zeros(3, jnp.float32)

    def run(fn):
        def per_dataset(x, y, bs):
            return jax.vmap(lambda b: fn(x, y, b, 0.0, ref, 0.0))(bs)

        return jax.jit(jax.vmap(per_dataset))(xs, ys, steps)

    got, want = run(likelihood_difference), run(glm_log_likelihood_difference)
    np.testing.assert_allclose(np.asarray(got[0]), np.asarray(want[0]), rtol=1e-4, atol=1e-5)
    # the value at the reference (zero: every row's Bernoulli log-likelihood is -log 2) against float64
    # (summed in double, the kernel's error here is 4e-8 relative; XLA's float32 sum's 5e-7)
    np.testing.assert_allclose(np.asarray(got[1]), np.full((2, 16), -500 * np.log(2.0)), rtol=2e-7)
    np.testing.assert_allclose(np.asarray(got[1]), np.asarray(want[1]), rtol=1e-5)
