"""Execute every notebook in notebooks/ top to bottom in light mode (ADVI_JAX_NOTEBOOK_LIGHT=1).

A notebook that reads a large data file (not shipped) runs when the file is found and is
skipped with the reason otherwise (a failure with ADVI_JAX_REQUIRE_DATA=1, as in CI).

The notebooks run at the same time, each in its own process and kernel, started when collection
ends (tests/_notebook_runs.py; by the pytest process, or by pytest-xdist's controller) so that
they run beside the rest of the suite. Each notebook's test waits for its own run and fails with
the failing cell's error.
"""

import pathlib

import pytest

import _notebook_runs
from _notebook_runs import DATA_FILES, NOTEBOOKS
from conftest import require_data_file

TIMEOUT = 900  # seconds for one notebook, all of them running at once


@pytest.fixture(scope="module")
def runs_folder(request):
    """The folder of the notebook runs: the controller's under xdist, else this process's (started
    here if collection did not; killed, if still going, at the end of this module)."""
    workerinput = getattr(request.config, "workerinput", None)
    if workerinput is not None and _notebook_runs.WORKER_KEY in workerinput:
        yield pathlib.Path(workerinput[_notebook_runs.WORKER_KEY])
        return
    _notebook_runs.start_runs({path.name for path in NOTEBOOKS})
    yield _notebook_runs.folder()
    _notebook_runs.stop_runs()


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, runs_folder):
    if path.name in DATA_FILES:
        require_data_file(DATA_FILES[path.name])
    status, stdout, stderr = _notebook_runs.wait(runs_folder, path.name, TIMEOUT)
    if status is None:
        pytest.fail(f"{path.name} did not finish in {TIMEOUT} s\n{stderr[-4000:]}")
    assert status == 0 and "NOTEBOOK OK" in stdout, f"{path.name} failed:\n{stderr[-6000:]}"
