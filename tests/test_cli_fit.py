"""`advi-jax fit` run as a real command in a subprocess: the default, a CSV run, and bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, cwd):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "advi_jax", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_default_run_fits_the_bundled_logistic_regression(tmp_path):
    proc = _run(["fit"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "beta[worst_texture]" in out and "intercept" in out and "PSIS k-hat" in out
    folder = tmp_path / "advi_jax_out" / "fit"
    for name in ("summary.csv", "summary.json", "draws.npz", "elbo.png", "marginals.png"):
        assert (folder / name).stat().st_size > 0, name
    info = json.loads((folder / "summary.json").read_text())
    assert info["fit"]["num_rows"] == 569 and info["fit"]["family"] == "fullrank"
    assert len(info["summary"]) == 31
    draws = np.load(folder / "draws.npz")
    assert draws["beta"].shape == (4000, 30)
    # the full-rank default is trustworthy on this data: PSIS k-hat below 0.7
    assert info["fit"]["khat"] < 0.7
    # worst_texture is the clearest predictor of malignancy: its 90% interval excludes zero
    row = next(r for r in info["summary"] if r["parameter"] == "beta[worst_texture]")
    assert row["5%"] > 0


def test_csv_run_with_exposure(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    years = rng.uniform(0.5, 3.0, n)
    counts = rng.poisson(years * np.exp(0.3 + 0.8 * x1 - 0.5 * x2))
    lines = ["x1,x2,years,claims"] + [f"{a:.5f},{b:.5f},{c:.4f},{d}" for a, b, c, d in zip(x1, x2, years, counts)]
    (tmp_path / "claims.csv").write_text("\n".join(lines) + "\n")
    proc = _run(["fit", "--model", "poisson", "--data", "claims.csv", "--target", "claims", "--exposure", "years",
                 "--steps", "2000", "--out", "res", "--quiet", "--no-plots"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    info = json.loads((tmp_path / "res" / "summary.json").read_text())
    rows = {r["parameter"]: r for r in info["summary"]}
    assert set(rows) == {"intercept", "beta[x1]", "beta[x2]"}
    # coefficients on the standardised scale: true slope * feature sd (about 0.8 and -0.5)
    assert abs(rows["beta[x1]"]["mean"] - 0.8 * x1.std()) < 4 * rows["beta[x1]"]["sd"] + 0.02
    assert abs(rows["beta[x2]"]["mean"] + 0.5 * x2.std()) < 4 * rows["beta[x2]"]["sd"] + 0.02
    assert not (tmp_path / "res" / "elbo.png").exists()


def _write(path, text):
    path.write_text(text)
    return path.name


BAD_INPUTS = [
    (["fit", "--data", "missing.csv", "--target", "y"], None, "missing.csv"),
    (["fit", "--data", "{f}", "--target", "nope"], "a,y\n1,0\n2,1\n3,0\n", "nope"),
    (["fit", "--data", "{f}", "--target", "y"], "a,b,y\n1,red,0\n2,blue,1\n3,red,0\n", "b"),
    (["fit", "--data", "{f}", "--target", "y"], "a,y\n1,0\nnan,1\n3,0\n", "a"),
    (["fit", "--data", "{f}", "--target", "y"], "a,y\n1,0\n2,2\n3,1\n", "0"),
    (["fit", "--model", "poisson", "--data", "{f}", "--target", "y"], "a,y\n1,0\n2,-1\n3,1\n", "y"),
    (["fit", "--data", "{f}", "--target", "y"], "a,y\n1,0\n", "row"),
    (["fit", "--data", "{f}"], "a,y\n1,0\n2,1\n", "--target"),
    (["fit", "--steps", "0"], None, "--steps"),
    (["fit", "--family", "gaussian"], None, "--family"),
]


@pytest.mark.parametrize("args, content, needle", BAD_INPUTS)
def test_bad_input_exits_2_with_one_line(args, content, needle, tmp_path):
    if content is not None:
        name = _write(tmp_path / "data.csv", content)
        args = [a.replace("{f}", name) for a in args]
    proc = _run(args, cwd=tmp_path)
    assert proc.returncode == 2
    message = proc.stderr.strip()
    assert "Traceback" not in message and len(message.splitlines()) == 1, message
    assert needle in message, message
    assert not (tmp_path / "advi_jax_out").exists()
