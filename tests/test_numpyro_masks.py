"""NumPyro's per-site support mask left out where it is all true (`advi_jax.interop._numpyro_masks`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import advi_jax as aj
from advi_jax.interop import numpyro as anp
from conftest import missing_data

numpyro = pytest.importorskip("numpyro")
dist = numpyro.distributions


def _masked(model):
    """The same model with every site's NumPyro mask (the log joint `from_numpyro` built before)."""
    return anp.NumPyroModel(anp._make_log_joint(model.model_fn, model._arguments), model.support, model.data,
                            model.model_fn, model._arguments, model.deterministic_names, model.observed_names,
                            model.dependent_names)


def _value_and_grad(model):
    return jax.jit(jax.value_and_grad(lambda z: model.log_density_uncached(z)))


def _values_and_grads(*models):
    """One jitted program giving each model's (log density, gradient) at a point: one compile for all."""
    return jax.jit(lambda z: tuple(jax.value_and_grad(lambda x, m=m: m.log_density_uncached(x))(z) for m in models))


def _suite_models():
    from benchmarks.holdout import MODELS as HOLDOUT
    from benchmarks.suite import MODELS

    return {**{n: ("suite", n) for n in MODELS}, **{n: ("holdout", n) for n in HOLDOUT}}


def _build(where, name):
    from benchmarks.holdout import MODELS as HOLDOUT
    from benchmarks.suite import MODELS

    try:
        return (MODELS if where == "suite" else HOLDOUT)[name]()
    except aj.data.DataFileNotFound as err:
        missing_data(f"the data of {name} is not found: {str(err).split(';')[0]}")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(_suite_models()))
def test_suite_log_density_and_gradient_equal_the_masked_ones(name):
    built = _build(*_suite_models()[name])
    model = aj.from_numpyro(built.fn, *built.args)
    masked = _masked(model)
    assert model.unmasked_names  # every suite posterior has at least its observed site unmasked
    rng = np.random.default_rng(0)
    points = [rng.normal(size=model.dim) * s for s in (0.3, 1.0, 3.0)]
    points += [np.full(model.dim, v) for v in (-1e30, -200.0, -89.0, 89.0, 200.0, 1e30)]
    both = _values_and_grads(model, masked)  # one program for the two (a quarter less compile than two)
    for point in points:
        (v, g), (v_masked, g_masked) = both(jnp.asarray(point, jnp.float32))
        v, g, v_masked, g_masked = (np.asarray(a, np.float64) for a in (v, g, v_masked, g_masked))
        # The same function; XLA may fuse the two differently, so they agree to float32 rounding.
        # -inf where the masked one is -inf, NaN where it is NaN (both are, at 1e30 in some models)
        assert np.isfinite(v) == np.isfinite(v_masked) and (np.isfinite(v) or v == v_masked or np.isnan(v_masked))
        assert np.isnan(v) == np.isnan(v_masked)
        np.testing.assert_allclose(v, v_masked, rtol=1e-6)
        np.testing.assert_array_equal(np.isfinite(g), np.isfinite(g_masked))
        finite = np.isfinite(g)
        np.testing.assert_allclose(g[finite], g_masked[finite], rtol=1e-5, atol=1e-5 * np.max(np.abs(g[finite]),
                                                                                                initial=1.0))


def test_op_by_op_log_density_and_gradient_are_bit_identical():
    from benchmarks.suite import EIGHT_SCHOOLS_SIGMA, EIGHT_SCHOOLS_Y, eight_schools_noncentered

    model = aj.from_numpyro(eight_schools_noncentered, EIGHT_SCHOOLS_Y, EIGHT_SCHOOLS_SIGMA)
    assert model.unmasked_names == ("mu", "tau", "theta_tilde", "y")
    masked = _masked(model)
    for scale in (0.3, 1.0, 3.0):
        zeta = scale * jax.random.normal(jax.random.key(1), (model.dim,))
        with jax.disable_jit():  # each operation on its own: where(True, lp, -inf) is lp
            v, g = jax.value_and_grad(model.log_density_uncached)(zeta)
            v_masked, g_masked = jax.value_and_grad(masked.log_density_uncached)(zeta)
        assert float(v) == float(v_masked)
        np.testing.assert_array_equal(np.asarray(g), np.asarray(g_masked))
    # the structure trace's jaxpr: the mask's comparisons and selects are gone
    count = lambda m: len(jax.make_jaxpr(lambda z: m.log_density_uncached(z))(jnp.zeros(model.dim)).eqns)  # noqa: E731
    assert count(model) < count(masked) - 10


