"""Importance sampling from a widened proposal: the moment check's reading of a q that is too narrow
(issue 15, "never silently"; helper `widen`).

The PSIS moment check (`advi_jax.psis_moments`) reweights q's own draws. Where q is too narrow in some
direction (reverse KL), q puts almost no draws in the tail where p's missing mass is, and the
reweighted sd sees about half of the error (garch11's arch_share, the 2PL IRT's sigma_b). This module
draws from a proposal that is wider than q one coordinate at a time,

    mix = alpha q + (1 - alpha) (1/J) sum_{j in J} q_j,   q_j = N(m, Sigma + v_j e_j e_j^T),
    v_j = (c^2 - 1) Sigma_jj   (coordinate j's variance inflated by c^2, the others' marginals kept),

so that q / mix <= 1 / alpha whatever K is (a plain N(m, c^2 Sigma) loses ESS like f(c)^K). With
P = Sigma^-1 and r = z - m, by the matrix determinant lemma and Sherman-Morrison,

    log q_j(z) - log q(z) = -1/2 log(1 + v_j P_jj) + 1/2 v_j (P r)_j^2 / (1 + v_j P_jj),

with P r = L^-T L^-1 r (two triangular solves) and P_jj = |L^-1 e_j|^2. The draws are stratified
(alpha S from q, the rest shared equally by the q_j); the estimates are self-normalised with the
mixture density (deterministic-mixture importance sampling). p's mean and sd per coordinate come from
the Pareto-smoothed weights p / mix, q's from the weights q / mix of the same draws (bounded by
1 / alpha), so that with p = q the discrepancy is exactly 0 and the draws' own noise largely cancels.
The coordinates J are the few the plain check reads as most suspicious (`select`): with all K
coordinates, each q_j gets (1 - alpha) S / K draws, and at K = 65 the reading's standard error is as
large as the error sought (`noise` below).

The arithmetic is `advi_jax.widened_moments`'; this module holds the known-answer tables and the
rule the calibration reads (`benchmarks.widened_rules`).

Usage (known Gaussian and Student-t answers, NumPy only; "ridge6": a Student-t(6) along the ridge of
two coordinates correlated 0.95 in q; `--form regression` for `widened_moments`' regression form):
  python -m benchmarks.widened noise [--kinds exact,ridge6] [--form regression]
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from advi_jax import diagnostics as _diag
from advi_jax.psis_moments import moment_z

from advi_jax.widened_moments import (WIDEN_ALPHA as ALPHA, WIDEN_C as C, WIDEN_DIRECTIONS as NUM_DIRECTIONS,
                                      log_mix_minus_log_q, log_q_centred as log_q, mixture_weights as weights,
                                      plain_score, sample, select, weighted_discrepancy, weighted_tail_khat)

__all__ = ["C", "ALPHA", "NUM_DIRECTIONS", "log_mix_minus_log_q", "log_q", "weights", "plain_score", "sample",
           "select", "weighted_discrepancy", "weighted_tail_khat", "flags"]


def flags(discrepancy: tuple, num_tests: int, mean_tol: float = math.inf, log_sd_tol: float = 0.15,
          alpha: float = 0.01) -> np.ndarray:
    """Which columns read at least the tolerance and beyond the Bonferroni bound for `num_tests`
    coordinates (`psis_moments.moment_z`); by the sd alone unless `mean_tol` is given, as the library."""
    d_mean, se_mean, d_logsd, se_logsd = discrepancy
    z = moment_z(num_tests, alpha)
    return (((np.abs(d_mean) >= mean_tol) & (np.abs(d_mean) > z * se_mean))
            | ((np.abs(d_logsd) >= log_sd_tol) & (np.abs(d_logsd) > z * se_logsd)))


# ---------------------------------------------------------------------------------------------
# known answers (NumPy): q = N(0, I_K); p differs in coordinate 0 only (or not at all)

def _target(kind: str, k: int):
    """log p (unnormalised) of (S, K) draws, and p's true (mean, sd) of coordinate 0."""
    if kind == "exact":
        return (lambda z: -0.5 * np.sum(z * z, axis=1)), 1.0
    if kind.startswith("allwide"):  # Gaussian, sd x r in every coordinate
        r = float(kind[7:])
        return (lambda z: -0.5 * np.sum((z / r) ** 2, axis=1)), r
    if kind.startswith("wide"):  # Gaussian, sd x r in coordinate 0
        r = float(kind[4:])
        return (lambda z: -0.5 * np.sum(z[:, 1:] ** 2, axis=1) - 0.5 * (z[:, 0] / r) ** 2), r
    if kind.startswith("ridge"):  # Student-t(nu) along the ridge of coordinates 0 and 1 (q's correlation RHO)
        nu = float(kind[5:] or 6)
        su, sv = math.sqrt(1 + RHO), math.sqrt(1 - RHO)

        def log_p(z):
            u, v = (z[:, 0] + z[:, 1]) / math.sqrt(2) / su, (z[:, 0] - z[:, 1]) / math.sqrt(2) / sv
            return -0.5 * np.sum(z[:, 2:] ** 2, axis=1) - 0.5 * (nu + 1) * np.log1p(u * u / nu) - 0.5 * v * v
        return log_p, math.sqrt((su * su * nu / (nu - 2) + sv * sv) / 2)
    if kind.startswith("t"):  # Student-t with nu, scale 1, in coordinate 0: q matches its core
        nu = float(kind[1:])
        return (lambda z: -0.5 * np.sum(z[:, 1:] ** 2, axis=1) - 0.5 * (nu + 1) * np.log1p(z[:, 0] ** 2 / nu)), \
            math.sqrt(nu / (nu - 2))
    raise ValueError(kind)


