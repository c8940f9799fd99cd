"""Tests for advi_jax.vae: modules, objectives, evaluation, training, CLI, resume, data parallel."""

import argparse
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import advi_jax as aj
from advi_jax.families import FullRankGaussian, FullRankParams, MeanFieldGaussian, MeanFieldParams
from advi_jax.vae import (
    AmortizedFamily,
    NonFiniteLossError,
    VAEConfig,
    build_vae,
    evaluate_elbo,
    find_data_file,
    load_checkpoint,
    load_mnist,
    log_likelihood,
    make_loss,
    parse_objective,
    per_example_bound,
    train,
)

from conftest import FAST_XLA_FLAGS, fast_xla, require_data_file

REPO = Path(__file__).resolve().parents[1]
SMALL = VAEConfig(latent=3, hidden=(16,))
TINY = VAEConfig(latent=3, data_dim=20, hidden=(16,))  # for the math tests (fast to compile)


def _binary_data(key, n=64, d=784):
    return np.asarray(jax.random.bernoulli(key, 0.3, (n, d)), np.float32)


def _finite(tree):
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("arch,family,likelihood", [
    ("mlp", "meanfield", "bernoulli"),
    ("mlp", "fullrank", "gaussian"),
    ("conv", "meanfield", "bernoulli"),
])
def test_shapes_and_finite(key, arch, family, likelihood):
    config = VAEConfig(latent=3, hidden=(16,), arch=arch, family=family, likelihood=likelihood)
    vae = build_vae(config, key)
    x = _binary_data(jax.random.fold_in(key, 1), n=4)
    q = vae.encoder(jnp.asarray(x))
    assert q.loc.shape == (4, 3)
    if family == "meanfield":
        assert isinstance(q, MeanFieldParams) and q.raw_scale.shape == (4, 3)
    else:
        assert isinstance(q, FullRankParams) and q.off_diag.shape == (4, 3, 3)
    z = AmortizedFamily(MeanFieldGaussian() if family == "meanfield" else FullRankGaussian()).sample(
        q, jax.random.fold_in(key, 2), 5)
    assert z.shape == (4, 5, 3)
    assert vae.decoder.mean(z).shape == (4, 5, 784)
    assert vae.decoder.log_prob(z, jnp.asarray(x)[:, None, :]).shape == (4, 5)
    graphdef, params = nnx.split(vae, nnx.Param)
    value, metrics = jax.jit(make_loss(graphdef, parse_objective("iwae-3")))(params, key, jnp.asarray(x))
    assert value.shape == () and np.isfinite(float(value))


@pytest.mark.parametrize("objective,estimator", [
    ("elbo", "reparam"), ("elbo", "stl"), ("iwae-3", "reparam"), ("iwae-3", "stl"), ("iwae-3", "dreg")])
def test_every_estimator_is_finite(key, objective, estimator):
    graphdef, params = nnx.split(build_vae(TINY, key), nnx.Param)
    x = jnp.asarray(_binary_data(jax.random.fold_in(key, 1), n=4, d=20))
    loss = make_loss(graphdef, parse_objective(objective, estimator))
    (value, metrics), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params, key, x)
    assert np.isfinite(float(value)) and _finite(grads)
    np.testing.assert_allclose(value, metrics.loss, rtol=1e-5)


@pytest.mark.parametrize("family", [MeanFieldGaussian(), FullRankGaussian()])
def test_analytic_kl_matches_monte_carlo(key, family):
    latent, batch, n = 3, 4, 20000
    k1, k2, k3, k4 = jax.random.split(key, 4)
    loc = jax.random.normal(k1, (batch, latent))
    raw = jax.random.normal(k2, (batch, latent)) * 0.5
    params = (MeanFieldParams(loc, raw) if isinstance(family, MeanFieldGaussian)
              else FullRankParams(loc, raw, 0.3 * jax.random.normal(k3, (batch, latent, latent))))
    amortized = AmortizedFamily(family)
    z = amortized.sample(params, k4, n)
    log_ratio = amortized.log_prob(params, z) + 0.5 * jnp.sum(z * z, -1) + 0.5 * latent * math.log(2 * math.pi)
    mc, se = jnp.mean(log_ratio, 1), jnp.std(log_ratio, 1) / math.sqrt(n)
    analytic = amortized.kl_to_standard_normal(params)
    assert np.all(np.abs(np.asarray(analytic - mc)) < 4 * np.asarray(se) + 1e-4)


