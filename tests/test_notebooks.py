"""Execute every notebook in notebooks/ top to bottom in light mode (ADVI_JAX_NOTEBOOK_LIGHT=1).

A notebook that reads a large data file (not shipped) runs when the file is found and is
skipped with the reason otherwise (a failure with ADVI_JAX_REQUIRE_DATA=1, as in CI).

The notebooks run at the same time, each in its own process and kernel, started when collection
ends (`start_runs`, called from tests/conftest.py) so that they run beside the rest of the suite:
their time, like most tests', is almost all XLA compilation, which is single-threaded, so on a
2-core machine running them beside the other tests uses the second core.
Each notebook's test waits for its own run and fails with the failing cell's error.
"""

import os
import pathlib
import signal
import subprocess
import sys
import tempfile

import pytest

from conftest import FAST_XLA_FLAGS, fast_xla, require_data_file

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
DATA_FILES = {"vae_mnist.ipynb": "mnist.npz"}  # notebook -> the data file it loads
TIMEOUT = 900  # seconds for one notebook, all of them running at once

# Each kernel talks over Unix sockets in its own temporary folder: kernels started side by side
# over TCP can race for the same free port ("Address already in use", seen on a 2-core CI run).
# The start-up wait is generous because the kernels start while the others compile.
_RUNNER = """
import os, sys, tempfile
import nbclient, nbformat
from jupyter_client.manager import KernelManager
path = sys.argv[1]
notebook = nbformat.read(path, as_version=4)
with tempfile.TemporaryDirectory() as folder:
    km = KernelManager(kernel_name="python3", transport="ipc", ip=os.path.join(folder, "kernel"))
    nbclient.NotebookClient(notebook, km=km, timeout=600, startup_timeout=300,
                            resources={"metadata": {"path": sys.argv[2]}}).execute()
print("NOTEBOOK OK")
"""


def _find(filename):
    from advi_jax.data import DataFileNotFound, find_data_file

    try:
        return find_data_file(filename)
    except DataFileNotFound:
        return None


_STARTED: dict = {}  # name -> Popen, once `start_runs` ran (its output goes to two temporary files)


def start_runs() -> dict:
    """Start every notebook whose data are found (once); {name: Popen}.

    `tests/conftest.py` calls this as soon as collection is done, when this module's tests are
    selected: the notebooks then run beside the rest of the suite, whose compilations leave the
    second core mostly idle. Called again (or first) by the `runs` fixture."""
    if _STARTED:
        return _STARTED
    # The kernels inherit this environment: light mode, CPU, and the checkout on the import path.
    env = dict(os.environ, ADVI_JAX_NOTEBOOK_LIGHT="1", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if fast_xla():  # the kernels compile with the suite's XLA options (tests/conftest.py)
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + FAST_XLA_FLAGS).strip()
    for path in NOTEBOOKS:
        run_env = dict(env)
        if path.name in DATA_FILES:
            found = _find(DATA_FILES[path.name])
            if found is None:
                continue  # its test skips (or fails in CI) with the reason
            run_env["ADVI_JAX_DATA"] = str(found.parent)  # the kernel finds the same copy
        # files, not pipes: nothing reads the output until the notebook's test runs
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        proc = subprocess.Popen([sys.executable, "-c", _RUNNER, str(path), str(path.parent)], cwd=ROOT, env=run_env,
                                stdout=out, stderr=err, text=True, start_new_session=True)
        proc.output_files = (out, err)
        _STARTED[path.name] = proc
    return _STARTED


def _output(proc) -> tuple[str, str]:
    texts = []
    for file in proc.output_files:
        file.seek(0)
        texts.append(file.read())
    return texts[0], texts[1]


def stop_runs() -> None:
    """Kill the notebook runs still going (the end of this module, or of the session)."""
    for proc in _STARTED.values():
        if proc.poll() is None:
            _kill(proc)


def _kill(proc) -> None:
    """Kill a notebook run with its kernel (its own process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.fixture(scope="module")
def runs():
    """The notebook runs, started by `start_runs`; killed if still running at the end."""
    yield start_runs()
    stop_runs()


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, runs):
    if path.name in DATA_FILES:
        require_data_file(DATA_FILES[path.name])
    proc = runs[path.name]
    try:
        proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        _kill(proc)
        stdout, stderr = _output(proc)
        pytest.fail(f"{path.name} did not finish in {TIMEOUT} s\n{stderr[-4000:]}")
    stdout, stderr = _output(proc)
    assert proc.returncode == 0 and "NOTEBOOK OK" in stdout, f"{path.name} failed:\n{stderr[-6000:]}"
