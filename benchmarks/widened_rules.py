"""The widened moment check (`benchmarks.widened`) on the stored q's of `benchmarks.bench_khat_calibrate`,
next to the library's rule ("both spaces"), against NUTS (issue 15, helper `widen`).

Per stored fit and per draw set of `benchmarks.khat_rules`' readings: stage 1 is that set's reported
sample (the plain PSIS moment check's reading, both spaces), which picks the `NUM_DIRECTIONS`
coordinates of R^K the plain check reads as most suspicious (`widened.plain_score`; a constrained
coordinate's reading counts for every unconstrained coordinate it depends on, by the Jacobian of
the bijectors at q's mean). Stage 2 is a fresh set of `--draws` draws of the widened mixture over
those coordinates, their log densities (one compiled program per model here: every one is an extra
log-density evaluation), and the discrepancies of p's estimates against q's from the same draws,
for the selected coordinates in R^K and the constrained coordinates that depend on them, flagged at
the library's tolerances (0.15) beyond the Bonferroni bound for the coordinates tested in stage 2.

`--form regression` widens along q's regression on each chosen coordinate, `--form both` both ways
(2 J components; `widened_moments.WIDEN_FORM`); the coordinate form's readings keep `widen`'s key.

Usage:
  python -m benchmarks.widened_rules widen [--draws 4096] [--form regression]   # the readings (stored beside khat_rules')
  python -m benchmarks.widened_rules table [--form regression]                  # the confusion tables
"""

from __future__ import annotations

import argparse
import os
import pickle
import time
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from advi_jax import diagnostics as _diag
from advi_jax import psis_moments as pm
from advi_jax.fit_diagnostics import confirmation_draws
from advi_jax.importance import constrained_flat
from benchmarks import widened as wd
from benchmarks.khat_rules import READINGS, khat_warns, load_readings, moments_flag

WIDENED = os.path.join(os.path.dirname(READINGS), "widened.pickle")
SETTINGS = (pm.MOMENT_MEAN_TOL, pm.MOMENT_LOG_SD_TOL, pm.MOMENT_ALPHA)


def programs(model, mean: np.ndarray):
    """A compiled (S, K) -> (log p (S,), constrained draws (S, Kc)), and the (Kc, K) pattern of which
    unconstrained coordinates each constrained one depends on (the bijectors' Jacobian at q's mean)."""
    def run(zeta):
        return jax.lax.map(model.log_density, zeta, batch_size=256), constrained_flat(model, zeta)

    jac = jax.jacfwd(lambda z: constrained_flat(model, z[None])[0])(jnp.asarray(mean, jnp.float32))
    return jax.jit(run), np.abs(np.asarray(jac)) > 0


def reported(row: dict, entry: dict, i: int) -> dict:
    """Set i's reported sample (`khat_rules.warn_shares`' rule)."""
    per = entry["readings"]
    first = per[4096][i]
    cheap = confirmation_draws(4096, row["logp"], row["grads"], entry["entries"]) > 0
    return per[16384][i] if cheap and khat_warns(first) and i < len(per[16384]) else first


def scores(x: dict, dep: np.ndarray) -> np.ndarray:
    """Per unconstrained coordinate: its plain-check suspicion, or that of a constrained coordinate
    depending on it, whichever is larger."""
    score = wd.plain_score(x["d_mean"], x["d_logsd"])
    cons = x["constrained"]
    ok = np.asarray(x["tested"], bool) & np.all([np.isfinite(c) for c in cons], axis=0)
    if dep.shape[0] and ok.any():
        sc = np.where(ok, wd.plain_score(cons[0], cons[2]), 0.0)
        score = np.maximum(score, np.max(np.where(dep, sc[:, None], 0.0), axis=0))
    return score


