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
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from advi_jax import compile_options
from advi_jax._types import Array
from advi_jax.base import Family
from advi_jax.checks import INIT_OPTIONS, check_initial_point, initial_loc
from advi_jax.families import FullRankGaussian
from advi_jax.vi import bam as _bam
from advi_jax.vi import laplace as _laplace
from advi_jax.vi import pathfinder as _pathfinder
from advi_jax.vi.advi import elbo_estimate

__all__ = ["Start", "AUTO_LAPLACE_MAX_DIM", "INIT_STRINGS", "start", "random_init"]

INIT_STRINGS = ("auto", "random", "laplace", "pathfinder", "bam")

BAM_START_STEPS = 100
"""Batch-and-Match steps of `init="bam"` (16 draws each, the decaying schedule)."""

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
            return int(self.laplace.iterations) + 2 + 2 * int(self.loc.shape[0])
        grads = int(self.pathfinder.num_grad_evals) if self.pathfinder is not None else 0
        return grads + (int(self.bam.num_grad_evals) if self.bam is not None else 0)

    @property
    def num_logp_evals(self) -> int:
        """Log-density evaluations the start used (besides its gradients)."""
        return int(self.pathfinder.num_logp_evals) if self.pathfinder is not None else 0


@functools.partial(jax.jit, static_argnames=("family", "scale", "num_init_draws", "num_eval_draws"))
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


