"""Private to `advi_jax.models.glm`: the native CPU GLM kernel, built ahead of need.

Two kernel files in one library (with `glm_simd.h`, their shared vector helpers). `glm_kernel.cc`:
the one-read GLM log-likelihood and gradient, used by
`advi_jax.models.glm.glm_log_likelihood` on CPU and called from XLA through `jax.ffi`; its second
entry point (`GLM_DIFF_TARGETS`) gives the value differences from a reference for many steps in
one read of X (`advi_jax.models.relative`, the importance diagnostics of the ready GLMs).
`glm_exact_kernel.cc` (`GLM_EXACT_TARGETS`): one pass of `glm_exact` (the expected log-likelihood
of a Gaussian q, its gradient in the mean and its expected negative Hessian; `advi_jax.vi.glm_exact`),
and (`LOG_FACTORIAL_TARGETS`) the sum of lgamma(y + 1) that glm_exact adds once per fit.

Building. The source is compiled with the system C++ compiler (`$CXX`, else `c++`/`g++`/
`clang++`) against the XLA FFI headers that ship with jaxlib (`jax.ffi.include_dir()`, as
system headers so that their own warnings stay out of ours), with warnings on (`-Wall
-Wextra`), into a cache folder (`$ADVI_JAX_CACHE_DIR`, else `$XDG_CACHE_HOME/advi_jax`, else
`~/.cache/advi_jax`). The file name hashes the source, the compiler and its flags, jaxlib's
version and the CPU, so a changed machine, compiler or jaxlib builds a new library.

The build never runs on the caller's clock: `start()` (called when `advi_jax.models.glm` is
imported) loads the library when the cache has it and otherwise starts the compiler in a
detached process (`_builder.py`) that fills the cache even if this process exits first; a
thread of this process loads the library when it is done. Until then `status()` is
"building" and the GLM code takes its XLA path. `build()` (what `python -m advi_jax build`
runs) waits for it. `start()` also removes scratch folders left in the cache by builds that
were killed midway.

If no compiler is found, the cache folder is not writable or the compiler fails, `status()` is
"failed" and `reason()` says why, with the compiler's output. `ADVI_JAX_NATIVE=0` disables the
kernel (no build, no use).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
# Imported here, at import time on one thread: imported lazily (in `cpu_only`) from a fit's
# compile thread while another thread imported a jax.extend submodule, `jax.extend.backend` raised
# "module 'jax' has no attribute 'extend'" (the package is in sys.modules before its parent's
# attribute is set). About 20 ms of `import advi_jax`.
import jax.extend.backend
import jax.extend.core  # noqa: F401  (the same for interop._numpyro_bounds' `from jax.extend.core import`)

from advi_jax.models._native._builder import tmp_prefix

__all__ = ["GLM_TARGETS", "GLM_DIFF_TARGETS", "GLM_EXACT_TARGETS", "LOG_FACTORIAL_TARGETS", "FLAGS", "available",
           "build", "build_log",
           "cache_dir", "cpu_only", "library_path", "num_threads", "reason", "remove_stale", "start", "status"]

_SOURCES = tuple(Path(__file__).with_name(name) for name in ("glm_kernel.cc", "glm_exact_kernel.cc"))
_HEADERS = (Path(__file__).with_name("glm_simd.h"),)
_BUILDER = Path(__file__).with_name("_builder.py")
GLM_TARGETS = {"float32": "advi_jax_glm_f32", "float64": "advi_jax_glm_f64"}
_SYMBOLS = {"float32": "AdviJaxGlmF32", "float64": "AdviJaxGlmF64"}
GLM_DIFF_TARGETS = {"float32": "advi_jax_glm_diff_f32", "float64": "advi_jax_glm_diff_f64"}
_DIFF_SYMBOLS = {"float32": "AdviJaxGlmDiffF32", "float64": "AdviJaxGlmDiffF64"}
GLM_EXACT_TARGETS = {"float32": "advi_jax_glm_exact_f32", "float64": "advi_jax_glm_exact_f64"}
_EXACT_SYMBOLS = {"float32": "AdviJaxGlmExactF32", "float64": "AdviJaxGlmExactF64"}
LOG_FACTORIAL_TARGETS = {"float32": "advi_jax_log_factorial_sum_f32", "float64": "advi_jax_log_factorial_sum_f64"}
_LOG_FACTORIAL_SYMBOLS = {"float32": "AdviJaxLogFactorialSumF32", "float64": "AdviJaxLogFactorialSumF64"}
FLAGS = ("-O3", "-march=native", "-std=c++17", "-fopenmp-simd", "-fno-math-errno", "-shared", "-fPIC", "-Wall",
         "-Wextra")
STALE_AFTER_S = 3600.0  # a scratch folder whose owner cannot be checked is stale after an hour
_OUTPUT_CHARS = 6000  # of the compiler's output kept in a failure's reason

_lock = threading.RLock()
_state: dict = {"status": "idle", "reason": ""}


def cache_dir() -> Path:
    """The cache folder: `$ADVI_JAX_CACHE_DIR`, else `$XDG_CACHE_HOME/advi_jax`, else `~/.cache/advi_jax`."""
    if os.environ.get("ADVI_JAX_CACHE_DIR"):
        return Path(os.environ["ADVI_JAX_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "advi_jax"


@functools.cache
def cpu_only() -> bool:
    """Whether CPU is the only platform this process can run programs on.

    Where it is, the callers of the kernel skip `jax.lax.platform_dependent` (which traces the XLA
    branch too, on every first call) and call the kernel directly. Backends are initialised once per
    process (`jax.extend.backend.clear_backends` is not supported here).
    """
    return set(jax.extend.backend.backends()) == {"cpu"}


def _disabled() -> bool:
    return os.environ.get("ADVI_JAX_NATIVE", "1").strip().lower() in ("0", "false", "no", "off")


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _compiler_version(compiler: str) -> str:
    try:
        proc = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30, check=False)
        return proc.stdout.split("\n", 1)[0]
    except (OSError, subprocess.SubprocessError):
        return ""


def _jaxlib_version() -> str:
    import jaxlib

    return getattr(jaxlib, "__version__", None) or jaxlib.version.__version__


def _cpu_fingerprint() -> str:
    text = platform.machine() + platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features", "model name")):
                    text += line
                    if line.startswith(("flags", "Features")):
                        break
    except OSError:
        pass
    return text


def _command(compiler: str) -> list[str]:
    return [compiler, *FLAGS, "-isystem", jax.ffi.include_dir()]


def _target(command: list[str]) -> Path:
    """The cached library's path: hashes the sources and header, the compiler (path and version), its flags,
    jaxlib's version and the CPU."""
    key = hashlib.sha256()
    parts = [path.read_bytes() for path in _SOURCES + _HEADERS]
    for part in (*parts, " ".join(command).encode(), _compiler_version(command[0]).encode(),
                 _jaxlib_version().encode(), _cpu_fingerprint().encode()):
        key.update(part)
        key.update(b"\0")
    return cache_dir() / f"glm_kernel-{key.hexdigest()[:16]}.so"