def test_iwae_bound_increases_with_k(key):
    vae = build_vae(TINY, key)
    x = jnp.asarray(_binary_data(jax.random.fold_in(key, 1), n=32, d=20))

    def mean_bound(objective):
        keys = jax.random.split(jax.random.fold_in(key, 2), 8)
        f = jax.jit(jax.vmap(lambda k: jnp.mean(per_example_bound(vae, k, x, objective)[1])))
        return float(jnp.mean(f(keys)))

    elbo = mean_bound(parse_objective("elbo", kl="mc"))
    iwae = [mean_bound(parse_objective(f"iwae-{k}")) for k in (1, 5, 50)]
    assert abs(iwae[0] - elbo) < 0.5  # IWAE-1 is the ELBO
    assert elbo < iwae[1] < iwae[2]


def test_dreg_decoder_gradient_is_the_iwae_gradient(key):
    graphdef, params = nnx.split(build_vae(TINY, key), nnx.Param)
    x = jnp.asarray(_binary_data(jax.random.fold_in(key, 1), n=8, d=20))
    grads = {}
    for estimator in ("reparam", "dreg"):
        loss = make_loss(graphdef, parse_objective("iwae-4", estimator))
        grads[estimator] = jax.jit(jax.grad(lambda p: loss(p, key, x)[0]))(params)
    for a, b in zip(jax.tree_util.tree_leaves(grads["reparam"]["decoder"]),
                    jax.tree_util.tree_leaves(grads["dreg"]["decoder"])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    enc_diff = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(
        jax.tree_util.tree_leaves(grads["reparam"]["encoder"]), jax.tree_util.tree_leaves(grads["dreg"]["encoder"]))]
    assert max(enc_diff) > 1e-4


def test_importance_sampled_log_likelihood_matches_ppca(key):
    """Linear-Gaussian VAE (probabilistic PCA): x ~ N(b, W W^T + sigma^2 I) exactly.

    The linear full-rank encoder is set to the exact posterior N(A (x - b), M^{-1}),
    M = I + W^T W / sigma^2, A = M^{-1} W^T / sigma^2, with its Cholesky factor inflated by 1.5,
    so the proposal is good but not exact and the importance weights vary.
    """
    latent, dim, sigma, inflate = 2, 5, 0.7, 1.5
    k1, k2, k3, k4 = jax.random.split(key, 4)
    config = VAEConfig(latent=latent, data_dim=dim, hidden=(), likelihood="gaussian", family="fullrank")
    vae = build_vae(config, k1)
    W = np.asarray(0.8 * jax.random.normal(k2, (dim, latent)), np.float64)
    b = np.asarray(jax.random.normal(k3, (dim,)), np.float64)
    vae.decoder.layers[0].kernel[...] = jnp.asarray(W.T, jnp.float32)
    vae.decoder.layers[0].bias[...] = jnp.asarray(b, jnp.float32)
    vae.decoder.raw_scale[...] = jnp.full((dim,), math.log(math.expm1(sigma)))
    M_inv = np.linalg.inv(np.eye(latent) + W.T @ W / sigma ** 2)
    A = M_inv @ W.T / sigma ** 2
    chol = inflate * np.linalg.cholesky(M_inv)
    rows, cols = np.tril_indices(latent, -1)
    kernel = np.zeros((dim, 2 * latent + len(rows)))
    kernel[:, :latent] = A.T
    bias = np.concatenate([-A @ b, np.log(np.expm1(np.diag(chol))), chol[rows, cols]])
    vae.encoder.head.linear.kernel[...] = jnp.asarray(kernel, jnp.float32)
    vae.encoder.head.linear.bias[...] = jnp.asarray(bias, jnp.float32)

    cov = W @ W.T + sigma ** 2 * np.eye(dim)
    x = np.asarray(jax.random.multivariate_normal(k4, b, cov, (20,)), np.float32)
    diff = x.astype(np.float64) - b[None, :]
    exact = -0.5 * (np.einsum("ni,ij,nj->n", diff, np.linalg.inv(cov), diff)
                    + np.linalg.slogdet(cov)[1] + dim * math.log(2 * math.pi))
    graphdef, params = nnx.split(vae, nnx.Param)
    estimate = log_likelihood(graphdef, params, x, jax.random.fold_in(key, 5), num_samples=5000,
                              chunk_size=1000, batch_size=10)
    # relative weight variance ~ (1.5^2 / sqrt(2 * 1.5^2 - 1))^2 - 1 = 0.45: standard error ~0.01 nats
    np.testing.assert_allclose(estimate, exact, atol=0.04)
    assert abs(np.mean(estimate - exact)) < 0.01
    elbo = evaluate_elbo(graphdef, params, x, key, objective=parse_objective("elbo-200"))
    assert np.mean(elbo) < np.mean(exact) - 0.05  # the inflated q leaves a visible gap


