"""The exact (quadrature) ELBO for ready GLMs and its second-order fit (advi_jax.vi.glm_exact).

Checks against Monte Carlo (1e6 draws, within standard errors), autodiff, closed forms, the
optimum's stationarity, an ADVI fit, and NumPyro NUTS references.
"""

import dataclasses
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import advi_jax as aj
from advi_jax.families import FullRankParams, MeanFieldParams
from advi_jax.models import logistic_regression, poisson_regression
from advi_jax.vi import METHODS, glm_exact as G

sys.path.insert(0, os.path.dirname(__file__))
from _vi_runner import mc_elbo, run as _run_algorithm  # noqa: E402

REFS = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "references")


def run(module, model, family, options, num_steps=100):
    """(params, last elbo, steps, gradient evaluations, converged) of `module` from zero."""
    algo = module.build(model, family, options)
    loc = jnp.zeros((model.dim,), model.data["x"].dtype)
    params, _, totals = _run_algorithm(algo, jax.random.key(0), loc, num_steps)
    info = totals["info"]
    return params, info.elbo, totals["steps"], totals["grad_evals"], info.converged


def _logistic(n=300, d=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-(x @ np.linspace(1.5, -1.0, d) + 0.3)))).astype(float)
    return logistic_regression(x, y)


def _poisson(n=300, d=3, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    exposure = rng.uniform(0.5, 2.0, n)
    y = rng.poisson(exposure * np.exp(0.5 + x @ np.linspace(0.4, -0.3, d)))
    return poisson_regression(x, y, exposure=exposure)


def _params(family, k, seed, scale=0.3):
    rng = np.random.default_rng(seed)
    loc = jnp.asarray(rng.normal(size=k) * 0.5, jnp.float32)
    raw = jnp.asarray(np.log(np.expm1(scale * rng.uniform(0.5, 1.5, size=k))), jnp.float32)
    if family.name == "meanfield":
        return MeanFieldParams(loc, raw)
    return FullRankParams(loc, raw, jnp.asarray(np.tril(rng.normal(size=(k, k)) * 0.1, -1), jnp.float32))


@pytest.mark.parametrize("kind,fam", [("logistic", "fullrank"), ("poisson", "meanfield")])
def test_exact_elbo_equals_monte_carlo(kind, fam, key):
    model = _logistic(n=100) if kind == "logistic" else _poisson(n=100)
    family = aj.families.get_family(fam)
    params = _params(family, model.dim, 3, scale=0.3 if kind == "logistic" else 0.05)
    exact = float(G.exact_elbo(model, family, params))
    mean, se = mc_elbo(model, family, params, key)
    assert abs(exact - mean) < 4 * se + 1e-6 * abs(mean), (exact, mean, se)
    # And the test has power: a slightly different q is many standard errors away.
    moved = params._replace(loc=params.loc + 0.05)
    assert abs(float(G.exact_elbo(model, family, moved)) - mean) > 10 * se


def test_gradient_equals_monte_carlo_gradient(key):
    model, family = _logistic(), aj.FullRankGaussian()
    params = _params(family, model.dim, 4)
    exact = jax.jit(jax.grad(lambda p: G.exact_elbo(model, family, p)))(params)  # compiled, not op by op

    def mc(p, k):  # reparameterised single-draw objective; autodiff gives its gradient
        z = family.sample(p, k, 1)[0]
        return model.log_density(z) + family.entropy(p)

    keys = jax.random.split(key, 100_000)
    grads = jax.jit(jax.vmap(jax.grad(mc), in_axes=(None, 0)))(params, keys)
    for name in ("loc", "raw_diag"):
        g = np.asarray(getattr(grads, name), np.float64)
        z = (g.mean(0) - np.asarray(getattr(exact, name))) / (g.std(0) / np.sqrt(g.shape[0]))
        assert np.all(np.abs(z) < 4.5), (name, z)
    # Power: the gradient is far from zero in standard-error units.
    g = np.asarray(grads.loc, np.float64)
    assert np.max(np.abs(g.mean(0)) / (g.std(0) / np.sqrt(g.shape[0]))) > 20


def test_poisson_closed_form_equals_quadrature():
    rng = np.random.default_rng(0)
    y = jnp.asarray(rng.poisson(3.0, 50), jnp.float32)
    mu = jnp.asarray(rng.normal(size=50), jnp.float32)
    var = jnp.asarray(rng.uniform(0.01, 1.5, 50), jnp.float32)
    closed = G.expected_log_lik("poisson", y, mu, var, None, None)
    t, w = G.quadrature(64)
    eta = mu[:, None] + jnp.sqrt(var)[:, None] * t[None, :]
    ll = y[:, None] * eta - jnp.exp(eta) - jax.scipy.special.gammaln(y + 1.0)[:, None]
    np.testing.assert_allclose(closed[0], jnp.sum(w[None, :] * ll, axis=1), rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(closed[1], jnp.sum(w[None, :] * (y[:, None] - jnp.exp(eta)), axis=1), rtol=2e-5, atol=2e-5)


def test_logistic_quadrature_derivatives_and_extremes():
    y = jnp.asarray([1.0, 0.0, 1.0, 0.0, 1.0], jnp.float32)
    mu = jnp.asarray([0.3, -2.0, 80.0, -80.0, 0.0], jnp.float32)
    var = jnp.asarray([0.5, 3.0, 1.0, 1e-12, 0.0], jnp.float32)
    t, w = G.quadrature(32)
    value, first, curv = jax.jit(G.expected_log_lik, static_argnums=0)("logistic", y, mu, var, t, w)
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(first)) and np.all(np.isfinite(curv))
    # first = d psi / d mu and curvature = 2 d psi / d var (autodiff of the value, where var > 0)
    f = lambda m, v: G.expected_log_lik("logistic", y[:2], m, v, t, w)[0].sum()  # noqa: E731
    gm, gv = jax.jit(jax.grad(f, (0, 1)))(mu[:2], var[:2])
    np.testing.assert_allclose(gm, first[:2], rtol=1e-5)
    np.testing.assert_allclose(2 * gv, curv[:2], rtol=1e-4)
    # var -> 0: the curvature is -sigmoid'(mu)
    s = jax.nn.sigmoid(mu[4])
    np.testing.assert_allclose(curv[4], -s * (1 - s), rtol=1e-5)


@pytest.mark.parametrize("fam", ["meanfield", "fullrank"])
def test_blocked_pass_equals_autodiff(fam):
    model, family = _logistic(n=203), aj.families.get_family(fam)
    params = _params(family, model.dim, 5)
    layout = G._layout(model)
    meanfield = fam == "meanfield"
    factor = family.scale(params) if meanfield else family.scale_tril(params)
    value, g, h = jax.jit(lambda m, f: G._pass(layout, model.data, m, f, meanfield, None, 64))(params.loc, factor)
    lik = lambda m: G.exact_elbo(model, family, params._replace(loc=m))  # noqa: E731
    prior_prec = 1.0 / jnp.asarray(layout.prior_sd, jnp.float32) ** 2
    grad, hess = jax.jit(lambda m: (jax.grad(lik)(m), jax.hessian(lik)(m)))(params.loc)
    np.testing.assert_allclose(g - prior_prec * params.loc, grad, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(h + jnp.diag(prior_prec), -hess, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("kind,fam", [("logistic", "fullrank"), ("poisson", "meanfield")])
def test_optimum_is_stationary_and_beats_advi(kind, fam, key):
    model = _logistic() if kind == "logistic" else _poisson()
    family = aj.families.get_family(fam)
    params, elbo, steps, evals, done = run(G, model, family, G.Options())
    assert bool(done) and int(steps) < 40 and int(evals) == int(steps)
    value = G.exact_elbo(model, family, params)
    np.testing.assert_allclose(float(elbo), float(value), rtol=1e-5)
    # The natural-gradient norm (distance to the optimum in posterior sds) is ~0.
    sd = jnp.sqrt(family.variance(params))
    grad = jax.jit(jax.grad(lambda m: G.exact_elbo(model, family, params._replace(loc=m))))(params.loc)
    assert float(jnp.max(jnp.abs(grad * sd))) < 5e-3  # float32: 0.005 posterior sd
    # ADVI (stochastic, 2000 steps) lands on a lower exact ELBO.
    res = aj.fit(model, key=key, family=fam, method="advi", num_steps=2000, progress=False, diagnostics=False,
                 warn=False)
    assert res.method == "advi"
    advi = float(G.exact_elbo(model, family, res.params))
    assert float(value) > advi
    assert float(value) - advi < 0.05 * abs(float(value))  # same optimum, roughly


def _compare_to_nuts(model, family, ref):
    params, *_ = run(G, model, family, G.Options())
    mean = np.asarray(params.loc, np.float64)
    sd = np.sqrt(np.asarray(family.variance(params), np.float64))
    errs = []
    for name, s in model.slices().items():
        for j, k in enumerate(range(s.start, s.stop)):
            r = ref["params"]["intercept" if name == "intercept" else f"{name}[{j}]"]
            errs.append(((mean[k] - r["mean"]) / r["sd"], sd[k] / r["sd"] - 1.0))
    return np.abs(np.asarray(errs))


def test_fullrank_matches_nuts_references():
    from benchmarks.suite import MODELS

    sm = MODELS["breast_cancer_logistic"]()
    ref = json.load(open(os.path.join(REFS, "breast_cancer_logistic.json")))
    err = _compare_to_nuts(logistic_regression(np.asarray(sm.args[0]), np.asarray(sm.args[1])), aj.FullRankGaussian(), ref)
    assert err[:, 0].max() <= 0.05 and err[:, 1].mean() <= 0.05, err.max(0)
    sm = MODELS["randhie_poisson"]()
    ref = json.load(open(os.path.join(REFS, "randhie_poisson.json")))
    model = poisson_regression(np.asarray(sm.args[0]), np.asarray(sm.args[1]), offset=np.asarray(sm.args[2]))
    err = _compare_to_nuts(model, aj.FullRankGaussian(), ref)
    assert err[:, 0].max() <= 0.05 and err[:, 1].max() <= 0.05, err.max(0)


def test_contract_and_bad_input():
    assert METHODS["glm_exact"] is G
    assert G.FAMILIES == ("meanfield", "fullrank", "lowrank") and G.WHITEN is False
    x = np.random.default_rng(0).normal(size=(20, 2))
    y = (x[:, 0] > 0) * 1.0
    with pytest.raises(ValueError, match="hierarchical_scale"):
        G.build(logistic_regression(x, y, hierarchical_scale=True), aj.FullRankGaussian(), G.Options())
    with pytest.raises(ValueError, match="families"):
        G.build(logistic_regression(x, y), dataclasses.replace(aj.MeanFieldGaussian(), name="other"), G.Options())
    with pytest.raises(TypeError, match="ready GLMs"):
        G.build(aj.Model(lambda p: -jnp.sum(p["a"] ** 2), {"a": aj.real((2,))}), aj.FullRankGaussian(), G.Options())
    with pytest.raises(ValueError, match="num_nodes"):
        G.build(logistic_regression(x, y), aj.FullRankGaussian(), G.Options(num_nodes=0))
    with pytest.raises(ValueError, match="tol"):
        G.build(logistic_regression(x, y), aj.FullRankGaussian(), G.Options(tol=-1.0))


def test_aj_fit_end_to_end(key):
    model, family = _logistic(), aj.FullRankGaussian()
    res = aj.fit(model, key=key, family="fullrank", method="glm_exact", progress=False, diagnostics=False)
    assert res.report.converged and res.num_grad_evals == res.report.num_steps < 40
    params, elbo, *_ = run(G, model, family, G.Options())
    np.testing.assert_allclose(res.params.loc, params.loc, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(float(res.elbo[-1]), float(elbo), rtol=1e-5)


def test_ready_glm_full_compiles_use_its_compile_options():
    """A ready GLM too large for the fast options compiles "mid" (its class's `full_compile_mode`: the
    classic fusion emitter on CPU) where a plain model compiles "full", with the numbers of XLA's defaults."""
    from advi_jax import compile_options

    model = _logistic(n=3000, d=4)  # 15,000 data entries > FAST_MAX_ENTRIES: a full compile
    on_cpu = jax.default_backend() == "cpu"
    assert compile_options.fast_compile(model) is False
    assert compile_options.compile_mode(model) == ("mid" if on_cpu else "full")
    big_plain = aj.Model(lambda p, data: -0.5 * jnp.sum(p["m"] ** 2) + 0.0 * data.sum(), {"m": aj.real((3,))},
                         data=jnp.ones(15_000))
    assert compile_options.compile_mode(big_plain) == "full"

    @compile_options.jit
    def log_density(model, z):
        return jax.vmap(model.log_density)(z)

    z = jnp.asarray(np.random.default_rng(1).normal(size=(4, model.dim)), jnp.float32)
    value = log_density(model, z)
    reference = jax.jit(jax.vmap(model.log_density))(z)  # XLA's default options
    np.testing.assert_allclose(value, reference, rtol=1e-6)
    assert log_density._cache_size() == 1
    assert log_density.full._cache_size() == (0 if on_cpu else 1)  # the mid version compiled it
    assert log_density.mid._cache_size() == (1 if on_cpu else 0)
    log_density(model, z + 1.0)  # same shapes: no new compilation
    assert log_density._cache_size() == 1


def test_data_constant_is_the_sum_of_log_factorials():
    """The blocked sum (N > its block, not a multiple of it) equals -sum log y! in float64 arithmetic."""
    import math

    y = np.random.default_rng(5).poisson(7.0, 2500).astype(np.float64)
    exact = -math.fsum(math.lgamma(v + 1.0) for v in y)
    np.testing.assert_allclose(float(G.data_constant("poisson", jnp.asarray(y, jnp.float32))), exact, rtol=2e-6)
    np.testing.assert_allclose(float(G.data_constant("negbin", jnp.asarray(y[:700], jnp.float32))),
                               -math.fsum(math.lgamma(v + 1.0) for v in y[:700]), rtol=2e-6)
    assert float(G.data_constant("logistic", jnp.asarray(y))) == 0.0


@pytest.mark.parametrize("kind,fam,kernel", [("poisson", "fullrank", "auto"), ("poisson", "meanfield", "xla"),
                                             ("negbin", "meanfield", "auto")])
def test_reported_elbo_is_the_whole_exact_elbo(kind, fam, kernel, key):
    """The passes leave out -sum log y! (summed once per fit); the ELBO a fit reports must still be the
    whole ELBO: equal to `exact_elbo` (every term per row) at the fitted q, and to a Monte Carlo ELBO
    within its standard error (a constant missing or counted twice is off by ~N)."""
    from advi_jax.models import negbin_regression

    if kind == "poisson":
        model = _poisson(n=300, d=3)
    else:
        rng = np.random.default_rng(2)
        x = rng.normal(size=(300, 3))
        model = negbin_regression(x, rng.negative_binomial(2.0, 2.0 / (2.0 + np.exp(0.8 + 0.4 * x[:, 0]))))
    family = aj.families.get_family(fam)
    res = aj.fit(model, key=key, family=fam, method="glm_exact", options=G.Options(kernel=kernel),
                 progress=False, diagnostics=False)
    assert res.report.converged
    reported = float(res.elbo[-1])
    assert abs(float(G.data_constant(kind, model.data["y"]))) > 100.0  # the hoisted term matters here
    np.testing.assert_allclose(reported, float(G.exact_elbo(model, family, res.params)), rtol=2e-6)
    mean, se = mc_elbo(model, family, res.params, key, num_draws=200_000, chunk=50_000)
    assert abs(reported - mean) < 4 * se + 2e-6 * abs(mean), (reported, mean, se)


def test_fit_many_poisson_has_each_fits_own_constant(key):
    """Batched fits (vmap over stacked models) sum -log y! per fit, not over the batch: each fit's
    reported ELBO equals its own `aj.fit`'s."""
    models = [_poisson(n=150, d=2, seed=s) for s in (3, 4)]
    assert not np.allclose(*[float(G.data_constant("poisson", m.data["y"])) for m in models])
    many = aj.fit_many(models, key=key, method="glm_exact", family="meanfield", progress=False, diagnostics=False)
    for b, model in enumerate(models):
        one = aj.fit(model, key=key, method="glm_exact", family="meanfield", progress=False, diagnostics=False)
        last = many.elbo[b, many[b].num_steps - 1]
        np.testing.assert_allclose(float(last), float(one.elbo[-1]), rtol=1e-6)
