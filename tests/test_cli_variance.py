"""Tests of `advi-jax variance` (advi_jax/cli/variance.py), run in-process through `advi_jax.cli.main`."""

import csv
import json

import numpy as np
import pytest

from advi_jax.cli import main

SMALL = ["--steps", "40", "--draws", "30", "--track-draws", "10", "--quiet"]


def _run(argv):
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own errors exit from inside the parser
        return exc.code


def _one_line_error(capsys, rc, *needles):
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_cli_runs_and_writes_outputs(tmp_path):
    out = tmp_path / "o"
    rc = main(["variance", "--model", "gaussian", "--family", "fullrank", "--estimators", "reparam,score_baseline",
               "--out", str(out), *SMALL])
    assert rc == 0
    with open(out / "variance_table.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["estimator"] for r in rows] == ["reparam", "score_baseline"]
    for r in rows:
        assert float(r["variance_trace_lower"]) <= float(r["variance_trace"]) <= float(r["variance_trace_upper"])
        assert np.isfinite(float(r["median_snr"]))  # full-rank: no NaN
    record = json.loads((out / "variance.json").read_text())
    assert record["samples"] == 2  # the default: the smallest count score_baseline accepts
    assert len(record["along_fit"]["estimators"]["reparam"]["lower"]) == len(record["along_fit"]["steps"])
    for name in ("variance_by_estimator.png", "variance_snr.png", "variance_along_fit.png"):
        assert (out / name).stat().st_size > 1000


def test_cli_poisson_exposure(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 2))
    years = rng.uniform(0.5, 3.0, size=150)
    y = rng.poisson(years * np.exp(0.3 * x[:, 0] - 0.2 * x[:, 1]))
    path = tmp_path / "claims.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["x0", "x1", "years", "claims"])
        writer.writerows([[a, b, t, c] for (a, b), t, c in zip(x, years, y)])
    out = tmp_path / "o"
    rc = main(["variance", "--model", "poisson", "--data", str(path), "--target", "claims", "--exposure", "years",
               "--estimators", "reparam", "--out", str(out), *SMALL])
    assert rc == 0
    record = json.loads((out / "variance.json").read_text())
    assert record["dim"] == 3  # intercept + x0 + x1: the exposure is an offset, not a feature
    assert "exposure years" in record["model"]


@pytest.mark.parametrize("args, needles", [
    (["--estimators", "reparam,bogus"], ["bogus", "choose from"]),
    (["--estimators", "score_baseline", "--samples", "1"], ["score_baseline", "--samples >= 2", "got 1"]),
    (["--exposure", "years"], ["--exposure applies to --model poisson"]),
    (["--model", "poisson", "--data", "nope.csv", "--target", "y"], ["nope.csv", "not found"]),
    (["--draws", "1"], ["--draws must be >= 2"]),
    (["--draws", "0"], ["--draws"]),
    (["--model", "gaussian", "--data", "x.csv"], ["takes no --data"]),
])
def test_cli_bad_input_one_line(args, needles, tmp_path, capsys):
    rc = _run(["variance", *args, "--out", str(tmp_path / "o")])
    _one_line_error(capsys, rc, *needles)


def test_cli_exposure_column_missing(tmp_path, capsys):
    path = tmp_path / "d.csv"
    path.write_text("x0,y\n1.0,2\n0.5,1\n-1.0,0\n")
    rc = main(["variance", "--model", "poisson", "--data", str(path), "--target", "y", "--exposure", "years",
               "--out", str(tmp_path / "o")])
    _one_line_error(capsys, rc, "years", "not found")


def test_cli_out_folder_checked_before_computation(tmp_path, capsys, monkeypatch):
    import advi_jax.cli.variance as cli

    def fail(_):
        raise AssertionError("the model was built before the --out check")

    monkeypatch.setattr(cli, "build_model", fail)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    rc = main(["variance", "--out", str(blocker / "sub")])
    _one_line_error(capsys, rc, "--out folder", "cannot be created")


def test_cli_csv_with_a_text_column_and_a_missing_value(tmp_path, capsys):
    """A CSV with a text column and an empty cell: the errors name --features and --dropna, and this
    command takes both (its CSV error messages send the user to them)."""
    rng = np.random.default_rng(1)
    rows = [[f"{a:.4f}", f"{b:.4f}", "north" if i % 2 else "south", int(a + rng.normal() > 0)]
            for i, (a, b) in enumerate(rng.normal(size=(80, 2)))]
    rows[3][1] = ""  # a missing value in x1
    path = tmp_path / "d.csv"
    path.write_text("x0,x1,ward,y\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    rc = _run(["variance", "--data", str(path), "--target", "y", "--out", str(tmp_path / "o")])
    _one_line_error(capsys, rc, "'ward'", "--features")
    rc = _run(["variance", "--data", str(path), "--target", "y", "--features", "x0,x1", "--out", str(tmp_path / "o")])
    _one_line_error(capsys, rc, "'x1'", "--dropna")
    out = tmp_path / "o"
    rc = _run(["variance", "--data", str(path), "--target", "y", "--features", "x0,x1", "--dropna",
               "--estimators", "reparam", "--out", str(out), *SMALL])
    assert rc == 0
    record = json.loads((out / "variance.json").read_text())
    assert record["dim"] == 3  # intercept, x0, x1: the text column left out
    rc = _run(["variance", "--model", "poisson", "--data", str(path), "--target", "y", "--features", "x0,x1",
               "--exposure", "x0", "--dropna", "--out", str(tmp_path / "o2")])
    _one_line_error(capsys, rc, "--exposure column 'x0' is also listed in --features")  # as advi-jax fit says