def num_threads() -> int:
    """Threads the kernel may use: `$ADVI_JAX_NUM_THREADS`, else the CPUs this process may run on."""
    env = os.environ.get("ADVI_JAX_NUM_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ValueError(f"ADVI_JAX_NUM_THREADS must be a positive integer, got {env!r}") from None
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (someone else's), or cannot tell: keep its folder
    return True


def remove_stale(folder: Path | None = None) -> list[Path]:
    """Remove scratch folders (`tmp*`) left in the cache by builds killed midway.

    A folder named by a builder of this host (`tmp-<host>-<pid>-*`) is stale once that process
    is gone; any other `tmp*` folder once it is `STALE_AFTER_S` old. Returns the folders removed.
    """
    folder = cache_dir() if folder is None else Path(folder)
    removed = []
    try:
        entries = list(folder.glob("tmp*"))
    except OSError:
        return removed
    here = tmp_prefix(0)[: -len("0-")]  # "tmp-<host>-"
    for entry in entries:
        try:
            if not entry.is_dir():
                continue
            stale = time.time() - entry.stat().st_mtime > STALE_AFTER_S
            if entry.name.startswith(here):
                pid = entry.name[len(here):].split("-", 1)[0]
                stale = stale or (pid.isdigit() and not _pid_alive(int(pid)))
            if stale:
                shutil.rmtree(entry)
                removed.append(entry)
        except OSError:
            continue
    return removed


def _writable_cache() -> str:
    """'' when the cache folder can be written, else why not (naming the folder)."""
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        return (f"the native-kernel cache folder {folder} is not writable ({err.strerror or err}); "
                "set ADVI_JAX_CACHE_DIR to a writable folder")
    return ""


def _fail(why: str) -> None:
    _state.update(status="failed", reason=why)


def _load(path: Path) -> None:
    lib = ctypes.CDLL(str(path))
    for targets, symbols in ((GLM_TARGETS, _SYMBOLS), (GLM_DIFF_TARGETS, _DIFF_SYMBOLS),
                             (GLM_EXACT_TARGETS, _EXACT_SYMBOLS), (LOG_FACTORIAL_TARGETS, _LOG_FACTORIAL_SYMBOLS)):
        for dtype, target in targets.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbols[dtype])), platform="cpu")
    _state.update(status="ready", reason="", path=path, lib=lib)


