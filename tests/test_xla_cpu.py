"""`advi_jax._xla_cpu`: the import keeps XLA:CPU's reductions out of YNNPACK on the jaxlib releases that
miscompile them (jaxlib 0.10.2: jax-ml/jax#39103), and leaves every other case as it finds it."""

import os
import subprocess
import sys
import textwrap

import pytest

from advi_jax import _xla_cpu

AFFECTED = _xla_cpu.AFFECTED[0]


def test_guard_adds_the_flag_on_an_affected_jaxlib_and_keeps_the_users_flags(monkeypatch):
    monkeypatch.setattr(_xla_cpu, "_backend_started", lambda: False)  # as at a program's start
    env = {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}
    assert _xla_cpu.guard(env, AFFECTED) == "set"
    assert env["XLA_FLAGS"] == f"--xla_cpu_multi_thread_eigen=false {_xla_cpu.FLAG}"
    env = {}
    assert _xla_cpu.guard(env, (0, 11, 2)) == "set" and env["XLA_FLAGS"] == _xla_cpu.FLAG


@pytest.mark.parametrize("version", [(0, 6, 0), (0, 10, 1), (0, 12, 0)])
def test_guard_leaves_other_jaxlib_versions_alone(version, monkeypatch):
    monkeypatch.setattr(_xla_cpu, "_backend_started", lambda: False)
    env = {}
    assert _xla_cpu.guard(env, version) == "unaffected" and env == {}


def test_guard_keeps_a_users_own_fusion_setting_and_the_opt_out():
    env = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type="}
    assert _xla_cpu.guard(env, AFFECTED) == "user"
    assert env["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type="
    env = {_xla_cpu.VARIABLE: "1"}
    assert _xla_cpu.guard(env, AFFECTED) == "kept" and "XLA_FLAGS" not in env


def test_guard_warns_when_the_backend_started_first(monkeypatch):
    monkeypatch.setattr(_xla_cpu, "_backend_started", lambda: True)
    env = {}
    with pytest.warns(_xla_cpu.YnnReduceWarning, match="import advi_jax before running JAX code"):
        assert _xla_cpu.guard(env, AFFECTED) == "late"
    assert env == {}  # too late to act: nothing changed


def test_jaxlib_version_is_read_without_importing_jaxlib():
    import jaxlib

    assert _xla_cpu.jaxlib_version() == tuple(int(p) for p in jaxlib.__version__.split(".")[:3])


_PROGRAM = textwrap.dedent("""
    import os, sys
    if sys.argv[1] == "advi_jax":
        import advi_jax  # before JAX starts, as a user's script does
    import numpy as np, jax, jax.numpy as jnp
    from jax.scipy.special import gammaln
    from scipy.special import gammaln as gammaln64
    rng = np.random.default_rng(0)
    c = rng.uniform(1, 15, (128, 400, 2)).astype(np.float32)  # a Beta log density's shape, 128 draws x 400 rows
    w = rng.uniform(-3, -0.05, (400, 2)).astype(np.float32)
    jitted = np.asarray(jax.jit(lambda c: jnp.sum(w * c, -1) - jnp.sum(gammaln(c), -1))(c))
    exact = np.sum(w.astype(np.float64) * c, -1) - np.sum(gammaln64(c.astype(np.float64)), -1)
    print(float(np.max(np.abs(jitted - exact))), os.environ.get("XLA_FLAGS", ""))
""")


def _run(mode):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", _xla_cpu.VARIABLE)}
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run([sys.executable, "-c", _PROGRAM, mode], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    error, flags = out.stdout.split(maxsplit=1) if " " in out.stdout.strip() else (out.stdout, "")
    return float(error), flags.strip()


def test_a_sum_of_gammaln_over_a_batch_is_right_after_importing_advi_jax():
    """The pattern that broke a beta regression's diagnostics (k-hat = inf): on jaxlib 0.10.2 the jitted
    sums are off by up to 71 without the flag; with advi_jax imported first they agree with float64."""
    error, flags = _run("advi_jax")
    assert error < 1e-3
    version = _xla_cpu.jaxlib_version()
    if version is not None and _xla_cpu.AFFECTED[0] <= version < _xla_cpu.AFFECTED[1]:
        assert _xla_cpu.FLAG in flags
    if version == (0, 10, 2):  # and the flag is what fixed it: without it, this jaxlib gets the sums wrong
        plain, _ = _run("plain")
        assert plain > 1.0
