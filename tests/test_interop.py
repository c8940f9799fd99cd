"""Tests for advi_jax.interop.numpyro: log densities against NumPyro's own, supports, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from numpyro.infer.util import log_density as _log_density  # noqa: E402
from numpyro.infer.util import potential_energy as _potential_energy  # noqa: E402

import advi_jax as aj  # noqa: E402
from advi_jax.interop import NumPyroModel, numpyro_deterministics  # noqa: E402



def log_density(*args):
    """NumPyro's log_density (NumPyro relies on NumPy rank promotion, which conftest forbids)."""
    with jax.numpy_rank_promotion("allow"):
        return _log_density(*args)


def potential_energy(*args):
    with jax.numpy_rank_promotion("allow"):
        return _potential_energy(*args)


J = 8
Y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def eight_schools_centered(sigma, y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("J", sigma.shape[0]):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def eight_schools_noncentered(sigma, y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("J", sigma.shape[0]):
        theta_raw = numpyro.sample("theta_raw", dist.Normal(0.0, 1.0))
        theta = numpyro.deterministic("theta", mu + tau * theta_raw)
        numpyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def plates_and_factor(x, y, group, num_groups):
    """Nested plates, a masked observation, a scaled site, bounded supports and a factor."""
    scale = numpyro.sample("scale", dist.LogNormal(0.0, 1.0))
    rho = numpyro.sample("rho", dist.Uniform(-1.0, 2.0))
    shift = numpyro.sample("shift", dist.TruncatedNormal(1.0, 2.0, low=0.5))
    cap = numpyro.sample("cap", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    with numpyro.plate("groups", num_groups):
        alpha = numpyro.sample("alpha", dist.Normal(0.0, scale))
        with numpyro.plate("inner", 3, dim=-2):
            numpyro.sample("w", dist.Gamma(2.0, 1.0))
    numpyro.factor("soft_constraint", -0.5 * jnp.sum(cap**2) - jnp.abs(rho))
    with numpyro.plate("data", x.shape[0]):
        eta = alpha[group] + rho * x + shift
        with numpyro.handlers.scale(scale=2.0):
            numpyro.sample("y", dist.Normal(eta, 1.0), obs=y)
        with numpyro.handlers.mask(mask=x > 0):
            numpyro.sample("y2", dist.Normal(eta, 3.0), obs=y)


def _plates_args():
    rng = np.random.default_rng(0)
    x = rng.normal(size=12)
    group = np.arange(12) % 4
    y = x + rng.normal(size=12)
    return (x, y, group, 4)


def _numpyro_unconstrained(model, zeta):
    """Our flat vector as NumPyro's dict of unconstrained site values (same bijectors)."""
    return model.unflatten(zeta)


CASES = {
    "eight_schools_centered": (eight_schools_centered, (SIGMA,), {"y": Y}),
    "eight_schools_noncentered": (eight_schools_noncentered, (SIGMA,), {"y": Y}),
    "plates_and_factor": (plates_and_factor, _plates_args(), {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_log_density_equals_minus_potential_energy(case):
    model_fn, args, kwargs = CASES[case]
    model = aj.from_numpyro(model_fn, *args, **kwargs)
    rng = np.random.default_rng(42)
    ours = jax.jit(model.log_density)
    theirs = jax.jit(lambda z: -potential_energy(model_fn, args, kwargs, _numpyro_unconstrained(model, z)))
    ours_joint = jax.jit(lambda z: model.log_joint_at(model.to_constrained(z)))
    theirs_joint = jax.jit(lambda z: log_density(model_fn, args, kwargs, model.to_constrained(z))[0])
    for _ in range(4):
        zeta = jnp.asarray(rng.normal(scale=1.0, size=model.dim))
        np.testing.assert_allclose(ours(zeta), theirs(zeta), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(ours_joint(zeta), theirs_joint(zeta), rtol=1e-5, atol=1e-4)


def test_sites_shapes_and_supports():
    model = aj.from_numpyro(plates_and_factor, *_plates_args())
    assert model.names == ("scale", "rho", "shift", "cap", "alpha", "w")
    shapes = {n: s.shape for n, s in model.support.items()}
    assert shapes == {"scale": (), "rho": (), "shift": (), "cap": (2,), "alpha": (4,), "w": (3, 4)}
    assert model.support["scale"].name == "positive"
    assert model.support["rho"].name.startswith("interval")
    assert model.support["shift"].name.startswith("lower_bounded")
    assert model.support["cap"].name == "real"
    assert set(model.observed_names) == {"soft_constraint", "y", "y2"}
    assert model.dim == 1 + 1 + 1 + 2 + 4 + 12
    params = model.to_constrained(jnp.full(model.dim, 0.3))
    assert float(params["shift"]) > 0.5 and -1.0 < float(params["rho"]) < 2.0


def test_data_are_arguments_not_constants():
    model = aj.from_numpyro(eight_schools_centered, SIGMA, y=Y)
    leaves = jax.tree_util.tree_leaves(model)
    assert len(leaves) == 2  # sigma and y travel as data
    fn = jax.jit(lambda m, z: m.log_density(z))
    z = jnp.linspace(-1, 1, model.dim)
    np.testing.assert_allclose(fn(model, z), model.log_density(z), rtol=1e-6)
    # the same compiled function on other data gives the other model's value
    other = jax.tree_util.tree_map(lambda a: a * 1.5, model)
    want = -potential_energy(eight_schools_centered, (SIGMA * 1.5,), {"y": Y * 1.5}, model.unflatten(z))
    np.testing.assert_allclose(fn(other, z), want, rtol=1e-5)


def test_deterministics(key):
    model = aj.from_numpyro(eight_schools_noncentered, SIGMA, y=Y)
    assert isinstance(model, NumPyroModel) and model.deterministic_names == ("theta",)
    zeta = jax.random.normal(key, (5, model.dim))
    draws = jax.vmap(model.to_constrained)(zeta)
    out = model.with_deterministics(draws)
    np.testing.assert_allclose(out["theta"], draws["mu"][:, None] + draws["tau"][:, None] * draws["theta_raw"],
                               rtol=1e-5)
    assert set(numpyro_deterministics(model, draws)) == {"mu", "tau", "theta_raw", "theta"}
    one = model.deterministics({k: v[0] for k, v in draws.items()})
    np.testing.assert_allclose(one["theta"], out["theta"][0], rtol=1e-6)


def dirichlet_model(counts, total_count):
    probs = numpyro.sample("probs", dist.Dirichlet(jnp.array([1.5, 2.0, 3.0, 1.0])))
    conc = numpyro.sample("conc", dist.Exponential(1.0))
    with numpyro.plate("groups", counts.shape[0]):
        numpyro.sample("group_probs", dist.Dirichlet(conc * 4.0 * probs + 0.5))
    numpyro.sample("counts", dist.Multinomial(total_count=total_count, probs=probs), obs=counts.sum(0))


def lkj_model(x):
    corr_chol = numpyro.sample("corr_chol", dist.LKJCholesky(3, concentration=2.0))
    sd = numpyro.sample("sd", dist.HalfNormal(1.0).expand([3]).to_event(1))
    with numpyro.plate("n", x.shape[0]):
        numpyro.sample("x", dist.MultivariateNormal(jnp.zeros(3), scale_tril=sd[:, None] * corr_chol), obs=x)


def test_dirichlet_constrained_log_joint():
    counts = np.array([[3.0, 5.0, 9.0, 1.0], [2.0, 4.0, 6.0, 0.0]])
    args = (counts, int(counts.sum()))  # a count used as a shape stays a static Python int
    model = aj.from_numpyro(dirichlet_model, *args)
    assert model.support["probs"].shape == (4,) and model.support["group_probs"].shape == (2, 4)
    assert len(jax.tree_util.tree_leaves(model)) == 1
    # Four points at once, each side one compiled program (op-by-op evaluation compiled ~250 ops).
    zeta = jnp.asarray(np.random.default_rng(7).normal(size=(4, model.dim)))
    params = jax.jit(jax.vmap(model.to_constrained))(zeta)
    np.testing.assert_allclose(params["probs"].sum(-1), 1.0, rtol=1e-5)
    ours = jax.jit(jax.vmap(lambda z: model.log_joint_at(model.to_constrained(z))))(zeta)
    theirs = jax.jit(jax.vmap(lambda p: log_density(dirichlet_model, args, {}, p)[0]))(params)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)
    # advi_jax's simplex bijector is NumPyro's stick-breaking one, so the densities on R^K agree too
    ours = jax.jit(jax.vmap(model.log_density))(zeta)
    theirs = jax.jit(jax.vmap(lambda z: -potential_energy(dirichlet_model, args, {}, model.unflatten(z))))(zeta)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)
    assert np.ptp(np.asarray(ours)) > 1.0  # four distinct points, not one value four times


def test_lkj_constrained_log_joint():
    x = np.random.default_rng(1).normal(size=(10, 3))
    model = aj.from_numpyro(lkj_model, x)
    assert model.support["corr_chol"].shape == (3, 3)
    # Four points at once, each side one compiled program (op-by-op evaluation compiled ~250 ops).
    zeta = jnp.asarray(np.random.default_rng(8).normal(scale=0.5, size=(4, model.dim)))
    params = jax.jit(jax.vmap(model.to_constrained))(zeta)
    ours = jax.jit(jax.vmap(model.log_joint_at))(params)
    theirs = jax.jit(jax.vmap(lambda p: log_density(lkj_model, (x,), {}, p)[0]))(params)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)
    # same corr-Cholesky bijector as NumPyro: the densities on R^K agree as well
    ours = jax.jit(jax.vmap(model.log_density))(zeta)
    theirs = jax.jit(jax.vmap(lambda z: -potential_energy(lkj_model, (x,), {}, model.unflatten(z))))(zeta)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)
    assert np.ptp(np.asarray(ours)) > 1.0  # four distinct points, not one value four times


def discrete_latent():
    numpyro.sample("k", dist.Poisson(3.0))


def bad_constraint():
    numpyro.sample("u", dist.ProjectedNormal(jnp.ones(3)))


def subsampled(y):
    mu = numpyro.sample("mu", dist.Normal())
    with numpyro.plate("n", y.shape[0], subsample_size=2):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y[:2])


def with_param():
    loc = numpyro.param("loc", 0.0)
    numpyro.sample("z", dist.Normal(loc, 1.0))


def test_errors():
    with pytest.raises(ValueError, match=r"site 'k' is a discrete latent variable"):
        aj.from_numpyro(discrete_latent)
    with pytest.raises(ValueError, match=r"site 'u' has constraint .*[Ss]phere"):
        aj.from_numpyro(bad_constraint)
    with pytest.raises(ValueError, match=r"plate 'n' subsamples 2 of 5"):
        aj.from_numpyro(subsampled, np.zeros(5))
    with pytest.raises(ValueError, match=r"site 'loc' is a numpyro.param"):
        aj.from_numpyro(with_param)
    with pytest.raises(ValueError, match="no latent sample sites"):
        aj.from_numpyro(lambda y: numpyro.sample("y", dist.Normal(), obs=y), np.zeros(2))
    with pytest.raises(ValueError, match=r"site 'obs' is a discrete latent"):
        aj.from_numpyro(lambda: numpyro.sample("obs", dist.Bernoulli(0.5)))


def _constraint_table():
    from numpyro.distributions import constraints as c

    return [
        (c.real, (3,), "real", None),
        (c.real_vector, (2, 3), "real", None),
        (c.independent(c.positive, 1), (4,), "positive", None),
        (c.softplus_positive, (), "positive", None),
        (c.nonnegative, (2,), "positive", None),
        (c.greater_than(1.5), (), "lower_bounded", None),
        (c.greater_than(np.array([0.5, 1.0])), (2,), "lower_bounded", None),
        (c.less_than(-2.0), (3,), "upper_bounded", None),
        (c.unit_interval, (2,), "unit_interval", None),
        (c.interval(-3.0, np.array([1.0, 2.0])), (2,), "interval", None),
        (c.circular, (), "interval", None),
        (c.simplex, (2, 4), "simplex", "simplex"),
        (c.ordered_vector, (5,), "ordered", "ordered"),
        (c.positive_ordered_vector, (5,), "positive_ordered", "positive_ordered"),
        (c.zero_sum(), (3, 4), "sum_to_zero", "sum_to_zero"),
        (c.corr_cholesky, (3, 3), "corr_cholesky", "corr_cholesky"),
        (c.corr_matrix, (2, 3, 3), "corr_matrix", "corr_matrix"),
        (c.lower_cholesky, (3, 3), "cholesky", "cholesky_cov"),
        (c.positive_definite, (3, 3), "cov_matrix", "cov_matrix"),
    ]


@pytest.mark.parametrize("index", range(19))
def test_support_from_constraint_table(index):
    from advi_jax.interop import support_from_constraint

    constraint, shape, name, needs = _constraint_table()[index]
    assert needs is None or hasattr(aj, needs)
    support = support_from_constraint(constraint, shape, site="s")
    assert support.shape == shape
    assert support.name.startswith(name) or name in support.name, support.name
    # the bijector maps reals into the constraint, as NumPyro judges it
    zeta = jnp.linspace(-1.0, 1.0, support.unconstrained_size)
    value = jax.jit(aj.Model(lambda p: 0.0, {"s": support}).to_constrained)(zeta)["s"]  # compiled, not op by op
    ok = constraint(value)
    assert bool(jnp.all(ok)), (constraint, value)


def test_model_needing_concrete_data_gets_clear_error_at_from_numpyro():
    g = np.array([0, 1, 2, 1, 0])
    y = np.array([0.1, 0.5, -0.2, 1.0, 0.3])

    def grouped(g, y):
        k = int(g.max()) + 1  # a Python int from a data array: fine eagerly, impossible under jit
        a = numpyro.sample("a", dist.Normal(0.0, 1.0).expand([k]))
        numpyro.sample("y", dist.Normal(a[g], 1.0), obs=y)

    message = r"grouped uses the value of an array argument.*static.*outside the model"
    with pytest.raises(ValueError, match=message) as info:
        aj.from_numpyro(grouped, g, y)
    assert len(str(info.value).splitlines()) == 1 and "ConcretizationTypeError" in str(info.value)

    def branching(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        if y.sum() > 0:  # Python control flow on data
            numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    with pytest.raises(ValueError, match="jnp.where"):
        aj.from_numpyro(branching, y)

    def grouped_static(g, y, k):
        a = numpyro.sample("a", dist.Normal(0.0, 1.0).expand([k]))
        numpyro.sample("y", dist.Normal(a[g], 1.0), obs=y)

    model = aj.from_numpyro(grouped_static, g, y, k=int(g.max()) + 1)  # the documented remedy
    assert model.dim == 3
    params = {"a": jnp.array([0.2, -0.1, 0.4])}
    expected, _ = log_density(grouped_static, (g, y, 3), {}, params)
    np.testing.assert_allclose(jax.jit(model.log_joint_at)(params), expected, rtol=1e-6)


def test_missing_numpyro_names_the_extra(monkeypatch):
    import sys

    from advi_jax._extras import MissingExtraError

    monkeypatch.setitem(sys.modules, "numpyro", None)  # what `import numpyro` sees when it is not installed
    with pytest.raises(MissingExtraError, match=r"from_numpyro needs numpyro.*\[numpyro\]"):
        aj.from_numpyro(lambda: None)


# --- supports whose bounds depend on other parameters (or on the data) ------------------------


def dependent_uniform():
    """alpha ~ U(0, 1), beta | alpha ~ U(0, 1 - alpha): beta's support moves with alpha."""
    alpha = numpyro.sample("alpha", dist.Uniform(0.0, 1.0))
    numpyro.sample("beta", dist.Uniform(0.0, 1.0 - alpha))


def dependent_bounds_with_data(x, y):
    """A lower bound set by a parameter (plated), an upper bound set by the data, an interval by both."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    cap = numpyro.sample("cap", dist.Uniform(-1.0, jnp.max(y)))
    with numpyro.plate("n", x.shape[0]):
        z = numpyro.sample("z", dist.TruncatedNormal(mu, 1.0, low=mu - 0.5))
        w = numpyro.sample("w", dist.Uniform(mu - 1.0, cap + z))
        numpyro.sample("y", dist.Normal(z + w * x, 1.0), obs=y)
    numpyro.sample("top", dist.TruncatedNormal(0.0, 2.0, high=mu))


def _dependent_data():
    rng = np.random.default_rng(3)
    x = rng.normal(size=5)
    return x, 2.0 + x + rng.normal(size=5)


def _dependent_uniform_hand(zeta):
    """Hand-derived log density in (logit alpha, logit(beta / (1 - alpha))) coordinates."""
    za, zb = zeta[0], zeta[1]
    alpha = jax.nn.sigmoid(za)
    log_p = -jnp.log1p(-alpha)  # U(0, 1) for alpha, U(0, 1 - alpha) for beta
    log_det = (jax.nn.log_sigmoid(za) + jax.nn.log_sigmoid(-za)
               + jnp.log1p(-alpha) + jax.nn.log_sigmoid(zb) + jax.nn.log_sigmoid(-zb))
    return log_p + log_det


def test_dependent_uniform_log_density_equals_hand_derived():
    model = aj.from_numpyro(dependent_uniform)
    assert model.dependent_names == ("beta",)
    assert model.support["alpha"].name == "unit_interval"
    assert model.support["beta"].name == "interval(bounds depend on other values)"
    ours = jax.jit(model.log_density)
    for zeta in ([0.3, -1.2], [-2.0, 2.0], [1.5, 0.4], [3.0, -3.0], [-0.7, 5.0]):
        zeta = jnp.asarray(zeta)
        np.testing.assert_allclose(ours(zeta), _dependent_uniform_hand(zeta), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ours(zeta), -potential_energy(dependent_uniform, (), {}, model.unflatten(zeta)),
                                   rtol=1e-5, atol=1e-5)


def test_dependent_bounds_equal_numpyro_potential_energy():
    args = _dependent_data()
    model = aj.from_numpyro(dependent_bounds_with_data, *args)
    assert set(model.dependent_names) == {"cap", "z", "w", "top"}  # cap's bound comes from the data
    assert model.support["mu"].name == "real"
    ours = jax.jit(model.log_density)
    theirs = jax.jit(lambda z: -potential_energy(dependent_bounds_with_data, args, {}, model.unflatten(z)))
    round_trip = jax.jit(lambda z: model.to_unconstrained(model.to_constrained(z)))
    rng = np.random.default_rng(7)
    for _ in range(4):
        zeta = jnp.asarray(rng.normal(scale=1.5, size=model.dim))
        np.testing.assert_allclose(ours(zeta), theirs(zeta), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(round_trip(zeta), zeta, rtol=1e-4, atol=1e-4)
    # the data's bound follows the data the compiled function is given (data are arguments)
    fn = jax.jit(lambda m, z: m.log_density(z))
    other = jax.tree_util.tree_map(lambda a: a + 3.0, model)
    moved = (args[0] + 3.0, args[1] + 3.0)
    want = -potential_energy(dependent_bounds_with_data, moved, {}, model.unflatten(zeta))
    np.testing.assert_allclose(fn(other, zeta), want, rtol=1e-5, atol=1e-4)


def test_dependent_support_draws_stay_inside_and_round_trip():
    model = aj.from_numpyro(dependent_uniform)
    zeta = 4.0 * jax.random.normal(jax.random.key(0), (2000, 2))
    draws = jax.jit(jax.vmap(model.to_constrained))(zeta)
    alpha, beta = np.asarray(draws["alpha"]), np.asarray(draws["beta"])
    assert np.all((alpha > 0) & (alpha < 1))
    assert np.all(beta > 0) and np.all(beta < 1.0 - alpha)  # frozen bounds put many past 1 - alpha
    back = jax.vmap(model.to_unconstrained)(draws)
    moderate = np.max(np.abs(np.asarray(zeta)), axis=1) < 8.0  # past that a float32 sigmoid saturates
    assert moderate.sum() > 1800
    np.testing.assert_allclose(np.asarray(back)[moderate], np.asarray(zeta)[moderate], rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="'beta' is outside its support"):
        model.to_unconstrained({"alpha": 0.8, "beta": 0.5})


def test_dependent_uniform_fit_matches_exact_answer():
    """In (logit alpha, logit(beta / (1 - alpha))) the target is two independent standard logistics.

    So the exact mean-field Gaussian optimum has loc 0 and the scale s* minimising
    KL(N(0, s^2) || Logistic(0, 1)) (1-D quadrature), and E_q[alpha] = 1/2, E_q[beta] = 1/4 exactly.
    With beta's support frozen at one alpha, the alpha marginal is proportional to 1/(1 - alpha),
    which is not integrable: the fit runs towards alpha = 1.
    """
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    weights = weights / weights.sum()
    scales = np.linspace(1.5, 2.0, 5001)
    log_sig = lambda v: -np.logaddexp(0.0, -v)  # noqa: E731
    kl = [-np.log(s) - np.sum(weights * (log_sig(s * nodes) + log_sig(-s * nodes))) for s in scales]
    s_star = scales[int(np.argmin(kl))]  # 1.749
    model = aj.from_numpyro(dependent_uniform)
    result = aj.fit(model, key=jax.random.key(0), family="meanfield", method="advi", num_steps=3000,
                    num_samples=8, init="random", diagnostics=False, progress=False, warn=False)
    np.testing.assert_allclose(result.params.loc, 0.0, atol=0.15)
    np.testing.assert_allclose(jax.nn.softplus(result.params.raw_scale), s_star, rtol=0.05)
    draws = result.sample(jax.random.key(1), 20000)
    # Monte Carlo se of the means: 0.30 / sqrt(20000) = 0.002; the fitted loc moves them by < 0.03.
    np.testing.assert_allclose(float(jnp.mean(draws["alpha"])), 0.5, atol=0.04)
    np.testing.assert_allclose(float(jnp.mean(draws["beta"])), 0.25, atol=0.03)
    assert np.all(np.asarray(draws["beta"]) < 1.0 - np.asarray(draws["alpha"]))


def test_from_numpyro_warns_when_a_transform_hides_the_base_distributions_bound():
    """AffineTransform(-1, 2) of a Beta is declared on R by NumPyro (the transform's default domain):
    the site gets the identity bijector and a warning naming it; with domain=unit_interval it gets
    the (-1, 1) interval and no warning, as does a transform defined on its base's support (log-Gamma)."""
    import warnings

    import numpyro
    import numpyro.distributions as dist
    from numpyro.distributions import constraints
    from numpyro.distributions.transforms import AffineTransform, ExpTransform

    def hidden():
        numpyro.sample("phi", dist.TransformedDistribution(dist.Beta(20.0, 1.5), AffineTransform(-1.0, 2.0)))

    def declared():
        numpyro.sample("phi", dist.TransformedDistribution(
            dist.Beta(20.0, 1.5), AffineTransform(-1.0, 2.0, domain=constraints.unit_interval)))
        numpyro.sample("log_g", dist.TransformedDistribution(dist.Gamma(2.0, 1.0), ExpTransform().inv))
        numpyro.sample("shifted", dist.TransformedDistribution(dist.Normal(0.0, 1.0).expand([3]).to_event(1),
                                                               AffineTransform(1.0, 2.0)))

    with pytest.warns(UserWarning, match=r"site 'phi'.*Beta.*UnitInterval.*domain="):
        model = aj.from_numpyro(hidden)
    assert model.support["phi"].name == "real"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model = aj.from_numpyro(declared)
    assert model.support["phi"].name == "interval(-1.0, 1.0)"
    assert model.support["log_g"].name == "real" and model.support["shifted"].name == "real"


def _normal_mean(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def test_models_of_one_function_on_different_data_stack_and_fit_many(key):
    """from_numpyro(f, y_b) for B datasets are models of the same function that differ only in their
    data: stack_models and fit_many take them (each call builds its own log joint, which must compare
    equal), and each fit recovers its exact conjugate posterior."""
    ys = [np.array([1.0, 2.0, 0.5, 1.5]), np.array([-1.0, 0.0, -2.0, -0.5]), np.array([3.0, 3.5, 2.5, 4.0])]
    models = [aj.from_numpyro(_normal_mean, y) for y in ys]
    stacked = aj.stack_models(models)
    assert isinstance(stacked, NumPyroModel) and stacked.data[0].shape == (3, 4)
    many = aj.fit_many(models, key=key, family="fullrank", num_steps=2000, diagnostics=False)
    precision = 0.25 + 4.0  # N(0, 2^2) prior, four unit-variance observations
    exact = np.array([y.sum() / precision for y in ys])
    np.testing.assert_allclose(np.array([r.family.mean(r.params)[0] for r in many.results]), exact, atol=0.05)
    # a different static argument or function is still refused, naming the model
    with pytest.raises(ValueError, match=r"models\[1\]"):
        aj.stack_models([models[0], aj.from_numpyro(eight_schools_centered, SIGMA[:4], y=ys[1])])