def test_missing_data_file_lists_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        find_data_file("no_such_file.npz", data_dir=tmp_path)


@pytest.mark.slow
def test_training_on_mnist_subset_reduces_loss(key):
    require_data_file("mnist.npz")  # the real file: skipped with the reason when absent
    data = load_mnist()
    config = VAEConfig(latent=8, hidden=(64,))
    result = train(config, data.x_train[:1000], key=key, epochs=10, batch_size=50, progress=False)
    history = result.history  # 10 epochs x 20 steps = 200 steps
    assert len(history) == 10 and history[-1] < history[0] - 150, history


def test_training_on_the_shipped_fixture_reduces_loss(key, mnist_like_dir):
    """The MNIST path end to end on the small set that ships with the tests (runs everywhere)."""
    data = load_mnist("mnist", data_dir=mnist_like_dir)
    config = VAEConfig(latent=4, hidden=(32,))
    result = train(config, data.x_train, key=key, epochs=6, batch_size=50, progress=False)
    assert len(result.history) == 6 and result.history[-1] < result.history[0] - 100, result.history
    assert result.step_losses.shape == (6 * 6,) and np.all(np.isfinite(result.step_losses))
    np.testing.assert_allclose(result.step_losses.reshape(6, 6).mean(1), result.history, rtol=1e-5)
    bounds = aj.vae.evaluate_bounds(result.graphdef, result.state.params, data.x_test > 0.5,
                                    jax.random.fold_in(key, 1), num_samples=20)
    assert bounds.elbo.shape == (100,) and np.all(bounds.elbo <= bounds.log_likelihood + 1e-3)


def test_one_load_mnist_and_one_data_mesh():
    import importlib.util

    import advi_jax.vae as vae_module

    assert vae_module.load_mnist is aj.data.load_mnist and vae_module.MNIST is aj.data.MNIST
    assert vae_module.data_mesh is aj.data_mesh
    assert importlib.util.find_spec("advi_jax.vae.data") is None
    mesh = aj.data_mesh(jax.devices()[:1])
    assert mesh.axis_names == ("data",) and mesh.size == 1
    with pytest.raises(TypeError, match="devices must be jax devices"):
        aj.data_mesh(["cpu"])
    with pytest.raises(ValueError, match="non-empty"):
        aj.data_mesh([])


@pytest.fixture
def no_compile(monkeypatch):
    """Fail the test if `train` gets as far as building the network (the checks come first)."""
    train_module = sys.modules["advi_jax.vae.train"]  # (the package's `train` attribute is the function)

    def refuse(*args, **kwargs):
        raise AssertionError("train built the network before rejecting its input")

    monkeypatch.setattr(train_module, "build_vae", refuse)


