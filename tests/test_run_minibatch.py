"""fit_minibatch (advi_jax/run/minibatch.py) and sharded minibatches."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import advi_jax as aj
from conftest import FAST_XLA_FLAGS, fast_xla

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    # per-step ELBO estimates: the same to float rounding, which the averaged ADVI's noisy constant-step
    # iterates amplify a little over 500 steps (the trace's own noise here is ~0.02)
    np.testing.assert_allclose(r1.elbo, r2.elbo, atol=0.1)
    np.testing.assert_allclose(np.mean(r1.elbo), np.mean(r2.elbo), rtol=1e-4)
    np.testing.assert_allclose(r1.iw_elbo, r2.iw_elbo, rtol=1e-4)  # the diagnostics on sharded data

    mb = aj.MinibatchModel(lambda p: -0.5 * jnp.sum(p["b"] ** 2), lambda p, d: -0.5 * (d[1] - d[0] @ p["b"]) ** 2,
                           {"b": aj.real((3,))}, data=(x, y))
    # (the diagnostics are checked on sharded data above; here only the fits are compared)
    kw = dict(key=jax.random.key(3), batch_size=40, num_epochs=5, diagnostics=False)
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
    kw = dict(key=jax.random.key(4), batched=True, num_steps=300, diagnostics=False)
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
    script = _SHARDING_SCRIPT
    if fast_xla():  # the suite's compile options (tests/conftest.py)
        script = script.replace("device_count=4", "device_count=4 " + FAST_XLA_FLAGS, 1)
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and "SHARDING OK" in out.stdout, out.stdout + out.stderr[-4000:]


def test_new_public_names_resolve():
    for name in ("fit_many", "stack_models", "ManyResult", "MinibatchModel", "fit_minibatch", "shard_data",
                 "data_mesh", "LowRankGaussian", "LowRankParams"):
        assert name in aj.__all__ and getattr(aj, name) is not None
