"""Native CPU kernels, compiled on first use and called from XLA through `jax.ffi`.

One kernel today: the one-read GLM log-likelihood and gradient (`glm_kernel.cc`), used by
`advi_jax.glm.glm_log_likelihood` on CPU. XLA:CPU runs the row-blocked version of that pass
at 2.6x the time of one read of X (N = 1e6, D = 100, one draw; its per-block matrix-vector
products are slow); the kernel does the same arithmetic in one tiled pass over X, shared out
over XLA's CPU thread pool, at 1.1x (a whole ADVI step, measured on a 2-core machine; see
benchmarks/PERFORMANCE.md).

The source is compiled with the system C++ compiler (`$CXX`, else `c++`/`g++`/`clang++`)
against the XLA FFI headers that ship with jaxlib (`jax.ffi.include_dir()`), with
`-O3 -march=native`, into a cache directory (`$ADVI_JAX_CACHE_DIR`, else
`$XDG_CACHE_HOME/advi_jax`, else `~/.cache/advi_jax`). The file name hashes the source, the
compiler command, jaxlib's version and the CPU, so a changed machine or jaxlib rebuilds. The
build takes a few seconds, once.

If no compiler is found or the build fails, `available()` is False, `reason()` says why (one
warning is emitted), and callers use their pure-XLA path, which gives the same numbers.
Set `ADVI_JAX_NATIVE=0` to never build or use native kernels.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import jax

__all__ = ["GLM_TARGETS", "available", "library_path", "num_threads", "reason"]

_SOURCE = Path(__file__).with_name("glm_kernel.cc")
GLM_TARGETS = {"float32": "advi_jax_glm_f32", "float64": "advi_jax_glm_f64"}
_SYMBOLS = {"float32": "AdviJaxGlmF32", "float64": "AdviJaxGlmF64"}
_FLAGS = ["-O3", "-march=native", "-std=c++17", "-fopenmp-simd", "-fno-math-errno", "-shared", "-fPIC", "-w"]

_lock = threading.Lock()
_state: dict = {}


def _cache_dir() -> Path:
    if os.environ.get("ADVI_JAX_CACHE_DIR"):
        return Path(os.environ["ADVI_JAX_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "advi_jax"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


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


def _build() -> Path:
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set CXX, or install g++ or clang++)")
    include = jax.ffi.include_dir()
    command = [compiler, *_FLAGS, f"-I{include}"]
    key = hashlib.sha256()
    key.update(_SOURCE.read_bytes())
    key.update(" ".join(command).encode())
    key.update(jax.__version__.encode())
    key.update(_cpu_fingerprint().encode())
    target = _cache_dir() / f"glm_kernel-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        proc = subprocess.run([*command, str(_SOURCE), "-o", str(out), "-lpthread"], capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
            raise RuntimeError(f"compiling {_SOURCE.name} failed ({' '.join(command[:2])} ...):\n" + "\n".join(tail))
        os.replace(out, target)  # atomic: concurrent builders each write a complete file
    return target


def _load() -> None:
    if os.environ.get("ADVI_JAX_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        _state.update(ok=False, reason="disabled by ADVI_JAX_NATIVE=0")
        return
    try:
        path = _build()
        lib = ctypes.CDLL(str(path))
        for dtype, target in GLM_TARGETS.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, _SYMBOLS[dtype])), platform="cpu")
    except Exception as err:  # noqa: BLE001 - any failure means: use the XLA path, and say why
        _state.update(ok=False, reason=f"{type(err).__name__}: {err}")
        warnings.warn(f"advi_jax: native CPU kernels unavailable, using the XLA path ({_state['reason']})",
                      RuntimeWarning, stacklevel=3)
        return
    _state.update(ok=True, reason="", path=path, lib=lib)


def available() -> bool:
    """Whether the native kernels are built and registered (builds them on the first call)."""
    with _lock:
        if not _state:
            _load()
    return bool(_state["ok"])


def reason() -> str:
    """Why the native kernels are unavailable ('' when they are)."""
    available()
    return _state["reason"]


def library_path() -> Path | None:
    """The compiled shared library in use, or None."""
    return _state.get("path") if available() else None
