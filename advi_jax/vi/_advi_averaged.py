"""ADVI that decides when to stop: constant steps, iterate averaging, batch-means MCSE.

The constant step is Adam's (`AutoStop.preconditioner="adam"`, `AutoStop()`'s default) or the
Fisher-natural gradient of the full-rank Gaussian in (mean, Cholesky factor) (`"natural"`,
`advi_jax.vi._natural`; what the default `aj.fit` runs, `advi_jax.run.choose.AUTO_ADVI`, at step
0.02). Adam divides each coordinate by its gradient's RMS, which along a hierarchical posterior's
group-level scale is dominated by the gradient noise, so its effective step there is tiny (radon:
iterates autocorrelated over hundreds of steps, the 48,000-gradient cap reached 0.06-0.64 sd from
the family limit); the natural step is Newton-like near the optimum whatever the noise
(benchmarks/PERFORMANCE.md, "The natural-gradient default"). Everything below applies to both.

The default `aj.fit` of a general model (`advi_jax.run.choose`) runs ADVI in coordinates
whitened by its start, where a fixed step budget is either wasted (the start is already at the
optimum) or too short (a hierarchical posterior whose start is sd's away). This variant decides
from its own iterates, after Dhaka, Catalina, Andersen, Magnusson, Huggins & Vehtari (2020,
"Robust, accurate stochastic optimization for variational inference") and Welandawe, Andersen,
Vehtari & Huggins (2024, "A framework for improving the reliability of black-box variational
inference", RABVI):

* Adam with a CONSTANT step size: its iterates reach a stationary jitter around (near) the
  optimum, whose mean is estimated by averaging them (Polyak-Ruppert), not by decaying the step.
* The iterates are summarised in batch means (a fixed number of slots; when they are full,
  neighbouring batches merge and the batch length doubles, so the batches stay long compared
  with the iterates' autocorrelation however long the run). The average is that of the LATER
  HALF of the batches, so the transient before stationarity is discarded, however long it was.
* After every batch, the average's Monte Carlo standard error (the spread of the batch means
  over sqrt(batches)) and its drift (the later quarter's mean minus the earlier quarter's) are
  measured in q's own units: each coordinate's mean in sds of q, each sd as a log ratio. The
  phase has converged when, over every coordinate, MCSE < `tol_mcse` and |drift| < `tol_drift`:
  a run still travelling (the drift) or too noisy to tell (the MCSE) goes on.
* RABVI's check of the step size's own bias: a converged phase restarts from its average with
  half the step size (`max_halvings` times at most); the fit stops when two successive averages
  agree within `tol_change` (in the same units), or when the halvings are spent. The average of
  constant-step iterates is biased by O(step size) wherever the ELBO is not quadratic (its
  gradient AT the iterates averages to zero, not at their average), so the change a halving makes
  reads the bias left at the smaller step; `stop_warning` warns when it exceeds `BIAS_WARNING`.
* That reading needs the halved phase to have relaxed to its own stationary mean. Halving the step
  doubles the iterates' relaxation and autocorrelation times, so a phase after a halving keeps the
  batch length of the previous phase's passing test (`keep_batch_steps`; that phase's batches were
  long enough for its MCSE test, the halved phase's must be at least as long) and needs
  `min_batches_halved` of them, and at least `halved_fraction` (a half) of the first phase's
  length: the average of constant-step iterates has about the same MCSE over the same number of
  steps whatever the step (Polyak-Ruppert), so a halved phase much shorter than the first is
  noisier than the first was allowed to be, whatever its own short-batch MCSE says. (Restarting at 25-step batches, radon's group-level sd, whose
  iterates at step 0.01 are autocorrelated over hundreds of steps, moved 10-15% of the way to the
  halved step's mean in the 200-step minimum phase; the halved phases reported changes of
  0.023-0.057 sd where a relaxed one moves 0.09-0.15, and fits 0.07-0.11 sd from the family limit
  passed silently; benchmarks/PERFORMANCE.md.)
* A change over `BIAS_WARNING` is confirmed before it is reported: the halved phase runs on, to
  at most `confirm_factor` times its minimum length, and stops early only if the change falls back
  under `tol_change` (hysteresis, so a change that merely dips under the threshold by noise does
  not end it). A short phase's average carries the noise of few batches in every coordinate, and
  the largest change over 2K coordinates then exceeds the threshold by noise alone (eight schools:
  0.065-0.087 after the minimum phase, 0.035-0.039 once confirmed); a real bias persists or grows
  as the phase relaxes. Only fits whose change would warn pay for it.

* With the natural step, `AutoStop.control_rate` > 0 subtracts a control variate from the mean
  direction (`advi_jax.vi._natural.square_control`): the squares eps_j^2 - 1 and the products
  eps_i eps_j that involve the coordinate's own draw, with coefficients from exponential averages
  of EARLIER steps' draws (so each step's expectation, hence the fixed point, is unchanged), the two
  estimates of each third derivative pooled and each coefficient shrunk by its own standard error
  (`shrunk_coef`). The MCSE of the average is set by the mean direction's noise, and on a
  hierarchical posterior most of it is that quadratic term (radon: the group-level scale's third
  derivatives along the group effects); the variate cut the asymptotic variance of
  radon_noncentered's slowest coordinate 8x (1.51 -> 0.18 per step), so the rule passes at 3,600
  steps where it reached the 12,000-step cap (benchmarks/PERFORMANCE.md, "hiercost").

* A TRANSIT (`AutoStop.transit_growth` > 1; off by default): on a funnel-like posterior the start
  is far below the optimum along a direction whose natural gradient is small and nearly constant,
  so the iterates climb it for thousands of steps at a steady pace (neals_funnel: v's mean 0.65 ->
  3.62 sd of q over the 12,000-step cap), and the later-half average lags the end of the climb. If,
  after `transit_after` steps of the first phase, the rule's test fails and some coordinate's drift
  (the tail's later half's mean minus its earlier half's) is over `transit_drift` AND over
  `transit_z` of its standard errors (from the spread of the tail's batch means, which the trend
  itself inflates: a pure linear trend over h batches reads only ~0.87 sqrt(h)), the step size
  grows by `transit_growth` (to at most `transit_max` x `learning_rate`; the trust region
  `max_step` still bounds each step) and the window restarts from the current iterate. Every full
  set of slots (`num_slots` batches) it is reviewed: still moving (a coordinate flagged at the last
  decision flagged again, drifting the same way: a climb persists, while noise flags some other
  coordinate in most windows; PERFORMANCE.md, "birthscap"), it grows again; not moving, it comes
  back down by the same factor per window (the grown step's own O(rho) bias is left gradually),
  never to grow again, and the rule's normal first phase starts from scratch at `learning_rate`.
  The rule cannot pass while the step is grown or coming back down, and that phase runs at least
  `halved_fraction` of the steps so far: the grown step's bias along the slow direction relaxes on
  the transit's own time scale, which a short phase's drift test cannot see (eight_schools_centered,
  seed 1: its rule passed 0.10 sd from the family limit 400 steps after the descent).

* HEAVY-TAILED DRAWS (`AutoStop.heavy_draws` > 1; off by default; natural step only): over the first
  `heavy_after` steps, each draw's own deviation from its step's mean direction is measured in the
  Fisher metric (`advi_jax.vi._natural.draw_deviations`); times rho / `num_samples` it is how far that
  one draw moves q, in about sd of q. If more than `heavy_fraction` of the draws move it by more than
  `heavy_kick`, the draws read heavy-tailed, and from then on `heavy_draws` steps' draws are averaged
  into each update (q is held in between; the averaging, the batches, the rule's minimum lengths and
  the transit count updates, as with `heavy_draws` times the draws per step; the cap on steps, hence
  on gradients, is unchanged). Why: the constant step's average is biased where the ELBO is not
  quadratic, in proportion to the step's noise; where single draws of q's tail carry gradients orders
  of magnitude above the rest (a horseshoe's local scales: 10% of the draws move q by over 0.25 sd at
  rho 0.02, 4 draws; no other suite posterior has more than 0.2%), the kicks are large enough to
  leave the local quadratic picture (and the trust region truncates them, which biases the step's
  mean), so the bias fell only as rho^0.4 with the step. Averaging over S draws divides each draw's
  kick by S (one heavy draw among 32 moves q 8x less) and makes the step's noise lighter-tailed;
  reg_horseshoe at the same 48,000 gradients: 0.24 sd from the family limit -> 0.03-0.04
  (benchmarks/PERFORMANCE.md, "a signal for more draws per step"). A fit that reads light runs
  exactly the plain step's values.

Everything runs inside the step (one compile; the tests happen only when a batch completes,
under `lax.cond`), and the step's `StepInfo.converged` reports the outcome, which is how the
driver stops it (`advi_jax.run.driver`). Its `num_steps` is only a hard cap.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from advi_jax._types import Array, ArrayLike
from advi_jax.base import Family, FitState, LogDensity, step_info
from advi_jax.estimators import get_estimator
from advi_jax.families import get_family
from advi_jax.vi._natural import natural_draws, natural_move, shrunk_coef

__all__ = ["AutoStop", "AveragedState", "advi_averaged", "averaged_params", "averaged_extras", "describe_stop",
           "stop_warning"]


BIAS_WARNING = 0.05
"""`stop_warning`'s threshold on the change a halving of the step size made (q's units)."""

_TRACE = None
"""None, or a host function given every closed batch's statistics (benchmarks/bench_stop_trace.py)."""


