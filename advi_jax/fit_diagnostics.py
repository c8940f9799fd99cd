"""The PSIS diagnostics of a fit's q: how many draws (`diagnostic_draw_budget`, and the larger
sample that re-estimates a k-hat over its threshold, `confirmation_draws`), the draws' k-hat, ESS,
importance-weighted ELBO and PSIS moment check (`diagnose`, `diagnose_confirmed`;
`advi_jax.psis_moments`), and the verdict in words (`verdict`).

`advi_jax.result` re-exports every public name here (the `Result` and its summary use them);
`advi_jax.diagnostics` holds the PSIS arithmetic itself.

Non-finite draws: `diagnose` draws S times from q and evaluates the log density at every draw. A
draw where it is NaN or -inf is q's mass outside the posterior's support (or where the model is
broken); it is never dropped. Its share is `Diagnostics.nonfinite_share`; the plain ELBO over the
draws is then -inf or NaN (`Diagnostics.elbo`); a share of at least `NONFINITE_UNRELIABLE` (1 in
1,000 draws) makes k-hat +inf and the verdict "unreliable", a smaller non-zero share caps the
verdict at "ok"; the fit warns in both cases.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from advi_jax import diagnostics as _diag
from advi_jax.importance import (blocked, blocked_log_ratios, centred_log_ratios, constrained_labels, fold_in_key,
                                 sampling_key)
from advi_jax.psis_moments import (Readings, constrained_discrepancy, discrepancy_from_sums, has_spread, moment_check,
                                   moment_check_both, moment_discrepancy, power_sums, squared_tail_khat, top_squared)
from advi_jax._types import Array, PyTree
from advi_jax.base import Family

__all__ = ["Diagnostics", "NONFINITE_UNRELIABLE", "DIAGNOSTIC_DRAWS_MIN", "DIAGNOSTIC_DRAWS_MAX",
           "CONFIRM_FACTOR", "CONFIRM_DRAWS_MAX", "data_size", "diagnostic_draw_budget", "confirmation_draws",
           "known_diagnostic_draws", "constrained_draws", "diagnose", "diagnose_with_ratios", "diagnose_confirmed",
           "diagnose_and_widen", "widen_reported", "widen_if_grey",
           "diagnose_ratios", "over_threshold", "warns_by_khat", "verdict", "widen_many"]

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
      moments: the PSIS moment check of the same draws (`advi_jax.psis_moments.Moments`: per
        coordinate, q's mean and sd against their Pareto-smoothed importance-weighted estimates, in
        the unconstrained space and in the constrained one, `Moments.space` saying where the worst
        flagged one is; for B fits, a tuple of B of them), or None where it was not computed (log
        ratios given without their draws: `diagnose_ratios`).
    """

    khat: Any
    iw_elbo: Any
    iw_elbo_se: Any
    elbo: Any
    ess: Any
    psis_ess: Any
    nonfinite_share: Any
    num_draws: int
    moments: Any = None

    def moments_flagged(self) -> bool:
        """Whether the PSIS moment check flagged a coordinate (`advi_jax.psis_moments.moment_check`)."""
        return self.moments is not None and self.moments.any_flagged


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
def _constrained_block(model: Any, family: Family, params: PyTree, key: Array, num_draws: int) -> dict[str, Array]:
    return jax.vmap(model.to_constrained)(family.sample(params, sampling_key(key), num_draws))


def constrained_draws(model: Any, family: Family, params: PyTree, key: Array, num_draws: int) -> dict[str, Array]:
    """`num_draws` draws of q mapped to the constrained space, one compiled call a block of
    `importance.DRAW_BLOCK` draws (`importance.draw_blocks`: the draws `draws_and_log_ratios` makes
    from the same key; op by op, the bijectors cost a dispatch per operation and a compilation each
    on first use)."""
    return blocked(lambda k, n: _constrained_block(model, family, params, k, n), key, num_draws)


@jax.jit
def _constrain(model: Any, zeta: Array) -> dict[str, Array]:
    return jax.vmap(model.to_constrained)(zeta)