@pytest.mark.parametrize("x64", [False, True])
def test_elementwise_supports_stay_inside_numpyro_support_at_extreme_points(x64):
    # A latent site is evaluated at its bijector's output: for the elementwise supports the mask is dropped
    # because that output passes NumPyro's check at every finite point, the extremes included.
    def model():
        numpyro.sample("a", dist.Normal(0.0, 1.0).expand([3]))
        numpyro.sample("b", dist.HalfNormal(1.0).expand([3]))
        numpyro.sample("c", dist.Uniform(0.1, 0.7).expand([3]))
        numpyro.sample("d", dist.Beta(2.0, 3.0).expand([3]))
        numpyro.sample("e", dist.Exponential(2.0).expand([3]))
        numpyro.sample("f", dist.Uniform(-1.0, 2.0).expand([3]).to_event(1))
        numpyro.sample("g", dist.ImproperUniform(dist.constraints.greater_than(0.3), (), (3,)))
        numpyro.sample("h", dist.ImproperUniform(dist.constraints.less_than(-0.3), (), (3,)))
        numpyro.sample("i", dist.ImproperUniform(dist.constraints.softplus_positive, (), (3,)))

    with jax.enable_x64(x64):
        m = aj.from_numpyro(model)
        assert set(m.unmasked_names) == set("abcdef")  # ImproperUniform overrides _validate_sample: kept
        dtype = jnp.float64 if x64 else jnp.float32
        extremes = jnp.asarray([-1e30, -1e4, -745.0, -200.0, -104.0, -88.0, -20.0, 0.0, 20.0, 88.0, 89.0, 200.0,
                                709.0, 710.0, 1e4, 1e30], dtype)
        handlers = numpyro.handlers
        for value in extremes:
            params = m.to_constrained(jnp.full(m.dim, value, dtype))
            tr = handlers.trace(handlers.substitute(handlers.seed(model, 0), data=params)).get_trace()
            for name in "abcdefghi":
                inside = np.asarray(tr[name]["fn"].support(params[name]))
                assert inside.all(), (name, float(value), params[name])
        masked, unmasked = _value_and_grad(_masked(m)), _value_and_grad(m)
        for value in extremes:
            zeta = jnp.full(m.dim, value, dtype)
            (v, g), (v_masked, g_masked) = unmasked(zeta), masked(zeta)
            assert not np.isnan(float(v)) and (float(v) == float(v_masked) or np.isclose(v, v_masked, rtol=1e-6))
            np.testing.assert_array_equal(np.isnan(np.asarray(g)), np.isnan(np.asarray(g_masked)))


def test_observed_site_whose_support_depends_on_a_parameter_keeps_its_mask():
    def model(y):
        theta = numpyro.sample("theta", dist.Exponential(1.0))
        with numpyro.plate("n", y.shape[0]):
            numpyro.sample("y", dist.Uniform(0.0, theta), obs=y)

    y = np.array([0.2, 0.9, 1.5], np.float32)
    m = aj.from_numpyro(model, y)
    assert m.unmasked_names == ("theta",)
    # theta < max(y) = 1.5 puts data outside Uniform(0, theta): the log density is -inf there
    assert float(m.log_density(jnp.log(jnp.asarray([1.2])))) == -np.inf
    above = float(m.log_density(jnp.log(jnp.asarray([2.0]))))
    np.testing.assert_allclose(above, -2.0 - 3 * np.log(2.0) + np.log(2.0), rtol=1e-6)  # prior + 3 log(1/2) + log-det