class AutoStop(NamedTuple):
    """Settings of the averaged, self-stopping ADVI (static, hashable).

    Attributes:
      learning_rate: Adam's constant step size in the first phase.
      batch_steps: steps per batch mean at the start of a phase (doubles when the slots fill).
      num_slots: batch means kept (even); when full, neighbours merge pairwise.
      min_batches: batches before the first test (the average then spans half of them).
      min_batches_halved: the same in a phase after a halving (it starts from the last average,
        already near stationarity).
      tol_mcse: the largest MCSE of the average allowed, in sd of q (means) or log sd (sds).
      tol_drift: the largest drift of the average allowed, in the same units.
      max_halvings: how often the step size is halved to check its bias (0: never).
      tol_change: successive phases' averages must agree within this (same units).
      tol_distance: the largest estimated distance of the average's mean from the optimum, in
        sd of q (the averaged natural gradient of the mean, see the module docstring), less
        twice its MCSE (the test asks whether the distance is SIGNIFICANTLY above it).
      keep_batch_steps: a phase after a halving keeps the batch length of the previous phase's
        passing test (else it restarts at `batch_steps`): see the module docstring.
      halved_fraction: a phase after a halving also runs at least this fraction of the previous
        phase's length (see the module docstring).
      confirm_factor: when the last halving's change exceeds `BIAS_WARNING` (a warning would be
        issued), that phase runs on, to at most this many times its minimum length, before the
        change is final (a short phase's average is noisy: see the module docstring).
      preconditioner: "adam" (Adam's per-coordinate scaling; `learning_rate` is Adam's step) or
        "natural" (the Fisher-natural gradient of the full-rank Gaussian in (mean, Cholesky factor),
        `advi_jax.vi._natural`; `learning_rate` is its step rho, relaxation ~1/rho steps; STL only).
      max_step: with "natural", the largest length of a step in the Fisher metric (about
        sqrt(2 KL) between successive q's; a trust region acting far from the optimum).
      control_rate: with "natural", the weight of each step's draws in the running coefficient of
        the squared-draw control variate of the mean direction (`advi_jax.vi._natural.square_control`;
        an exponential average over ~1/control_rate steps, always of earlier steps' draws, so the
        step's expectation is unchanged); 0: no control variate.
      transit_growth: the factor the step size grows by while the first phase is in a TRANSIT (a
        drift that is large and significant after `transit_after` steps; see the module docstring); 1: never.
      transit_max: the step size grows to at most this multiple of `learning_rate`.
      transit_after: steps of the first phase before a transit is looked for (fits that stop sooner
        never see the rule).
      transit_drift: a transit's drift (the tail's later half's mean minus its earlier half's) at least (q's units).
      transit_z: ... and at least this many of its standard errors (batch means of the tail).
      heavy_draws: with "natural", the number of draw sets (each `num_samples` draws, one step's worth of
        gradients) whose directions are averaged into each update once the draws read HEAVY-TAILED (see
        the module docstring); 1: never. The cap on steps is unchanged, so the updates are fewer.
      heavy_after: the draws are read over the first this many steps, and the decision is taken then (fits
        that stop sooner never see it).
      heavy_kick: a draw is heavy when its own deviation from its step's mean direction moves q by more
        than this, rho |d_s - mean d| / num_samples in the Fisher metric (about sd of q;
        `advi_jax.vi._natural.draw_deviations`)...
      heavy_fraction: ... and the draws read heavy-tailed when more than this fraction of them are heavy.
    """

    learning_rate: float = 0.01
    batch_steps: int = 25
    num_slots: int = 32
    min_batches: int = 16
    min_batches_halved: int = 8
    tol_mcse: float = 0.012
    tol_drift: float = 0.05
    max_halvings: int = 1
    tol_change: float = 0.04
    tol_distance: float = 0.03
    keep_batch_steps: bool = True
    halved_fraction: float = 0.5
    confirm_factor: int = 4
    preconditioner: str = "adam"
    max_step: float = 1.0
    control_rate: float = 0.0
    transit_growth: float = 1.0
    transit_max: float = 4.0
    transit_after: int = 2000
    transit_drift: float = 0.15
    transit_z: float = 2.0
    heavy_draws: int = 1
    heavy_after: int = 400
    heavy_kick: float = 0.25
    heavy_fraction: float = 0.02