def _core(ratios: Array, shift=0.0, xp=jnp, smoothed=None) -> tuple:
    """The diagnostics of log ratios `shift + ratios` (k-hat, ESS and the share read `ratios` alone);
    `smoothed`: their PSIS (`_psis_core(ratios, True, xp)`) where the caller has it already."""
    d = _diag._diagnostics_core(ratios, xp, smoothed)
    share = xp.mean(~xp.isfinite(ratios) & ~xp.isposinf(ratios))
    # q's mass where log p is NaN or -inf counts against the fit: k-hat over the other draws alone
    # would describe a different q, so it is +inf once that mass reaches NONFINITE_UNRELIABLE.
    khat = xp.where(share >= NONFINITE_UNRELIABLE, xp.inf, d.khat)
    return khat, d.iw_elbo + shift, d.iw_elbo_se, d.elbo + shift, d.ess, d.psis_ess, share


@functools.partial(jax.jit, static_argnames=("family", "num_draws", "batched"))
def _diagnose(model, family: Family, params, keys, num_draws: int, batched: bool):
    """Per fit: `_core`'s values and the PSIS moment check's power sums of the same draws
    (`advi_jax.psis_moments.power_sums`: (5, 3, K), so the (B, S, K) draws never leave the device), and
    of their constrained values ((5, 3, Kc) for the sites a bijector changes, with which of those are
    all finite, and their largest squared deviations: `moment_check_both`)."""
    def one(m, p, k):
        zeta, centred, shift, cons = centred_log_ratios(m, family, p, k, num_draws, constrained=True)
        smoothed = _diag._psis_core(centred, True, jnp)  # once, for both
        log_w = smoothed.log_weights
        w = jnp.exp(jnp.where(jnp.isnan(log_w), -jnp.inf, log_w))
        w = w / jnp.sum(w)
        finite = jnp.all(jnp.isfinite(cons), axis=0)
        cons = jnp.where(finite, cons, 0.0)
        finite = finite & has_spread(cons, xp=jnp)  # constant coordinates (L[0, 0] of a correlation factor)
        top = top_squared(cons, min(_diag.tail_length(num_draws) + 1, num_draws), jnp)  # (Kc, M + 1): the tails' k-hat
        return (_core(centred, shift, jnp, smoothed), power_sums(zeta, w, jnp), power_sums(cons, w, jnp),
                finite, top)

    return jax.vmap(one, in_axes=(0 if batched else None, 0, 0))(model, params, keys)


def _labeller(model: Any, dim: int):
    """Names of constrained coordinates by flat index (`importance.constrained_labels`, made on demand)."""
    def labels(indices):
        names = constrained_labels(model, dim)  # built once per call, only when something is flagged
        return [names[int(i)] for i in indices]

    return labels


def _many_moments(sums, sums_c, tested, tops, num_draws: int, model: Any = None, dim: int = 0) -> tuple:
    """One `Moments` per fit from the (B, 5, 3, K) and (B, 5, 3, Kc) power sums of `_diagnose`, which
    constrained coordinates count and their (B, Kc, M + 1) largest squared deviations (float64 on
    the host)."""
    sums, sums_c, tops = (np.asarray(jax.device_get(x), np.float64) for x in (sums, sums_c, tops))
    tested = np.asarray(jax.device_get(tested), bool)
    labels = None if model is None else _labeller(model, dim)
    out = []
    for s, c, t, top in zip(sums, sums_c, tested, tops):
        disc, disc_c = discrepancy_from_sums(s, num_draws), discrepancy_from_sums(c, num_draws)
        out.append(moment_check_both(disc, num_draws, disc_c, t, labels=labels,
                                     tail_khat=lambda idx, top=top: squared_tail_khat(top[idx]))._replace(
            readings=Readings(disc, disc_c, t)))  # kept for the widened check (`widen_many`)
    return tuple(out)


def _to_diagnostics(values, num_draws: int, moments: Any = None) -> Diagnostics:
    values = jax.device_get(values)
    convert = (lambda v: float(v)) if np.ndim(values[0]) == 0 else np.asarray
    return Diagnostics(*(convert(v) for v in values), num_draws, moments)


