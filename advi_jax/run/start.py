"""Where a fit starts: zero, the user's point, the best of random points, or the Laplace mode.

`init=None` starts q at zero in R^K (Stan's default is uniform(-2, 2); zero is the centre of
that box and the prior centre of most standardised models); `init=` a dict of constrained
values or a (K,) vector starts there; `init="random"` draws `num_init_draws` locations uniformly
in (-init_radius, init_radius)^K (Stan's random inits) and starts from the one whose q (with
scale `init_scale`) has the highest ELBO estimate, the same draws for each candidate;
`init="laplace"` (and `"auto"` for K <= `AUTO_LAPLACE_MAX_DIM` when the method allows it) runs
the method in the Laplace-whitened coordinates (`advi_jax.vi.laplace`).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from advi_jax._types import Array
from advi_jax.base import Family
from advi_jax.checks import INIT_OPTIONS, check_initial_point, initial_loc
from advi_jax.vi import laplace as _laplace
from advi_jax.vi.advi import elbo_estimate

__all__ = ["Start", "AUTO_LAPLACE_MAX_DIM", "start", "random_init"]

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
    """

    run_model: Any
    loc: Array
    init_loc: Array
    method: str
    laplace: Any = None
    candidates: np.ndarray | None = None
    scores: np.ndarray | None = None


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
    if is_str and init not in ("auto", "random", "laplace"):
        raise ValueError(f"init must be {INIT_OPTIONS}; got {init!r}")
    if is_str and init == "laplace" and not family.affine_closed:
        raise ValueError(f"init='laplace' needs a family closed under affine maps ('meanfield' or 'fullrank'); "
                         f"family {family.name!r} is not")
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
