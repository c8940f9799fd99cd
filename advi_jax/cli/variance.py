"""`advi-jax variance`: a gradient-estimator variance table and plots.

By default: Bayesian logistic regression on the bundled breast-cancer data (standardised
features), a short ADVI fit, then at the fitted variational parameters `--draws` independent
gradient draws of every estimator (`advi_jax.variance.gradient_variance`), and the variance of
each estimator recorded along a second fit (`track_gradient_variance`). Prints one row per
estimator and writes to `--out`:

* `variance_table.csv` and `variance.json` (the table, the settings, library versions);
* `variance_by_estimator.png`: the variance trace per estimator (log-scale bars);
* `variance_along_fit.png`: the variance trace of each estimator along the fit (log-scale lines).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
from typing import Any

import numpy as np

from advi_jax.cli import UsageError

MODELS = ("logistic", "poisson", "gaussian")
TABLE_COLUMNS = ("estimator", "variance_trace", "loc_variance", "scale_variance", "median_snr",
                 "seconds_per_gradient", "efficiency")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the `variance` sub-command."""
    from advi_jax.variance import DEFAULT_ESTIMATORS

    parser = subparsers.add_parser(
        "variance",
        help="gradient-estimator variance table and plots",
        description="Measure the variance, signal-to-noise ratio and cost of each ELBO gradient estimator "
                    "at the parameters of a short fit, and along a fit.",
    )
    parser.add_argument("--model", choices=MODELS, default="logistic",
                        help="logistic (default) or poisson regression, or a correlated Gaussian target")
    parser.add_argument("--data", default=None,
                        help="CSV file of features and target (default: bundled breast_cancer for logistic, "
                             "randhie for poisson)")
    parser.add_argument("--target", default=None, help="name of the target column in --data")
    parser.add_argument("--family", choices=("meanfield", "fullrank"), default="meanfield")
    parser.add_argument("--estimators", default=",".join(DEFAULT_ESTIMATORS),
                        help="comma-separated estimator names (default: all)")
    parser.add_argument("--draws", type=int, default=1000, help="gradient draws per estimator (default 1000)")
    parser.add_argument("--samples", type=int, default=2,
                        help="Monte Carlo samples inside each gradient (default 2; score_baseline needs >= 2)")
    parser.add_argument("--steps", type=int, default=1000, help="ADVI steps of the fits (default 1000)")
    parser.add_argument("--track-draws", type=int, default=100,
                        help="gradient draws per estimator at each record along the fit (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="advi_jax_out/variance", help="output folder for the table and figures")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    parser.set_defaults(func=run)
    return parser


# ----------------------------------------------------------------------------------------------
# Data and model


def _load_data(args) -> tuple[np.ndarray, np.ndarray, str]:
    from advi_jax.data import load_csv, load_dataset, load_npz

    kind = args.model
    if args.data is None:
        if args.target is not None:
            raise UsageError("--target needs --data")
        name = "breast_cancer" if kind == "logistic" else "randhie"
        x, y, _ = load_dataset(name)
        return np.asarray(x, np.float64), np.asarray(y, np.float64), name
    if args.target is None:
        raise UsageError("--data needs --target (the name of the target column)")
    loader = load_npz if str(args.data).lower().endswith(".npz") else load_csv
    x, y, _ = loader(args.data, args.target, kind=kind)
    return x, y, os.path.basename(args.data)


def _gaussian_target(dim: int = 10):
    """A correlated Gaussian target N(m, S) on R^dim (S with correlation 0.5 and scales 0.5..2)."""
    import jax.numpy as jnp

    import advi_jax as aj

    scales = np.geomspace(0.5, 2.0, dim)
    corr = 0.5 * np.ones((dim, dim)) + 0.5 * np.eye(dim)
    precision = jnp.asarray(np.linalg.inv(corr * np.outer(scales, scales)))
    mean = jnp.asarray(np.linspace(-1.0, 1.0, dim))

    def log_joint(params):
        d = params["x"] - mean
        return -0.5 * d @ precision @ d

    return aj.Model(log_joint, {"x": aj.real((dim,))})


def build_model(args) -> tuple[Any, str]:
    """The model named by `--model` on `--data` (or the bundled default) and a label for it."""
    if args.model == "gaussian":
        if args.data is not None or args.target is not None:
            raise UsageError("--model gaussian takes no --data/--target")
        return _gaussian_target(), "correlated Gaussian target (dim 10)"
    x, y, label = _load_data(args)
    from advi_jax import models

    build = models.logistic_regression if args.model == "logistic" else models.poisson_regression
    return build(x, y), f"{args.model} regression on {label}"


# ----------------------------------------------------------------------------------------------
# Output


def _rows(stats) -> list[dict]:
    return [{"estimator": name, "variance_trace": float(s.variance_trace), "loc_variance": s.loc_variance,
             "scale_variance": s.scale_variance, "median_snr": s.median_snr,
             "seconds_per_gradient": s.seconds_per_gradient, "efficiency": s.efficiency}
            for name, s in stats.items()]


def format_table(rows: list[dict]) -> str:
    """The rows as an aligned text table."""
    width = max(len("estimator"), *(len(r["estimator"]) for r in rows))
    heads = ("variance", "loc var", "scale var", "median SNR", "s/gradient", "efficiency")
    lines = [f"{'estimator':<{width}} " + " ".join(f"{h:>11}" for h in heads)]
    for r in rows:
        values = [r[c] for c in TABLE_COLUMNS[1:]]
        lines.append(f"{r['estimator']:<{width}} " + " ".join(f"{v:>11.4g}" for v in values))
    return "\n".join(lines)


def plot_variance_bars(rows: list[dict], path: str, title: str) -> None:
    """Log-scale bar chart of the variance trace per estimator (loc and scale parts beside it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["estimator"] for r in rows]
    position = np.arange(len(names))
    floor = np.finfo(np.float32).tiny
    fig, ax = plt.subplots(figsize=(7, 4))
    for offset, column, label in ((-0.27, "variance_trace", "total"), (0.0, "loc_variance", "loc"),
                                  (0.27, "scale_variance", "scale")):
        ax.bar(position + offset, [max(r[column], floor) for r in rows], width=0.27, label=label)
    ax.set_yscale("log")
    ax.set_xticks(position, names, rotation=20)
    ax.set_ylabel("trace of gradient covariance")
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_variance_along_fit(trace, path: str, title: str) -> None:
    """Log-scale lines of each estimator's variance trace against the optimisation step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.asarray(trace.steps)
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, values in trace.variance_trace.items():
        ax.plot(steps, np.maximum(np.asarray(values), np.finfo(np.float32).tiny), marker=".", label=name)
    ax.set_yscale("log")
    ax.set_xlabel("ADVI step")
    ax.set_ylabel("trace of gradient covariance")
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _versions() -> dict[str, str]:
    import jax

    import advi_jax

    return {"advi_jax": advi_jax.__version__, "jax": jax.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "backend": jax.default_backend()}


# ----------------------------------------------------------------------------------------------
# The command


def _check_args(args) -> tuple[str, ...]:
    from advi_jax.estimators import ESTIMATORS, min_num_samples

    names = tuple(n.strip() for n in args.estimators.split(",") if n.strip())
    if not names:
        raise UsageError(f"--estimators is empty; choose from {','.join(ESTIMATORS)}")
    unknown = [n for n in names if n not in ESTIMATORS]
    if unknown:
        raise UsageError(f"unknown estimator(s) {','.join(unknown)}; choose from {','.join(ESTIMATORS)}")
    if args.draws < 2:
        raise UsageError(f"--draws must be >= 2, got {args.draws}")
    if args.track_draws < 2:
        raise UsageError(f"--track-draws must be >= 2, got {args.track_draws}")
    if args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    need = max(min_num_samples(n) for n in names)
    if args.samples < need:
        raise UsageError(f"--samples must be >= {need} for these estimators, got {args.samples}")
    return names


def run(args) -> int:
    """Run `advi-jax variance`; returns the exit status."""
    names = _check_args(args)
    model, label = build_model(args)

    import jax

    from advi_jax.variance import gradient_variance, track_gradient_variance

    say = (lambda *a: None) if args.quiet else print  # noqa: E731
    key = jax.random.key(args.seed)
    measure_key, track_key = jax.random.split(key)
    say(f"{label}: {args.family} family, dim {model.dim}; fitting {args.steps} steps "
        f"(gradient variance recorded every {max(1, args.steps // 20)} steps) ...")
    # The tracked fit is the short fit: the table is measured at its final parameters.
    trace = track_gradient_variance(model, args.family, track_key, args.steps, every=max(1, args.steps // 20),
                                    estimators=names, num_draws=args.track_draws, num_samples=args.samples)
    stats = gradient_variance(model, args.family, trace.params, measure_key, names, args.draws, args.samples)
    rows = _rows(stats)
    say(f"\ngradient variance at the fitted q ({args.draws} draws, {args.samples} samples per gradient):")
    say(format_table(rows))

    os.makedirs(args.out, exist_ok=True)
    table_path = os.path.join(args.out, "variance_table.csv")
    with open(table_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=TABLE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    along = {name: np.asarray(v).tolist() for name, v in trace.variance_trace.items()}
    record = {"model": label, "family": args.family, "dim": model.dim, "draws": args.draws,
              "samples": args.samples, "steps": args.steps, "seed": args.seed, "table": rows,
              "along_fit": {"steps": np.asarray(trace.steps).tolist(), "variance_trace": along,
                            "draws": args.track_draws},
              "versions": _versions()}
    with open(os.path.join(args.out, "variance.json"), "w") as handle:
        json.dump(record, handle, indent=2)
    title = f"{label}, {args.family}, {args.samples} samples/gradient"
    bars = os.path.join(args.out, "variance_by_estimator.png")
    lines = os.path.join(args.out, "variance_along_fit.png")
    plot_variance_bars(rows, bars, title)
    plot_variance_along_fit(trace, lines, title)
    say(f"\nwrote {table_path}, {bars}, {lines}")
    return 0
