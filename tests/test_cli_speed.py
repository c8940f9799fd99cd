"""What keeps `advi-jax fit` fast gives the same results: the figure process, the background
compilation of the post-fit programs, the keys made without compiling, the fused post-fit program."""

import logging
import types

import jax
import numpy as np
import pytest

import advi_jax as aj


@pytest.mark.parametrize("seed", [0, 1, 7, 2 ** 31 - 1, 2 ** 31, -3])
def test_prng_key_is_jax_random_key(seed):
    from advi_jax.cli.fit import prng_key

    ours, theirs = prng_key(seed), jax.random.key(seed)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    np.testing.assert_array_equal(jax.random.key_data(ours), jax.random.key_data(theirs))
    np.testing.assert_array_equal(jax.random.normal(ours, (3,)), jax.random.normal(theirs, (3,)))


def _figure_inputs():
    from advi_jax.models.predictive import PredictiveCheck

    rng = np.random.default_rng(0)
    result = types.SimpleNamespace(elbo=np.linspace(-90.0, -60.0, 12), family=types.SimpleNamespace(name="fullrank"),
                                   estimator=None, method="glm_exact")
    rows = [{"parameter": p, "mean": m, "5%": m - 1.0, "95%": m + 1.0}
            for p, m in (("intercept", 0.5), ("beta[a]", -0.3), ("beta[b]", 1.2))]
    y = (rng.random(50) < 0.4).astype(float)
    y_rep = (rng.random((40, 50)) < 0.4).astype(np.float32)
    share = y_rep.mean(axis=1)
    check = PredictiveCheck("logistic", {"share of ones": y.mean()}, {"share of ones": share},
                            {"share of ones": float(np.mean(share > y.mean()))}, False, "", y, y_rep)
    return result, rows, check


def test_figure_process_writes_the_same_pngs_as_this_process(tmp_path):
    from advi_jax.cli.figures import FigureJobs, check_payload, elbo_payload

    result, rows, check = _figure_inputs()
    written = {}
    for where, separate in (("process", True), ("here", False)):
        jobs = FigureJobs.start(tmp_path / where, separate=separate)
        assert (jobs.process is not None) == separate
        jobs.add("elbo.png", "elbo", elbo_payload(result))
        jobs.add("marginals.png", "marginals", rows)
        jobs.add("predictive_check.png", "predictive", check_payload(check))
        written[where] = jobs.finish()
        jobs.close()
    assert [p.name for p in written["process"]] == ["elbo.png", "marginals.png", "predictive_check.png"]
    for a, b in zip(written["process"], written["here"]):
        assert a.read_bytes() == b.read_bytes() and a.stat().st_size > 1000


def test_figure_process_reports_an_unwritable_file_as_the_oserror(tmp_path):
    from advi_jax.cli.figures import FigureJobs, elbo_payload

    (tmp_path / "elbo.png").mkdir()  # a folder where the PNG should go
    jobs = FigureJobs.start(tmp_path, separate=True)
    jobs.add("elbo.png", "elbo", elbo_payload(_figure_inputs()[0]))
    with pytest.raises(OSError, match="directory"):
        jobs.finish()
    jobs.close()


def test_a_failed_figure_process_leaves_the_figures_to_this_process(tmp_path, monkeypatch, capsys):
    from advi_jax.cli import figures

    monkeypatch.setattr(figures, "_CHILD", "import sys; sys.exit(3)")  # a process that dies at once
    result, rows, _ = _figure_inputs()
    jobs = figures.FigureJobs.start(tmp_path, separate=True)
    jobs.add("elbo.png", "elbo", figures.elbo_payload(result))
    jobs.add("marginals.png", "marginals", rows)
    written = jobs.finish()
    assert "figure process failed (it ended with status 3" in capsys.readouterr().err
    assert [p.name for p in written] == ["elbo.png", "marginals.png"]
    assert all(p.stat().st_size > 1000 for p in written)


def test_close_before_finish_ends_the_figure_process(tmp_path):
    from advi_jax.cli.figures import FigureJobs

    jobs = FigureJobs.start(tmp_path, separate=True)
    process = jobs.process
    jobs.close()
    assert process.poll() is not None and jobs.process is None


def test_post_fit_programs_compile_once_beside_the_fit(tmp_path, caplog, capsys):
    """The background compilation hits: the diagnostics' and the command's post-fit programs are
    each compiled once (by the warm-up), not again when called; the outputs equal a plain run's."""
    from advi_jax.cli import main
    from advi_jax.cli.fit import _posterior_outputs
    from advi_jax.models.predictive import check_replications

    rng = np.random.default_rng(3)
    n = 83  # a shape no other test compiles
    x = rng.normal(size=(n, 2))
    y = (rng.random(n) < 1 / (1 + np.exp(-(0.3 + x @ np.array([1.0, -0.7]))))).astype(int)
    lines = ["a,b,y"] + [f"{x[i, 0]:.5f},{x[i, 1]:.5f},{y[i]}" for i in range(n)]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level(logging.WARNING):
            code = main(["fit", "--data", str(tmp_path / "d.csv"), "--target", "y", "--out", str(tmp_path / "out"),
                         "--quiet", "--no-plots", "--draws", "4096"])
    finally:
        jax.config.update("jax_log_compiles", False)
    assert code == 0
    # a k-hat over 0.7 from the 4,096 diagnostic draws is re-estimated from 16,384 (the summary says so): that
    # sample runs the warm-up's 4,096-draw program four times (importance.draw_blocks), nothing compiles for it
    capsys.readouterr()
    compiled = [(r.getMessage(), r.threadName) for r in caplog.records
                if "Finished XLA compilation of" in r.getMessage()]
    for name in ("jit(centred_log_ratios)", "jit(posterior_outputs)"):
        threads = [thread for message, thread in compiled if name in message]
        assert threads == ["advi_jax-warmup"], (name, compiled)  # compiled beside the fit, then found
    # the fused program's draws and replications are the separate calls' (bit for bit)
    model = aj.models.logistic_regression(x, y.astype(float))
    result = aj.fit(model, key=jax.random.key(0), family="fullrank", progress=False, warn=False)
    key, check_key = result.report.diagnostic_sample[0], jax.random.key(9)
    draws, original, y_rep = _posterior_outputs(result, key, 4096, check_key, 400)
    separate = result.sample(key, 4096)
    for k in separate:
        np.testing.assert_array_equal(draws[k], separate[k])
    expected = aj.models.coefficients_on_original_scale(model, separate)
    np.testing.assert_array_equal(original["beta"], expected["beta"])
    np.testing.assert_allclose(original["intercept"], expected["intercept"], rtol=1e-6)
    subset = {k: np.asarray(v)[:400] for k, v in separate.items()}
    np.testing.assert_array_equal(y_rep, aj.models.posterior_predictive(model, subset, check_key))
    check = aj.models.predictive_check(model, subset, check_key)
    assert check_replications(model, y_rep).message == check.message
    capsys.readouterr()
