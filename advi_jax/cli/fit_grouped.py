"""`advi-jax fit --group COLUMN`: a varying-intercept (grouped) logistic or Poisson regression.

Reads the group column of `--data` as labels (text, or integers sorted by value), builds
`aj.models.grouped_logistic_regression` / `grouped_poisson_regression` with the other selected
columns as features, fits it (`method=auto`: the exact-ELBO fit `glm_grouped`) and prints the
posterior summary (coefficients per sd and per unit of each feature, one effect per group, the
group sd `tau`). Writes summary.csv, summary.json, draws.npz and, unless --no-plots, elbo.png
and marginals.png to --out. The predictive check of plain fits is not computed for grouped ones.
"""

from __future__ import annotations

import csv
import sys
import warnings
from pathlib import Path

from advi_jax.cli import UsageError


def _header_and_column(args, path: Path, column: str) -> tuple[list[str], list]:
    """The column names of --data and the raw values of `column` (strings for a CSV)."""
    from advi_jax import data as data_module

    if path.suffix.lower() == ".npz":
        import numpy as np

        with np.load(data_module._check_file(path), allow_pickle=False) as archive:
            names = list(archive.files)
            if column not in names:
                raise UsageError(f"--group column {column!r} not found; columns: {', '.join(names)}")
            values = archive[column]
        if values.ndim != 1:
            raise UsageError(f"--group column {column!r} must be 1-D, got shape {values.shape}")
        return names, list(values.tolist())
    delimiter = data_module.parse_delimiter(args.delimiter)
    with open(data_module._check_file(path), newline="", encoding="utf-8-sig") as handle:  # as load_csv reads it
        rows = [r for r in csv.reader(handle, delimiter=delimiter) if any(cell.strip() for cell in r)]
    if not rows:
        raise UsageError(f"{path}: empty file")
    header = [h.strip() for h in rows[0]]
    if column not in header:
        raise UsageError(f"--group column {column!r} not found; columns: {', '.join(header)}")
    j = header.index(column)
    values = [r[j].strip() if j < len(r) else "" for r in rows[1:]]
    missing = [i for i, v in enumerate(values) if v == "" or v.lower() in ("na", "nan", "null")]
    if missing:
        raise UsageError(f"--group column {column!r} has missing values at data rows {missing[:5]} "
                         f"({len(missing)} in all); fill or drop them")
    return header, values


def _codes(values: list) -> tuple[list[int], tuple[str, ...]]:
    """Codes 0..G-1 and names; integer-like labels are ordered by value, others as text."""
    try:
        numbers = [int(str(v)) for v in values]
    except ValueError:
        numbers = None
    if numbers is not None:
        levels = sorted(set(numbers))
        index = {v: i for i, v in enumerate(levels)}
        return [index[v] for v in numbers], tuple(str(v) for v in levels)
    text = [str(v) for v in values]
    levels = sorted(set(text))
    index = {v: i for i, v in enumerate(levels)}
    return [index[v] for v in text], tuple(levels)


def load_grouped_model(args):
    """(model, source) for `advi-jax fit --group COLUMN`.

    Raises:
      UsageError: no --data, --formula or --dropna given with --group, a missing or incomplete
        group column, or the group column listed as a feature / the target / the exposure.
    """
    import advi_jax as aj
    from advi_jax import data as data_module

    if args.data is None:
        raise UsageError("--group needs --data FILE (the bundled data sets have no group column)")
    if args.formula:
        raise UsageError("--group does not combine with --formula; give --target (and --features)")
    if args.dropna:
        raise UsageError("--group does not combine with --dropna; drop the incomplete rows from the file")
    if not args.target:
        raise UsageError("--data needs --target COLUMN (the column to predict)")
    path = Path(args.data)
    if path.suffix.lower() not in (".npz", ".csv", ".txt", ".tsv"):
        raise UsageError(f"--data must be a .csv or .npz file, got {str(path)!r}")
    if path.suffix.lower() == ".tsv" and args.delimiter == ",":
        args.delimiter = "tab"
    group = args.group
    if group in (args.target, args.exposure):
        raise UsageError(f"--group column {group!r} is also the target or the exposure")
    header, values = _header_and_column(args, path, group)
    features = [f.strip() for f in args.features.split(",") if f.strip()] if args.features else None
    if features is not None and group in features:
        raise UsageError(f"--group column {group!r} is also listed in --features")
    if features is None:
        features = [c for c in header if c not in (args.target, group, args.exposure)]
    if args.model not in ("logistic", "poisson"):
        raise UsageError(f"--group works with --model logistic or poisson, not {args.model!r}")
    if args.exposure and args.model != "poisson":
        raise UsageError("--exposure applies to --model poisson only")
    load = features + ([args.exposure] if args.exposure else [])
    if not load:
        raise UsageError("no feature columns besides --target and --group")
    if path.suffix.lower() == ".npz":
        x, y, names = data_module.load_npz(path, target=args.target, features=load, kind=args.model)
    else:
        x, y, names = data_module.load_csv(path, target=args.target, features=load, kind=args.model,
                                           delimiter=args.delimiter)
    if not args.float64:
        from advi_jax.cli.fit import float64_for_counts

        float64_for_counts(args, y)
    exposure = None
    if args.exposure:
        exposure, x, names = x[:, -1], x[:, :-1], tuple(names[:-1])
    if len(values) != x.shape[0]:
        raise UsageError(f"--group column {group!r} has {len(values)} values for {x.shape[0]} rows")
    codes, group_names = _codes(values)
    common = dict(group=codes, num_groups=len(group_names), group_names=group_names, prior_scale=args.prior_scale,
                  feature_names=names)
    if not names:
        x = None
    if args.model == "logistic":
        model = aj.models.grouped_logistic_regression(x, y, **common)
    else:
        model = aj.models.grouped_poisson_regression(x, y, exposure=exposure, **common)
    return model, str(path)