RHO = 0.95


def _q_chol(kind: str, k: int) -> np.ndarray:
    """q's Cholesky factor: I_K, or coordinates 0 and 1 correlated RHO ("ridge" kinds)."""
    chol = np.eye(k)
    if kind.startswith("ridge"):
        chol[1, :2] = RHO, math.sqrt(1 - RHO * RHO)
    return chol


def _one_set(rng, kind: str, k: int, num: int, all_dirs: bool, c: float = C, alpha: float = 0.0,
             form: str = "coordinate"):
    log_p, _ = _target(kind, k)
    mean, chol = np.zeros(k), _q_chol(kind, k)
    # stage 1: the plain PSIS reading of q's own draws (the library's moment check)
    from advi_jax.psis_moments import moment_discrepancy, moment_check_of

    z1 = rng.standard_normal((num, k)) @ chol.T
    sm = _diag._psis_core(log_p(z1) - log_q(z1, chol), True, np)
    disc1 = moment_discrepancy(z1, sm.log_weights)
    plain = moment_check_of(disc1, num)
    dirs = np.arange(k) if all_dirs else select(plain_score(disc1[0], disc1[2]))
    # stage 2: fresh draws of the widened mixture
    # the fits' design: alpha = 0, `num` draws per widened coordinate (an alpha > 0: `num` in all); all K
    # coordinates widened: the same total, shared by the K
    total = num * min(NUM_DIRECTIONS, k) if alpha == 0 else num
    z = sample(rng, mean, chol, dirs, total, c, alpha, form)
    lq = log_q(z - mean, chol)
    wp, wq, khat = weights(log_p(z), lq, lq + log_mix_minus_log_q(z - mean, chol, dirs, c, alpha, form))
    disc = weighted_discrepancy(z[:, dirs], wp, wq)
    hit = flags(disc, dirs.size)
    where0 = int(np.flatnonzero(dirs == 0)[0]) if np.any(dirs == 0) else -1
    return (plain.any_flagged, bool(hit.any()), bool(where0 >= 0 and hit[where0]), float(disc1[2][0]),
            float(disc[2][where0]) if where0 >= 0 else float("nan"), float(disc[3][where0]) if where0 >= 0 else float("nan"),
            khat, where0 >= 0)


def cmd_noise(sets: int, num: int, c: float = C, kinds=None, alpha: float = 0.0, compare_all: bool = True,
              only_all: bool = False, form: str = "coordinate") -> None:
    print(f"q = N(0, I_K) (ridge: coordinates 0-1 correlated {RHO}); form {form}; {sets} sets of {num} draws per row; widened: c = {c}, alpha = {alpha} "
          f"({num} draws per widened coordinate where alpha = 0), J = {NUM_DIRECTIONS} coordinates chosen from the plain reading of another {num} draws of q (or all K)")
    print("| p | K | J | true log sd ratio (coord 0) | plain: sets flagged | plain log sd reading (mean) | "
          "coord 0 selected | widened: sets flagged | coord 0 flagged | widened reading (mean; spread; mean se) | "
          "k-hat of p/mix (median) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for kind in kinds or ("exact", "wide1.05", "allwide1.1", "wide1.2", "t6", "t5"):
        for k in (3, 30, 100):
            for all_dirs in (False, True):
                if all_dirs and (kind not in ("allwide1.1", "wide1.2", "t6") or k == 3 or not compare_all):
                    continue
                if only_all and not all_dirs:
                    continue
                rng = np.random.default_rng(12345 + k)
                out = [_one_set(rng, kind, k, num, all_dirs, c, alpha, form) for _ in range(sets)]
                pf, wf, w0, p_read, w_read, w_se, kh, sel = (np.array(x) for x in zip(*out))
                true = math.log(_target(kind, k)[1])
                good = sel.astype(bool)
                wr = w_read[good]
                print(f"| {kind} | {k} | {'K' if all_dirs else NUM_DIRECTIONS} | {true:.3f} | {pf.sum()} / {sets} | "
                      f"{p_read.mean():+.3f} | {good.sum()} / {sets} | {wf.sum()} / {sets} | {w0.sum()} / {sets} | "
                      f"{(wr.mean() if wr.size else float('nan')):+.3f}; {(wr.std() if wr.size else float('nan')):.3f}; "
                      f"{(np.mean(w_se[good]) if wr.size else float('nan')):.3f} | {np.median(kh):.2f} |", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("noise",))
    parser.add_argument("--sets", type=int, default=200)
    parser.add_argument("--draws", type=int, default=4096)
    parser.add_argument("--c", type=float, default=C)
    parser.add_argument("--kinds", default=None, help="e.g. exact,wide1.2,t5")
    parser.add_argument("--alpha", type=float, default=0.0)
    parser.add_argument("--no-all", action="store_true", help="skip the rows that widen all K coordinates")
    parser.add_argument("--only-all", action="store_true", help="only the rows that widen all K coordinates")
    parser.add_argument("--form", default="coordinate", choices=("coordinate", "regression"))
    args = parser.parse_args(argv)
    cmd_noise(args.sets, args.draws, args.c, args.kinds.split(",") if args.kinds else None, args.alpha,
              not args.no_all, args.only_all, args.form)


if __name__ == "__main__":
    main()
