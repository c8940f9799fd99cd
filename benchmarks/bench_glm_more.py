"""Probit and negative-binomial ready GLMs: `glm_exact` and stochastic ADVI against NUTS, one run.

For `randhie_negbin` (bundled RAND HIE doctor visits, 2000 rows, over-dispersed) and `wells_probit`
(arsenic wells, 3020 rows), each family (mean-field, full-rank) and each method (`glm_exact`, and
`advi` with 10,000 steps), prints the wall time of one `aj.fit` call (compile included), the steps,
and the largest / mean |mean error| in NUTS posterior sds and |sd ratio - 1| against the NUTS
references in `benchmarks/references` (the negative binomial's dispersion compared as log phi).
Run: `ADVI_JAX_DATA=../shared/data python -m benchmarks.bench_glm_more`.
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np

import advi_jax as aj
from benchmarks.suite import MODELS

REFS = os.path.join(os.path.dirname(__file__), "references")


def errors(model, ref, result, family, labels):
    """(max, mean) |mean error| / sd and (max, mean) |sd ratio - 1| against a NUTS reference."""
    fam = aj.families.get_family(family)
    mean = np.asarray(result.params.loc, np.float64)
    sd = np.sqrt(np.asarray(fam.variance(result.params), np.float64))
    entries = {**ref["params"], **ref.get("derived", {})}  # log phi is a derived (deterministic) site
    e = np.abs([((mean[k] - entries[lab]["mean"]) / entries[lab]["sd"], sd[k] / entries[lab]["sd"] - 1)
                for k, lab in enumerate(labels)])
    return e[:, 0].max(), e[:, 0].mean(), e[:, 1].max(), e[:, 1].mean()


def cases():
    sm = MODELS["randhie_negbin"]()
    yield ("negbin", aj.models.negbin_regression(np.asarray(sm.args[0]), np.asarray(sm.args[1])),
           json.load(open(os.path.join(REFS, "randhie_negbin.json"))),
           ["intercept"] + [f"beta[{j}]" for j in range(9)] + ["log_phi"])
    sm = MODELS["wells_probit"]()
    yield ("probit", aj.models.probit_regression(np.asarray(sm.args[0]), np.asarray(sm.args[1])),
           json.load(open(os.path.join(REFS, "wells_probit.json"))), ["intercept"] + [f"beta[{j}]" for j in range(4)])


def main() -> None:
    print("model   family     method     seconds  steps  mean err max/avg (sd)  sd ratio-1 max/avg")
    for tag, model, ref, labels in cases():
        for family in ("fullrank", "meanfield"):
            for method, kw in (("glm_exact", {}), ("advi", {"num_steps": 10_000})):
                start = time.perf_counter()
                res = aj.fit(model, key=jax.random.key(0), family=family, method=method, progress=False,
                             diagnostics=False, warn=False, **kw)
                seconds = time.perf_counter() - start
                e = errors(model, ref, res, family, labels)
                print(f"{tag:7s} {family:10s} {method:10s} {seconds:7.1f} {res.report.num_steps:6d}  "
                      f"{e[0]:.3f} / {e[1]:.3f}            {e[2]:.3f} / {e[3]:.3f}", flush=True)


if __name__ == "__main__":
    main()