def diagnose_with_ratios(model: Any, family: Family, params: PyTree, key: Array,
                         num_draws: int = 4096) -> tuple[Diagnostics, np.ndarray]:
    """`diagnose` of one fit, also returning the (S,) log ratios (NumPy float64) of its draws.

    The draws and their centred log ratios are one compiled call (`draws_and_log_ratios`, cached
    per model structure, family and S: a second fit of the same shape compiles nothing; a sample of
    more than `importance.DRAW_BLOCK` draws is made in blocks by the block's program, `blocked_log_ratios`); PSIS runs
    on the host in NumPy float64 (`advi_jax.diagnostics`), which compiles nothing either, and so
    does the PSIS moment check of the same draws, in the unconstrained space and in the constrained
    one (the same program returns the draws' constrained values; `advi_jax.psis_moments.moment_check_both`,
    O(S K)).
    """
    zeta, centred, shift, cons = jax.device_get(blocked_log_ratios(model, family, params, key, num_draws))
    centred, shift = np.asarray(centred, np.float64), float(shift)
    with np.errstate(all="ignore"):
        smoothed = _diag._psis_core(centred, True, np)  # once, for k-hat and for the moment check
    values = _diag._on_host_when_concrete(lambda xp, r: _core(r, shift, xp, smoothed), centred)
    moments = _moments_both(model, zeta, cons, smoothed.log_weights)
    return _to_diagnostics(values, num_draws, moments), centred + shift


def _moments_both(model: Any, zeta, cons, log_weights):
    """The moment check of (S, K) draws `zeta` and their (S, Kc) constrained values `cons`
    (`importance.constrained_flat`), on the host."""
    zeta, cons = np.asarray(zeta), np.asarray(cons)
    with np.errstate(all="ignore"):
        disc = moment_discrepancy(zeta, log_weights)
        disc_c, tested = constrained_discrepancy(cons, log_weights)
    num = zeta.shape[0]
    tail = min(_diag.tail_length(num) + 1, num)
    return moment_check_both(disc, num, disc_c, tested, labels=_labeller(model, zeta.shape[1]),
                             tail_khat=lambda idx: squared_tail_khat(top_squared(cons[:, idx], tail)))._replace(
        readings=Readings(disc, disc_c, tested))


def diagnose(model: Any, family: Family, params: PyTree, key: Array, num_draws: int = 4096, *,
             num_fits: int | None = None, batched: bool = False,
             return_ratios: bool = False) -> Diagnostics | tuple[Diagnostics, np.ndarray]:
    """PSIS k-hat, IW-ELBO, ESS and the non-finite share from `num_draws` fresh draws of q.

    One fit: one compiled call for the draws and log ratios, PSIS on the host
    (`diagnose_with_ratios`; with `return_ratios`, also the (S,) log ratios). With
    `num_fits=B`, `params` leaves and `key` carry a leading B axis and the model's data too
    when `batched`; every field is then a (B,) array, all in one compiled call, and `moments` a
    tuple of B moment checks (finished on the host from per-fit sums made in that call).
    """
    if num_fits is None:
        both = diagnose_with_ratios(model, family, params, key, num_draws)
        return both if return_ratios else both[0]
    values, sums, sums_c, tested, tops = _diagnose(model, family, params, key, num_draws, bool(batched))
    return _to_diagnostics(values, num_draws, _many_moments(sums, sums_c, tested, tops, num_draws, model,
                                                            int(sums.shape[-1])))


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
    return fold_in_key(key, 1)


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


def diagnose_and_widen(model: Any, family: Family, params: PyTree, key: Array, num_draws: int,
                       confirm_draws: int = 0) -> tuple[Diagnostics, tuple, Diagnostics | None]:
    """A single fit's diagnostics (`aj.fit`): `diagnose_confirmed`, then the widened moment check where
    the reported sample would be silent but reads grey (`widen_if_grey`; its key the reported
    sample's, its draws per component the first sample's size)."""
    return widen_reported(model, family, params, num_draws,
                          diagnose_confirmed(model, family, params, key, num_draws, confirm_draws))


