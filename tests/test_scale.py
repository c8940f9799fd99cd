"""Scale features: fit_many (batched datasets / restarts), minibatch ADVI, sharding, low-rank family."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.scipy.stats import multivariate_normal

import advi_jax as aj

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- LowRankGaussian ------------------------------------------------------------------------------

def _lowrank_params(key, k=6, r=3, spread=1.0):
    fam = aj.LowRankGaussian(rank=r)
    k1, k2, k3 = jax.random.split(key, 3)
    params = fam.init(k1, k, scale=0.5)
    return fam, params._replace(loc=jax.random.normal(k2, (k,)),
                                factor=spread * jax.random.normal(k3, (k, r)))


def test_lowrank_log_prob_and_entropy_match_the_dense_formulas(key):
    fam, params = _lowrank_params(key)
    zeta = jax.random.normal(jax.random.fold_in(key, 1), (7, 6))

    @jax.jit  # one compilation instead of many small eager ones
    def compare(params, zeta):
        cov = fam.covariance(params)
        dense_log_prob = jax.vmap(lambda z: multivariate_normal.logpdf(z, params.loc, cov))(zeta)
        dense_entropy = 0.5 * jnp.linalg.slogdet(2 * jnp.pi * jnp.e * cov)[1]
        L = fam.scale_tril(params)
        return (fam.log_prob(params, zeta), dense_log_prob, fam.entropy(params), dense_entropy,
                fam.variance(params), jnp.diagonal(cov), L @ L.T, cov, fam.log_prob(params, zeta[0]))

    lp, dense_lp, ent, dense_ent, var, dense_var, llt, cov, one = compare(params, zeta)
    np.testing.assert_allclose(lp, dense_lp, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ent, dense_ent, rtol=1e-5)
    np.testing.assert_allclose(var, dense_var, rtol=1e-5)
    np.testing.assert_allclose(llt, cov, rtol=1e-4, atol=1e-4)
    assert one.shape == () and np.isclose(one, lp[0], rtol=1e-5)


def test_lowrank_samples_and_monte_carlo_entropy(key):
    fam, params = _lowrank_params(key)

    @jax.jit
    def moments(params, key):
        draws = fam.sample(params, key, 100_000)
        neg = -fam.log_prob(params, draws)
        return draws.shape, jnp.mean(draws, 0), jnp.cov(draws.T), jnp.mean(neg), jnp.std(neg)

    shape, mean, cov, mc_entropy, sd = moments(params, jax.random.fold_in(key, 2))
    assert shape == (100_000, 6)
    np.testing.assert_allclose(mean, params.loc, atol=0.05)
    np.testing.assert_allclose(cov, fam.covariance(params), atol=0.1, rtol=0.05)
    assert abs(float(mc_entropy) - float(fam.entropy(params))) < 4 * float(sd) / np.sqrt(100_000)


def test_lowrank_is_registered_and_configurable():
    from advi_jax.families import FAMILIES, get_family

    assert isinstance(get_family("lowrank"), aj.LowRankGaussian) and FAMILIES["lowrank"].rank == 10
    assert get_family(aj.LowRankGaussian(rank=5)).rank == 5
    with pytest.raises(ValueError, match="rank"):
        aj.LowRankGaussian(rank=0)


def _hierarchical_logistic(num_groups, per_group, seed=0):
    """y ~ Bernoulli(logit = alpha[g] + x beta), alpha_g ~ N(0, tau^2), tau ~ half-normal: K = G + 4."""
    rng = np.random.default_rng(seed)
    d = 3
    alpha = rng.normal(0, 1.0, size=num_groups)
    beta = np.array([0.5, -0.5, 0.25])
    g = np.repeat(np.arange(num_groups), per_group)
    x = rng.normal(size=(g.size, d))
    y = (rng.random(g.size) < 1 / (1 + np.exp(-(alpha[g] + x @ beta)))).astype(np.float32)

    def log_joint(params, data):
        x, y, g = data
        z = (2 * y - 1) * (params["alpha"][g] + x @ params["beta"])
        tau = params["tau"]
        prior = (-0.5 * jnp.sum(params["beta"] ** 2) - 0.5 * tau**2 - num_groups * jnp.log(tau)
                 - 0.5 * jnp.sum(params["alpha"] ** 2) / tau**2)
        return prior + jnp.sum(jnp.minimum(z, 0.0) - jnp.log1p(jnp.exp(-jnp.abs(z))))

    model = aj.Model(log_joint, {"alpha": aj.real((num_groups,)), "beta": aj.real((d,)), "tau": aj.positive()},
                     data=(jnp.asarray(x, jnp.float32), jnp.asarray(y), jnp.asarray(g, jnp.int32)))
    return model, alpha, beta


def test_lowrank_fit_on_a_hierarchical_model_with_two_thousand_groups(key):
    model, alpha, beta = _hierarchical_logistic(2000, 10)
    assert model.dim == 2004
    result = aj.fit(model, key=key, family=aj.LowRankGaussian(rank=5), num_steps=1500, learning_rate=0.02,
                    progress=False)
    assert np.all(np.isfinite(result.elbo))
    loc = np.asarray(result.family.mean(result.params))
    assert np.corrcoef(loc[:2000], alpha)[0, 1] > 0.6
    mean = result.mean()
    np.testing.assert_allclose(mean["beta"], beta, atol=0.15)
    assert 0.6 < float(mean["tau"]) < 1.5


# --- fit_many ------------------------------------------------------------------------------------

def _normal_mean_log_joint(params, y):
    return -0.5 * jnp.sum(params["mu"] ** 2) - 0.5 * jnp.sum((y - params["mu"][None, :]) ** 2)


_MU_SUPPORT = {"mu": aj.real((2,))}


def _normal_mean_models(num):
    rng = np.random.default_rng(3)
    return [aj.Model(_normal_mean_log_joint, _MU_SUPPORT,
                     data=jnp.asarray(rng.normal(loc=i, size=(50, 2)), jnp.float32)) for i in range(num)]


def test_fit_many_over_datasets_recovers_each_exact_posterior(key):
    models = _normal_mean_models(5)
    many = aj.fit_many(models, key=key, num_steps=3000, family="fullrank")
    assert len(many) == 5 and many.elbo.shape == (5, 3000) and np.all(many.num_steps == 3000)
    for model, result in zip(models, many.results):
        exact_mean = np.asarray(model.data.sum(0) / 51)
        np.testing.assert_allclose(result.family.mean(result.params), exact_mean, atol=0.05)
        np.testing.assert_allclose(np.sqrt(result.family.variance(result.params)), 1 / np.sqrt(51), rtol=0.15)
        assert result.stop_reason == "reached num_steps"
    # the same through an explicitly stacked model
    stacked = aj.stack_models(models)
    assert stacked.data.shape == (5, 50, 2)
    again = aj.fit_many(stacked, key=key, batched=True, num_steps=3000, family="fullrank")
    np.testing.assert_allclose(again.means(), many.means(), rtol=1e-6)


@pytest.mark.parametrize("batched", [True, False])
def test_fit_many_fit_i_is_aj_fit_with_key_fold_in_i(key, batched):
    """Each fit follows aj.fit exactly, with its own stopping step (tol_rel_obj)."""
    models = _normal_mean_models(3)
    opt = optax.adam(0.01)
    kwargs = dict(num_steps=1500, optimizer=opt, tol_rel_obj=0.01, eval_every=50, window=3)
    if batched:
        many = aj.fit_many(models, key=key, chunk_size=400, **kwargs)
    else:
        many = aj.fit_many(models[2], key=key, num_fits=3, chunk_size=400, **kwargs)
    assert len(set(many.num_steps.tolist())) > 1 or many.converged.any()
    for i in range(3):
        single = aj.fit(models[i] if batched else models[2], key=jax.random.fold_in(key, i), progress=False,
                        chunk_size=400, init=None, **kwargs)  # fit_many starts at zero, like init=None
        assert many[i].num_steps == single.num_steps and many[i].stop_reason == single.stop_reason
        np.testing.assert_allclose(many[i].params.loc, single.params.loc, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(many[i].elbo, single.elbo, rtol=1e-4, atol=1e-3)
        assert np.all(np.isnan(many.elbo[i, many[i].num_steps:]))


def test_fit_many_stops_a_nonfinite_fit_and_finishes_the_others(key):
    models = _normal_mean_models(3)
    bad = models[1].data.at[0, 0].set(jnp.nan)
    models[1] = aj.Model(_normal_mean_log_joint, _MU_SUPPORT, data=bad)
    with pytest.raises(ValueError, match=r"fits \[1\]"):
        aj.fit_many(models, key=key, num_steps=200)
    many = aj.fit_many(models, key=key, num_steps=200, max_consecutive_nonfinite=20, check=False)
    assert many.num_steps.tolist() == [200, 20, 200]
    assert many.stop_codes.tolist() == [0, 3, 0] and "non-finite" in many[1].stop_reason
    assert many[1].num_nonfinite == 20 and np.all(np.isfinite(many[1].params.loc))


def test_fit_many_compiles_once(key):
    models = _normal_mean_models(4)
    opt = optax.adam(0.01)
    aj.fit_many(models, key=key, num_steps=300, optimizer=opt, chunk_size=100)
    size = aj.run.num_traces()
    other = [aj.Model(_normal_mean_log_joint, _MU_SUPPORT, data=m.data + 1.0) for m in models]
    aj.fit_many(other, key=jax.random.fold_in(key, 1), num_steps=500, optimizer=opt, chunk_size=100)
    assert aj.run.num_traces() == size


def test_fit_many_rejects_bad_arguments(key):
    models = _normal_mean_models(2)
    with pytest.raises(ValueError, match="num_fits"):
        aj.fit_many(models[0], key=key)
    with pytest.raises(ValueError, match="num_fits=3"):
        aj.fit_many(models, key=key, num_fits=3)
    short = aj.Model(_normal_mean_log_joint, _MU_SUPPORT, data=jnp.zeros((10, 2)))
    with pytest.raises(ValueError, match="shapes"):
        aj.stack_models([models[0], short])
    with pytest.raises(ValueError, match="log_joint or support"):
        aj.stack_models([models[0], aj.Model(lambda p, y: 0.0, _MU_SUPPORT, data=models[0].data)])


# --- minibatch ------------------------------------------------------------------------------------

_rng = np.random.default_rng(1)
N, D = 1000, 3
X = _rng.normal(size=(N, D))
Y = X @ np.array([1.0, -2.0, 0.5]) + _rng.normal(size=N)
COV = np.linalg.inv(np.eye(D) + X.T @ X)
MEAN = COV @ X.T @ Y
SD = np.sqrt(np.diag(COV))
DATA = (X.astype(np.float32), Y.astype(np.float32))


def _log_prior(params):
    return -0.5 * jnp.sum(params["beta"] ** 2)


def _log_likelihood(params, batch):
    x, y = batch
    return -0.5 * (y - x @ params["beta"]) ** 2  # per datum, (B,)


_BETA = {"beta": aj.real((D,))}
_MB_SETTINGS = dict(family="fullrank", batch_size=100, num_epochs=300, num_samples=4, learning_rate=0.03,
                    init_scale=0.03)


def _moments(result):
    return np.asarray(result.family.mean(result.params)), np.sqrt(np.asarray(result.family.variance(result.params)))


def test_minibatch_recovers_the_exact_posterior_and_the_scaling_matters(key):
    model = aj.MinibatchModel(_log_prior, _log_likelihood, _BETA, data=DATA)
    result = aj.fit_minibatch(model, key=key, **_MB_SETTINGS)
    mean, sd = _moments(result)
    assert np.all(np.abs(mean - MEAN) / SD < 0.1), (mean - MEAN) / SD
    np.testing.assert_allclose(sd, SD, rtol=0.15)
    assert result.num_steps == 3000 and result.elbo.shape == (3000,) and np.all(np.isfinite(result.elbo))
    # ELBO trace on the full-data scale: near the full-data ELBO at the final parameters
    full = result.model
    draws = result.sample_unconstrained(jax.random.fold_in(key, 1), 2000)
    full_elbo = float(jnp.mean(jax.vmap(full.log_density)(draws)) + result.family.entropy(result.params))
    assert abs(np.mean(result.elbo[-500:]) - full_elbo) < 0.02 * abs(full_elbo)
    # Forgetting the N / B factor (N taken as the batch size) inflates the sd by ~sqrt(N / B) = 3.2.
    unscaled = aj.MinibatchModel(_log_prior, _log_likelihood, _BETA, data=DATA, num_data=100)
    _, sd_unscaled = _moments(aj.fit_minibatch(unscaled, key=key, **_MB_SETTINGS))
    assert np.all(sd_unscaled / SD > 2.0), sd_unscaled / SD


def test_minibatch_host_streaming_matches_the_device_path(key):
    summed = aj.MinibatchModel(_log_prior, lambda p, b: jnp.sum(_log_likelihood(p, b)), _BETA, data=DATA)
    settings = dict(batch_size=64, num_epochs=3)  # 15 minibatches per epoch, chunks of 4: a ragged last chunk
    device = aj.fit_minibatch(summed, key=key, **settings)
    host = aj.fit_minibatch(summed, key=key, host=True, chunk_batches=4, **settings)
    auto = aj.fit_minibatch(summed, key=key, max_device_bytes=1000, chunk_batches=4, **settings)
    assert device.num_steps == host.num_steps == 45
    np.testing.assert_allclose(host.params.loc, device.params.loc, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(host.elbo, device.elbo, rtol=1e-5)
    np.testing.assert_allclose(auto.elbo, host.elbo, rtol=1e-6)


def test_minibatch_compiles_once_and_checks_arguments(key):
    model = aj.MinibatchModel(_log_prior, _log_likelihood, _BETA, data=DATA)
    opt = optax.adam(0.01)
    aj.fit_minibatch(model, key=key, batch_size=100, num_epochs=2, optimizer=opt)
    size = aj.run.num_traces()
    other = aj.MinibatchModel(_log_prior, _log_likelihood, _BETA, data=(DATA[0], DATA[1] + 1.0))
    aj.fit_minibatch(other, key=jax.random.fold_in(key, 1), batch_size=100, num_epochs=3, optimizer=opt)
    assert aj.run.num_traces() == size
    with pytest.raises(ValueError, match="per-datum"):
        bad = aj.MinibatchModel(_log_prior, lambda p, b: jnp.zeros((2, 3)), _BETA, data=DATA)
        aj.fit_minibatch(bad, key=key, batch_size=10, num_epochs=1)
    with pytest.raises(ValueError, match="leading axis"):
        aj.MinibatchModel(_log_prior, _log_likelihood, _BETA, data=(DATA[0], DATA[1][:10]))
    with pytest.raises(ValueError, match="batch_size"):
        aj.fit_minibatch(model, key=key, batch_size=N + 1, num_epochs=1)


# --- sharding (4 CPU devices, in a subprocess: the flag must precede the jax import) --------------

_SHARDING_SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax, jax.numpy as jnp, numpy as np, advi_jax as aj
    assert jax.device_count() == 4, jax.devices()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -1.0, 0.5]) + rng.normal(size=400)).astype(np.float32)

    def log_joint(p, data):
        x, y = data
        return -0.5 * jnp.sum(p["b"] ** 2) - 0.5 * jnp.sum((y - x @ p["b"]) ** 2)

    model = aj.Model(log_joint, {"b": aj.real((3,))}, data=(jnp.asarray(x), jnp.asarray(y)))
    sharded = aj.shard_data(model)
    assert len(sharded.data[0].sharding.device_set) == 4
    assert sharded.data[0].addressable_shards[0].data.shape == (100, 3)
    fam = aj.FullRankGaussian()
    params = fam.init(jax.random.key(0), 3, scale=0.3)._replace(loc=jnp.array([0.5, -0.2, 0.1]))

    @jax.jit
    def value_and_grad(m, params, key):
        f = lambda p: aj.elbo_surrogate("reparam", fam, m.log_density, p, key, 8)[0]
        return jax.value_and_grad(f)(params)

    v1, g1 = value_and_grad(model, params, jax.random.key(1))
    v2, g2 = value_and_grad(sharded, params, jax.random.key(1))
    np.testing.assert_allclose(v1, v2, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)
    r1 = aj.fit(model, key=jax.random.key(2), num_steps=500, progress=False)
    r2 = aj.fit(sharded, key=jax.random.key(2), num_steps=500, progress=False)
    np.testing.assert_allclose(r1.params.loc, r2.params.loc, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(r1.elbo, r2.elbo, rtol=1e-4)

    mb = aj.MinibatchModel(lambda p: -0.5 * jnp.sum(p["b"] ** 2), lambda p, d: -0.5 * (d[1] - d[0] @ p["b"]) ** 2,
                           {"b": aj.real((3,))}, data=(x, y))
    kw = dict(key=jax.random.key(3), batch_size=40, num_epochs=5)
    m1 = aj.fit_minibatch(mb, **kw)
    m2 = aj.fit_minibatch(aj.shard_data(mb), mesh=aj.data_mesh(), **kw)
    m3 = aj.fit_minibatch(mb, mesh=aj.data_mesh(), host=True, chunk_batches=3, **kw)
    for m in (m2, m3):
        np.testing.assert_allclose(m.params.loc, m1.params.loc, rtol=1e-3, atol=1e-4)
    # fit_many over 8 datasets, the dataset axis sharded: 2 fits per device
    def lj(p, y):
        return -0.5 * jnp.sum(p["mu"] ** 2) - 0.5 * jnp.sum((y - p["mu"][None, :]) ** 2)

    sup = {"mu": aj.real((2,))}
    stacked = aj.stack_models([aj.Model(lj, sup, data=jnp.asarray(rng.normal(i, size=(20, 2)), jnp.float32))
                               for i in range(8)])
    kw = dict(key=jax.random.key(4), batched=True, num_steps=300)
    a, b = aj.fit_many(stacked, **kw), aj.fit_many(aj.shard_data(stacked), **kw)
    np.testing.assert_allclose(a.means(), b.means(), rtol=1e-4, atol=1e-5)
    try:
        aj.shard_data(aj.Model(log_joint, {"b": aj.real((3,))}, data=(jnp.asarray(x[:6]), jnp.asarray(y[:6]))))
        raise AssertionError("expected a ValueError")
    except ValueError as e:
        assert "divisible" in str(e)
    print("SHARDING OK")
""")


def test_sharded_data_give_the_same_elbo_gradient_and_fit_on_four_devices():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", _SHARDING_SCRIPT], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and "SHARDING OK" in out.stdout, out.stdout + out.stderr[-4000:]


def test_new_public_names_resolve():
    for name in ("fit_many", "stack_models", "ManyResult", "MinibatchModel", "fit_minibatch", "shard_data",
                 "data_mesh", "LowRankGaussian", "LowRankParams"):
        assert name in aj.__all__ and getattr(aj, name) is not None
