"""The one-read GLM log-likelihood (advi_jax/models/glm.py) against the plain autodiff reference, and
the native kernel's build: ahead of need, never while tracing, warnings on, failures explained."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advi_jax.models import _native
from advi_jax.models.glm import (
    build_kernel,
    default_block_size,
    glm_log_likelihood,
    glm_log_likelihood_reference,
    kernel_status,
)


@pytest.fixture(scope="module", autouse=True)
def _native_kernel_built():
    """Wait for the background build started at import (tests that use kernel='native' need it)."""
    build_kernel()


def _data(family, n=1037, d=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = rng.integers(0, 2, n) if family == "bernoulli" else rng.poisson(2.0, n)
    return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), jnp.asarray(rng.normal(size=n) * 0.2, jnp.float32)


@pytest.mark.parametrize("family", ["bernoulli", "poisson"])
@pytest.mark.parametrize("with_offset", [False, True])
def test_value_and_gradients_match_autodiff_under_vmap(family, with_offset):
    x, y, offset = _data(family)
    offset = offset if with_offset else None
    betas = jnp.asarray(np.random.default_rng(1).normal(size=(8, x.shape[1])) * 0.3, jnp.float32)

    def blocked(b, c):  # block of 128 rows: 8 full blocks and a tail of 13
        return glm_log_likelihood(x, y, b, c, offset, family, block_size=128)

    def reference(b, c):
        return glm_log_likelihood_reference(x, y, b, c, offset, family)

    grad = jax.vmap(jax.value_and_grad(blocked, argnums=(0, 1)), in_axes=(0, None))
    grad_ref = jax.vmap(jax.value_and_grad(reference, argnums=(0, 1)), in_axes=(0, None))
    (v, (gb, gc)), (v_ref, (gb_ref, gc_ref)) = jax.jit(grad)(betas, 0.3), jax.jit(grad_ref)(betas, 0.3)
    scale = float(jnp.max(jnp.abs(v_ref)))
    np.testing.assert_allclose(v, v_ref, rtol=1e-5, atol=1e-6 * scale)
    np.testing.assert_allclose(gb, gb_ref, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(gb_ref))))
    np.testing.assert_allclose(gc, gc_ref, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(gc_ref))))


def test_float64_agrees_to_tight_tolerance():
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        x = jnp.asarray(rng.normal(size=(500, 4)))
        y = jnp.asarray(rng.integers(0, 2, 500), jnp.float64)
        b = jnp.asarray(rng.normal(size=4))
        g = jax.grad(lambda b: glm_log_likelihood(x, y, b, block_size=64))(b)
        g_ref = jax.grad(lambda b: glm_log_likelihood_reference(x, y, b))(b)
        assert g.dtype == jnp.float64
        np.testing.assert_allclose(g, g_ref, rtol=1e-10)


def test_extreme_linear_predictors_stay_finite():
    x = jnp.asarray([[1.0], [1.0], [-1.0], [-1.0]])
    y = jnp.asarray([1.0, 0.0, 1.0, 0.0])
    for beta in (-80.0, 80.0):
        v, g = jax.value_and_grad(lambda b: glm_log_likelihood(x, y, b, family="bernoulli", block_size=2))(
            jnp.asarray([beta]))
        v_ref = glm_log_likelihood_reference(x, y, jnp.asarray([beta]), family="bernoulli")
        assert np.isfinite(v) and np.all(np.isfinite(g))
        np.testing.assert_allclose(v, v_ref, rtol=1e-6)  # = -160: two terms of log sigmoid(-80)
    v = glm_log_likelihood(x, jnp.asarray([3.0, 0.0, 1.0, 2.0]), jnp.asarray([20.0]), family="poisson")
    assert np.isfinite(v)


def test_the_design_matrix_is_read_in_one_pass():
    """The XLA pass's gradient jaxpr has one loop over blocks holding the only two products with X
    (on a CPU-only process the default pass is the native kernel alone: no XLA branch is traced)."""
    x, y, _ = _data("bernoulli", n=4096)
    jaxpr = jax.make_jaxpr(jax.grad(lambda b: glm_log_likelihood(x, y, b, block_size=512, kernel="xla")))(
        jnp.zeros(6))
    text = str(jaxpr)
    assert text.count("scan[") + text.count("while[") == 1
    assert text.count("dot_general") == 2  # X_b @ beta and r @ X_b, both inside the loop
    assert "transpose" not in text
    if _native.cpu_only() and _native.available():  # the default pass: the kernel's call alone, nothing else traced
        text = str(jax.make_jaxpr(jax.grad(lambda b: glm_log_likelihood(x, y, b, block_size=512)))(jnp.zeros(6)))
        assert "platform_index" not in text and "while[" not in text and "dot_general" not in text


def test_bad_input_is_named():
    x, y, _ = _data("bernoulli", n=10)
    with pytest.raises(ValueError, match="family"):
        glm_log_likelihood(x, y, jnp.zeros(6), family="gamma")
    with pytest.raises(ValueError, match="beta"):
        glm_log_likelihood(x, y, jnp.zeros(5))
    with pytest.raises(ValueError, match="y"):
        glm_log_likelihood(x, y[:5], jnp.zeros(6))
    assert default_block_size(100) == 8192 and default_block_size(10_000) == 256


# ---- the native CPU kernel (advi_jax/models/_native/glm_kernel.cc) ----------------------------


def test_native_kernel_builds_on_this_machine():
    """CI machines have a C++ compiler: the kernel must build there, not silently fall back."""
    assert _native.available(), _native.reason()
    assert _native.library_path().exists()


@pytest.mark.parametrize("family", ["bernoulli", "poisson"])
@pytest.mark.parametrize("d", [1, 3, 10, 17, 100])
def test_native_kernel_matches_the_xla_pass_and_the_reference(family, d):
    """Every column count exercises a different vector width / overlapping last chunk; 1, 3 and 8
    coefficient vectors exercise the one-, two- and four-sample register blocks (and, at D = 100,
    the row blocks for long rows). All of a column count's cases (three batch sizes, with and
    without offsets; native, XLA and reference) are one jitted program: one compile, not 18."""
    n = 1037  # not a multiple of any tile

    def data(num_betas):  # each batch size's data as drawn when it was a test of its own
        rng = np.random.default_rng(d)
        x = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
        y = jnp.asarray(rng.integers(0, 2, n) if family == "bernoulli" else rng.poisson(2.0, n), jnp.float32)
        offset = jnp.asarray(rng.normal(size=n) * 0.2, jnp.float32)
        return x, y, offset, jnp.asarray(rng.normal(size=(num_betas, d)) * 0.5 / np.sqrt(d), jnp.float32)

    x, y, offset, _ = data(1)
    passes = {"native": lambda b, c, off: glm_log_likelihood(x, y, b, c, off, family, kernel="native"),
              "xla": lambda b, c, off: glm_log_likelihood(x, y, b, c, off, family, kernel="xla"),
              "reference": lambda b, c, off: glm_log_likelihood_reference(x, y, b, c, off, family)}

    @jax.jit
    def everything(all_betas, offset):
        return [[{name: jax.vmap(jax.value_and_grad(lambda b, c, fn=fn, off=off: fn(b, c, off), argnums=(0, 1)),
                                 in_axes=(0, None))(betas, 0.3) for name, fn in passes.items()}
                 for off in (None, offset)] for betas in all_betas]

    all_betas = [data(num_betas)[3] for num_betas in (1, 3, 8)]
    for num_betas, per_offset in zip((1, 3, 8), everything(all_betas, offset)):
        for out in per_offset:
            (v, (gb, gc)), (v_ref, (gb_ref, gc_ref)) = out["native"], out["reference"]
            assert v.shape == (num_betas,) and gb.shape == (num_betas, d)
            scale = float(jnp.max(jnp.abs(v_ref)))
            np.testing.assert_allclose(v, v_ref, rtol=2e-6, atol=2e-6 * scale)
            np.testing.assert_allclose(gb, gb_ref, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(gb_ref))))
            np.testing.assert_allclose(gc, gc_ref, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(gc_ref))))
            np.testing.assert_allclose(v, out["xla"][0], rtol=2e-6, atol=2e-6 * scale)


def test_native_kernel_under_nested_vmap_and_second_derivatives():
    rng = np.random.default_rng(5)
    xs = jnp.asarray(rng.normal(size=(3, 300, 5)), jnp.float32)
    ys = jnp.asarray(rng.integers(0, 2, (3, 300)), jnp.float32)
    bs = jnp.asarray(rng.normal(size=(3, 4, 5)) * 0.5, jnp.float32)

    def grads(kernel):  # datasets x samples, as fit_many with num_samples > 1 does
        one = jax.grad(lambda b, x, y: glm_log_likelihood(x, y, b, kernel=kernel))
        return jax.vmap(lambda x, y, b: jax.vmap(one, in_axes=(0, None, None))(b, x, y))(xs, ys, bs)

    def per_response(kernel):  # one X, a batch of responses
        return jax.vmap(jax.grad(lambda b, y: glm_log_likelihood(xs[0], y, b, kernel=kernel)))(bs[:, 0], ys)

    @jax.jit
    def everything():  # one compiled program instead of op-by-op evaluation of each transform
        return ((grads("native"), grads("xla")), (per_response("native"), per_response("xla")),
                (jax.hessian(lambda b: glm_log_likelihood(xs[0], ys[0], b, kernel="native"))(bs[0, 0]),
                 jax.hessian(lambda b: glm_log_likelihood_reference(xs[0], ys[0], b))(bs[0, 0])))

    nested, responses, (hessian, hessian_ref) = everything()
    np.testing.assert_allclose(*nested, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(*responses, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(hessian, hessian_ref, rtol=1e-4, atol=1e-3)


def test_native_kernel_float64_and_extreme_predictors():
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        x = jnp.asarray(rng.normal(size=(500, 20)))
        y = jnp.asarray(rng.integers(0, 2, 500), jnp.float64)
        b = jnp.asarray(rng.normal(size=20))
        g = jax.jit(jax.grad(lambda b: glm_log_likelihood(x, y, b, kernel="native")))(b)
        g_ref = jax.jit(jax.grad(lambda b: glm_log_likelihood_reference(x, y, b)))(b)
        assert g.dtype == jnp.float64
        np.testing.assert_allclose(g, g_ref, rtol=1e-10)
        # 8 coefficient vectors on 800-byte rows: two groups of 4 float64 lanes across samples,
        # 32-row tiles with the next tile prefetched
        x100 = jnp.asarray(rng.normal(size=(500, 100)))
        b8 = jnp.asarray(rng.normal(size=(8, 100)) * 0.1)
        vg = jax.jit(jax.vmap(jax.value_and_grad(lambda b: glm_log_likelihood(x100, y, b, kernel="native"))))(b8)
        vg_ref = jax.jit(jax.vmap(jax.value_and_grad(lambda b: glm_log_likelihood_reference(x100, y, b))))(b8)
        np.testing.assert_allclose(vg[0], vg_ref[0], rtol=1e-10)
        np.testing.assert_allclose(vg[1], vg_ref[1], rtol=1e-9, atol=1e-10)
        # float32 X with float64 coefficients: mixed dtypes take the XLA pass instead of failing
        x32 = x.astype(jnp.float32)
        g_mixed = jax.jit(jax.grad(lambda b: glm_log_likelihood(x32, y, b, kernel="native")))(b)
        g_mixed_ref = jax.jit(jax.grad(lambda b: glm_log_likelihood_reference(x32, y, b)))(b)
        assert g_mixed.dtype == jnp.float64
        np.testing.assert_allclose(g_mixed, g_mixed_ref, rtol=1e-6)
    x = jnp.ones((40, 16)) * jnp.where(jnp.arange(40)[:, None] % 2 == 0, 1.0, -1.0)
    y = (jnp.arange(40) % 3 == 0).astype(jnp.float32)
    native = jax.jit(jax.value_and_grad(lambda b: glm_log_likelihood(x, y, b, kernel="native")))
    reference = jax.jit(jax.value_and_grad(lambda b: glm_log_likelihood_reference(x, y, b)))
    for scale in (-10.0, 10.0):  # eta = +-160
        beta = jnp.full((16,), scale)
        v, g = native(beta)
        v_ref, g_ref = reference(beta)
        assert np.isfinite(v) and np.all(np.isfinite(g))
        np.testing.assert_allclose(v, v_ref, rtol=1e-6)
        np.testing.assert_allclose(g, g_ref, rtol=1e-6, atol=1e-6)


def test_kernel_argument_and_the_fallback_without_native_code():
    x, y, _ = _data("bernoulli", n=10)
    with pytest.raises(ValueError, match="kernel"):
        glm_log_likelihood(x, y, jnp.zeros(6), kernel="cuda")
    import subprocess
    import sys

    code = ("import jax.numpy as jnp, numpy as np\n"
            "from advi_jax.models import _native\n"
            "from advi_jax.models.glm import glm_log_likelihood as f\n"
            "x = jnp.asarray(np.random.default_rng(0).normal(size=(50, 3)), jnp.float32)\n"
            "print(_native.available())\nprint(_native.reason())\n"
            "print(float(f(x, jnp.ones(50), jnp.ones(3))))\n"
            "try:\n    f(x, jnp.ones(50), jnp.ones(3), kernel='native')\n"
            "except RuntimeError as e:\n    print(e)\n")
    env = dict(os.environ, ADVI_JAX_NATIVE="0", JAX_PLATFORMS="cpu")
    lines = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                           check=True).stdout.splitlines()
    assert lines[:2] == ["False", "disabled by ADVI_JAX_NATIVE=0"], lines
    x50 = jnp.asarray(np.random.default_rng(0).normal(size=(50, 3)), jnp.float32)
    value = float(glm_log_likelihood_reference(x50, jnp.ones(50), jnp.ones(3)))
    np.testing.assert_allclose(float(lines[2]), value, rtol=1e-5)  # the XLA pass ran instead
    assert lines[3].startswith("kernel='native' but the native GLM kernel is unavailable")


def test_native_kernel_split_across_threads_matches_the_reference():
    """Enough rows that the kernel splits each problem into chunks shared out over XLA's thread
    pool; the partial sums are added in a fixed order, so repeated calls agree bit for bit."""
    rng = np.random.default_rng(11)
    xs = jnp.asarray(rng.normal(size=(3, 20000, 17)), jnp.float32)
    ys = jnp.asarray(rng.integers(0, 2, (3, 20000)), jnp.float32)
    bs = jnp.asarray(rng.normal(size=(3, 8, 17)) * 0.2, jnp.float32)

    def vg(fn):
        one = jax.value_and_grad(fn)
        return jax.jit(jax.vmap(lambda x, y, b: jax.vmap(one, in_axes=(0, None, None))(b, x, y)))(xs, ys, bs)

    native = vg(lambda b, x, y: glm_log_likelihood(x, y, b, kernel="native"))
    again = vg(lambda b, x, y: glm_log_likelihood(x, y, b, kernel="native"))
    ref = vg(lambda b, x, y: glm_log_likelihood_reference(x, y, b))
    np.testing.assert_allclose(native[0], ref[0], rtol=2e-6)
    np.testing.assert_allclose(native[1], ref[1], rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(ref[1]))))
    np.testing.assert_array_equal(native[0], again[0])
    np.testing.assert_array_equal(native[1], again[1])


# ---- the value without gradient: batched draws (the importance diagnostics) -------------------


@pytest.mark.parametrize("family", ["bernoulli", "poisson"])
def test_batched_value_equals_the_per_draw_value(family):
    """The diagnostics evaluate 4,096 draws in lax.map batches: the batched value must equal each
    draw's value alone (and the value of the differentiated pass), with or without offsets."""
    x, y, offset = _data(family, n=9000, d=10)  # value pass: one block of 8192 rows and a tail
    rng = np.random.default_rng(3)
    betas = jnp.asarray(rng.normal(size=(300, 10)) * 0.3, jnp.float32)  # 300 = 2 batches of 128 + 44
    cs = jnp.asarray(rng.normal(size=300) * 0.3, jnp.float32)
    for off in ((None,) if family == "bernoulli" else (offset,)):
        def value(bc, off=off):
            return glm_log_likelihood(x, y, bc[0], bc[1], off, family)

        batched = jax.jit(lambda b, c: jax.lax.map(value, (b, c), batch_size=128))(betas, cs)
        single = jax.jit(value)
        per_draw = np.array([float(single((betas[i], cs[i]))) for i in range(0, 300, 23)])
        reference = np.array([float(glm_log_likelihood_reference(x, y, betas[i], cs[i], off, family))
                              for i in range(0, 300, 23)])
        differentiated = jax.jit(jax.vmap(jax.value_and_grad(lambda b, c, off=off: glm_log_likelihood(
            x, y, b, c, off, family))))(betas[::23], cs[::23])[0]
        scale = float(np.max(np.abs(reference)))
        np.testing.assert_allclose(np.asarray(batched)[::23], per_draw, rtol=2e-6, atol=2e-6 * scale)
        np.testing.assert_allclose(per_draw, reference, rtol=2e-6, atol=2e-6 * scale)
        np.testing.assert_allclose(differentiated, per_draw, rtol=2e-6, atol=2e-6 * scale)


