"""The `advi-jax fit` sub-command: Bayesian logistic or Poisson regression by ADVI.

With no arguments it fits Bayesian logistic regression to the bundled breast-cancer data
(569 tumours, 30 standardised features) and prints the posterior summary. Outputs in `--out`
(default `advi_jax_out/fit`): `summary.csv`, `summary.json` (summary plus the fit's settings and
diagnostics), `draws.npz` (constrained posterior draws), `elbo.png` (the ELBO trace) and
`marginals.png` (the marginal posteriors).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from advi_jax.cli import UsageError, positive_float, positive_int

EXAMPLES = """examples:
  advi-jax fit                                           # logistic regression, bundled breast-cancer data
  advi-jax fit --model poisson                           # Poisson regression, bundled RAND HIE doctor visits
  advi-jax fit --family fullrank --steps 20000 --samples 4
  advi-jax fit --data patients.csv --target died         # your CSV (header row; other columns = features)
  advi-jax fit --model poisson --data claims.npz --target claims --exposure years
  advi-jax fit --float64 --seed 3 --out results/ --quiet
"""

DEFAULT_DATA = {"logistic": "breast_cancer", "poisson": "randhie"}


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `fit` on the `advi-jax` sub-command parsers."""
    from advi_jax.estimators import ESTIMATORS
    from advi_jax.families import FAMILIES

    p = subparsers.add_parser(
        "fit",
        help="fit a Bayesian logistic or Poisson regression by ADVI (bundled data by default)",
        description="Fit a Bayesian logistic or Poisson regression by ADVI and print the posterior summary. "
        "Features are standardised; coefficients have Normal(0, --prior-scale) priors.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", choices=("logistic", "poisson"), default="logistic",
                   help="likelihood: logistic (0/1 target) or poisson (count target) (default: logistic)")
    p.add_argument("--data", metavar="FILE",
                   help="a .csv (header row) or .npz file; default: the bundled dataset for --model")
    p.add_argument("--target", metavar="COLUMN", help="target column of --data (required with --data)")
    p.add_argument("--features", metavar="A,B,...", help="feature columns (default: all other columns)")
    p.add_argument("--exposure", metavar="COLUMN", help="poisson only: exposure column (offset log exposure)")
    p.add_argument("--family", choices=sorted(FAMILIES), default="fullrank",
                   help="variational family (default fullrank: regression posteriors are correlated, and with "
                   "K in the tens full-rank costs little; meanfield is faster but k-hat usually flags it)")
    p.add_argument("--estimator", choices=sorted(ESTIMATORS), default="reparam", help="gradient estimator")
    p.add_argument("--steps", type=positive_int, default=10_000, help="optimisation steps (default 10000)")
    p.add_argument("--samples", type=positive_int, default=1, help="Monte Carlo draws per step (default 1)")
    p.add_argument("--learning-rate", type=positive_float, default=None, help="Adam's step size (default 0.01)")
    p.add_argument("--prior-scale", type=positive_float, default=2.5, help="sd of the coefficients' prior")
    p.add_argument("--init", choices=("auto", "zero", "laplace", "random"), default="auto",
                   help="starting point: auto (Laplace start for K <= 1000), zero, laplace, random")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--draws", type=positive_int, default=4000, help="posterior draws saved and summarised")
    p.add_argument("--float64", action="store_true", help="compute in float64")
    p.add_argument("--out", default="advi_jax_out/fit", metavar="DIR", help="output folder (default advi_jax_out/fit)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def _load(args):
    from advi_jax import data as data_module

    if args.data is None:
        if args.target or args.features or args.exposure:
            raise UsageError("--target, --features and --exposure need --data FILE")
        name = DEFAULT_DATA[args.model]
        x, y, names = data_module.load_dataset(name)
        return x, y, names, None, f"bundled:{name}"
    if not args.target:
        raise UsageError("--data needs --target COLUMN (the column to predict)")
    path = Path(args.data)
    features = [f.strip() for f in args.features.split(",") if f.strip()] if args.features else None
    exposure = None
    if args.exposure:
        if args.model != "poisson":
            raise UsageError("--exposure applies to --model poisson only")
        if features is not None and args.exposure in features:
            raise UsageError(f"--exposure column {args.exposure!r} is also listed in --features")
    if path.suffix.lower() == ".npz":
        loader = data_module.load_npz
    elif path.suffix.lower() in (".csv", ".txt"):
        loader = data_module.load_csv
    else:
        raise UsageError(f"--data must be a .csv or .npz file, got {str(path)!r}")
    dataset = loader(path, target=args.target, features=features, kind=args.model)
    x, y, names = dataset
    if args.exposure:
        if args.exposure not in names:
            raise UsageError(f"--exposure column {args.exposure!r} not found; columns: {', '.join(names)}")
        j = names.index(args.exposure)
        exposure = x[:, j]
        keep = [i for i in range(len(names)) if i != j]
        x, names = x[:, keep], tuple(names[i] for i in keep)
    return x, y, names, exposure, str(path)


def _write_outputs(out: Path, result, draws, rows, info, plots: bool) -> list[Path]:
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    written = []
    with open(out / "summary.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    written.append(out / "summary.csv")
    with open(out / "summary.json", "w") as handle:
        json.dump({"fit": info, "summary": rows}, handle, indent=2)
    written.append(out / "summary.json")
    np.savez_compressed(out / "draws.npz", **{k: np.asarray(v) for k, v in draws.items()})
    written.append(out / "draws.npz")
    if plots:
        written.extend(_plots(out, result, rows))
    return written


def _plots(out: Path, result, rows) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    elbo = np.asarray(result.elbo, float)
    steps = np.arange(1, len(elbo) + 1)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, elbo, lw=0.5, alpha=0.35, color="tab:blue", label="per-step estimate")
    window = max(1, len(elbo) // 100)
    if len(elbo) >= window > 1:
        smooth = np.convolve(np.nan_to_num(elbo, nan=np.nanmean(elbo)), np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], smooth, color="tab:blue", lw=1.8, label=f"moving mean ({window} steps)")
    finite = elbo[np.isfinite(elbo)]
    if finite.size:
        tail = finite[len(finite) // 10:]
        lo, hi = np.percentile(tail, 1), np.max(tail)
        ax.set_ylim(lo - 0.1 * (hi - lo + 1e-9), hi + 0.1 * (hi - lo + 1e-9))
    ax.set_xlabel("step")
    ax.set_ylabel("ELBO")
    ax.set_title(f"ADVI ({result.family.name}, {result.estimator}): ELBO trace")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "elbo.png", dpi=120)
    plt.close(fig)

    labels = [r["parameter"] for r in rows]
    mean = np.array([r["mean"] for r in rows])
    lo, mid, hi = (np.array([r[q] for r in rows]) for q in ("5%", "50%", "95%"))
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(rows) + 1.2))
    y = np.arange(len(rows))[::-1]
    ax.hlines(y, lo, hi, color="tab:blue", lw=2, label="90% interval")
    ax.plot(mean, y, "o", color="black", ms=3.5, label="mean")
    ax.axvline(0.0, color="grey", lw=0.8, ls="--")
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xlabel("value (coefficients on the standardised-feature scale)")
    ax.set_title("Marginal posteriors (ADVI)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "marginals.png", dpi=120)
    plt.close(fig)
    return [out / "elbo.png", out / "marginals.png"]


def run(args) -> int:
    import warnings

    import jax

    if args.float64:
        jax.config.update("jax_enable_x64", True)
    import numpy as np

    import advi_jax as aj

    x, y, names, exposure, source = _load(args)
    if args.model == "logistic":
        model = aj.models.logistic_regression(x, y, prior_scale=args.prior_scale, feature_names=names)
    else:
        model = aj.models.poisson_regression(x, y, exposure=exposure, prior_scale=args.prior_scale,
                                             feature_names=names)
    init = None if args.init == "zero" else args.init
    if not args.quiet:
        print(f"advi-jax fit: {args.model} regression on {source} (N={x.shape[0]}, D={x.shape[1]}), "
              f"family={args.family}, {args.steps} steps", file=sys.stderr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", aj.DiagnosticWarning)  # the verdict is printed below
        result = aj.fit(model, key=jax.random.key(args.seed), family=args.family, num_steps=args.steps,
                        num_samples=args.samples, estimator=args.estimator, learning_rate=args.learning_rate,
                        init=init, progress=not args.quiet)
    key = jax.random.key(args.seed + 1)
    labels = aj.models.parameter_labels(model)
    labels = {k: v for k, v in labels.items() if k != "intercept"}
    rows = result.summary_rows(key, args.draws, labels)
    draws = {k: np.asarray(v) for k, v in result.sample(key, args.draws).items()}
    ordered = {k: draws[k] for k in model.names}
    print(result.summary(key, args.draws, labels))
    info = {
        "model": args.model, "data": source, "num_rows": int(x.shape[0]), "num_features": int(x.shape[1]),
        "family": args.family, "estimator": args.estimator, "num_steps": result.num_steps,
        "num_samples": args.samples, "seed": args.seed, "float64": bool(args.float64),
        "elbo_final": float(np.nanmean(result.elbo[-100:])), "khat": result.khat, "verdict": result.verdict,
        "iw_elbo": result.iw_elbo, "iw_elbo_se": result.iw_elbo_se, "stop_reason": result.stop_reason,
        "init": result.init_method, "seconds": result.seconds,
    }
    written = _write_outputs(Path(args.out), result, ordered, rows, info, not args.no_plots)
    if not args.quiet:
        print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    return 0
