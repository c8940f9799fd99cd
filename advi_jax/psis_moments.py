"""The PSIS moment check: q's own mean and sd of each coordinate against their Pareto-smoothed
importance-weighted estimates from the same draws, each difference against its Monte Carlo error.

Why k-hat alone is not enough. k-hat reads the shape of the importance ratios' upper tail. For a
Gaussian q whose sd is a factor r too small in one direction of a Gaussian posterior, the ratio
p / q grows like exp(z^2 (1 - 1/r^2) / 2) in q's units and k = 1 - 1/r^2: the threshold k = 0.7
is only reached at r = 1.83, an sd 83% too narrow; an sd 30% too narrow reads k = 0.41, "good".
Where k-hat is below its threshold, PSIS's weighted estimates are reliable (Vehtari et al., JMLR
2024), so they can say what k-hat cannot: how far q's mean and sd are from the posterior's. This
module computes, per coordinate j of the unconstrained space (where q is Gaussian),

    d_mean_j = (sum_s w_s z_sj - mean_s z_sj) / sd_s z_sj,     (in q's sds)
    d_logsd_j = log(weighted sd_j / sd_s z_sj),

with w the normalised smoothed weights of the same S draws (so the draws' own sampling noise
cancels: with constant weights both are exactly 0), and the standard error of each from the
linearisation (influence function) of the self-normalised estimators: the difference is
sum_s psi_s with psi_s = w_s a_s - b_s / S (a, b the weighted and plain estimators' influence
terms), whose variance is estimated by sum_s psi_s^2.

`moment_check` turns these into one reading (`Moments`): the coordinates whose discrepancy is both
larger than a tolerance and significant against its own standard error (`moment_z(K)` standard
errors beyond zero, a bound that grows with the number of coordinates tested, Bonferroni).

The fit's diagnostics (`moment_check_both`) read the same draws in the constrained space too, as
`Result.sample` gives them (the diagnostics' compiled program returns them beside the log ratios:
`importance.centred_log_ratios(..., constrained=True)`): a positive or bounded parameter's sd can be
20-25% off there while its unconstrained reading stays under the tolerance (garch11's arch_share,
gp_marginal's alpha). The same tolerances apply there; coordinates an identity bijector leaves
unchanged are read once; the Bonferroni bound counts the tests of both spaces; and a constrained
coordinate whose squared deviations have a heavy tail (Pareto k-hat over PSIS's threshold,
`squared_tail_khat`: a log-normal with log sd over about 1) is not flagged, because there the
linearised standard errors are too small.

Where the ratios' tail is heavy (k-hat 0.5-0.9) PSIS's estimates are pulled towards q's own and the
check reads 40-90% of the true discrepancy (measured against NUTS on the posteriors of
`benchmarks.suite` and `benchmarks.holdout`: benchmarks/PERFORMANCE.md, issue 15, helper `khat`); the
tolerances are set for that.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

__all__ = ["Moments", "Readings", "MOMENT_MEAN_TOL", "MOMENT_LOG_SD_TOL", "MOMENT_ALPHA", "moment_discrepancy",
           "moment_z", "moment_check", "moment_check_of", "moment_check_both", "constrained_discrepancy", "has_spread",
           "squared_tail_khat", "top_squared",
           "power_sums", "discrepancy_from_sums"]

MOMENT_MEAN_TOL = 0.15
"""A coordinate's PSIS-estimated mean shift, in q's sds, at or above which q is called wrong there."""

MOMENT_LOG_SD_TOL = 0.15
"""A coordinate's |log(PSIS sd / q's sd)| at or above which q is called wrong there (an sd about 16%
off). Over 111 default fits of 37 posteriors with NUTS references, with k-hat's warning it warned in
99% of the draw sets of the fits with a mean 0.3 sd or an sd 30% or more off, and added no warning to
a fit whose means and sds were all within 0.15 sd and 20% (0.10 added false alarms on sds 9-11% off;
0.20 missed more): benchmarks/PERFORMANCE.md."""

MOMENT_ALPHA = 0.01
"""The chance that a q with no discrepancy at all reads significant on some coordinate: each of the
2K tests (mean and sd of K coordinates) is at level MOMENT_ALPHA / (2K) (Bonferroni)."""


class Readings:
    """The plain check's per-coordinate readings, kept for the widened check to choose its
    coordinates by (`advi_jax.widened_moments`): `unconstrained` and `constrained` are (d_mean, se,
    d_logsd, se) arrays, `tested` which constrained columns count. Compared by value, so that
    `Moments` (and `Diagnostics`) still compare with ==."""

    __slots__ = ("unconstrained", "constrained", "tested")
    __hash__ = None

    def __init__(self, unconstrained: tuple, constrained: tuple, tested: np.ndarray):
        self.unconstrained, self.constrained, self.tested = unconstrained, constrained, tested

    def _flat(self) -> list:
        return [*self.unconstrained, *self.constrained, self.tested]

    def __eq__(self, other) -> bool:
        if not isinstance(other, Readings):
            return NotImplemented
        return all(np.array_equal(a, b, equal_nan=np.asarray(a).dtype.kind == "f")
                   for a, b in zip(self._flat(), other._flat()))

    def __repr__(self) -> str:
        return f"Readings(K={np.shape(self.unconstrained[0])[0]}, Kc={np.shape(self.tested)[0]})"


class Moments(NamedTuple):
    """The PSIS moment check of q from S draws (`moment_check`, `moment_check_both`).

    Attributes:
      flagged: flat indices (in R^K, unconstrained) of the coordinates whose mean or sd differs from
        the PSIS estimate by at least the tolerance and significantly (`moment_check`).
      worst_index: the flagged coordinate with the largest discrepancy (or the largest overall, when
        none is flagged), a flat index in the space `space` says; -1 when K = 0.
      worst_mean, worst_mean_se: its d_mean (q's sds) and standard error.
      worst_log_sd, worst_log_sd_se: its log(PSIS sd / q's sd) and standard error.
      z: the significance bound used (standard errors).
      num_draws: S.
      space: "unconstrained" (R^K, where q is Gaussian) or "constrained" (the parameters as
        `Result.sample` gives them): where the worst coordinate is.
      name: the worst coordinate's name when it is a constrained one ("sigma", "beta[3]"), else "".
      flagged_constrained: the names of the flagged coordinates of the constrained space (those
        that are not the unconstrained ones unchanged: `moment_check_both`).
      source: "psis" (q's own draws, reweighted) or "widened" (fresh draws of a proposal wider than
        q in a few coordinates: `advi_jax.widened_moments`; there the standard of comparison is
        the widened importance estimate, and the flat indices are still R^K's).
      widened_draws: the draws (log-density evaluations) the widened check took; 0 where it did
        not run. Counted in the fit's `num_logp_evals`.
      mixture_khat: the k-hat of p / mix of the widened draws (NaN where it did not run).
      directions: the coordinates of R^K the widened check widened.
      readings: the plain check's per-coordinate readings (`Readings`: what the widened check chooses
        its coordinates by), or None.
    """

    flagged: tuple
    worst_index: int
    worst_mean: float
    worst_mean_se: float
    worst_log_sd: float
    worst_log_sd_se: float
    z: float
    num_draws: int
    space: str = "unconstrained"
    name: str = ""
    flagged_constrained: tuple = ()
    source: str = "psis"
    widened_draws: int = 0
    mixture_khat: float = float("nan")
    directions: tuple = ()
    readings: Any = None

    @property
    def any_flagged(self) -> bool:
        """Whether some coordinate of either space is flagged."""
        return bool(self.flagged) or bool(self.flagged_constrained)

    def describe(self) -> str:
        """One phrase for the verdict and the warning."""
        where = (f"{self.name} (constrained, as result.sample() gives it)" if self.space == "constrained"
                 else f"coordinate {self.worst_index} (flat index in R^K)")
        if self.source == "widened":
            return (f"moment check by importance sampling from a proposal wider than q in {len(self.directions)} "
                    f"coordinates ({self.num_draws} more draws): at {where}, q's sd is "
                    f"x{math.exp(-self.worst_log_sd):.2f} of the widened importance estimate (log "
                    f"{-self.worst_log_sd:+.2f} +/- {self.worst_log_sd_se:.2f}) and q's mean "
                    f"{-self.worst_mean:+.2f} +/- {self.worst_mean_se:.2f} of q's sds from it")
        return (f"PSIS moment check from {self.num_draws} draws: {where} has "
                f"PSIS-weighted mean {self.worst_mean:+.2f} +/- {self.worst_mean_se:.2f} sd of q's own and "
                f"sd x{math.exp(self.worst_log_sd):.2f} (log {self.worst_log_sd:+.2f} +/- {self.worst_log_sd_se:.2f}) "
                "of q's own")


CHUNK_ENTRIES = 2 ** 21
"""Draws x coordinates handled at once by `moment_discrepancy` (16 MiB of float64 per array), so
that a model with many coordinates does not hold several (S, K) float64 copies."""


def moment_discrepancy(zeta: np.ndarray, log_weights: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per coordinate: (d_mean, se, d_logsd, se) of (S, K) draws `zeta` under normalised log weights.

    All arithmetic in float64 on the host, `CHUNK_ENTRIES` at a time. Coordinates with zero spread
    over the draws read 0 +/- 0.
    """
    zeta = np.asarray(zeta)
    num, k = zeta.shape
    w = np.exp(np.asarray(log_weights, np.float64))
    w = w / np.sum(w)
    step = max(1, CHUNK_ENTRIES // max(num, 1))
    parts = [discrepancy_from_sums(power_sums(np.asarray(zeta[:, i:i + step], np.float64), w), num)
             for i in range(0, k, step)]
    if not parts:
        return tuple(np.zeros(0) for _ in range(4))
    return tuple(np.concatenate(p) for p in zip(*parts))


def power_sums(z, w, xp=np):
    """The sums `discrepancy_from_sums` needs, of (S, k) draws `z` under normalised weights `w` (S,).

    With y = z - (plain mean of z): the (4, 3, k) sums of y^p (p = 1..4) weighted by 1, w and w^2,
    and (as a fifth row's first entry, broadcast over k) sum w^2; y in units of its plain sd. Four
    (3, S) x (S, k) products instead of a dozen (S, k) temporaries. `xp` is NumPy (the host, float64) or jax.numpy (a
    batched fit's diagnostics compute these on the device, per fit, and bring back only (5, 3, k)).
    """
    y = z - xp.mean(z, axis=0, keepdims=True)
    # in units of the plain sd (`discrepancy_from_sums` is scale-free): keeps y^4 in range in float32
    # for constrained draws on a large scale
    scale = xp.sqrt(xp.mean(y * y, axis=0, keepdims=True))
    y = y / xp.where(scale > 0, scale, 1.0)
    weights = xp.stack([xp.ones_like(w), w, w * w])  # rows: 1, w, w^2
    y2 = y * y
    w2 = xp.broadcast_to(xp.sum(w * w).reshape(1, 1), (3, y.shape[1]))
    return xp.stack([weights @ y, weights @ y2, weights @ (y2 * y), weights @ (y2 * y2), w2])


def discrepancy_from_sums(sums, num: int) -> tuple[np.ndarray, ...]:
    """(d_mean, se, d_logsd, se) per coordinate from `power_sums` of S = `num` draws, in float64.

    With m = sum w y (the weighted mean's offset), a = y - m, plain variance s2 = mean y^2 and
    weighted variance v = sum w a^2, the two linearised differences are sum_i (w_i a_i - y_i / S) / sd
    and sum_i (w_i (a_i^2 / v - 1) - (y_i^2 / s2 - 1) / S) / 2; their sums of squares expand into
    the power sums.
    """
    p1, p2, p3, p4, w2 = np.asarray(sums, np.float64)
    w1, w2 = 1.0, w2[0]  # sum w = 1
    u = 1.0 / num
    s2 = p2[0] * u
    m = p1[1]
    v = p2[1] - m * m
    ok = (s2 > 0) & (v > 0)
    s2, v = np.where(ok, s2, 1.0), np.where(ok, v, 1.0)
    # mean: sum (w a - u y)^2 = sum w^2 a^2 - 2 u sum w a y + u^2 sum y^2
    w2a2 = p2[2] - 2 * m * p1[2] + m * m * w2
    way = p2[1] - m * p1[1]
    var_mean = w2a2 - 2 * u * way + u * u * p2[0]
    # sd: sum (w A - u B)^2 / 4 with A = a^2 / v - 1, B = y^2 / s2 - 1
    w2a4 = p4[2] - 4 * m * p3[2] + 6 * m * m * p2[2] - 4 * m ** 3 * p1[2] + m ** 4 * w2
    w2_aa = w2a4 / (v * v) - 2 * w2a2 / v + w2
    wa2y2 = p4[1] - 2 * m * p3[1] + m * m * p2[1]
    w_ab = wa2y2 / (v * s2) - 1.0 - p2[1] / s2 + w1  # sum w a^2 = v
    bb = p4[0] / (s2 * s2) - num
    var_logsd = 0.25 * (w2_aa - 2 * u * w_ab + u * u * bb)
    d_mean = np.where(ok, m / np.sqrt(s2), 0.0)
    se_mean = np.where(ok, np.sqrt(np.maximum(var_mean, 0.0) / s2), 0.0)
    d_logsd = np.where(ok, 0.5 * np.log(v / s2), 0.0)
    se_logsd = np.where(ok, np.sqrt(np.maximum(var_logsd, 0.0)), 0.0)
    return d_mean, se_mean, d_logsd, se_logsd


def moment_z(num_coordinates: int, alpha: float = MOMENT_ALPHA) -> float:
    """The two-sided normal bound for 2K tests at family-wise level alpha (Bonferroni)."""
    from statistics import NormalDist

    return float(NormalDist().inv_cdf(1.0 - alpha / (4.0 * max(int(num_coordinates), 1))))


def moment_check(zeta: np.ndarray, log_weights: np.ndarray, mean_tol: float = MOMENT_MEAN_TOL,
                 log_sd_tol: float = MOMENT_LOG_SD_TOL, alpha: float = MOMENT_ALPHA) -> Moments:
    """The moment check of q from its (S, K) draws `zeta` and their normalised PSIS log weights.

    A coordinate is flagged when its mean shift is at least `mean_tol` sds of q, or its log sd
    ratio at least `log_sd_tol` in size, AND that discrepancy is more than `moment_z(K, alpha)` of its
    standard errors from zero (so Monte Carlo noise on an accurate q flags some coordinate with
    chance about alpha at most, whatever K).
    """
    return moment_check_of(moment_discrepancy(zeta, log_weights), int(np.shape(zeta)[0]), mean_tol, log_sd_tol, alpha)


def moment_check_of(discrepancy: tuple, num_draws: int, mean_tol: float = MOMENT_MEAN_TOL,
                    log_sd_tol: float = MOMENT_LOG_SD_TOL, alpha: float = MOMENT_ALPHA) -> Moments:
    """`moment_check` from the per-coordinate (d_mean, se, d_logsd, se) of `num_draws` draws
    (`moment_discrepancy`, or `discrepancy_from_sums` of sums made on the device)."""
    return moment_check_both(discrepancy, num_draws, None, None, mean_tol, log_sd_tol, alpha)


def _hits(discrepancy, z: float, mean_tol: float, log_sd_tol: float):
    d_mean, se_mean, d_logsd, se_logsd = discrepancy
    mean_hit = (np.abs(d_mean) >= mean_tol) & (np.abs(d_mean) > z * se_mean)
    sd_hit = (np.abs(d_logsd) >= log_sd_tol) & (np.abs(d_logsd) > z * se_logsd)
    return mean_hit | sd_hit, np.maximum(np.abs(d_mean) / mean_tol, np.abs(d_logsd) / log_sd_tol)


def squared_tail_khat(top: np.ndarray) -> np.ndarray:
    """Pareto k-hat of the upper tail of a coordinate's squared deviations y^2 from its `tail + 1`
    largest values (`top`, (..., M + 1), any order; M = `diagnostics.tail_length(S)`): the GPD fit
    PSIS makes to the ratios' tail, here to y^2's (their exceedances over the (M + 1)-th largest, in
    units of the largest). Over 0.5 the fourth moment of y reads as infinite at this S, over 0.7
    PSIS itself would not trust such a tail (`moment_check_both`)."""
    from advi_jax import diagnostics as _diag

    top = np.sort(np.asarray(top, np.float64), axis=-1)
    if top.shape[-1] - 1 < _diag._MIN_TAIL:  # too few draws for a tail fit, as PSIS's own
        return np.full(top.shape[:-1], np.inf)
    out = np.empty(top.shape[:-1])
    for index in np.ndindex(*out.shape):
        v = top[index]
        if not (v[-1] > 0):
            out[index] = -np.inf
            continue
        out[index] = float(_diag._gpd_fit_core((v[1:] - v[0]) / v[-1], 10.0, np)[0])
    return out


def top_squared(y: np.ndarray, num: int, xp=np):
    """The `num` largest squared deviations from the mean of each column of (S, k) draws `y`, (k, num)
    (`squared_tail_khat`'s input; `xp` NumPy or jax.numpy, as `power_sums`)."""
    d = y - xp.mean(y, axis=0, keepdims=True)
    d2 = (d * d).T
    num = min(int(num), int(d2.shape[1]))
    if xp is np:
        return np.partition(d2, d2.shape[1] - num, axis=1)[:, d2.shape[1] - num:]
    import jax

    return jax.lax.top_k(d2, num)[0]


def moment_check_both(discrepancy: tuple, num_draws: int, constrained: tuple | None = None,
                      tested: np.ndarray | None = None, mean_tol: float = MOMENT_MEAN_TOL,
                      log_sd_tol: float = MOMENT_LOG_SD_TOL, alpha: float = MOMENT_ALPHA,
                      labels=None, tail_khat=None) -> Moments:
    """The moment check of the unconstrained coordinates' `discrepancy` and, where given, of the same
    draws' constrained coordinates (`constrained`: their (d_mean, se, d_logsd, se)).

    The user reads q in the constrained space (`Result.sample`): a positive parameter's sd can be 20%
    off there while its log's reads under the tolerance. `tested` (Kc,) says which constrained
    coordinates count: not those equal to their unconstrained coordinate (an identity bijector, read
    once), nor those with a non-finite draw or no spread. The significance bound is Bonferroni over
    all the tests of both spaces (`moment_z(K + tested)`), so noise alone on an accurate q still flags
    with chance about `alpha` at most. `labels(indices)` names constrained coordinates (called only
    for flagged ones).

    Constrained draws can be heavy-tailed (exp of a Gaussian: log-normal), and there the linearised
    standard errors, which read the draws' fourth moments, are too small (x = exp(z), z ~ N(0, 2^2)
    under both q and p, the weights varying with another coordinate: the log sd ratio's spread over
    draw sets 2.4 times its mean standard error, and 17 of 200 sets flagged where 1% is allowed;
    benchmarks/PERFORMANCE.md, helper `cmoment`). `tail_khat(indices)` gives the Pareto k-hat of those coordinates'
    squared deviations (`squared_tail_khat`); a coordinate that would flag is kept only where it is
    under `diagnostics.khat_threshold(S)` (0.7 from 2,154 draws), the tail PSIS itself would trust.
    """
    disc = tuple(np.asarray(x, np.float64) for x in discrepancy)
    k = int(disc[0].shape[0])
    kc = 0
    if constrained is not None:
        cons = tuple(np.asarray(x, np.float64) for x in constrained)
        ok = np.all([np.isfinite(x) for x in cons], axis=0) & ~((cons[1] == 0) & (cons[3] == 0))
        if tested is not None:
            ok &= np.asarray(tested, bool)
        cons = tuple(np.where(ok, x, 0.0) for x in cons)
        kc = int(np.sum(ok))
    z = moment_z(k + kc, alpha)
    if k == 0 and kc == 0:
        return Moments((), -1, 0.0, 0.0, 0.0, 0.0, z, int(num_draws))
    hit, size = _hits(disc, z, mean_tol, log_sd_tol)
    flagged = np.flatnonzero(hit)
    flagged_c = np.zeros(0, int)
    if kc:
        hit_c, size_c = _hits(cons, z, mean_tol, log_sd_tol)
        flagged_c = np.flatnonzero(hit_c & ok)
        if flagged_c.size and tail_khat is not None:
            from advi_jax.diagnostics import khat_threshold

            light = np.asarray(tail_khat(flagged_c), np.float64) < khat_threshold(int(num_draws))
            flagged_c = flagged_c[light]
    pool = flagged if flagged.size else np.arange(k)
    j = int(pool[np.argmax(size[pool])]) if pool.size else -1
    best = (size[j], "unconstrained", j, disc) if j >= 0 else (-1.0, "unconstrained", -1, disc)
    if flagged_c.size:
        jc = int(flagged_c[np.argmax(size_c[flagged_c])])
        if not flagged.size or size_c[jc] > best[0]:
            best = (size_c[jc], "constrained", jc, cons)
    _, space, j, values = best
    names = ()
    if flagged_c.size and labels is not None:
        names = tuple(str(n) for n in labels(flagged_c))
    elif flagged_c.size:
        names = tuple(f"c[{int(i)}]" for i in flagged_c)
    name = names[list(flagged_c).index(j)] if space == "constrained" else ""
    if j < 0:
        return Moments((), -1, 0.0, 0.0, 0.0, 0.0, z, int(num_draws), flagged_constrained=names)
    return Moments(tuple(int(i) for i in flagged), j, float(values[0][j]), float(values[1][j]), float(values[2][j]),
                   float(values[3][j]), z, int(num_draws), space, name, names)


SPREAD_ULPS = 64
"""`has_spread`: a column whose draws' sd is at most this many units of rounding of its largest value
varies by rounding only."""


def has_spread(draws, eps: float | None = None, xp=np):
    """Which columns of (S, Kc) draws vary by more than rounding: sd > `SPREAD_ULPS` x eps x max |x|.

    A constrained site can hold constant coordinates that its bijector computes: a correlation
    Cholesky factor's L[0, 0] is 1 up to float32 rounding (1 +/- 1.2e-7) and its upper triangle 0.
    Their "spread" is rounding, which the importance weights reweight like any other noise: the
    moment check read L[0, 0]'s sd 0 against a PSIS sd of 2.4e-7 and flagged it (an LKJ model,
    2026-12-03). `eps` is the draws' own precision (default: their dtype's, float64's for integers); `xp`
    NumPy or jax.numpy.
    """
    if eps is None:
        eps = float(xp.finfo(draws.dtype if xp.issubdtype(draws.dtype, xp.floating) else xp.float64).eps)
    sd = xp.std(draws, axis=0)
    return sd > SPREAD_ULPS * eps * xp.max(xp.abs(draws), axis=0)


def constrained_discrepancy(draws: np.ndarray, log_weights: np.ndarray) -> tuple[tuple, np.ndarray]:
    """`moment_discrepancy` of (S, Kc) constrained draws, and which columns count: all finite (a
    positive parameter's exp can overflow; such a column reads 0 +/- 0) and varying by more than
    rounding (`has_spread`)."""
    draws = np.asarray(draws)
    finite = np.all(np.isfinite(draws), axis=0)
    if not np.all(finite):
        draws = np.where(finite, draws, 0.0)
    with np.errstate(all="ignore"):
        tested = finite & has_spread(draws)
    return moment_discrepancy(draws, log_weights), tested
