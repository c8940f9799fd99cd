"""k-hat warnings before and after the re-estimate from more draws (issue 15), next to each fit's error.

For each posterior and seed, the default `aj.fit(model, key=...)`, then: its distance to NUTS
(max |dmean| / sd and max |log sd ratio|, constrained space, 32,768 antithetic draws of q as
`benchmarks.bench_auto`) and to the full-rank family limit where one is stored; k-hat from the
automatic budget's draws (what the fit reported before the re-estimate) and, where it read over its
threshold and more draws were cheap, from the re-estimate (`advi_jax.result.diagnose_confirmed`);
whether the fit warned by k-hat before (the first sample's reading) and after; the log-density
evaluations and seconds the re-estimate added; and, where the summary shows PSIS-corrected
estimates, the worst |log(psis_sd / NUTS sd)| against q's own worst |log(sd / NUTS sd)|.

Models: the holdout's ten (`benchmarks.holdout`), the suite's 22 (`benchmarks.suite`, `suite_more`),
and "mf_correlated": mean-field on a 10-D Gaussian with correlation 0.9 (a q that misses mass; its
"NUTS" is the exact Gaussian).

Usage:
  python -m benchmarks.bench_khat_confirm --set holdout --seeds 0,1,2,3
  python -m benchmarks.bench_khat_confirm --set suite --seeds 0
  python -m benchmarks.bench_khat_confirm --models neals_funnel,mf_correlated --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import advi_jax as aj
from advi_jax.diagnostics import KHAT_GOOD
from advi_jax.result import confirmation_draws, data_size, diagnose_with_ratios, over_threshold
from benchmarks import holdout
from benchmarks.bench_auto import NUM_DRAWS, against_limit, antithetic, warned_why
from benchmarks.suite import flatten_draws

CORRELATION, DIM = 0.9, 10


def mf_correlated():
    cov = np.full((DIM, DIM), CORRELATION) + (1 - CORRELATION) * np.eye(DIM)
    prec = jnp.asarray(np.linalg.inv(cov), jnp.float32)
    model = aj.Model(lambda p: -0.5 * p["x"] @ prec @ p["x"], {"x": aj.real((DIM,))})
    reference = {"params": {f"x[{i}]": {"mean": 0.0, "sd": 1.0} for i in range(DIM)}}
    return model, reference, None, {"family": "meanfield"}


def load(name: str):
    """(model, NUTS reference, family limit or None, fit kwargs)."""
    if name == "mf_correlated":
        return mf_correlated()
    if name in holdout.MODELS:
        suite_model = holdout.MODELS[name]()
        return (aj.from_numpyro(suite_model.fn, *suite_model.args), holdout.load_reference(name),
                holdout.load_reference(name, holdout.LIMIT_DIR), {})
    from benchmarks.family_limit import load_family_limit
    from benchmarks.make_references import load_reference
    from benchmarks.suite import available_models

    suite_model = available_models([name])[name]
    return (aj.from_numpyro(suite_model.fn, *suite_model.args), load_reference(name), load_family_limit(name), {})


def psis_sd_error(result, reference: dict) -> tuple[float, float]:
    """Worst |log(psis_sd / NUTS sd)| and |log(sd / NUTS sd)| over the summary's rows (NaN without psis)."""
    rows = result.summary_rows()
    if not rows or "psis_sd" not in rows[0]:
        return float("nan"), float("nan")
    ref = reference["params"]
    psis, plain = [], []
    for row in rows:
        label = row["parameter"].replace(" ", "")
        if label in ref and ref[label]["sd"] > 1e-8:
            psis.append(abs(np.log(row["psis_sd"] / ref[label]["sd"])))
            plain.append(abs(np.log(row["sd"] / ref[label]["sd"])))
    return (float(max(psis)), float(max(plain))) if psis else (float("nan"), float("nan"))