def components(dirs: np.ndarray, form: str, family=None) -> tuple[np.ndarray, list]:
    """The widened components (coordinates, forms) of `widened_moments.widened_check` for the chosen
    coordinates: each one in `form` ("coordinate", "regression"; a low-rank q: "coordinate"), or both."""
    from advi_jax.widened_moments import effective_form

    if form == "both":
        return np.concatenate([dirs, dirs]), ["coordinate"] * dirs.size + ["regression"] * dirs.size
    return dirs, [effective_form(family, form)] * dirs.size


def widened_reading(prog, dep, mean, chol, stage1: dict, rng, num: int, c: float = wd.C, alpha: float = wd.ALPHA,
                    num_dirs: int = wd.NUM_DIRECTIONS, form: str = "coordinate", family=None) -> dict:
    score = scores(stage1, dep)
    dirs = wd.select(score, num_dirs)
    cdirs, forms = components(dirs, form, family)
    z = wd.sample(rng, mean, chol, cdirs, num, c, alpha, forms)
    log_p, cons = jax.device_get(prog(jnp.asarray(z, jnp.float32)))
    log_p = np.asarray(log_p, np.float64)
    r = z - mean
    lq = wd.log_q(r, chol)
    lmix = lq + wd.log_mix_minus_log_q(r, chol, cdirs, c, alpha, forms)
    finite = np.isfinite(log_p)
    log_p = np.where(finite, log_p, -np.inf)
    wp, wq, khat = wd.weights(log_p, lq, lmix)
    disc_u = wd.weighted_discrepancy(z[:, dirs], wp, wq)
    cols = np.flatnonzero(dep[:, dirs].any(axis=1)) if dep.shape[0] else np.zeros(0, int)
    cons = np.asarray(cons, np.float64)[:, cols]
    fin = np.all(np.isfinite(cons), axis=0)
    disc_c = wd.weighted_discrepancy(np.where(fin, cons, 0.0), wp, wq)
    disc_c = tuple(np.where(fin, d, 0.0) for d in disc_c)
    tests = dirs.size + int(fin.sum())
    hit_u = wd.flags(disc_u, tests)
    hit_c = wd.flags(disc_c, tests) & fin
    hit_c_w = hit_c.copy()
    if hit_c.any():
        idx = np.flatnonzero(hit_c)
        tail = min(_diag.tail_length(num) + 1, num)
        # the library's tail guard for constrained draws: the tail of the draws' squared deviations
        light = pm.squared_tail_khat(pm.top_squared(cons[:, idx], tail)) < _diag.khat_threshold(num)
        hit_c[idx[~light]] = False
        # the same of the p-weighted squared deviations (what the standard error's terms are made of)
        light_w = wd.weighted_tail_khat(cons[:, idx], wp) < _diag.khat_threshold(num)
        hit_c_w[idx[~light_w]] = False
    return {"dirs": dirs, "cols": cols, "u": disc_u, "c": disc_c, "hit_u": hit_u, "hit_c": hit_c, "hit_c_w": hit_c_w,
            "khat": khat,
            "nonfinite": float(np.mean(~finite)), "tests": tests, "score": float(score.max(initial=0.0)),
            "stage1 khat": float(stage1["khat"])}


