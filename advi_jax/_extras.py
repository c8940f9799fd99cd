"""Optional dependencies: import them with an error that names the extra to install.

The core (models, families, fits, diagnostics, predictions, the `fit` command) needs only JAX,
optax, NumPy, matplotlib and tqdm. Other parts need an extra (see docs/packaging.md):

=================  =======================  =======================================
extra              packages                  needed for
=================  =======================  =======================================
`vae`              flax                      `advi_jax.vae`, `advi-jax vae`
`numpyro`          numpyro                   `aj.from_numpyro`
`formula`          formulaic, pandas         `from_formula`, `advi-jax fit --formula`
`arviz`            arviz                     `to_arviz`
`bench`            blackjax, numpyro         `python -m benchmarks`
=================  =======================  =======================================

Example:
  >>> from advi_jax._extras import require
  >>> np = require("numpy", "core")
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: distribution name on the package index (the import name stays `advi_jax`)
DISTRIBUTION = "advi-jax-vi"

#: top-level module -> the extra that installs it
EXTRA_FOR_MODULE = {
    "flax": "vae",
    "numpyro": "numpyro",
    "formulaic": "formula",
    "pandas": "formula",
    "arviz": "arviz",
    "blackjax": "bench",
}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def install_hint(module: str, extra: str | None = None) -> str:
    """The pip command that installs `module` through its extra."""
    extra = extra or EXTRA_FOR_MODULE.get(module.split(".")[0])
    if extra is None or extra == "core":
        return f"pip install {module.split('.')[0]}"
    return f"pip install '{DISTRIBUTION}[{extra}]' (or pip install {module.split('.')[0]})"


def require(module: str, extra: str | None = None, purpose: str | None = None) -> ModuleType:
    """Import `module`, or raise `MissingExtraError` naming the extra that provides it.

    Args:
      module: the module to import, e.g. "formulaic".
      extra: the extra that installs it (default: looked up in `EXTRA_FOR_MODULE`).
      purpose: what needs it, for the message (e.g. "from_formula").

    Returns:
      The imported module.

    Raises:
      MissingExtraError: (an ImportError) when the module is not installed.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        top = module.split(".")[0]
        if err.name is not None and err.name.split(".")[0] != top:
            raise  # the module exists but one of *its* imports is missing: not ours to rename
        what = f"{purpose} needs {top}" if purpose else f"{top} is needed here"
        raise MissingExtraError(f"{what}, which is not installed: {install_hint(module, extra)}") from None


def missing_extra_message(err: ModuleNotFoundError) -> str | None:
    """For a ModuleNotFoundError of an optional dependency, the one-line hint naming its extra."""
    name = (err.name or "").split(".")[0]
    if name not in EXTRA_FOR_MODULE:
        return None
    return f"this needs {name}, which is not installed: {install_hint(name)}"
