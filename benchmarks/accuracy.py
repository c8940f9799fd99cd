"""Accuracy of ADVI against NUTS reference posteriors: advi_jax and NumPyro's autoguides on one suite.

For every model of `benchmarks.suite` that has a stored reference (`benchmarks/references/`,
made by `python -m benchmarks.make_references`) and every method:

* advi_jax: `aj.fit(aj.from_numpyro(fn, *args), ...)` for each family x estimator in `--configs`
  (default mean-field and full-rank, each with the reparameterisation and STL estimators from
  `init=None` (zero in R^K), plus both families with `init="auto"`, `fit`'s default since
  the Laplace-whitened start landed: the Laplace approximation for K <= 1000); `init` is passed
  explicitly so that a change of `fit`'s default does not change the comparison;
* NumPyro: `SVI(model, AutoDiagonalNormal / AutoMultivariateNormal, optimizer, Trace_ELBO()).run`,
  NumPyro's default initialisation (uniform in (-2, 2) in unconstrained space, scale 0.1),

all with the same number of steps, one draw per step and the same optimizer (advi_jax's default:
Adam 1e-2, constant then cosine-decayed over the second half). Then from 4000 draws of q, per
scalar parameter in the constrained space (parameters constant under the posterior, such as the
(0, 0) entry of a correlation Cholesky factor, are skipped):

* `max |mean err| / sd`: the largest |E_q - E_ref| / sd_ref over the model's parameters;
* `med |log sd ratio|`: the median of |log(sd_q / sd_ref)|;
* `khat`: PSIS k-hat of log p - log q over 4096 draws (for NumPyro's guides computed here with
  `aj.psis` from NumPyro's own `potential_energy` and the guide's `log_prob`);
* `grad evals`: steps x draws per step; `seconds`: wall time of the fit, compilation included.

Usage:
  python -m benchmarks.accuracy --quick
  python -m benchmarks.accuracy --steps 10000 --models eight_schools_centered,lkj_mvn
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import advi_jax as aj  # noqa: E402
from advi_jax.optim import default_optimizer  # noqa: E402
from benchmarks.common import machine, markdown_table, versions, write_json  # noqa: E402
from benchmarks.make_references import load_reference  # noqa: E402
from benchmarks.suite import MODELS, QUICK_MODELS, available_models, flatten_draws  # noqa: E402

NUM_DRAWS = 4000
NUM_KHAT_DRAWS = 4096
LEARNING_RATE = 0.01

# (family, estimator, init) for advi_jax; init None means zero in R^K (stated explicitly).
DEFAULT_CONFIGS = ("meanfield:reparam", "meanfield:stl", "fullrank:reparam", "fullrank:stl",
                   "meanfield:reparam:auto", "fullrank:reparam:auto")
QUICK_CONFIGS = ("meanfield:reparam", "meanfield:stl", "fullrank:reparam", "fullrank:stl")
NUMPYRO_GUIDES = ("AutoDiagonalNormal", "AutoMultivariateNormal")


def compare(draws: dict[str, np.ndarray], reference: dict) -> dict:
    """Mean and sd errors of flattened draws (label -> (n,)) against a reference summary."""
    mean_err, log_sd = [], []
    for label, ref in reference["params"].items():
        if not ref["sd"] > 1e-8:
            continue
        x = np.asarray(draws[label], np.float64)
        mean_err.append(abs(x.mean() - ref["mean"]) / ref["sd"])
        log_sd.append(abs(np.log(x.std() / ref["sd"])))
    return {"max |mean err| / sd": float(np.max(mean_err)), "med |log sd ratio|": float(np.median(log_sd)),
            "worst param": list(p for p, r in reference["params"].items() if r["sd"] > 1e-8)[int(np.argmax(mean_err))]}


def run_advi_jax(suite_model, family, estimator, init, steps, seed):
    model = aj.from_numpyro(suite_model.fn, *suite_model.args)
    optimizer = default_optimizer(LEARNING_RATE, steps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # k-hat warnings: the k-hat is reported in the table
        result = aj.fit(model, key=jax.random.key(seed), family=family, estimator=estimator, num_steps=steps,
                        num_samples=1, optimizer=optimizer, init=init, progress=False,
                        num_diagnostic_draws=NUM_KHAT_DRAWS)
    draws = jax.device_get(result.sample(jax.random.key(seed + 1), NUM_DRAWS))
    return {"draws": flatten_draws(draws), "khat": float(result.khat), "grad evals": int(result.num_gradient_evals),
            "seconds": float(result.seconds)}


def run_numpyro(suite_model, guide_name, steps, seed):
    from numpyro.infer import SVI, Trace_ELBO, autoguide
    from numpyro.infer.util import potential_energy

    fn, args = suite_model.fn, suite_model.args
    guide = getattr(autoguide, guide_name)(fn)
    svi = SVI(fn, guide, default_optimizer(LEARNING_RATE, steps), Trace_ELBO())
    start = time.perf_counter()
    out = svi.run(jax.random.key(seed), steps, *args, progress_bar=False)
    params = jax.block_until_ready(out.params)
    seconds = time.perf_counter() - start
    draws = jax.device_get(guide.sample_posterior(jax.random.key(seed + 1), params, sample_shape=(NUM_DRAWS,)))
    # k-hat of log p - log q in NumPyro's own unconstrained space (its bijectors, its Jacobians).
    posterior = guide.get_posterior(params)
    latent = posterior.sample(jax.random.key(seed + 2), (NUM_KHAT_DRAWS,))
    log_q = posterior.log_prob(latent)
    if log_q.ndim > 1:  # AutoDiagonalNormal's posterior is a batch of independent Normals
        log_q = log_q.sum(-1)
    log_p = jax.vmap(lambda z: -potential_energy(fn, args, {}, guide._unpack_latent(z)))(latent)
    khat = float(aj.psis(log_p - log_q).khat)
    return {"draws": flatten_draws({k: v for k, v in draws.items() if k in _latent_sites(fn, args)}),
            "khat": khat, "grad evals": steps, "seconds": seconds}


def _latent_sites(fn, args):
    return set(aj.from_numpyro(fn, *args).names)


def run(model_names, configs, guides, steps, seed=0, log=print) -> list[dict]:
    rows = []
    for name, suite_model in available_models(model_names).items():
        reference = load_reference(name)
        if reference is None:
            log(f"{name}: no reference (run python -m benchmarks.make_references --models {name}); skipped")
            continue
        methods = []
        for config in configs:
            family, estimator, *rest = config.split(":")
            init = rest[0] if rest else None
            label = f"advi_jax {family} {estimator} init={init or 'zero'}"
            methods.append((label, lambda f=family, e=estimator, i=init: run_advi_jax(suite_model, f, e, i, steps, seed)))
        for guide in guides:
            methods.append((f"numpyro {guide}", lambda g=guide: run_numpyro(suite_model, g, steps, seed)))
        for label, method in methods:
            try:
                out = method()
                row = {"model": name, "method": label, **compare(out["draws"], reference),
                       "khat": out["khat"], "grad evals": out["grad evals"], "seconds": out["seconds"]}
            except Exception as err:  # noqa: BLE001 - one failing method must not end the suite
                row = {"model": name, "method": label, "error": f"{type(err).__name__}: {err}"[:300]}
            row["reference rhat ok"] = reference["rhat_ok"]
            rows.append(row)
            log({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()})
    return rows


def summary_rows(rows: list[dict]) -> list[dict]:
    """Per method: median and worst over models of each error, and how many k-hats are < 0.7."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        ok = [r for r in rows if r["method"] == method and "error" not in r]
        if not ok:
            continue
        mean_err = np.array([r["max |mean err| / sd"] for r in ok])
        sd_err = np.array([r["med |log sd ratio|"] for r in ok])
        khat = np.array([r["khat"] for r in ok])
        out.append({"method": method, "models": len(ok),
                    "median max|mean err|/sd": float(np.median(mean_err)), "worst max|mean err|/sd": float(mean_err.max()),
                    "median med|log sd ratio|": float(np.median(sd_err)),
                    "k-hat < 0.7": f"{int((khat < 0.7).sum())}/{len(ok)}",
                    "total seconds": float(sum(r["seconds"] for r in ok))})
    return out


