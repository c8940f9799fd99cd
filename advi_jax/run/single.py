"""`aj.fit`: options -> start -> algorithm -> loop -> result, over the one driver."""

from __future__ import annotations

import time
import warnings
from typing import TYPE_CHECKING, Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from advi_jax import blas_threads, checks, compile_options, gc_pause
from advi_jax.base import Family
from advi_jax.diagnostics import khat_threshold
from advi_jax.flatten import Model
from advi_jax import importance
from advi_jax._stack import user_stacklevel
from advi_jax.optim import ADAPT_LEARNING_RATES, default_optimizer
from advi_jax.fit_diagnostics import warns_by_khat, widen_reported
from advi_jax.result import (Report, Result, confirmation_draws, data_size, diagnose_confirmed, diagnostic_draw_budget,
                             known_diagnostic_draws)
from advi_jax.run import ahead as _ahead
from advi_jax.run import driver, host_keys, precision
from advi_jax.run.choose import choose, choose_family, choose_method
from advi_jax.run.start import AUTO_LAPLACE_MAX_DIM, INIT_STRINGS
from advi_jax.run.start import start as resolve_start
from advi_jax.vi import METHODS
from advi_jax.vi import advi as _advi
from advi_jax.vi import laplace as _laplace

if TYPE_CHECKING:  # optax is imported where it is used (`import advi_jax` does not load it)
    import optax

__all__ = ["fit", "DiagnosticWarning", "resolve_method", "method_options", "loop_compile", "run_diagnostics",
           "warn_diagnostics", "runaway_parameters", "elbo_trend", "RUNAWAY_DISTANCE"]


class DiagnosticWarning(UserWarning):
    """Issued by the fits when the diagnostics say the approximation is unreliable."""


def _finish_mode(model: Any, args: dict) -> Any:
    """`finish`'s options: ADVI's evaluates nothing (fast); a method with its own loop options or count
    (`loop_compile_mode`, `loop_evals`, `advi_jax.vi`) compiles it as its loop at its default steps
    (`loop_compile`: DADVI's linear-response covariance is K Hessian-vector products over its draws);
    others by the size rule."""
    module = args["module"]
    if module is _advi:
        return 0
    if not (hasattr(module, "loop_compile_mode") or hasattr(module, "loop_evals")) \
            or compile_options.forced_mode() is not None:
        return None
    return loop_compile(module, model, args["family"], args["options"], module.DEFAULT_NUM_STEPS)


@compile_options.jit(static_argnames=("module", "family", "options"), mode=_finish_mode)
def finish(model: Any, state: Any, module: Any, family: Family, options: Any) -> tuple[Any, dict]:
    """The family's parameters and the method's extras from the final state, in one compiled call
    (evaluated op by op they cost a dispatch per operation: 0.7 s for glm_exact's extras)."""
    algorithm = module.build(model, family, options)
    return algorithm.params(state), ({} if algorithm.extras is None else algorithm.extras(state))


@compile_options.jit(model_arg=None)
def _fit_keys(key: Any) -> tuple[Any, Any, Any]:
    """(init, run, diagnostics) keys: `split(key)` and `fold_in(key, 1)` in one compiled call (eagerly,
    each key operation compiles a program of its own). A threefry key on the CPU takes
    `host_keys.fit_keys` instead: the same bits, no program."""
    init_key, run_key = jax.random.split(key)
    return init_key, run_key, jax.random.fold_in(key, 1)


def resolve_method(method: Any, model: Any, family: Family, **context) -> tuple[Any, str, str]:
    """(module, name, reason) for `method=` ("auto" goes through `choose_method`)."""
    if not isinstance(method, str):
        raise TypeError(f"method must be 'auto' or one of {sorted(METHODS)}, got {type(method).__name__}")
    if method == "auto":
        name, reason = choose_method(model, family, **context)
        reason = f"auto: {reason}"
    elif method in METHODS:
        name, reason = method, "requested"
    else:
        raise ValueError(f"method must be 'auto' or one of {sorted(METHODS)}, got {method!r}")
    module = METHODS[name]
    if family.name not in module.FAMILIES and type(family).__name__ not in module.FAMILIES:
        raise ValueError(f"method {name!r} fits the families {list(module.FAMILIES)}, not {family.name!r}")
    return module, name, reason


def method_options(module: Any, options: Any) -> Any:
    """A method's `Options` from None (defaults), a dict of overrides, or an `Options`."""
    if options is None:
        return module.Options()
    if isinstance(options, module.Options):
        return options
    if isinstance(options, dict):
        unknown = sorted(set(options) - set(module.Options._fields))
        if unknown:
            raise ValueError(f"options {unknown} are not settings of method {module.NAME!r}; it has "
                             f"{list(module.Options._fields)}")
        return module.Options(**options)
    raise TypeError(f"options must be None, a dict or {module.NAME}.Options, got {type(options).__name__}")


def run_diagnostics(compute: Callable[[], Any], interrupted: bool) -> tuple[Any, str, float]:
    """Run `compute()` unless a (second) Ctrl-C stops it: (diagnostics or None, note, seconds)."""
    tick = time.perf_counter()
    if interrupted:
        print("advi_jax: interrupted; computing diagnostics (press Ctrl-C again to skip them)", flush=True)
    try:
        value = compute()
    except KeyboardInterrupt:
        return None, "skipped: interrupted by the user (Ctrl-C during the diagnostics)", time.perf_counter() - tick
    return value, "", time.perf_counter() - tick


