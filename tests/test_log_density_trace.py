"""The model's log density is traced once per argument shapes, however many programs use it.

`Model.log_density` runs through one jitted function (`flatten._log_density`), so the user's log
joint (for a NumPyro model: its handlers, model function and distributions) runs in Python once
per shapes and dtypes; vmap, grad and the programs of a fit transform that one trace. These tests
count the Python calls and check that data stay arguments of the traced body.
"""

import jax
import jax.numpy as jnp
import numpy as np

import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402

import advi_jax as aj  # noqa: E402

X = np.linspace(-2.0, 2.0, 24).reshape(12, 2).astype(np.float32)
Y = (np.sin(3.0 * X[:, 0]) > 0).astype(np.float32)


def _counted(calls: list):
    """A log joint with jitted jnp functions inside (where, clip, logsumexp's custom_jvp, lgamma)."""

    def log_joint(p, data):
        calls.append(1)
        x, y = data
        logits = jnp.clip(x @ p["beta"], -30.0, 30.0)
        lik = jnp.sum(jnp.where(y > 0, jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)))
        prior = -0.5 * jnp.sum(p["beta"] ** 2) + jax.scipy.special.logsumexp(p["beta"]) * 1e-3
        return lik + prior + jnp.sum(jax.lax.lgamma(1.0 + p["s"])) - p["s"]

    return log_joint


def _model(calls: list) -> aj.Model:
    return aj.Model(_counted(calls), {"beta": aj.real((2,)), "s": aj.positive()}, data=(X, Y))


def test_model_python_runs_once_for_every_program_with_the_same_shapes():
    calls: list = []
    model = _model(calls)
    z = jnp.linspace(-1.0, 1.0, model.dim)
    zs = jnp.stack([z, -z, 0.5 * z])
    jax.clear_caches()
    value = jax.jit(model.log_density)(z)
    grad = jax.jit(jax.grad(model.log_density))(z)
    values, grads = jax.jit(jax.vmap(jax.value_and_grad(model.log_density)))(zs)
    hess = jax.jit(lambda m, z: jax.hessian(m.log_density)(z))(model, z)
    assert len(calls) == 1
    jax.jit(jax.vmap(model.log_density))(zs[:2])  # another batch size: the same per-draw trace
    assert len(calls) == 1
    jax.jit(model.log_density)(z.astype(jnp.float16))  # another dtype: traced again
    assert len(calls) == 2
    # the one trace gives the eager values (the same function, differentiated and batched)
    want = model.log_density_uncached(z)
    np.testing.assert_allclose(value, want, rtol=1e-6)
    np.testing.assert_allclose(values[0], want, rtol=1e-6)
    np.testing.assert_allclose(grad, jax.grad(model.log_density_uncached)(z), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads[1], jax.grad(model.log_density_uncached)(-z), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(hess, jax.hessian(model.log_density_uncached)(z), rtol=1e-4, atol=1e-5)


def test_traced_body_takes_the_data_as_arguments():
    model = _model([])
    outer = jax.make_jaxpr(lambda m, z: m.log_density(z))(model, jnp.zeros(model.dim)).jaxpr
    (call,) = [e for e in outer.eqns if e.primitive.name in ("jit", "pjit")]
    body = call.params["jaxpr"]
    assert not body.consts and [tuple(v.aval.shape) for v in body.jaxpr.invars] == [(12, 2), (12,), (3,)]


def _numpyro_regression(x, y):
    a = numpyro.sample("a", dist.Normal(0.0, 5.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 2.5).expand([x.shape[1]]).to_event(1))
    s = numpyro.sample("s", dist.HalfNormal(1.0))
    with numpyro.plate("n", x.shape[0]):
        numpyro.sample("y", dist.Normal(a + x @ beta, s), obs=y)


def test_default_fit_runs_a_numpyro_model_twice():
    """The default fit (start program, ADVI loop, diagnostics: many call sites under vmap and grad,
    some on a second thread) runs the model's Python twice: the start-up shape check and the one
    cached trace."""
    calls: list = []

    def model_fn(x, y):
        calls.append(1)
        _numpyro_regression(x, y)

    y = (X @ np.array([0.7, -0.4]) + 0.3 + 0.5 * np.sin(7.0 * np.arange(12))).astype(np.float32)
    jax.clear_caches()
    model = aj.from_numpyro(model_fn, X, y)
    calls.clear()
    result = aj.fit(model, key=jax.random.key(1), progress=False)
    assert len(calls) == 2, len(calls)
    assert np.isfinite(float(result.mean()["a"]))