def widen_reported(model: Any, family: Family, params: PyTree, num_draws: int, confirmed: tuple) -> tuple:
    """`diagnose_confirmed`'s result with `widen_if_grey` applied to its reported diagnostics."""
    diag, sample, first = confirmed
    return widen_if_grey(model, family, params, sample[0], diag, num_draws), sample, first


GREY_KHAT = 0.5
"""The widened moment check runs where the reported k-hat is at least this (and under its threshold)..."""

GREY_SCORE = 0.05
"""...or where some coordinate's plain reading (a mean shift in q's sds, or an sd excess in log) is at
least this, and nothing warns yet (`widen_if_grey`)."""


def warns_by_khat(diag: Diagnostics) -> bool:
    """Whether a fit with these diagnostics warns by k-hat (`run.single.warn_diagnostics`): q has mass
    where log p is not finite, or k-hat is not under its threshold and the weights are not nearly
    constant (`diagnostics.near_constant`)."""
    khat = float(diag.khat)
    return diag.nonfinite_share > 0 or not (khat < _diag.khat_threshold(diag.num_draws)
                                            or _diag.near_constant(khat, diag.ess, diag.num_draws))


def widen_if_grey(model: Any, family: Family, params: PyTree, key: Array, diag: Diagnostics,
                  num_draws: int) -> Diagnostics:
    """The widened moment check (`advi_jax.widened_moments`) where the fit would be silent but its
    reading is grey: k-hat at least `GREY_KHAT`, or a coordinate's plain reading at least
    `GREY_SCORE`. It draws `num_draws` (the diagnostics' first sample's size) from each widened
    component through the diagnostics' own compiled program, so nothing new compiles. Where it flags,
    its reading replaces the plain check's (`Moments.source` "widened"); where not, the plain reading
    stays, with the widened draws recorded (`Moments.widened_draws`, counted in `num_logp_evals`).
    Elsewhere nothing runs."""
    from advi_jax import widened_moments as wm

    m = diag.moments
    if m is None or m.readings is None or warns_by_khat(diag) or diag.moments_flagged():  # it warns already
        return diag
    disc, disc_c, tested = m.readings.unconstrained, m.readings.constrained, m.readings.tested
    k = int(np.shape(disc[0])[0])
    if k == 0:
        return diag
    dep = wm.dependence(model, k)
    score = wm.scores(disc, disc_c, tested, dep)
    if not (float(diag.khat) >= GREY_KHAT or float(np.max(score)) >= GREY_SCORE):
        return diag
    wide = wm.widened_check(model, family, params, key, score, num_draws=int(num_draws), dep=dep)
    if wide is None:  # a family with no widened form
        return diag
    if wide.any_flagged:
        return diag._replace(moments=wide)
    return diag._replace(moments=m._replace(widened_draws=wide.widened_draws, mixture_khat=wide.mixture_khat,
                                            directions=wide.directions))


def diagnose_ratios(ratios: Array, zeta: Array | None = None, constrained: Array | None = None,
                    model: Any = None) -> Diagnostics:
    """`Diagnostics` from precomputed (S,) log ratios (e.g. the full-data ones of a minibatch fit);
    with the (S, K) draws `zeta` they came from, also the PSIS moment check of those draws, and with
    their (S, Kc) constrained values (`importance.constrained_flat` of `model`) in both spaces."""
    values = _diag._on_host_when_concrete(lambda xp, r: _core(r, 0.0, xp), ratios)
    moments = None
    if zeta is not None:
        ratios = np.asarray(jax.device_get(ratios), np.float64)
        log_w = _diag._psis_core(ratios, True, np).log_weights
        zeta = np.asarray(jax.device_get(zeta))
        moments = (moment_check(zeta, log_w) if constrained is None
                   else _moments_both(model, zeta, jax.device_get(constrained), log_w))
    return _to_diagnostics(values, int(ratios.shape[0]), moments)


_ADVICE = "try family='fullrank', a reparameterisation, or MCMC"