def one(name: str, seed: int, loaded: tuple) -> dict:
    model, reference, limit, kwargs = loaded
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tick = time.perf_counter()
        result = aj.fit(model, key=jax.random.key(seed), progress=False, **kwargs)
        seconds = time.perf_counter() - tick
    zeta = antithetic(result.sample_unconstrained(jax.random.key(seed + 1), NUM_DRAWS // 2),
                      result.family.mean(result.params))
    draws = flatten_draws(jax.device_get(jax.vmap(model.to_constrained)(zeta)))
    row = {"model": name, "seed": seed, **holdout.errors(draws, reference)}
    if limit is not None:
        row.update(against_limit(draws, limit, reference))
    diag, first = result.report.diagnostics, result.report.first_diagnostics
    before = first if first is not None else diag
    row.update({"khat first": float(before.khat), "S first": int(before.num_draws),
                "khat": float(diag.khat), "S": int(diag.num_draws),
                "warned before": over_threshold(before) or before.nonfinite_share > 0,
                "warned": "k-hat" in warned_why(caught), "other warnings": warned_why(caught),
                "extra logp": int(diag.num_draws) if first is not None else 0,
                "diag s": float(result.report.diagnostics_seconds), "fit s": seconds,
                "grads": int(result.num_grad_evals)})
    row["psis max|log sd|"], row["q max|log sd| (summary)"] = psis_sd_error(result, reference)
    # what a wider rule would read: a re-estimate from the same number of fresh draws also where the
    # first k-hat read in [0.5, threshold) (the "ok" band, where a miss can read low)
    row["khat band"] = row["khat"]
    if first is None and before.khat >= KHAT_GOOD and before.nonfinite_share == 0:
        loop_grads = result.num_grad_evals - int(result.report.extras.get("start_grad_evals", 0))
        more = confirmation_draws(before.num_draws, 0, loop_grads, data_size(model))
        if more:
            row["khat band"] = float(diagnose_with_ratios(model, result.family, result.params,
                                                          jax.random.key(seed + 7), more)[0].khat)
    return row


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=("holdout", "suite"), default=None)
    parser.add_argument("--models", default=None)
    parser.add_argument("--seeds", default="0")
    args = parser.parse_args(argv)
    if args.models:
        names = args.models.split(",")
    elif args.set == "holdout":
        names = list(holdout.MODELS)
    else:
        from benchmarks.suite import MODELS
        names = sorted(MODELS)
    rows = []
    for name in names:
        loaded = load(name)  # one model per name: its seeds reuse the compiled programs
        for seed in (int(s) for s in args.seeds.split(",")):
            try:
                row = one(name, seed, loaded)
            except Exception as err:  # noqa: BLE001 - one failing model must not end the run
                print(f"{name:26s} s{seed} ERROR {type(err).__name__}: {str(err)[:200]}", flush=True)
                continue
            rows.append(row)
            lim = (f"limit {row['limit max|dmean|/sd']:.3f}" if "limit max|dmean|/sd" in row else "limit -")
            print(f"{name:26s} s{seed} NUTS {row['max|dmean|/sd']:.3f} maxlogsd {row['max|log sd|']:.2f} {lim} | "
                  f"khat {row['khat first']:.2f} (S {row['S first']}) -> {row['khat']:.2f} (S {row['S']}) | "
                  f"warned {'Y' if row['warned before'] else '-'} -> {'Y' if row['warned'] else '-'} | "
                  f"+logp {row['extra logp']} diag {row['diag s']:.2f}s fit {row['fit s']:.1f}s "
                  f"grads {row['grads']} | psis maxlogsd {row['psis max|log sd|']:.2f} "
                  f"(q {row['q max|log sd| (summary)']:.2f}) band {row['khat band']:.2f} "
                  f"[{row['other warnings']}]", flush=True)
    before = sum(r["warned before"] for r in rows)
    after = sum(r["warned"] for r in rows)
    band = sum(r["khat band"] >= 0.7 for r in rows)
    print(f"k-hat warnings: {before} before, {after} after, of {len(rows)} fits; {band} with the [0.5, inf) band")
    return rows


if __name__ == "__main__":
    main()
