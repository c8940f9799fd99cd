"""Compile, beside the fit, the programs `advi-jax fit` runs after it.

On small data a command's time is mostly XLA compiling its programs one after another, each
waiting for the last, on one core. Two of them do not depend on the fit's numbers, only on
shapes known before it starts: the diagnostics' draws and log ratios (`aj.fit`'s
`draws_and_log_ratios`) and the command's own draws / data-scale coefficients / predictive
replications (`fit._posterior_outputs`). `start` compiles both in a background thread from
abstract arguments (`jax.ShapeDtypeStruct`s of the fitted parameters and keys), while the main
thread traces and compiles the fit's own programs; the later calls then find them compiled
(the same cache that `jax.jit(...).lower(...).compile()` fills). XLA compiles without holding
Python's GIL, so on a machine with a second core this takes the two compilations off the
command's critical path. Nothing is computed in the background, so the results are the same;
if the guesses about a call's arguments are wrong (a future change of the fit), the later call
just compiles as before (`tests/test_cli_speed.py` checks that they hit). The thread is an
`advi_jax.run.ahead.Ahead` (the same mechanism `aj.fit` compiles its own later programs with).
"""

from __future__ import annotations

from typing import Any, Callable

from advi_jax.run.ahead import Ahead


def abstract_params(model: Any, family: Any) -> Any:
    """`ShapeDtypeStruct`s of the fitted parameters of `family` over `model` (as `aj.fit` returns them)."""
    import jax
    import jax.numpy as jnp

    key = jax.eval_shape(lambda: jax.random.key(0))
    return jax.eval_shape(lambda k: family.init(k, model.dim, dtype=jnp.result_type(float)), key)


def start(model: Any, family: Any, posterior_program: Callable, num_draws: int, num_check: int,
          diagnostics: bool = True, fast: bool = False) -> Ahead:
    """Compile the fit's diagnostics program (when `diagnostics` and its S is known) and
    `posterior_program(model, family, params, key, check_key, num_draws, num_check)` in a thread.

    Args:
      model: the model about to be fitted.
      family: its family (a name or a `Family`; one `get_family` does not resolve, e.g. "auto",
        skips the warm-up).
      posterior_program: the jitted function of `fit._posterior_outputs`.
      num_draws, num_check: its static arguments.
      diagnostics: whether the fit computes diagnostics.
      fast: the fit runs under `compile_options.forced("fast")`: compile the diagnostics' program
        with `FAST_OPTIONS` (chosen here, not by the fit's `forced` block, which this thread may
        enter before or after the fit does).

    Returns:
      The started `Ahead` (`close()` it before the command returns: a compilation still running
      in a daemon thread at interpreter exit can crash it). Any error in it is ignored: the
      program is then compiled when it is called, as without a warm-up.
    """
    ahead = Ahead([("warmup", lambda done: _compile(model, family, posterior_program, num_draws, num_check,
                                                    diagnostics, fast))], name="advi_jax-warmup")
    ahead.release()
    return ahead


def _compile(model, family, posterior_program, num_draws, num_check, diagnostics, fast=False) -> None:
    import jax

    from advi_jax.families import get_family
    from advi_jax.importance import draws_and_log_ratios
    from advi_jax.result import known_diagnostic_draws

    family = get_family(family)
    params = abstract_params(model, family)
    key = jax.eval_shape(lambda: jax.random.key(0))
    num_diag = known_diagnostic_draws(model) if diagnostics else None
    if num_diag is not None:
        program = draws_and_log_ratios.fast if fast else draws_and_log_ratios
        program.lower(model, family, params, key, num_diag).compile()
    posterior_program.lower(model, family, params, key, key, num_draws, min(num_check, num_draws)).compile()