def warn_diagnostics(result: Any, warn: bool) -> None:
    """A `DiagnosticWarning` when k-hat is over its threshold (unless the importance weights are nearly
    constant: `diagnostics.near_constant`), when q has mass where log p is not finite, or when the
    PSIS moment check flagged a coordinate (`advi_jax.psis_moments`: k-hat below its threshold, yet
    the importance-weighted mean or sd of a coordinate differs from q's own beyond the tolerance
    and beyond its Monte Carlo error)."""
    d = result.report.diagnostics
    if not warn or d is None:
        return
    by_khat = warns_by_khat(d)
    if not (by_khat or d.moments_flagged()):
        return
    first = getattr(result.report, "first_diagnostics", None)
    again = ("" if first is None else
             f" from {d.num_draws} fresh draws (the first {first.num_draws} read {first.khat:.2f})")
    khat = f"PSIS k-hat = {d.khat:.2f}{again}"
    threshold = khat_threshold(d.num_draws)
    if not by_khat:  # the moment check alone: the parameter and the verdict first, k-hat (under its threshold) last
        warnings.warn(f"q is off at {_flagged_name(result.model, d.moments)}: {result.verdict} ({khat}, under its "
                      f"threshold {threshold:.2f}{_spread(result)}){_linear_response_hint(result)}", DiagnosticWarning,
                      stacklevel=user_stacklevel())
        return
    moments = ""
    if d.moments_flagged():  # with a k-hat warning, the moment check's reading and its parameter too
        moments = f"; {d.moments.describe()}; it is {_flagged_name(result.model, d.moments)}"
    warnings.warn(f"{khat} (threshold {threshold:.2f}){_spread(result)}{moments}: {result.verdict}"
                  f"{_linear_response_hint(result)}", DiagnosticWarning, stacklevel=user_stacklevel())


def _linear_response_hint(result: Any) -> str:
    """For a mean-field fit with a linear-response covariance (DADVI): where to find the corrected Gaussian."""
    family = getattr(result, "family", None)
    if getattr(family, "name", None) != "meanfield" or "lr_covariance" not in getattr(result.report, "extras", {}):
        return ""
    return ("; this mean-field fit's linear-response Gaussian corrects q's sds and correlations (the summary's "
            "lr_mean / lr_sd): result.linear_response() gives it as a result with its own k-hat")


def _flagged_name(model: Any, moments: Any) -> str:
    """The flagged parameter as the user reads it: "alpha (constrained)", or the unconstrained
    coordinate's site ("sigma (unconstrained, coordinate 4)", "u[0] (unconstrained, flattened, coordinate 0)")."""
    if moments.space == "constrained":
        return f"{moments.name} (constrained)"
    return _coordinate_name(model, moments.worst_index)


def _coordinate_name(model: Any, index: int) -> str:
    """"site[i] (unconstrained, flattened, coordinate j)" for flat coordinate j, for the moment check's warning."""
    slices = getattr(model, "slices", None)
    if callable(slices) and index >= 0:
        for name, where in slices().items():
            if where.start <= index < where.stop:
                if where.stop - where.start > 1:
                    return f"{name}[{index - where.start}] (unconstrained, flattened, coordinate {index})"
                return f"{name} (unconstrained, coordinate {index})"
    return f"coordinate {index} (unconstrained)"


def _spread(result: Any) -> str:
    """How much log p - log q varies over the diagnostic draws, for the warning: k-hat reads only the
    shape of the ratios' upper tail, so a tiny spread (a q close to p over its bulk, with a tail
    heavier than q's) and a wide one (q misses mass) give the same k-hat; the number tells them apart."""
    sample = result.report.diagnostic_sample
    if sample is None:
        return ""
    ratios = np.asarray(sample[1], np.float64)
    ratios = ratios[np.isfinite(ratios)]
    return f"; log p - log q has sd {np.std(ratios):.3g} over the finite draws" if ratios.size > 1 else ""


