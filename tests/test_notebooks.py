"""Execute every notebook in notebooks/ top to bottom in light mode (ADVI_JAX_NOTEBOOK_LIGHT=1).

A notebook that reads a large data file (not shipped) runs when the file is found and is
skipped with the reason otherwise (a failure with ADVI_JAX_REQUIRE_DATA=1, as in CI).

The notebooks run at the same time, each in its own process and kernel, started once for the
module: their time is almost all XLA compilation, which is single-threaded, so on a 2-core
machine running them side by side takes about half the time of running them one after another.
Each notebook's test waits for its own run and fails with the failing cell's error.
"""

import os
import pathlib
import subprocess
import sys

import pytest

from conftest import require_data_file

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


@pytest.fixture(scope="module")
def runs():
    """Start every notebook whose data are found; {name: Popen}. Killed if still running at the end."""
    # The kernels inherit this environment: light mode, CPU, and the checkout on the import path.
    env = dict(os.environ, ADVI_JAX_NOTEBOOK_LIGHT="1", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    started = {}
    for path in NOTEBOOKS:
        run_env = dict(env)
        if path.name in DATA_FILES:
            found = _find(DATA_FILES[path.name])
            if found is None:
                continue  # its test skips (or fails in CI) with the reason
            run_env["ADVI_JAX_DATA"] = str(found.parent)  # the kernel finds the same copy
        started[path.name] = subprocess.Popen(
            [sys.executable, "-c", _RUNNER, str(path), str(path.parent)], cwd=ROOT, env=run_env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield started
    for proc in started.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, runs):
    if path.name in DATA_FILES:
        require_data_file(DATA_FILES[path.name])
    proc = runs[path.name]
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        pytest.fail(f"{path.name} did not finish in {TIMEOUT} s\n{stderr[-4000:]}")
    assert proc.returncode == 0 and "NOTEBOOK OK" in stdout, f"{path.name} failed:\n{stderr[-6000:]}"
