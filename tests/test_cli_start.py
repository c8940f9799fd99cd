"""What keeps `import advi_jax` and the command's start and end cheap: the package imports its names
when first used (JAX and optax are not loaded by `import advi_jax`, optax not by a GLM fit), the
figure process can start before JAX is imported, and a command-line run ends without the
interpreter's teardown but with its atexit functions, flushed streams and exit status."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


LAZY = r"""
import json, sys
import advi_jax as aj
out = {"after_import": sorted(m for m in ("jax", "optax", "numpy") if m in sys.modules)}
import advi_jax.cli
out["after_cli"] = sorted(m for m in ("jax", "optax", "numpy") if m in sys.modules)
import jax, numpy as np
x = np.random.default_rng(0).normal(size=(60, 2)); y = (x[:, 0] > 0) * 1.0
result = aj.fit(aj.models.logistic_regression(x, y), key=jax.random.key(0), family="fullrank", progress=False,
                warn=False)
out["method"] = result.method
out["optax_after_glm_fit"] = "optax" in sys.modules
import importlib
out["mismatch"] = [n for n, m in aj._EXPORTS.items()
                   if getattr(aj, n) is not (importlib.import_module(f"advi_jax.{n}") if m is None
                                             else getattr(importlib.import_module(m), n))]
out["exports"] = sorted(aj._EXPORTS) == sorted(aj.__all__)
out["dir"] = set(aj.__all__) <= set(dir(aj))
try:
    aj.no_such_name
    out["missing"] = "no error"
except AttributeError as err:
    out["missing"] = str(err)
print(json.dumps(out))
"""


def test_import_advi_jax_loads_neither_jax_nor_optax_and_names_resolve_to_their_modules():
    proc = _python(LAZY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["after_import"] == [] and out["after_cli"] == []  # the figure process can start before JAX
    assert out["method"] == "glm_exact" and out["optax_after_glm_fit"] is False
    assert out["mismatch"] == [] and out["exports"] and out["dir"]
    assert "has no attribute 'no_such_name'" in out["missing"]


def test_an_advi_fit_still_finds_optax():
    import jax
    import numpy as np

    import advi_jax as aj

    x = np.random.default_rng(1).normal(size=(40, 2))
    y = (x[:, 1] > 0) * 1.0
    result = aj.fit(aj.models.logistic_regression(x, y), key=jax.random.key(0), method="advi", num_steps=30,
                    progress=False, warn=False, diagnostics=False)
    assert result.method == "advi" and result.num_steps == 30 and np.isfinite(result.elbo[-1])


@pytest.mark.parametrize("argv, expected", [
    (["fit"], True),
    (["fit", "--quiet", "--out", "x"], True),
    (["fit", "--no-plots"], False),
    (["fit", "--no-p"], False),  # argparse takes an abbreviation
    (["fit", "--n"], False),
    (["fit", "-h"], False),
    (["fit", "--he"], False),
    (["vae"], False),
    ([], False),
])
def test_which_command_lines_start_the_figure_process_early(argv, expected):
    from advi_jax.cli import _draws_figures

    assert _draws_figures(argv) is expected


def test_an_unused_early_figure_process_is_ended(tmp_path):
    from advi_jax.cli import figures

    figures.start_early()
    process = figures._early
    assert process is not None
    figures.discard_early()
    assert process.poll() is not None and figures._early is None


def test_an_early_figure_process_is_taken_by_the_next_figure_jobs(tmp_path):
    from advi_jax.cli import figures

    figures.start_early()
    process = figures._early
    jobs = figures.FigureJobs.start(tmp_path, separate=True)
    try:
        assert jobs.process is process and figures._early is None
        assert jobs.finish() == []
    finally:
        jobs.close()


END = r"""
import atexit, sys
from advi_jax.cli import end_process
atexit.register(lambda: print("atexit ran"))
print("buffered line", end="")  # flushed by end_process, not by a newline
sys.stderr.write("to stderr")
end_process(int(sys.argv[1]) if sys.argv[1].lstrip("-").isdigit() else (None if sys.argv[1] == "none" else sys.argv[1]))
print("not reached")
"""


@pytest.mark.parametrize("status, code", [("0", 0), ("3", 3), ("none", 0), ("a message", 1)])
def test_end_process_runs_atexit_flushes_and_exits_with_the_status(status, code):
    proc = _python(END, status)
    assert proc.returncode == code
    assert proc.stdout == "buffered lineatexit ran\n"
    assert proc.stderr.startswith("to stderr") and (status != "a message" or "a message" in proc.stderr)


def test_command_line_fit_writes_every_output_and_exits_zero(tmp_path):
    """A real `python -m advi_jax fit` run (the early figure process, the fast end): every file, whole."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               ADVI_JAX_COMPILATION_CACHE="0")
    proc = subprocess.run([sys.executable, "-m", "advi_jax", "fit", "--quiet", "--out", str(tmp_path / "out")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "posterior predictive check" in proc.stdout  # the whole printed summary came through
    import numpy as np

    with np.load(tmp_path / "out" / "draws.npz") as draws:
        assert draws["beta"].shape == (4096, 30)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["fit"]["method"] == "glm_exact"
    for name in ("elbo.png", "marginals.png", "predictive_check.png"):
        data = (tmp_path / "out" / name).read_bytes()
        assert data.startswith(b"\x89PNG") and data.endswith(b"IEND\xaeB`\x82") and len(data) > 10_000


POOL = r"""
import concurrent.futures, sys, threading, time
from advi_jax.cli import end_process
pool = concurrent.futures.ThreadPoolExecutor(1)
pool.submit(lambda: 1).result()  # an idle worker thread, not a daemon: the exit must stop it, not wait forever
def late():
    time.sleep(0.3)
    print("worker done", flush=True)
threading.Thread(target=late).start()
end_process(0)
"""


def test_a_command_line_run_prints_a_warning_as_one_line():
    """On a fresh machine the first `advi-jax fit` printed the native kernel's notice as Python does, two
    lines naming threading.py (the compile thread that traced the GLM) and its source line."""
    code = ("import sys, threading, warnings\n"
            "import advi_jax.cli as cli\n"
            "sys.argv = ['advi-jax']\n"
            "cli._main(None)  # no command: the help, as a command-line run\n"
            "thread = threading.Thread(target=lambda: warnings.warn('advi_jax: a notice\\nin two lines', RuntimeWarning))\n"
            "thread.start(); thread.join()\n")
    run = _python(code)
    assert run.returncode == 0, run.stderr
    assert run.stderr.splitlines() == ["advi-jax: RuntimeWarning: advi_jax: a notice in two lines"], run.stderr


def test_end_process_waits_for_threads_and_stops_idle_thread_pools():
    proc = _python(POOL)
    assert proc.returncode == 0 and proc.stdout == "worker done\n", proc.stderr[-2000:]
