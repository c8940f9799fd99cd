"""DADVI: deterministic ADVI with trust-region Newton-CG, linear-response covariances, MC errors
and draw doubling.

Giordano, Ingram & Broderick (2024). A fixed set of M standard-normal draws Z makes the
(negative) ELBO a deterministic function of the packed variational parameters eta,

    F(eta) = -(1/M) sum_m log p(T_eta(z_m)) - H(q_eta),

which is minimised by a trust-region Newton method whose subproblem is solved by Steihaug-Toint
truncated conjugate gradients, with Hessian-vector products as `jvp` of `grad` (never a dense
Hessian in the optimisation). Each `step` is one trust-region iteration (or one Monte Carlo error
check, below); the Newton phase ends when the accepted step is below `xtol` (max-norm), the
gradient below `gtol`, the radius collapses, or the steps reach the dtype's precision floor (a full
Newton step whose predicted decrease is below F's rounding and that does not lower the gradient, or
a step below the spacing of the parameters' floats).

**Draw doubling** (`mc_tol`, `max_doublings`). The optimum of F is random through Z. When the
Newton phase ends with M draws, one `step` estimates the Monte Carlo standard error of q's means
by the sandwich formula (below) and compares the largest over coordinates, relative to the
posterior sd, with `mc_tol`. Above it, M doubles (as many times at once as the error's
1/sqrt(M) decay predicts it takes to meet `mc_tol`, skipping checks bound to fail): the first M
draws are kept and new ones join (all draws live in one buffer of num_draws * 2**max_doublings
made at `init`), and the Newton phase restarts warm from the previous optimum. It stops when
the error is below `mc_tol` or after `max_doublings` doublings;
`extras["draws_reason"]` says which (`DRAWS_REASONS`, `describe`). The objective, its gradient and
its Hessian-vector products are sums over chunks of `num_draws` draws in a `fori_loop` whose trip
count (2**doublings) is data, so a fit compiles once whatever M it ends at, and a step at M draws
costs M, not M_max. The error is relative to the linear-response sds (the posterior sd estimate;
a mean-field q's own sds are too small and would ask for needless doublings). (Under `vmap` the
switch between a Newton step and a check evaluates both for every fit: vmapped fits with doubling
pay a check every step; vmap fixed-draw fits, `mc_tol=None`, instead.)

At the optimum, `extras(state)` gives:

* `lr_covariance` (K, K): the linear-response covariance of zeta (LRVB), the zeta-mean block of
  H^{-1}, H the Hessian of F; for a Gaussian posterior it is exact even for mean-field q, whose
  own covariance is not. Solved by batched CG with Hessian-vector products (`lr_solver="cg"`)
  or by a dense Hessian built from one HVP per parameter and a Cholesky solve (`"dense"`).
* `lr_sd` (K,): its square-rooted diagonal. `Result.linear_response()` makes N(m, lr_covariance) a
  full-rank result with its own k-hat, and a mean-field fit's `summary()` shows its `lr_mean` / `lr_sd`.
* `mc_se` (K,): the sandwich estimate of the Monte Carlo standard error of the posterior means
  due to the fixed draws, sqrt(diag(W S W^T) / M), with W the mean rows of H^{-1} and S the
  sample covariance of the per-draw gradients of F (valid for iid draws, `moment_match=False`).
* `mc_rel_error`: max_k mc_se_k / sd_k, with sd_k the linear-response sd; `num_draws` (the final
  M), `num_doublings`, `draws_reason` (a code of `DRAWS_REASONS`), `objective` (the fixed-draw
  negative ELBO) and `lr_grad_evals` (what `extras` itself evaluated: 0 when the last check's
  values, made at the final state, are reused).

`moment_match=True` centres and whitens the fixed draws (needs M > K): the draws' sample mean is
then 0 and their sample covariance I, so for a Gaussian target (quadratic log p) F equals the
exact negative ELBO and DADVI is exact for any M; for other targets it removes the first two
moments' Monte Carlo error. Its `mc_se` is not a valid error estimate (the draws are not iid), so
it runs with fixed draws (no doubling).

Costs (`StepInfo.num_grad_evals`, following `advi_jax.base`): a value-and-gradient of F is M
gradients, a Hessian-vector product 2M (a forward-over-reverse pass costs about two gradients), so
a Newton step is M (1 + 2 CG iterations); a check is M per-draw gradients plus the solves for W
(dense: 2M per parameter; CG: 2M per right-hand side per iteration), plus 2M for the new
gradient when M doubles.

Example:
  >>> import jax, jax.numpy as jnp, advi_jax as aj
  >>> from advi_jax.vi import dadvi
  >>> class Gauss:
  ...     dim = 2
  ...     def log_density(self, z):
  ...         return -0.5 * jnp.sum((z - 1.0) ** 2)
  >>> algo = dadvi.build(Gauss(), aj.MeanFieldGaussian(), dadvi.Options(moment_match=True))
  >>> state = algo.init(jax.random.key(0), jnp.zeros(2))
  >>> for i in range(20):
  ...     state, info = algo.step(jax.random.key(i), state)
  >>> bool(info.converged), jnp.round(algo.params(state).loc, 4).tolist()
  (True, [1.0, 1.0])

References:
  Giordano, Ingram & Broderick (2024), Black box variational inference with a deterministic
  objective: faster, more accurate, and even more black box, JMLR 25(18).
  Steihaug (1983), The conjugate gradient method and trust regions in large scale optimization,
  SIAM J. Numer. Anal. 20(3).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from advi_jax._types import Array, check_positive_int
from advi_jax.base import VIAlgorithm, step_info
from advi_jax.families import Family, FullRankParams, MeanFieldParams

__all__ = ["NAME", "Options", "FAMILIES", "DEFAULT_NUM_STEPS", "WHITEN", "DRAWS_REASONS", "MIN_DRAWS",
           "FULLRANK_AUTO_MAX_DIM", "LOOP_EVALS", "build", "describe", "default_num_draws", "loop_evals"]

NAME = "dadvi"
FAMILIES = ("meanfield", "fullrank")
DEFAULT_NUM_STEPS = 200
# Its extras (linear-response covariance, MC errors) are in the coordinates it ran in, so it
# runs on the model as given (the Newton steps are affine invariant in the mean anyway).
WHITEN = False
DETERMINISTIC = True  # the ELBO trace is an objective's value, not a noisy estimate: the result reports its last value

_SOLVERS = ("auto", "cg", "dense")

DRAWS_REASONS = {
    0: "not finished: the step budget ran out before the Newton phase and MC check ended",
    1: "MC error below mc_tol",
    2: "reached max_doublings with the MC error still above mc_tol",
    3: "fixed draws (mc_tol=None)",
    4: "fixed draws (moment-matched draws have no valid MC error estimate)",
}
"""`extras["draws_reason"]` codes: why the number of draws is what it is."""


def describe(extras: dict) -> str:
    """One line on the draws of a DADVI fit from its extras (`result.extras`).

    Example:
      >>> describe({"draws_reason": 1, "num_draws": 120, "num_doublings": 2, "mc_rel_error": 0.015})
      'M = 120 draws after 2 doublings, MC error 0.015 sd: MC error below mc_tol'
    """
    code = int(extras["draws_reason"])
    return (f"M = {int(extras['num_draws'])} draws after {int(extras['num_doublings'])} doublings, MC error "
            f"{float(extras['mc_rel_error']):.3g} sd: {DRAWS_REASONS.get(code, f'unknown code {code}')}")


class Options(NamedTuple):
    """DADVI settings (static).

    Attributes:
      num_draws: M, the fixed draws to start with; a fullrank fit needs M > K (and M >= 2K to be
        well conditioned: at M = K + 10 a K = 31 regression did not converge in 400 steps).
        None (the default): `default_num_draws`, 30, or max(30, 2K) for a fullrank or
        moment-matched fit.
      moment_match: centre and whiten the draws (needs M > K; no doubling); see the module docstring.
      init_scale: the starting standard deviation of q.
      initial_radius: the first trust-region radius (in the packed parameters).
      max_radius: the largest radius.
      max_cg: CG iterations per trust-region subproblem (capped at the number of parameters).
      gtol: converged when max |grad F| < gtol.
      xtol: converged when an accepted step has max |step| < xtol.
      lr_solver: "cg" (matrix-free, for large K), "dense" (Hessian from HVP columns) or "auto"
        (dense up to `DENSE_MAX_PARAMS` packed parameters).
      lr_cg_tol: relative residual at which the linear-response CG solves stop.
      mc_tol: double M while max_k mc_se_k / sd_k (sd the linear-response sd) exceeds this;
        None: fixed draws. The MC error of every mean is then at most 0.05 posterior sd, the
        tolerance fits are held to against the family's optimum (the largest realised error over
        K coordinates is about mc_tol * sqrt(2 ln K)). The cost grows like 1 / mc_tol**2 (0.02
        needs 6x the draws: M = 480 left the suite's breast-cancer and eight-schools fits at
        0.03-0.05). May be a float scalar array, traced inside a jitted function, so that one
        program serves several tolerances (its value is then the caller's to check).
      max_doublings: at most this many doublings (M ends at most at num_draws * 2**max_doublings).
    """

    num_draws: int | None = None
    moment_match: bool = False
    init_scale: float = 0.1
    initial_radius: float = 1.0
    max_radius: float = 100.0
    max_cg: int = 200
    gtol: float = 1e-6
    xtol: float = 1e-6
    lr_solver: str = "auto"
    lr_cg_tol: float = 1e-6
    mc_tol: float | None = 0.05
    max_doublings: int = 4


class State(NamedTuple):
    eta: Array  # packed parameters
    value: Array  # F(eta) with the current level's draws
    grad: Array
    radius: Array
    draws: Array  # (2**max_doublings, num_draws, K): after i doublings the first 2**i chunks
    converged: Array  # done: the Newton phase ended and (with doubling) the MC check passed or gave up
    level: Array  # int32, doublings so far
    checking: Array  # the Newton phase at this level ended; the next step is the MC check
    reason: Array  # int32 code of DRAWS_REASONS
    mc_se: Array  # (K,) from the last check (valid for eta when reason is 1 or 2)
    lr_cov: Array  # (K, K) from the last check
    mc_rel: Array  # max mc_se / sd at the last check (inf before any)


# ----------------------------------------------------------------------------------------------
# Packing the family's parameters into one vector (no redundant entries, so H is nonsingular)


def _packer(family: Family, k: int):
    if family.name == "meanfield":
        def pack(p):
            return jnp.concatenate([p.loc, p.raw_scale])

        def unpack(v):
            return MeanFieldParams(v[:k], v[k:])

        return pack, unpack, 2 * k
    rows, cols = jnp.tril_indices(k, -1)

    def pack(p):
        return jnp.concatenate([p.loc, p.raw_diag, p.off_diag[rows, cols]])

    def unpack(v):
        off = jnp.zeros((k, k), v.dtype).at[rows, cols].set(v[2 * k:])
        return FullRankParams(v[:k], v[k:2 * k], off)

    return pack, unpack, 2 * k + k * (k - 1) // 2


def _moment_match(draws: Array) -> Array:
    """Centre the (N, K) draws and whiten them to sample covariance I (divisor N)."""
    centred = draws - jnp.mean(draws, axis=0, keepdims=True)
    cov = centred.T @ centred / draws.shape[0]
    chol = jnp.linalg.cholesky(cov)
    return jax.scipy.linalg.solve_triangular(chol, centred.T, lower=True).T


# ----------------------------------------------------------------------------------------------
# Trust-region subproblem


def _steihaug(hvp, g: Array, radius: Array, tol: Array, max_iter: int):
    """Steihaug-Toint CG for min g.p + p.Hp/2 s.t. |p| <= radius; returns (p, r = g + Hp, iters)."""

    def to_boundary(p, d):
        pd, dd, pp = jnp.dot(p, d), jnp.dot(d, d), jnp.dot(p, p)
        disc = jnp.sqrt(jnp.maximum(pd * pd + dd * (radius * radius - pp), 0.0))
        return (-pd + disc) / jnp.maximum(dd, jnp.finfo(g.dtype).tiny)

    def cond(c):
        return ~c[-2] & (c[-1] < max_iter)

    def body(c):
        p, r, d, _, n = c
        hd = hvp(d)
        dhd = jnp.dot(d, hd)
        rr = jnp.dot(r, r)
        a = rr / jnp.where(dhd > 0, dhd, 1.0)
        p_next = p + a * d
        outside = (dhd <= 0) | (jnp.linalg.norm(p_next) >= radius)
        tau = to_boundary(p, d)
        p_edge, r_edge = p + tau * d, r + tau * hd
        r_next = r + a * hd
        small = jnp.linalg.norm(r_next) < tol
        beta = jnp.dot(r_next, r_next) / jnp.maximum(rr, jnp.finfo(g.dtype).tiny)
        p_new = jnp.where(outside, p_edge, p_next)
        r_new = jnp.where(outside, r_edge, r_next)
        d_new = -r_next + beta * d
        return p_new, r_new, d_new, outside | small, n + 1

    zero = jnp.zeros_like(g)
    init = (zero, g, -g, jnp.linalg.norm(g) < tol, jnp.asarray(0, jnp.int32))
    p, r, _, _, n = jax.lax.while_loop(cond, body, init)
    return p, r, n


def _batched_cg(hvp, rhs: Array, tol: float, max_iter: int):
    """Solve H X = rhs (rows of `rhs` are right-hand sides) by CG, all columns at once."""
    hvp_rows = jax.vmap(hvp)
    norm0 = jnp.linalg.norm(rhs, axis=1)

    def cond(c):
        _, r, _, _, n = c
        return (n < max_iter) & jnp.any(jnp.linalg.norm(r, axis=1) > tol * norm0)

    def body(c):
        x, r, d, rr, n = c
        hd = hvp_rows(d)
        dhd = jnp.sum(d * hd, axis=1)
        live = rr > (tol * norm0) ** 2
        a = jnp.where(live & (dhd > 0), rr / jnp.where(dhd > 0, dhd, 1.0), 0.0)
        x = x + a[:, None] * d
        r = r - a[:, None] * hd
        rr_new = jnp.sum(r * r, axis=1)
        beta = rr_new / jnp.maximum(rr, jnp.finfo(rhs.dtype).tiny)
        d = r + beta[:, None] * d
        return x, r, d, rr_new, n + 1

    init = (jnp.zeros_like(rhs), rhs, rhs, jnp.sum(rhs * rhs, axis=1), jnp.asarray(0, jnp.int32))
    x, _, _, _, n = jax.lax.while_loop(cond, body, init)
    return x, n


# ----------------------------------------------------------------------------------------------
# The algorithm


LOOP_EVALS = 200_000
"""The gradient evaluations (HVPs counted as gradients) `loop_evals` expects of a default fit: the suite's
default DADVI fits made 114,000 (eight schools), 144,000 (breast cancer, mean-field), 227,000
(wells) and 294,000 (radon, mean-field)."""


def loop_evals(model, family: Family, options: Options, num_steps: int) -> int:
    """The gradient evaluations `aj.fit`'s loop is expected to make (`LOOP_EVALS`, for
    `DEFAULT_NUM_STEPS` Newton steps, in proportion to `num_steps`), for its compiler options
    (`compile_options.compile_mode`). Without it the loop counted as a fit's 20,000 and compiled
    with the fast options up to 5,000 data entries: radon's (2,842 entries, K = 90, mean-field)
    then ran its Hessian-vector products in the unvectorised code, 16 s a call."""
    del model, family, options
    return LOOP_EVALS * max(1, int(num_steps)) // DEFAULT_NUM_STEPS


DENSE_MAX_PARAMS = 4096
"""`lr_solver="auto"` builds the dense Hessian (P Hessian-vector products and a Cholesky) up to this
many packed parameters P, and solves by batched CG above. CG costs K right-hand sides times its
iterations, which exceed P / K (2 for a mean-field fit) on any ill-conditioned posterior: on the
births time series (K = 144, P = 288, 30 draws) the CG solve took about 215 s and the dense one under
10 s. At P = 4096 the Hessian is 64 MB in float32 and its Cholesky about 23 GFLOP."""

HESSIAN_BLOCK = 64
"""Hessian columns per vectorised batch of the dense solver (`jax.lax.map`'s batch_size): the
memory of one batch is this many Hessian-vector products over a chunk of draws, whatever P is."""

FULLRANK_AUTO_MAX_DIM = 20
"""`aj.fit(model, method="dadvi")` with `family="auto"` fits the full-rank Gaussian up to this K and
the mean-field one, with its linear-response covariance, above it (`run.choose.choose_family`). A
full-rank fit has K + K(K+1)/2 parameters and needs M > K draws: each Newton step runs up to 200 CG
iterations of 2M gradients, so its cost grows like K^3. Measured (benchmarks/PERFORMANCE.md, "DADVI
with draw doubling"): breast cancer (K = 31) took 5.7 million gradients at M = 496, radon (K = 90) 15
million and 15 minutes; at K = 20 (230 parameters, M = 40) a step is at most 16,000."""

MIN_DRAWS = 30
"""The fewest fixed draws `default_num_draws` starts with (the DADVI paper's choice)."""


def default_num_draws(family: Family, options: Options, dim: int) -> int:
    """The fixed draws a fit starts with where `options.num_draws` is None: `MIN_DRAWS`, or
    max(`MIN_DRAWS`, 2K) for a fullrank or moment-matched fit, which need more than K draws (at
    K = 90 the paper's 30 made `aj.fit(model, method="dadvi")` fail with an error); an explicit
    `num_draws` is kept as given."""
    if options.num_draws is not None:
        return options.num_draws
    if getattr(family, "name", None) == "fullrank" or options.moment_match:
        return max(MIN_DRAWS, 2 * int(dim))
    return MIN_DRAWS


def _check(family: Any, options: Any, dim: int) -> Options:
    """`options` checked against the family and K, with `num_draws` resolved (`default_num_draws`)."""
    if not isinstance(family, Family) or family.name not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES} (a Family object), got {family!r}")
    if not isinstance(options, Options):
        raise TypeError(f"options must be a dadvi.Options, got {type(options).__name__}")
    if not isinstance(options.moment_match, bool):
        raise TypeError(f"options.moment_match must be a bool, got {options.moment_match!r}")
    options = options._replace(num_draws=default_num_draws(family, options, dim))
    check_positive_int(options.num_draws, "options.num_draws", 2)
    check_positive_int(options.max_cg, "options.max_cg")
    if family.name == "fullrank" and options.num_draws <= dim:
        # Directions of L orthogonal to the draws' span leave log p unchanged while log det L
        # grows: the fixed-draw objective has no minimum.
        raise ValueError(f"a fullrank DADVI fit needs num_draws > K = {dim} (else the fixed-draw objective "
                         f"is unbounded below), got num_draws={options.num_draws}")
    if options.moment_match and options.num_draws <= dim:
        raise ValueError(f"options.moment_match needs num_draws > K = {dim}, got num_draws={options.num_draws}")
    for name in ("init_scale", "initial_radius", "max_radius", "gtol", "xtol", "lr_cg_tol"):
        value = getattr(options, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"options.{name} must be a finite number > 0, got {value!r}")
    if options.lr_solver not in _SOLVERS:
        raise ValueError(f"options.lr_solver must be one of {_SOLVERS}, got {options.lr_solver!r}")
    tol = options.mc_tol
    if isinstance(tol, jax.Array):  # a scalar array: traced, one compiled fit serves several tolerances
        if tol.shape != () or not jnp.issubdtype(tol.dtype, jnp.floating):
            raise ValueError(f"options.mc_tol must be None, a finite number > 0 or a float scalar, got {tol!r}")
        tol = None if isinstance(tol, jax.core.Tracer) else float(tol)  # a traced value cannot be checked here
    if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol)
                            or tol <= 0):
        raise ValueError(f"options.mc_tol must be None or a finite number > 0, got {tol!r}")
    if isinstance(options.max_doublings, bool) or not isinstance(options.max_doublings, int) \
            or not 0 <= options.max_doublings <= 10:
        raise ValueError(f"options.max_doublings must be an int in [0, 10], got {options.max_doublings!r}")
    return options