DETAIL_COLUMNS = ["model", "method", "max |mean err| / sd", "med |log sd ratio|", "khat", "grad evals", "seconds",
                  "worst param"]
SUMMARY_COLUMNS = ["method", "models", "median max|mean err|/sd", "worst max|mean err|/sd",
                   "median med|log sd ratio|", "k-hat < 0.7", "total seconds"]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"models {QUICK_MODELS}, 2000 steps, 4 configs")
    parser.add_argument("--models", default=None, help=f"comma-separated, from {sorted(MODELS)}")
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                        help="family:estimator[:init] entries for advi_jax")
    parser.add_argument("--guides", default=",".join(NUMPYRO_GUIDES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/accuracy.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.models = args.models or ",".join(QUICK_MODELS)
        args.steps = 2000
        args.configs = ",".join(QUICK_CONFIGS)
    start = time.perf_counter()
    rows = run(args.models.split(",") if args.models else None, args.configs.split(","),
               [g for g in args.guides.split(",") if g], args.steps, args.seed,
               log=lambda r: print(r, file=sys.stderr, flush=True))
    summary = summary_rows(rows)
    detail_table = markdown_table(rows, DETAIL_COLUMNS + (["error"] if any("error" in r for r in rows) else []))
    summary_table = markdown_table(summary, SUMMARY_COLUMNS)
    text = (f"### Accuracy against NUTS ({args.steps} steps, 1 draw per step, Adam 1e-2 with cosine decay)\n\n"
            f"{summary_table}\n\nPer model:\n\n{detail_table}\n")
    print(text)
    payload = {"benchmark": "accuracy", "versions": versions(), "machine": machine(), "args": vars(args),
               "seconds": time.perf_counter() - start, "rows": rows, "summary": summary, "markdown": text}
    write_json(args.out, payload)
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(text)
    return payload


if __name__ == "__main__":
    main()
