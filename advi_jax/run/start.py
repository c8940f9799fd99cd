"""Where a fit starts: zero, the user's point, the best of random points, or the Laplace mode.

`init=None` starts q at zero in R^K (Stan's default is uniform(-2, 2); zero is the centre of
that box and the prior centre of most standardised models); `init=` a dict of constrained
values or a (K,) vector starts there; `init="random"` draws `num_init_draws` locations uniformly
in (-init_radius, init_radius)^K (Stan's random inits) and starts from the one whose q (with
scale `init_scale`) has the highest ELBO estimate, the same draws for each candidate;
`init="laplace"` (and `"auto"` for K <= `AUTO_LAPLACE_MAX_DIM` when the method allows it) runs
the method in the Laplace-whitened coordinates (`advi_jax.vi.laplace`); `init="pathfinder"` runs
it in the coordinates whitened by the best Gaussian on one Pathfinder path
(`advi_jax.vi.pathfinder.start_gaussian`), which exists where the log density has no mode (a
funnel) and costs tens of gradients instead of the Laplace start's 2K for the Hessian.
Where the log density or its gradient is not finite at zero (a log at a boundary, 0 * inf, an
overflow), that path runs from the first finite of up to 100 jittered points, the first uniform
in (-init_radius, init_radius)^K as Stan's random inits (`StartBudget.jitter_tries`); none
finite is a ValueError saying what was not finite. The other starts the library chooses
(`init="auto"`: Laplace, or zero) do the same where the log density is not finite at zero
(`_jittered_start`: one small program, compiled only then); a start the user chose (`init=None`,
a point) raises `checks.NonFiniteStart` there, as before.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from advi_jax import compile_options
from advi_jax._types import Array
from advi_jax._stack import user_stacklevel
from advi_jax.base import Family
from advi_jax.checks import (INIT_OPTIONS, NonFiniteStart, SecondDerivativeError, check_initial_point,
                             check_log_joint_shape, initial_loc, masked_data_hint, shown_point)
from advi_jax.vi import bam as _bam
from advi_jax.vi import laplace as _laplace
from advi_jax.vi import _start_point
from advi_jax.vi import pathfinder as _pathfinder
from advi_jax.vi.advi import elbo_estimate

__all__ = ["Start", "AUTO_LAPLACE_MAX_DIM", "INIT_STRINGS", "start", "random_init"]

INIT_STRINGS = ("auto", "random", "laplace", "pathfinder", "bam")

BAM_START_STEPS = 100
"""Batch-and-Match steps of `init="bam"` (`BAM_START_BATCH` draws each, the decaying schedule)."""

BAM_START_BATCH = 16
"""Draws per Batch-and-Match step of `init="bam"`."""

AUTO_LAPLACE_MAX_DIM = 1000
"""With `init="auto"` (the default), models with K <= this start from the Laplace approximation
and run in its whitened coordinates (for methods with WHITEN and affine-closed families)."""


class Start(NamedTuple):
    """The start of a fit.

    Attributes:
      run_model: the log density the method runs on (the model, or a `Whitened` view of it).
      loc: (K,) the starting location in the run model's coordinates.
      init_loc: (K,) the starting location in R^K of the model (the mode for a Laplace start).
      method: "zero", "user", "random", "laplace", or "zero (no Laplace start: ...)".
      laplace: the `LaplaceInfo` of a Laplace start, else None.
      candidates, scores: the random candidates and their ELBO estimates (init="random").
      pathfinder: the `pathfinder.StartGaussian` of a Pathfinder start, else None.
      tries: points tried for a finite start besides the Pathfinder path's own (`_jittered_start`;
        one gradient evaluation each).
      compared: gradient evaluations of the Pathfinder start's comparison of its candidate
        Gaussians by their ELBOs (`_choose_and_refine`); where that start fell back to zero, of
        all its program ran (the path, the ELBOs and BaM's steps, which run whatever they find).
    """

    run_model: Any
    loc: Array
    init_loc: Array
    method: str
    laplace: Any = None
    candidates: np.ndarray | None = None
    scores: np.ndarray | None = None
    pathfinder: Any = None
    bam: Any = None
    tries: int = 0
    compared: int = 0

    @property
    def whitening(self) -> tuple[Array, Array] | None:
        """(shift, scale_tril) of the whitened coordinates the method runs in, or None."""
        if self.laplace is not None:
            return self.laplace.mode, self.laplace.scale_tril
        if self.bam is not None and self.bam.mean is not None:
            return self.bam.mean, self.bam.scale_tril
        if self.pathfinder is not None:
            return self.pathfinder.mean, self.pathfinder.scale_tril
        return None

    @property
    def num_grad_evals(self) -> int:
        """Gradient evaluations the start itself used (Laplace: L-BFGS + 2K for the Hessian)."""
        if self.laplace is not None:
            return int(self.laplace.num_grad_evals) + 2 * int(self.loc.shape[0]) + self.tries
        grads = int(self.pathfinder.num_grad_evals) if self.pathfinder is not None else 0
        return grads + (int(self.bam.num_grad_evals) if self.bam is not None else 0) + self.tries + self.compared

    @property
    def num_logp_evals(self) -> int:
        """Log-density evaluations the start used (besides its gradients)."""
        return int(self.pathfinder.num_logp_evals) if self.pathfinder is not None else 0


@compile_options.jit(static_argnames=("family", "scale", "num_init_draws", "num_eval_draws"))
def random_init(model: Any, key: Array, radius: Array, family: Family, scale: float, num_init_draws: int,
                num_eval_draws: int = 64):
    """Uniform(-radius, radius)^K candidate locations and the ELBO of q centred at each."""
    loc_key, eval_key = jax.random.split(key)
    dtype = jnp.result_type(float)
    locs = jax.random.uniform(loc_key, (num_init_draws, model.dim), dtype, -radius, radius)

    def score(loc):
        params = family.init(eval_key, model.dim, loc=loc, scale=scale, dtype=dtype)
        return elbo_estimate(model, family, params, eval_key, num_eval_draws)

    return locs, jax.vmap(score)(locs)


@compile_options.jit(static_argnames=("tries", "last"))
def _first_finite_point(model: Any, loc: Array, key: Array, radius: Array, tries: int,
                        last: float) -> _start_point.PathStart:
    """The first of `loc` and `tries` jittered points around it (boxes from (-radius, radius)^K
    shrinking to `last` of that) where log p and its gradient are finite, in one program."""
    radii = radius * jnp.asarray(_pathfinder.jitter_factors(tries, last), loc.dtype)
    value_and_grad = jax.value_and_grad(lambda z: -model.log_density(z))
    return _start_point.first_finite(value_and_grad, loc, (key, radii))[3]


def _jittered_start(model: Any, loc: Array, key: Array, init_radius: float, why: str) -> tuple[Array, str, int]:
    """(point, what happened, points tried) for a start the library chose (`init="auto"`) where
    `why` (log p or its gradient is not finite at `loc`): the first finite of up to
    `StartBudget.jitter_tries` jittered points, as the Pathfinder start's own retry.

    Raises:
      NonFiniteStart: no point tried is finite (`why` and the count).
    """
    budget = START_BUDGET
    began = jax.device_get(_first_finite_point(model, loc, jax.random.fold_in(key, 5),
                                               np.asarray(init_radius, loc.dtype), budget.jitter_tries,
                                               budget.jitter_last))
    jittered, nowhere = _jitter_report(model, loc, why, began, init_radius)
    if nowhere:
        raise NonFiniteStart(f"{nowhere}; pass init= a point where both are finite, or check the model")
    return jnp.asarray(began.point), jittered, int(began.num_tries)


def start(model: Any, family: Family, init: Any, *, key: Array, whiten: bool, init_scale: float,
          num_init_draws: int, init_radius: float, check: bool, on_lowered: Callable[[], Any] | None = None) -> Start:
    """Resolve `init` into a `Start` (see the module docstring).

    `on_lowered` (if given) is called once the start's own program has been traced and lowered,
    before it compiles (`aj.fit` then lets a background thread trace the fit's later programs,
    `advi_jax.run.ahead`), or at once for a start without a program of its own.

    Raises:
      ValueError, TypeError: a bad `init`; `init="laplace"` where it cannot run; a log density
        that is not finite at the start (with `check`); no finite random candidate.
    """
    dtype = jnp.result_type(float)
    is_str = isinstance(init, str)
    if is_str and init not in INIT_STRINGS:
        raise ValueError(f"init must be {INIT_OPTIONS}; got {init!r}")
    if is_str and init in ("laplace", "pathfinder", "bam") and not family.affine_closed:
        raise ValueError(f"init={init!r} needs a family closed under affine maps ('meanfield' or 'fullrank'); "
                         f"family {family.name!r} is not")
    if is_str and init == "bam" and family.name != "fullrank":
        raise ValueError(f"init='bam' needs the full-rank family (Batch-and-Match fits a full covariance); "
                         f"family is {family.name!r}")
    laplace_init = whiten and family.affine_closed and is_str and (
        init == "laplace" or (init == "auto" and model.dim <= AUTO_LAPLACE_MAX_DIM))
    candidates = scores = None
    if is_str and init == "random":
        locs, values = random_init(model, jax.random.fold_in(key, 3), jnp.asarray(init_radius, dtype), family,
                                   init_scale, num_init_draws)
        scores, candidates = np.asarray(values), np.asarray(locs)
        if not np.isfinite(scores).any():
            raise ValueError(f"init='random': the ELBO is not finite at any of the {num_init_draws} random initial "
                             f"points in (-{init_radius}, {init_radius})^K; lower init_radius or pass init=")
        loc = locs[int(np.argmax(np.where(np.isfinite(scores), scores, -np.inf)))]
        method = "random"
    else:
        loc = initial_loc(model, None if is_str else init, dtype)
        method = "zero" if init is None or is_str else "user"
    if is_str and init in ("pathfinder", "bam") and whiten:
        if check:
            check_log_joint_shape(model, loc.dtype)
        return _pathfinder_start(model, family, loc, key, init_scale, candidates, scores,
                                 BAM_START_STEPS if init == "bam" else 0, check=check, on_lowered=on_lowered,
                                 init_radius=init_radius)
    if on_lowered is not None:
        on_lowered()
    jittered, tries = "", 0
    if check:
        try:
            check_initial_point(model, loc)
        except NonFiniteStart as err:
            if init != "auto":  # the user's choice of start stands: the error says what to do
                raise
            loc, jittered, tries = _jittered_start(model, loc, key, init_radius, str(err).split(" at the initial")[0])
            method = "jittered"
    said = f" ({jittered})" if jittered else ""
    if not laplace_init:
        return Start(model, loc, loc, method + said, None, candidates, scores, tries=tries)
    try:
        # A start needs a rough mode: Newton steps only while it is about 0.3 sd away or more (each
        # a Hessian; to 0.01 sd a K = 302 hierarchical logistic took three, twice the second call's
        # time, for the same fit).
        info = _laplace.laplace(model, family=family, init=loc, newton_tol=_laplace.START_DECREMENT)
    except (ValueError, SecondDerivativeError) as err:
        if init != "auto":
            raise
        reason = (str(err).split(": ", 1)[-1].split(";")[0] if isinstance(err, ValueError) else
                  f"the log density has no second derivative in JAX for its Hessian ({err.__cause__})")
        return Start(model, loc, loc, f"{method} (no Laplace start: {reason}){said}", None, candidates, scores,
                     tries=tries)
    return Start(_laplace.Whitened(model, info.mode, info.scale_tril), jnp.zeros_like(loc), info.mode,
                 f"laplace{' from a jittered point' + said if jittered else ''}", info, candidates, scores, tries=tries)


class StartBudget(NamedTuple):
    """The start program's budgets (static; `START_BUDGET` is the default fit's).

    Attributes:
      path_iters: the most L-BFGS iterations of the Pathfinder path. A start needs the region,
        not the mode to machine precision (down a funnel's neck L-BFGS otherwise runs its 1000
        iterations, ~3,000 gradients, for nothing).
      path_elbo_draws: Pathfinder's ELBO draws per iteration (log densities, no gradients).
      path_patience: the path stops once this many iterations found no better Gaussian (measured,
        `benchmarks/bench_start.py`: the best iterate of radon_centered's path is its 25th, of
        eight_schools_centered's its 7th-37th, and both ran to 200; where the path's Gaussian
        keeps improving, births_lognormal_ts' and wells_badly_scaled's best is at 190-200).
      elbo_draws: the draws of each candidate's ELBO (and of BaM's check).
      jitter_tries: where log p or its gradient is not finite at the start (a log at a boundary,
        0 * inf, overflow), the path runs from the first finite of this many jittered points
        (`pathfinder.lbfgs_path`'s `jitter`; Stan retries 100 random inits).
      jitter_last: the first jittered point lies uniformly in (-r, r)^K around the start with r
        = `init_radius` (Stan's random inits), the later ones in boxes shrinking geometrically to
        r = `init_radius` times this. The usual failure is a set of measure zero at the start
        (0 * inf at exactly zero), which the first try leaves; from Stan's box the path also
        started better than from next to zero on stochastic_volatility (its start's ELBO after
        BaM -145.7 to -149.2 at 8 of 8 keys against -234 to -258 from within 0.002 of zero; the
        family limit's -144.7: benchmarks/PERFORMANCE.md, "nanstart"). The later, nearer tries
        serve a log density that is not finite far from the start (an overflow).
    """

    path_iters: int = 200
    path_elbo_draws: int = 10
    path_patience: int = 50
    elbo_draws: int = 64
    jitter_tries: int = 100
    jitter_last: float = 1e-3

    def pathfinder_options(self) -> _pathfinder.Options:
        """The Pathfinder `Options` of the start's path."""
        return _pathfinder.Options(max_iters=self.path_iters, num_elbo_draws=self.path_elbo_draws,
                                   patience=self.path_patience)


START_BUDGET = StartBudget()


class BamStart(NamedTuple):
    """The Gaussian Batch-and-Match reached from a Pathfinder start (in R^K) and its cost."""

    mean: Array | None
    scale_tril: Array
    num_steps: int
    num_grad_evals: int
    num_nonfinite: int


class _Found(NamedTuple):
    """What the start program returns (see `_start_program`); `began`: where the path began."""

    path: _pathfinder.StartGaussian  # the path's costs; its mean, factor and ELBO replaced by the chosen one's
    elbos: Array  # (3,) the path's Gaussian (-inf when unusable), N(loc, I), N(loc, s^2 I): the same draws
    best: Array  # index of the highest finite of them
    mean: Array  # (K,) the chosen Gaussian
    factor: Array  # (K, K) its lower-triangular factor
    start_log_density: Array  # log p(loc), for the initial-point check
    whitened_loc: Array  # (K,) zeros: the start in the chosen Gaussian's coordinates
    bam_mean: Array  # (K,) BaM's Gaussian in R^K (NaN when BaM did not run)
    bam_factor: Array  # (K, K)
    bam_elbos: Array  # (2,) ELBOs of the chosen and BaM's Gaussians on common draws
    bam_nonfinite: Array  # BaM steps skipped as non-finite
    began: _pathfinder.PathStart  # the point the path ran from (loc, or a jittered point) and its tries


def _choose_and_refine(model: Any, means: Array, factors: Array, usable: Array, elbo_noise: Array,
                       noise: Array, check_noise: Array, batch_size: int):
    """The ELBOs of the candidate Gaussians N(means[j], factors[j] factors[j]^T) (lower-triangular
    factors; `usable[j]` False: -inf) on the draws `elbo_noise`, the best of them, and, with BaM
    steps (`noise`: (num_steps, batch_size, K), one step a slice), BaM's Gaussian from it: BaM run
    from N(0, I) in the coordinates whitened by the best candidate, BaM's Gaussian in R^K, the ELBOs
    on the draws `check_noise` of the best candidate and of BaM's Gaussian, and the count of
    non-finite BaM steps (all NaN / -inf where no candidate is finite).

    Everything runs in one scan of BaM's step, so the program holds one copy of the log density for
    all of it (less to trace and compile: each copy cost 0.07-0.2 s of compile CPU, 2026-12-03). A
    step's own log densities at its draws give the ELBO of the Gaussian it starts from, and the
    whitened model's ELBO is the ELBO in R^K; so the ELBO draws run, in whole batches, as steps
    that keep their state: from N(0, I) whitened by each candidate in turn, then (with BaM) by the
    best (before the first step) and from BaM's Gaussian (after the last). Their gradients are
    computed and unused (`start_elbo_grad_evals`).
    """
    num_cands, k = means.shape
    dtype = means.dtype
    options = _bam.Options(batch_size=batch_size)
    start_state = _bam.State(jnp.zeros((k,), dtype), jnp.eye(k, dtype=dtype), jnp.eye(k, dtype=dtype),
                             jnp.zeros((), jnp.int32))
    batches = elbo_noise.reshape(-1, batch_size, k)
    per = batches.shape[0]
    checks = check_noise.reshape(-1, batch_size, k)[:per if noise.shape[0] else 0]
    steps = noise.shape[0]
    trips = jnp.concatenate([batches] * num_cands + [checks, noise, checks])
    # Where each trip adds its ELBO: candidate j, num_cands (the best, before BaM), num_cands + 1
    # (BaM's, after it); -1: a BaM step.
    slot = np.concatenate([np.repeat(np.arange(num_cands), per), np.full(checks.shape[0], num_cands),
                           np.full(steps, -1), np.full(checks.shape[0], num_cands + 1)]).astype(np.int32)

    def candidate_elbos(sums):  # -inf where unusable or not finite
        elbos = sums[:num_cands] / per
        return jnp.where(usable & jnp.isfinite(elbos), elbos, -jnp.inf)

    def body(carry, xs):
        state, bad, sums = carry
        eps, at = xs
        candidate = (at >= 0) & (at < num_cands)
        which = jnp.where(candidate, at, jnp.argmax(candidate_elbos(sums)))
        run_model = _laplace.Whitened(model, means[which], factors[which])
        begin = jax.tree_util.tree_map(lambda a, b: jnp.where(candidate, a, b), start_state, state)
        new, info = _bam.noise_step(run_model, options)(eps, begin)
        stepping = at < 0
        state = jax.tree_util.tree_map(lambda a, b: jnp.where(stepping, a, b), new, state)
        sums = sums.at[jnp.maximum(at, 0)].add(jnp.where(stepping, 0.0, info.elbo))
        return (state, bad + (stepping & ~info.finite).astype(jnp.int32), sums), None

    sums = jnp.zeros((num_cands + 2,), dtype)
    (state, bad, sums), _ = jax.lax.scan(body, (start_state, jnp.zeros((), jnp.int32), sums),
                                         (trips, jnp.asarray(slot)))
    elbos = candidate_elbos(sums)
    best = jnp.argmax(elbos)
    mean, factor = means[best], factors[best]
    # zeta = mean + S (loc + L u): the composed factor S L is lower triangular.
    checked = sums[num_cands:] / max(checks.shape[0], 1)
    bam = (mean + factor @ state.loc, factor @ state.chol, jnp.where(jnp.isfinite(checked), checked, -jnp.inf), bad)
    return elbos, best, bam


def _elbo_draws(budget: "StartBudget", batch_size: int) -> int:
    """The draws of each ELBO the start compares: `StartBudget.elbo_draws` rounded up to whole BaM batches."""
    return batch_size * -(-budget.elbo_draws // batch_size)


def start_elbo_grad_evals(bam_steps: int, budget: "StartBudget | None" = None, batch_size: int = 16) -> int:
    """Gradient evaluations of the start's ELBOs (`_choose_and_refine`): three candidates of
    `StartBudget.elbo_draws` draws, rounded up to whole batches of `batch_size`, and with BaM steps
    its check, two more."""
    return (3 + (2 if bam_steps else 0)) * _elbo_draws(START_BUDGET if budget is None else budget, batch_size)


def start_evals(bam_steps: int, batch_size: int, budget: StartBudget = START_BUDGET) -> int:
    """The most log-density (gradient) evaluations of the start program (`_start_program`): the
    Pathfinder path (L-BFGS iterations with about two evaluations each), BaM's batches and the
    ELBOs of the five Gaussians compared. Where the program's arithmetic says the fast compiler
    options do not pay (`_start_mode`), it chooses between "mid" and "full" (`compile_options.compile_mode`).
    Pathfinder's own ELBO draws (up to 10 log densities per iteration, without gradients) are not
    counted (the count was calibrated without them, when it also chose the fast options)."""
    return 2 * budget.path_iters + bam_steps * batch_size + 5 * budget.elbo_draws


def start_num_draws(bam_steps: int, batch_size: int, budget: StartBudget = START_BUDGET) -> int:
    """The number of K-vectors of standard normals the start program uses (`_start_program`'s `noise`)."""
    return (budget.path_iters * budget.path_elbo_draws + bam_steps * batch_size + 2 * _elbo_draws(budget, batch_size)
            + budget.jitter_tries)


def start_draws(key: Array, num: int, dim: int, dtype: Any) -> np.ndarray:
    """(num, dim) standard normals drawn on the host (NumPy's PCG64 seeded by the key's bits), for
    `_start_program`'s `noise`: the same key gives the same draws, and the program compiles no
    random number generator: 0.01 s a million float32 numbers (the default start's 3,828 vectors
    at K = 200: 0.01 s) against 0.04-0.07 s less compile (2026-12-03)."""
    bits = jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    rng = np.random.default_rng([int(v) for v in np.asarray(bits, np.uint32).ravel()])
    dtype = np.dtype(dtype)
    if dtype in (np.float32, np.float64):
        return rng.standard_normal((num, dim), dtype=dtype)
    return rng.standard_normal((num, dim)).astype(dtype)


def jitter_factors(budget: StartBudget = START_BUDGET) -> np.ndarray:
    """(jitter_tries,) the half-widths of the boxes of the jittered starts, as fractions of the
    widest (`init_radius`): 1 at the first try, shrinking geometrically to `jitter_last`."""
    return _pathfinder.jitter_factors(budget.jitter_tries, budget.jitter_last)


def _start_mode(model: Any, args: dict) -> compile_options.ByCost:
    """The start program's compiler options, by its own arithmetic (`compile_options.cost_mode`): its
    Pathfinder loop priced at its cap of `StartBudget.path_iters` iterations (BaM's batches and the
    ELBOs count by their own lengths), fast where the estimated extra run time is at most
    `START_SAVED_SHARE` of the compile saved; `start_evals` for the size rule where they do not pay.

    Measured (2026-12-03, quiet machine; the program's run, fast against "mid" options, third call):
    the estimate from one trip of the loop was 0.4-0.6x to 4x the extra run time (wells_badly_scaled
    0.10 / 0.27 s, breast cancer 0.02 / 0.05, randhie_poisson 0.21 / 0.11, a 5,000 x 10 logistic 0.16 /
    0.20, 30,000 x 10 0.95 / 1.10, randhie_negbin 0.46 / 0.74, radon_centered 0.02 / 0.08), against 2.2-3
    s of compile saved. The size rule it replaces compiled "mid" above ~43,000 entries, which made the
    first call of a 5,000-row Poisson or logistic regression 5.3-5.8 s (now 3.7-3.9 s). Not priced: an
    incomplete gamma function (`igammac`, gamma_survival_censored: estimated 0.01 s, measured 0.63 s
    more), whose full compile also costs far more; that model compiled fast before, as it does now."""
    budget = args.get("budget", START_BUDGET)
    return compile_options.ByCost(budget.path_iters, start_evals(args["bam_steps"], args["batch_size"], budget),
                                  saved_share=START_SAVED_SHARE)


START_SAVED_SHARE = 0.5
"""The share of its compile saving the start program's fast code may cost in extra run time (`_start_mode`):
the saving is made once, on a fit's first call, and the extra is paid on every call. At 1 a 30,000 x 10
logistic regression's start compiled fast: its first call 0.6-0.9 s shorter (the loop's full compile on
the other core took the rest), every later call 1.4-1.6 s longer (benchmarks/PERFORMANCE.md)."""


@compile_options.jit(static_argnames=("diagonal", "init_scale", "bam_steps", "batch_size", "budget"),
                     mode=_start_mode)
def _start_program(model: Any, loc: Array, key: Array, diagonal: bool, init_scale: float, bam_steps: int,
                   batch_size: int, budget: StartBudget = START_BUDGET, radius: Array = 2.0,
                   noise: Array | None = None) -> _Found:
    """The whole Pathfinder (-> BaM) start in one compiled program (one compilation, no host
    round trips between its stages, no eager operations around it). `radius`: the widest box of
    the jittered starts (`StartBudget.jitter_tries`), tried only where `loc` is not finite.

    `noise`: every standard normal the program uses, (`start_num_draws`, K) (`start_draws`: drawn
    on the host, so the program holds no random number generator: threefry and the normal's inverse
    erf are ~650 of its ~4,900 optimised HLO instructions), in this order: Pathfinder's ELBO draws
    per iteration, BaM's batches, the candidates' ELBO draws, BaM's check and, last, the jittered
    starts' uniforms, as frac(16 z), uniform on [0, 1) to within 2 exp(-2 pi^2 16^2) (Poisson
    summation), with no code of its own (the normal CDF's erf would add ~200 lines of optimised
    HLO). None: drawn in the program from `key`."""
    k, dtype = loc.shape[0], loc.dtype
    path_draws, bam_draws = budget.path_iters * budget.path_elbo_draws, bam_steps * batch_size
    elbo_draws = _elbo_draws(budget, batch_size)
    rest = path_draws + bam_draws + 2 * elbo_draws
    if noise is None:  # one generator in the program (each random-number call site costs 20-30 ms of compile)
        noise = jax.random.normal(key, (start_num_draws(bam_steps, batch_size, budget), k), dtype)
    path_noise = noise[:path_draws].reshape(budget.path_iters, budget.path_elbo_draws, k)
    bam_noise = noise[path_draws:path_draws + bam_draws].reshape(bam_steps, batch_size, k)
    elbo_noise = noise[path_draws + bam_draws:path_draws + bam_draws + elbo_draws]
    check_noise = noise[path_draws + bam_draws + elbo_draws:rest]
    radii = jnp.asarray(radius, dtype) * jnp.asarray(jitter_factors(budget), dtype)
    scaled = 16.0 * noise[rest:]
    jitter = radii[:, None] * (2.0 * (scaled - jnp.floor(scaled)) - 1.0)
    found, log_p0, began = _pathfinder.path_gaussian(model, loc, key, budget.pathfinder_options(), diagonal=diagonal,
                                                     noise=path_noise, jitter=jitter)
    loc = began.point  # where the path ran from: loc, or the first finite jittered point
    eye = jnp.eye(k, dtype=dtype)
    usable = (jnp.all(jnp.isfinite(found.mean)) & jnp.all(jnp.isfinite(found.scale_tril))
              & jnp.all(jnp.diagonal(found.scale_tril) > 0))
    elbos, best, bam = _choose_and_refine(model, jnp.stack([found.mean, loc, loc]),
                                          jnp.stack([found.scale_tril, eye, init_scale * eye]),
                                          jnp.stack([usable, jnp.asarray(True), jnp.asarray(True)]), elbo_noise,
                                          bam_noise, check_noise, batch_size)
    mean = jnp.where(best == 0, found.mean, loc)
    factor = jnp.where(best == 0, found.scale_tril, jnp.where(best == 1, 1.0, init_scale) * eye)
    if not bam_steps:
        bam = (jnp.full((k,), jnp.nan, dtype), jnp.full((k, k), jnp.nan, dtype), jnp.full((2,), -jnp.inf, dtype),
               jnp.zeros((), jnp.int32))
    chosen = found._replace(mean=mean, scale_tril=factor, elbo=jnp.where(best == 0, found.elbo, elbos[best]))
    return _Found(chosen, elbos, best, mean, factor, log_p0, jnp.zeros_like(loc), *bam, began)


def _not_finite_at(log_p: float) -> str:
    """What is not finite at a point: its log density (with its value), else its gradient."""
    return f"the log density is {log_p}" if not np.isfinite(log_p) else "the log density's gradient is not finite"


def _jitter_report(model: Any, loc: Array, why: str, began: _pathfinder.PathStart,
                   init_radius: float) -> tuple[str, str]:
    """(jittered, nowhere) for a start that was not finite at `loc` (`why`: what was not) and tried
    the jittered points `began` reports (`StartBudget.jitter_tries`, boxes from `init_radius` down):
    where it moved to, or, when no point tried was finite, the message saying so ("" otherwise)."""
    tries = int(began.num_tries)
    zero = not np.any(np.asarray(loc))
    if not bool(began.finite):
        shown = shown_point(model.to_constrained(loc))
        values = int(began.value_nonfinite)
        smallest = init_radius * float(jitter_factors()[-1])
        return "", (f"{why} at the initial point {shown}{' (zero in R^K)' if zero else ''}, and at each of the "
                    f"{tries - 1} jittered points tried around it, in boxes from (-{init_radius:g}, "
                    f"{init_radius:g})^K down to (-{smallest:.2g}, {smallest:.2g})^K, the log density ({values} "
                    f"of them) or its gradient ({tries - 1 - values}) is not finite{masked_data_hint(model)}")
    radius = float(init_radius * jitter_factors()[tries - 2])
    return (f"{why} at {'zero' if zero else 'the initial point'}; started at jittered point {tries - 1} of up to "
            f"{START_BUDGET.jitter_tries}, in (-{radius:.2g}, {radius:.2g})^K around it"), ""


def _pathfinder_start(model: Any, family: Family, loc: Array, key: Array, init_scale: float, candidates,
                      scores, bam_steps: int = 0, batch_size: int = BAM_START_BATCH, check: bool = True,
                      on_lowered: Callable[[], Any] | None = None, init_radius: float = 2.0) -> Start:
    """Whiten by the best by ELBO (the same draws for each) of: the best Gaussian of one
    Pathfinder path from `loc` (its diagonal for mean-field), N(loc, I) and N(loc, init_scale^2 I);
    then, with `bam_steps`, refine it by Batch-and-Match steps in its whitened coordinates.

    Where log p or its gradient is not finite at `loc`, the path and the two isotropic Gaussians
    start instead from the first finite of `StartBudget.jitter_tries` jittered points around it,
    in (-init_radius, init_radius)^K and then smaller boxes (`StartBudget.jitter_last`); the
    method says so and why, and the points tried count as gradient evaluations. Where none is
    finite: a ValueError naming what was not finite (with `check`), else a warning and the start
    at `loc` with the reason.

    Along a funnel (a density unbounded as a scale goes to zero) L-BFGS runs down the neck and
    every Gaussian on its path is degenerate; an isotropic Gaussian at the start is then the
    better start (the ELBO says so). Zero (with the reason) when none is finite.

    BaM's closed-form updates are affine invariant, so they correct a start whose covariance is
    off by orders of magnitude (badly scaled predictors) in a few steps, where a gradient method
    in the whitened coordinates would need thousands. BaM's fixed point minimises a score-based
    divergence, not the KL of the ELBO (on a funnel it is too narrow), so its Gaussian replaces
    the start only when its ELBO is higher (the same draws for both).

    Everything runs in one compiled program (`_start_program`); what it returns about `loc` serves
    the initial-point check (`check`).

    Raises:
      ValueError: (with `check`) log p or its gradient is not finite at `loc` nor at any jittered
        point.
    """
    dtype = loc.dtype
    args = (model, loc, key, family.name != "fullrank", float(init_scale), int(bam_steps), int(batch_size))
    kwargs = dict(radius=np.asarray(init_radius, np.dtype(dtype)),  # NumPy: no conversion program of its own
                  noise=start_draws(key, start_num_draws(bam_steps, batch_size), loc.shape[0], dtype))
    if on_lowered is not None:
        _start_program.lower(*args, **kwargs)  # traced and lowered once: the call below finds it in JAX's caches
        on_lowered()
    out = _start_program(*args, **kwargs)
    elbos, best, log_p0, bam_elbos, bad, grads, logps, began = jax.device_get(
        (out.elbos, out.best, out.start_log_density, out.bam_elbos, out.bam_nonfinite, out.path.num_grad_evals,
         out.path.num_logp_evals, out.began))
    log_p0, tries = float(log_p0), int(began.num_tries)
    spent = int(grads) + start_elbo_grad_evals(bam_steps, START_BUDGET, batch_size) + bam_steps * batch_size
    jittered = ""
    if tries > 1 or not np.isfinite(log_p0):  # loc itself was not finite
        jittered, nowhere = _jitter_report(model, loc, _not_finite_at(log_p0), began, init_radius)
        if nowhere:
            if check:
                raise NonFiniteStart(f"{nowhere}; pass init= a point where both are finite, or check the model")
            warnings.warn(f"{nowhere}: the fit starts there (check=False)", UserWarning, stacklevel=user_stacklevel())
            return Start(model, loc, loc, f"zero (no Pathfinder start: {nowhere})", None, candidates, scores,
                         compared=spent)
    elbos, best = np.asarray(elbos, np.float64), int(best)
    if not np.isfinite(elbos[best]):
        return Start(model, loc, loc, "zero (no Pathfinder start: no finite Gaussian on the L-BFGS path)", None,
                     candidates, scores, compared=spent)
    found = out.path._replace(num_grad_evals=int(grads), num_logp_evals=int(logps))
    start_name = "jittered start" if jittered else "start"
    if best > 0:
        scale = 1.0 if best == 1 else float(init_scale)
        method = (f"N({start_name}, {scale:g}^2 I) (its ELBO {elbos[best]:.4g} beat the Pathfinder Gaussian's "
                  f"{elbos[0]:.4g})")
    else:
        method = "pathfinder from a jittered point" if jittered else "pathfinder"
    said = f" ({jittered})" if jittered else ""
    begun = Start(_laplace.Whitened(model, out.mean, out.factor), out.whitened_loc, out.mean, method + said, None,
                  candidates, scores, found, compared=start_elbo_grad_evals(0, START_BUDGET, batch_size))
    if not bam_steps:
        return begun
    before, after = (float(v) for v in bam_elbos)
    info = BamStart(out.bam_mean, out.bam_factor, bam_steps,  # its steps and its check's two ELBOs
                    bam_steps * batch_size + 2 * _elbo_draws(START_BUDGET, batch_size), int(bad))
    if not after > before:  # also when BaM's Gaussian is not finite (its ELBO is -inf or NaN)
        return begun._replace(method=f"{method.split(' (')[0]}, not BaM (BaM's ELBO {after:.4g} <= {before:.4g})"
                                     f"{said}", bam=info._replace(mean=None))
    return begun._replace(run_model=_laplace.Whitened(model, out.bam_mean, out.bam_factor), init_loc=out.bam_mean,
                          method=f"bam from {method.split(' (')[0]}{said}", bam=info)
