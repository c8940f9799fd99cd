"""The model's log density is traced once per argument shapes and replayed, cleaned, in every program.

`Model.log_density` runs through one jitted function whose body is the model's jaxpr without dead
code or nested jit calls (`advi_jax._replay`). These tests check that the replay changes nothing
but the program's size: values, gradients and Hessians equal the plain path bit for bit (float32
and float64, under vmap), the model's Python runs once however many programs use it, data stay
arguments, and a whole default fit of a NumPyro model is unchanged.
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402

import advi_jax as aj  # noqa: E402
from advi_jax import _replay  # noqa: E402

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


def _evaluations(model: aj.Model, dtype) -> list[np.ndarray]:
    zetas = jnp.asarray(np.linspace(-1.5, 1.2, 4 * model.dim).reshape(4, model.dim), dtype)
    value = jax.jit(jax.vmap(model.log_density))(zetas)
    grad = jax.jit(jax.grad(lambda z: jnp.sum(jax.vmap(model.log_density)(z) * jnp.arange(1.0, 5.0))))(zetas)
    hess = jax.jit(jax.hessian(model.log_density))(zetas[1])
    return [np.asarray(a) for a in (value, grad, hess)]


@pytest.mark.parametrize("x64", [False, True])
def test_replay_equals_the_plain_log_density_bit_for_bit(x64):
    with jax.enable_x64(x64):
        dtype = jnp.float64 if x64 else jnp.float32
        jax.clear_caches()
        replayed = _evaluations(_model([]), dtype)
        jax.clear_caches()
        with _replay.disabled():
            plain = _evaluations(_model([]), dtype)
        jax.clear_caches()
    assert _replay.enabled()
    for got, want in zip(replayed, plain):
        assert got.dtype == want.dtype == dtype
        np.testing.assert_array_equal(got, want)
    assert np.all(np.isfinite(replayed[2])) and np.all(np.linalg.eigvalsh(replayed[2][:2, :2]) < 0)


def _nested_jits(jaxpr) -> int:
    from jax._src.core import jaxprs_in_params

    return sum((e.primitive.name in ("jit", "pjit")) + sum(_nested_jits(s) for s in jaxprs_in_params(e.params))
               for e in jaxpr.eqns)


def _size(jaxpr) -> int:
    from jax._src.core import jaxprs_in_params

    return sum(1 + sum(_size(s) for s in jaxprs_in_params(e.params)) for e in jaxpr.eqns)


def test_replayed_body_has_no_nested_calls_and_data_stay_arguments():
    model = _model([])
    z = jnp.zeros(model.dim)
    outer = jax.make_jaxpr(lambda m, z: m.log_density(z))(model, z).jaxpr
    (call,) = [e for e in outer.eqns if e.primitive.name in ("jit", "pjit")]
    body = call.params["jaxpr"]
    assert _nested_jits(body.jaxpr) == 0  # where, clip, logsumexp's jits evaluated in place
    with _replay.disabled():
        jax.clear_caches()
        plain = jax.make_jaxpr(lambda m, z: m.log_density(z))(model, z).jaxpr.eqns[-1].params["jaxpr"]
    jax.clear_caches()
    assert _nested_jits(plain.jaxpr) >= 3  # the plain body has them (so the check above can fail)
    assert _size(body.jaxpr) < _size(plain.jaxpr)  # the same operations less the calls
    # the data are inputs of the body, not constants baked into it
    assert not body.consts and [tuple(v.aval.shape) for v in body.jaxpr.invars] == [(12, 2), (12,), (3,)]


def test_model_python_runs_once_for_every_program_with_the_same_shapes():
    calls: list = []
    model = _model(calls)
    z = jnp.linspace(-1.0, 1.0, model.dim)
    zs = jnp.stack([z, -z, 0.5 * z])
    jax.clear_caches()
    jax.jit(model.log_density)(z)
    jax.jit(jax.grad(model.log_density))(z)
    jax.jit(jax.vmap(jax.value_and_grad(model.log_density)))(zs)
    jax.jit(lambda m, z: jax.hessian(m.log_density)(z))(model, z)
    assert len(calls) == 1
    jax.jit(jax.vmap(model.log_density))(zs[:2])  # another batch size: the same per-draw trace
    assert len(calls) == 1
    jax.jit(model.log_density)(z.astype(jnp.float16))  # another dtype: traced again
    assert len(calls) == 2


def _numpyro_logistic(x, y):
    a = numpyro.sample("a", dist.Normal(0.0, 5.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 2.5).expand([x.shape[1]]).to_event(1))
    s = numpyro.sample("s", dist.HalfNormal(1.0))
    with numpyro.plate("n", x.shape[0]):
        numpyro.sample("y", dist.Normal(a + x @ beta, s), obs=y)


def test_default_fit_of_a_numpyro_model_traces_it_twice_and_is_unchanged():
    """The default fit (start program, ADVI loop, diagnostics: many call sites under vmap and grad)
    runs the model's Python twice (the start-up shape check and the one cached trace) and gives the
    plain path's answer bit for bit, with the same gradient count."""
    calls: list = []

    def model_fn(x, y):
        calls.append(1)
        _numpyro_logistic(x, y)

    y = (X @ np.array([0.7, -0.4]) + 0.3 + 0.5 * np.sin(7.0 * np.arange(12))).astype(np.float32)
    results = {}
    for mode in ("replay", "plain"):
        jax.clear_caches()
        model = aj.from_numpyro(model_fn, X, y)
        calls.clear()
        with _replay.disabled() if mode == "plain" else contextlib.nullcontext():
            results[mode] = aj.fit(model, key=jax.random.key(1), progress=False)
        if mode == "replay":
            assert len(calls) == 2, len(calls)
    jax.clear_caches()
    got, want = results["replay"], results["plain"]
    assert int(got.num_grad_evals) == int(want.num_grad_evals)
    for name in ("a", "beta", "s"):
        np.testing.assert_array_equal(np.asarray(got.mean()[name]), np.asarray(want.mean()[name]))
