"""Float32 matrix products at full precision inside the fits, on GPUs and TPUs.

JAX's default lets a float32 matrix product on an NVIDIA GPU run in TF32 (a 10-bit mantissa: a
relative error near 1e-3 per product) and on a TPU in bfloat16 passes. A variational fit is made
of such products (the family's `loc + L eps`, its triangular solves, a GLM's `X m` and `X L`,
the Hessian-vector products of the second-order methods), and its answers degrade visibly: on an
H200 a sticking-the-landing gradient at the exact optimum had a variance of 7e-3 instead of
~0, the fixed-draw (DADVI) objective lost its monotone Newton steps, and a quadrature ELBO's
optimum moved (benchmarks/PERFORMANCE.md, "The test suite's core files on the H200"). So
`aj.fit`, `aj.fit_many`, `aj.fit_minibatch` and the `advi-jax fit` command trace their programs
under `jax.default_matmul_precision("highest")` there (`during`, `context`). The cost is small
for the problems VI fits: the large products (a GLM's passes over X) are bound by memory, not
arithmetic.

On CPU nothing changes (XLA:CPU multiplies float32 at full precision whatever the setting; the
programs, and so JAX's compilation caches, stay as they were). A precision the user chose
(`jax.default_matmul_precision(...)`, `jax.config.update("jax_default_matmul_precision", ...)`
or `JAX_DEFAULT_MATMUL_PRECISION`) is always left as it is: set "tensorfloat32" (or "bfloat16")
to trade accuracy for speed on purpose. The setting is thread-local in JAX; the fit's background
compile thread (`advi_jax.run.ahead.Ahead`) runs under the precision of the thread that started
it, so its programs are the ones the fit calls.

Example:
  >>> from advi_jax.run import precision
  >>> precision.choose("gpu", None), precision.choose("cpu", None), precision.choose("gpu", "tensorfloat32")
  ('highest', None, None)
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator

__all__ = ["FIT_PRECISION", "choose", "context", "current", "during"]

#: The matrix-product precision fits use on accelerators, unless the user chose one.
FIT_PRECISION = "highest"


def choose(backend: str, user_choice: Any) -> str | None:
    """The precision a fit sets: `FIT_PRECISION` off CPU when the user chose none (`user_choice`
    is JAX's current `jax_default_matmul_precision`), else None (leave JAX's setting as it is)."""
    if user_choice is not None or backend == "cpu":
        return None
    return FIT_PRECISION


def current() -> Any:
    """This thread's `jax_default_matmul_precision` (None: JAX's default)."""
    import jax

    return jax.config.jax_default_matmul_precision


def _backend() -> str:
    import jax

    return jax.default_backend()


@contextlib.contextmanager
def context() -> Iterator[None]:
    """Within the block, this thread traces float32 matrix products at `choose`'s precision."""
    import jax

    chosen = choose(_backend(), current())
    if chosen is None:
        yield
        return
    with jax.default_matmul_precision(chosen):
        yield


def during(fun: Callable) -> Callable:
    """Decorate a fit function: its body runs in `context()` (same signature and docstring)."""

    @functools.wraps(fun)
    def wrapper(*args, **kwargs):
        with context():
            return fun(*args, **kwargs)

    return wrapper
