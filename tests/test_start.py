"""The Pathfinder -> BaM start (advi_jax/run/start.py) and the compile options (advi_jax/compile_options.py)."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import advi_jax as aj
from advi_jax import compile_options
from advi_jax.run import driver
from advi_jax.run import start as start_module
from advi_jax.vi import pathfinder

_MEAN = np.array([1.0, -2.0, 0.5])
_CHOL = np.array([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [-0.5, 0.3, 2.0]])
_COV = _CHOL @ _CHOL.T


def _gaussian_model():
    precision = jnp.asarray(np.linalg.inv(_COV), jnp.float32)
    mean = jnp.asarray(_MEAN, jnp.float32)

    def log_joint(p, data):
        d = p["x"] - data["mean"]
        return -0.5 * d @ data["precision"] @ d

    return aj.Model(log_joint, {"x": aj.real((3,))}, data={"mean": mean, "precision": precision})


def _start(model, init, key=0, check=True):
    return start_module.start(model, aj.FullRankGaussian(), init, key=jax.random.key(key), whiten=True,
                              init_scale=0.1, num_init_draws=10, init_radius=2.0, check=check)


@pytest.mark.parametrize("init", ["pathfinder", "bam"])
def test_start_whitens_by_the_exact_gaussian(init):
    # On a Gaussian target both starts find its mean and covariance: the whitened coordinates
    # are then the standard normal's (a wrong factor or mean would miss by O(1)).
    begun = _start(_gaussian_model(), init)
    # Pathfinder is exact here (K <= its history), so BaM's Gaussian, exact too, may or may not
    # beat it on the ELBO's Monte Carlo noise; either way both must be the target.
    assert begun.method.startswith(("bam from", "pathfinder, not BaM") if init == "bam" else "pathfinder"), begun.method
    gaussians = [begun.whitening]
    if init == "bam":
        gaussians.append((begun.bam.mean if begun.bam.mean is not None else begun.bam.scale_tril[:, 0] * np.nan,
                          begun.bam.scale_tril))
    sd = np.sqrt(np.diag(_COV))
    for shift, factor in gaussians:
        shift, factor = np.asarray(shift, np.float64), np.asarray(factor, np.float64)
        if not np.all(np.isfinite(shift)):  # BaM's Gaussian was not kept: only its factor is reported
            shift = _MEAN
        np.testing.assert_allclose(shift, _MEAN, atol=0.1 * sd.min())
        np.testing.assert_allclose(factor @ factor.T, _COV, atol=0.15 * _COV.max())
        assert np.allclose(factor, np.tril(factor)) and np.all(np.diag(factor) > 0)
    np.testing.assert_allclose(np.asarray(begun.loc), 0.0)
    expected = begun.pathfinder.num_grad_evals + (1600 + start_module.start_elbo_grad_evals(100) - start_module.start_elbo_grad_evals(0) if init == "bam" else 0) + begun.compared
    assert begun.num_grad_evals == expected and 2 < begun.pathfinder.num_grad_evals < 200


def test_bam_start_compiles_one_program_once():
    model = _gaussian_model()
    _start(model, "bam", key=1)
    size = start_module._start_program._cache_size()
    again = _start(model, "bam", key=2)
    assert start_module._start_program._cache_size() == size
    assert again.bam is not None


def _nan_gradient_gaussian_model(value: bool = False):
    """The exact Gaussian target of `_gaussian_model` times |x_0|^0 = 1, whose derivative is
    0 * inf = NaN at x_0 = 0 (the stochastic-volatility model's |phi| ** 0 at phi = 0); with
    `value`, times |sign(x_0)| instead: its log is -inf at x_0 = 0 only (a constraint at zero)."""
    base = _gaussian_model()

    def log_joint(p, data):
        if value:
            return base.log_joint(p, data) + jnp.log(jnp.abs(jnp.sign(p["x"][0])))
        return base.log_joint(p, data) * jnp.abs(p["x"][0]) ** 0.0

    return aj.Model(log_joint, {"x": aj.real((3,))}, data=base.data)


@pytest.mark.parametrize("init,value", [("pathfinder", False), ("bam", False), ("bam", True)])
def test_start_jitters_where_the_log_density_or_its_gradient_is_not_finite_at_zero(init, value):
    # From zero the path could not start (the gradient is NaN there, or log p is -inf); from the
    # first jittered point it finds the exact Gaussian, and says why it started there.
    model = _nan_gradient_gaussian_model(value)
    at_zero = jax.value_and_grad(model.log_density)(jnp.zeros(3))
    assert not (np.isfinite(float(at_zero[0])) and np.isfinite(np.asarray(at_zero[1])).all())
    # Pathfinder alone picks its Gaussian by a 10-draw ELBO estimate per iterate, which can favour
    # an iterate whose covariance is still 30% off (1 of 12 keys from the jittered point); BaM's
    # steps then correct it. So Pathfinder's covariance must be right at two of three keys.
    sd, right = np.sqrt(np.diag(_COV)), 0
    for key in range(3 if init == "pathfinder" else 1):
        begun = _start(model, init, key=key)
        said = "the log density is -inf at zero" if value else "the log density's gradient is not finite at zero"
        assert "from a jittered point" in begun.method and said in begun.method, begun.method
        assert "started at jittered point 1 of up to 100" in begun.method, begun.method
        shift, factor = (np.asarray(a, np.float64) for a in begun.whitening)
        np.testing.assert_allclose(shift, _MEAN, atol=0.1 * sd.min())
        right += np.allclose(factor @ factor.T, _COV, atol=0.15 * _COV.max())
    assert right >= (2 if init == "pathfinder" else 1), right


def test_jittered_start_counts_its_tries_and_reports_where_it_began():
    # zero (NaN gradient) and the jittered point: two gradients before the path's first step. The
    # path from the jittered point given directly counts one for its start: one fewer, the rest equal.
    model = _nan_gradient_gaussian_model()
    args = (model, jnp.zeros(3), jax.random.key(0), False, 0.1, start_module.BAM_START_STEPS,
            start_module.BAM_START_BATCH)
    found = start_module._start_program(*args, radius=jnp.asarray(2.0))
    began = found.began
    assert int(began.num_tries) == 2 and bool(began.finite) and not bool(began.grad_finite)
    point = np.asarray(began.point)
    assert 0.5 < np.abs(point).max() <= 2.0  # the first try's box: Stan's (-2, 2)^K
    assert float(found.start_log_density) == pytest.approx(float(model.log_density(jnp.zeros(3))))
    options = start_module.START_BUDGET.pathfinder_options()
    noise = jax.random.normal(jax.random.key(0), (options.max_iters, options.num_elbo_draws, 3))
    with_jitter = jax.jit(lambda j: pathfinder.lbfgs_path(model.log_density, jnp.zeros(3), jax.random.key(1),
                                                          options, noise, j))(jnp.asarray(point)[None, :])
    direct = jax.jit(lambda x: pathfinder.lbfgs_path(model.log_density, x, jax.random.key(1), options, noise))(
        jnp.asarray(point))
    assert int(with_jitter.start.num_tries) == 2 and int(direct.start.num_tries) == 1
    assert int(with_jitter.num_iters) == int(direct.num_iters) > 0
    assert int(with_jitter.num_grad_evals) == int(direct.num_grad_evals) + 1
    np.testing.assert_array_equal(with_jitter.approx.mu, direct.approx.mu)


def test_fit_from_a_nan_gradient_at_zero_reaches_the_exact_gaussian():
    # The default fit (Pathfinder -> BaM -> ADVI) of a Gaussian target whose gradient is NaN at zero:
    # its start is Pathfinder's from a jittered point and its answer the exact posterior.
    result = aj.fit(_nan_gradient_gaussian_model(), key=jax.random.key(0), progress=False)
    assert "from a jittered point" in result.init_method, result.init_method
    draws = np.asarray(result.sample(jax.random.key(1), 4000)["x"], np.float64)
    sd = np.sqrt(np.diag(_COV))
    np.testing.assert_allclose(draws.mean(0), _MEAN, atol=0.1 * sd.max())
    np.testing.assert_allclose(draws.std(0), sd, rtol=0.1)
    assert result.num_grad_evals >= result.report.extras["start_grad_evals"] > 1600


def test_start_raises_where_the_log_density_is_not_finite_anywhere_it_looks():
    # log(-|x_0|): -inf at zero, NaN elsewhere: no jittered point is finite; the error names what.
    model = aj.Model(lambda p: jnp.log(-jnp.abs(p["x"][0])) - 0.5 * jnp.sum(p["x"] ** 2), {"x": aj.real((2,))})
    with pytest.raises(ValueError, match=r"the log density is -inf at the initial point .* \(zero in R\^K\), and at "
                                         r"each of the 100 jittered points .* the log density \(100 of them\) or its "
                                         r"gradient \(0\) is not finite; pass init="):
        _start(model, "bam")
    with pytest.warns(UserWarning, match="the log density is -inf at the initial point"):
        begun = _start(model, "bam", check=False)
    assert begun.method.startswith("zero (no Pathfinder start: the log density is -inf at the initial point")
    # what the start program evaluated is counted although it found nothing: the 100 tries, BaM's steps, the ELBOs
    assert begun.num_grad_evals >= 100 + 1600 + start_module.start_elbo_grad_evals(100), begun.num_grad_evals
    # A finite value whose gradient is NaN everywhere (sqrt of a negative in a branch not taken).
    nan_grad = aj.Model(lambda p: -0.5 * jnp.sum(p["x"] ** 2)
                        + jnp.where(p["x"][0] > -1e30, 0.0, jnp.sqrt(-p["x"][0] ** 2 - 1.0)), {"x": aj.real((2,))})
    with pytest.raises(ValueError, match=r"gradient is not finite at the initial point .* log density \(0 of them\) "
                                         r"or its gradient \(100\)"):
        _start(nan_grad, "pathfinder")


def test_laplace_and_plain_starts_jitter_where_the_log_density_is_not_finite_at_zero():
    # A Gaussian N(1, 0.5^2 I) made -inf exactly at x_0 = 0: with method="advi" (the Laplace start) and
    # "dadvi" (no whitening) the library's own start (init="auto") moves to a jittered point; the
    # tries count as gradients; a start the user chose (init=None) still raises; nowhere finite raises
    # a NonFiniteStart (a ValueError) that says so.
    model = aj.Model(lambda p: -2.0 * jnp.sum((p["x"] - 1.0) ** 2) + jnp.where(p["x"][0] == 0.0, -jnp.inf, 0.0),
                     {"x": aj.real((2,))})
    result = aj.fit(model, key=jax.random.key(0), method="advi", num_steps=2000, progress=False)
    assert result.init_method.startswith("laplace from a jittered point (the log density is -inf at zero; started "
                                         "at jittered point 1 of up to 100"), result.init_method
    np.testing.assert_allclose(np.asarray(result.mean()["x"]), 1.0, atol=0.1)
    plain = start_module.start(model, aj.FullRankGaussian(), "auto", key=jax.random.key(0), whiten=False,
                               init_scale=0.1, num_init_draws=1, init_radius=2.0, check=True)
    assert plain.method.startswith("jittered (the log density is -inf at zero; started at jittered point 1 of "
                                   "up to 100") and plain.tries == 2
    assert plain.num_grad_evals == 2 and np.all(np.abs(np.asarray(plain.loc)) < 2.0) and plain.loc[0] != 0.0
    with pytest.raises(ValueError, match="the log density is -inf at the initial point"):
        aj.fit(model, key=jax.random.key(0), method="advi", init=None, num_steps=10, progress=False)
    nowhere = aj.Model(lambda p: jnp.log(-jnp.sum(p["x"] ** 2)), {"x": aj.real((2,))})
    with pytest.raises(aj.checks.NonFiniteStart, match=r"at the initial point .* \(zero in R\^K\), and at each of "
                                                       r"the 100 jittered points"):
        aj.fit(nowhere, key=jax.random.key(0), method="advi", num_steps=10, progress=False)


def test_funnel_start_falls_back_to_an_isotropic_gaussian_or_keeps_a_finite_one():
    # Neal's funnel has no mode: the start is finite whichever Gaussian wins, and says which.
    def log_joint(p):
        v, x = p["v"], p["x"]
        return -v**2 / 18.0 - jnp.sum(x**2) * 0.5 * jnp.exp(-v) - 0.5 * x.shape[0] * v

    model = aj.Model(log_joint, {"v": aj.real(), "x": aj.real((4,))})
    begun = _start(model, "bam")
    shift, factor = begun.whitening
    assert np.all(np.isfinite(np.asarray(shift))) and np.all(np.isfinite(np.asarray(factor)))
    assert begun.method.split(" (")[0] in ("pathfinder", "N(start, 1^2 I)", "N(start, 0.1^2 I)",
                                           "bam from pathfinder", "bam from N(start, 1^2 I)",
                                           "bam from N(start, 0.1^2 I)") or "not BaM" in begun.method


def test_fast_compile_rule():
    small = _gaussian_model()
    large = aj.Model(lambda p, d: -0.5 * jnp.sum((d - p["m"]) ** 2), {"m": aj.real()},
                     data=np.zeros(compile_options.FAST_MAX_ENTRIES + 1, np.float32))
    on_cpu = jax.default_backend() == "cpu"
    assert compile_options.fast_compile(small) is on_cpu
    assert compile_options.fast_compile(large) is False
    assert compile_options.fast_compile(None) is on_cpu
    with compile_options.forced("full"):
        assert compile_options.fast_compile(small) is False
    with compile_options.forced("fast"):
        assert compile_options.fast_compile(large) is on_cpu
    with compile_options.forced("mid"):
        assert compile_options.compile_mode(small) == ("mid" if on_cpu else "full")
    with pytest.raises(ValueError, match="mode must be"):
        with compile_options.forced("quick"):
            pass


def test_sized_jit_runs_the_same_function_under_either_options():
    @compile_options.jit(static_argnames=("n",))
    def log_densities(model, z, n):
        return jax.vmap(model.log_density)(z[:n])

    model = _gaussian_model()
    z = jnp.asarray(np.random.default_rng(0).normal(size=(5, 3)), jnp.float32)
    with compile_options.forced("full"):
        full = log_densities(model, z, n=4)
    with compile_options.forced("fast"):
        fast = log_densities(model, z, n=4)
    d = np.asarray(z[:4], np.float64) - _MEAN
    exact = -0.5 * np.einsum("ni,ij,nj->n", d, np.linalg.inv(_COV), d)
    np.testing.assert_allclose(full, exact, rtol=1e-4)
    np.testing.assert_allclose(fast, exact, rtol=1e-4)
    assert log_densities._cache_size() == (2 if jax.default_backend() == "cpu" else 1)
    with pytest.raises(ValueError, match="model_arg 'data' is not a parameter"):
        compile_options.jit(lambda model, z: z, model_arg="data")


def test_fast_compile_by_the_programs_evaluations():
    """entries x evals <= FAST_MAX_WORK; unknown evals keep the size rule; the start program compiles by
    its arithmetic: fast over 100,000 entries of cheap arithmetic, "mid" over as many exponentials (its
    ~2,300 evaluations then choose between "mid" and "full")."""
    entries = 10_000
    model = aj.Model(lambda p, d: -0.5 * jnp.sum((d - p["m"]) ** 2), {"m": aj.real()},
                     data=np.zeros(entries, np.float32))
    on_cpu = jax.default_backend() == "cpu"
    work = compile_options.FAST_MAX_WORK
    assert compile_options.fast_compile(model) is False  # > FAST_MAX_ENTRIES, evals unknown
    assert compile_options.fast_compile(model, work // entries) is on_cpu
    assert compile_options.fast_compile(model, work // entries + 1) is False
    assert compile_options.compile_mode(model, work // entries + 1) == ("mid" if on_cpu else "full")
    assert compile_options.compile_mode(model) == "full"  # "mid" only for a program that gives its evaluations
    assert compile_options.fast_compile(model, 0) is on_cpu
    with pytest.raises(ValueError, match="evals must be"):
        compile_options.fast_compile(model, -1)
    assert start_module.start_evals(start_module.BAM_START_STEPS, start_module.BAM_START_BATCH) < work // entries
    loc, key = jnp.zeros(1), jax.random.key(0)
    program = start_module._start_program
    args = (model, loc, key, False, 0.1, start_module.BAM_START_STEPS, start_module.BAM_START_BATCH)
    assert program._pick(args, {}) is (program.fast if on_cpu else program.full)
    big = aj.Model(model.log_joint, {"m": aj.real()}, data=np.zeros(10 * entries, np.float32))
    assert program._pick((big,) + args[1:], {}) is (program.fast if on_cpu else program.full)
    dear = aj.Model(lambda p, d: -jnp.sum(jnp.exp(d - p["m"]) + jnp.log1p(jnp.exp(p["m"] - d))), {"m": aj.real()},
                    data=np.zeros(10 * entries, np.float32))
    assert program._pick((dear,) + args[1:], {}) is (program.mid if on_cpu else program.full)
    with compile_options.forced("fast"):
        assert program._pick((dear,) + args[1:], {}) is (program.fast if on_cpu else program.full)


def test_sized_jit_mode_picks_by_evaluations_or_by_decision():
    @compile_options.jit(static_argnames=("how",), mode=lambda model, args: args["how"])
    def twice(model, z, how):
        return 2 * z + jnp.sum(model.data["mean"])

    model = _gaussian_model()
    z = jnp.ones(2)
    on_cpu = jax.default_backend() == "cpu"
    entries = compile_options.num_entries(model)
    for how, want in (("fast", "fast"), ("mid", "mid"), ("full", "full"), (0, "fast"), (None, "fast"),
                      (compile_options.FAST_MAX_WORK // entries + 1, "mid"),
                      (compile_options.MID_MAX_WORK // entries + 1, "full")):
        version = twice._pick((model, z), {"how": how})
        assert version is getattr(twice, want if on_cpu else "full"), how
    with compile_options.forced("full"):  # a forced mode wins over the program's decision
        assert twice._pick((model, z), {"how": "fast"}) is twice.full
    values = [twice(model, z, how=how) for how in ("full", "mid", "fast")]
    np.testing.assert_allclose(values[0], values[1])
    np.testing.assert_allclose(values[0], values[2])


def test_fit_compiles_the_loop_by_its_step_budget():
    """A short ADVI run over 10,000 data entries compiles its loop fast (entries x steps is small)."""
    model = aj.Model(lambda p, d: -0.5 * jnp.sum((d - p["m"]) ** 2) / d.shape[0], {"m": aj.real()},
                     data=np.linspace(-1.0, 1.0, 10_000, dtype=np.float32))
    before = (driver.run_chunk.fast._cache_size(), driver.run_chunk.full._cache_size())
    result = aj.fit(model, key=jax.random.key(0), method="advi", num_steps=50, progress=False, diagnostics=False,
                    init=None)
    grown = (driver.run_chunk.fast._cache_size() - before[0], driver.run_chunk.full._cache_size() - before[1])
    assert grown == ((1, 0) if jax.default_backend() == "cpu" else (0, 1))
    assert result.num_steps == 50


class _Count(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.names = []

    def emit(self, record):
        message = record.getMessage()
        if message.startswith("Finished XLA compilation of"):
            self.names.append(message.split("of ", 1)[1].split(" in ")[0])


def test_default_fit_compiles_a_handful_of_programs():
    # Every eager jnp operation on the first call compiles a program of its own (20-100 ms each);
    # the default fit of a general model compiles its few programs and nothing else.
    model = aj.Model(lambda p: -0.5 * jnp.sum((p["x"] - 1.0) ** 2) - 2.0 * p["s"] + jnp.log(p["s"]),
                     {"x": aj.real((2,)), "s": aj.positive()})
    count = _Count()
    loggers = [logging.getLogger(n) for n in ("jax._src.interpreters.pxla", "jax._src.dispatch")]
    for logger in loggers:
        logger.addHandler(count)
    try:
        with jax.log_compiles(True):
            result = aj.fit(model, key=jax.random.key(3), progress=False)
    finally:
        for logger in loggers:
            logger.removeHandler(count)
    assert result.init_method.startswith(("bam from", "pathfinder", "N(start"))
    assert len(count.names) <= 9, count.names
    assert sum(name.startswith("jit(_start_program") for name in count.names) <= 1


def test_start_program_holds_few_copies_of_the_log_density():
    """Every call site of the log density inlines a copy of it into the start program: three
    (Pathfinder's value and gradient in its line search, which also tries the start and the
    jittered points; its ELBO draws; BaM's values and scores, which also give the candidates' ELBOs
    and BaM's check). The two the ELBOs had of their own cost 0.07-0.2 s of compile CPU each
    (2026-12-03). The model's lgamma marks each copy (its derivative is digamma; the start itself
    uses no lgamma)."""
    model = aj.Model(lambda p: -0.5 * jnp.sum(p["x"] ** 2) + 1e-3 * jnp.sum(jax.lax.lgamma(2.0 + p["x"] ** 2)),
                     {"x": aj.real((3,))})
    args = (model, jnp.zeros(3), jax.random.key(0), False, 0.1, start_module.BAM_START_STEPS,
            start_module.BAM_START_BATCH)
    text = start_module._start_program.lower(*args).as_text()
    copies = text.count("lgamma")
    assert 1 <= copies <= 3, copies
    found = start_module._start_program(*args)
    assert abs(float(found.start_log_density)) < 1e-6  # lgamma(2) = 0 at loc = 0
    assert int(found.path.num_grad_evals) >= int(found.path.num_iters) + 1


def test_start_program_draws_its_randomness_on_the_host():
    """Each random-number call site costs 20-30 ms of compile (threefry and the normal's inverse
    erf inlined once per site): a fit's start passes every standard normal it uses, drawn on the
    host from its key (`start_draws`), so its program holds no generator; called without them it
    draws them all at once, from one. The same key gives the same draws and the same start."""
    model = _gaussian_model()
    args = (model, jnp.zeros(3), jax.random.key(0), False, 0.1, start_module.BAM_START_STEPS,
            start_module.BAM_START_BATCH)
    text = start_module._start_program.lower(*args).as_text()
    assert text.count("call @threefry2x32") == 1, text.count("call @threefry2x32")
    assert text.count("call @_threefry_fold_in") + text.count("call @_threefry_split") == 0
    num = start_module.start_num_draws(start_module.BAM_START_STEPS, start_module.BAM_START_BATCH)
    noise = start_module.start_draws(jax.random.key(0), num, 3, np.float32)
    assert noise.shape == (num, 3) and noise.dtype == np.float32
    assert abs(noise.mean()) < 0.05 and abs(noise.std() - 1.0) < 0.05
    np.testing.assert_array_equal(noise, start_module.start_draws(jax.random.key(0), num, 3, np.float32))
    assert not np.array_equal(noise, start_module.start_draws(jax.random.key(1), num, 3, np.float32))
    text = start_module._start_program.lower(*args, noise=noise).as_text()
    assert "threefry" not in text and "erf_inv" not in text
    first, again = (_start(model, "bam", key=4) for _ in range(2))
    np.testing.assert_array_equal(np.asarray(first.whitening[1]), np.asarray(again.whitening[1]))

def _direct_elbos(model, noise, means, factors):
    """ELBOs of N(means[j], factors[j] factors[j]^T) on the draws `noise`, computed directly."""
    out = []
    for mean, factor in zip(means, factors):
        z = mean[None, :] + noise @ factor.T
        entropy = jnp.sum(jnp.log(jnp.diagonal(factor))) + 0.5 * mean.shape[0] * (1.0 + np.log(2.0 * np.pi))
        out.append(float(jnp.mean(jax.vmap(model.log_density)(z)) + entropy))
    return np.asarray(out)


def test_start_elbos_from_the_bam_scan_equal_the_elbos_of_each_gaussian():
    """The start compares its candidates and checks BaM by ELBOs that run as BaM steps keeping their
    state (`_choose_and_refine`): each must be the ELBO of its Gaussian on its draws, computed
    directly; the best candidate is chosen and BaM runs whitened by it."""
    model = _gaussian_model()
    eye = jnp.eye(3)
    means = jnp.stack([jnp.asarray([0.3, -0.2, 1.0]), jnp.zeros(3), jnp.zeros(3)])
    factors = jnp.stack([jnp.asarray([[1.2, 0.0, 0.0], [0.4, 0.7, 0.0], [-0.3, 0.1, 1.9]]), eye, 0.1 * eye])
    noise = jax.random.normal(jax.random.key(1), (20, 16, 3))
    draws, check = jax.random.normal(jax.random.key(2), (2, 64, 3))
    run = jax.jit(start_module._choose_and_refine, static_argnums=7)
    for usable in (True, False):
        elbos, best, (new_mean, new_factor, checked, bad) = run(
            model, means, factors, jnp.asarray([usable, True, True]), draws, noise, check, 16)
        direct = _direct_elbos(model, draws, means, factors)
        if not usable:
            direct[0] = -np.inf
        np.testing.assert_allclose(np.asarray(elbos), direct, rtol=1e-5)
        assert int(best) == int(np.argmax(direct))
        np.testing.assert_allclose(np.asarray(checked), _direct_elbos(
            model, check, [means[best], new_mean], [factors[best], new_factor]), rtol=1e-5)
        assert int(bad) == 0 and float(checked[1]) > float(checked[0])  # BaM moved toward the exact Gaussian
        np.testing.assert_allclose(np.asarray(new_mean), _MEAN, atol=0.3)
    elbos, best, bam = run(model, means, factors, jnp.asarray([True, True, True]), draws, noise[:0], check, 16)
    np.testing.assert_allclose(np.asarray(elbos), _direct_elbos(model, draws, means, factors), rtol=1e-5)
