"""Calibrate the default fit's warning against NUTS over every posterior with a reference (issue 15).

Two steps, so that the (slow) fits run once and the (cheap) diagnostics' rules are compared on the
same q's over many fresh draw sets:

  fit:   for each posterior and seed, the default `aj.fit(model, key=...)`; stores q (family and
         params), the fit's own warnings, its k-hat and the distance of q to NUTS (max |dmean| / sd
         and max |log sd ratio| over the constrained coordinates, 32,768 antithetic draws of q as
         `benchmarks.bench_auto`) in a pickle per fit.
  rules: for each stored q, `--sets` fresh draw sets of 4,096 (and 16,384 where the fit's cost rule
         re-estimates k-hat) with their k-hat, ESS and the moment check's discrepancies in both spaces
         (`benchmarks.khat_rules`); prints the confusion tables (poor by the NUTS criterion, warned or
         not) of k-hat alone, with the unconstrained moment check, and with both spaces, and the fits
         the constrained check changes.

"Poor" (the issue's "the fit is wrong"): some coordinate's mean off by more than `POOR_MEAN` NUTS sds
or its sd off by more than a factor exp(`POOR_LOG_SD`).

Models: `benchmarks.suite.MODELS` less `NO_REFERENCE_YET`, and the holdout's ten.

Usage:
  python -m benchmarks.bench_khat_calibrate fit --seeds 0,1,2 [--models a,b]
  python -m benchmarks.bench_khat_calibrate rules --sets 4
  python -m benchmarks.bench_khat_calibrate rules --table   # the tables of the stored readings only
"""

from __future__ import annotations

import argparse
import glob
import os
import pickle
import time
import warnings

import jax
import numpy as np

import advi_jax as aj
from benchmarks import holdout
from benchmarks.bench_auto import NUM_DRAWS, antithetic, warned_why
from benchmarks.suite import flatten_draws

POOR_MEAN = 0.15
POOR_LOG_SD = float(np.log(1.2))
OUT = os.environ.get("KHAT_CALIB_DIR", "benchmarks/results/khat_calib")


def all_names() -> list[str]:
    from benchmarks.suite import MODELS, NO_REFERENCE_YET

    return [n for n in sorted(MODELS) if n not in NO_REFERENCE_YET] + list(holdout.MODELS)


def load(name: str):
    """(model, NUTS reference); a `spot_NAME` (`benchmarks/spot_unseen.py --store`) has no stored
    reference (its distance to NUTS is in its row): None."""
    if name.startswith("spot_"):
        import sys

        sys.argv = sys.argv[:1]  # spot_unseen reads its models' names from the command line
        from benchmarks import spot_unseen

        suite_model = spot_unseen.MODELS[name[len("spot_"):]]
        return aj.from_numpyro(suite_model[0], *suite_model[1]), None
    if name in holdout.MODELS:
        suite_model = holdout.MODELS[name]()
        return aj.from_numpyro(suite_model.fn, *suite_model.args), holdout.load_reference(name)
    from benchmarks.make_references import load_reference
    from benchmarks.suite import available_models

    suite_model = available_models([name])[name]
    return aj.from_numpyro(suite_model.fn, *suite_model.args), load_reference(name)


def poor(row: dict) -> bool:
    return row["max|dmean|/sd"] > POOR_MEAN or row["max|log sd|"] > POOR_LOG_SD


def fit_one(name: str, seed: int, model, reference) -> dict:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tick = time.perf_counter()
        result = aj.fit(model, key=jax.random.key(seed), progress=False)
        seconds = time.perf_counter() - tick
    zeta = antithetic(result.sample_unconstrained(jax.random.key(seed + 1), NUM_DRAWS // 2),
                      result.family.mean(result.params))
    draws = flatten_draws(jax.device_get(jax.vmap(model.to_constrained)(zeta)))
    row = {"model": name, "seed": seed, **holdout.errors(draws, reference)}
    diag, first = result.report.diagnostics, result.report.first_diagnostics
    row.update({"khat": float(diag.khat), "S": int(diag.num_draws),
                "khat first": float((first or diag).khat), "S first": int((first or diag).num_draws),
                "warned": warned_why(caught), "fit s": seconds, "grads": int(result.num_grad_evals),
                "logp": int(result.report.num_logp_evals), "stop": result.stop_reason.split(":")[0],
                "family": result.family, "params": jax.device_get(result.params),
                "diag key": result.report.diagnostic_sample[0] if result.report.diagnostic_sample else None})
    row["poor"] = poor(row)
    return row


def cmd_fit(names, seeds) -> None:
    os.makedirs(OUT, exist_ok=True)
    for name in names:
        try:
            model, reference = load(name)
        except Exception as err:  # noqa: BLE001 - one failing model must not end the run
            print(f"{name}: load ERROR {type(err).__name__}: {err}", flush=True)
            continue
        for seed in seeds:
            path = os.path.join(OUT, f"{name}__s{seed}.pkl")
            if os.path.exists(path):
                continue
            try:
                row = fit_one(name, seed, model, reference)
            except Exception as err:  # noqa: BLE001
                print(f"{name:26s} s{seed} ERROR {type(err).__name__}: {str(err)[:200]}", flush=True)
                continue
            key = row.pop("diag key")
            row["diag key data"] = None if key is None else np.asarray(jax.random.key_data(key))
            with open(path, "wb") as f:
                pickle.dump(row, f)
            print(f"{name:26s} s{seed} dmean {row['max|dmean|/sd']:.3f} ({row['worst mean']}) "
                  f"logsd {row['max|log sd|']:.2f} ({row['worst sd']}) poor {'Y' if row['poor'] else '-'} | "
                  f"khat {row['khat first']:.2f}/{row['S first']} -> {row['khat']:.2f}/{row['S']} "
                  f"warned [{row['warned']}] | {row['fit s']:.1f}s {row['grads']} grads {row['stop']}", flush=True)


def stored(names=None) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(os.path.join(OUT, "*.pkl"))):
        with open(path, "rb") as f:
            row = pickle.load(f)
        if names is None or row["model"] in names:
            rows.append(row)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("fit", "rules"))
    parser.add_argument("--models", default=None)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--sets", type=int, default=4)
    parser.add_argument("--tols", default="", help="rules: a sweep of the moment check's tolerances, e.g. 0.1,0.15")
    parser.add_argument("--table", action="store_true", help="rules: only print the tables of the stored readings")
    args = parser.parse_args(argv)
    names = args.models.split(",") if args.models else all_names()
    if args.step == "fit":
        cmd_fit(names, [int(s) for s in args.seeds.split(",")])
    else:
        from benchmarks import khat_rules
        from advi_jax import psis_moments as pm

        rows = stored(set(names))
        if not args.table:
            khat_rules.cmd_rules(rows, args.sets)
        readings = khat_rules.load_readings()
        tols = [float(t) for t in args.tols.split(",")] if args.tols else [pm.MOMENT_LOG_SD_TOL]
        for tol in tols:  # the library's settings, or a sweep of both tolerances together
            settings = (pm.MOMENT_MEAN_TOL, pm.MOMENT_LOG_SD_TOL, pm.MOMENT_ALPHA) if not args.tols else (
                tol, tol, pm.MOMENT_ALPHA)
            for poor_mean, poor_log_sd in ((POOR_MEAN, POOR_LOG_SD), (0.3, float(np.log(1.3)))):
                khat_rules.table(rows, readings, poor_mean, poor_log_sd, settings)
        if not args.tols:
            khat_rules.per_posterior(rows, readings, settings)
            khat_rules.changed(rows, readings, settings)


if __name__ == "__main__":
    main()