class AveragedState(NamedTuple):
    """The averaged ADVI's state: the plain ADVI `FitState` plus the averaging and the tests."""

    fit: FitState
    lr: Array
    batch_steps: Array  # steps per batch in this phase (doubles on merging)
    cur_sum: Array  # (P,) sum of the flat parameters over the current batch
    cur_count: Array
    cur_newton: Array  # (K,) sum over the batch of the Newton steps of the mean, in sd of q
    slots: Array  # (num_slots, P) batch means
    newton: Array  # (num_slots, K) batch means of the Newton steps
    num_batches: Array  # filled slots
    previous: Array  # (2K,) summary of the last phase's average; NaN before the first halving
    halvings: Array
    mcse: Array  # the last test's largest MCSE (q's units)
    drift: Array  # the last test's largest |drift|
    distance: Array  # the last test's largest estimated distance of the average's mean from the optimum
    distance_mcse: Array  # its largest MCSE
    change: Array  # the largest change between the last two phases' averages (NaN: no halving yet)
    previous_se: Array  # (2K,) the MCSE of the last phase's average, per coordinate (q's units)
    change_se: Array  # the standard error of the change at its largest coordinate
    change_mean: Array  # the largest change of a mean (in sd of q)
    min_phase_steps: Array  # the steps this phase needs before its test can pass
    confirming: Array  # this phase runs on to confirm a change over BIAS_WARNING
    converged: Array
    clipped_steps: Array  # steps whose natural update was clipped (0 with Adam)
    transit: Array  # 0: no transit seen yet; 1: in a transit, the step growing; 3: coming back down; 2: over
    control: Array  # (2, 2, K, K) running averages of the control variate's coefficients and their squares ((0,) unused)
    transit_sign: Array  # (2K,) each drift's sign where flagged at the last transit decision ((0,) unused)
    heavy: Array  # heavy draws seen in the first `heavy_after` steps
    group: Array  # draw sets averaged into each natural update (1, or `heavy_draws` once the draws read heavy)
    sub: Array  # draw sets taken since the last update
    acc_n: Array  # ... of which finite
    acc_mean: Array  # (K,) their mean directions' sum ((0,) unused)
    acc_x: Array  # (K, K) their factor directions' sum ((0,) unused)


