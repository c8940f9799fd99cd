"""DADVI on the suite's posteriors: fixed draws against draw doubling, mean-field (q, and its
linear-response Gaussian N(m, Sigma_LR) with its own k-hat) and full-rank, against the NUTS references
and the family limits.

Each configuration runs through `aj.fit(method="dadvi", options=...)` (the package's driver; wall
time includes compilation and the PSIS diagnostics). Rows give max |mean error| / sd and median |log
sd ratio| against NUTS (`vs NUTS`) and against the stored full-rank family limit (`vs limit`,
`benchmarks/references/family_limit/`), the final number of draws M, the MC error estimate
(max_k mc_se_k / sd_k), why the draws stopped, gradient evaluations (HVPs count 2 each, the MC
checks included) and wall time.

Usage:
  python -m benchmarks.bench_dadvi --models breast_cancer_logistic,eight_schools_noncentered
  python -m benchmarks.bench_dadvi --configs fr --fr-draws 100 --max-doublings 5 --x64   # a deterministic
                                                                                  # family-limit estimate
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import advi_jax as aj  # noqa: E402
from advi_jax.vi import dadvi  # noqa: E402
from benchmarks.accuracy import compare  # noqa: E402
from benchmarks.common import versions, write_json  # noqa: E402
from benchmarks.family_limit import load_family_limit  # noqa: E402
from benchmarks.suite import available_models, flatten_draws  # noqa: E402

NUM_DRAWS = 4000
REFERENCES = os.path.join(os.path.dirname(__file__), "references")
DEFAULT_MODELS = ("breast_cancer_logistic", "eight_schools_noncentered", "radon_noncentered")


def _constrained(model, zeta) -> dict:
    return flatten_draws(jax.device_get(jax.vmap(model.to_constrained)(jnp.asarray(zeta))))


def run_config(model, family: str, options: dadvi.Options, seed: int, num_steps: int,
               num_draws: int = NUM_DRAWS) -> tuple[dict, dict]:
    """One DADVI fit; (draws by label for q and, for mean-field, its linear-response Gaussian
    (`Result.linear_response`); cost and draws report for each, with its own k-hat)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # k-hat is reported
        start = time.perf_counter()
        result = aj.fit(model, key=jax.random.key(seed), family=family, method="dadvi", options=options,
                        num_steps=num_steps, progress=False)
        seconds = time.perf_counter() - start
    ex = result.extras
    info = {"M": int(ex["num_draws"]), "mc err / sd": float(ex["mc_rel_error"]), "reason": dadvi.describe(ex),
            "grad evals": int(result.num_grad_evals), "lr grad evals": int(ex["lr_grad_evals"]),
            "steps": int(result.num_steps), "seconds": seconds, "compile s": float(result.report.compile_seconds),
            "khat": float(result.khat), "stop": result.stop_reason}
    draws = {"q": _constrained(model, result.sample_unconstrained(jax.random.key(seed + 1), num_draws))}
    info = {"q": info}
    if family == "meanfield":  # the linear-response Gaussian N(m, Sigma_LR) with its own k-hat
        lr = result.linear_response(key=jax.random.key(seed + 3))
        draws["LR"] = _constrained(model, lr.sample_unconstrained(jax.random.key(seed + 2), num_draws))
        info["LR"] = {**info["q"], "khat": float(lr.khat)}
    return draws, info


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--configs", default="mf_fixed,mf,fr", help="mf_fixed (M=30, no doubling), mf, fr")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mc-tol", type=float, default=dadvi.Options().mc_tol)
    parser.add_argument("--max-doublings", type=int, default=dadvi.Options().max_doublings)
    parser.add_argument("--fr-draws", type=int, default=None, help="full-rank starting M (default max(30, 2K): near M = K the fixed-draw objective is ill-conditioned)")
    parser.add_argument("--num-steps", type=int, default=400)
    parser.add_argument("--moment-draws", type=int, default=NUM_DRAWS,
                        help="draws of q the moments are computed from (MC error sd / sqrt of it)")
    parser.add_argument("--x64", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    rows = []
    for name, suite_model in available_models(args.models.split(",")).items():
        with open(os.path.join(REFERENCES, f"{name}.json")) as f:
            reference = json.load(f)
        limit = load_family_limit(name)
        model = aj.from_numpyro(suite_model.fn, *suite_model.args)
        k = model.dim
        configs = {
            "mf_fixed": ("meanfield", dadvi.Options(mc_tol=None)),
            "mf": ("meanfield", dadvi.Options(mc_tol=args.mc_tol, max_doublings=args.max_doublings)),
            "fr": ("fullrank", dadvi.Options(num_draws=args.fr_draws or max(30, 2 * k), mc_tol=args.mc_tol,
                                             max_doublings=args.max_doublings)),
        }
        for config in args.configs.split(","):
            family, options = configs[config]
            draws, infos = run_config(model, family, options, args.seed, args.num_steps, args.moment_draws)
            for which, d in draws.items():
                info = infos[which]
                nuts = compare(d, reference)
                row = {"model": name, "K": k, "config": config, "sds": which,
                       "vs NUTS": [nuts["max |mean err| / sd"], nuts["med |log sd ratio|"]], **info}
                if limit is not None:
                    lim = compare(d, limit)
                    row["vs limit"] = [lim["max |mean err| / sd"], lim["med |log sd ratio|"]]
                rows.append(row)
                vl = row.get("vs limit", [float("nan")] * 2)
                print(f"{name:25s} K={k:3d} {config:8s} {which:2s} NUTS {row['vs NUTS'][0]:6.3f} {row['vs NUTS'][1]:6.3f}"
                      f"  limit {vl[0]:6.3f} {vl[1]:6.3f}  M={info['M']:5d} mc {info['mc err / sd']:6.3f}"
                      f"  grads {info['grad evals']:9d}  {info['seconds']:6.1f} s (compile {info['compile s']:.1f})"
                      f"  khat {info['khat']:.2f}  [{info['reason']}; {info['stop']}]", flush=True)
    if args.out:
        write_json(args.out, {"rows": rows, "versions": versions(), "args": vars(args)})
    return rows


if __name__ == "__main__":
    main()
