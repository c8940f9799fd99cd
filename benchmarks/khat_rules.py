"""The `rules` step of `benchmarks.bench_khat_calibrate`: fresh draw sets of each stored q, the
readings every candidate warning rule needs (k-hat, ESS, non-finite share and the PSIS moment
discrepancies per coordinate at S = 4,096 and 16,384, the default's two sample sizes), and the confusion
tables of the rules (`table`).
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
from advi_jax.psis_moments import moment_discrepancy

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
    zeta, centred, shift = draws_and_log_ratios(model, family, params, key, num_draws)
    zeta, centred, shift = jax.device_get((zeta, centred, shift))
    ratios = np.asarray(centred, np.float64) + float(shift)
    smoothed = _diag._psis_core(ratios, True, np)
    d = _diag._diagnostics_core(ratios, np, smoothed)
    d_mean, se_mean, d_logsd, se_logsd = moment_discrepancy(zeta, smoothed.log_weights)
    return {"khat": float(d.khat), "ess": float(d.ess), "S": num_draws,
            "nonfinite": float(np.mean(~np.isfinite(ratios))), "d_mean": d_mean, "se_mean": se_mean,
            "d_logsd": d_logsd, "se_logsd": se_logsd}


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


def moments_flag(x: dict, mean_tol: float, log_sd_tol: float, alpha: float) -> bool:
    """`advi_jax.psis_moments.moment_check`'s flag on one reading, at these settings."""
    from advi_jax.psis_moments import moment_z

    z = moment_z(len(x["d_mean"]), alpha)
    hit = (((np.abs(x["d_mean"]) >= mean_tol) & (np.abs(x["d_mean"]) > z * x["se_mean"]))
           | ((np.abs(x["d_logsd"]) >= log_sd_tol) & (np.abs(x["d_logsd"]) > z * x["se_logsd"])))
    return bool(hit.any())


def warn_shares(row: dict, readings: dict, settings) -> tuple[float, float]:
    """Over the draw sets: the share that warns under k-hat alone (the session start's rule: the first
    4,096 draws, re-estimated from 16,384 where they read over the threshold and more are cheap) and
    with the moment check of the reported sample at `settings` = (mean_tol, log_sd_tol, alpha). A
    fit's other warnings (the step cap, a run-away parameter) count in both."""
    per = readings["readings"]
    cheap = confirmation_draws(4096, row["logp"], row["grads"], readings["entries"]) > 0
    other = any(word in row["warned"] for word in ("cap", "other", "halving"))
    plain, with_moments = [], []
    for i, first in enumerate(per[4096]):
        more = per[16384][i] if i < len(per[16384]) else None
        again = cheap and khat_warns(first)
        by_khat = khat_warns(first) and (not cheap or khat_warns(more))
        plain.append(by_khat or other)
        with_moments.append(by_khat or other or moments_flag(more if again else first, *settings))
    return float(np.mean(plain)), float(np.mean(with_moments))


def table(rows: list[dict], readings: dict, poor_mean: float, poor_log_sd: float, settings) -> None:
    """The confusion table (expected counts over draw sets, and fits that ever / always warned)."""
    counts = {"k-hat only": [0.0, 0.0, 0, 0, [], []], "with moments": [0.0, 0.0, 0, 0, [], []]}
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
          "warn share, k-hat only | warn share, with the moment check |")
    print("|---|---|---|---|---|---|---|")
    for name, items in sorted(by_model.items()):
        dm = [r["max|dmean|/sd"] for r, _ in items]
        ls = [r["max|log sd|"] for r, _ in items]
        own = sorted({w for r, _ in items for w in r["warned"].split(",") if w})
        print(f"| {name} | {','.join(str(r['seed']) for r, _ in items)} | {min(dm):.3f}-{max(dm):.3f} | "
              f"{min(ls):.2f}-{max(ls):.2f} ({items[0][0]['worst sd']}) | {','.join(own) or '-'} | "
              f"{' / '.join(f'{a:.2f}' for _, (a, b) in items)} | {' / '.join(f'{b:.2f}' for _, (a, b) in items)} |")
