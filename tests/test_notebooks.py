"""Execute every notebook in notebooks/ top to bottom in light mode (ADVI_JAX_NOTEBOOK_LIGHT=1).

A notebook that reads a large data file (not shipped) runs when the file is found and is
skipped with the reason otherwise (a failure with ADVI_JAX_REQUIRE_DATA=1, as in CI).
"""

import os
import pathlib

import pytest

import nbclient  # noqa: E402
import nbformat  # noqa: E402

from conftest import require_data_file

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
DATA_FILES = {"vae_mnist.ipynb": "mnist.npz"}  # notebook -> the data file it loads


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch):
    if path.name in DATA_FILES:
        found = require_data_file(DATA_FILES[path.name])
        monkeypatch.setenv("ADVI_JAX_DATA", str(found.parent))  # the kernel finds the same copy
    # The kernel inherits this environment: light mode, CPU, and the checkout on the import path.
    monkeypatch.setenv("ADVI_JAX_NOTEBOOK_LIGHT", "1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()
