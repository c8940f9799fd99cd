"""The loop's compiler options for methods other than ADVI (`run.single.loop_compile`, the methods'
`loop_evals`), and DADVI's default number of fixed draws (`dadvi.default_num_draws`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import advi_jax as aj
from advi_jax import compile_options
from advi_jax.run.single import loop_compile
from advi_jax.vi import advi, bam, dadvi, pathfinder
from _vi_runner import Gauss, run

ON_CPU = jax.default_backend() == "cpu"


def _gaussian_with_data(rows: int, cols: int = 6) -> aj.Model:
    """A Gaussian mean model whose data hold rows x cols numbers (what the size rule counts)."""
    y = jnp.asarray(np.random.default_rng(0).normal(size=(rows, cols)), jnp.float32)
    return aj.Model(lambda p, y: -0.5 * jnp.sum((y - p["mu"]) ** 2), {"mu": aj.real((cols,))}, data=y)


@pytest.mark.skipif(not ON_CPU, reason="XLA's options are CPU settings; elsewhere every loop compiles 'full'")
def test_pathfinder_and_bam_loops_count_their_own_evaluations():
    fr = aj.FullRankGaussian()
    wells_sized, small, huge = _gaussian_with_data(3_020), _gaussian_with_data(500), _gaussian_with_data(200_000)
    # 18,120 data entries: without its own count a loop is counted at a fit's 20,000 evaluations and
    # compiles with XLA's full options; Pathfinder's cap (1,000 iterations of 2 gradients and 10 ELBO
    # draws) and BaM's 500 x 16 scores put it under `MID_MAX_WORK`: "mid".
    assert pathfinder.loop_evals(wells_sized, fr, pathfinder.Options(), 1) == 12_000
    assert bam.loop_evals(wells_sized, fr, bam.Options(), 500) == 8_000
    for module, opts, steps in ((pathfinder, pathfinder.Options(), 1), (bam, bam.Options(), 500)):
        assert loop_compile(module, wells_sized, fr, opts, steps) == "mid"
        assert loop_compile(module, small, fr, opts, steps) == "fast"  # 3,000 entries
        assert loop_compile(module, huge, fr, opts, steps) == "full"  # 1.2e6 entries
    # Four paths evaluate four times as often: 18,120 x 48,000 is still under the "mid" limit (1e9),
    # 72,000 x 48,000 is not.
    assert loop_compile(pathfinder, wells_sized, fr, pathfinder.Options(num_paths=4), 1) == "mid"
    assert loop_compile(pathfinder, _gaussian_with_data(12_000), fr, pathfinder.Options(num_paths=4), 1) == "full"
    # BaM's steps do K x K work the data count cannot see: past K = 32 the fast options become "mid".
    assert loop_compile(bam, _gaussian_with_data(30, 90), fr, bam.Options(), 500) == "mid"
    assert loop_compile(bam, _gaussian_with_data(30, 32), fr, bam.Options(), 500) == "fast"
    assert loop_compile(pathfinder, _gaussian_with_data(30, 90), fr, pathfinder.Options(), 1) == "fast"
    # DADVI's Newton-CG evaluates 1e5+ times (`dadvi.LOOP_EVALS`): fast only for tiny data.
    assert loop_compile(dadvi, wells_sized, fr, dadvi.Options(), 200) == "full"
    assert loop_compile(dadvi, small, fr, dadvi.Options(), 200) == "mid"
    assert loop_compile(dadvi, _gaussian_with_data(50), fr, dadvi.Options(), 200) == "fast"
    # ADVI's loop decides between fast and "mid" by its arithmetic where the size rule allows either.
    chosen = loop_compile(advi, small, fr, None, 10_000, 4, can_stop=True)
    assert isinstance(chosen, compile_options.ByCost) and chosen.trips == 5_000 and chosen.evals == 40_000
    # ... and where the size rule says "full" too (its arithmetic then decides: a matrix-product-bound loop
    # runs as fast with the fast options); a forced mode is kept as it is.
    big = loop_compile(advi, huge, fr, None, 10_000, 4, can_stop=True)
    assert isinstance(big, compile_options.ByCost) and big.evals == 40_000
    with compile_options.forced("full"):
        assert loop_compile(advi, huge, fr, None, 10_000, 4, can_stop=True) == "full"
        assert loop_compile(pathfinder, small, fr, pathfinder.Options(), 1) == "full"
    # fit_many's restarts of one model evaluate it num_fits times as often (its arrays hold the data once).
    # By the size rule (not ADVI's arithmetic rule, calibrated on single fits): 3,000 entries x 8 x 10,000
    # evaluations is over the fast limit (1e8), one fit's 10,000 not.
    assert loop_compile(advi, small, fr, None, 10_000, 1, num_fits=8) == "mid"
    assert isinstance(loop_compile(advi, small, fr, None, 10_000, 1), compile_options.ByCost)
    assert loop_compile(advi, _gaussian_with_data(50), fr, None, 10_000, 1, num_fits=8) == "fast"
    # 8 datasets stacked in the model's arrays (batched): their entries count every fit already
    assert loop_compile(advi, _gaussian_with_data(8 * 500), fr, None, 10_000, 1, num_fits=8, batched=True) == "mid"
    assert loop_compile(advi, _gaussian_with_data(8 * 50), fr, None, 10_000, 1, num_fits=8, batched=True) == "fast"
    assert loop_compile(pathfinder, small, fr, pathfinder.Options(), 1, num_fits=8) == "mid"  # 3,000 x 96,000
    assert loop_compile(bam, _gaussian_with_data(500, 6), fr, bam.Options(), 500, num_fits=100) == "full"


def test_dadvi_default_draws_follow_the_family_and_dimension():
    mf, fr = aj.MeanFieldGaussian(), aj.FullRankGaussian()
    assert dadvi.Options().num_draws is None
    assert dadvi.default_num_draws(mf, dadvi.Options(), 90) == dadvi.MIN_DRAWS == 30
    assert dadvi.default_num_draws(fr, dadvi.Options(), 10) == 30
    assert dadvi.default_num_draws(fr, dadvi.Options(), 90) == 180
    assert dadvi.default_num_draws(mf, dadvi.Options(moment_match=True), 40) == 80
    assert dadvi.default_num_draws(fr, dadvi.Options(num_draws=12), 90) == 12  # an explicit count is kept
    with pytest.raises(ValueError, match="num_draws > K = 90"):  # ... and still checked
        dadvi.build(_gaussian_with_data(10, 90), fr, dadvi.Options(num_draws=60))


def test_default_dadvi_fits_a_fullrank_gaussian_with_more_than_30_coordinates(key):
    # K = 32: the paper's 30 draws leave the fixed-draw objective unbounded below for a full
    # covariance (`aj.fit(model, method="dadvi")` raised before the default followed K); 64 draws
    # fit it. For a Gaussian target N(mu, Sigma) the fixed-draw optimum is closed form: with zbar
    # and C the draws' mean and (biased) covariance, L C L^T = Sigma and m = mu - L zbar.
    k = 32
    rng = np.random.default_rng(3)
    a = rng.normal(size=(k, k)) / np.sqrt(k)
    cov = a @ a.T + 0.5 * np.eye(k)
    mean = rng.normal(size=k)
    with jax.enable_x64(True):
        algo = dadvi.build(Gauss(mean, cov), aj.FullRankGaussian(), dadvi.Options(mc_tol=None))
        params, state, totals = run(algo, key, jnp.zeros(k, jnp.float64), 100)
        chol = np.asarray(aj.FullRankGaussian().scale_tril(params))
    assert bool(totals["info"].converged)
    z = np.asarray(state.draws).reshape(-1, k)
    assert z.shape[0] == 64
    zbar, c = z.mean(0), np.cov(z.T, bias=True)
    np.testing.assert_allclose(chol @ c @ chol.T, cov, atol=1e-6)
    np.testing.assert_allclose(np.asarray(params.loc), mean - chol @ zbar, atol=1e-6)


def test_dadvi_auto_family_is_meanfield_beyond_its_fullrank_limit():
    from advi_jax.run.choose import FULLRANK_MAX_DIM, choose_family

    small, large = _gaussian_with_data(1, dadvi.FULLRANK_AUTO_MAX_DIM), _gaussian_with_data(1, 31)
    assert choose_family(small, "auto", "dadvi")[0].name == "fullrank"
    family, reason = choose_family(large, "auto", "dadvi")
    assert family.name == "meanfield" and "method='dadvi'" in reason
    assert 31 <= FULLRANK_MAX_DIM and choose_family(large, "auto", "advi")[0].name == "fullrank"
    assert choose_family(large, "fullrank", "dadvi")[0].name == "fullrank"  # a named family is kept


def test_a_sized_jit_program_can_be_called_inside_another_traced_program():
    # Compiler options belong to the outermost jit; a nested call (e.g. the CLI's one posterior
    # program calling the predictive replication) runs as a part of its caller's program.
    @compile_options.jit(model_arg=None)
    def inner(x):
        return jnp.sin(x) * 2.0

    outer = jax.jit(lambda x: inner(x) + 1.0, compiler_options=dict(compile_options.FAST_OPTIONS)
                    if ON_CPU else None)
    x = jnp.linspace(0.0, 1.0, 5)
    np.testing.assert_allclose(np.asarray(outer(x)), np.sin(np.asarray(x)) * 2.0 + 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(inner(x)), np.sin(np.asarray(x)) * 2.0, rtol=1e-6)
