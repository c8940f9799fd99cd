"""`advi-jax fit`: the default run and bad input as a real command in a subprocess, other runs in-process.

The subprocess tests check what only a real process shows (the entry point, the exit status, no
traceback on stderr); the CSV and formula runs call the same entry function with the same argv
in this process (`_run_here`), which saves a Python and JAX start-up per run.
"""

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


def _run_here(args, cwd, monkeypatch, capsys):
    """`advi-jax ARGS` run in this process from `cwd`: a result with returncode, stdout and stderr."""
    import types

    from advi_jax.cli import main

    capsys.readouterr()
    with monkeypatch.context() as patch:
        patch.chdir(cwd)
        try:
            code = main(list(args))
        except SystemExit as stop:  # argparse errors
            code = stop.code
    out, err = capsys.readouterr()
    return types.SimpleNamespace(returncode=code, stdout=out, stderr=err)


def test_default_run_fits_the_bundled_logistic_regression(tmp_path):
    proc = _run(["fit"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "beta[worst_texture]" in out and "intercept" in out and "PSIS k-hat" in out
    folder = tmp_path / "advi_jax_out" / "fit"
    for name in ("summary.csv", "summary.json", "draws.npz", "elbo.png", "marginals.png", "predictive_check.png"):
        assert (folder / name).stat().st_size > 0, name
    info = json.loads((folder / "summary.json").read_text())
    assert info["fit"]["num_rows"] == 569 and info["fit"]["family"] == "fullrank"
    assert len(info["summary"]) == 31
    draws = np.load(folder / "draws.npz")
    assert draws["beta"].shape == (4096, 30)
    # the full-rank default is trustworthy on this data: PSIS k-hat below 0.7
    assert info["fit"]["khat"] < 0.7
    # worst_texture is the clearest predictor of malignancy: its 90% interval excludes zero
    row = next(r for r in info["summary"] if r["parameter"] == "beta[worst_texture]")
    assert row["5%"] > 0
    # the data-scale coefficient is the standardised one divided by the feature's sd
    j = info["fit"]["feature_names"].index("worst_texture")
    sd = info["fit"]["standardization"]["sd"][j]
    assert abs(row["mean_data_scale"] - row["mean"] / sd) < 1e-6 * abs(row["mean"] / sd) + 1e-9
    assert info["fit"]["priors"]["beta"]["scale"] == 2.5 and "On the data's own scale" in out
    assert "posterior predictive check: share of ones" in out


def test_csv_run_with_exposure(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    n = 300
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    years = rng.uniform(0.5, 3.0, n)
    counts = rng.poisson(years * np.exp(0.3 + 0.8 * x1 - 0.5 * x2))
    lines = ["x1,x2,years,claims"] + [f"{a:.5f},{b:.5f},{c:.4f},{d}" for a, b, c, d in zip(x1, x2, years, counts)]
    (tmp_path / "claims.csv").write_text("\n".join(lines) + "\n")
    proc = _run_here(["fit", "--model", "poisson", "--data", "claims.csv", "--target", "claims", "--exposure", "years",
                 "--steps", "2000", "--out", "res", "--quiet", "--no-plots"], cwd=tmp_path,
                     monkeypatch=monkeypatch, capsys=capsys)
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
    (["fit", "--seed", "99999999999999999999"], None, "--seed"),  # past jax.random.key's int64 (was an OverflowError)
    (["fit", "--family", "gaussian"], None, "--family"),
    (["fit", "--draws", "1"], None, "at least 2 draws"),
    (["fit", "--data", "{f}", "--target", "y"], "a;b;y\n1;2;0\n2;3;1\n3;1;0\n", "--delimiter ';'"),
    (["fit", "--data", "{f}", "--target", "y"], "a,b,y\n1,2,0\n,3,1\n3,,0\n4,1,1\n", "--dropna"),
    (["fit", "--data", "{f}", "--target", "y", "--delimiter", "ab"], "a,y\n1,0\n2,1\n", "delimiter"),
    (["fit", "--data", "{f}", "--formula", "y ~ a", "--target", "y"], "a,y\n1,0\n2,1\n", "--formula"),
    (["fit", "--data", "{f}", "--formula", "y ~ a + nope"], "a,y\n1,0\n2,1\n3,0\n", "nope"),
    (["fit", "--data", "{f}", "--formula", "y ~ a"], "a,y\n1,0\nNA,1\n3,0\n", "--dropna"),
    (["fit", "--data", "{f}", "--formula", "y ~ a"], "a;y\n1;0\n2;1\n3;0\n", "--delimiter ';'"),
    # the two exact GLM methods each fit one kind of model: glm_grouped the --group one, glm_exact the other
    (["fit", "--data", "{f}", "--target", "y", "--method", "glm_grouped"], "a,y\n1,0\n2,1\n3,0\n4,1\n", "--group"),
    (["fit", "--data", "{f}", "--target", "y", "--group", "g", "--method", "glm_exact"],
     "a,g,y\n1,u,0\n2,v,1\n3,u,0\n4,v,1\n", "glm_grouped"),
]


def _main_in_process(args, capsys):
    """Run `advi-jax ARGS` in this process (bad input fails before any fit: no subprocess needed)."""
    from advi_jax.cli import main

    try:
        code = main(list(args))
    except SystemExit as stop:  # argparse errors
        code = stop.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("args, content, needle", BAD_INPUTS)
def test_bad_input_exits_2_with_one_line(args, content, needle, tmp_path, monkeypatch, capsys):
    if content is not None:
        name = _write(tmp_path / "data.csv", content)
        args = [a.replace("{f}", name) for a in args]
    monkeypatch.chdir(tmp_path)
    code, err = _main_in_process(args, capsys)  # an uncaught exception (a traceback) fails the test here
    assert code == 2
    message = err.strip()
    assert len(message.splitlines()) == 1, message
    assert needle in message, message
    assert not (tmp_path / "advi_jax_out").exists()


def test_bad_input_in_a_real_process_prints_no_traceback(tmp_path):
    _write(tmp_path / "data.csv", "a,b,y\n1,red,0\n2,blue,1\n3,red,0\n")
    proc = _run(["fit", "--data", "data.csv", "--target", "y"], cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "'b'" in proc.stderr


def test_out_under_a_regular_file_is_refused_before_fitting(tmp_path, monkeypatch, capsys):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    proc = _run_here(["fit", "--out", "notes.txt/results"], cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert proc.returncode == 2
    message = proc.stderr.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message, message
    assert "notes.txt" in message and "is a file" in message
    assert "regression on" not in proc.stderr  # refused before the fit started


def test_truncated_npz_exits_2_naming_the_file(tmp_path, monkeypatch, capsys):
    np.savez_compressed(tmp_path / "full.npz", a=np.arange(500.0), y=np.arange(500) % 2)
    blob = (tmp_path / "full.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(blob[: len(blob) // 2])
    monkeypatch.chdir(tmp_path)
    for extra in ([], ["--formula", "y ~ a"]):
        code, err = _main_in_process(["fit", "--data", "cut.npz", *(extra or ["--target", "y"])], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "cut.npz" in err and "truncated" in err


def test_csv_with_text_column_missing_values_and_semicolons(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(1)
    n = 200
    a, b = rng.normal(5.0, 2.0, n), rng.normal(size=n)
    y = rng.binomial(1, 1 / (1 + np.exp(-(0.4 * (a - 5) - 0.8 * b))))
    lines = ["id;a;b;y"] + [f"p{i};{u:.4f};{v:.4f};{w}" for i, (u, v, w) in enumerate(zip(a, b, y))]
    lines[5] = "p4;;0.1;1"  # a missing value in a used column
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    proc = _run_here(["fit", "--data", "t.csv", "--delimiter", ";", "--target", "y", "--features", "a,b", "--dropna",
                 "--steps", "400", "--draws", "300", "--out", "res", "--no-plots"], cwd=tmp_path,
                     monkeypatch=monkeypatch, capsys=capsys)
    assert proc.returncode == 0, proc.stderr
    assert "dropped 1 of 200 rows with missing values ('a' in rows 4)" in proc.stderr
    info = json.loads((tmp_path / "res" / "summary.json").read_text())
    assert info["fit"]["num_rows"] == 199 and info["fit"]["feature_names"] == ["a", "b"]
    keep = np.arange(n) != 4
    np.testing.assert_allclose(info["fit"]["standardization"]["mean"], [a[keep].mean(), b[keep].mean()],
                               rtol=1e-5, atol=1e-5)
    rows = {r["parameter"]: r for r in info["summary"]}
    assert rows["beta[a]"]["mean_data_scale"] == pytest.approx(
        rows["beta[a]"]["mean"] / info["fit"]["standardization"]["sd"][0], rel=1e-6)
    header = (tmp_path / "res" / "summary.csv").read_text().splitlines()[0]
    assert "mean_data_scale" in header


def test_formula_run_keeps_design_column_names(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(2)
    n = 300
    x1, g = rng.normal(size=n), rng.choice(["lo", "mid", "hi"], n)
    eta = 0.2 + 0.7 * x1 + np.where(g == "mid", 0.5, 0.0) + np.where(g == "lo", -0.6, 0.0)
    y = rng.poisson(np.exp(eta))
    lines = ["x1,group,visits"] + [f"{u:.4f},{v},{w}" for u, v, w in zip(x1, g, y)]
    (tmp_path / "v.csv").write_text("\n".join(lines) + "\n")
    proc = _run_here(["fit", "--model", "poisson", "--data", "v.csv", "--formula", "visits ~ x1 + C(group)",
                 "--steps", "400", "--draws", "300", "--out", "res"], cwd=tmp_path,
                     monkeypatch=monkeypatch, capsys=capsys)
    assert proc.returncode == 0, proc.stderr
    info = json.loads((tmp_path / "res" / "summary.json").read_text())
    assert info["fit"]["formula"] == "visits ~ x1 + C(group)"
    assert info["fit"]["feature_names"] == ["x1", "C(group)[T.lo]", "C(group)[T.mid]"]
    rows = {r["parameter"]: r for r in info["summary"]}
    assert "beta[C(group)[T.mid]]" in rows and "beta[C(group)[T.mid]]" in proc.stdout
    # the data-scale effect of group 'mid' against the reference 'hi' is about 0.5
    r = rows["beta[C(group)[T.mid]]"]
    assert abs(r["mean_data_scale"] - 0.5) < 4 * r["sd_data_scale"] + 0.05
    assert not info["fit"]["predictive_check"]["overdispersed"]
    assert (tmp_path / "res" / "predictive_check.png").stat().st_size > 0


def test_marginals_figure_gives_each_parameter_group_its_own_scale():
    from advi_jax.cli.fit_plots import marginals_figure

    rows = [{"parameter": "intercept", "mean": 1.0, "5%": 0.99, "50%": 1.0, "95%": 1.01}]
    rows += [{"parameter": f"beta[x{j}]", "mean": m, "5%": m - 0.008, "50%": m, "95%": m + 0.008}
             for j, m in enumerate((-0.2, 0.05, 0.2))]
    fig = marginals_figure(rows)
    axes = fig.get_axes()
    assert len(axes) == 2
    intercept_axis, beta_axis = axes
    assert [t.get_text() for t in intercept_axis.get_yticklabels()] == ["intercept"]
    lo, hi = beta_axis.get_xlim()
    assert hi < 0.5 and lo > -0.5  # the intercept's scale does not squeeze the coefficients
    assert (0.016 / (hi - lo)) > 0.02  # each 90% interval spans a visible share of its panel


def test_load_features_with_exposure_and_formula_from_npz(tmp_path):
    import argparse

    from advi_jax.cli.fit import _load

    np.savez(tmp_path / "c.npz", x1=np.array([0.1, 0.5, -0.3, 1.2]), x2=np.array([1.0, 2.0, 3.0, 4.0]),
             years=np.array([1.0, 2.0, 0.5, 1.5]), claims=np.array([0, 2, 1, 3]))
    base = dict(model="poisson", data=str(tmp_path / "c.npz"), target="claims", features="x1", exposure="years",
                formula=None, delimiter=",", dropna=False, prior_scale=1.0)
    x, y, names, exposure, _ = _load(argparse.Namespace(**base))
    assert names == ("x1",) and x.shape == (4, 1)  # --features no longer hides the --exposure column
    np.testing.assert_array_equal(exposure, [1.0, 2.0, 0.5, 1.5])
    model, *_ = _load(argparse.Namespace(**{**base, "target": None, "features": None,
                                             "formula": "claims ~ x1 + x2"}))
    assert model.info.feature_names == ("x1", "x2")
    np.testing.assert_allclose(model.data["offset"], np.log([1.0, 2.0, 0.5, 1.5]), rtol=1e-6)


def test_tsv_files_default_to_tab_delimiter(tmp_path):
    import argparse

    from advi_jax.cli.fit import _load

    (tmp_path / "t.tsv").write_text("a\tb\ty\n1\t2\t0\n2\t1\t1\n3\t5\t0\n")
    ns = argparse.Namespace(model="logistic", data=str(tmp_path / "t.tsv"), target="y", features=None,
                            exposure=None, formula=None, delimiter=",", dropna=False, prior_scale=2.5)
    x, y, names, _, _ = _load(ns)
    assert names == ("a", "b") and x.shape == (3, 2)


def test_negbin_run_learns_the_dispersion(tmp_path):
    rng = np.random.default_rng(5)
    n, phi = 400, 1.5
    x1 = rng.normal(size=n)
    years = rng.uniform(0.5, 3.0, n)
    mu = years * np.exp(0.4 + 0.6 * x1)
    counts = rng.negative_binomial(phi, phi / (phi + mu))
    lines = ["x1,years,claims"] + [f"{a:.5f},{c:.4f},{d}" for a, c, d in zip(x1, years, counts)]
    (tmp_path / "claims.csv").write_text("\n".join(lines) + "\n")
    proc = _run(["fit", "--model", "negbin", "--data", "claims.csv", "--target", "claims", "--exposure", "years",
                 "--out", "res", "--quiet", "--no-plots", "--draws", "2000"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    info = json.loads((tmp_path / "res" / "summary.json").read_text())
    rows = {r["parameter"]: r for r in info["summary"]}
    assert set(rows) == {"intercept", "beta[x1]", "phi"} and info["fit"]["method"] == "glm_exact"
    assert rows["phi"]["5%"] < phi < rows["phi"]["95%"] or abs(rows["phi"]["mean"] - phi) < 3 * rows["phi"]["sd"]
    assert info["fit"]["priors"]["phi"]["mean"] == 1.0
    # the NB fit absorbs the over-dispersion a Poisson fit of the same counts is flagged for
    assert not info["fit"]["predictive_check"]["overdispersed"]


def test_summary_rows_use_the_draws_the_caller_already_made():
    import jax

    import advi_jax as aj

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = (rng.random(200) < 1 / (1 + np.exp(-x @ np.array([1.0, -0.5, 0.0])))).astype(float)
    result = aj.fit(aj.models.logistic_regression(x, y), key=jax.random.key(0), family="fullrank", diagnostics=False)
    key = jax.random.key(1)
    draws = {k: np.asarray(v) for k, v in result.sample(key, 500).items()}
    given = result.summary_rows(key, 500, draws=draws)
    assert given == result.summary_rows(key, 500)  # the same draws as drawing them again
    shifted = result.summary_rows(key, 500, draws={k: v + 1.0 for k, v in draws.items()})
    assert [r["mean"] for r in shifted] == pytest.approx([r["mean"] + 1.0 for r in given], abs=1e-5)


def test_meanfield_dadvi_run_reports_its_linear_response_gaussian(tmp_path, monkeypatch, capsys):
    """`--method dadvi --family meanfield`: the table, draws and k-hat are the linear-response Gaussian's
    (its sds corrected for the predictors' correlation), q's own k-hat kept beside it."""
    rng = np.random.default_rng(3)
    n = 300
    z = rng.normal(size=n)
    x1, x2 = z + 0.3 * rng.normal(size=n), z + 0.3 * rng.normal(size=n)  # correlated 0.9
    y = (rng.random(n) < 1 / (1 + np.exp(-(0.3 + x1 - 0.5 * x2)))).astype(int)
    lines = ["x1,x2,y"] + [f"{a:.5f},{b:.5f},{c}" for a, b, c in zip(x1, x2, y)]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    args = ["fit", "--data", "d.csv", "--target", "y", "--method", "dadvi", "--family", "meanfield", "--out", "res",
            "--quiet", "--no-plots", "--draws", "4000"]
    proc = _run_here(args, tmp_path, monkeypatch, capsys)
    assert proc.returncode == 0, proc.stderr
    info = json.loads((tmp_path / "res" / "summary.json").read_text())
    assert info["fit"]["shown"] == "linear_response" and info["fit"]["method"] == "dadvi"
    assert np.isfinite(info["fit"]["khat_q"]) and "linear-response Gaussian" in proc.stdout
    rows = {r["parameter"]: r for r in info["summary"]}
    draws = np.load(tmp_path / "res" / "draws.npz")
    # the table and the saved draws are the same Gaussian's
    assert rows["beta[x1]"]["sd"] == pytest.approx(float(draws["beta"][:, 0].std(ddof=1)), rel=1e-3)
    # and that Gaussian is the linear-response one: the same fit by hand, its lr_sd (x1, x2 in R)
    import jax

    import advi_jax as aj
    from advi_jax.cli.fit import _shown

    model = aj.models.logistic_regression(np.stack([x1, x2], 1), y, feature_names=["x1", "x2"])
    with pytest.warns(aj.DiagnosticWarning, match="linear-response"):  # q's k-hat flags it, and says what helps
        result = aj.fit(model, key=jax.random.key(0), method="dadvi", family="meanfield", progress=False)
    lr_sd = np.asarray(result.extras["lr_sd"])
    q_sd = np.asarray(result.family.scale(result.params))
    shown, note = _shown(result, jax.random.key(1), 4000)
    assert shown.family.name == "fullrank" and "linear-response" in note
    sd = np.asarray(shown.sample(jax.random.key(2), 20000)["beta"]).std(0)
    assert sd == pytest.approx(lr_sd[1:3], rel=0.03)
    assert rows["beta[x1]"]["sd"] == pytest.approx(lr_sd[1], rel=0.05)
    assert np.all(lr_sd[1:3] > 1.5 * q_sd[1:3])  # the mean-field q is too narrow along the correlated pair
    # a full-rank fit is shown as itself
    full = aj.fit(model, key=jax.random.key(0), family="fullrank", progress=False, diagnostics=False)
    assert _shown(full, jax.random.key(1), 100) == (full, "")


def test_group_column_first_in_a_csv_with_a_byte_order_mark(tmp_path, monkeypatch, capsys):
    """`--group` reads the header itself: a byte order mark (Excel's "CSV UTF-8") must not hide the first column."""
    rng = np.random.default_rng(2)
    rows = [f"{'north' if i % 2 else 'south'},{v:.4f},{int(v + rng.normal() > 0)}"
            for i, v in enumerate(rng.normal(size=60))]
    (tmp_path / "excel.csv").write_bytes(("ward,x,y\r\n" + "\r\n".join(rows) + "\r\n").encode("utf-8-sig"))
    proc = _run_here(["fit", "--data", "excel.csv", "--target", "y", "--group", "ward", "--draws", "200",
                      "--out", "res", "--quiet", "--no-plots"], cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert proc.returncode == 0, proc.stderr
    assert "u[north]" in proc.stdout and "beta[x]" in proc.stdout
