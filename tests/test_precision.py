"""Fits trace their matrix products at full float32 precision on accelerators (`advi_jax.run.precision`).

No GPU here: the backend the fit sees is patched to "gpu" (the setting is read only by JAX's
tracing and lowering, and XLA:CPU computes float32 products exactly either way), and the programs
the fit lowers are dumped (`jax_dump_ir_to`) and their `dot_general`s' precision read.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import advi_jax as aj
from advi_jax.run import precision
from advi_jax.run.ahead import Ahead


def _model():
    mean = jnp.array([1.0, -2.0, 0.5])
    scale = jnp.array([[1.0, 0.0, 0.0], [0.4, 0.8, 0.0], [0.1, -0.3, 0.5]])

    def log_density(p):
        z = jax.scipy.linalg.solve_triangular(scale, p["x"] - mean, lower=True)
        return -0.5 * jnp.sum(z**2)

    return aj.Model(log_density, {"x": aj.real((3,))})


class Program(str):
    """A lowered program's name (`jit(f)` -> "f"), with `.dots`: its dot_generals' precisions."""

    def __new__(cls, name: str, dots: list[str]):
        self = super().__new__(cls, name)
        self.dots = dots
        return self


@contextlib.contextmanager
def _dumped_programs(folder: Path, backend: str):
    """Within the block, fits see `backend`; yields the list the programs lowered in it are read into
    (after the block): their names and their matrix products' precisions ('DEFAULT', 'HIGHEST', ...)."""
    found: list[Program] = []
    before = jax.config.read("jax_dump_ir_to")
    jax.config.update("jax_dump_ir_to", str(folder))
    try:
        with pytest.MonkeyPatch.context() as m:
            m.setattr(precision, "_backend", lambda: backend)
            yield found
    finally:
        jax.config.update("jax_dump_ir_to", before)
    for path in sorted(folder.glob("*.mlir")):
        dots = [line for line in path.read_text().splitlines() if "stablehlo.dot_general" in line]
        found.append(Program(re.sub(r"^jax_ir\d+_jit_(.*)_compile\.mlir$", r"\1", path.name),
                             [line.split("precision = [")[1].split(",")[0] if "precision = [" in line
                              else "DEFAULT" for line in dots]))


# a short ADVI fit from zero: its loop's programs compile on the background thread (`single._compile_ahead`)
_SHORT = dict(method="advi", family="fullrank", num_steps=300, init=None, progress=False, warn=False)


def test_choose():
    assert precision.choose("gpu", None) == "highest"
    assert precision.choose("tpu", None) == "highest"
    assert precision.choose("cpu", None) is None
    assert precision.choose("gpu", "tensorfloat32") is None  # the user's choice stays
    assert precision.choose("gpu", "float32") is None


def test_context_and_the_compile_thread(monkeypatch):
    monkeypatch.setattr(precision, "_backend", lambda: "gpu")
    assert jax.config.jax_default_matmul_precision is None
    with precision.context():
        assert jax.config.jax_default_matmul_precision == "highest"
        thread = Ahead([("seen", lambda done: done.update(seen=jax.config.jax_default_matmul_precision))])
        assert thread.wait("seen") == "highest"  # the thread runs under the caller's precision
        thread.close()
    assert jax.config.jax_default_matmul_precision is None
    with jax.default_matmul_precision("tensorfloat32"), precision.context():
        assert jax.config.jax_default_matmul_precision == "tensorfloat32"  # the user's choice stays
    monkeypatch.setattr(precision, "_backend", lambda: "cpu")
    with precision.context():
        assert jax.config.jax_default_matmul_precision is None


def test_accelerator_fit_compiles_every_product_at_highest_once(tmp_path):
    with _dumped_programs(tmp_path / "cpu", "cpu") as cpu_programs:
        cpu = aj.fit(_model(), key=jax.random.key(0), **_SHORT)
    with _dumped_programs(tmp_path / "gpu", "gpu") as gpu_programs:
        gpu = aj.fit(_model(), key=jax.random.key(0), **_SHORT)
    cpu_dots = [p for prog in cpu_programs for p in prog.dots]
    gpu_dots = [p for prog in gpu_programs for p in prog.dots]
    assert cpu_dots and set(cpu_dots) == {"DEFAULT"}
    assert set(gpu_dots) == {"HIGHEST"}
    # the fit's programs, each lowered once: the background thread's (under the caller's precision)
    # are the ones the fit called, none was lowered again on the main thread
    fit_programs = {"init_loop", "run_chunk", "finish"}
    assert fit_programs <= set(cpu_programs)
    assert {name: gpu_programs.count(name) for name in fit_programs} == dict.fromkeys(fit_programs, 1)
    # XLA:CPU multiplies float32 exactly whatever the setting: the same fit
    np.testing.assert_array_equal(np.asarray(gpu.params.loc), np.asarray(cpu.params.loc))
    assert jax.config.jax_default_matmul_precision is None  # restored after the fit


def test_fit_many_is_traced_at_highest(tmp_path):
    with _dumped_programs(tmp_path, "gpu") as programs:
        aj.fit_many(_model(), key=jax.random.key(1), num_fits=2, family="fullrank", num_steps=200, progress=False)
    dots = [p for prog in programs for p in prog.dots]
    assert dots and set(dots) == {"HIGHEST"}
    assert aj.fit_minibatch.__wrapped__.__module__ == "advi_jax.run.minibatch"
