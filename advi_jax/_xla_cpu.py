"""Keep XLA:CPU's reductions out of YNNPACK on the jaxlib releases that miscompile them.

jaxlib 0.10.2 sends reductions on the CPU to YNNPACK fusions (`__ynn_fusion`), and some of those
return wrong numbers without an error: jax-ml/jax#39103 (a vmapped matrix-vector product followed
by a sum), and here NumPyro's Beta log density (a Dirichlet over [y, 1 - y]: a sum over a last axis
of 2 after `gammaln`) vmapped over 128 draws of 400 rows, where the jitted log densities were off by
up to 7,153 from the same densities computed one draw at a time. It broke the PSIS diagnostics of a
beta regression (k-hat = inf from a fit that was within 0.03 sd of NUTS; `benchmarks/spot_unseen3.py`)
and can break any batched evaluation a method runs (BaM, DADVI, the diagnostics' draws). 0.11.0 still
crashes on other reductions there (jax-ml/jax#39257, #40412). jaxlib 0.10.1 does not fuse them so.

`guard()` runs when `advi_jax` is imported, before it imports JAX: on an affected jaxlib
(`AFFECTED`, read from its version file without importing it) it adds `FLAG` to `XLA_FLAGS`, which
XLA reads once, when JAX's backend starts; the reductions then take XLA's own CPU code, as in 0.10.1.
Later jaxlib releases are left alone (a flag XLA does not know would stop the process). A user's own
`xla_cpu_experimental_ynn_fusion_type` in `XLA_FLAGS` is kept as given, and `ADVI_JAX_YNN_REDUCE=1`
keeps jaxlib's default. Where JAX's backend started before `advi_jax` was imported, the flag cannot
act any more, and the import says so (`YnnReduceWarning`) with the fix.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import warnings

__all__ = ["FLAG", "AFFECTED", "VARIABLE", "YnnReduceWarning", "guard", "jaxlib_version"]

FLAG = "--xla_cpu_experimental_ynn_fusion_type=-reduce"
"""The XLA option that keeps reductions out of the YNNPACK fusions (the others stay)."""

AFFECTED = ((0, 10, 2), (0, 12, 0))
"""jaxlib versions [first, last) that get `FLAG`: 0.10.2 miscompiles, 0.11.x crashes; both know the flag."""

VARIABLE = "ADVI_JAX_YNN_REDUCE"
"""Set to 1 to keep jaxlib's default (reductions fused into YNNPACK)."""


class YnnReduceWarning(RuntimeWarning):
    """JAX's backend started before `advi_jax` could keep the reductions out of YNNPACK."""


def jaxlib_version() -> tuple[int, ...] | None:
    """The installed jaxlib's (major, minor, patch), read from its version file without importing it;
    None when it cannot be read."""
    spec = importlib.util.find_spec("jaxlib")
    if spec is None or not spec.origin:
        return None
    try:
        with open(os.path.join(os.path.dirname(spec.origin), "version.py"), encoding="utf-8") as handle:
            text = handle.read()
    except OSError:
        return None
    found = re.search(r"^_version\s*(?::\s*str\s*)?=\s*[\"'](\d+)\.(\d+)\.(\d+)", text, re.MULTILINE)
    return None if found is None else tuple(int(part) for part in found.groups())


def _backend_started() -> bool:
    bridge = sys.modules.get("jax._src.xla_bridge")
    started = getattr(bridge, "backends_are_initialized", None)
    return bool(started()) if callable(started) else False


def guard(environ: dict | None = None, version: tuple[int, ...] | None = None) -> str:
    """Add `FLAG` to `XLA_FLAGS` where the installed jaxlib needs it (see the module docstring).

    Args:
      environ: the environment to read and change (default `os.environ`).
      version: the jaxlib version (default: the installed one's, `jaxlib_version`).

    Returns:
      What it did: "set", "unaffected" (another jaxlib, or none found), "user" (XLA_FLAGS already
      says how to fuse), "kept" (`ADVI_JAX_YNN_REDUCE=1`) or "late" (the backend had started: warned).
    """
    environ = os.environ if environ is None else environ
    if environ.get(VARIABLE, "").strip() in ("1", "true", "yes"):
        return "kept"
    version = jaxlib_version() if version is None else version
    if version is None or not AFFECTED[0] <= tuple(version[:3]) < AFFECTED[1]:
        return "unaffected"
    flags = environ.get("XLA_FLAGS", "")
    if "xla_cpu_experimental_ynn_fusion_type" in flags:
        return "user"
    if _backend_started():
        warnings.warn(f"jaxlib {'.'.join(map(str, version))} can compute some CPU reductions wrongly "
                      f"(jax-ml/jax#39103), and JAX started before advi_jax could turn that off: import advi_jax "
                      f"before running JAX code, or set XLA_FLAGS={FLAG} before Python starts "
                      f"({VARIABLE}=1 silences this)", YnnReduceWarning, stacklevel=2)
        return "late"
    environ["XLA_FLAGS"] = f"{flags} {FLAG}".strip()
    return "set"