def test_value_without_gradient_is_a_matrix_product_not_the_kernel():
    """Under vmap without a gradient, the value is X_b @ B (one product for the batch) and never
    the kernel's value-and-gradient pass; with a gradient, the kernel runs."""
    x, y, _ = _data("bernoulli", n=5000, d=10)
    betas = jnp.zeros((256, 10))
    value_jaxpr = str(jax.make_jaxpr(jax.vmap(lambda b: glm_log_likelihood(x, y, b)))(betas))
    assert "ffi_call" not in value_jaxpr
    assert "dot_general" in value_jaxpr
    grad_jaxpr = str(jax.make_jaxpr(jax.vmap(jax.grad(lambda b: glm_log_likelihood(x, y, b))))(betas))
    assert "ffi_call" in grad_jaxpr


# ---- building the native kernel: ahead of need, warnings on, failures explained ----------------


def test_kernel_compiles_with_warnings_on_and_without_a_warning():
    """-Wall -Wextra, no -w; the compiler's output for the library in use is kept, and must be
    empty: a change to glm_kernel.cc that adds a warning changes the cache key, is rebuilt, and
    fails here."""
    assert {"-Wall", "-Wextra"} <= set(_native.FLAGS) and "-w" not in _native.FLAGS
    assert kernel_status()[0] == "ready"
    log = _native.build_log()
    assert log is not None, "the build log of the library in use is missing"
    assert log.strip() == "", f"compiling glm_kernel.cc printed warnings:\n{log}"


