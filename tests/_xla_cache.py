"""One persistent XLA compilation cache per test run, shared by the run's test processes.

JAX keeps compiled programs in memory only, per process; the suite's time is mostly XLA compiling
small programs, and many of them are the same program compiled again: the same default fit of the
same model in another test file, in the other xdist worker, or after `jax.clear_caches()` (which
tests/conftest.py calls after every module). With JAX's persistent compilation cache in a folder
that all of the run's test processes share, each distinct program is compiled once per run and
loaded (milliseconds) after that.

The folder is new and empty for every run: the controller (or the single process of a plain run)
makes it with `tempfile.mkdtemp`, hands it to the xdist workers in `workerinput[WORKER_KEY]`, and
removes it when the run ends, so nothing from an earlier run, another checkout or another version
can be read. JAX's key covers the program, the jaxlib version, the backend and the compile options
(the suite's fast XLA options included: XLA keeps them in the options' debug options), so a test
that compiles with other options gets its own entry. Programs with host callbacks are never
written (JAX's rule). The cache changes only where a compiled program comes from: the compile log
(`jax.log_compiles`, "Finished XLA compilation of ...") and jit's in-memory cache sizes read the
same whether a program was compiled or loaded, so the tests that count compilations see the same
counts.

Processes that tests start (the command line, the multi-device checks, the notebook kernels) do
not use it: the folder is set in this process's `jax.config`, not in the environment.
`ADVI_JAX_TEST_XLA_CACHE=0` turns it off (every program compiled, as without it).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading

VARIABLE = "ADVI_JAX_TEST_XLA_CACHE"
WORKER_KEY = "advi_jax_xla_cache"  # the folder's key in an xdist worker's `workerinput`, counts' in `workeroutput`

MIN_COMPILE_SECS = float(os.environ.get(VARIABLE + "_MIN_SECS", "0"))
"""Programs that took at least this long to compile are written (0: all; `ADVI_JAX_TEST_XLA_CACHE_MIN_SECS`
sets it). Measured in benchmarks/PERFORMANCE.md ("Suite time: ... (`suitecache`)")."""

_EVENTS = {"/jax/compilation_cache/compile_requests_use_cache": "compiles",
           "/jax/compilation_cache/cache_hits": "hits",
           "/jax/compilation_cache/cache_misses": "misses"}
_COMPILE_DURATION = "/jax/core/compile/backend_compile_duration"  # a compile call's seconds, hit or miss

_state = {"folder": None, "owner": False, "listening": False}
_counts = dict.fromkeys([*_EVENTS.values(), "hit_s", "miss_s"], 0)
_lock = threading.Lock()
_thread = threading.local()  # the outcome of this thread's compile call in progress (hits/misses)


def enabled() -> bool:
    """False when `ADVI_JAX_TEST_XLA_CACHE` is 0/false/no/off."""
    return os.environ.get(VARIABLE, "1").strip().lower() not in ("0", "false", "no", "off")


def folder() -> str | None:
    """This run's cache folder in this process (None: off)."""
    return _state["folder"]


def create() -> str:
    """(Controller or plain run) make the run's empty folder; `remove` deletes it."""
    _state["folder"] = tempfile.mkdtemp(prefix="advi_jax_test_xla_cache-")
    _state["owner"] = True
    return _state["folder"]


def _on_event(name, **_):
    key = _EVENTS.get(name)
    if key is not None:
        _thread.outcome = key
        with _lock:
            _counts[key] += 1


def _on_duration(name, seconds, **_):
    """A compile call's seconds, counted as a hit's (loading) or a miss's (compiling and writing)."""
    if name == _COMPILE_DURATION:
        outcome, _thread.outcome = getattr(_thread, "outcome", None), None
        if outcome in ("hits", "misses"):
            with _lock:
                _counts["hit_s" if outcome == "hits" else "miss_s"] += seconds


def use(path: str) -> None:
    """Compile through the cache in `path` from now on in this process, and count its hits."""
    import jax

    _state["folder"] = path
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECS)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if not _state["listening"]:
        jax.monitoring.register_event_listener(_on_event)
        jax.monitoring.register_event_duration_secs_listener(_on_duration)
        _state["listening"] = True


def counts() -> dict:
    """This process's counts: compiles that asked the cache, hits, misses, and the seconds of the
    compile calls that loaded (hits) and that compiled (misses)."""
    with _lock:
        return dict(_counts)


def add(other: dict) -> None:
    """(Controller) add a worker's `counts()`."""
    with _lock:
        for key, value in other.items():
            if key in _counts:
                _counts[key] += value


def summary() -> str:
    """One line for the run's end: hits and misses over all processes, the folder's entries."""
    c = counts()
    entries = size = 0
    try:
        for entry in os.scandir(_state["folder"]):
            if entry.is_file():
                entries, size = entries + 1, size + entry.stat().st_size
    except OSError:
        pass
    return (f"XLA compilation cache (this run's): {c['hits']} of {c['compiles']} compiles loaded, "
            f"{c['misses']} compiled ({c['hit_s']:.1f} s loading, {c['miss_s']:.1f} s compiling); "
            f"{entries} entries, {size / 2**20:.1f} MiB")


def remove() -> None:
    """(Controller or plain run) delete the folder this process made."""
    if _state["owner"] and _state["folder"]:
        shutil.rmtree(_state["folder"], ignore_errors=True)
        _state["owner"] = False
