"""The library's warnings name the user's line that called it, not a frame inside advi_jax."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import pytest

import advi_jax as aj
from advi_jax._stack import user_stacklevel


def _library_frames(depth: int) -> int:
    """Call `user_stacklevel` from under `depth` frames that pretend to be in advi_jax."""
    namespace: dict = {"user_stacklevel": user_stacklevel}
    code = "def f(n):\n    return user_stacklevel() if n == 0 else f(n - 1)\n"
    exec(compile(code, aj.__file__.replace("__init__.py", "pretend.py"), "exec"), namespace)
    return namespace["f"](depth)


@pytest.mark.parametrize("depth", [0, 3])
def test_user_stacklevel_counts_the_library_frames(depth):
    # f's `depth` recursive frames plus its last one are in the library; the test's frame is next
    assert _library_frames(depth) == depth + 2


def test_a_fits_diagnostic_warning_names_the_callers_line():
    # a Cauchy target: a Gaussian's tails are far too light, PSIS k-hat is near 1 and the fit warns
    def log_density(p):
        return -jnp.sum(jnp.log1p(p["x"] ** 2))

    model = aj.Model(log_density, {"x": aj.real((2,))})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        aj.fit(model, key=jax.random.key(0), method="advi", family="meanfield", num_steps=300, init=None,
               progress=False)
    ours = [w for w in caught if issubclass(w.category, aj.DiagnosticWarning)]
    assert ours, [str(w.message) for w in caught]
    assert {w.filename for w in ours} == {__file__}


def test_a_warning_from_library_code_traced_by_jax_names_the_callers_line():
    """A library function that warns while JAX traces it (the ready GLMs' "native kernel still being built"
    notice, on a fresh machine's first fit) named a line inside JAX (jax/_src/interpreters/partial_eval.py)."""
    namespace: dict = {"user_stacklevel": user_stacklevel, "warnings": warnings, "jax": jax}
    code = ("def traced(x):\n"
            "    warnings.warn('notice', RuntimeWarning, stacklevel=user_stacklevel())\n"
            "    return x + 1\n"
            "def entry(x):\n"
            "    return jax.jit(traced)(x)\n")
    exec(compile(code, aj.__file__.replace("__init__.py", "pretend.py"), "exec"), namespace)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        namespace["entry"](1.0)
    notices = [w for w in caught if str(w.message) == "notice"]
    assert [w.filename for w in notices] == [__file__], [(w.filename, str(w.message)) for w in caught]


def test_dropped_rows_warnings_name_the_callers_line(tmp_path):
    # the CSV reader and the formula path warn from a few frames down (and through `from_formula`'s
    # classmethod); both warnings must point here, where the user asked for dropna=True
    from advi_jax.data import MissingValuesWarning, load_csv

    path = tmp_path / "d.csv"
    path.write_text("a,b,y\n1,2,0\nNA,3,1\n2,1,1\n4,5,0\n5,1,1\n3,3,0\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_csv(path, target="y", dropna=True)
    dropped = [w for w in caught if issubclass(w.category, MissingValuesWarning)]
    assert len(dropped) == 1 and dropped[0].filename == __file__, [(w.filename, str(w.message)) for w in caught]

    pd = pytest.importorskip("pandas", reason="from_formula needs pandas (the [formula] extra)")
    pytest.importorskip("formulaic", reason="from_formula needs formulaic (the [formula] extra)")
    frame = pd.DataFrame({"x": [0.1, None, 0.3, -0.2, 0.5, -0.7, 1.1, -1.3], "y": [0, 1, 1, 0, 1, 0, 1, 0]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        aj.models.logistic_regression.from_formula(frame, "y ~ x", dropna=True)
    dropped = [w for w in caught if issubclass(w.category, MissingValuesWarning)]
    assert len(dropped) == 1 and dropped[0].filename == __file__, [(w.filename, str(w.message)) for w in caught]