def test_cache_key_hashes_jaxlib_version_compiler_and_flags(monkeypatch):
    command = _native._command("/usr/bin/c++")
    target = _native._target(command)
    assert _native._target(command) == target
    assert _native._target([*command, "-DX"]) != target
    assert _native._target(["/usr/bin/clang++", *command[1:]]) != target
    monkeypatch.setattr(_native, "_jaxlib_version", lambda: "0.0.0-other")
    assert _native._target(command) != target


_FAKE_COMPILER = """#!/bin/sh
case "$*" in *--version*) echo "fakecc 1.0"; exit 0;; esac
while [ ! -f "$FAKE_CC_GO" ]; do sleep 0.05; done
echo "glm_kernel.cc:1:1: error: FAKE COMPILER FAILURE" >&2
exit 1
"""

_BACKGROUND_BUILD = """
import json, os, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import jax, jax.numpy as jnp
    import advi_jax as aj
    from advi_jax.models import _native, glm
    out = {"after_import": _native.status()}
    x = jnp.asarray(jnp.arange(192.0).reshape(64, 3) / 100); y = (jnp.arange(64) % 2).astype(jnp.float32)
    f = lambda b: aj.glm_log_likelihood(x, y, b)
    out["jaxpr"] = str(jax.make_jaxpr(jax.value_and_grad(f))(jnp.zeros(3)))
    out["grad"] = [float(v) for v in jax.jit(jax.grad(f))(jnp.ones(3))]
    out["ref"] = [float(v) for v in jax.grad(lambda b: glm.glm_log_likelihood_reference(x, y, b))(jnp.ones(3))]
    out["while_tracing"] = _native.status()
try:
    aj.glm_log_likelihood(x, y, jnp.zeros(3), kernel="native")
except RuntimeError as err:
    out["native_error"] = str(err)
out["warnings"] = [str(w.message) for w in caught]
open(os.environ["FAKE_CC_GO"], "w").close()
out["built"] = glm.build_kernel(timeout=120)
out["status"] = glm.kernel_status()
out["cache"] = sorted(os.listdir(os.environ["ADVI_JAX_CACHE_DIR"]))
print(json.dumps(out))
"""


