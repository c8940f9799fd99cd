"""The notebook runs of tests/test_notebooks.py: started once, early, by whichever process lives longest.

Each notebook in notebooks/ runs top to bottom in light mode (ADVI_JAX_NOTEBOOK_LIGHT=1), in its
own process and kernel, all at the same time, started as soon as the tests are collected so that
they run beside the rest of the suite (their time, like most tests', is XLA compilation).

Who starts them (tests/conftest.py): in a plain run, the pytest process at the end of collection;
under pytest-xdist, the controller process, when the first worker reports its collection (the
controller lives for the whole run and sees the selected tests first; a worker does not know which
files it will be given, and every worker collects). Either way a run leaves its files in one
folder, where the test that checks it (in the same process or in a worker) reads them:
`<name>.out` and `<name>.err` (the run's output), `<name>.pid` (its process group, to kill it on
a timeout) and `<name>.status` (its exit status, written by a thread of the starting process when
the run ends; written to a scratch name and renamed, so a reader sees all of it or nothing).
Under xdist the folder reaches the workers as `workerinput[WORKER_KEY]`.
"""

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from conftest import FAST_XLA_FLAGS, fast_xla

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
DATA_FILES = {"vae_mnist.ipynb": "mnist.npz"}  # notebook -> the data file it loads
WORKER_KEY = "advi_jax_notebook_runs"  # the folder's key in an xdist worker's `workerinput`

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

_state: dict = {"folder": None, "procs": {}, "threads": []}  # in the process that starts the runs


def _find(filename):
    from advi_jax.data import DataFileNotFound, find_data_file

    try:
        return find_data_file(filename)
    except DataFileNotFound:
        return None


def folder() -> pathlib.Path:
    """This process's run folder (made on the first call; removed by `stop_runs`)."""
    if _state["folder"] is None:
        _state["folder"] = pathlib.Path(tempfile.mkdtemp(prefix="advi_jax_notebook_runs-"))
    return _state["folder"]


def _record_exit(proc: subprocess.Popen, path: pathlib.Path) -> None:
    code = proc.wait()
    scratch = path.with_name(path.name + ".part")
    try:
        scratch.write_text(str(code))
        os.replace(scratch, path)
    except OSError:  # the folder is gone: the session ended and nobody waits for this run
        pass


def start_runs(names) -> None:
    """Start the runs of the notebooks named in `names` whose data are found, in `folder()`; once.

    A notebook whose data file is missing is not started: its test skips (or fails with
    ADVI_JAX_REQUIRE_DATA=1) with the reason."""
    if _state["procs"]:
        return
    where = folder()
    # The kernels inherit this environment: light mode, CPU, and the checkout on the import path.
    env = dict(os.environ, ADVI_JAX_NOTEBOOK_LIGHT="1", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if fast_xla():  # the kernels compile with the suite's XLA options (tests/conftest.py)
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + FAST_XLA_FLAGS).strip()
    env.setdefault("OPENBLAS_NUM_THREADS", "1")  # as in the workers they run beside (tests/conftest.py)
    for path in NOTEBOOKS:
        if path.name not in names:
            continue
        run_env = dict(env)
        if path.name in DATA_FILES:
            found = _find(DATA_FILES[path.name])
            if found is None:
                continue
            run_env["ADVI_JAX_DATA"] = str(found.parent)  # the kernel finds the same copy
        # files, not pipes: nothing reads the output until the notebook's test runs
        with open(where / f"{path.name}.out", "w") as out, open(where / f"{path.name}.err", "w") as err:
            proc = subprocess.Popen([sys.executable, "-c", _RUNNER, str(path), str(path.parent)], cwd=ROOT,
                                    env=run_env, stdout=out, stderr=err, text=True, start_new_session=True)
        (where / f"{path.name}.pid").write_text(str(proc.pid))
        thread = threading.Thread(target=_record_exit, args=(proc, where / f"{path.name}.status"), daemon=True,
                                  name=f"notebook-{path.name}")
        thread.start()
        _state["procs"][path.name] = proc
        _state["threads"].append(thread)


def stop_runs() -> None:
    """Kill the runs still going and remove the folder (the end of the session)."""
    for proc in _state["procs"].values():
        if proc.poll() is None:
            _kill_group(proc.pid)
        proc.wait()
    for thread in _state["threads"]:
        thread.join(10)
    _state["procs"].clear()
    _state["threads"].clear()
    if _state["folder"] is not None:
        shutil.rmtree(_state["folder"], ignore_errors=True)
        _state["folder"] = None


def _kill_group(pid: int) -> None:
    """Kill a notebook run with its kernel (its own process group, led by `pid`)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait(where: pathlib.Path, name: str, timeout: float) -> tuple[int | None, str, str]:
    """Wait up to `timeout` s for notebook `name`'s run in `where`: (exit status, stdout, stderr).

    The status is None when the run was not done in time (it is then killed)."""
    if not (where / f"{name}.pid").exists():
        raise RuntimeError(f"the run of {name} was never started (no {name}.pid in {where})")
    status_path, deadline = where / f"{name}.status", time.monotonic() + timeout
    while not status_path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    status = int(status_path.read_text()) if status_path.exists() else None
    if status is None:
        _kill_group(int((where / f"{name}.pid").read_text()))
    return status, (where / f"{name}.out").read_text(), (where / f"{name}.err").read_text()
