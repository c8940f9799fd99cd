"""The `rules` step of `benchmarks.bench_khat_calibrate`: fresh draw sets of each stored q, the
readings every candidate warning rule needs (k-hat, ESS, non-finite share and the PSIS moment
discrepancies per coordinate at S = 4,096 and 16,384, the default's two sample sizes, in the
unconstrained space and in the constrained one with the constrained coordinates' tail k-hats), and the
confusion tables of the rules (`table`): k-hat alone, with the moment check of the unconstrained
coordinates only (the rule before the constrained check), and with both spaces (the library's now).
"""

from __future__ import annotations

import os
import pickle
import time

import jax
import numpy as np

from advi_jax import diagnostics as _diag
from advi_jax.fit_diagnostics import confirmation_draws, data_size
from advi_jax.importance import draws_and_log_ratios
from advi_jax import psis_moments as pm
from advi_jax.psis_moments import constrained_discrepancy, moment_discrepancy

SIZES = (4096, 16384)
READINGS = os.environ.get("KHAT_READINGS", "benchmarks/results/khat_calib/readings.pickle")
"""Where `cmd_rules` keeps its readings (another file per concurrent process; `load_readings` merges
every `readings*.pickle` in the folder)."""


def load_readings(folder: str = os.path.dirname(READINGS)) -> dict:
    import glob

    merged = {}
    for path in sorted(glob.glob(os.path.join(folder, "readings*.pickle"))):
        with open(path, "rb") as f:
            merged.update(pickle.load(f))
    return merged


def readings(model, family, params, key, num_draws: int) -> dict:
    zeta, centred, shift, cons = draws_and_log_ratios(model, family, params, key, num_draws)
    zeta, centred, shift, cons = (np.asarray(x) for x in jax.device_get((zeta, centred, shift, cons)))
    ratios = np.asarray(centred, np.float64) + float(shift)
    smoothed = _diag._psis_core(ratios, True, np)
    d = _diag._diagnostics_core(ratios, np, smoothed)
    with np.errstate(all="ignore"):
        d_mean, se_mean, d_logsd, se_logsd = moment_discrepancy(zeta, smoothed.log_weights)
        constrained, finite = constrained_discrepancy(cons, smoothed.log_weights)
    tested = finite
    cons = np.asarray(cons)
    tail = min(_diag.tail_length(num_draws) + 1, num_draws)
    # only where a rule with tolerances of 0.1 or more could flag (the library computes it for flagged ones)
    tail_khat = np.full(cons.shape[1], np.inf)
    big = (np.abs(constrained[0]) >= 0.1) | (np.abs(constrained[2]) >= 0.1)
    idx = np.flatnonzero(tested & big)
    if idx.size:
        tail_khat[idx] = pm.squared_tail_khat(pm.top_squared(cons[:, idx], tail))
    return {"khat": float(d.khat), "ess": float(d.ess), "S": num_draws,
            "nonfinite": float(np.mean(~np.isfinite(ratios))), "d_mean": d_mean, "se_mean": se_mean,
            "d_logsd": d_logsd, "se_logsd": se_logsd, "constrained": tuple(constrained), "tested": tested,
            "tail_khat": tail_khat}


def cmd_rules(rows: list[dict], sets: int, out: str = READINGS) -> None:
    from benchmarks.bench_khat_calibrate import load

    done = {}
    if os.path.exists(out):
        with open(out, "rb") as f:
            done = pickle.load(f)
    models = {}
    for row in rows:
        tag = (row["model"], row["seed"])
        if tag in done:
            continue
        if row["model"] not in models:
            models[row["model"]] = load(row["model"])[0]
        model = models[row["model"]]
        tick = time.perf_counter()
        per = {S: [] for S in SIZES}
        cheap = confirmation_draws(4096, row["logp"], row["grads"], data_size(model)) > 0
        for r in range(sets):
            for S in SIZES[:None if cheap else 1]:  # 16,384 only where the fit would take them
                key = jax.random.key(7919 * (r + 1) + S)
                per[S].append(readings(model, row["family"], row["params"], key, S))
        done[tag] = {"readings": per, "entries": data_size(model)}
        with open(out, "wb") as f:
            pickle.dump(done, f)
        ks = {S: np.round([x["khat"] for x in per[S]], 2).tolist() for S in SIZES if per[S]}
        print(f"{row['model']:26s} s{row['seed']} poor {'Y' if row['poor'] else '-'} khat {ks} "
              f"({time.perf_counter() - tick:.1f}s)", flush=True)