def elbo_trend(elbo: np.ndarray) -> float:
    """t statistic of the least-squares slope of the ELBO trace over its second half (NaN when
    too short or not finite). Around 0 for a settled fit; large and positive while it still climbs."""
    half = np.asarray(elbo[len(elbo) // 2:], np.float64)
    if half.size < 50 or not np.isfinite(half).all():
        return float("nan")
    t = np.arange(half.size, dtype=np.float64)
    slope, intercept = np.polyfit(t, half, 1)
    resid = half - (slope * t + intercept)
    se = np.sqrt(np.sum(resid**2) / (half.size - 2) / np.sum((t - t.mean()) ** 2))
    return float(slope / se) if se > 0 else float("nan")


RUNAWAY_DISTANCE = 10.0
"""How far (in R^K, where the bijectors put typical posteriors within a few units of zero) a
coordinate's mean must be, and be more than 2 sd from zero, to count as running away."""


def runaway_parameters(family: Family, params: Any, elbo: np.ndarray, threshold: float = RUNAWAY_DISTANCE) -> tuple:
    """Flat indices in R^K of coordinates that ran away while the ELBO kept rising.

    The signal of an improper posterior (separable data with a flat prior): the ELBO still climbs
    at the end of the run (trend t statistic over the second half > 3, `elbo_trend`; a settled
    fit gives about N(0, 1)) while some coordinates of q's mean sit beyond `threshold` and more
    than 2 sd from zero. A proper posterior that needs more steps can show it too; either way
    the fit has not settled.
    """
    if not elbo_trend(elbo) > 3.0:
        return ()
    mean = np.asarray(family.mean(params))
    if not np.any(np.abs(mean) > threshold):  # the usual case: no eager variance computation
        return ()
    sd = np.sqrt(np.asarray(family.variance(params)))
    return tuple(int(i) for i in np.flatnonzero((np.abs(mean) > threshold) & (np.abs(mean) > 2 * sd)))


NOT_FINITE_NOTE = ("; q's parameters are not finite: they overflowed as q's scale or location grew without bound, "
                   "as it does where the posterior is improper (a parameter the log density does not bound: check "
                   "its prior)")
"""Added to the stop reason of a fit whose parameters of q are not finite: the driver kept its last finite
iterates, but q (their average, or its map back from whitened coordinates) overflowed."""


@checks.second_derivatives(lambda kw: f"aj.fit(method={kw.get('method', 'auto')!r}, "
                                     f"init={kw.get('init', 'auto')!r})")
@blas_threads.during
@gc_pause.during
@precision.during
def fit(model: Model, *, key: Any, family: str | Family = "auto", method: str = "auto",
        num_steps: int | None = None, num_samples: int = 1, optimizer: optax.GradientTransformation | None = None,
        estimator: str | Callable = "reparam", learning_rate: float | str | None = None, init: Any = "auto",
        init_scale: float = 0.1, num_init_draws: int = 10, init_radius: float = 2.0,
        tol_rel_obj: float | None = None, eval_every: int = 100, window: int = 10,
        max_consecutive_nonfinite: int = 50, chunk_size: int = 1000, progress: bool = True,
        check: bool = True, diagnostics: bool = True, num_diagnostic_draws: int | str = "auto",
        adapt_iter: int = 200, adapt_learning_rates: tuple[float, ...] = ADAPT_LEARNING_RATES,
        warn: bool = True, options: Any = None, callback: Callable | None = None) -> Result:
    """Fit a variational approximation to `model` with a method of `advi_jax.vi.METHODS`.

    The pipeline: check the arguments (`advi_jax.checks`), choose the family and the method
    (`family="auto"`, `method="auto"`: `advi_jax.run.choose`), resolve the start
    (`advi_jax.run.start`: a Pathfinder/BaM- or Laplace-whitened start for methods with
    `WHITEN`), run the method in the one compiled driver
    (`advi_jax.run.driver`: chunks, stopping rule, non-finite handling, progress bar, Ctrl-C),
    map the result back, compute the PSIS diagnostics, and build the immutable `Result`. Each
    program's XLA options follow its data size times its most log-density evaluations
    (`advi_jax.compile_options`: the start's ~2,300, the loop's `num_steps x num_samples` or the
    method's own count, `loop_compile`, the diagnostics' draws); where that allows the fast or
    "mid" options, ADVI's loop chooses between them by its own arithmetic over its expected steps
    (`compile_options.ByCost`); a fast-compiled default loop that runs long switches to its optimised
    version at a fixed step (`loop_switch`). Where the loop compiles with the fast or "mid" options, the loop's,
    the diagnostics' and the small programs compile on a second thread while the start compiles
    (`advi_jax.run.ahead`; the numbers are the same as compiled one after another, but for the
    diagnostics' draws where the thread compiles them with XLA's full options,
    `importance.compile_ahead`: equal to float32 rounding).

    Args:
      model: an `aj.Model`.
      key: PRNG key (required; no default seed).
      family: "auto" (default), "meanfield", "fullrank", "lowrank", or a `Family`. "auto" is
        full-rank for K <= `advi_jax.run.choose.FULLRANK_MAX_DIM` (200); above it low-rank (rank 10,
        `AUTO_LOWRANK`) where `method="auto"` runs ADVI with no ADVI settings given, else mean-field
        (`choose_family`); `result.method_reason` says which and why.
      method: "auto" (default; `advi_jax.run.choose`): "glm_exact" for a ready GLM ("glm_grouped"
        for a varying-intercept one); for another model with the full-rank family and no ADVI
        settings given, ADVI with the STL estimator, 4 draws a step, natural-gradient steps whose
        averaged iterates stop by their own test (`AUTO_ADVI`: at most 48,000 gradients), from the
        `init="bam"` start (Pathfinder, then Batch-and-Match, each kept only where it raises the
        ELBO); with the low-rank family of `family="auto"`, ADVI with STL, 4 draws a step, Adam's
        step decaying once the iterates stop drifting (`DriftStop`: at most 40,000 steps); else "advi" with the settings given. Or a registered name ("advi", "glm_exact",
        "glm_grouped", "pathfinder", "dadvi", "bam", "laplace").
      num_steps: the step budget (default: the method's `DEFAULT_NUM_STEPS`, 10,000 for ADVI; for
        `method="auto"`, the full-rank ADVI's cap of 12,000 steps and the low-rank ADVI's 40,000).
      num_samples: ADVI's Monte Carlo draws per step (static).
      optimizer: ADVI's optax optimizer; default `default_optimizer(learning_rate, num_steps)`:
        Adam, constant then cosine-decayed over the second half of the run.
      estimator: ADVI's gradient estimator name (see `advi_jax.estimators.REGISTRY`) or function.
      learning_rate: Adam's step size when `optimizer` is None (default 0.01), or "adapt" for a
        Stan-style step-size search over `adapt_learning_rates` (`vi.advi.adapt_learning_rate`); it fails
        when no candidate raises the ELBO, unless q starts at a fitted Gaussian (Laplace, Pathfinder,
        BaM), which may be the family's optimum already: then the best candidate is taken.
      init: "auto" (the default): "bam" for the full-rank ADVI of `method="auto"`; otherwise
        "laplace" when K <= 1000, the method has WHITEN and the family is affine-closed, falling
        back to zero when the Laplace approximation does not exist (`result.init_method` says
        why); None (zero in R^K); a dict of constrained values; a (K,) vector; "random";
        "laplace"; "pathfinder" (whitened by one Pathfinder path's best Gaussian, or an
        isotropic Gaussian at the start when its ELBO is higher); or "bam" (full-rank only:
        "pathfinder", then 100 Batch-and-Match steps when they raise the ELBO). See
        `advi_jax.run.start`; the start's gradients count in `num_grad_evals`.
      init_scale: initial standard deviation of every coordinate of q.
      num_init_draws: candidate locations for `init="random"`.
      init_radius: half-width of the box random initial locations are drawn from (Stan: 2).
      tol_rel_obj: stop when the relative ELBO change falls below this (Stan's rule; None: never).
      eval_every: steps per ELBO average for the stopping rule.
      window: relative changes kept for the stopping rule.
      max_consecutive_nonfinite: stop after this many non-finite steps in a row.
      chunk_size: the most steps one compiled call runs (static); calls are sized to take about
        `driver.CALL_SECONDS`, and the progress bar updates after each.
      progress: show a progress bar with the smoothed ELBO.
      check: evaluate the log density at the initial point first and raise if it is not finite.
      diagnostics: after the fit, compute the PSIS k-hat, the importance-weighted ELBO, the
        importance ESS and the share of q's mass where log p is not finite from
        `num_diagnostic_draws` draws of q (one jitted call for the draws, PSIS on the host),
        and the PSIS moment check of the same draws (`advi_jax.psis_moments`: each coordinate's
        PSIS-weighted mean and sd against q's own, `report.diagnostics.moments`; no extra log
        density evaluations); their seconds are `result.diagnostics_seconds`.
      num_diagnostic_draws: draws of q for the diagnostics: "auto" (default) for a budget of
        about a fifth of the fit's cost, 256 to 4,096 draws
        (`advi_jax.result.diagnostic_draw_budget`: 4,096 on small data or after a long
        stochastic fit, 256 for a few-pass fit on large data, where k-hat can only certify
        k < 0.58 and has a sampling sd of about 0.2), or an int >= 100 for exactly that many.
        Under "auto", a k-hat at or over its threshold is re-estimated from 4x as many fresh
        draws where the cost rule allows them (`advi_jax.result.confirmation_draws`, at most
        16,384), whose k-hat, ESS and draws are then the result's (`report.first_diagnostics`
        keeps the first reading; the extra draws count in `num_logp_evals`).
      adapt_iter: steps per candidate step size with `learning_rate="adapt"`.
      adapt_learning_rates: the candidate step sizes (positive numbers).
      warn: issue a `DiagnosticWarning` when the diagnostics say the fit is unreliable: k-hat at
        or over its threshold, q's mass where log p is not finite, or the moment check flagging a
        coordinate (mean or sd off by its tolerance, beyond its Monte Carlo error).
      options: settings of a method other than ADVI: its `Options`, or a dict of overrides.
      callback: called with a `driver.Progress` after every compiled call; raising
        KeyboardInterrupt there stops the fit as Ctrl-C does.

    Returns:
      A `Result`. Ctrl-C during the loop returns the last completed state (a second Ctrl-C
      during the diagnostics skips them); during compilation, the initial state.

    Raises:
      TypeError, ValueError: bad arguments, named, before anything is compiled; a log joint
        that is not a finite scalar at the initial point; a failed step-size search.
      KeyboardInterrupt: Ctrl-C during the start-up, before any fit state exists (with a message).

    Example:
      >>> import jax, jax.numpy as jnp, advi_jax as aj
      >>> model = aj.Model(lambda p: -0.5 * jnp.sum((p["x"] - 1.0) ** 2), {"x": aj.real((2,))})
      >>> result = aj.fit(model, key=jax.random.key(0), progress=False)
      >>> result.method, result.family.name
      ('advi', 'fullrank')
      >>> bool(jnp.all(jnp.abs(result.mean()["x"] - 1.0) < 0.05))
      True
      >>> result.verdict.split(" ")[0]  # k-hat itself may read over 0.5: these weights are nearly constant
      'good'
    """
    began = time.perf_counter()
    if not isinstance(model, Model):
        raise TypeError(f"model must be an advi_jax Model (aj.Model or aj.from_numpyro), got {type(model).__name__}")
    key, family_obj, estimator, num_samples, tol_rel_obj, callback = checks.common_args(
        key, choose_family(model, family, method)[0], estimator, num_samples, tol_rel_obj, callback,
        progress=progress, check=check, diagnostics=diagnostics, warn=warn)
    eval_every, window, chunk_size, max_consecutive_nonfinite = checks.check_loop_args(
        eval_every, window, chunk_size, max_consecutive_nonfinite)
    num_init_draws = checks.check_positive_int(num_init_draws, "num_init_draws")
    if isinstance(num_diagnostic_draws, str):
        if num_diagnostic_draws != "auto":
            raise ValueError(f"num_diagnostic_draws must be 'auto' or an int >= 100, got {num_diagnostic_draws!r}")
    else:
        num_diagnostic_draws = checks.check_positive_int(num_diagnostic_draws, "num_diagnostic_draws", 100)
    adapt_iter = checks.check_positive_int(adapt_iter, "adapt_iter")
    init_scale = checks.check_number(init_scale, "init_scale")
    init_radius = checks.check_number(init_radius, "init_radius")
    if not isinstance(adapt_learning_rates, (tuple, list)) or not adapt_learning_rates:
        raise TypeError(f"adapt_learning_rates must be a non-empty tuple of positive numbers, got "
                        f"{adapt_learning_rates!r}")
    adapt_learning_rates = tuple(checks.check_number(r, "adapt_learning_rates") for r in adapt_learning_rates)
    lr, adapt = checks.resolve_learning_rate(learning_rate, optimizer, allow_adapt=True)
    plan = choose(model, family, method, init=init, num_steps=num_steps, estimator=estimator, num_samples=num_samples,
                  optimizer=optimizer, learning_rate=learning_rate)
    family_obj = plan.family  # the checked family, or the policy's (`choose`: low-rank above FULLRANK_MAX_DIM)
    module, method_name, _ = resolve_method(plan.method, model, family_obj)
    method_reason, init, estimator, num_samples = plan.reason, plan.init, plan.estimator, plan.num_samples
    num_steps = plan.num_steps
    is_advi = module is _advi
    if is_advi and options is not None:
        raise ValueError("options= is for methods other than ADVI; ADVI takes optimizer=, estimator=, num_samples=, "
                         "learning_rate= and init_scale=")
    num_steps = module.DEFAULT_NUM_STEPS if num_steps is None else checks.check_positive_int(num_steps, "num_steps")
    if isinstance(init, str) and init not in INIT_STRINGS:
        raise ValueError(f"init must be {checks.INIT_OPTIONS}; got {init!r}")
    if isinstance(init, str) and init == "bam" and family_obj.name != "fullrank":
        raise ValueError(f"init='bam' needs family='fullrank' (Batch-and-Match fits a full covariance), got "
                         f"{family_obj.name!r}")

    def options_for(whitened: bool) -> Any:
        if not is_advi:
            return method_options(module, options)
        return _advi.Options(optimizer if optimizer is not None else default_optimizer(float(lr), num_steps),
                             estimator, num_samples, 1.0 if whitened else init_scale, plan.stop)

    def settings(opts: Any, run_model: Any) -> driver.Settings:
        can_stop = getattr(plan, "stop", None) is not None or bool(tol_rel_obj)
        mode = loop_compile(module, run_model, family_obj, opts, num_steps, num_samples, can_stop)
        return driver.Settings(module, family_obj, opts, chunk_size, eval_every, window, float(tol_rel_obj or 0.0),
                               max_consecutive_nonfinite, compile=mode)

    ahead = wrong = ahead_draws = None
    try:
        if not getattr(model, "imputed_names", ()):  # obs_mask data may hold NaN where the mask hides it
            checks.check_data(model.data)
        checks.check_log_joint_shape(model, jnp.result_type(float))
        whitened = _whitened_start(model, family_obj, init, bool(module.WHITEN))
        guess = settings(options_for(whitened), _run_model_shape(model, whitened))
        if _ahead.enabled() and not adapt and (guess.compile in _AHEAD_MODES
                                               or isinstance(guess.compile, compile_options.ByCost)):
            ahead_draws = likely_diagnostic_draws(model, num_diagnostic_draws, guess.options) if diagnostics else None
            ahead = _compile_ahead(model, family_obj, module, guess, key, whitened, ahead_draws)
        begun = resolve_start(model, family_obj, init, key=key, whiten=bool(module.WHITEN), init_scale=init_scale,
                              num_init_draws=num_init_draws, init_radius=init_radius, check=check,
                              on_lowered=None if ahead is None else ahead.release)
        if ahead is not None and (begun.whitening is not None) != whitened:  # guessed wrong: compile here
            ahead.cancel()
            wrong, ahead = ahead, None
        elif ahead is not None:
            ahead.release()
        opts = options_for(begun.whitening is not None)
        adaptation = None
        if adapt:
            lr, adaptation = _choose_learning_rate(begun, family_obj, opts, jax.random.fold_in(key, 2),
                                                   adapt_learning_rates, adapt_iter)
            opts = opts._replace(optimizer=default_optimizer(lr, num_steps))
        cfg = settings(opts, begun.run_model)
        _wait(ahead, "keys")
        init_key, run_key, diag_key = host_keys.fit_keys(key) or _fit_keys(key)
        _wait(ahead, "init_loop")
        loop = driver.init_loop(begun.run_model, init_key, begun.loc, cfg)
        if ahead is not None:  # the start is done: the programs after the loop compile on a second thread now
            ahead.help("run_chunk")
    except BaseException as err:
        for thread in (ahead, wrong):
            if thread is not None:
                thread.close()
        if not isinstance(err, KeyboardInterrupt):
            raise
        raise KeyboardInterrupt("aj.fit was interrupted during start-up (argument checks, the Laplace start or "
                                "the step-size search), before any fit state existed: nothing to return") from None
    start_seconds = time.perf_counter() - began

    out = driver.drive(begun.run_model, loop, run_key, cfg, num_steps, progress=progress, desc=module.NAME.upper(),
                       callback=callback, before_compile=lambda: _wait(ahead, "run_chunk"),
                       switch=lambda: loop_switch(begun.run_model, loop, run_key, cfg, num_steps))
    code = int(out.stop_codes)
    _wait(ahead, "finish")
    finished = time.perf_counter()  # q and the method's extras (DADVI's linear-response solve: seconds at K ~ 150)
    params, extras = finish(begun.run_model, out.loop.state, module, family_obj, opts)
    if begun.whitening is not None:
        _wait(ahead, "transform")
        params = _laplace.transform(family_obj, params, *begun.whitening)
    extras = dict(jax.device_get(extras))
    finish_seconds = time.perf_counter() - finished
    # what the method's extras themselves evaluated (DADVI's linear-response solve; `advi_jax.vi`)
    finish_grad_evals = int(module.extras_grad_evals(extras)) if hasattr(module, "extras_grad_evals") else 0
    if begun.num_grad_evals:  # the start's share of num_grad_evals (Laplace, Pathfinder, BaM)
        extras["start_grad_evals"] = begun.num_grad_evals
    num_nonfinite = int(out.loop.num_nonfinite)
    diag, note, diag_seconds, diag_sample = None, "not computed (diagnostics=False)", 0.0, None
    first_diag, extra_logp_evals = None, 0
    if diagnostics:
        confirm_draws = 0  # a k-hat over its threshold is re-estimated from more draws only under "auto"
        if num_diagnostic_draws == "auto":
            costs = int(out.loop.num_logp_evals), int(out.loop.num_grad_evals), data_size(model)
            num_diagnostic_draws = diagnostic_draw_budget(*costs)
            confirm_draws = confirmation_draws(num_diagnostic_draws, *costs)
        if ahead is not None and num_diagnostic_draws != ahead_draws:  # the guess was wrong: the compile runs on
            ahead.cancel()  # beside the diagnostics (not waited for; joined at exit), which compile their own
            _ahead.leave(ahead)
            ahead = None
        _wait(ahead, "diagnostics")
        both, note, diag_seconds = run_diagnostics(
            lambda: widen_reported(model, family_obj, params, num_diagnostic_draws, diagnose_confirmed(
                model, family_obj, params, diag_key, num_diagnostic_draws, confirm_draws)),
            code < 0)
        if both is not None:
            diag, diag_sample, first_diag = both
            if first_diag is not None:
                extra_logp_evals = diag.num_draws
            extra_logp_evals += getattr(diag.moments, "widened_draws", 0)  # the widened moment check's
    for thread in (ahead, wrong):
        if thread is not None:
            thread.close()  # done by now, unless the fit stopped early or the guess was wrong
    steps = int(out.loop.step)
    finite = all(np.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves(jax.device_get(params)))
    stop_reason = driver.stop_reason(code, num_nonfinite, max_consecutive_nonfinite, kept_finite=finite)
    if hasattr(module, "describe_stop"):  # a method's own words for its stop (`advi_jax.vi`)
        stop_reason = module.describe_stop(stop_reason, code, extras, num_steps)
    if not finite:
        stop_reason += NOT_FINITE_NOTE
    report = Report(
        elbo=out.elbo, num_steps=steps,
        num_grad_evals=int(out.loop.num_grad_evals) + begun.num_grad_evals + finish_grad_evals,
        num_logp_evals=int(out.loop.num_logp_evals) + begun.num_logp_evals + extra_logp_evals,
        num_nonfinite=num_nonfinite,
        converged=code in (1, 2, 4),
        stop_reason=stop_reason, stop_code=code,
        method=method_name, method_reason=method_reason,
        estimator=checks.estimator_name(estimator) if is_advi else None, num_samples=num_samples if is_advi else None,
        seconds=time.perf_counter() - began, start_seconds=start_seconds, compile_seconds=out.compile_seconds,
        run_seconds=out.run_seconds + finish_seconds, diagnostics_seconds=diag_seconds, diagnostics=diag,
        diagnostics_note=note or ("" if diag is not None else "not computed (diagnostics=False)"),
        # The averaged default's first step size is its stop rule's (`AutoStop.learning_rate`), not Adam's.
        learning_rate=(float(plan.stop.learning_rate) if getattr(plan, "stop", None) is not None
                       else float(lr)) if (is_advi and optimizer is None) else None, adaptation=adaptation,
        init_loc=np.asarray(begun.init_loc), init_method=begun.method, init_candidates=begun.candidates,
        init_scores=begun.scores, extras=dict(extras),
        runaway=runaway_parameters(family_obj, params, out.elbo) if is_advi else (), diagnostic_sample=diag_sample,
        first_diagnostics=first_diag)
    result = Result(model, family_obj, params, report)
    warn_diagnostics(result, warn)
    if warn and hasattr(module, "stop_warning"):  # what a method's own stop test must say (`advi_jax.vi`)
        said = module.stop_warning(code, extras, num_steps)
        if said:
            warnings.warn(said, DiagnosticWarning, stacklevel=user_stacklevel())
    if warn and report.runaway:
        warnings.warn(f"parameters {list(report.runaway)} (flat index in R^K) ran away while the ELBO kept rising: "
                      "the posterior may be improper (e.g. separable data with a flat prior); add a proper prior",
                      DiagnosticWarning, stacklevel=user_stacklevel())
    return result


def loop_compile(module: Any, model: Any, family: Family, options: Any, num_steps: int,
                 num_samples: int | None = None, can_stop: bool = False, num_fits: int = 1,
                 batched: bool = False) -> Any:
    """The XLA options of `aj.fit`'s loop (`driver.Settings.compile`).

    First the size rule (`compile_options.compile_mode`) over the loop's most evaluations: ADVI's
    `num_steps` x `num_samples` (other methods ignore them), another method's `loop_evals`, or a
    default fit's count where it has none; times `num_fits` for `fit_many`'s restarts of one model
    (the model's arrays hold its data once), not for `batched` fits (the arrays hold every dataset).
    Then the method's own `loop_compile_mode` where it has one. A single ADVI fit's loop then decides
    by its own arithmetic over its expected steps (`compile_options.ByCost`, `_expected_steps`): fast
    where the fast code's extra run time is below the compile time it saves, else the size rule's
    choice ("mid" for "full" where the "mid" code's extra run time is below its own saving,
    `compile_options.cost_mode`); where the size rule said fast or "mid", and on CPU also where it said full
    (`_by_cost_possible`). The decision is made on the thread that compiles the loop. `fit_many`'s
    loops (`num_fits` > 1) keep the size rule's choice: the arithmetic rule was calibrated on a single
    fit's natural-gradient loop, and it priced radon's 8 vmapped mean-field fits' fast code at 0.8 s
    more over 10,000 steps where it ran 9.8 s more ("mid": 1.4 s in all)."""
    is_advi = module is _advi
    evals = num_steps * num_samples if is_advi else None
    if hasattr(module, "loop_evals"):  # the method's own count (`advi_jax.vi`)
        evals = module.loop_evals(model, family, options, num_steps)
    copies = 1 if batched else int(num_fits)
    if evals is not None:
        evals *= copies
    elif copies > 1:
        evals = compile_options.DEFAULT_EVALS * copies
    mode = compile_options.compile_mode(model, evals)
    if hasattr(module, "loop_compile_mode"):  # the method's own choice (`advi_jax.vi`)
        mode = module.loop_compile_mode(model, family, options, mode)
    if is_advi and num_fits == 1 and (mode in _AHEAD_MODES or _by_cost_possible()):
        mode = compile_options.ByCost(_expected_steps(num_steps, can_stop, getattr(options, "stop", None)), evals)
    return mode


SWITCH_AT = 2_000
"""The step from which a fast-compiled default ADVI loop runs on its "mid" (or full) version (`loop_switch`)."""

SWITCH_SHARE = 1.0
"""`loop_switch` switches where the fast code's estimated extra after `SWITCH_AT` exceeds this share of the
optimised compile's estimated extra CPU time."""


def loop_switch(model: Any, loop: Any, key: Any, cfg: driver.Settings, num_steps: int) -> driver.Switch | None:
    """Where a fast-compiled ADVI loop with the default stopping rule (`AutoStop`) runs long, its later
    steps on the loop compiled with the optimising options (`driver.Switch`): from `SWITCH_AT` on,
    compiled on a background thread from the first step after the rule's first chance to stop (600
    steps: most default fits end there and never start it). Only where the fast code's estimated extra
    run time over the steps after the switch (`compile_options.fast_extra_seconds` per step, from the
    loop's own `Arithmetic`) exceeds the optimised compile's estimated extra CPU time
    (`FAST_SAVED_SECONDS_PER_EQN` per equation): the rule that chose fast priced the loop at its
    expected steps, half the cap, and a fit that runs to the cap pays the slower steps twice over
    (reg_horseshoe, K = 54: 406 against 84 us a step, 10,000 steps; benchmarks/PERFORMANCE.md). The
    switch step is fixed, so every call gives the same numbers."""
    stop = getattr(cfg.options, "stop", None)
    if not isinstance(stop, _advi.AutoStop) or cfg.num_fits is not None or not isinstance(cfg.compile,
                                                                                          compile_options.ByCost):
        return None
    decided = driver.run_chunk.decision(model, loop, key, np.int32(0), None, cfg)
    if decided is None or decided[0] != "fast":
        return None
    cost = decided[1]
    begin = fewest_steps(stop) + 1
    at = max(SWITCH_AT, begin)
    per_step = compile_options.fast_extra_seconds(cost) / max(cfg.compile.trips, 1.0)
    if per_step * (num_steps - at) <= SWITCH_SHARE * compile_options.FAST_SAVED_SECONDS_PER_EQN * cost.eqns:
        return None
    target = compile_options.optimised_mode(model, cost, cfg.compile.evals)
    program = driver.run_chunk.mid if target == "mid" else driver.run_chunk.full
    return driver.Switch(begin, at, program, background=_ahead.enabled())


def _by_cost_possible() -> bool:
    """Whether a loop the size rule compiles with XLA's full options may still choose the fast ones by
    its arithmetic: on CPU, outside a `compile_options.forced` block. The size rule prices every data
    entry alike; a loop whose work is matrix products (a GLM-like model, X @ beta) runs them in the same
    library kernels with either options: German credit (25,000 entries, K = 25), first call 3.7-4.3 ->
    1.5 s, later calls 0.1-0.15 s slower (benchmarks/PERFORMANCE.md)."""
    return compile_options._on_cpu() and compile_options.forced_mode() is None


_AHEAD_MODES = ("fast", "mid")
"""The loop's compile modes (`compile_options.compile_mode`) for which `aj.fit` compiles the later
programs on a background thread while the start compiles (`_compile_ahead`), as it does for a loop
that chooses between them by its arithmetic (`compile_options.ByCost`; the thread then reads the
loop's arithmetic and decides, off the main thread). "full" is left out:
measured on a loaded machine, its compile gained no wall time there (benchmarks/PERFORMANCE.md)."""


def _expected_steps(num_steps: int, can_stop: bool, stop: Any = None) -> int:
    """The steps ADVI's loop is expected to run, for its compiler options (`compile_options.ByCost`):
    all `num_steps` without a stopping rule; with one (the default's `AutoStop`, `tol_rel_obj`),
    half of them, the mean of a stop anywhere up to the cap. The fast options then pay on average,
    and at the cap cost at most twice the compile time they saved. (The default's stops on the
    accuracy suite: a mean of about 0.4 of the cap, 6% to 100%; benchmarks/PERFORMANCE.md.) The
    low-rank default's drift rule (`DriftStop`) is priced at `DRIFT_EXPECTED` of its cap: its stops on
    spot_large's eight posteriors averaged 0.66 of the cap (0.2-1.0), and at half or at 0.66 the fast
    options were chosen, which ran local_level's steps 15-35 us slower than the full ones (142-155 against
    120-126 us a step, second calls), 0.6-1.4 s over its 40,000 steps for 0.6-0.7 s less compile; every
    later call pays the slower steps with nothing saved (benchmarks/PERFORMANCE.md)."""
    if isinstance(stop, _advi.DriftStop):
        return max(int(num_steps * DRIFT_EXPECTED), 1)
    return max(num_steps // 2, 1) if can_stop else num_steps


DRIFT_EXPECTED = 1.0
"""The fraction of its cap the low-rank default's drift rule is priced at (`_expected_steps`)."""


def _whitened_start(model: Any, family: Family, init: Any, whiten: bool) -> bool:
    """Whether `resolve_start` will (barring a fallback to zero) run the method in whitened coordinates."""
    if not (whiten and family.affine_closed and isinstance(init, str)):
        return False
    return init in ("laplace", "pathfinder", "bam") or (init == "auto" and model.dim <= AUTO_LAPLACE_MAX_DIM)


def _run_model_shape(model: Any, whitened: bool) -> Any:
    """The run model the start will give, with abstract (`jax.ShapeDtypeStruct`) whitening arrays."""
    if not whitened:
        return model
    dtype, k = jnp.result_type(float), int(model.dim)
    return _laplace.Whitened(model, jax.ShapeDtypeStruct((k,), dtype), jax.ShapeDtypeStruct((k, k), dtype))


def fewest_steps(stop: Any) -> int:
    """The fewest steps after which `AutoStop` can stop an ADVI loop (its first test after a halving)."""
    return stop.batch_steps * (stop.min_batches + stop.min_batches_halved)


def likely_diagnostic_draws(model: Any, num_diagnostic_draws: int | str | None, options: Any) -> int | None:
    """The diagnostics' number of draws to compile ahead (`_compile_ahead`): the known number
    (`known_diagnostic_draws`), else, for the automatic budget after an ADVI loop with `AutoStop`, the
    budget of a loop that stops at its first chance (`fewest_steps` x `num_samples` gradients): where
    the data are too large for the draws to be free (`DIAGNOSTIC_FREE_WORK`), the budget grows with
    the loop's cost, and most default fits stop there. None: no guess (other methods and rules).
    A fit whose loop ran longer and needs more draws compiles them after the loop, as without a guess."""
    known = known_diagnostic_draws(model, num_diagnostic_draws)
    if known is not None or num_diagnostic_draws != "auto":
        return known
    stop, samples = getattr(options, "stop", None), getattr(options, "num_samples", None)
    if not isinstance(stop, _advi.AutoStop) or not samples:
        return None
    return diagnostic_draw_budget(0, fewest_steps(stop) * int(samples), data_size(model))


def _compile_ahead(model: Any, family: Family, module: Any, cfg: driver.Settings, key: Any, whitened: bool,
                   num_diagnostic_draws: int | str | None) -> _ahead.Ahead:
    """Compile the fit's programs after the start on a background thread (`advi_jax.run.ahead`),
    from abstract arguments of the shapes the start will give (a `Whitened` run model when
    `whitened`). The diagnostics' program only when its number of draws is known now (given, or
    `DIAGNOSTIC_DRAWS_MAX` whatever the fit's cost, or `likely_diagnostic_draws`' guess; None: no
    diagnostics or no guess).

    `aj.fit` uses it when the loop compiles with `compile_options.FAST_OPTIONS` or `MID_OPTIONS`
    (`_AHEAD_MODES`): the start program compiles with the fast options on one thread, so the
    second core is free for the loop's compile, which then ends about when the start has run
    (breast cancer, wells, radon: the first call 0.5-1.0 s shorter on two cores,
    benchmarks/PERFORMANCE.md)."""
    run_model = _run_model_shape(model, whitened)
    dtype = jnp.result_type(float)
    k = int(model.dim)
    vector, matrix = jax.ShapeDtypeStruct((k,), dtype), jax.ShapeDtypeStruct((k, k), dtype)

    def keys(done):
        if jnp.result_type(float) != dtype:  # jax.enable_x64 is thread-local: the thread runs in the caller's mode
            raise RuntimeError("the background thread's float type differs from the fit's")
        host = host_keys.fit_keys(key)  # a threefry key on the CPU: computed on the host, nothing to compile
        if host is not None:
            done["keys"] = tuple(jax.ShapeDtypeStruct(k.shape, k.dtype) for k in host)
            return
        lowered = _fit_keys.lower(key)
        lowered.compile()
        done["keys"] = lowered.out_info

    def init_loop(done):
        lowered = driver.init_loop.lower(run_model, done["keys"][0], vector, cfg)
        lowered.compile()
        done["init_loop"] = lowered.out_info

    def run_chunk(done):
        driver.run_chunk.lower(run_model, done["init_loop"], done["keys"][1], jax.ShapeDtypeStruct((), np.int32),
                               None, cfg).compile()

    def finish_(done):
        lowered = finish.lower(run_model, done["init_loop"].state, module, family, cfg.options)
        lowered.compile()
        done["finish"] = done["params"] = lowered.out_info[0]

    def transform(done):
        lowered = _laplace.transform.lower(family, done["params"], vector, matrix)
        lowered.compile()
        done["params"] = lowered.out_info

    def diagnostics(done):
        done["diagnostics"] = importance.compile_ahead(model, family, done["params"], done["keys"][2],
                                                       num_diagnostic_draws)

    jobs = [("keys", keys), ("init_loop", init_loop), ("run_chunk", run_chunk), ("finish", finish_)]
    if whitened:
        jobs.append(("transform", transform))
    if num_diagnostic_draws is not None:
        jobs.append(("diagnostics", diagnostics))
    return _ahead.Ahead(jobs, x64=dtype == jnp.float64)


def _wait(ahead: _ahead.Ahead | None, name: str) -> None:
    if ahead is not None:
        ahead.wait(name)


def _choose_learning_rate(begun, family, opts, key, learning_rates, adapt_iter, num_eval_draws: int = 256):
    rates = jnp.asarray(learning_rates, begun.loc.dtype)
    initial, elbos, skipped = _advi.adapt_learning_rate(begun.run_model, begun.loc, key, rates, family, opts,
                                                        adapt_iter, num_eval_draws)
    initial, elbos, skipped = float(initial), np.asarray(elbos), np.asarray(skipped)
    usable = np.isfinite(elbos)
    info = {"learning_rates": tuple(float(r) for r in learning_rates), "elbo": elbos.tolist(),
            "skipped_steps": skipped.tolist(), "initial_elbo": initial}
    improved = np.max(np.where(usable, elbos, -np.inf)) > initial
    if not improved and usable.any() and begun.whitening is not None:
        # q starts at a fitted Gaussian (Laplace / Pathfinder / BaM): for a (near-)Gaussian posterior that is the
        # family's optimum already, which no step size can improve; take the candidate that keeps it best
        info["note"] = "no candidate improved on the fitted-Gaussian start (already near the family's optimum)"
    elif not usable.any() or not improved:
        raise ValueError(f"learning_rate='adapt': every candidate step size {info['learning_rates']} diverged or "
                         f"failed to improve the initial ELBO {initial:.4g} within adapt_iter={adapt_iter} steps "
                         f"(ELBOs reached: {elbos.tolist()}); check the model, or pass a smaller learning_rate")
    best = int(np.argmax(np.where(usable, elbos, -np.inf)))
    info["learning_rate"] = float(learning_rates[best])
    return float(learning_rates[best]), info