def _run_python(code, env):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_background_build_is_never_waited_for_and_a_failure_shows_the_compiler_output(tmp_path):
    """A cache without the kernel: import starts the build and returns; a model traced meanwhile
    takes the XLA pass (one warning), correct; the compile fails and its output is in the reason;
    scratch folders of dead builds are removed, live ones kept."""
    import json
    import time

    from advi_jax.models._native._builder import tmp_prefix

    cache, cc = tmp_path / "cache", tmp_path / "fakecc"
    cc.write_text(_FAKE_COMPILER)
    cc.chmod(0o755)
    cache.mkdir()
    dead = cache / (tmp_prefix(999_999_999) + "x")  # a pid above Linux's maximum: never alive
    live = cache / (tmp_prefix(os.getpid()) + "y")
    old, fresh = cache / "tmpold", cache / "tmpfresh"
    for folder in (dead, live, old, fresh):
        folder.mkdir()
    os.utime(old, (time.time() - 2 * _native.STALE_AFTER_S,) * 2)
    env = dict(os.environ, JAX_PLATFORMS="cpu", CXX=str(cc), ADVI_JAX_CACHE_DIR=str(cache),
               FAKE_CC_GO=str(tmp_path / "go"))
    env.pop("ADVI_JAX_NATIVE", None)
    out = json.loads(_run_python(_BACKGROUND_BUILD, env).splitlines()[-1])
    assert out["after_import"] == "building" and out["while_tracing"] == "building"
    assert "ffi_call" not in out["jaxpr"]
    np.testing.assert_allclose(out["grad"], out["ref"], rtol=1e-5)
    building = [w for w in out["warnings"] if "still being built" in w]
    assert len(building) == 1 and "python -m advi_jax build" in building[0], out["warnings"]
    assert "unavailable" in out["native_error"] and "build_kernel" in out["native_error"]
    assert out["built"] is False
    state, detail = out["status"]
    assert state == "failed" and "FAKE COMPILER FAILURE" in detail and str(cc) in detail, detail
    assert [n for n in out["cache"] if n.startswith("tmp")] == sorted([live.name, fresh.name]), out["cache"]