def _data_scale_lines(model, draws) -> list[str]:
    import numpy as np

    scale, mean = np.asarray(model.data["x_scale"]), np.asarray(model.data["x_mean"])
    beta = np.asarray(draws["beta"]) / scale[None, :]
    table = {f"beta[{n}]": beta[:, j] for j, n in enumerate(model.info.feature_names)}
    if model.info.intercept:
        table = {"intercept": np.asarray(draws["intercept"]) - beta @ mean, **table}
    lines = ["", "On the data's own scale (per unit of each feature; intercept at x = 0, group effects as above):",
             f"{'parameter':<24} " + " ".join(f"{c:>10}" for c in ("mean", "sd", "5%", "50%", "95%"))]
    for name, col in table.items():
        q5, q50, q95 = np.quantile(col, [0.05, 0.5, 0.95])
        lines.append(f"{name:<24} " + " ".join(f"{v:>10.4g}" for v in (col.mean(), col.std(ddof=1), q5, q50, q95)))
    return lines


def run_grouped(args, out: Path) -> int:
    """Fit, print and write the outputs of a grouped model (see the module docstring)."""
    from advi_jax.cli.fit import write_with_figures

    model, source = load_grouped_model(args)
    num_rows, num_features = (int(s) for s in model.data["x"].shape)
    if not args.quiet:
        print(f"advi-jax fit: grouped {args.model} regression on {source} (N={num_rows}, D={num_features}, "
              f"{model.num_groups} groups of {args.group!r}), family={args.family}, method={args.method}",
              file=sys.stderr)
    return write_with_figures(args, out, lambda figures: _fit_and_write_grouped(args, model, source, out, figures))


def _fit_and_write_grouped(args, model, source: str, out: Path, figures) -> list[Path]:
    """Fit the grouped `model`, print the summary and write the outputs (and `figures`, unless None)."""
    import numpy as np

    import advi_jax as aj
    from advi_jax.cli.figures import elbo_payload
    from advi_jax.cli.fit import _write_outputs, prng_key

    num_rows, num_features = (int(s) for s in model.data["x"].shape)
    init = None if args.init == "zero" else args.init
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", aj.DiagnosticWarning)  # the verdict is printed below
        result = aj.fit(model, key=prng_key(args.seed), family=args.family, method=args.method,
                        num_steps=args.steps, num_samples=args.samples, estimator=args.estimator,
                        learning_rate=args.learning_rate, init=init, progress=not args.quiet)
    if figures is not None:
        figures.add("elbo.png", "elbo", elbo_payload(result))
    key = prng_key(args.seed + 1)
    labels = model.labels
    draws = {k: np.asarray(v) for k, v in result.sample(key, args.draws).items()}
    rows = result.summary_rows(key, args.draws, labels, draws=draws)
    lines = [result.summary(labels=labels, rows=rows)] + _data_scale_lines(model, draws)
    if figures is not None:
        figures.add("marginals.png", "marginals", rows)
    print("\n".join(lines))
    info = {"model": f"grouped {args.model}", "data": source, "group": args.group, "num_groups": model.num_groups,
            "group_names": list(model.info.group_names), "num_rows": num_rows, "num_features": num_features,
            "family": args.family, "method": result.method, "method_reason": result.method_reason,
            "num_grad_evals": result.num_grad_evals, "num_steps": result.num_steps, "seed": args.seed,
            "float64": bool(args.float64), "elbo_final": result.final_elbo, "khat": result.khat,
            "verdict": result.verdict, "stop_reason": result.stop_reason, "converged": bool(result.converged), "seconds": result.seconds,
            "feature_names": list(model.info.feature_names),
            "priors": {"intercept": {"distribution": "Normal", "loc": 0.0, "scale": model.info.intercept_scale},
                       "beta": {"distribution": "Normal", "loc": 0.0, "scale": model.info.prior_scale},
                       "u": {"distribution": "Normal", "loc": 0.0, "scale": "tau"},
                       "tau": {"distribution": "HalfNormal", "scale": model.info.group_scale}}}
    written = _write_outputs(out, {k: draws[k] for k in model.names}, rows, info)
    return written + (figures.finish() if figures is not None else [])
