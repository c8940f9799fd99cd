"""`advi-jax variance`: a gradient-estimator variance table and plots, each estimate with its interval.

A thin layer over `advi_jax.gradient_variance`. By default: Bayesian logistic regression on the
bundled breast-cancer data, a short ADVI fit during which every estimator's variance is recorded
(`track_gradient_variance`), then `--draws` gradient draws of every estimator at the fitted
parameters (`gradient_variance`). Prints the table and writes to `--out`:

* `variance_table.csv` and `variance.json` (the table with 95% jackknife intervals, the
  settings, library versions);
* `variance_by_estimator.png` (`plot_variance_bars`), `variance_snr.png` (`plot_snr`) and
  `variance_along_fit.png` (`plot_variance_along_fit`, intervals as bands).

Every error a user can cause (an unknown estimator, too few samples for one, a missing file or
column, an --out folder that cannot be written) exits with status 2 and one line, before any
computation.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import warnings
from typing import Any

import numpy as np

from advi_jax.cli import UsageError, positive_int, seed_int

MODELS = ("logistic", "poisson", "gaussian")

EXAMPLES = """examples:
  advi-jax variance                                       # logistic regression, bundled data
  advi-jax variance --model poisson --family fullrank     # Poisson regression, bundled randhie data
  advi-jax variance --model poisson --data claims.csv --target claims --exposure years
  advi-jax variance --estimators reparam,stl --samples 1 --draws 2000
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the `variance` sub-command."""
    from advi_jax.estimators import ESTIMATORS

    parser = subparsers.add_parser(
        "variance",
        help="gradient-estimator variance table and plots",
        description="Measure the variance, signal-to-noise ratio and cost of each ELBO gradient estimator "
                    "(with 95% intervals) along a short fit and at its final parameters.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", choices=MODELS, default="logistic",
                        help="logistic or poisson regression, or a correlated 10-D Gaussian target (default logistic)")
    parser.add_argument("--data", default=None, metavar="FILE",
                        help="CSV or .npz file of features and target (default: bundled breast_cancer for logistic, "
                             "randhie for poisson)")
    parser.add_argument("--target", default=None, metavar="COLUMN", help="the target column of --data")
    parser.add_argument("--features", default=None, metavar="A,B,...",
                        help="feature columns of --data (default: all other columns); columns left out may hold text")
    parser.add_argument("--dropna", action="store_true",
                        help="drop rows with missing values in the used columns (default: stop with an error "
                             "naming the rows and columns)")
    parser.add_argument("--exposure", default=None, metavar="COLUMN",
                        help="poisson only: exposure column of --data (enters as offset log exposure, "
                             "not as a feature)")
    parser.add_argument("--family", choices=("meanfield", "fullrank"), default="meanfield",
                        help="variational family (default meanfield)")
    parser.add_argument("--estimators", default=",".join(ESTIMATORS),
                        help=f"comma-separated estimator names (default: all: {','.join(ESTIMATORS)})")
    parser.add_argument("--draws", type=positive_int, default=1000,
                        help="gradient draws per estimator at the fitted q (>= 2, default 1000)")
    parser.add_argument("--samples", type=positive_int, default=None,
                        help="Monte Carlo samples inside each gradient, shared by all estimators (default: the "
                             "smallest count all accept: 2 with score_baseline, else 1)")
    parser.add_argument("--steps", type=positive_int, default=1000, help="ADVI steps of the fit (default 1000)")
    parser.add_argument("--track-draws", type=positive_int, default=100,
                        help="gradient draws per estimator at each record along the fit (>= 2, default 100)")
    parser.add_argument("--seed", type=seed_int, default=0, help="random seed (default 0)")
    parser.add_argument("--out", default="advi_jax_out/variance", metavar="DIR",
                        help="output folder (default advi_jax_out/variance)")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    parser.set_defaults(func=run)
    return parser


# ----------------------------------------------------------------------------------------------
# Data and model


def _load_data(args) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, str]:
    from advi_jax.data import MissingValuesWarning, load_csv, load_dataset, load_npz

    if args.data is None:
        if args.target is not None or args.exposure is not None or args.features is not None or args.dropna:
            raise UsageError("--target, --features, --dropna and --exposure need --data FILE")
        name = "breast_cancer" if args.model == "logistic" else "randhie"
        x, y, _ = load_dataset(name)
        return np.asarray(x, np.float64), np.asarray(y, np.float64), None, name
    if args.target is None:
        raise UsageError("--data needs --target COLUMN (the column to predict)")
    if not os.path.isfile(args.data):
        raise UsageError(f"--data file {args.data!r} not found")
    suffix = os.path.splitext(str(args.data))[1].lower()
    if suffix not in (".csv", ".txt", ".npz"):
        raise UsageError(f"--data must be a .csv or .npz file, got {args.data!r}")
    loader = load_npz if suffix == ".npz" else load_csv
    features = None
    if args.features is not None:
        features = [f.strip() for f in args.features.split(",") if f.strip()]
        if args.exposure is not None:
            if args.exposure in features:
                raise UsageError(f"--exposure column {args.exposure!r} is also listed in --features")
            features.append(args.exposure)  # loaded with the features, then taken out as the offset
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MissingValuesWarning)
        x, y, names = loader(args.data, args.target, features=features, kind=args.model, dropna=args.dropna)
    for w in caught:
        if issubclass(w.category, MissingValuesWarning) and not args.quiet:
            print(f"advi-jax variance: {w.message}", file=sys.stderr)
    exposure = None
    if args.exposure is not None:
        if args.exposure not in names:
            raise UsageError(f"--exposure column {args.exposure!r} not found; columns: {', '.join(names)}")
        j = list(names).index(args.exposure)
        exposure = np.asarray(x[:, j], np.float64)
        if not np.all(exposure > 0):
            raise UsageError(f"--exposure column {args.exposure!r} must be positive; row {int(np.argmin(exposure > 0))} "
                             f"has {exposure[np.argmin(exposure > 0)]}")
        x = np.delete(np.asarray(x), j, axis=1)
    return np.asarray(x, np.float64), np.asarray(y, np.float64), exposure, os.path.basename(args.data)


def _gaussian_target(dim: int = 10):
    """A correlated Gaussian target N(m, S) on R^dim (correlation 0.5, scales 0.5..2)."""
    import jax.numpy as jnp

    import advi_jax as aj

    scales = np.geomspace(0.5, 2.0, dim)
    cov = (0.5 * np.ones((dim, dim)) + 0.5 * np.eye(dim)) * np.outer(scales, scales)
    chol = jnp.asarray(np.linalg.cholesky(cov))
    mean = jnp.asarray(np.linspace(-1.0, 1.0, dim))

    def log_joint(params):
        import jax.scipy.linalg as jsl

        white = jsl.solve_triangular(chol, params["x"] - mean, lower=True)
        return -0.5 * white @ white

    return aj.Model(log_joint, {"x": aj.real((dim,))})


def build_model(args) -> tuple[Any, str]:
    """The model named by `--model` on `--data` (or the bundled default) and a label for it."""
    if args.model == "gaussian":
        return _gaussian_target(), "correlated Gaussian target (dim 10)"
    x, y, exposure, label = _load_data(args)
    from advi_jax import models

    if args.model == "logistic":
        return models.logistic_regression(x, y), f"logistic regression on {label}"
    suffix = f", exposure {args.exposure}" if exposure is not None else ""
    return models.poisson_regression(x, y, exposure=exposure), f"poisson regression on {label}{suffix}"


# ----------------------------------------------------------------------------------------------
# Checks (all before any computation)


def _check_args(args) -> tuple[tuple[str, ...], int]:
    from advi_jax.estimators import ESTIMATORS
    from advi_jax.gradient_variance import resolve_num_samples

    names = tuple(n.strip() for n in args.estimators.split(",") if n.strip())
    if not names:
        raise UsageError(f"--estimators is empty; choose from {','.join(ESTIMATORS)}")
    unknown = [n for n in names if n not in ESTIMATORS]
    if unknown:
        raise UsageError(f"unknown estimator(s) {','.join(unknown)}; choose from {','.join(ESTIMATORS)}")
    if len(set(names)) != len(names):
        raise UsageError(f"--estimators lists a name twice: {args.estimators}")
    if args.draws < 2:
        raise UsageError(f"--draws must be >= 2, got {args.draws}")
    if args.track_draws < 2:
        raise UsageError(f"--track-draws must be >= 2, got {args.track_draws}")
    if args.model != "poisson" and args.exposure is not None:
        raise UsageError("--exposure applies to --model poisson only")
    if args.model == "gaussian" and (args.data is not None or args.target is not None):
        raise UsageError("--model gaussian takes no --data/--target")
    try:
        samples = resolve_num_samples(args.samples, names, "--samples")
    except ValueError as err:
        raise UsageError(str(err).replace("(or None) ", "")) from None
    _check_out(args.out)
    return names, samples


def _check_out(out: str) -> None:
    """Create `out` and prove it writable, or raise a one-line UsageError."""
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise UsageError(f"--out folder {out!r} cannot be created or written: {err.strerror or err}") from None


def _versions() -> dict[str, str]:
    import jax

    import advi_jax

    return {"advi_jax": advi_jax.__version__, "jax": jax.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "backend": jax.default_backend()}


# ----------------------------------------------------------------------------------------------
# The command


def run(args) -> int:
    """Run `advi-jax variance`; returns the exit status."""
    names, samples = _check_args(args)
    model, label = build_model(args)

    import jax

    from advi_jax import gradient_variance as gv

    say = (lambda *a: None) if args.quiet else print  # noqa: E731
    measure_key, track_key = jax.random.split(jax.random.key(args.seed))
    every = max(1, args.steps // 20)
    say(f"{label}: {args.family} family, dim {model.dim}; fitting {args.steps} steps "
        f"(gradient variance recorded every {every} steps) ...")
    # The tracked fit is the short fit: the table is measured at its final parameters.
    trace = gv.track_gradient_variance(model, args.family, track_key, args.steps, every=every, estimators=names,
                                       num_draws=args.track_draws, num_samples=samples)
    stats = gv.gradient_variance(model, args.family, trace.params, measure_key, names, args.draws, samples)
    rows = gv.variance_table(stats)
    say(f"\ngradient variance at the fitted q ({args.draws} draws, {samples} samples per gradient):")
    say(gv.format_table(rows))

    table_path = os.path.join(args.out, "variance_table.csv")
    with open(table_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=gv.TABLE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    along = {name: {"variance_trace": np.asarray(v).tolist(),
                    "lower": np.asarray(trace.variance_trace_interval[name][0]).tolist(),
                    "upper": np.asarray(trace.variance_trace_interval[name][1]).tolist()}
             for name, v in trace.variance_trace.items()}
    record = {"model": label, "family": args.family, "dim": model.dim, "draws": args.draws, "samples": samples,
              "steps": args.steps, "seed": args.seed, "confidence": gv.CONFIDENCE, "table": rows,
              "along_fit": {"steps": np.asarray(trace.steps).tolist(), "estimators": along,
                            "draws": args.track_draws},
              "versions": _versions()}
    with open(os.path.join(args.out, "variance.json"), "w") as handle:
        json.dump(record, handle, indent=2, default=float)
    title = f"{label}, {args.family}, {samples} samples/gradient"
    paths = [gv.plot_variance_bars(stats, os.path.join(args.out, "variance_by_estimator.png"), title),
             gv.plot_snr(stats, os.path.join(args.out, "variance_snr.png"), title),
             gv.plot_variance_along_fit(trace, os.path.join(args.out, "variance_along_fit.png"), title)]
    say(f"\nwrote {table_path}, " + ", ".join(paths))
    return 0