def test_observed_data_outside_the_support_raise_naming_the_site():
    def model(y):
        lam = numpyro.sample("lam", dist.Exponential(1.0))
        numpyro.sample("counts", dist.Poisson(lam), obs=y)

    with pytest.raises(ValueError, match=r"observed site 'counts' has data outside the support.*flat index 2"):
        aj.from_numpyro(model, np.array([1.0, 2.0, -1.0, 3.0]))
    # the same data under a mask that hides the bad entry: built, that site's mask kept, the log density finite
    def masked_model(y, keep):
        lam = numpyro.sample("lam", dist.Exponential(1.0))
        with numpyro.handlers.mask(mask=keep):
            numpyro.sample("counts", dist.Poisson(lam), obs=y)

    y, keep = np.array([1.0, 2.0, -1.0, 3.0]), np.array([True, True, False, True])
    m = aj.from_numpyro(masked_model, y, keep)
    assert m.unmasked_names == ("lam",)
    from scipy.stats import poisson

    expected = poisson.logpmf([1, 2, 3], 1.0).sum() - 1.0 + 0.0  # Exp(1) prior at 1, log-det 0 at zeta = 0
    np.testing.assert_allclose(float(m.log_density(jnp.zeros(1))), expected, rtol=1e-6)


def test_sites_outside_the_rule_keep_their_masks():
    def model(y):
        p = numpyro.sample("p", dist.Dirichlet(jnp.ones(3)))  # simplex: a tolerance check, kept
        s = numpyro.sample("s", dist.HalfNormal(1.0))
        b = numpyro.sample("b", dist.Uniform(0.0, s))  # bounds depend on s: kept
        numpyro.sample("y", dist.Normal(b * p, 1.0).to_event(1), obs=y)

    m = aj.from_numpyro(model, np.array([0.1, 0.2, 0.3], np.float32))
    assert m.dependent_names == ("b",)
    assert m.unmasked_names == ("s", "y")


def _imputation_model(y, mask):
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    sd = numpyro.sample("sd", dist.HalfNormal(2.0))
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, sd), obs=y, obs_mask=mask)


def test_obs_mask_imputation_with_nan_in_the_hidden_entries():
    # The NumPyro idiom: NaN where obs_mask is False. aj.fit rejected the data outright ("non-finite
    # entries"), and with finite fillers NumPyro's NAME_unobserved was flat at the 170 observed positions,
    # so q's sds there grew without bound (k-hat 3.7, warned) although mu was right. Now the NaN pass, the
    # flat entries get a standard normal (they enter nothing), and mu's posterior is the conjugate one.
    rng = np.random.default_rng(0)
    y = rng.normal(1.0, 1.5, size=200)
    mask = np.ones(200, bool)
    mask[:30] = False
    y[:30] = np.nan
    model = aj.from_numpyro(_imputation_model, jnp.asarray(y), jnp.asarray(mask))
    assert model.imputed_names == ("y",)
    result = aj.fit(model, key=jax.random.key(0), progress=False)
    assert float(result.khat) < 0.7
    draws = result.sample(jax.random.key(1), 8000)
    sd = float(np.mean(draws["sd"]))
    # mu | sd, y ~ N(mean of the 170 observed, sd^2 / 170) under the flat-ish N(0, 10^2) prior
    assert abs(float(np.mean(draws["mu"])) - np.nanmean(y)) < 0.15 * sd / np.sqrt(170)
    assert abs(float(np.std(draws["mu"])) / (sd / np.sqrt(170)) - 1.0) < 0.1
    assert abs(sd - np.nanstd(y)) < 0.15
    # the imputed entries: the predictive N(mu, sd^2); the observed positions of y are the data
    full = np.asarray(model.with_deterministics(draws)["y"])
    imputed = full[:, :30]
    assert abs(imputed.mean() - np.nanmean(y)) < 0.1 and abs(imputed.std() / sd - 1.0) < 0.05
    np.testing.assert_allclose(full[0, 30:], y[30:], rtol=1e-6)
    # a NaN the mask does not hide: the start's error says which data
    y[50] = np.nan
    with pytest.raises(aj.checks.NonFiniteStart, match=r"model.data\[0\] has 31 non-finite entries, and NumPyro"):
        aj.fit(aj.from_numpyro(_imputation_model, jnp.asarray(y), jnp.asarray(mask)), key=jax.random.key(0),
               progress=False)
