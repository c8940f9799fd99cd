"""The `advi-jax fit` sub-command: Bayesian logistic, probit, Poisson or negative-binomial regression.

With no arguments it fits Bayesian logistic regression to the bundled breast-cancer data
(569 tumours, 30 features) and prints the posterior summary: coefficients per standard
deviation of each feature (the scale the priors are set on) and, below, per unit of each
feature (the data's own scale), then a posterior predictive check. Outputs in `--out`
(default `advi_jax_out/fit`, checked before the fit starts): `summary.csv`, `summary.json`
(both scales, the standardisation constants, the priors, the fit's settings, diagnostics and
the predictive check), `draws.npz` (constrained posterior draws), `elbo.png` (the ELBO trace),
`marginals.png` (one panel per parameter group) and `predictive_check.png`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import warnings
from pathlib import Path

from advi_jax.cli import UsageError, fast_compile_for_small_data, positive_float, positive_int, seed_int

EXAMPLES = """examples:
  advi-jax fit                                           # logistic regression, bundled breast-cancer data
  advi-jax fit --model poisson                           # Poisson regression, bundled RAND HIE doctor visits
  advi-jax fit --model negbin                            # the same counts, negative binomial (over-dispersed)
  advi-jax fit --model probit                            # probit regression, bundled breast-cancer data
  advi-jax fit --family meanfield --steps 20000 --samples 4
  advi-jax fit --data patients.csv --target died         # your CSV (header row; other columns = features)
  advi-jax fit --data patients.csv --target died --features age,dose --dropna
  advi-jax fit --data patients.csv --formula "died ~ age + C(ward) + age:dose"
  advi-jax fit --data european.csv --delimiter ';' --target y
  advi-jax fit --model poisson --data claims.npz --target claims --exposure years
  advi-jax fit --model poisson --data births.csv --target births --group state   # varying intercept per state
  advi-jax fit --float64 --seed 3 --out results/ --quiet