def cmd_widen(rows: list[dict], load, num: int, c: float = wd.C, alpha: float = wd.ALPHA, num_dirs: int = wd.NUM_DIRECTIONS,
              out: str = WIDENED, form: str = "coordinate") -> None:
    variant = variant_key(num, c, alpha, num_dirs, form)
    readings = load_readings()
    done = {}
    if os.path.exists(out):
        with open(out, "rb") as f:
            done = pickle.load(f)
    for row in rows:
        tag = (row["model"], row["seed"])
        if tag not in readings or (tag, *variant) in done:
            continue
        tick = time.perf_counter()
        model = load(row["model"])[0]
        family, params = row["family"], row["params"]
        mean = np.asarray(family.mean(params), np.float64)
        chol = np.asarray(family.scale_tril(params), np.float64)
        prog, dep = programs(model, mean)
        entry = readings[tag]
        per = []
        for i in range(len(entry["readings"][4096])):
            rng = np.random.default_rng([zlib.crc32(f"{tag[0]}/{tag[1]}".encode()), i, abs(num)])
            rep = reported(row, entry, i)
            draws = num or int(rep["S"])  # 0: the reported sample's size; negative: that many per widened coordinate
            draws = draws if draws > 0 else -draws * min(num_dirs, mean.shape[0]) * (2 if form == "both" else 1)
            per.append(widened_reading(prog, dep, mean, chol, rep, rng, draws, c, alpha, num_dirs, form, family))
        done[(tag, *variant)] = per
        with open(out, "wb") as f:
            pickle.dump(done, f)
        print(f"{tag[0]:26s} s{tag[1]} poor {'Y' if row['poor'] else '-'} widened flags "
              f"{[int(wflag(x)) for x in per]} k-hat(mix) "
              f"{[round(x['khat'], 2) for x in per]} ({time.perf_counter() - tick:.1f}s)", flush=True)


def variant_key(num: int, c: float, alpha: float, num_dirs: int, form: str = "coordinate") -> tuple:
    """A stored reading's variant; the coordinate form's key is the one `widen` stored (no form)."""
    return (num, c, alpha, num_dirs) if form == "coordinate" else (num, c, alpha, num_dirs, form)


def wflag(x: dict) -> bool:
    """The widened check's flag on one reading, with the tail guard `WIDEN_GUARD` says ("draws", the
    library's constrained guard on the draws, or "weighted", on the p-weighted squared deviations)."""
    guard = os.environ.get("WIDEN_GUARD", "weighted")
    hit_u, hit_c = x["hit_u"], (x["hit_c_w"] if guard == "weighted" and "hit_c_w" in x else x["hit_c"])
    if not os.environ.get("WIDEN_MEAN"):  # flag on the sd alone (the library's rule), not on a mean shift
        z = pm.moment_z(x["tests"])
        sd_hit = [(np.abs(d[2]) >= pm.MOMENT_LOG_SD_TOL) & (np.abs(d[2]) > z * d[3]) for d in (x["u"], x["c"])]
        hit_u, hit_c = hit_u & sd_hit[0], hit_c & sd_hit[1]
    return bool(hit_u.any() or hit_c.any())


def rule_shares(row: dict, entry: dict, wide: list | None) -> dict:
    """Per rule, the share of draw sets that warn: k-hat alone, the library's (both spaces), and with
    the widened check (always, and only where the trigger holds)."""
    per = entry["readings"]
    cheap = confirmation_draws(4096, row["logp"], row["grads"], entry["entries"]) > 0
    other = any(word in row["warned"] for word in ("cap", "other", "halving"))
    out = {"k-hat only": [], "both spaces": [], "+ widened": [], "+ widened, grey": [], "+ widened or mix k": []}
    for i, first in enumerate(per[4096]):
        more = per[16384][i] if i < len(per[16384]) else None
        by_khat = khat_warns(first) and (not cheap or khat_warns(more))
        rep = reported(row, entry, i)
        base = by_khat or other or moments_flag(rep, *SETTINGS, constrained=True)
        w = wide[i] if wide is not None else None
        w_flag = w is not None and wflag(w)
        out["k-hat only"].append(by_khat or other)
        out["both spaces"].append(base)
        out["+ widened"].append(base or w_flag)
        out["+ widened, grey"].append(base or (w_flag and grey(rep, first)))
        out["+ widened or mix k"].append(base or w_flag or (w is not None and w["khat"] >= 0.7))
    return {k: float(np.mean(v)) for k, v in out.items()}


GREY_KHAT = 0.5
GREY_SCORE = 0.05