def khat_warns(x: dict) -> bool:
    """The k-hat rule of one reading (`advi_jax.run.single.warn_diagnostics`'s first part)."""
    return x["nonfinite"] > 0 or (x["khat"] >= 0.7 and not _diag.near_constant(x["khat"], x["ess"], x["S"]))


def moments_flag(x: dict, mean_tol: float, log_sd_tol: float, alpha: float, constrained: bool = False) -> bool:
    """`advi_jax.psis_moments.moment_check`'s flag on one reading, at these settings; with
    `constrained`, `moment_check_both`'s (both spaces, the library's rule now)."""
    disc = (x["d_mean"], x["se_mean"], x["d_logsd"], x["se_logsd"])
    if not constrained:
        return pm.moment_check_of(disc, x["S"], mean_tol, log_sd_tol, alpha).any_flagged
    return pm.moment_check_both(disc, x["S"], x["constrained"], x["tested"], mean_tol, log_sd_tol, alpha,
                                tail_khat=lambda idx: x["tail_khat"][idx]).any_flagged


def flagged_space(x: dict, settings) -> str:
    """Which space the library's check flags in on one reading: "", "u", "c" or "u+c"."""
    m = pm.moment_check_both((x["d_mean"], x["se_mean"], x["d_logsd"], x["se_logsd"]), x["S"], x["constrained"],
                             x["tested"], *settings, tail_khat=lambda idx: x["tail_khat"][idx])
    return "+".join(n for n, f in (("u", m.flagged), ("c", m.flagged_constrained)) if f)


def warn_shares(row: dict, readings: dict, settings) -> tuple[float, float, float]:
    """Over the draw sets: the share that warns under k-hat alone (the session start's rule: the first
    4,096 draws, re-estimated from 16,384 where they read over the threshold and more are cheap),
    with the moment check of the reported sample at `settings` = (mean_tol, log_sd_tol, alpha) in the
    unconstrained space only, and in both spaces. A fit's other warnings (the step cap, a run-away
    parameter) count in all."""
    per = readings["readings"]
    cheap = confirmation_draws(4096, row["logp"], row["grads"], readings["entries"]) > 0
    other = any(word in row["warned"] for word in ("cap", "other", "halving"))
    plain, with_moments, with_both = [], [], []
    for i, first in enumerate(per[4096]):
        more = per[16384][i] if i < len(per[16384]) else None
        again = cheap and khat_warns(first)
        by_khat = khat_warns(first) and (not cheap or khat_warns(more))
        plain.append(by_khat or other)
        reported = more if again else first
        with_moments.append(by_khat or other or moments_flag(reported, *settings))
        with_both.append(by_khat or other or moments_flag(reported, *settings, constrained=True))
    return float(np.mean(plain)), float(np.mean(with_moments)), float(np.mean(with_both))