def start(model: Any, family: Family, init: Any, *, key: Array, whiten: bool, init_scale: float,
          num_init_draws: int, init_radius: float, check: bool) -> Start:
    """Resolve `init` into a `Start` (see the module docstring).

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
    if check:
        check_initial_point(model, loc)
    if is_str and init in ("pathfinder", "bam") and whiten:
        begun = _pathfinder_start(model, family, loc, key, init_scale, candidates, scores)
        return _bam_start(begun, key) if init == "bam" and begun.pathfinder is not None else begun
    if not laplace_init:
        return Start(model, loc, loc, method, None, candidates, scores)
    try:
        info = _laplace.laplace(model, family=family, init=loc)
    except ValueError as err:
        if init != "auto":
            raise
        reason = str(err).split(": ", 1)[-1].split(";")[0]
        return Start(model, loc, loc, f"zero (no Laplace start: {reason})", None, candidates, scores)
    return Start(_laplace.Whitened(model, info.mode, info.scale_tril), jnp.zeros_like(loc), info.mode, "laplace",
                 info, candidates, scores)


def _pathfinder_start(model: Any, family: Family, loc: Array, key: Array, init_scale: float, candidates,
                      scores) -> Start:
    """Whiten by the best by ELBO (the same draws for each) of: the best Gaussian of one
    Pathfinder path from `loc` (its diagonal for mean-field), N(loc, I) and N(loc, init_scale^2 I).

    Along a funnel (a density unbounded as a scale goes to zero) L-BFGS runs down the neck and
    every Gaussian on its path is degenerate; an isotropic Gaussian at the start is then the
    better start (the ELBO says so). Zero (with the reason) when none is finite.
    """
    found, elbos = _start_candidates(model, loc, jax.random.fold_in(key, 5), family.name != "fullrank",
                                     float(init_scale))
    elbos = np.asarray(elbos, np.float64)
    factor_ok = (np.all(np.isfinite(np.asarray(found.mean))) and np.all(np.isfinite(np.asarray(found.scale_tril)))
                 and np.all(np.asarray(jnp.diagonal(found.scale_tril)) > 0))
    if not factor_ok:
        elbos[0] = -np.inf
    best = int(np.argmax(np.where(np.isfinite(elbos), elbos, -np.inf)))
    if not np.isfinite(elbos[best]):
        return Start(model, loc, loc, "zero (no Pathfinder start: no finite Gaussian on the L-BFGS path)", None,
                     candidates, scores)
    if best > 0:
        scale = 1.0 if best == 1 else float(init_scale)
        found = found._replace(mean=loc, scale_tril=scale * jnp.eye(loc.shape[0], dtype=loc.dtype),
                               elbo=jnp.asarray(elbos[best], loc.dtype))
        method = (f"N(start, {scale:g}^2 I) (its ELBO {elbos[best]:.4g} beat the Pathfinder Gaussian's "
                  f"{elbos[0]:.4g})")
    else:
        method = "pathfinder"
    return Start(_laplace.Whitened(model, found.mean, found.scale_tril), jnp.zeros_like(loc), found.mean, method,
                 None, candidates, scores, found)


_START_ELBO_DRAWS = 64
_PATHFINDER_START = _pathfinder.Options(max_iters=200)
"""A start needs the region, not the mode to machine precision: at most 200 L-BFGS iterations
(down a funnel's neck L-BFGS otherwise runs its 1000 iterations, ~3,000 gradients, for nothing)."""


def _elbo_common(model: Any, noise: Array, mean: Array, factor: Array) -> Array:
    """ELBO of N(mean, factor factor^T) (factor triangular) from the given standard-normal draws."""
    z = mean[None, :] + noise @ factor.T
    value = (jnp.mean(jax.vmap(model.log_density)(z)) + jnp.sum(jnp.log(jnp.abs(jnp.diagonal(factor))))
             + 0.5 * mean.shape[0] * (1.0 + jnp.log(2.0 * jnp.pi)))
    return jnp.where(jnp.isfinite(value), value, -jnp.inf)


@compile_options.jit(static_argnames=("diagonal", "init_scale"))
def _start_candidates(model: Any, loc: Array, key: Array, diagonal: bool, init_scale: float):
    """One Pathfinder path's best Gaussian, and the ELBOs (same draws) of it, N(loc, I) and N(loc, s^2 I)."""
    found = _pathfinder.start_gaussian(model, loc, key, _PATHFINDER_START, diagonal=diagonal)
    noise = jax.random.normal(jax.random.fold_in(key, 1), (_START_ELBO_DRAWS, loc.shape[0]), loc.dtype)
    eye = jnp.eye(loc.shape[0], dtype=loc.dtype)
    elbos = jnp.stack([_elbo_common(model, noise, found.mean, found.scale_tril), _elbo_common(model, noise, loc, eye),
                       _elbo_common(model, noise, loc, init_scale * eye)])
    return found, elbos


class BamStart(NamedTuple):
    """The Gaussian Batch-and-Match reached from a Pathfinder start (in R^K) and its cost."""

    mean: Array
    scale_tril: Array
    num_steps: int
    num_grad_evals: int
    num_nonfinite: Array


@compile_options.jit(model_arg="run_model", static_argnames=("num_steps", "batch_size"))
def _bam_steps(run_model: Any, key: Array, num_steps: int, batch_size: int):
    """BaM from N(0, I) in the start's whitened coordinates; its Gaussian in R^K, the ELBOs (same
    draws) of the start's and BaM's Gaussians, and the count of non-finite BaM steps."""
    algorithm = _bam.build(run_model, FullRankGaussian(), _bam.Options(batch_size=batch_size))
    state = algorithm.init(key, jnp.zeros((run_model.dim,), run_model.shift.dtype))

    def body(i, carry):
        state, bad = carry
        state, info = algorithm.step(jax.random.fold_in(key, i), state)
        return state, bad + (~info.finite).astype(jnp.int32)

    state, bad = jax.lax.fori_loop(0, num_steps, body, (state, jnp.zeros((), jnp.int32)))
    noise = jax.random.normal(jax.random.fold_in(key, num_steps + 1), (_START_ELBO_DRAWS, run_model.dim),
                              state.loc.dtype)
    base = run_model.base
    before = _elbo_common(base, noise, run_model.shift, run_model.scale_tril)
    # zeta = shift + S (loc + L u): the composed factor S L is lower triangular.
    mean, factor = run_model.shift + run_model.scale_tril @ state.loc, run_model.scale_tril @ state.chol
    return mean, factor, before, _elbo_common(base, noise, mean, factor), bad


def _bam_start(begun: Start, key: Array, num_steps: int = BAM_START_STEPS, batch_size: int = 16) -> Start:
    """Refine a Pathfinder start by `num_steps` Batch-and-Match steps in its whitened coordinates.

    BaM's closed-form updates are affine invariant, so they correct a start whose covariance is
    off by orders of magnitude (badly scaled predictors) in a few steps, where a gradient method
    in the whitened coordinates would need thousands. BaM's fixed point minimises a score-based
    divergence, not the KL of the ELBO (on a funnel it is too narrow), so its Gaussian replaces
    the start only when its ELBO is higher (the same draws for both).
    """
    mean, factor, before, after, bad = _bam_steps(begun.run_model, jax.random.fold_in(key, 6), num_steps, batch_size)
    before, after = float(before), float(after)
    info = BamStart(mean, factor, num_steps, num_steps * batch_size, bad)
    finite = (np.all(np.isfinite(np.asarray(mean))) and np.all(np.isfinite(np.asarray(factor)))
              and np.all(np.asarray(jnp.diagonal(factor)) > 0))
    if not (finite and after > before):
        kept = begun.method.split(" (")[0]
        return begun._replace(method=f"{kept}, not BaM (BaM's ELBO {after:.4g} <= {before:.4g})",
                              bam=info._replace(mean=None))
    return begun._replace(run_model=_laplace.Whitened(begun.run_model.base, mean, factor), init_loc=mean,
                          method=f"bam from {begun.method.split(' (')[0]}", bam=info)
