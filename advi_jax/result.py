"""One immutable result: the approximation (model, family, parameters) and the fit's report.

`Result` is built once by a fit pipeline (`advi_jax.run`) and never mutated. It holds

* the approximation: `model`, `family`, `params` (in R^K) with `sample`, `mean`,
  `psis_expectation`, ... mapping back to the constrained space through the model's bijectors;
* the report (`Report`): the ELBO trace, the stop reason, the method and why it was chosen, the
  cost (`num_grad_evals`, `num_logp_evals`, seconds split into start / compile / run /
  diagnostics), the PSIS diagnostics (`Diagnostics`), the start, and method-specific `extras`.
  Every report field reads as an attribute of the result (`result.khat`, `result.stop_reason`).

`summary()` is the one formatter. `ManyResult` is the batched result of `fit_many`, with
per-fit diagnostics; indexing it gives a `Result`.

Diagnostics and non-finite draws: `diagnose` draws S times from q and evaluates the log density
at every draw. A draw where it is NaN or -inf is q's mass outside the posterior's support (or
where the model is broken); it is never dropped. Its share is `Diagnostics.nonfinite_share`; the
plain ELBO over the draws is then -inf or NaN (`Diagnostics.elbo`); a share of at least
`NONFINITE_UNRELIABLE` (1 in 1,000 draws) makes k-hat +inf and the verdict "unreliable", a
smaller non-zero share caps the verdict at "ok"; the fit warns in both cases.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from advi_jax import diagnostics as _diag
from advi_jax.importance import centred_log_ratios, draws_and_log_ratios, log_ratios, sampling_key
from advi_jax._types import Array, PyTree, check_positive_int
from advi_jax.base import Family

__all__ = ["Diagnostics", "Report", "Result", "ManyResult", "diagnose", "diagnose_with_ratios", "log_ratios",
           "verdict", "diagnostic_draw_budget", "confirmation_draws", "diagnose_confirmed", "over_threshold",
           "data_size", "constrained_draws", "NONFINITE_UNRELIABLE",
           "DIAGNOSTIC_DRAWS_MIN", "DIAGNOSTIC_DRAWS_MAX"]

NONFINITE_UNRELIABLE = 1e-3
"""A share of q's mass (estimated from the diagnostic draws) where the log density is NaN or -inf
at or above which the verdict is "unreliable"; any smaller non-zero share caps it at "ok"."""


class Diagnostics(NamedTuple):
    """Importance diagnostics of q against the model (floats, or arrays with a leading B axis).

    Attributes:
      khat: PSIS k-hat of log p - log q (+inf when `nonfinite_share` >= NONFINITE_UNRELIABLE).
      iw_elbo, iw_elbo_se: importance-weighted ELBO and its Monte Carlo standard error.
      elbo: the plain ELBO mean(log p - log q) over ALL the draws (-inf/NaN if any is).
      ess, psis_ess: importance effective sample sizes, raw and Pareto-smoothed.
      nonfinite_share: the share of the draws where log p is NaN or -inf.
      num_draws: S.
    """

    khat: Any
    iw_elbo: Any
    iw_elbo_se: Any
    elbo: Any
    ess: Any
    psis_ess: Any
    nonfinite_share: Any
    num_draws: int


DIAGNOSTIC_DRAWS_MIN = 256
"""The fewest diagnostic draws the automatic budget takes. PSIS fits its tail to
M = min(S / 5, 3 sqrt(S)) = 48 ratios there and can certify k < `khat_threshold(256)` = 0.58;
k-hat's own sampling sd is about 0.2 at 256 draws, 0.15 at 1,000 and 0.1 at 2,000 (measured
on the breast-cancer full-rank fit, k around 0.5): ask for more (`num_diagnostic_draws=4096`)
when the verdict matters more than the seconds."""

DIAGNOSTIC_DRAWS_MAX = 4096
"""The most diagnostic draws the automatic budget takes (k-hat's threshold is 0.7 from 2,154)."""

DIAGNOSTIC_FRACTION = 0.2
"""The automatic budget's share of the fit's cost, in log-density evaluations."""

GRADIENT_COST = 2
"""A gradient evaluation counted as this many log-density evaluations (reverse mode)."""

DIAGNOSTIC_FREE_WORK = 2 ** 27
"""Diagnostic draws x data entries that count as free: one evaluation of a log density reads its
data, so S draws cost about S x (entries of `model.data`); below this product (about a tenth of
a second of matrix products on one CPU core) the draws are not what a fit's diagnostics spend
their time on (compilation and dispatch are), and the full `DIAGNOSTIC_DRAWS_MAX` is taken."""


def data_size(model: Any) -> int:
    """Entries of the model's data pytree (`model.data`; 0 when the data are closed over)."""
    leaves = jax.tree_util.tree_leaves(getattr(model, "data", None))
    return int(sum(int(np.size(leaf)) for leaf in leaves if hasattr(leaf, "shape")))


def diagnostic_draw_budget(num_logp_evals: int, num_grad_evals: int, data_entries: int) -> int:
    """The number of diagnostic draws for `num_diagnostic_draws="auto"`: about a fifth of the fit.

    `S = clip(2^round(log2(max(0.2 E, W / V))), 256, 4096)` (the power of two nearest the budget,
    within a factor sqrt(2) of it) with E = `num_logp_evals` +
    `GRADIENT_COST` x `num_grad_evals` (the fit's cost in log-density evaluations), V the data
    entries one log-density evaluation reads and W = `DIAGNOSTIC_FREE_WORK`. So a 10,000-step
    ADVI fit gets 4,096 draws (each of its steps evaluated the log density and its gradient at
    least once); a few-pass method (`glm_exact`, 5-20 passes over X) gets the floor, 256, once
    the data are large (V > 370,000 entries, e.g. N = 35,000 rows of 10 features), and 4,096 on
    small data, where draws cost nothing next to compiling. Powers of two keep the number of
    distinct compiled diagnostic functions small (at most five per model shape).

    Args:
      num_logp_evals, num_grad_evals: the fit's evaluation counts (`Report` fields).
      data_entries: V (`data_size(model)`); 0 (data closed over) counts as small data.

    Returns:
      S, a power of two in [DIAGNOSTIC_DRAWS_MIN, DIAGNOSTIC_DRAWS_MAX].

    Example:
      >>> diagnostic_draw_budget(0, 10_000, 11_000_000), diagnostic_draw_budget(0, 20, 11_000_000)
      (4096, 256)
    """
    return _power_of_two_budget(num_logp_evals, num_grad_evals, data_entries, DIAGNOSTIC_DRAWS_MAX)


CONFIRM_FACTOR = 4
"""A k-hat re-estimate (`confirmation_draws`) takes this many times the first diagnostics' draws."""

CONFIRM_DRAWS_MAX = 16384
"""The most draws a k-hat re-estimate takes (`confirmation_draws`)."""


def _power_of_two_budget(num_logp_evals: int, num_grad_evals: int, data_entries: int, most: int) -> int:
    cost = DIAGNOSTIC_FRACTION * (int(num_logp_evals) + GRADIENT_COST * int(num_grad_evals))
    free = DIAGNOSTIC_FREE_WORK / max(int(data_entries), 1)
    want = max(cost, free, 1.0)
    draws = 2 ** int(round(math.log2(want)))
    return int(min(max(draws, DIAGNOSTIC_DRAWS_MIN), most))


def confirmation_draws(num_draws: int, num_logp_evals: int, num_grad_evals: int, data_entries: int) -> int:
    """Fresh draws for re-estimating a k-hat that read over its threshold from the automatic budget's
    `num_draws` (0: none).

    k-hat estimates the tail shape of the ratios within the range S draws reach; for S in the
    thousands it can read well above its large-S value on a q that is close to the posterior
    (Vehtari et al. 2024, on k-hat's pre-asymptotic behaviour and its dependence on S): measured on
    a zero-inflated Poisson regression at its family optimum, 0.86 +- 0.15 from 4,096 draws against
    0.39 +- 0.07 from 32,768 (benchmarks/PERFORMANCE.md, issue 15). k-hat says whether PSIS is
    reliable at the sample size it came from, so where a larger sample costs little the fit
    re-estimates it there (`diagnose_confirmed`) and reports that sample's k-hat, ESS and weights.
    The number is `CONFIRM_FACTOR` x S, cut to what `diagnostic_draw_budget`'s own cost rule allows
    with `CONFIRM_DRAWS_MAX` as its ceiling (a fifth of the fit's cost, or the draws that are free
    next to compiling: `DIAGNOSTIC_FREE_WORK` / data entries); 0 when that is not more than S.

    Example:
      >>> confirmation_draws(4096, 0, 4000, 600), confirmation_draws(256, 0, 20, 11_000_000)
      (16384, 0)
    """
    budget = _power_of_two_budget(num_logp_evals, num_grad_evals, data_entries, CONFIRM_DRAWS_MAX)
    draws = min(CONFIRM_FACTOR * int(num_draws), budget)
    return draws if draws > int(num_draws) else 0


def known_diagnostic_draws(model: Any, num_diagnostic_draws: int | str | None = "auto") -> int | None:
    """The diagnostics' number of draws when it is known before the fit (so their program can be
    compiled ahead): `num_diagnostic_draws` itself when given as a number, DIAGNOSTIC_DRAWS_MAX
    under "auto" when the data are small enough that the fit's cost cannot lower it, else None
    (also for None: no diagnostics).

    Example:
      >>> known_diagnostic_draws(None, 512), known_diagnostic_draws(None, None)
      (512, None)
    """
    if num_diagnostic_draws is None or not isinstance(num_diagnostic_draws, str):
        return num_diagnostic_draws
    num = diagnostic_draw_budget(0, 0, data_size(model))
    return num if num == DIAGNOSTIC_DRAWS_MAX else None


@functools.partial(jax.jit, static_argnames=("family", "num_draws"))
def constrained_draws(model: Any, family: Family, params: PyTree, key: Array, num_draws: int) -> dict[str, Array]:
    """`num_draws` draws of q mapped to the constrained space, in one compiled call (op by op,
    the bijectors cost a dispatch per operation and a compilation each on first use)."""
    return jax.vmap(model.to_constrained)(family.sample(params, sampling_key(key), num_draws))


@jax.jit
def _constrain(model: Any, zeta: Array) -> dict[str, Array]:
    return jax.vmap(model.to_constrained)(zeta)


def _core(ratios: Array, shift=0.0, xp=jnp) -> tuple:
    """The diagnostics of log ratios `shift + ratios` (k-hat, ESS and the share read `ratios` alone)."""
    d = _diag._diagnostics_core(ratios, xp)
    share = xp.mean(~xp.isfinite(ratios) & ~xp.isposinf(ratios))
    # q's mass where log p is NaN or -inf counts against the fit: k-hat over the other draws alone
    # would describe a different q, so it is +inf once that mass reaches NONFINITE_UNRELIABLE.
    khat = xp.where(share >= NONFINITE_UNRELIABLE, xp.inf, d.khat)
    return khat, d.iw_elbo + shift, d.iw_elbo_se, d.elbo + shift, d.ess, d.psis_ess, share


@functools.partial(jax.jit, static_argnames=("family", "num_draws", "batched"))
def _diagnose(model, family: Family, params, keys, num_draws: int, batched: bool):
    def one(m, p, k):
        _, centred, shift = centred_log_ratios(m, family, p, k, num_draws)
        return _core(centred, shift)

    return jax.vmap(one, in_axes=(0 if batched else None, 0, 0))(model, params, keys)


def _to_diagnostics(values, num_draws: int) -> Diagnostics:
    values = jax.device_get(values)
    convert = (lambda v: float(v)) if np.ndim(values[0]) == 0 else np.asarray
    return Diagnostics(*(convert(v) for v in values), num_draws)


def diagnose_with_ratios(model: Any, family: Family, params: PyTree, key: Array,
                         num_draws: int = 4096) -> tuple[Diagnostics, np.ndarray]:
    """`diagnose` of one fit, also returning the (S,) log ratios (NumPy float64) of its draws.

    The draws and their centred log ratios are one compiled call (`draws_and_log_ratios`, cached
    per model structure, family and S: a second fit of the same shape compiles nothing); PSIS runs
    on the host in NumPy float64 (`advi_jax.diagnostics`), which compiles nothing either.
    """
    _, centred, shift = draws_and_log_ratios(model, family, params, key, num_draws)
    centred, shift = jax.device_get((centred, shift))
    centred, shift = np.asarray(centred, np.float64), float(shift)
    values = _diag._on_host_when_concrete(lambda xp, r: _core(r, shift, xp), centred)
    return _to_diagnostics(values, num_draws), centred + shift


def diagnose(model: Any, family: Family, params: PyTree, key: Array, num_draws: int = 4096, *,
             num_fits: int | None = None, batched: bool = False,
             return_ratios: bool = False) -> Diagnostics | tuple[Diagnostics, np.ndarray]:
    """PSIS k-hat, IW-ELBO, ESS and the non-finite share from `num_draws` fresh draws of q.

    One fit: one compiled call for the draws and log ratios, PSIS on the host
    (`diagnose_with_ratios`; with `return_ratios`, also the (S,) log ratios). With
    `num_fits=B`, `params` leaves and `key` carry a leading B axis and the model's data too
    when `batched`; every field is then a (B,) array, all in one compiled call.
    """
    if num_fits is None:
        both = diagnose_with_ratios(model, family, params, key, num_draws)
        return both if return_ratios else both[0]
    return _to_diagnostics(_diagnose(model, family, params, key, num_draws, bool(batched)), num_draws)


def over_threshold(diagnostics: Diagnostics) -> bool:
    """Whether these diagnostics warn by k-hat alone: a finite k-hat at or over `khat_threshold(S)`,
    no non-finite mass (which warns whatever k-hat reads) and weights not nearly constant
    (`diagnostics.near_constant`). These are the ones a larger sample can re-estimate."""
    d = diagnostics
    khat = float(d.khat)
    return (d.nonfinite_share == 0 and math.isfinite(khat) and khat >= _diag.khat_threshold(d.num_draws)
            and not _diag.near_constant(khat, d.ess, d.num_draws))


def _confirmation_key(key: Array) -> Array:
    """fold_in(key, 1): on the host for a threefry key on the CPU (no program to compile)."""
    from advi_jax.run import host_keys

    if host_keys.fit_keys(key) is not None:
        data = host_keys.fold_in(np.asarray(jax.random.key_data(key)), 1)
        return jax.random.wrap_key_data(data, impl="threefry2x32")
    return jax.random.fold_in(key, 1)


def diagnose_confirmed(model: Any, family: Family, params: PyTree, key: Array, num_draws: int,
                       confirm_draws: int = 0) -> tuple[Diagnostics, tuple, Diagnostics | None]:
    """`diagnose` of one fit from `num_draws` draws; where k-hat reads over its threshold
    (`over_threshold`) and `confirm_draws` > `num_draws`, re-estimated from `confirm_draws` fresh
    draws (key `fold_in(key, 1)`; `confirmation_draws` says how many are cheap).

    k-hat describes PSIS's reliability at the sample size it came from (Vehtari et al. 2024); the
    larger sample's k-hat, IW-ELBO, ESS and draws replace the first sample's (they are what the
    summary's PSIS-corrected estimates then use). The first sample is independent of the second, so
    the choice to draw more does not bias the second's reading. A q that misses mass keeps a high
    k-hat however many draws are taken, and warns as before.

    Returns:
      (diagnostics, (key, log_ratios) of the draws they came from, the first sample's diagnostics
      when the re-estimate replaced them, else None).
    """
    diag, ratios = diagnose_with_ratios(model, family, params, key, num_draws)
    if not (int(confirm_draws) > int(num_draws) and over_threshold(diag)):
        return diag, (key, ratios), None
    more_key = _confirmation_key(key)
    more, more_ratios = diagnose_with_ratios(model, family, params, more_key, int(confirm_draws))
    return more, (more_key, more_ratios), diag


def diagnose_ratios(ratios: Array) -> Diagnostics:
    """`Diagnostics` from precomputed (S,) log ratios (e.g. the full-data ones of a minibatch fit)."""
    return _to_diagnostics(_diag._on_host_when_concrete(lambda xp, r: _core(r, 0.0, xp), ratios),
                           int(ratios.shape[0]))


_ADVICE = "try family='fullrank', a reparameterisation, or MCMC"


def verdict(diagnostics: Diagnostics | None, missing: str = "not computed", family: str | None = None) -> str:
    """The verdict in plain words: k-hat's reading, downgraded by q's mass where log p is not finite.

    The advice fits the fit: a full-rank fit is not told to try `family='fullrank'`.
    """
    if diagnostics is None:
        return missing
    text = _diag.khat_verdict(diagnostics.khat, diagnostics.num_draws,
                              _diag.ratio_cv(diagnostics.ess, diagnostics.num_draws))
    if family == "fullrank":
        text = text.replace(_ADVICE, "the Gaussian family is too narrow here: try a non-centred "
                                     "parameterisation for hierarchical models, more draws per step (num_samples), "
                                     "or MCMC")
    share = diagnostics.nonfinite_share
    if share > 0:
        where = (f"q puts {100 * share:.3g}% of its mass where the log density is NaN or -inf "
                 "(outside the model's support or where it breaks)")
        if share >= NONFINITE_UNRELIABLE or text.startswith("unreliable"):
            return f"unreliable: {where}; the fit and its ELBO cannot be trusted"
        if text.startswith("good"):
            return f"ok at best: {where}"
    return text


def _default_labels(model: Any) -> Mapping[str, Any] | None:
    """Labels for the summary: the model's own `labels`, or a ready GLM's feature names."""
    labels = getattr(model, "labels", None)
    if labels is not None:
        return labels
    from advi_jax.models.regression import RegressionModel, parameter_labels  # models sit above result

    if isinstance(model, RegressionModel):  # vectors get their feature names; scalars keep their own name
        return {k: v for k, v in parameter_labels(model).items() if k == "beta"}
    return None


def _quantile_table(draws: Mapping[str, np.ndarray], labels: Mapping[str, Any] | None = None,
                    weights: np.ndarray | None = None) -> list[dict]:
    rows = []
    labels = labels or {}
    for name, value in draws.items():
        value = np.asarray(value)
        flat = value.reshape(value.shape[0], -1)
        shape = value.shape[1:]
        names = labels.get(name)
        if names is not None and len(names) != flat.shape[1]:
            raise ValueError(f"labels[{name!r}] must have {flat.shape[1]} entries, got {len(names)}")
        for j in range(flat.shape[1]):
            idx = np.unravel_index(j, shape) if shape else ()
            if names is not None:
                label = f"{name}[{names[j]}]" if shape else str(names[j])
            else:
                label = name + ("[" + ",".join(str(i) for i in idx) + "]" if shape else "")
            col = flat[:, j]
            q5, q50, q95 = np.quantile(col, [0.05, 0.5, 0.95])
            row = {"parameter": label, "mean": float(col.mean()), "sd": float(col.std(ddof=1)),
                   "5%": float(q5), "50%": float(q50), "95%": float(q95)}
            if weights is not None:
                mean = float(np.sum(weights * col))
                row["psis_mean"] = mean
                row["psis_sd"] = float(np.sqrt(max(np.sum(weights * (col - mean) ** 2), 0.0)))
            rows.append(row)
    return rows


@dataclasses.dataclass(frozen=True)
class Report:
    """What a fit did and what it cost (see `Result`; every field is also an attribute of it).

    Attributes:
      elbo: (steps run,) per-step ELBO estimates (NaN where a step was skipped).
      num_steps: steps run.
      num_grad_evals: gradients of the log density the fit evaluated (summed `StepInfo` counts).
      num_logp_evals: log-density values evaluated without a gradient (the diagnostics' draws are
        not counted, except those of a k-hat re-estimate: see `first_diagnostics`).
      num_nonfinite: steps skipped because the ELBO or gradient was not finite.
      converged: whether a convergence test (the relative-ELBO rule or the method's) stopped it.
      stop_reason: why the fit ended, in words.
      stop_code: the driver's code (`advi_jax.run.STOP_REASONS`).
      method: the algorithm that ran (`advi_jax.vi.METHODS`); method_reason: why.
      estimator, num_samples: ADVI's gradient estimator and draws per step (None for others).
      seconds: wall time of the whole call; start_seconds (checks, the Laplace start, step-size
        search), compile_seconds, run_seconds, diagnostics_seconds split it. Where the loop was
        compiled on a background thread while the start compiled (`advi_jax.run.ahead`),
        compile_seconds is only the wait for it (about 0) and start_seconds holds the overlap.
      diagnostics: a `Diagnostics`, or None with `diagnostics_note` saying why.
      diagnostic_sample: (key, log_ratios) of the diagnostic draws, or None: the draws are
        `family.sample(params, key, S)` and `log_ratios` their (S,) log p - log q (NumPy);
        `summary_rows` reuses them instead of evaluating the log density again.
      first_diagnostics: when k-hat from the automatic budget's draws read over its threshold and
        a larger fresh sample re-estimated it (`diagnose_confirmed`), the first sample's
        `Diagnostics` (`diagnostics` and `diagnostic_sample` are then the larger sample's, and its
        draws count in `num_logp_evals`); else None.
      learning_rate, adaptation: the step size (Adam's, or the averaged default's first step,
        `AutoStop.learning_rate`) and the `learning_rate="adapt"` search.
      init_loc, init_method, init_candidates, init_scores: how the fit started.
      extras: method-specific outputs (`VIAlgorithm.extras`), a dict.
      runaway: indices of parameters that ran away while the ELBO rose (empty when none).
    """

    elbo: np.ndarray
    num_steps: int
    num_grad_evals: int
    num_logp_evals: int
    num_nonfinite: int
    converged: bool
    stop_reason: str
    stop_code: int = 0
    method: str = "advi"
    method_reason: str = "requested"
    estimator: str | None = "reparam"
    num_samples: int | None = 1
    seconds: float = 0.0
    start_seconds: float = 0.0
    compile_seconds: float = 0.0
    run_seconds: float = 0.0
    diagnostics_seconds: float = 0.0
    diagnostics: Diagnostics | None = None
    diagnostics_note: str = "not computed (diagnostics=False)"
    learning_rate: float | None = None
    adaptation: dict | None = None
    init_loc: np.ndarray | None = None
    init_method: str = "zero"
    init_candidates: np.ndarray | None = None
    init_scores: np.ndarray | None = None
    extras: dict = dataclasses.field(default_factory=dict)
    runaway: tuple = ()
    diagnostic_sample: tuple | None = dataclasses.field(default=None, repr=False)
    first_diagnostics: Diagnostics | None = None


_REPORT_FIELDS = frozenset(f.name for f in dataclasses.fields(Report))
_DIAGNOSTIC_FIELDS = ("khat", "iw_elbo", "iw_elbo_se", "ess", "psis_ess", "nonfinite_share")
_RESAMPLE_OPTIONS = (None, "psis")


@dataclasses.dataclass(frozen=True)
class Result:
    """The outcome of `fit` / `fit_minibatch` (and of one fit of `fit_many`).

    Attributes:
      model: the fitted `Model` (the full-data model for a minibatch fit).
      family: the variational `Family`.
      params: the variational parameters (last finite values).
      report: the `Report`; its fields read as attributes here (`result.elbo`,
        `result.num_grad_evals`, `result.stop_reason`, ...). Also `num_gradient_evals` (an alias
        of `num_grad_evals`), `khat`, `iw_elbo`, `iw_elbo_se`, `ess`, `psis_ess`,
        `nonfinite_share` (NaN without diagnostics) and `num_diagnostic_draws` (0 without).

    Example:
      >>> import jax, jax.numpy as jnp, advi_jax as aj
      >>> model = aj.Model(lambda p: -0.5 * jnp.sum(p["x"] ** 2), {"x": aj.real((3,))})
      >>> result = aj.fit(model, key=jax.random.key(1), num_steps=500, num_samples=2, progress=False)
      >>> result.num_grad_evals, result.report.method  # 500 steps x 2 draws, and the start's 9
      (1009, 'advi')
    """

    model: Any
    family: Family
    params: PyTree
    report: Report

    def __getattr__(self, name: str):
        if name in _REPORT_FIELDS:
            return getattr(object.__getattribute__(self, "report"), name)
        if name in _DIAGNOSTIC_FIELDS:
            diag = object.__getattribute__(self, "report").diagnostics
            return float("nan") if diag is None else getattr(diag, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def num_gradient_evals(self) -> int:
        """Alias of `num_grad_evals`."""
        return self.report.num_grad_evals

    @property
    def final_elbo(self) -> float:
        """The fit's final ELBO: the last value for a deterministic method (`DETERMINISTIC` in its
        `advi_jax.vi` module), else the mean of the last 100 per-step estimates; NaN when any of
        those is not finite (an average over the finite ones only would flatter the fit)."""
        from advi_jax.vi import METHODS

        elbo = np.asarray(self.report.elbo)
        module = METHODS.get(self.report.method)
        tail = elbo[-1:] if getattr(module, "DETERMINISTIC", False) else elbo[-min(len(elbo), 100):]
        if tail.size == 0 or not np.all(np.isfinite(tail)):
            return float("nan")
        return float(np.mean(tail))

    @property
    def num_diagnostic_draws(self) -> int:
        """Draws of q behind the diagnostics (0 when not computed)."""
        return 0 if self.report.diagnostics is None else self.report.diagnostics.num_draws

    # ------------------------------------------------------------------ the approximation
    def sample_unconstrained(self, key: Array, n: int) -> Array:
        """(n, K) draws of q in R^K."""
        key = _diag.check_key(key)
        n = check_positive_int(n, "n")
        return self.family.sample(self.params, sampling_key(key), n)

    def sample(self, key: Array, n: int, resample: str | None = None,
               num_proposals: int | None = None) -> dict[str, Array]:
        """n constrained draws: dict name -> array with leading axis n.

        Args:
          key: PRNG key.
          n: number of draws.
          resample: None for independent draws of q; "psis" for sampling-importance-resampling:
            `num_proposals` draws of q are weighted by their Pareto-smoothed importance weights
            and n of them are picked with replacement, which corrects q towards the posterior
            when k-hat < 0.7 (the picks contain repeats; see `diagnostics.psis_resample`).
          num_proposals: draws of q to resample from (default max(4 n, 4096)).

        Returns:
          dict name -> (n, *shape) constrained draws.
        """
        key = _diag.check_key(key)
        n = check_positive_int(n, "n")
        if resample not in _RESAMPLE_OPTIONS:
            raise ValueError(f"resample must be one of {list(_RESAMPLE_OPTIONS)}, got {resample!r}")
        if resample is None:
            if num_proposals is not None:
                raise ValueError("num_proposals is only used with resample='psis'")
            return constrained_draws(self.model, self.family, self.params, key, n)
        else:
            proposals = max(4 * n, 4096) if num_proposals is None else check_positive_int(num_proposals,
                                                                                          "num_proposals", 25)
            draw_key, pick_key = jax.random.split(key)
            zeta, ratios, _ = draws_and_log_ratios(self.model, self.family, self.params, draw_key, proposals)
            zeta = _diag.psis_resample(pick_key, zeta, ratios, n)  # PSIS weights ignore the shift
        return _constrain(self.model, zeta)

    def importance_draws(self, key: Array, n: int = 4096) -> tuple[dict[str, Array], _diag.PSISResult]:
        """n draws of q (constrained) with their Pareto-smoothed importance weights.

        Returns:
          (draws, psis_result): draws is dict name -> (n, *shape); `psis_result.log_weights` are
          the normalised smoothed log weights and `psis_result.khat` the k-hat of these draws.
        """
        key = _diag.check_key(key)
        n = check_positive_int(n, "n", 25)
        zeta, ratios, _ = draws_and_log_ratios(self.model, self.family, self.params, key, n)
        return _constrain(self.model, zeta), _diag._psis_core(ratios, True)  # normalised: the shift drops out

    def psis_expectation(self, fn: Callable[[dict[str, Array]], PyTree], key: Array, n: int = 4096) -> PyTree:
        """PSIS-corrected posterior expectation E_p[fn(params)] from n draws of q.

        `fn` takes one dict of constrained parameters and returns an array or pytree; it is
        vmapped over the draws and averaged with self-normalised Pareto-smoothed weights.
        Reliable while k-hat < 0.7 (`importance_draws` gives the k-hat of the draws used).

        Example:
          >>> second_moment = result.psis_expectation(lambda p: p["x"] ** 2, jax.random.key(1))  # doctest: +SKIP
        """
        if not callable(fn):
            raise TypeError(f"fn must be a function of a dict of constrained parameters, got {type(fn).__name__}")
        draws, smoothed = self.importance_draws(key, n)
        values = jax.vmap(fn)(draws)
        weights = jnp.exp(smoothed.log_weights)
        return jax.tree_util.tree_map(lambda v: jnp.tensordot(weights.astype(v.dtype), v, axes=1)
                                      if jnp.issubdtype(v.dtype, jnp.floating) else
                                      jnp.tensordot(weights, v.astype(weights.dtype), axes=1), values)

    def mean(self, key: Array | None = None, num_draws: int = 4000) -> dict[str, Array]:
        """Posterior means in the constrained space, by Monte Carlo over q.

        The constrained mean of q has no closed form for non-linear bijectors; without a `key`
        a fixed key (0) is used so repeated calls agree.
        """
        key = jax.random.key(0) if key is None else key
        return {k: jnp.mean(v, axis=0) for k, v in self.sample(key, num_draws).items()}

    def to_arviz(self, *args, **kwargs):
        """This result as ArviZ `InferenceData` (`advi_jax.interop.arviz.to_arviz(self, ...)`)."""
        try:
            from advi_jax.interop.arviz import to_arviz
        except ImportError as err:
            raise ImportError("Result.to_arviz needs advi_jax.interop.arviz (and the arviz package): "
                              f"{err}") from err
        return to_arviz(self, *args, **kwargs)

    # ------------------------------------------------------------------ the report
    @property
    def verdict(self) -> str:
        """The diagnostics' verdict in plain words (k-hat and q's mass where log p is not finite)."""
        return verdict(self.report.diagnostics, self.report.diagnostics_note, self.family.name)

    def summary_rows(self, key: Array | None = None, num_draws: int = 4000,
                     labels: Mapping[str, Any] | None = None, *,
                     reuse_diagnostic_draws: bool | None = None,
                     draws: Mapping[str, Any] | None = None) -> list[dict]:
        """Per scalar parameter: mean, sd and 5/50/95% quantiles under q (constrained space).

        When the diagnostics say PSIS is reliable (k-hat below the threshold, no non-finite
        mass) and k-hat >= 0.5, each row also has `psis_mean` and `psis_sd`: the
        Pareto-smoothed importance-weighted estimates, which correct q towards the posterior.
        With `reuse_diagnostic_draws` (default: when `key` is None) these reuse the diagnostics'
        own draws and log ratios (`num_draws` is then the diagnostics' S, and no log density is
        evaluated again); otherwise `num_draws` fresh draws (at least the diagnostics' S where k-hat was
        re-estimated from a larger sample, `Report.first_diagnostics`). `labels` optionally maps a
        parameter name to labels of its flattened entries; by default the model's own `labels` (e.g.
        feature names of the ready GLMs).
        `draws`: `sample(key, num_draws)` when the caller already made it (reusing the diagnostic
        draws, `key` is then `report.diagnostic_sample[0]`): used instead of drawing the same
        draws again; ignored where the summary takes fresh importance draws.
        """
        if labels is None:
            labels = _default_labels(self.model)
        diag = self.report.diagnostics
        weights = None
        if (diag is not None and diag.nonfinite_share == 0 and _diag.KHAT_GOOD <= diag.khat
                < _diag.khat_threshold(diag.num_draws)):
            stored = self.report.diagnostic_sample
            reuse = key is None if reuse_diagnostic_draws is None else bool(reuse_diagnostic_draws)
            if reuse and stored is not None:
                draw_key, ratios = stored
                sampled = (constrained_draws(self.model, self.family, self.params, draw_key, int(len(ratios)))
                           if draws is None else draws)
                smoothed = _diag._psis_core(np.asarray(ratios), True)  # float64 on the host
            else:  # after a re-estimate, never fewer fresh draws than the k-hat that allowed PSIS came from
                fewest = diag.num_draws if self.report.first_diagnostics is not None else 100
                sampled, smoothed = self.importance_draws(jax.random.key(0) if key is None else key,
                                                          max(num_draws, fewest))
            weights = np.exp(np.asarray(smoothed.log_weights, np.float64))
        else:
            sampled = self.sample(jax.random.key(0) if key is None else key, num_draws) if draws is None else draws
        with_deterministics = getattr(self.model, "with_deterministics", None)
        if callable(with_deterministics):  # numpyro.deterministic sites of from_numpyro models
            sampled = with_deterministics(sampled)
        names = list(getattr(self.model, "names", []))
        order = [k for k in names if k in sampled] + [k for k in sampled if k not in names]
        return _quantile_table({k: np.asarray(sampled[k]) for k in order}, labels, weights)

    def diagnostics_lines(self) -> list[str]:
        """The diagnostics part of `summary()`, one string per line."""
        d = self.report.diagnostics
        if d is None:
            return [f"diagnostics: {self.report.diagnostics_note}"]
        s = d.num_draws
        lines = [f"PSIS k-hat = {d.khat:.3f} from {s} draws of q: {self.verdict}"]
        first = self.report.first_diagnostics
        if first is not None:
            lines.append(f"(re-estimated from {s} fresh draws: the first {first.num_draws} read k-hat "
                         f"{first.khat:.3f}, "
                         f"at or over its threshold {_diag.khat_threshold(first.num_draws):.2f}; k-hat says whether "
                         "PSIS is reliable at the size of the sample it came from)")
        lines.append(f"importance-weighted ELBO = {d.iw_elbo:.4f} +/- {d.iw_elbo_se:.2g} (Monte Carlo se); "
                     f"importance ESS = {d.ess:.0f} raw, {d.psis_ess:.0f} Pareto-smoothed, of {s}")
        if d.nonfinite_share > 0:
            lines.append(f"log density NaN or -inf at {100 * d.nonfinite_share:.3g}% of the draws; ELBO over all "
                         f"the draws = {d.elbo:.4g}")
        return lines

    def summary(self, key: Array | None = None, num_draws: int = 4000,
                labels: Mapping[str, Any] | None = None, rows: list[dict] | None = None) -> str:
        """A printable table of the posterior summary, the fit's outcome, its cost and diagnostics.

        `rows` are `summary_rows(key, num_draws, labels)` when already computed (not recomputed)."""
        r = self.report
        rows = self.summary_rows(key, num_draws, labels) if rows is None else rows
        width = max([len("parameter")] + [len(row["parameter"]) for row in rows])
        cols = ["mean", "sd", "5%", "50%", "95%"] + (["psis_mean", "psis_sd"] if rows and "psis_mean" in rows[0]
                                                      else [])
        lines = [f"{'parameter':<{width}} " + " ".join(f"{c:>10}" for c in cols)]
        for row in rows:
            lines.append(f"{row['parameter']:<{width}} " + " ".join(f"{row[c]:>10.4g}" for c in cols))
        if len(cols) > 5:
            lines.append("(psis_mean, psis_sd: Pareto-smoothed importance-weighted estimates; k-hat < "
                         f"{_diag.khat_threshold(r.diagnostics.num_draws):.2f} says they are reliable)")
        from advi_jax.vi import METHODS

        deterministic = getattr(METHODS.get(r.method), "DETERMINISTIC", False)
        tail = np.asarray(r.elbo[-1:] if deterministic else r.elbo[-min(len(r.elbo), 100):])
        bad = int(np.sum(~np.isfinite(tail)))
        if bad:
            elbo_text = f"ELBO: {bad} of the last {len(tail)} steps were not finite (no ELBO is reported)"
        elif deterministic:
            elbo_text = f"ELBO (final objective) = {self.final_elbo:.4f}"
        else:
            elbo_text = f"ELBO (mean of last {len(tail)} steps) = {self.final_elbo:.4f}"
        lines.append("")
        lr = "" if r.learning_rate is None else f" learning_rate={r.learning_rate:g}"
        lr += " (adapted)" if r.adaptation is not None else ""
        est = "" if r.estimator is None else f" estimator={r.estimator} num_samples={r.num_samples}"
        lines.append(f"method={r.method} ({r.method_reason}) family={self.family.name}{est} steps={r.num_steps}"
                     f"{lr} init={r.init_method}")
        lines.append(f"{elbo_text}; {r.stop_reason}; skipped non-finite steps: {r.num_nonfinite}")
        lines.append(f"cost: {r.num_grad_evals} gradient and {r.num_logp_evals} log-density evaluations; "
                     f"{r.seconds:.2f} s (start {r.start_seconds:.2f}, compile {r.compile_seconds:.2f}, "
                     f"run {r.run_seconds:.2f}, diagnostics {r.diagnostics_seconds:.2f})")
        if r.runaway:
            lines.append(f"warning: parameters {list(r.runaway)} (flat index in R^K) ran away while the ELBO kept "
                         "rising: the posterior may be improper (e.g. separable data with a flat prior)")
        lines.extend(self.diagnostics_lines())
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"Result(method={self.report.method}, family={self.family.name}, dim={self.model.dim}, "
                f"num_steps={self.report.num_steps}, converged={self.report.converged}, khat={self.khat:.3g}, "
                f"stop_reason={self.report.stop_reason!r})")


from advi_jax.result_many import ManyResult  # noqa: E402  (re-exported; it builds Results)