def verdict(diagnostics: Diagnostics | None, missing: str = "not computed", family: str | None = None) -> str:
    """The verdict in plain words: k-hat's reading, downgraded to "poor" where the PSIS moment check
    flagged a coordinate (`Diagnostics.moments`) and by q's mass where log p is not finite.

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
    if diagnostics.moments_flagged() and (text.startswith("good") or text.startswith("ok")):
        # k-hat reads the ratios' tail shape only; a Gaussian q with an sd 30% too narrow reads about 0.4
        # (`advi_jax.psis_moments`). The PSIS-weighted moments of the same draws say how far q is off.
        advice = ("use PSIS-corrected ones (result.psis_expectation) or MCMC" if diagnostics.moments.source != "widened"
                  else "PSIS-corrected ones from q's own draws see only part of it (q has too few draws in the "
                       "tail it misses): use MCMC")
        text = (f"poor: {diagnostics.moments.describe()}, beyond the moment check's tolerance and its Monte "
                f"Carlo error (k-hat {float(diagnostics.khat):.2f} reads only the ratios' tail shape); q's own "
                f"estimates there are off: {advice}")
    share = diagnostics.nonfinite_share
    if share > 0:
        where = (f"q puts {100 * share:.3g}% of its mass where the log density is NaN or -inf "
                 "(outside the model's support or where it breaks)")
        if share >= NONFINITE_UNRELIABLE or text.startswith("unreliable"):
            return f"unreliable: {where}; the fit and its ELBO cannot be trusted"
        if text.startswith("good"):
            return f"ok at best: {where}"
    return text


def widen_many(model: Any, family: Family, params: PyTree, keys: Array, diag: Diagnostics, num_draws: int,
               batched: bool = False) -> tuple[Diagnostics, np.ndarray]:
    """`widen_if_grey` for each of the B fits of `diagnose(..., num_fits=B)` (`aj.fit_many`): the same rule
    and the same check as a single fit's, fit i with its own parameters, its own directions (from its own
    plain reading) and its diagnostics key `keys[i]`.

    A fit that warns already (`warns_by_khat`, or its moment check flagged) is passed over without a
    look at its parameters; the others go to `widen_if_grey`, which draws only where the reading is
    grey. The draws come from the single-fit diagnostics' program (`importance.draws_and_log_ratios`,
    compiled once per model structure, family and S, the one `Result.importance_draws` and `aj.fit`
    use: the batched program returns only per-fit power sums, not the draws the mixture weights need);
    B fits that need it cost B x J calls of it, J x `num_draws` log-density evaluations each.

    Args:
      model: the model (its data with a leading axis B when `batched`).
      family, params: q's family and the B fits' parameters (leading axis B).
      keys: the (B,) diagnostics keys `diag` came from.
      diag: `diagnose(..., num_fits=B)`'s diagnostics ((B,) fields, a tuple of B `Moments`).
      num_draws: the diagnostics' draws per fit (each widened component takes as many).

    Returns:
      (diagnostics with the widened fits' `Moments` in place, (B,) widened draws per fit: the
      log-density evaluations to add to each fit's `num_logp_evals`).
    """
    num_fits = len(diag.moments) if diag.moments is not None else 0
    extra = np.zeros(num_fits, np.int64)
    if not num_fits:
        return diag, extra
    values = [np.asarray(v) for v in diag[:Diagnostics._fields.index("num_draws")]]
    moments = list(diag.moments)
    host_params = host_model = None
    for i, m in enumerate(moments):
        one = Diagnostics(*(float(v[i]) for v in values), diag.num_draws, m)
        if m is None or warns_by_khat(one) or one.moments_flagged():  # it warns already
            continue
        if host_params is None:  # fetched once, sliced on the host (no program per fit)
            host_params = jax.device_get(params)
            host_model = jax.device_get(model) if batched else model
        params_i = jax.tree_util.tree_map(lambda x: x[i], host_params)
        model_i = jax.tree_util.tree_map(lambda x: x[i], host_model) if batched else model
        wide = widen_if_grey(model_i, family, params_i, keys[i], one, num_draws).moments
        moments[i] = wide
        extra[i] = int(getattr(wide, "widened_draws", 0))
    return diag._replace(moments=tuple(moments)), extra
