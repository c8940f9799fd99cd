"""Keep compiled XLA programs between Python processes: JAX's persistent compilation cache.

A first call of `aj.fit` on a small model is mostly XLA compilation (seconds), its run a fraction
of that. `enable_compilation_cache()` turns on JAX's persistent compilation cache in a folder of
the advi_jax cache, so a later process that fits a model of the same shapes (the same program,
compiler options and backend: JAX's cache key) loads the compiled programs instead of compiling
them. The numbers are the same; only the compile time goes. The `advi-jax` command turns it on
for itself; a Python program asks for it with one call, before its first fit.

The folder is `$ADVI_JAX_CACHE_DIR`, else `$XDG_CACHE_HOME/advi_jax`, else `~/.cache/advi_jax`,
then `xla-<jax version>-<hash of this CPU's architecture and instruction-set flags>` (compiled CPU
code uses them), unless a folder is given. It is pruned to `COMPILATION_CACHE_BYTES` (oldest files
first) when the cache is turned on. `ADVI_JAX_COMPILATION_CACHE=0` turns it off, and a
`JAX_COMPILATION_CACHE_DIR` (or `jax_compilation_cache_dir`) the user set is left as it is. A read
error (an entry truncated by a killed process) costs a warning and a compilation, never a wrong
result.

Measured (benchmarks/PERFORMANCE.md, "The persistent compilation cache"): the default `aj.fit` of
the breast-cancer logistic regression (K = 31) in a new process, 4.9 s with nothing cached and
1.6 s when an earlier process had fitted it.

Example:
  >>> import advi_jax as aj
  >>> folder = aj.enable_compilation_cache()  # doctest: +SKIP
  >>> # every aj.fit from here on keeps its programs in `folder` and finds those kept before
"""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path

__all__ = ["COMPILATION_CACHE_BYTES", "COMPILATION_CACHE_VARIABLE", "enable_compilation_cache"]

COMPILATION_CACHE_VARIABLE = "ADVI_JAX_COMPILATION_CACHE"
COMPILATION_CACHE_BYTES = 512 * 2 ** 20


def _machine_tag() -> str:
    """A short hash of the CPU architecture and instruction-set flags (compiled CPU code uses them)."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line for line in handle if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    text = "|".join((platform.machine(), platform.processor(), flags.strip()))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _prune(folder: Path, limit: int) -> None:
    """Remove the oldest files until the folder holds at most half of `limit` bytes (when over it)."""
    try:
        files = [(e.stat().st_mtime, e.stat().st_size, e.path) for e in os.scandir(folder) if e.is_file()]
    except OSError:
        return
    total = sum(size for _, size, _ in files)
    if total <= limit:
        return
    for _, size, path in sorted(files):
        if total <= limit // 2:
            break
        try:
            os.remove(path)
            total -= size
        except OSError:
            pass


def enable_compilation_cache(folder: str | os.PathLike | None = None, *,
                             max_bytes: int = COMPILATION_CACHE_BYTES) -> str | None:
    """Turn on JAX's persistent compilation cache for this process (see the module docstring).

    Args:
      folder: where to keep the compiled programs; None: the advi_jax cache's folder for this jax
        version and CPU.
      max_bytes: prune the folder (oldest files first, down to half of this) when it holds more.

    Returns:
      The cache folder, or None when the cache stays off: `ADVI_JAX_COMPILATION_CACHE=0`, a
      cache folder the user already set for JAX (left as it is), or a folder that cannot be
      written.

    Raises:
      TypeError: `max_bytes` is not a positive integer.

    Example:
      >>> import advi_jax as aj
      >>> aj.enable_compilation_cache("/tmp/my-xla-cache")  # doctest: +SKIP
      '/tmp/my-xla-cache'
    """
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
        raise TypeError(f"max_bytes must be a positive int (bytes), got {max_bytes!r}")
    if os.environ.get(COMPILATION_CACHE_VARIABLE, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    import jax

    if os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir:
        return None
    if folder is None:
        from advi_jax.models._native import cache_dir

        folder = cache_dir() / f"xla-{jax.__version__}-{_machine_tag()}"
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            return None
    except OSError:
        return None
    _prune(folder, max_bytes)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return str(folder)