def _tail(n: Array, m: int) -> tuple[Array, Array, Array]:
    """Masks over the slots: the later half of the n filled batches, and its first and last quarters."""
    idx = jnp.arange(m)
    lo = n // 2
    h = n - lo
    q = jnp.maximum(h // 2, 1)
    tail = (idx >= lo) & (idx < n)
    first = (idx >= lo) & (idx < lo + q)
    last = (idx >= n - q) & (idx < n)
    return tail, first, last


def _masked_mean(x: Array, mask: Array) -> Array:
    w = mask.astype(x.dtype)
    return jnp.tensordot(w, x, axes=1) / jnp.maximum(jnp.sum(w), 1.0)


class WindowTests(NamedTuple):
    """What `close_batch` tests, from the batch means of the current window (`_window_tests`).

    Attributes:
      se: (2K,) the MCSE of the tail's average, per coordinate (q's units).
      drifts: (2K,) the tail's last quarter's mean less its first quarter's.
      largest: the largest MCSE, |drift|, MCSE of the averaged Newton step, |averaged Newton step|
        (the distance), |averaged Newton step| less twice its MCSE (the excess), change and change
        of a mean, each a scalar.
    """

    se: Array
    drifts: Array
    largest: tuple


def _window_tests(s: Array, newton: Array, tail: Array, last: Array, first: Array, changes: Array) -> WindowTests:
    """The stopping rule's statistics of the batch means `s` ((m, 2K), q's units) and of the Newton
    steps of the mean `newton` ((m, K)) over the masks `tail`, `last`, `first` ((m,) bool), and the
    largest of `changes` ((2K,), the last two phases' averages' differences; its first K: means').

    The two sets of batch means side by side: their tail's, last and first quarters' means in one
    product and their MCSEs in one pass, and every largest value in one reduction (a max is exact in
    any order; -inf pads the (K,) rows). The same numbers as one reduction per statistic (the
    averaged ADVI's fits bit for bit on six suite posteriors), in a loop program with fewer
    kernels for XLA to compile (radon_noncentered: 3,744 -> 3,582 HLO instructions).
    """
    k2, k = s.shape[1], newton.shape[1]
    dtype = s.dtype
    stats = jnp.concatenate([s, newton], axis=1)  # (m, 3K)
    masks = jnp.stack([tail, last, first]).astype(dtype)
    means = (masks @ stats) / jnp.maximum(jnp.sum(masks, axis=1), 1.0)[:, None]
    h = jnp.sum(tail).astype(dtype)
    centred = jnp.where(tail[:, None], stats - means[0][None, :], 0.0)
    se_all = jnp.sqrt(jnp.sum(centred ** 2, axis=0) / jnp.maximum(h - 1.0, 1.0) / h)  # (3K,)
    se, step_se = se_all[:k2], se_all[k2:]
    drifts = means[1, :k2] - means[2, :k2]
    step_mean = means[0, k2:]
    pad = jnp.full((k2 - k,), -jnp.inf, dtype)
    largest = jnp.max(jnp.stack([
        se, jnp.abs(drifts), jnp.concatenate([step_se, pad]), jnp.concatenate([jnp.abs(step_mean), pad]),
        jnp.concatenate([jnp.abs(step_mean) - 2.0 * step_se, pad]), changes,
        jnp.concatenate([changes[:k], pad])]), axis=1)
    return WindowTests(se, drifts, tuple(largest[i] for i in range(7)))


def advi_averaged(model: LogDensity, family: str | Family = "fullrank", *, stop: AutoStop = AutoStop(),
                  estimator: Any = "stl", num_samples: int = 8, init_scale: float = 1.0):
    """Build the averaged ADVI `(init, step)` pair (see the module docstring).

    Args:
      model: anything with `dim` and `log_density` (typically a whitened view of a model).
      family: an affine-closed family name or `Family` (means and sds are read through it).
      stop: the `AutoStop` settings.
      estimator: a gradient estimator name or function.
      num_samples: draws of q per step.
      init_scale: initial scale of q.

    Returns:
      An `advi_jax.vi.advi.ADVI(init, step)`; `averaged_params(family)(state)` is the fit.

    Example:
      >>> import jax, jax.numpy as jnp, advi_jax as aj
      >>> from advi_jax.vi.advi import advi_averaged
      >>> model = aj.Model(lambda p: -0.5 * jnp.sum(p["x"] ** 2), {"x": aj.real((2,))})
      >>> init, step = advi_averaged(model, "fullrank")
      >>> state, info = jax.jit(step)(jax.random.key(1), init(jax.random.key(0)))
    """
    from advi_jax.vi.advi import ADVI, _SCORE_ESTIMATORS, _tree_all_finite

    family = get_family(family)
    natural = stop.preconditioner == "natural"
    if stop.preconditioner not in ("adam", "natural"):
        raise ValueError(f"stop.preconditioner must be 'adam' or 'natural', got {stop.preconditioner!r}")
    if natural and family.name != "fullrank":
        raise ValueError(f"stop.preconditioner='natural' needs the fullrank family, got {family.name!r}")
    if natural and not (isinstance(estimator, str) and estimator == "stl"):
        raise ValueError(f"stop.preconditioner='natural' computes its own STL gradient: estimator must be 'stl', "
                         f"got {estimator!r}")
    if not stop.control_rate >= 0.0 or stop.control_rate > 1.0 or (stop.control_rate > 0 and not natural):
        raise ValueError(f"stop.control_rate must be in [0, 1] and needs preconditioner='natural', got "
                         f"{stop.control_rate!r} with {stop.preconditioner!r}")
    controlled = natural and stop.control_rate > 0
    if not stop.transit_growth >= 1.0 or not stop.transit_max >= 1.0:
        raise ValueError(f"stop.transit_growth and stop.transit_max must be >= 1, got {stop.transit_growth!r} and "
                         f"{stop.transit_max!r}")
    transiting = stop.transit_growth > 1.0
    if int(stop.heavy_draws) != stop.heavy_draws or stop.heavy_draws < 1 or (stop.heavy_draws > 1 and not natural):
        raise ValueError(f"stop.heavy_draws must be an integer >= 1 (> 1 needs preconditioner='natural'), got "
                         f"{stop.heavy_draws!r} with {stop.preconditioner!r}")
    grouping = stop.heavy_draws > 1
    import optax  # here, not at the top: `import advi_jax` does not load optax

    adam = optax.scale_by_adam()
    estimator_fn = get_estimator(estimator)
    score = isinstance(estimator, str) and estimator in _SCORE_ESTIMATORS
    m = int(stop.num_slots)
    summarise = _summary(family)

    def init(key: Array, loc: ArrayLike | None = None) -> AveragedState:
        params = family.init(key, model.dim, loc=loc, scale=init_scale)
        flat, _ = ravel_pytree(params)
        zero = jnp.zeros((), jnp.int32)
        nan = jnp.full((), jnp.nan, flat.dtype)
        return AveragedState(FitState(params, () if natural else adam.init(params), zero, zero, zero),
                             jnp.asarray(stop.learning_rate, flat.dtype), jnp.asarray(stop.batch_steps, jnp.int32),
                             jnp.zeros_like(flat), zero, jnp.zeros((model.dim,), flat.dtype),
                             jnp.zeros((m,) + flat.shape, flat.dtype), jnp.zeros((m, model.dim), flat.dtype), zero,
                             jnp.full((2 * model.dim,), jnp.nan, flat.dtype), zero, nan, nan, nan, nan, nan,
                             jnp.full((2 * model.dim,), jnp.nan, flat.dtype), nan, nan,
                             jnp.asarray(stop.min_batches * stop.batch_steps, jnp.int32), jnp.zeros((), bool),
                             jnp.zeros((), bool), zero, zero,
                             jnp.zeros((2, 2, model.dim, model.dim) if controlled else (0,), flat.dtype),
                             jnp.zeros((2 * model.dim,) if transiting else (0,), flat.dtype), zero,
                             jnp.ones((), jnp.int32), zero, zero,
                             jnp.zeros((model.dim,) if grouping else (0,), flat.dtype),
                             jnp.zeros((model.dim, model.dim) if grouping else (0,), flat.dtype))

    def loss(params, key):
        surrogate, aux = estimator_fn(family, model.log_density, params, key, num_samples)
        return -surrogate, aux

    def close_batch(st: AveragedState) -> AveragedState:
        flat, unravel = ravel_pytree(st.fit.params)
        count = st.cur_count.astype(flat.dtype)
        slots = st.slots.at[st.num_batches].set(st.cur_sum / count)
        newton = st.newton.at[st.num_batches].set(st.cur_newton / count)
        n = st.num_batches + 1
        tail, first, last = _tail(n, m)
        average = _masked_mean(slots, tail)
        mean, sd = summarise(unravel(average))
        per_batch = jax.vmap(lambda x: summarise(unravel(x)))(slots)
        s = jnp.concatenate([per_batch[0] / sd[None, :], jnp.log(per_batch[1])], axis=1)  # (m, 2K) in q's units
        h = jnp.sum(tail).astype(flat.dtype)
        summary = jnp.concatenate([mean, jnp.log(sd)])
        prev_mean, prev_log_sd = st.previous[:model.dim], st.previous[model.dim:]
        changes = jnp.concatenate([jnp.abs(prev_mean - mean) / sd, jnp.abs(prev_log_sd - jnp.log(sd))])
        tests = _window_tests(s, newton, tail, last, first, changes)
        se, d = tests.se, tests.drifts
        mcse, drift, step_mcse, distance, excess, change, change_mean = tests.largest
        phase_steps = n * st.batch_steps
        ok = ((phase_steps >= st.min_phase_steps) & (mcse < stop.tol_mcse) & (drift < stop.tol_drift)
              & (excess < stop.tol_distance) & ((st.transit == 0) | (st.transit == 2)))
        if transiting:
            q = jnp.sum(first).astype(flat.dtype)
            se_d = se * jnp.sqrt(h) * jnp.sqrt(2.0 / q)  # the tail's batch sd, over sqrt(q / 2)
            flagged = (jnp.abs(d) > stop.transit_drift) & (jnp.abs(d) > stop.transit_z * se_d)
            direction = jnp.where(flagged, jnp.sign(d), 0.0)
            begin = ((st.transit == 0) & (st.halvings == 0) & (phase_steps >= stop.transit_after) & jnp.any(flagged)
                     & ~ok)
            review = ((st.transit == 1) | (st.transit == 3)) & (n >= m)
            # still climbing: a coordinate flagged at the last decision is flagged again, the same way
            persists = jnp.any(flagged & (direction == st.transit_sign))
            grow = begin | (review & persists & (st.transit == 1))
            # Once the drift stops, the step comes back down by the same factor per window (the grown
            # step's O(rho) bias is left gradually, the iterates following), never to grow again.
            shrink = review & ~grow
            base = jnp.asarray(stop.learning_rate, st.lr.dtype)
            lower = jnp.maximum(st.lr / stop.transit_growth, base)
            grown = jnp.minimum(st.lr * stop.transit_growth, stop.transit_max * base)
            reset = grow | shrink
            new_transit = jnp.where(grow, 1, jnp.where(shrink, jnp.where(lower > base, 3, 2), st.transit))
            new_transit = new_transit.astype(jnp.int32)
            end_of_transit = shrink & (new_transit == 2)
        change_se = jnp.sqrt(st.previous_se ** 2 + se ** 2)[jnp.argmax(changes)]
        agreed = jnp.isfinite(change) & (change < stop.tol_change)
        # A last phase whose change would warn runs on (to `confirm_factor` times its minimum
        # length) so that the change is not the noise of a short average.
        # Once running on, it stops early only when the change is back under `tol_change` (hysteresis:
        # a noisy change that merely dips under BIAS_WARNING does not end it).
        over = (st.halvings > 0) & jnp.isfinite(change) & (change > jnp.where(st.confirming, stop.tol_change,
                                                                               BIAS_WARNING))
        unconfirmed = over & (phase_steps < stop.confirm_factor * st.min_phase_steps)
        done = ok & (agreed | ((st.halvings >= stop.max_halvings) & ~unconfirmed))
        restart = ok & ~done & (st.halvings < stop.max_halvings)
        # A full set of slots merges pairwise: half as many batches, each twice as long.
        full = n >= m
        merged = jnp.concatenate([0.5 * (slots[0::2] + slots[1::2]), jnp.zeros_like(slots[: m // 2])])
        slots = jnp.where(full, merged, slots)
        newton = jnp.where(full, jnp.concatenate([0.5 * (newton[0::2] + newton[1::2]),
                                                  jnp.zeros_like(newton[: m // 2])]), newton)
        n = jnp.where(full, m // 2, n)
        batch_steps = jnp.where(full, 2 * st.batch_steps, st.batch_steps)
        # A new phase restarts from the average with half the step size, its slots empty.
        fit = st.fit._replace(params=jax.tree_util.tree_map(lambda new, old: jnp.where(restart, new, old),
                                                            unravel(average), st.fit.params))
        first_batch = st.batch_steps if stop.keep_batch_steps else jnp.asarray(stop.batch_steps, jnp.int32)
        out = st._replace(
            fit=fit, lr=jnp.where(restart, 0.5 * st.lr, st.lr),
            batch_steps=jnp.where(restart, first_batch, batch_steps),
            min_phase_steps=jnp.where(restart, jnp.maximum(stop.min_batches_halved * first_batch, jnp.ceil(
                stop.halved_fraction * phase_steps).astype(jnp.int32)), st.min_phase_steps),
            confirming=~restart & (st.confirming | (ok & unconfirmed)),
            cur_sum=jnp.zeros_like(st.cur_sum), cur_count=jnp.zeros_like(st.cur_count),
            cur_newton=jnp.zeros_like(st.cur_newton), slots=slots, newton=newton, distance=distance, distance_mcse=step_mcse,
            num_batches=jnp.where(restart, 0, n), previous=jnp.where(restart, summary, st.previous),
            halvings=st.halvings + restart.astype(jnp.int32), mcse=mcse, drift=drift,
            change=jnp.where(ok & jnp.isfinite(change), change, st.change),
            previous_se=jnp.where(restart, se, st.previous_se),
            change_se=jnp.where(ok & jnp.isfinite(change), change_se, st.change_se),
            change_mean=jnp.where(ok & jnp.isfinite(change), change_mean, st.change_mean), converged=done)
        if transiting:
            # A transit's step change restarts the window from the current iterate (not the average,
            # which lags behind): the rule's phase, its batches and its minimum length start over.
            # Elsewhere the rule's own step (halved at a restart) stands.
            out = out._replace(lr=jnp.where(grow, grown, jnp.where(shrink, lower, out.lr)), transit=new_transit,
                               transit_sign=jnp.where(begin | review, direction, st.transit_sign),
                               num_batches=jnp.where(reset, 0, out.num_batches),
                               batch_steps=jnp.where(reset, stop.batch_steps, out.batch_steps),
                               min_phase_steps=jnp.where(
                                   end_of_transit, jnp.maximum(stop.min_batches * stop.batch_steps, jnp.ceil(
                                       stop.halved_fraction * st.fit.step).astype(jnp.int32)),
                                   jnp.where(reset, stop.min_batches * stop.batch_steps, out.min_phase_steps)))
        if _TRACE is not None:  # benchmarks/bench_stop_trace.py: the test's inputs and outcome
            jax.debug.callback(_TRACE, dict(
                step=st.fit.step, n=st.num_batches + 1, batch_steps=st.batch_steps, lr=st.lr, new_lr=out.lr,
                halvings=st.halvings, transit=st.transit, new_transit=out.transit, ok=ok, done=done, s=s,
                min_phase_steps=st.min_phase_steps, restart=restart, mcse=mcse, drift=drift, excess=excess,
                distance=distance, step_mcse=step_mcse, change=change, tail=tail, first=first, last=last,
                summary=summary, newton=st.newton.at[st.num_batches].set(st.cur_newton / count)))
        return out

    def adam_update(key: Array, state: AveragedState):
        fit = state.fit
        (_, aux), grads = jax.value_and_grad(loss, has_aux=True)(fit.params, key)
        finite = jnp.isfinite(aux.elbo) & _tree_all_finite(grads)

        def apply(_):
            updates, opt_state = adam.update(grads, fit.opt_state, fit.params)
            return jax.tree_util.tree_map(lambda p, u: p - state.lr * u, fit.params, updates), opt_state

        def keep(_):
            return fit.params, fit.opt_state

        params, opt_state = jax.lax.cond(finite, apply, keep, None)
        # C^T grad_mean ELBO, for the Newton step of the mean below
        whitened = family.scale_tril(fit.params).T @ -grads.loc
        return params, opt_state, aux.elbo, finite, whitened, jnp.zeros((), bool)

    def natural_update(key: Array, state: AveragedState):
        fit = state.fit
        scale = family.scale_tril(fit.params)
        d = natural_draws(model.log_density, fit.params.loc, scale, key, num_samples, jnp.isfinite(state.lr),
                          shrunk_coef(state.control, stop.control_rate) if controlled else None)
        grouped = {}
        if grouping:
            # the draw sets since the last update are averaged into this one when `group` of them are
            # in (group 1: every step moves with its own directions, the plain step's values)
            acc_mean = state.acc_mean + jnp.where(d.finite, d.mean_dir, 0.0)
            acc_x = state.acc_x + jnp.where(d.finite, d.x, 0.0)
            acc_n = state.acc_n + d.finite.astype(jnp.int32)
            apply = state.sub + 1 >= state.group
            count = jnp.maximum(acc_n, 1).astype(acc_mean.dtype)
            loc, c, clipped = natural_move(fit.params.loc, scale, acc_mean / count, acc_x / count, state.lr,
                                           stop.max_step)
            moved = apply & (acc_n > 0)
            heavy = jnp.sum(state.lr * d.deviations / num_samples > stop.heavy_kick).astype(jnp.int32)
            # The averaging and the rule see the updates only (the draw sets in between leave q where
            # it is): their batches, windows and minimum lengths count updates, as with `group` times
            # the draws per step.
            grouped = dict(acc_mean=jnp.where(apply, 0.0, acc_mean), acc_x=jnp.where(apply, 0.0, acc_x),
                           acc_n=jnp.where(apply, 0, acc_n), sub=jnp.where(apply, 0, state.sub + 1),
                           heavy=state.heavy + jnp.where(d.finite & (fit.step < stop.heavy_after), heavy, 0),
                           _record=apply, _newton=acc_mean / count, _newton_ok=moved)
        else:
            loc, c, clipped = natural_move(fit.params.loc, scale, d.mean_dir, d.x, state.lr, stop.max_step)
            moved = d.finite
        new = family.from_scale_tril(loc, c)
        params = jax.tree_util.tree_map(lambda a, b: jnp.where(moved, a, b), new, fit.params)
        control = state.control
        if controlled:
            estimate = jnp.stack([d.control_coef, d.control_coef ** 2])
            control = jnp.where(d.finite, control + stop.control_rate * (estimate - control), control)
        return params, fit.opt_state, d.elbo, d.finite, d.mean_dir, clipped & moved, control, grouped

    def adam_update_(key: Array, state: AveragedState):
        return adam_update(key, state) + (state.control, {})

    def step(key: Array, state: AveragedState) -> tuple[AveragedState, Any]:
        fit = state.fit
        params, opt_state, elbo, finite, whitened, clipped, control, grouped = (natural_update if natural
                                                                                  else adam_update_)(key, state)
        bad = (~finite).astype(jnp.int32)
        fit = FitState(params, opt_state, fit.step + 1, fit.num_nonfinite + bad, (fit.consecutive_nonfinite + bad) * bad)
        flat, _ = ravel_pytree(params)
        # Newton step of the mean, Sigma_q grad_mean ELBO (the natural gradient; at the ELBO's optimum
        # Sigma_q^-1 = E_q[-Hessian of log p]), in sd of q; zero for a skipped step.
        scale = family.scale_tril(state.fit.params)
        sd = jnp.sqrt(jnp.sum(scale ** 2, axis=1))
        step_of_mean = jnp.where(finite, scale @ whitened / sd, 0.0)
        if grouping and natural:
            record = grouped.pop("_record")
            step_of_mean = jnp.where(grouped.pop("_newton_ok") & record, scale @ grouped.pop("_newton") / sd, 0.0)
            new = state._replace(fit=fit, cur_sum=state.cur_sum + jnp.where(record, flat, 0.0),
                                 cur_count=state.cur_count + record.astype(jnp.int32),
                                 cur_newton=state.cur_newton + step_of_mean,
                                 clipped_steps=state.clipped_steps + clipped.astype(jnp.int32), control=control,
                                 **grouped)
        else:
            new = state._replace(fit=fit, cur_sum=state.cur_sum + flat, cur_count=state.cur_count + 1,
                                 cur_newton=state.cur_newton + step_of_mean,
                                 clipped_steps=state.clipped_steps + clipped.astype(jnp.int32), control=control)
        if grouping:  # the draws' reading, once: heavy-tailed -> `heavy_draws` draw sets per update from now on
            read = (fit.step == stop.heavy_after) & (new.heavy > stop.heavy_fraction * stop.heavy_after * num_samples)
            new = new._replace(group=jnp.where(read, stop.heavy_draws, new.group).astype(jnp.int32))
        # (grouped: a batch closes at its last update, not again at the draw sets after it)
        full = new.cur_count >= new.batch_steps
        if grouping:
            full = full & (new.sub == 0)
        new = jax.lax.cond(full, close_batch, lambda st: st, new)
        grads_used, logp_used = (0, num_samples) if score else (num_samples, 0)
        return new, step_info(elbo, finite, grads_used, logp_used, new.converged)

    return ADVI(init, step)


def _summary(family: Family):
    """params -> (mean, sd) of q, each (K,). `close_batch` runs it for every slot, so the variances
    must not form L L^T (`Family.variance` reads the row sums of L^2; radon, K = 90: a (K, K, K)
    product was 23 million multiply-adds per closed batch)."""

    def summary(params):
        return family.mean(params), jnp.sqrt(family.variance(params))

    return summary


def averaged_params(family: Family):
    """state -> the fit: the average of the later half of the current phase's batches (the
    phase's start, i.e. the previous phase's average, before its first batch)."""

    def params(state: AveragedState):
        flat, unravel = ravel_pytree(state.fit.params)
        m = state.slots.shape[0]
        tail, _, _ = _tail(state.num_batches, m)
        average = _masked_mean(state.slots, tail)
        return unravel(jnp.where(state.num_batches > 0, average, flat))

    return params


def averaged_extras(family: Family, stop: AutoStop):
    """state -> what the stopping rule saw: its last MCSE and drift, the step size, the halvings,
    the change the last halving made (`auto_stop_change`, with its standard error at the coordinate
    of the largest change, `auto_stop_change_se`, and the largest change of a mean alone,
    `auto_stop_change_mean`), whether the last phase ran on to confirm it, and the transit rule's
    state (`auto_stop_transit`: 0 never triggered, 1 grown, 3 coming down, 2 over), the heavy draws counted
    over the first `heavy_after` steps (`auto_stop_heavy_draws`) and the draw sets averaged into each update
    (`auto_stop_update_group`: 1, or `heavy_draws` when the draws read heavy-tailed)."""

    def extras(state: AveragedState) -> dict:
        return {"auto_stop_converged": state.converged, "auto_stop_mcse": state.mcse,
                "auto_stop_drift": state.drift, "auto_stop_distance": state.distance,
                "auto_stop_distance_mcse": state.distance_mcse, "auto_stop_change": state.change,
                "auto_stop_change_se": state.change_se, "auto_stop_change_mean": state.change_mean,
                "auto_stop_learning_rate": state.lr, "auto_stop_halvings": state.halvings,
                "auto_stop_batch_steps": state.batch_steps, "auto_stop_confirming": state.confirming,
                "auto_stop_clipped_steps": state.clipped_steps, "auto_stop_transit": state.transit,
                "auto_stop_heavy_draws": state.heavy, "auto_stop_update_group": state.group}

    return extras


def describe_stop(reason: str, code: int, extras: dict, num_steps: int) -> str:
    """The driver's stop reason with what the stopping rule saw last (for `Result.stop_reason`).

    Args:
      reason: the driver's reason for `code`.
      code: the driver's stop code (4: the rule passed; 0: the cap `num_steps` was reached).
      extras: the fit's extras (`averaged_extras`).
      num_steps: the cap.

    Returns:
      The reason in words.
    """
    if "auto_stop_mcse" not in extras:
        return reason
    seen = (f"MCSE {float(extras['auto_stop_mcse']):.3g}, drift {float(extras['auto_stop_drift']):.3g}, distance "
            f"{float(extras['auto_stop_distance']):.3g} sd of q, step size {float(extras['auto_stop_learning_rate']):.3g}")
    group = int(extras.get("auto_stop_update_group", 1))
    if group > 1:
        seen += (f"; the draws read heavy-tailed ({int(extras['auto_stop_heavy_draws'])} heavy), so {group} steps' "
                 "draws were averaged into each update")
    from advi_jax.run.driver import STOP_REASONS

    # the driver's reason starts with its fixed words for the code; what follows (the count of
    # skipped non-finite steps) is kept after ours
    if code == 4:
        return f"converged: ADVI's averaged iterates passed its stopping rule ({seen})" + reason[len(STOP_REASONS[4]):]
    if code == 0:
        return (f"reached num_steps ({num_steps}, the cap) before ADVI's stopping rule passed (last test: {seen}); "
                "the average of the later iterates is returned" + reason[len("reached num_steps"):])
    return reason


def stop_warning(code: int, extras: dict, num_steps: int) -> str | None:
    """What a user must be told about the averaged ADVI's stop (a `DiagnosticWarning`), or None.

    Two cases: the cap `num_steps` came before the rule passed (the returned average may be short
    of the optimum; this includes a halved phase still confirming a large change), and a halving
    of the step size that moved q by more than `BIAS_WARNING` in q's units, confirmed by the longer
    phase (`AutoStop.confirm_factor`; the constant step's bias is proportional to the step: if
    halving it moved q by d, what remains at the smaller step is about d too, RABVI's reading).

    Args:
      code: the driver's stop code (0: the cap was reached).
      extras: the fit's extras (`averaged_extras`).
      num_steps: the cap.

    Returns:
      The warning's text, or None.

    Example:
      >>> stop_warning(4, {"auto_stop_mcse": 0.01, "auto_stop_halvings": 1, "auto_stop_change": 0.02}, 100) is None
      True
    """
    if "auto_stop_mcse" not in extras:
        return None
    change = float(extras.get("auto_stop_change", float("nan")))
    if code == 0:
        confirming = bool(extras.get("auto_stop_confirming", False)) and change > BIAS_WARNING
        return (f"ADVI's stopping rule did not pass within its cap of {num_steps} steps (last test: MCSE "
                f"{float(extras['auto_stop_mcse']):.3g}, drift {float(extras['auto_stop_drift']):.3g} sd of q"
                + (f"; halving the step size had moved q by {change:.3f} sd, more than {BIAS_WARNING}, and the "
                   "halved phase was still running on to confirm it" if confirming else "")
                + "): the average of the later iterates may be short of the Gaussian optimum")
    if int(extras.get("auto_stop_halvings", 0)) > 0 and change > BIAS_WARNING:
        return (f"halving ADVI's step size moved q by {change:.3f} sd (means in sd of q, sds as log ratios): the "
                f"constant step's bias may leave the fit about that far from the Gaussian optimum (more than "
                f"{BIAS_WARNING}); fit again with method='advi' and a smaller learning_rate, or more num_steps")
    return None