def grey(rep: dict, first: dict) -> bool:
    """The trigger: the reported k-hat at least `GREY_KHAT`, or some coordinate's plain reading
    (either space) at least `GREY_SCORE`."""
    cons = rep["constrained"]
    sc = wd.plain_score(cons[0], cons[2])[np.asarray(rep["tested"], bool)] if len(cons[0]) else np.zeros(0)
    top = max(float(np.max(wd.plain_score(rep["d_mean"], rep["d_logsd"]), initial=0.0)),
              float(np.max(np.nan_to_num(sc), initial=0.0)))
    return rep["khat"] >= GREY_KHAT or top >= GREY_SCORE


def table(rows, readings, wide, key, poor_mean, poor_log_sd) -> None:
    names = ("k-hat only", "both spaces", "+ widened", "+ widened, grey", "+ widened or mix k")
    counts = {n: [0.0, 0.0, [], []] for n in names}
    num_poor = total = 0
    for row in rows:
        tag = (row["model"], row["seed"])
        if tag not in readings or (tag, *key) not in wide:
            continue
        total += 1
        poor = row["max|dmean|/sd"] > poor_mean or row["max|log sd|"] > poor_log_sd
        num_poor += poor
        for name, share in rule_shares(row, readings[tag], wide[(tag, *key)]).items():
            c = counts[name]
            if poor:
                c[0] += 1 - share
                c[2] += [f"{tag[0]} s{tag[1]} ({share:.2f})"] if share < 1 else []
            else:
                c[1] += share
                c[3] += [f"{tag[0]} s{tag[1]} ({share:.2f})"] if share > 0 else []
    print(f"poor: max|dmean|/sd > {poor_mean} or max|log sd| > {poor_log_sd:.3f}: {num_poor} of {total} fits "
          f"(widened draws, c: {key})")
    for name, (miss, alarm, silent, warned) in counts.items():
        print(f"  {name:16s} expected silent misses {miss:5.2f} ({len(silent)} fits); expected false alarms "
              f"{alarm:5.2f} ({len(warned)} fits)")
        print(f"      silent: {', '.join(silent) or '-'}")
        print(f"      false alarms: {', '.join(warned) or '-'}")


def trigger_stats(rows, readings, wide, key) -> None:
    """How often the grey trigger fires where nothing warns yet (the widened check's cost), by fit."""
    fired, quiet = [], []
    for row in rows:
        tag = (row["model"], row["seed"])
        if tag not in readings or (tag, *key) not in wide:
            continue
        entry = readings[tag]
        cheap = confirmation_draws(4096, row["logp"], row["grads"], entry["entries"]) > 0
        other = any(word in row["warned"] for word in ("cap", "other", "halving"))
        n = runs = 0
        for i, first in enumerate(entry["readings"][4096]):
            more = entry["readings"][16384][i] if i < len(entry["readings"][16384]) else None
            rep = reported(row, entry, i)
            warned = (khat_warns(first) and (not cheap or khat_warns(more))) or other or moments_flag(
                rep, *SETTINGS, constrained=True)
            n += 1
            runs += (not warned) and grey(rep, first)
        (fired if runs else quiet).append(f"{tag[0]} s{tag[1]} {runs}/{n}{' (poor)' if row['poor'] else ''}")
    print(f"grey trigger (reported k-hat >= {GREY_KHAT} or a plain reading >= {GREY_SCORE}, nothing warning yet): "
          f"runs the widened check in {len(fired)} fits: {', '.join(fired)}")
    print(f"  never runs: {', '.join(quiet)}")


