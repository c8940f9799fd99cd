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

Where the ratios' tail is heavy (k-hat 0.5-0.9) PSIS's estimates are pulled towards q's own and the
check reads 40-90% of the true discrepancy (measured against NUTS on the posteriors of
`benchmarks.suite` and `benchmarks.holdout`: benchmarks/PERFORMANCE.md, issue 15, helper `khat`); the
tolerances are set for that.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = ["Moments", "MOMENT_MEAN_TOL", "MOMENT_LOG_SD_TOL", "MOMENT_ALPHA", "moment_discrepancy",
           "moment_z", "moment_check", "moment_check_of", "power_sums", "discrepancy_from_sums"]

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


class Moments(NamedTuple):
    """The PSIS moment check of q from S draws (`moment_check`).

    Attributes:
      flagged: flat indices (in R^K, unconstrained) of the coordinates whose mean or sd differs from
        the PSIS estimate by at least the tolerance and significantly (`moment_check`).
      worst_index: the flagged coordinate with the largest discrepancy (or the largest overall, when
        none is flagged); -1 when K = 0.
      worst_mean, worst_mean_se: its d_mean (q's sds) and standard error.
      worst_log_sd, worst_log_sd_se: its log(PSIS sd / q's sd) and standard error.
      z: the significance bound used (standard errors).
      num_draws: S.
    """

    flagged: tuple
    worst_index: int
    worst_mean: float
    worst_mean_se: float
    worst_log_sd: float
    worst_log_sd_se: float
    z: float
    num_draws: int

    def describe(self) -> str:
        """One phrase for the verdict and the warning."""
        j = self.worst_index
        return (f"PSIS moment check from {self.num_draws} draws: coordinate {j} (flat index in R^K) has "
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
    and (as a fifth row's first entry, broadcast over k) sum w^2. Four (3, S) x (S, k) products
    instead of a dozen (S, k) temporaries. `xp` is NumPy (the host, float64) or jax.numpy (a
    batched fit's diagnostics compute these on the device, per fit, and bring back only (5, 3, k)).
    """
    y = z - xp.mean(z, axis=0, keepdims=True)
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
    d_mean, se_mean, d_logsd, se_logsd = (np.asarray(x, np.float64) for x in discrepancy)
    k = int(d_mean.shape[0])
    z = moment_z(k, alpha)
    mean_hit = (np.abs(d_mean) >= mean_tol) & (np.abs(d_mean) > z * se_mean)
    sd_hit = (np.abs(d_logsd) >= log_sd_tol) & (np.abs(d_logsd) > z * se_logsd)
    flagged = np.flatnonzero(mean_hit | sd_hit)
    if k == 0:
        return Moments((), -1, 0.0, 0.0, 0.0, 0.0, z, int(num_draws))
    size = np.maximum(np.abs(d_mean) / mean_tol, np.abs(d_logsd) / log_sd_tol)
    pool = flagged if flagged.size else np.arange(k)
    j = int(pool[np.argmax(size[pool])])
    return Moments(tuple(int(i) for i in flagged), j, float(d_mean[j]), float(se_mean[j]), float(d_logsd[j]),
                   float(se_logsd[j]), z, int(num_draws))
