"""Where a warning should point: the first frame outside advi_jax (no JAX import, so the data
readers and the command line can use it before JAX is loaded)."""

from __future__ import annotations

import os
import sys

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


# JAX's own frames, between a library function it traces (the ready GLMs' kernel choice, inside
# `jax.jit`) and the library function that called `jax.jit`: passed over too
_PASSED_MODULES = ("jax", "jaxlib")


def _passed(frame) -> bool:
    if os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        return True
    module = str(frame.f_globals.get("__name__", ""))
    return module.split(".", 1)[0] in _PASSED_MODULES


def user_stacklevel() -> int:
    """The `stacklevel` that makes a `warnings.warn` in the calling function name the first frame
    outside advi_jax: the user's line that called into the library (through any decorators, and
    through JAX's tracing where the library function runs under `jax.jit`)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and _passed(frame):
        frame, level = frame.f_back, level + 1
    return level