"""

DEFAULT_DATA = {"logistic": "breast_cancer", "poisson": "randhie", "probit": "breast_cancer", "negbin": "randhie"}
MODELS = ("logistic", "poisson", "probit", "negbin")
COUNT_MODELS = ("poisson", "negbin")  # count targets; they take --exposure
TARGET_KIND = {"logistic": "logistic", "probit": "logistic", "poisson": "poisson", "negbin": "poisson"}
PREDICTIVE_DRAWS = 400  # posterior draws behind the predictive check (fewer for tables over 50,000 rows)


def at_least_two(text: str) -> int:
    """argparse type: an int >= 2 (a posterior sd needs two draws)."""
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"need at least 2 draws to estimate a posterior sd, got {text!r}")
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `fit` on the `advi-jax` sub-command parsers."""
    from advi_jax.estimators import ESTIMATORS
    from advi_jax.families import FAMILIES
    from advi_jax.vi import METHODS

    p = subparsers.add_parser(
        "fit",
        help="fit a Bayesian logistic, probit, Poisson or negative-binomial regression (bundled data by default)",
        description="Fit a Bayesian logistic, probit, Poisson or negative-binomial regression and print the "
        "posterior summary. "
        "Features are standardised; coefficients have Normal(0, --prior-scale) priors on that scale and "
        "the intercept Normal(0, 10). The summary shows coefficients per standard deviation of each feature "
        "and per unit of it (the data's own scale), then a posterior predictive check (for Poisson fits, "
        "whether the data are over-dispersed). Writes summary.csv, summary.json (both scales, the "
        "standardisation constants, the priors, settings and diagnostics), draws.npz, elbo.png, "
        "marginals.png and predictive_check.png to --out, which is checked before the fit starts. "
        "Bad input exits with status 2 and a one-line message.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", choices=MODELS, default="logistic",
                   help="likelihood: logistic or probit (0/1 target), poisson or negbin (count target; negbin is "
                   "the negative binomial with a learned dispersion phi, prior 1/sqrt(phi) ~ Exponential(1), for "
                   "counts more variable than Poisson allows, which the predictive check of a poisson fit flags) "
                   "(default: logistic)")
    p.add_argument("--data", metavar="FILE",
                   help="a .csv/.tsv (header row) or .npz file; default: the bundled dataset for --model")
    p.add_argument("--target", metavar="COLUMN", help="target column of --data (required with --data, "
                   "unless --formula names it)")
    p.add_argument("--features", metavar="A,B,...", help="feature columns (default: all other columns); columns "
                   "left out may hold text")
    p.add_argument("--formula", metavar="'Y ~ TERMS'", help="Wilkinson formula through formulaic, e.g. "
                   "\"y ~ x1 + C(x2) + x1:x3\" (C() one-hot codes a text column, a:b is an interaction, - 1 drops "
                   "the intercept); replaces --target/--features; needs the formula extra")
    p.add_argument("--delimiter", default=",", metavar="CHAR", help="CSV field separator: one character or 'tab' "
                   "(default ',', or tab for a .tsv file)")
    p.add_argument("--dropna", action="store_true", help="drop rows with missing values in the used columns "
                   "(default: stop with an error naming the rows and columns)")
    p.add_argument("--exposure", metavar="COLUMN", help="poisson / negbin only: exposure column (offset log exposure)")
    p.add_argument("--group", metavar="COLUMN", help="a varying intercept per value of COLUMN (text or integer "
                   "labels): y ~ features + (1 | COLUMN), group sd tau ~ HalfNormal(1); needs --data and --target")
    p.add_argument("--family", choices=sorted(FAMILIES), default="fullrank",
                   help="variational family (default fullrank: regression posteriors are correlated, and with "
                   "K in the tens full-rank costs little; meanfield is faster but k-hat usually flags it). "
                   "aj.fit's family='auto' gives the same up to K = 200 and the low-rank or mean-field family "
                   "above, where a K x K factor costs more")
    p.add_argument("--estimator", choices=sorted(ESTIMATORS), default="reparam",
                   help="ADVI's gradient estimator (default reparam)")
    p.add_argument("--method", choices=("auto",) + tuple(sorted(METHODS)), default="auto",
                   help="fitting method (default auto: the exact-ELBO Newton fit 'glm_exact' for these GLMs, "
                   "which reaches the family's optimum in a few passes over the data; 'advi' is stochastic "
                   "ADVI, chosen automatically when --estimator, --samples or --learning-rate is given; "
                   "'dadvi' with --family meanfield reports its linear-response Gaussian, which corrects the "
                   "mean-field sds)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="step budget (default: the method's own, 100 for glm_exact, 10000 for advi)")
    p.add_argument("--samples", type=positive_int, default=1, help="ADVI's Monte Carlo draws per step (default 1)")
    p.add_argument("--learning-rate", type=positive_float, default=None, help="Adam's step size (default 0.01)")
    p.add_argument("--prior-scale", type=positive_float, default=2.5,
                   help="sd of the coefficients' Normal prior, on the standardised scale (default 2.5)")
    p.add_argument("--init", choices=("auto", "zero", "laplace", "random"), default="auto",
                   help="starting point: auto (Laplace start for K <= 1000), zero, laplace, random")
    p.add_argument("--seed", type=seed_int, default=0, help="random seed (default 0)")
    p.add_argument("--draws", type=at_least_two, default=4096, help="posterior draws saved and summarised "
                   "(at least 2; default 4096: on small data the diagnostics' own draws, reused)")
    p.add_argument("--float64", action="store_true", help="compute in float64 (poisson / negbin fits switch to it "
                   "by themselves when their counts exceed float32's limits, aj.models.FLOAT32_COUNT_LIMITS)")
    p.add_argument("--out", default="advi_jax_out/fit", metavar="DIR", help="output folder (default advi_jax_out/fit)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def prng_key(seed: int):
    """`jax.random.key(seed)`, without compiling JAX's seeding program for the default (threefry) keys.

    A threefry key of a seed in [0, 2^31) holds the words (0, seed) (`jax.random.key` compiles a
    program that computes them: a twentieth of a second, most of it compilation, on a small fit's
    command line). Other seeds and key implementations go through `jax.random.key`.

    Example:
      >>> import jax
      >>> (jax.random.key_data(prng_key(7)) == jax.random.key_data(jax.random.key(7))).all()  # doctest: +SKIP
    """
    import jax
    import numpy as np

    if 0 <= seed < 2 ** 31 and str(jax.config.jax_default_prng_impl) == "threefry2x32":
        return jax.random.wrap_key_data(np.array([0, seed], np.uint32), impl="threefry2x32")
    return jax.random.key(seed)


def _split_columns(text: str | None) -> list[str] | None:
    return [f.strip() for f in text.split(",") if f.strip()] if text else None


def check_out_dir(out: Path) -> Path:
    """Check that the output folder exists or can be created, without creating it.

    Raises:
      UsageError: `out` is a file, sits under a file, or its nearest existing folder is not
        writable.
    """
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} exists and is not a folder")
    parent = out
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"--out {str(out)!r} cannot be created: {str(parent)!r} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--out {str(out)!r} cannot be created: no write permission in {str(parent)!r}")
    return out


def _read_frame(path: Path, delimiter: str):
    """A pandas DataFrame of a CSV or .npz table (for --formula)."""
    from advi_jax import data as data_module
    from advi_jax._extras import require

    pd = require("pandas", purpose="--formula")
    if path.suffix.lower() == ".npz":
        import numpy as np

        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {k: archive[k] for k in archive.files}
        except data_module._NPZ_ERRORS as err:
            raise UsageError(f"{path}: not a readable .npz file (truncated or corrupt, or holds pickled objects): "
                             f"{type(err).__name__}: {err}") from None
        bad = [k for k, a in arrays.items() if a.ndim != 1]
        if bad:
            raise UsageError(f"{path}: --formula needs 1-D arrays (one per column); {bad} are not")
        try:
            return pd.DataFrame(arrays)
        except ValueError as err:
            raise UsageError(f"{path}: {err}") from None
    try:
        return pd.read_csv(path, sep=delimiter, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: not a readable CSV file ({str(err).strip().splitlines()[0]})") from None


def _load_formula(args, path: Path):
    import advi_jax as aj
    from advi_jax import data as data_module

    if args.target or args.features:
        raise UsageError("--formula names the target and the features: leave out --target and --features")
    frame = _read_frame(path, data_module.parse_delimiter(args.delimiter))
    if frame.shape[1] == 1 and path.suffix.lower() != ".npz":
        hint = data_module._delimiter_hint(str(frame.columns[0]), data_module.parse_delimiter(args.delimiter))
        if hint is not None:
            raise UsageError(f"{path}: the header {str(frame.columns[0])!r} reads as one column; it looks "
                             f"{'tab' if hint == chr(9) else repr(hint)}-separated: pass --delimiter "
                             f"{'tab' if hint == chr(9) else repr(hint)}")
    if args.exposure and args.model not in COUNT_MODELS:
        raise UsageError("--exposure applies to --model poisson or negbin only")
    extra = {"exposure": args.exposure} if args.exposure else {}
    return aj.models.from_formula(args.model, frame, args.formula, dropna=args.dropna,
                                  prior_scale=args.prior_scale, **extra)


def _load(args):
    """The model's inputs: (x, y, names, exposure, source), or a ready formula model as x."""
    from advi_jax import data as data_module

    if args.data is None:
        if args.target or args.features or args.exposure or args.formula:
            raise UsageError("--target, --features, --formula and --exposure need --data FILE")
        name = DEFAULT_DATA[args.model]
        x, y, names = data_module.load_dataset(name)
        return x, y, names, None, f"bundled:{name}"
    path = Path(args.data)
    if path.suffix.lower() not in (".npz", ".csv", ".txt", ".tsv"):
        raise UsageError(f"--data must be a .csv or .npz file, got {str(path)!r}")
    if path.suffix.lower() == ".tsv" and args.delimiter == ",":
        args.delimiter = "tab"  # a .tsv file is tab-separated unless --delimiter says otherwise
    if args.formula:
        data_module._check_file(path)
        return _load_formula(args, path), None, None, None, str(path)
    if not args.target:
        raise UsageError("--data needs --target COLUMN (the column to predict) or --formula 'y ~ ...'")
    features = _split_columns(args.features)
    if args.exposure:
        if args.model not in COUNT_MODELS:
            raise UsageError("--exposure applies to --model poisson or negbin only")
        if features is not None and args.exposure in features:
            raise UsageError(f"--exposure column {args.exposure!r} is also listed in --features")
    load_features = features + [args.exposure] if (features is not None and args.exposure) else features
    if path.suffix.lower() == ".npz":
        dataset = data_module.load_npz(path, target=args.target, features=load_features, kind=TARGET_KIND[args.model],
                                       dropna=args.dropna)
    else:
        dataset = data_module.load_csv(path, target=args.target, features=load_features, kind=TARGET_KIND[args.model],
                                       delimiter=args.delimiter, dropna=args.dropna)
    x, y, names = dataset
    exposure = None
    if args.exposure:
        if args.exposure not in names:
            raise UsageError(f"--exposure column {args.exposure!r} not found; columns: {', '.join(names)}")
        j = names.index(args.exposure)
        exposure = x[:, j]
        keep = [i for i in range(len(names)) if i != j]
        x, names = x[:, keep], tuple(names[i] for i in keep)
        if not names:
            raise UsageError("no feature columns left besides --target and --exposure")
    return x, y, names, exposure, str(path)


def _quantile_rows(draws: dict, labels: dict) -> dict[str, dict]:
    import numpy as np

    out = {}
    for name, value in draws.items():
        flat = np.asarray(value, dtype=np.float64).reshape(len(value), -1)
        names = labels.get(name)
        for j in range(flat.shape[1]):
            label = f"{name}[{names[j]}]" if names is not None else name
            col = flat[:, j]
            q5, q50, q95 = np.quantile(col, [0.05, 0.5, 0.95])
            out[label] = {"mean": float(col.mean()), "sd": float(col.std(ddof=1)), "5%": float(q5),
                          "50%": float(q50), "95%": float(q95)}
    return out


_POSTERIOR_PROGRAMS: dict = {}


def cheap_compile() -> bool:
    """Whether this run compiles cheaply (`fast_compile_for_small_data` set XLA's lowest level)."""
    return "--xla_backend_optimization_level=0" in os.environ.get("XLA_FLAGS", "")


def _posterior_program(cheap: bool | None = None):
    """The jitted program of `_posterior_outputs` (made once per compile mode). With `cheap` (default:
    `cheap_compile()`) it compiles with `compile_options.FAST_OPTIONS`, as the fit does then (the
    classic fusion emitter: 0.13 s of CPU instead of 0.4 s on the bundled data)."""
    cheap = cheap_compile() if cheap is None else cheap
    if cheap not in _POSTERIOR_PROGRAMS:
        import functools

        import jax

        from advi_jax import compile_options

        from advi_jax.models import coefficients_on_original_scale
        from advi_jax.models.predictive import _replicate_training
        from advi_jax.result import constrained_draws

        options = dict(compile_options.FAST_OPTIONS) if cheap else None

        @functools.partial(jax.jit, static_argnames=("family", "num_draws", "num_check"), compiler_options=options)
        def posterior_outputs(model, family, params, key, check_key, num_draws, num_check):
            draws = constrained_draws(model, family, params, key, num_draws)
            subset = {k: draws[k][:num_check] for k in model.names}
            return draws, coefficients_on_original_scale(model, draws), _replicate_training(model, subset, check_key)

        _POSTERIOR_PROGRAMS[cheap] = posterior_outputs
    return _POSTERIOR_PROGRAMS[cheap]


def _posterior_outputs(result, key, num_draws: int, check_key, num_check: int) -> tuple[dict, dict, object]:
    """Everything the command computes from the fitted q, in one compiled program (one compilation,
    not three: compiling is most of a small fit's command time).

    Returns:
      (draws, original, y_rep): `result.sample(key, num_draws)`; the coefficients per unit of each
      feature of those draws (`coefficients_on_original_scale`); and the replications of the
      training outcomes at the first `num_check` draws with `check_key` (`posterior_predictive`,
      the input of `check_replications`). Each equals what the separate calls give, bit for bit.
    """
    from advi_jax.diagnostics import check_key as checked

    return _posterior_program()(result.model, result.family, result.params, checked(key), checked(check_key),
                                num_draws, min(num_check, num_draws))


def _shown(result, key, num_draws: int):
    """(the result whose Gaussian the command reports, a note for the summary or "").

    A mean-field fit that computed a linear-response covariance (`--method dadvi --family
    meanfield`) is reported as its linear-response Gaussian (`Result.linear_response()`): q's
    mean-field sds are too small wherever the coefficients are correlated, the linear-response
    covariance corrects them (for a Gaussian posterior exactly). The table, draws, data-scale
    columns and predictive check then all come from N(m, Sigma_LR), with its own k-hat. Where that
    covariance is not positive definite, q itself, and the note says why."""
    from advi_jax.families import MeanFieldGaussian

    if not isinstance(result.family, MeanFieldGaussian) or "lr_covariance" not in result.report.extras:
        return result, ""
    try:
        shown = result.linear_response(key, num_draws)
    except ValueError as err:
        return result, f"shown: the mean-field q itself ({err})"
    return shown, (f"shown: the linear-response Gaussian N(m, Sigma_LR) of this mean-field fit (k-hat "
                   f"{shown.khat:.2f}; the mean-field q's own: {result.khat:.2f}, its sds too small where "
                   "coefficients are correlated)")


def _data_scale(model, original, rows, labels) -> list[str]:
    """Add the data-scale columns to `rows` (in place) and return the printable table.

    Args:
      original: `coefficients_on_original_scale` of the draws behind `rows`."""
    original = {k: original[k] for k in model.names if k in original}  # intercept first, as above
    table = _quantile_rows(original, labels)
    cols = ["mean", "sd", "5%", "50%", "95%"]
    for r in rows:
        values = table.get(r["parameter"])
        for c in cols:
            r[f"{c}_data_scale"] = values[c] if values else None
    width = max(len("parameter"), *(len(k) for k in table))
    lines = ["", "On the data's own scale (per unit of each feature; the table above is per standard deviation):",
             f"{'parameter':<{width}} " + " ".join(f"{c:>10}" for c in cols)]
    for name, values in table.items():
        lines.append(f"{name:<{width}} " + " ".join(f"{values[c]:>10.4g}" for c in cols))
    return lines


def _model_record(model) -> dict:
    """The standardisation constants and the priors, for summary.json."""
    import numpy as np

    info = model.info
    priors = {}
    if info.intercept:
        priors["intercept"] = {"distribution": "Normal", "loc": 0.0, "scale": info.intercept_scale}
    if info.hierarchical_scale:
        priors["tau"] = {"distribution": "HalfNormal", "scale": info.prior_scale}
        priors["beta"] = {"distribution": "Normal", "loc": 0.0, "scale": "tau",
                          "applies_to": "coefficients of the standardised features"}
    else:
        priors["beta"] = {"distribution": "Normal", "loc": 0.0, "scale": info.prior_scale,
                          "applies_to": "coefficients of the standardised features"}
    if info.kind == "negbin":
        priors["phi"] = {"distribution": "1/sqrt(phi) ~ Exponential", "mean": info.dispersion_scale,
                         "applies_to": "the dispersion: variance = mean + mean^2 / phi"}
    return {
        "feature_names": list(info.feature_names),
        "standardization": {
            "formula": "x_standardised = (x - mean) / sd (constant columns keep sd = 1; without an intercept, mean = 0 "
                       "and sd is the root mean square)",
            "mean": [float(v) for v in np.asarray(model.data["x_mean"])],
            "sd": [float(v) for v in np.asarray(model.data["x_scale"])],
        },
        "priors": priors,
        "formula": getattr(model, "formula", None),
    }


def _write_outputs(out: Path, draws, rows, info) -> list[Path]:
    """Write summary.csv, summary.json and draws.npz to `out` (created if needed); return their paths."""
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    written = []
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / "summary.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows([{k: ("" if v is None else v) for k, v in r.items()} for r in rows])
    written.append(out / "summary.csv")
    with open(out / "summary.json", "w") as handle:
        json.dump({"fit": info, "summary": rows}, handle, indent=2)
    written.append(out / "summary.json")
    # uncompressed: posterior draws are noise to zlib (458 KB against 500 KB) and compressing took 0.15 s
    np.savez(out / "draws.npz", **{k: np.asarray(v) for k, v in draws.items()})
    written.append(out / "draws.npz")
    return written


def start_figures(args, out: Path):
    """The `FigureJobs` of this run (None with --no-plots): on a command-line run, the figure
    process starts now, so that its imports overlap the fit (`advi_jax.cli.figures`)."""
    if args.no_plots:
        return None
    from advi_jax.cli import command_line
    from advi_jax.cli.figures import FigureJobs

    return FigureJobs.start(out, separate=command_line())


def run(args) -> int:
    import jax

    if args.float64:
        jax.config.update("jax_enable_x64", True)
    import numpy as np

    import advi_jax as aj
    from advi_jax.data import MissingValuesWarning

    if args.method == "glm_grouped" and not getattr(args, "group", None):
        raise UsageError("--method glm_grouped fits the varying-intercept model of --group COLUMN; give --group, "
                         "or another --method (auto: glm_exact)")
    if args.method == "glm_exact" and getattr(args, "group", None):
        raise UsageError("--method glm_exact does not fit the varying-intercept model of --group; use --method "
                         "auto (glm_grouped) or another method")
    if getattr(args, "group", None):
        from advi_jax.cli.fit_grouped import run_grouped

        return run_grouped(args, check_out_dir(Path(args.out)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MissingValuesWarning)
        x, y, names, exposure, source = _load(args)
    if isinstance(x, aj.models.RegressionModel):  # a formula model, built in float32 unless --float64
        counts = np.asarray(x.data["y"])
    else:
        counts = y
    if not args.float64 and float64_for_counts(args, counts):
        if isinstance(x, aj.models.RegressionModel):
            with warnings.catch_warnings(record=True):  # its missing-value note was recorded above
                x = _load(args)[0]
    for w in caught:
        if issubclass(w.category, MissingValuesWarning):
            print(f"advi-jax fit: {w.message}", file=sys.stderr)
    out = check_out_dir(Path(args.out))
    if isinstance(x, np.ndarray):
        fast_compile_for_small_data(x.shape[0], x.shape[1] + 1)
    if isinstance(x, aj.models.RegressionModel):
        model = x
    else:
        build = getattr(aj.models, f"{args.model}_regression")
        extra = {} if args.model in ("logistic", "probit") else {"exposure": exposure}
        with warnings.catch_warnings(record=True) as built:
            warnings.simplefilter("always", aj.models.ConstantColumnWarning)
            model = build(x, y, prior_scale=args.prior_scale, feature_names=names, **extra)
        caught += built
    for w in caught:
        if issubclass(w.category, aj.models.ConstantColumnWarning):
            print(f"advi-jax fit: warning: {w.message}", file=sys.stderr)
    num_rows, num_features = (int(s) for s in model.data["x"].shape)
    init = None if args.init == "zero" else args.init
    if not args.quiet:
        what = f" ({model.formula})" if getattr(model, "formula", None) else ""
        print(f"advi-jax fit: {args.model} regression{what} on {source} (N={num_rows}, D={num_features}), "
              f"family={args.family}, method={args.method}", file=sys.stderr)
    return write_with_figures(args, out, lambda figures: _fit_and_write(args, model, source, out, init, figures))


def float64_for_counts(args, y) -> bool:
    """Switch this run to float64 when a count model's counts exceed what float32 handles
    (`aj.models.float32_count_limit`): the fit is then right instead of imprecise. Says so on stderr;
    sets `args.float64` (recorded in summary.json). Returns whether it switched. Call before any model
    is built (arrays made before the switch stay float32)."""
    import jax

    from advi_jax.models import float32_count_limit

    limit = float32_count_limit(args.model, y)
    if limit is None:
        return False
    jax.config.update("jax_enable_x64", True)
    args.float64 = True
    print(f"advi-jax fit: counts up to {float(max(y)):.6g} exceed {limit:.6g}, beyond which a float32 {args.model} "
          "fit loses precision: computing in float64 (as --float64)", file=sys.stderr)
    return True


def write_with_figures(args, out: Path, write) -> int:
    """`write(figures)` -> the paths written, with this run's figures (`start_figures`) closed
    after it however it ends; says what was written. The command's exit status, 0.

    `write` (the fit, its warm-up thread and the outputs' programs) runs at `aj.fit`'s
    matrix-product precision (`advi_jax.run.precision`: full float32 on accelerators), so that the
    programs the warm-up compiles are the ones called and the outputs are as exact as the fit."""
    from advi_jax.run import precision

    figures = start_figures(args, out)
    try:
        with precision.context():
            written = write(figures)
    finally:
        if figures is not None:
            figures.close()
    if not args.quiet:
        print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    return 0


def _fit_and_write(args, model, source: str, out: Path, init, figures) -> list[Path]:
    """Fit `model`, print the summary and write the outputs (and `figures`, unless None)."""
    import numpy as np

    import advi_jax as aj
    from advi_jax.cli import warmup
    from advi_jax.cli.figures import check_payload, elbo_payload
    from advi_jax.models.predictive import check_replications

    num_rows, num_features = (int(s) for s in model.data["x"].shape)
    # y_rep holds (draws, rows) values: cap it at ~2e7 entries (80 MB) for large tables
    num_check = max(20, min(PREDICTIVE_DRAWS, 20_000_000 // max(num_rows, 1)))
    cheap = cheap_compile()
    warm = warmup.start(model, args.family, _posterior_program(cheap), args.draws, num_check, fast=cheap)
    from advi_jax import compile_options

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", aj.DiagnosticWarning)  # the verdict is printed below
            with compile_options.forced("fast" if cheap else None):
                result = aj.fit(model, key=prng_key(args.seed), family=args.family, method=args.method,
                                num_steps=args.steps, num_samples=args.samples, estimator=args.estimator,
                                learning_rate=args.learning_rate, init=init, progress=not args.quiet)
    finally:
        warm.close()  # compiled by now (it started with the fit); a compilation must not outlive the command
    if figures is not None:
        figures.add("elbo.png", "elbo", elbo_payload(result))
    fitted = result
    result, shown_note = _shown(result, prng_key(args.seed + 3), args.draws)
    key = prng_key(args.seed + 1)
    labels = aj.models.parameter_labels(model)
    labels = {k: v for k, v in labels.items() if k != "intercept"}
    stored = result.report.diagnostic_sample
    reuse = stored is not None and len(stored[1]) == args.draws
    if reuse:  # the diagnostics' own draws (and log ratios): nothing new to compile or evaluate
        key = stored[0]
    draws, original, y_rep = _posterior_outputs(result, key, args.draws, prng_key(args.seed + 2), num_check)
    draws = {k: np.asarray(v) for k, v in draws.items()}
    rows = result.summary_rows(key, args.draws, labels, reuse_diagnostic_draws=reuse, draws=draws)
    ordered = {k: draws[k] for k in model.names}
    lines = [result.summary(labels=labels, rows=rows)]
    lines += _data_scale(model, original, rows, labels)
    if figures is not None:
        figures.add("marginals.png", "marginals", rows)
    check = check_replications(model, y_rep)
    if figures is not None:
        figures.add("predictive_check.png", "predictive", check_payload(check))
    lines += ["", check.message]
    if shown_note:
        lines += ["", shown_note]
    print("\n".join(lines))
    info = {
        "model": args.model, "data": source, "num_rows": num_rows, "num_features": num_features,
        "family": args.family, "method": result.method, "method_reason": result.method_reason,
        "num_grad_evals": result.num_grad_evals, "estimator": args.estimator, "num_steps": result.num_steps,
        "num_samples": args.samples, "seed": args.seed, "float64": bool(args.float64),
        "elbo_final": result.final_elbo, "khat": result.khat, "verdict": result.verdict,
        "iw_elbo": result.iw_elbo, "iw_elbo_se": result.iw_elbo_se, "stop_reason": result.stop_reason,
        "converged": bool(result.converged),
        "shown": "linear_response" if result is not fitted else "q",
        **({"khat_q": fitted.khat} if result is not fitted else {}),
        "init": result.init_method, "seconds": result.seconds,
        **_model_record(model),
        "predictive_check": {"observed": check.observed, "p_values": check.p_values,
                             "overdispersed": check.overdispersed, "message": check.message,
                             "num_draws": int(len(check.y_rep))},
    }
    written = _write_outputs(out, ordered, rows, info)
    return written + (figures.finish() if figures is not None else [])