def build(model, family: Family, options: Options = Options()) -> VIAlgorithm:
    """DADVI as a `VIAlgorithm` (one trust-region Newton-CG iteration or one MC check per `step`).

    Args:
      model: anything with `dim` and `log_density(zeta)` on R^K.
      family: `MeanFieldGaussian` or `FullRankGaussian`.
      options: `Options`.

    Returns:
      `VIAlgorithm`; `extras(state)` gives `lr_covariance`, `lr_sd`, `mc_se`, `mc_rel_error`,
      `objective`, `num_draws`, `num_doublings`, `draws_reason`, `mc_tol` and `lr_grad_evals`
      (see the module docstring).

    Raises:
      ValueError / TypeError: for a family it cannot fit or malformed options.
    """
    k = model.dim
    options = _check(family, options, k)
    doubling = options.mc_tol is not None and not options.moment_match
    max_level = options.max_doublings if doubling else 0
    chunk = options.num_draws  # level i runs over the first 2**i chunks of the draw buffer
    fixed_reason = 3 if options.mc_tol is None else 4
    pack, unpack, num_params = _packer(family, k)
    max_cg = min(options.max_cg, num_params)
    solver = options.lr_solver
    if solver == "auto":
        solver = "dense" if num_params <= DENSE_MAX_PARAMS else "cg"
    logp_batch = jax.vmap(model.log_density)

    def neg_logp_sum(eta, z):
        """-sum over a chunk's draws z (chunk, K) of log p(T_eta(z)), NaN as +inf."""
        value = -jnp.sum(logp_batch(family.sample_standard(unpack(eta), z)))
        return jnp.where(jnp.isnan(value), jnp.inf, value)

    def neg_entropy(eta):
        return -family.entropy(unpack(eta))

    def over_chunks(fn, draws, level, init):
        """Sum fn(chunk) over the level's 2**level chunks: one compiled body whatever M is."""
        return jax.lax.fori_loop(0, 2**level, lambda i, acc: jax.tree.map(jnp.add, acc, fn(draws[i])), init)

    def value_and_grad(eta, draws, level):
        m = chunk * 2**level
        zero = (jnp.zeros((), eta.dtype), jnp.zeros_like(eta))
        value, grad = over_chunks(lambda z: jax.value_and_grad(neg_logp_sum)(eta, z), draws, level, zero)
        h_value, h_grad = jax.value_and_grad(neg_entropy)(eta)
        return value / m + h_value, grad / m + h_grad

    def hvp_at(eta, draws, level):
        m = chunk * 2**level
        grad_chunk = jax.grad(neg_logp_sum)

        def hvp(v):
            hv = over_chunks(lambda z: jax.jvp(lambda e: grad_chunk(e, z), (eta,), (v,))[1], draws, level,
                             jnp.zeros_like(eta))
            return hv / m + jax.jvp(jax.grad(neg_entropy), (eta,), (v,))[1]

        return hvp

    def sandwich(eta, grad, draws, level):
        """(lr_cov, mc_se, cost) at eta with the level's draws (see the module docstring)."""
        m = chunk * 2**level
        hvp = hvp_at(eta, draws, level)
        dtype = eta.dtype
        basis = jnp.eye(num_params, dtype=dtype)[:k]  # the loc rows: d E_q[zeta] / d eta
        if solver == "dense":
            hess = jax.lax.map(hvp, jnp.eye(num_params, dtype=dtype), batch_size=HESSIAN_BLOCK)
            hess = 0.5 * (hess + hess.T)
            chol = jnp.linalg.cholesky(hess)
            rows = jax.scipy.linalg.cho_solve((chol, True), basis.T).T  # (K, P) = rows of H^{-1}
            cost = 2 * m * num_params
        else:
            rows, iters = _batched_cg(hvp, basis, options.lr_cg_tol, 4 * num_params)
            cost = 2 * m * k * iters
        lr_cov = rows[:, :k]
        lr_cov = 0.5 * (lr_cov + lr_cov.T)
        # The per-draw gradients of F (each draw's -grad log p, plus the shared entropy gradient),
        # projected on W = rows and centred on their mean, which is grad F itself.
        centre = (grad - jax.grad(neg_entropy)(eta)) @ rows.T
        per_draw = jax.vmap(jax.grad(lambda e, z: neg_logp_sum(e, z[None])), in_axes=(None, 0))

        def squares(z):
            proj = per_draw(eta, z) @ rows.T - centre[None, :]  # (chunk, K)
            return jnp.sum(proj * proj, axis=0)

        mc_var = over_chunks(squares, draws, level, jnp.zeros((k,), dtype)) / (m - 1) / m
        return lr_cov, jnp.sqrt(mc_var), jnp.asarray(cost + m, jnp.int32)

    def init(key: Array, loc: Array) -> State:
        loc = jnp.asarray(loc)
        draws = jax.random.normal(key, (chunk * 2**max_level, k), loc.dtype)
        if options.moment_match:
            draws = _moment_match(draws)
        draws = draws.reshape(2**max_level, chunk, k)
        eta = pack(family.init(key, k, loc=loc, scale=options.init_scale, dtype=loc.dtype))
        int0 = jnp.asarray(0, jnp.int32)
        value, grad = value_and_grad(eta, draws, int0)
        radius = jnp.asarray(options.initial_radius, loc.dtype)
        return State(eta, value, grad, radius, draws, jnp.asarray(False), int0, jnp.asarray(False), int0,
                     jnp.full((k,), jnp.inf, loc.dtype), jnp.zeros((k, k), loc.dtype), jnp.asarray(jnp.inf, loc.dtype))

    def newton(state: State):
        level = state.level
        g = state.grad
        gnorm = jnp.linalg.norm(g)
        tol = jnp.minimum(0.5, jnp.sqrt(gnorm)) * gnorm
        p, r, cg_iters = _steihaug(hvp_at(state.eta, state.draws, level), g, state.radius, tol, max_cg)
        predicted = -0.5 * jnp.dot(p, g + r)  # -(g.p + p.Hp/2), with r = g + Hp
        eta_new = state.eta + p
        value_new, grad_new = value_and_grad(eta_new, state.draws, level)
        finite = jnp.isfinite(value_new) & jnp.all(jnp.isfinite(grad_new))
        actual = state.value - value_new
        rho = jnp.where(finite & (predicted > 0), actual / jnp.where(predicted > 0, predicted, 1.0), -jnp.inf)
        # Near the optimum the predicted decrease falls below the rounding of F, and rho is noise:
        # there a step is judged by the gradient it leads to (Newton's own convergence).
        tiny = predicted <= 16 * jnp.finfo(g.dtype).eps * (1.0 + jnp.abs(state.value))
        accept = jnp.where(tiny, finite & (jnp.linalg.norm(grad_new) <= gnorm), rho > 1e-4)
        pnorm = jnp.linalg.norm(p)
        radius = jnp.where(tiny & accept, state.radius,
                           jnp.where(rho < 0.25, 0.25 * pnorm,
                                     jnp.where((rho > 0.75) & (pnorm >= 0.99 * state.radius),
                                               jnp.minimum(2.0 * state.radius, options.max_radius), state.radius)))
        eta = jnp.where(accept, eta_new, state.eta)
        value = jnp.where(accept, value_new, state.value)
        grad = jnp.where(accept, grad_new, state.grad)
        step_small = accept & (jnp.max(jnp.abs(p)) < options.xtol)
        # The precision floor, where gtol and xtol can sit below what the dtype resolves (float32 rats_tumour:
        # max |grad| stayed at 2e-5 and the loop ran out its budget, 18.9 million gradients at 1,000 steps):
        # F being deterministic, a step that changes nothing is proposed again forever. Two cases end the
        # phase: a full Newton step (inside the radius) whose predicted decrease is below F's rounding and
        # that does not lower the gradient either, and a step below the spacing of eta's floats.
        stalled = (tiny & ~accept & (pnorm < 0.99 * state.radius)) | jnp.all(eta_new == state.eta)
        ended = step_small | (jnp.max(jnp.abs(grad)) < options.gtol) | (radius < options.xtol) | stalled
        if doubling:
            new = state._replace(eta=eta, value=value, grad=grad, radius=radius, checking=ended)
            done = jnp.asarray(False)
        else:
            new = state._replace(eta=eta, value=value, grad=grad, radius=radius, converged=ended,
                                 reason=jnp.where(ended, fixed_reason, 0).astype(jnp.int32))
            done = ended
        cost = chunk * 2**level * (1 + 2 * cg_iters)
        return new, step_info(-value, jnp.isfinite(value), cost, 0, done)

    def check(state: State):
        level = state.level
        lr_cov, mc_se, cost = sandwich(state.eta, state.grad, state.draws, level)
        rel = _relative_error(mc_se, lr_cov, family.variance(unpack(state.eta)))
        ok = rel <= options.mc_tol
        last = level >= max_level
        done = ok | last
        grow = ~done

        # The MC error falls like 1/sqrt(M): go straight to the first doubling predicted to meet
        # mc_tol (at least one, at most max_doublings in all), skipping checks bound to fail.
        ahead = jnp.ceil(jnp.log2(jnp.maximum(rel / options.mc_tol, 1.0) ** 2))
        ahead = jnp.where(jnp.isfinite(ahead), ahead, max_level).astype(jnp.int32)
        target = jnp.clip(level + jnp.maximum(ahead, 1), 0, max_level)

        def double(s):
            return value_and_grad(s.eta, s.draws, target)

        value, grad = jax.lax.cond(grow, double, lambda s: (s.value, s.grad), state)
        new = state._replace(value=value, grad=grad, checking=jnp.asarray(False), converged=done,
                             level=jnp.where(grow, target, level).astype(jnp.int32),
                             reason=jnp.where(ok, 1, jnp.where(last, 2, 0)).astype(jnp.int32),
                             radius=jnp.where(grow, jnp.maximum(state.radius, options.initial_radius), state.radius),
                             mc_se=mc_se, lr_cov=lr_cov, mc_rel=rel)
        cost = cost + jnp.where(grow, chunk * 2**target, 0).astype(jnp.int32)
        return new, step_info(-value, jnp.isfinite(value), cost, 0, done)

    def finished(state: State):
        return state, step_info(-state.value, jnp.isfinite(state.value), 0, 0, True)

    def step(key: Array, state: State):
        del key  # deterministic
        if not doubling:
            return jax.lax.cond(state.converged, finished, newton, state)
        index = jnp.where(state.converged, 2, jnp.where(state.checking, 1, 0))
        return jax.lax.switch(index, [newton, check, finished], state)

    def params(state: State):
        return unpack(state.eta)

    def extras(state: State) -> dict:
        def fresh(s):
            return sandwich(s.eta, s.grad, s.draws, s.level)

        def stored(s):
            return s.lr_cov, s.mc_se, jnp.asarray(0, jnp.int32)

        reuse = (state.reason == 1) | (state.reason == 2)  # the last check was made at this state
        lr_cov, mc_se, cost = jax.lax.cond(reuse, stored, fresh, state)
        variance = family.variance(unpack(state.eta))
        return {"lr_covariance": lr_cov, "lr_sd": jnp.sqrt(jnp.maximum(jnp.diagonal(lr_cov), 0.0)),
                "mc_se": mc_se, "mc_rel_error": _relative_error(mc_se, lr_cov, variance), "objective": state.value,
                "num_draws": (chunk * 2**state.level).astype(jnp.int32), "num_doublings": state.level,
                "draws_reason": state.reason,
                "mc_tol": jnp.asarray(jnp.nan if options.mc_tol is None else options.mc_tol, state.value.dtype),
                "lr_grad_evals": cost}

    return VIAlgorithm(init, step, params, extras)


def extras_grad_evals(extras: dict) -> int:
    """The gradients `extras(state)` evaluated (`lr_grad_evals`: the final linear-response solve, 0 where
    the last MC check's is reused), for `aj.fit`'s `num_grad_evals` (`advi_jax.vi`)."""
    return int(extras["lr_grad_evals"])


def _relative_error(mc_se: Array, lr_cov: Array, q_variance: Array) -> Array:
    """max_k mc_se_k / sd_k, sd_k the linear-response sd (the posterior sd estimate; a mean-field
    q's own sds are too small), or q's where the LR variance is not positive and finite."""
    lr_var = jnp.diagonal(lr_cov)
    var = jnp.where(jnp.isfinite(lr_var) & (lr_var > 0), lr_var, q_variance)
    return jnp.max(mc_se / jnp.sqrt(var))