@pytest.mark.parametrize("change, error, match", [
    (dict(x=255.0), ValueError, r"x_train must lie in \[0, 1\].*values in \[0, 255\].*divide by 255"),
    (dict(x=-0.5), ValueError, r"x_train must lie in \[0, 1\].*values in \[-0.5, "),
    (dict(x=np.nan), ValueError, r"x_train has a non-finite value nan at row 3, column 5"),
    (dict(epochs=0), ValueError, r"epochs must be an int >= 1, got 0"),
    (dict(epochs=2.0), TypeError, r"epochs must be an int >= 1, got float 2.0"),
    (dict(key=0), TypeError, r"key must be a single PRNG key such as jax.random.key\(0\), got int"),
    (dict(batch_size=0), ValueError, r"batch_size must be an int >= 1, got 0"),
    (dict(objective="iwae-5"), TypeError, r"objective must be an Objective, e.g. parse_objective\('iwae-5'\).*got str"),
    (dict(optimizer="adam"), TypeError, r"optimizer must be an optax GradientTransformation.*got str 'adam'"),
], ids=["0..255", "negative", "nan", "epochs=0", "float epochs", "int key", "batch_size=0", "objective str",
        "optimizer str"])
def test_train_rejects_bad_input_before_compiling(key, no_compile, change, error, match):
    x = _binary_data(key, n=40, d=20)
    if change.get("x") == 255.0:
        x = x * 255.0  # pixel values as stored in mnist.npz
    elif "x" in change:
        x = x.copy()
        x[3, 5] = change["x"]
    kwargs = dict(key=change.get("key", key), epochs=change.get("epochs", 1),
                  batch_size=change.get("batch_size", 10), progress=False,
                  **{k: change[k] for k in ("objective", "optimizer") if k in change})
    with pytest.raises(error, match=match):
        train(TINY, x, **kwargs)


def test_gaussian_decoder_accepts_unbounded_data_but_not_nan(key, no_compile):
    config = VAEConfig(latent=2, data_dim=20, hidden=(8,), likelihood="gaussian")
    x = np.asarray(jax.random.normal(key, (40, 20)), np.float32) * 50.0
    x[0, 0] = np.inf
    with pytest.raises(ValueError, match="non-finite value inf at row 0, column 0"):
        train(config, x, key=key, epochs=1, batch_size=10, binarize=False, progress=False)
    x[0, 0] = 0.0
    with pytest.raises(AssertionError, match="built the network"):  # past the checks
        train(config, x, key=key, epochs=1, batch_size=10, binarize=False, progress=False)


def test_resume_gives_identical_params(key, tmp_path):
    x = _binary_data(key, n=200, d=20) * 0.8
    kwargs = dict(key=key, batch_size=50, progress=False)
    full = train(TINY, x, epochs=3, out_dir=tmp_path / "full", **kwargs)
    train(TINY, x, epochs=1, out_dir=tmp_path / "split", **kwargs)  # "interrupted" after one epoch
    resumed = train(TINY, x, epochs=3, out_dir=tmp_path / "split", resume=True, **kwargs)
    assert resumed.history == full.history
    np.testing.assert_array_equal(resumed.step_losses, full.step_losses)
    assert full.step_losses.shape == (3 * 4,)
    for a, b in zip(jax.tree_util.tree_leaves(full.state.params), jax.tree_util.tree_leaves(resumed.state.params)):
        np.testing.assert_array_equal(a, b)
    state, _, config, meta, _ = load_checkpoint(tmp_path / "split" / "checkpoint.npz", optax.adam(1e-3))
    assert state.epoch == 3 and config == TINY and meta["objective"] == "elbo"


def test_truncated_checkpoint_error_names_the_file(key, tmp_path):
    x = _binary_data(key, n=100, d=20)
    train(TINY, x, key=key, epochs=1, batch_size=50, out_dir=tmp_path, progress=False)
    path = tmp_path / "checkpoint.npz"
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=r"checkpoint\.npz: not a readable VAE checkpoint"):
        train(TINY, x, key=key, epochs=2, batch_size=50, out_dir=tmp_path, resume=True, progress=False)