def table(rows: list[dict], readings: dict, poor_mean: float, poor_log_sd: float, settings) -> None:
    """The confusion table (expected counts over draw sets, and fits that ever / always warned)."""
    counts = {"k-hat only": [0.0, 0.0, 0, 0, [], []], "with moments": [0.0, 0.0, 0, 0, [], []],
              "moments u+c": [0.0, 0.0, 0, 0, [], []]}
    num_poor = 0
    for row in rows:
        tag = (row["model"], row["seed"])
        if tag not in readings:
            continue
        poor = row["max|dmean|/sd"] > poor_mean or row["max|log sd|"] > poor_log_sd
        num_poor += poor
        for name, share in zip(counts, warn_shares(row, readings[tag], settings)):
            c = counts[name]
            if poor:
                c[0] += 1 - share
                c[2] += share < 1
                c[4] += [f"{tag[0]} s{tag[1]} ({share:.2f})"] if share < 1 else []
            else:
                c[1] += share
                c[3] += share > 0
                c[5] += [f"{tag[0]} s{tag[1]} ({share:.2f})"] if share > 0 else []
    total = sum((r["model"], r["seed"]) in readings for r in rows)
    print(f"poor: max|dmean|/sd > {poor_mean} or max|log sd| > {poor_log_sd:.3f}: {num_poor} of {total} fits; "
          f"moment check at mean_tol, log_sd_tol, alpha = {settings}")
    for name, (miss, alarm, ever_silent, ever_warned, silent, warned) in counts.items():
        print(f"  {name:13s} expected silent misses {miss:5.2f} (fits silent in some draw set: {ever_silent}); "
              f"expected false alarms {alarm:5.2f} (fits warned in some draw set: {ever_warned})")
        print(f"      silent: {', '.join(silent) or '-'}")
        print(f"      false alarms: {', '.join(warned) or '-'}")


def per_posterior(rows: list[dict], readings: dict, settings) -> None:
    """One markdown row per posterior: its fits' distance to NUTS and the share of draw sets that warn."""
    by_model: dict[str, list] = {}
    for row in rows:
        tag = (row["model"], row["seed"])
        if tag in readings:
            by_model.setdefault(row["model"], []).append((row, warn_shares(row, readings[tag], settings)))
    print("| posterior | seeds | max abs dmean / sd (NUTS) | max abs log sd (parameter) | fit's own warnings | "
          "warn share, k-hat only | with the moment check (unconstrained) | with both spaces |")
    print("|---|---|---|---|---|---|---|---|")
    for name, items in sorted(by_model.items()):
        dm = [r["max|dmean|/sd"] for r, _ in items]
        ls = [r["max|log sd|"] for r, _ in items]
        own = sorted({w for r, _ in items for w in r["warned"].split(",") if w})
        print(f"| {name} | {','.join(str(r['seed']) for r, _ in items)} | {min(dm):.3f}-{max(dm):.3f} | "
              f"{min(ls):.2f}-{max(ls):.2f} ({items[0][0]['worst sd']}) | {','.join(own) or '-'} | "
              f"{' / '.join(f'{a:.2f}' for _, (a, b, c) in items)} | {' / '.join(f'{b:.2f}' for _, (a, b, c) in items)} "
              f"| {' / '.join(f'{c:.2f}' for _, (a, b, c) in items)} |")


def changed(rows: list[dict], readings: dict, settings) -> None:
    """The fits whose warn share the constrained check changes, with where it flags per draw set."""
    print("fits whose warn share changes with the constrained check (model seed: unconstrained only -> both; "
          "poor at 20%; per draw set the space flagged in the reported sample):")
    for row in rows:
        tag = (row["model"], row["seed"])
        if tag not in readings:
            continue
        _, before, after = warn_shares(row, readings[tag], settings)
        if before == after:
            continue
        per = readings[tag]["readings"]
        spaces = [flagged_space(per[16384][i] if i < len(per[16384]) and khat_warns(first) else first, settings)
                  for i, first in enumerate(per[4096])]
        print(f"  {tag[0]} s{tag[1]}: {before:.2f} -> {after:.2f} (poor {'Y' if row['poor'] else '-'}, "
              f"max|log sd| {row['max|log sd|']:.2f} ({row['worst sd']}), max|dmean| {row['max|dmean|/sd']:.3f}); "
              f"spaces {spaces}")
