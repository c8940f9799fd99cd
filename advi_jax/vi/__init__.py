"""One file per algorithm, each shaped alike (see `advi_jax.base`).

Every module here exposes:

* `NAME`: the `method=` string of `aj.fit` that selects it;
* `Options`: a NamedTuple of the method's static settings, with defaults;
* `FAMILIES`: the family names it can fit ("meanfield", "fullrank", "lowrank");
* `build(model, family, options) -> VIAlgorithm`;
* `DEFAULT_NUM_STEPS`: the step budget `aj.fit` uses when the caller gives none;
* `WHITEN`: whether the driver may run it in the Laplace-whitened coordinates
  zeta = mode + L0 u (exact for families closed under affine maps; False for a method that
  needs the model as given, such as the exact GLM objective);
* `DETERMINISTIC`: whether each step's ELBO is the value of a deterministic objective (the
  result then reports the last one) or a Monte Carlo estimate (the mean of the last steps);
* optionally `STEP_KEYS = False`: the method's `step` ignores its key, so the driver's loop
  makes no per-step keys (their hashing is traced, lowered and compiled in every loop program);
* optionally `loop_evals(model, family, options, num_steps) -> int`: the log-density gradient
  evaluations the loop is expected to make, which the size rule (`compile_options.compile_mode`)
  weighs against the model's data to choose the loop's XLA options (without it: a default fit's
  20,000, `compile_options.DEFAULT_EVALS`);
* optionally `loop_compile_mode(model, family, options, mode) -> str`: the XLA options ("fast",
  "mid", "full"; `advi_jax.compile_options`) of the method's loop programs, given the size
  rule's `mode` (e.g. "fast" where the step's work is in a native kernel, not in XLA's code);
* optionally `describe_stop(reason, code, extras, num_steps) -> str`: the method's own words for
  why the fit stopped (the driver's `reason` for `code`, with what the method's test saw).
* optionally `stop_warning(code, extras, num_steps) -> str | None`: what the user must be warned
  of about that stop (a `DiagnosticWarning`; e.g. a cap reached before the method's own test passed).
* optionally `extras_grad_evals(extras) -> int`: the gradients its `extras(state)` itself evaluated
  (e.g. DADVI's linear-response solve), which `aj.fit` adds to the result's `num_grad_evals`.

`METHODS` maps each `NAME` to its module; the driver looks methods up here, so adding an
algorithm is one new file and one line below.
"""

from __future__ import annotations

METHODS: dict = {}


def register(module) -> None:
    """Add an algorithm module to `METHODS` under its `NAME`."""
    METHODS[module.NAME] = module


from advi_jax.vi import advi as _advi  # noqa: E402

register(_advi)
from advi_jax.vi import laplace as _laplace  # noqa: E402

register(_laplace)
from advi_jax.vi import pathfinder as _pathfinder  # noqa: E402
register(_pathfinder)
from advi_jax.vi import dadvi as _dadvi  # noqa: E402
register(_dadvi)
from advi_jax.vi import bam as _bam  # noqa: E402
register(_bam)
from advi_jax.vi import glm_exact as _glm_exact  # noqa: E402
register(_glm_exact)
from advi_jax.vi import glm_grouped as _glm_grouped  # noqa: E402
register(_glm_grouped)