def _nan_after(num_steps):
    """An optimizer that is plain SGD until `num_steps` updates, then writes NaN."""

    def init(params):
        return jnp.zeros((), jnp.int32)

    def update(updates, count, params=None):
        bad = count >= num_steps
        updates = jax.tree_util.tree_map(lambda g: jnp.where(bad, jnp.nan, -1e-3 * g), updates)
        return updates, count + 1

    return optax.GradientTransformation(init, update)


def test_nan_stops_and_keeps_last_good_checkpoint(key, tmp_path):
    x = _binary_data(key, n=100, d=20)
    optimizer = _nan_after(3)  # two steps per epoch: epoch 2 goes bad
    with pytest.raises(NonFiniteLossError, match="epoch 2.*last good checkpoint"):
        train(TINY, x, key=key, epochs=4, batch_size=50, optimizer=optimizer, out_dir=tmp_path, progress=False)
    state, _, _, _, history = load_checkpoint(tmp_path / "checkpoint.npz", optimizer)
    assert state.epoch == 1 and len(history) == 1 and _finite(state.params)
    good = train(TINY, x, key=key, epochs=1, batch_size=50, optimizer=optimizer, progress=False)
    for a, b in zip(jax.tree_util.tree_leaves(good.state.params), jax.tree_util.tree_leaves(state.params)):
        np.testing.assert_array_equal(a, b)


def test_cli_bad_options_exit_2(capsys):
    from advi_jax.cli import main

    assert main(["vae", "--objective", "iwae"]) == 2
    assert "iwae-K" in capsys.readouterr().err
    assert main(["vae", "--objective", "elbo", "--estimator", "dreg"]) == 2
    with pytest.raises(SystemExit):
        main(["vae", "--epochs", "0"])


