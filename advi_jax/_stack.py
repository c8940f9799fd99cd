"""Where a warning should point: the first frame outside advi_jax (no JAX import, so the data
readers and the command line can use it before JAX is loaded)."""

from __future__ import annotations

import os
import sys

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_stacklevel() -> int:
    """The `stacklevel` that makes a `warnings.warn` in the calling function name the first frame
    outside advi_jax: the user's line that called into the library (through any decorators)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level
