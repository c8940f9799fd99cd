"""Why the default's averaged ADVI does or does not stop: its stopping rule's statistics at every closed batch.

The default `aj.fit` (`method="auto"`) runs averaged natural-gradient ADVI (`advi_jax.vi._advi_averaged`),
stopped when, over every coordinate of q (means in sd of q, sds as log ratios, whitened coordinates),
the MCSE of the later-half average is under `tol_mcse`, its drift (last quarter's mean less the first
quarter's) under `tol_drift` and the averaged Newton step of the mean, less twice its MCSE, under
`tol_distance`. This script runs `aj.fit` with the module's `_TRACE` hook set (a `jax.debug.callback` at
every closed batch; the program is otherwise the default's) and prints, every `--every` tests and at every
change of phase: the step, the phase's step size and batch length, the batches in the window, each test's
largest value and its coordinate ("m12": the mean of whitened coordinate 12, "s3": its log sd), and which
tests fail. `--out` saves every record (numpy .npz) for further analysis.

Usage:
  python -m benchmarks.bench_stop_trace --models births_lognormal_ts --seed 0
  python -m benchmarks.bench_stop_trace --models radon_varying_slopes --every 8 --out /tmp/rvs.npz
"""

from __future__ import annotations

import argparse
import os
import warnings

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import advi_jax as aj  # noqa: E402
import advi_jax.vi._advi_averaged as averaged  # noqa: E402
from advi_jax.run import choose  # noqa: E402
from benchmarks.suite import available_models  # noqa: E402


def coordinate(i: int, k: int) -> str:
    """A whitened coordinate's label: "m<i>" (mean) or "s<i>" (log sd)."""
    return f"m{i}" if i < k else f"s{i - k}"


def traced_fit(model, seed: int, **kwargs) -> tuple[list[dict], object, list[str]]:
    """`aj.fit(model)` at `seed` with the stopping rule traced: (records, result, warnings' first words)."""
    records: list[dict] = []
    averaged._TRACE = lambda d: records.append(jax.tree_util.tree_map(np.asarray, d))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = aj.fit(model, key=jax.random.key(seed), progress=False, **kwargs)
    finally:
        averaged._TRACE = None
    return records, result, [str(w.message)[:60] for w in caught]


def describe(rec: dict, stop) -> str:
    """One closed batch's test in a line."""
    s, newton, tail, first, last = rec["s"], rec["newton"], rec["tail"], rec["first"], rec["last"]
    k = newton.shape[1]
    h = tail.sum()
    se = s[tail].std(0, ddof=1) / np.sqrt(h) if h > 1 else np.zeros(s.shape[1])
    drifts = s[last].mean(0) - s[first].mean(0)
    step_mean = newton[tail].mean(0)
    step_se = newton[tail].std(0, ddof=1) / np.sqrt(h) if h > 1 else np.zeros(k)
    excess = np.abs(step_mean) - 2 * step_se
    i_se, i_d, i_x = int(np.argmax(se)), int(np.argmax(np.abs(drifts))), int(np.argmax(excess))
    fails = [name for name, bad in (("steps", rec["n"] * rec["batch_steps"] < rec["min_phase_steps"]),
                                    ("mcse", rec["mcse"] >= stop.tol_mcse), ("drift", rec["drift"] >= stop.tol_drift),
                                    ("dist", rec["excess"] >= stop.tol_distance),
                                    ("transit", rec["transit"] not in (0, 2))) if bad]
    n_se = int(np.sum(se >= stop.tol_mcse))
    n_d = int(np.sum(np.abs(drifts) >= stop.tol_drift))
    return (f"step {int(rec['step']) + 1:6d} lr {float(rec['lr']):.4f} halv {int(rec['halvings'])} "
            f"tr {int(rec['transit'])} "
            f"batch {int(rec['batch_steps']):4d} n {int(rec['n']):2d} | mcse {float(rec['mcse']):.4f} "
            f"({coordinate(i_se, k)}, {n_se} over) drift {float(rec['drift']):.4f} ({coordinate(i_d, k)}, {n_d} over) "
            f"dist-2se {float(rec['excess']):.4f} (m{i_x}) | {'PASS' if rec['ok'] else 'fail: ' + ','.join(fails)}"
            + (f" change {float(rec['change']):.3f}" if np.isfinite(rec["change"]) else ""))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="births_lognormal_ts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--every", type=int, default=4, help="print every this many tests (and phase changes)")
    parser.add_argument("--out", default=None, help="save every record here (.npz)")
    args = parser.parse_args(argv)
    stop = choose.AUTO_ADVI.stop
    for name, suite_model in available_models(args.models.split(",")).items():
        model = aj.from_numpyro(suite_model.fn, *suite_model.args)
        records, result, said = traced_fit(model, args.seed)
        print(f"== {name} K {model.dim} seed {args.seed}: {len(records)} tests, {int(result.num_steps)} steps, "
              f"{int(result.num_grad_evals)} gradients; {result.stop_reason[:90]}; warnings {said}", flush=True)
        last_key = None
        for j, rec in enumerate(records):
            key = (float(rec["lr"]), int(rec["halvings"]), int(rec["transit"]), int(rec["batch_steps"]))
            if j % args.every == 0 or key != last_key or rec["ok"] or j == len(records) - 1:
                print(describe(rec, stop))
            last_key = key
        if args.out:
            stacked = {f: np.stack([r[f] for r in records]) for f in records[0] if records[0][f].ndim == 0}
            stacked.update({f"{f}_{j}": r[f] for j, r in enumerate(records) for f in ("s", "newton", "tail", "first",
                                                                                     "last", "summary")})
            np.savez_compressed(args.out.replace(".npz", f"_{name}.npz"), **stacked)


if __name__ == "__main__":
    main()
