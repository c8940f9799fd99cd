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


class _Compiles:
    """Counts the XLA programs compiled while it is active (JAX's compile log)."""

    def __enter__(self):
        import logging

        outer = self
        self.count = 0

        class Handler(logging.Handler):
            def emit(self, record):
                if record.getMessage().startswith("Finished XLA compilation"):
                    outer.count += 1

        self._handler = Handler(level=logging.DEBUG)
        self._loggers = [logging.getLogger(n) for n in ("jax._src.interpreters.pxla", "jax._src.dispatch",
                                                        "jax._src.compiler")]
        self._levels = [logger.level for logger in self._loggers]
        for logger in self._loggers:
            logger.addHandler(self._handler)
            logger.setLevel(logging.DEBUG)
        self._log = jax.log_compiles(True)
        self._log.__enter__()
        return self

    def __exit__(self, *exc):
        self._log.__exit__(*exc)
        for logger, level in zip(self._loggers, self._levels):
            logger.removeHandler(self._handler)
            logger.setLevel(level)


def _bounded_model(x, y):
    a = numpyro.sample("a", dist.Normal(0.0, 5.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 2.5).expand([x.shape[1]]).to_event(1))
    nu = numpyro.sample("nu", dist.Uniform(1.0, 30.0))
    s = numpyro.sample("s", dist.HalfNormal(1.0))
    with numpyro.plate("n", x.shape[0]):
        numpyro.sample("y", dist.StudentT(nu, a + x @ beta, s), obs=y)


def test_from_numpyro_reads_the_model_without_compiling():
    """The structure trace runs abstractly: no eager operation, so no XLA program (the eager trace
    compiled one per operation and shape: 9 to 29 for the suite's models, 0.25-0.9 s)."""
    x = np.linspace(-1.0, 1.0, 39).reshape(13, 3).astype(np.float32)  # shapes no other test uses
    y = (x @ np.array([1.0, -0.5, 0.25]) + 0.1 * np.cos(5.0 * np.arange(13))).astype(np.float32)
    jax.clear_caches()
    with _Compiles() as compiled:
        model = aj.from_numpyro(_bounded_model, x, y)
    assert compiled.count == 0
    assert model.names == ("a", "beta", "nu", "s") and model.dim == 6
    assert model.support["nu"].name.startswith("interval") and model.support["s"].name == "positive"
    assert model.dependent_names == ()
    zeta = jnp.linspace(-0.5, 0.5, model.dim)
    params, log_det = model.to_constrained_and_log_det(zeta)
    assert 1.0 < float(params["nu"]) < 30.0
    with jax.numpy_rank_promotion("allow"):
        want = numpyro.infer.util.log_density(_bounded_model, (x, y), {}, params)[0] + log_det
    np.testing.assert_allclose(model.log_density(zeta), want, rtol=1e-5)


def test_from_numpyro_reads_bounds_computed_in_the_model_eagerly():
    """A latent site whose bounds the model computes (here from another parameter) is read from an
    eager run, as before: its support follows the other parameter."""

    def model_fn(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        x = numpyro.sample("x", dist.TruncatedNormal(mu, 1.0, low=mu - 1.0))
        numpyro.sample("y", dist.Normal(x, 1.0), obs=y)

    model = aj.from_numpyro(model_fn, np.array([0.3, 1.1], np.float32))
    assert model.dependent_names == ("x",)
    for zeta in (jnp.array([2.0, -3.0]), jnp.array([-2.0, 4.0])):
        params = model.to_constrained(zeta)
        assert float(params["x"]) > float(params["mu"]) - 1.0