def changed(rows, readings, wide, key, labels) -> None:
    """The fits whose warn share the widened check changes, with its readings per set."""
    print("fits whose share changes (both spaces -> + widened), with the widened readings per set "
          "(worst tested column: log sd +/- se, mean +/- se; k-hat of p/mix):")
    for row in rows:
        tag = (row["model"], row["seed"])
        if tag not in readings or (tag, *key) not in wide:
            continue
        shares = rule_shares(row, readings[tag], wide[(tag, *key)])
        if shares["both spaces"] == shares["+ widened"] and not os.environ.get("WIDEN_ALL"):
            continue
        parts = []
        for x in wide[(tag, *key)]:
            parts.append(describe(x, labels.get(row["model"])))
        print(f"  {tag[0]} s{tag[1]} (poor {'Y' if row['poor'] else '-'}, max|log sd| {row['max|log sd|']:.2f} "
              f"({row['worst sd']}), max|dmean| {row['max|dmean|/sd']:.3f} ({row['worst mean']})): "
              f"{shares['both spaces']:.2f} -> {shares['+ widened']:.2f} (grey {shares['+ widened, grey']:.2f})")
        for p in parts:
            print(f"      {p}")


def describe(x: dict, labels) -> str:
    best = None
    for space, disc, idx in (("u", x["u"], x["dirs"]), ("c", x["c"], x["cols"])):
        size = np.maximum(np.abs(disc[0]), np.abs(disc[2]))
        for k in range(size.size):
            if best is None or size[k] > best[0]:
                name = f"u[{idx[k]}]" if space == "u" else (labels[idx[k]] if labels else f"c[{idx[k]}]")
                best = (size[k], name, disc[2][k], disc[3][k], disc[0][k], disc[1][k])
    flag = "FLAG" if wflag(x) else "-"
    if best is None:
        return f"{flag} nothing tested"
    return (f"{flag} [stage 1: k-hat {x.get('stage1 khat', float('nan')):.2f}, top score {x.get('score', float('nan')):.3f}] "
            f"{best[1]}: log sd {best[2]:+.3f} +/- {best[3]:.3f}, mean {best[4]:+.3f} +/- {best[5]:.3f}; "
            f"dirs {list(map(int, x['dirs']))}; z {pm.moment_z(x['tests']):.2f}; k-hat(mix) {x['khat']:.2f}")


def main(argv=None) -> None:
    from benchmarks.bench_khat_calibrate import POOR_LOG_SD, POOR_MEAN, load, stored

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("widen", "table"))
    parser.add_argument("--models", default=None)
    parser.add_argument("--draws", type=int, default=0,
                        help="0: as many as the reported sample; -n: n per widened coordinate")
    parser.add_argument("--c", type=float, default=wd.C)
    parser.add_argument("--alpha", type=float, default=wd.ALPHA)
    parser.add_argument("--dirs", type=int, default=wd.NUM_DIRECTIONS)
    parser.add_argument("--form", default="coordinate", choices=("coordinate", "regression", "both"),
                        help="how a component widens its coordinate (`widened_moments.WIDEN_FORM`)")
    args = parser.parse_args(argv)
    from benchmarks.bench_khat_calibrate import all_names

    rows = stored(set(args.models.split(",")) if args.models else set(all_names()))
    if args.step == "widen":
        cmd_widen(rows, load, args.draws, args.c, args.alpha, args.dirs, form=args.form)
        return
    readings = load_readings()
    with open(WIDENED, "rb") as f:
        wide = pickle.load(f)
    for pm_, pl in ((POOR_MEAN, POOR_LOG_SD), (0.3, float(np.log(1.3)))):
        table(rows, readings, wide, variant_key(args.draws, args.c, args.alpha, args.dirs, args.form), pm_, pl)
    labels = {}
    if os.environ.get("WIDEN_LABELS"):
        from advi_jax.importance import constrained_labels

        for row in rows:
            if row["model"] not in labels:
                labels[row["model"]] = constrained_labels(load(row["model"])[0], int(np.size(row["family"].mean(row["params"]))))
    trigger_stats(rows, readings, wide, variant_key(args.draws, args.c, args.alpha, args.dirs, args.form))
    changed(rows, readings, wide, variant_key(args.draws, args.c, args.alpha, args.dirs, args.form), labels)


if __name__ == "__main__":
    main()