def _wait_for_builder(proc: subprocess.Popen, target: Path, command: list[str]) -> None:
    output, _ = proc.communicate()
    with _lock:
        if proc.returncode == 0 and target.exists():
            try:
                _load(target)
            except Exception as err:  # noqa: BLE001 - a library that will not load: use the XLA path
                _fail(f"loading {target} failed: {type(err).__name__}: {err}")
            return
        output = (output or "").strip()
        if len(output) > _OUTPUT_CHARS:
            output = "...\n" + output[-_OUTPUT_CHARS:]
        if proc.returncode == 3:
            _fail(output or f"the native-kernel cache folder {target.parent} is not writable")
        else:
            names = " + ".join(path.name for path in _SOURCES)
            _fail(f"compiling {names} failed (exit status {proc.returncode}) with\n  {' '.join(command)}\n"
                  f"compiler output:\n{output or '(none)'}")


def start() -> str:
    """Make the kernel ready without waiting: load it from the cache, or start building it.

    Never blocks on the compiler: when the cache lacks the library, a detached process builds
    it and a thread loads it when done. Also removes stale scratch folders from the cache.
    Safe to call many times. Returns `status()`.
    """
    with _lock:
        if _state["status"] != "idle":
            return _state["status"]
        if _disabled():
            _state.update(status="disabled", reason="disabled by ADVI_JAX_NATIVE=0")
            return "disabled"
        compiler = _compiler()
        if compiler is None:
            _fail("no C++ compiler found (set CXX, or install g++ or clang++)")
            return "failed"
        try:
            command = _command(compiler)
            target = _target(command)
        except Exception as err:  # noqa: BLE001 - no FFI headers, unreadable source: the XLA path
            _fail(f"{type(err).__name__}: {err}")
            return "failed"
        _state.update(target=target, command=command)
        remove_stale(target.parent)
        if target.exists():
            try:
                _load(target)
            except Exception as err:  # noqa: BLE001
                _fail(f"loading {target} failed: {type(err).__name__}: {err}")
            return _state["status"]
        why = _writable_cache()
        if why:
            _fail(why)
            return "failed"
        spec = json.dumps({"command": command, "source": [str(path) for path in _SOURCES], "target": str(target)})
        try:
            proc = subprocess.Popen([sys.executable, str(_BUILDER), spec], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                    start_new_session=True)
        except OSError as err:
            _fail(f"could not start the build: {err}")
            return "failed"
        thread = threading.Thread(target=_wait_for_builder, args=(proc, target, command), daemon=True,
                                  name="advi_jax-native-build")
        _state.update(status="building", thread=thread, started=time.monotonic())
        thread.start()
        return "building"


def build(timeout: float | None = None) -> bool:
    """Start the build if needed and wait for it (up to `timeout` seconds); whether the kernel is ready."""
    start()
    thread = _state.get("thread")
    if thread is not None:
        thread.join(timeout)
    return _state["status"] == "ready"


def status() -> str:
    """'ready', 'building', 'failed', 'disabled', or 'idle' (before `start()`); never builds."""
    return _state["status"]


def available() -> bool:
    """Whether the kernel is loaded and registered now (never builds, never waits)."""
    return _state["status"] == "ready"


def reason() -> str:
    """Why the kernel is not ready ('' when it is), including the compiler's output after a failed build."""
    if _state["status"] == "building":
        return "the native GLM kernel is still being built in the background"
    if _state["status"] == "idle":
        return "the native GLM kernel has not been started (advi_jax.models.glm starts it on import)"
    return _state["reason"]


def library_path() -> Path | None:
    """The compiled shared library in use, or None."""
    return _state.get("path") if available() else None


def build_log() -> str | None:
    """The compiler's output (its warnings) when it built the library in use; None if unknown."""
    path = library_path()
    if path is None:
        return None
    try:
        return path.with_name(path.name + ".log").read_text()
    except OSError:
        return None