def _run(code_or_args, env_extra=None, timeout=240):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), **(env_extra or {}))
    return subprocess.run([sys.executable, *code_or_args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_cli_writes_outputs(tmp_path, mnist_like_dir):
    """On the shipped fixture: default evaluation settings, a progress bar, and every output file."""
    out = tmp_path / "run"
    # the suite's compile options (tests/conftest.py): 12.9 and 9.5 against 16.1 and 15.9 CPU-s for
    # this command on the loaded 2-core machine (benchmarks/PERFORMANCE.md, `suite600`)
    flags = {"XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " " + FAST_XLA_FLAGS).strip()} if fast_xla() else None
    proc = _run(["-m", "advi_jax", "vae", "--epochs", "2", "--batch-size", "50", "--latent", "2",
                 "--hidden", "16", "--data-dir", str(mnist_like_dir), "--out", str(out)], flags)
    assert proc.returncode == 0, proc.stderr
    assert "test log-likelihood (IWAE bound, K=50)" in proc.stdout and "(100 images;" in proc.stdout
    assert "evaluating (K=50)" in proc.stderr and "100/100" in proc.stderr  # the evaluation's progress bar
    for name in ("checkpoint.npz", "metrics.json", "loss.png", "reconstructions.png", "prior_samples.png",
                 "latent_space.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 500, name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_k"] == 50 and metrics["num_test"] == 100 and metrics["data_file"].endswith("mnist.npz")
    assert metrics["test_elbo"] < metrics["test_log_likelihood"] < 0 and len(metrics["train_loss"]) == 2


def test_cli_evaluation_defaults_and_paper_setting():
    """Defaults cost a few per cent of one epoch; --paper-eval is Burda et al.'s K=5000 on every image."""
    from advi_jax.cli import build_parser
    from advi_jax.cli.vae import _eval_settings

    parser = build_parser()
    assert _eval_settings(parser.parse_args(["vae"])) == (1000, 50)
    assert _eval_settings(parser.parse_args(["vae", "--paper-eval"])) == ("all", 5000)
    assert _eval_settings(parser.parse_args(["vae", "--paper-eval", "--eval-k", "50"])) == ("all", 50)
    assert _eval_settings(parser.parse_args(["vae", "--test-subset", "all"])) == ("all", 50)


def test_cli_help_shows_every_default():
    from advi_jax.cli import build_parser
    from advi_jax.cli.vae import _HelpFormatter

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["vae"]
    formatter = _HelpFormatter("advi-jax vae")
    for action in sub._actions:
        if action.option_strings and action.nargs != 0:  # every option that takes a value
            assert "default" in formatter._get_help_string(action), action.option_strings
    text = sub.format_help()
    assert "(default: 1000; all with --paper-eval)" in " ".join(text.split())
    assert "--paper-eval" in text and "(default: 50;" in text and "(default: 50)" in text  # --eval-k, --latent


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_cli_unwritable_out_exits_2_before_training(tmp_path, capsys, monkeypatch, mnist_like_dir):
    from advi_jax.cli import main

    train_module = sys.modules["advi_jax.vae.train"]
    monkeypatch.setattr(train_module, "train", lambda *a, **k: pytest.fail("trained before checking --out"))
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert main(["vae", "--out", str(blocker / "run"), "--data-dir", str(mnist_like_dir)]) == 2
    err = _one_line_error(capsys)
    assert f"--out '{blocker / 'run'}'" in err and "a file is in the way" in err
    assert main(["vae", "--data-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "--data-dir" in _one_line_error(capsys)


def test_cli_missing_data_exits_2_with_where_to_get_it(tmp_path, capsys, monkeypatch):
    from advi_jax import data_files
    from advi_jax.cli import main

    monkeypatch.delenv("ADVI_JAX_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(data_files, "_checkout_root", lambda: tmp_path / "elsewhere" / "repo")
    (tmp_path / "empty").mkdir()
    assert main(["vae", "--dataset", "fashion_mnist", "--data-dir", str(tmp_path / "empty"),
                 "--out", str(tmp_path / "o")]) == 2
    err = _one_line_error(capsys)
    assert "'fashion_mnist.npz' not found" in err and "uint8" in err and "ADVI_JAX_DATA" in err


def test_loss_curve_figure(tmp_path):
    from advi_jax.vae import plots

    losses = 100 + 400 * np.exp(-np.arange(60) / 10.0) + np.random.default_rng(0).normal(0, 2, 60)
    plots.plot_loss_curve(losses, tmp_path / "loss.png", steps_per_epoch=20, test_elbo=-110.0)
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no finite loss"):
        plots.plot_loss_curve([np.nan], tmp_path / "bad.png")


@pytest.mark.slow
def test_data_parallel_matches_single_device():
    code = textwrap.dedent("""
        import jax, numpy as np
        from advi_jax.vae import VAEConfig, data_mesh, train
        assert jax.local_device_count() == 4
        x = np.asarray(jax.random.bernoulli(jax.random.key(0), 0.3, (160, 784)), np.float32)
        config = VAEConfig(latent=3, hidden=(16,))
        kw = dict(key=jax.random.key(1), epochs=2, batch_size=40, progress=False)
        one = train(config, x, mesh=data_mesh(jax.local_devices()[:1]), **kw)
        four = train(config, x, mesh=data_mesh(), **kw)
        np.testing.assert_allclose(one.history, four.history, rtol=1e-5)
        for a, b in zip(jax.tree_util.tree_leaves(one.state.params), jax.tree_util.tree_leaves(four.state.params)):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
        leaf = jax.tree_util.tree_leaves(four.state.params)[0]
        assert len(leaf.sharding.device_set) == 4
        print("ok", one.history, four.history)
    """)
    flags = "--xla_force_host_platform_device_count=4" + (" " + FAST_XLA_FLAGS if fast_xla() else "")
    proc = _run(["-c", code], {"XLA_FLAGS": flags})  # the suite's compile options (tests/conftest.py)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ok" in proc.stdout


def test_public_names_resolve():
    import advi_jax.vae as vae_module

    for name in vae_module.__all__:
        assert getattr(vae_module, name) is not None, name


@pytest.mark.parametrize("objective,estimator", [("elbo", "stl"), ("iwae-4", "dreg")])
def test_encoder_gradient_is_unbiased(key, objective, estimator):
    """STL (ELBO) and DReG (IWAE) have the same expected encoder gradient as plain reparam."""
    graphdef, params = nnx.split(build_vae(TINY, key), nnx.Param)
    x = jnp.asarray(_binary_data(jax.random.fold_in(key, 1), n=2, d=20))

    def encoder_grad(name):
        loss = make_loss(graphdef, parse_objective(objective, name, kl="mc"))
        grad = jax.grad(lambda p, k: loss(p, k, x)[0])
        return jax.vmap(lambda k: jnp.concatenate(
            [g.ravel() for g in jax.tree_util.tree_leaves(grad(params, k)["encoder"])]))

    keys = jax.random.split(jax.random.fold_in(key, 2), 4000)
    diff = np.asarray(jax.jit(encoder_grad("reparam"))(keys) - jax.jit(encoder_grad(estimator))(keys))
    z = diff.mean(0) / (diff.std(0) / math.sqrt(len(keys)) + 1e-8)
    assert np.mean(np.abs(z) < 3.5) > 0.97  # allow a few of ~500 coordinates beyond 3.5 SE


def test_encoder_gradient_variance_on_a_trained_vae():
    """The amortized instruments on the real Flax VAE: DReG and the pathwise estimators share one
    mean gradient, and the score function's variance is orders of magnitude larger."""
    from flax import nnx

    from advi_jax.vae import build_vae
    from advi_jax.gradient_variance.amortized import encoder_gradient_variance

    # TINY (20 pixels, 16 hidden units): the same encoder/decoder code as a 784-pixel VAE, with
    # 438 encoder parameters instead of ~25,000 (the checks below are per coordinate, at a fixed
    # number of standard errors, so they do not depend on the number of coordinates).
    vae = build_vae(TINY, jax.random.key(0))
    graphdef, params = nnx.split(vae, nnx.Param)
    batch = (jax.random.uniform(jax.random.key(1), (16, TINY.data_dim)) < 0.2).astype(jnp.float32)
    stats = encoder_gradient_variance(graphdef, params, batch, jax.random.key(2), num_samples=5, num_draws=400,
                                      time_repeats=0)
    assert set(stats) == {"reparam", "stl", "dreg", "score"}
    # reparam and DReG are unbiased for IWAE-5: their mean gradients agree within Monte Carlo error
    diff = np.asarray(stats["reparam"].mean_flat - stats["dreg"].mean_flat)
    se = np.sqrt((np.asarray(stats["reparam"].variance) + np.asarray(stats["dreg"].variance)) / 400)
    assert np.mean(np.abs(diff) < 4.5 * se + 1e-7) > 0.99
    assert stats["score"].variance_trace > 10 * stats["reparam"].variance_trace
    assert all(np.isfinite(s.variance_trace) for s in stats.values())


def test_latent_space_figure_without_labels_warns_nothing(tmp_path):
    """binarized_mnist has no labels: the latent-space scatter is one colour, with no colormap to ignore
    (matplotlib warned "No data for colormapping provided via 'c'" on every such run)."""
    import warnings

    from advi_jax.vae import plots

    graphdef, params = nnx.split(build_vae(VAEConfig(latent=2, data_dim=20, hidden=(8,)), jax.random.key(0)), nnx.Param)
    x = np.asarray(_binary_data(jax.random.key(1), n=30, d=20))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plots.plot_latent_space(graphdef, params, x, None, tmp_path / "latent.png")
        plots.plot_latent_space(graphdef, params, x, np.arange(30) % 10, tmp_path / "latent_labels.png")
    assert (tmp_path / "latent.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