def test_unwritable_cache_is_named_as_the_cache_folder(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    env = dict(os.environ, JAX_PLATFORMS="cpu", ADVI_JAX_CACHE_DIR=str(blocker / "cache"))
    env.pop("ADVI_JAX_NATIVE", None)
    code = ("import warnings\nwarnings.simplefilter('always')\nfrom advi_jax.models import glm\n"
            "print(glm.kernel_status())\nprint(glm.build_kernel())\n")
    lines = _run_python(code, env).splitlines()
    assert "'failed'" in lines[0] and "cache folder" in lines[0] and str(blocker / "cache") in lines[0], lines
    assert lines[1] == "False"


def test_a_build_killed_midway_leaves_a_folder_that_is_removed(tmp_path):
    import json
    import signal
    import subprocess
    import sys
    import time

    cc = tmp_path / "fakecc"
    cc.write_text(_FAKE_COMPILER)
    cc.chmod(0o755)
    cache = tmp_path / "cache"
    spec = json.dumps({"command": [str(cc)], "source": str(tmp_path / "k.cc"), "target": str(cache / "k.so")})
    env = dict(os.environ, FAKE_CC_GO=str(tmp_path / "never"))
    proc = subprocess.Popen([sys.executable, str(_native._BUILDER), spec], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL)
    try:
        for _ in range(200):
            scratch = list(cache.glob("tmp*")) if cache.exists() else []
            if scratch:
                break
            time.sleep(0.05)
        assert len(scratch) == 1, "the builder made no scratch folder"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the builder and its compiler, as kill -9 would
        proc.wait()
    assert scratch[0].exists()
    assert _native.remove_stale(cache) == scratch
    assert not scratch[0].exists()
