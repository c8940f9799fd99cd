"""The draws of q and their log importance ratios, computed accurately enough for PSIS.

The diagnostics (`advi_jax.result.diagnose`), `Result.importance_draws` and PSIS resampling read
`r_s = log p(zeta_s) - log q(zeta_s)` at draws `zeta_s ~ q`. Only the spread of the r_s matters
to k-hat, the ESS and the PSIS weights; a constant shift does not. For a near-exact fit that
spread is small (sd ~1e-3 for a GLM with N = 1e6 rows), while in float32 each `log p` carries a
rounding of about eps x |log p| (~0.1 at |log p| ~ 6e5): the plain ratios are then rounding
noise, and PSIS fits a tail to it. So the ratios are computed *centred* at the mean m of q,

    r_s = shift + centred_s,    shift = log p(m) - log q(m),
    centred_s = [log p(zeta_s) - log p(m)] - [log q(zeta_s) - log q(m)],

with the first bracket and log p(m) from `model.log_density_relative(zeta, m)` when the model
has one (the ready logistic and Poisson GLMs: a sum of per-row differences, `advi_jax.models.relative`;
it returns (log p(zeta) - log p(m), log p(m))), else plainly (no worse than before). The centred
ratios and the shift are returned separately so that the shift's magnitude never rounds the
centred values again; the host adds them in float64. All of it is one compiled program per
model structure, family and S (`draws_and_log_ratios`).

More than `DRAW_BLOCK` draws are made in blocks of that many (`draw_blocks`: block 0 from the key
itself, block i from `fold_in(key, i)`), each by the same compiled program: a k-hat re-estimated
from 16,384 draws (`fit_diagnostics.diagnose_confirmed`) runs the 4,096-draw program of the first
estimate four times instead of compiling a program of its own on the fit's first call. Every
function that makes q's draws from a key (`blocked_log_ratios`, `fit_diagnostics.constrained_draws`,
`Result.sample_unconstrained`) makes them this way, so the same key and number give the same draws
in each (the summary's PSIS columns pair the diagnostics' log ratios with draws made again).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from advi_jax import compile_options
from advi_jax._types import Array, PyTree
from advi_jax.base import Family

__all__ = ["sampling_key", "centred_log_ratios", "constrained_flat", "changed_sites", "constrained_labels",
           "log_ratios", "draws_and_log_ratios", "compile_ahead", "DRAW_BLOCK", "fold_in_key", "draw_blocks",
           "blocked", "blocked_log_ratios",
           "AHEAD_COMPILE_SHARE", "FULL_EXTRA_COMPILE_SECONDS_PER_EQN"]

_GOLDEN = 0x9E3779B9


def sampling_key(key: Array) -> Array:
    """The key the result's own draws of q are made with: an "rbg" key (XLA's RngBitGenerator)
    holding a threefry key's bits (other keys are kept as they are).

    Compiling threefry for a batch of draws takes 2-5x as long on CPU as RngBitGenerator
    (measured: 2.3-2.9 s against 0.5 s on a loaded 2-core machine), and the diagnostics, the
    summary and `Result.sample` each compile one such sampler on first use. The streams are
    deterministic for a given key and jax version (not across versions, and not equal to
    `family.sample(params, key, n)` with the threefry key itself).
    """
    if str(jax.random.key_impl(key)) != "threefry2x32":
        return key
    data = jax.random.key_data(key)
    return jax.random.wrap_key_data(jnp.concatenate([data, data ^ jnp.uint32(_GOLDEN)]), impl="rbg")


def centred_log_ratios(model, family: Family, params: PyTree, key: Array, num_draws: int,
                       batch_size: int = 256, constrained: bool = False) -> tuple[Array, ...]:
    """(num_draws, K) draws of q (made with `sampling_key(key)`), their centred log ratios and the shift.

    `log p(zeta_s) - log q(zeta_s) = shift + centred_s` (module docstring); the log density is
    evaluated `batch_size` draws at a time. With `constrained`, also the same draws in the
    constrained space, flattened (`constrained_flat`), for the PSIS moment check of the
    parameters as the user reads them (no further log-density evaluation).

    Returns:
      (zeta, centred, shift): (S, K), (S,) and a scalar; with `constrained`, also the (S, Kc)
      constrained draws (`constrained_flat`).
    """
    zeta = family.sample(params, sampling_key(key), num_draws)
    extra = (constrained_flat(model, zeta),) if constrained else ()
    batch = min(num_draws, batch_size)
    relative = getattr(model, "log_density_relative", None)
    if relative is None:
        log_p = jax.lax.map(model.log_density, zeta, batch_size=batch)
        return (zeta, log_p - family.log_prob(params, zeta), jnp.zeros((), zeta.dtype)) + extra
    ref = jax.lax.stop_gradient(family.mean(params))
    log_p_rel, log_p_ref = jax.lax.map(lambda z: relative(z, ref), zeta, batch_size=batch)
    log_q = family.log_prob(params, jnp.concatenate([ref[None], zeta]))
    return (zeta, log_p_rel - (log_q[1:] - log_q[0]), log_p_ref[0] - log_q[0]) + extra


def constrained_flat(model, zeta: Array) -> Array:
    """(S, K) unconstrained draws mapped to the constrained space and flattened (traceable): (S, Kc),
    the sites a bijector changes (`changed_sites`; the others are the unconstrained coordinates
    themselves), in sorted name order, each site's entries in row-major order (`constrained_labels`)."""
    changed = changed_sites(model, zeta.shape[-1])
    if not changed:
        return jnp.zeros((zeta.shape[0], 0), zeta.dtype)
    sites = jax.vmap(model.to_constrained)(zeta)
    return jnp.concatenate([sites[name].reshape(zeta.shape[0], -1).astype(zeta.dtype) for name in changed], axis=1)


_STRUCTURAL = frozenset({"slice", "reshape", "squeeze", "expand_dims", "convert_element_type", "copy", "copy_p"})
"""Primitives that move or relabel values without changing them: a constrained site made of the flat
vector by these alone is the unconstrained coordinates themselves (an identity bijector)."""

_SITES: dict = {}


def changed_sites(model, dim: int) -> tuple[str, ...]:
    """The constrained sites whose values a bijector changes, in sorted name order: those not made of
    the flat (K,) vector by `_STRUCTURAL` primitives alone, read from the jaxpr of
    `model.to_constrained` (a trace, a few ms, kept per model structure: its pytree structure and
    its leaves' shapes, what a jitted function is compiled per). The others are read in R^K already;
    a site whose identity the jaxpr hides (a nested call) counts as changed, which only repeats a test."""
    return tuple(name for name, (_, changed) in _site_info(model, dim).items() if changed)


def _site_info(model, dim: int) -> dict:
    """{name: (shape, changed)} of the constrained sites, sorted by name (`changed_sites`)."""
    leaves, tree = jax.tree_util.tree_flatten(model)
    key = (tree, tuple((getattr(x, "shape", None), str(getattr(x, "dtype", type(x)))) for x in leaves), int(dim))
    try:
        found = _SITES.get(key)
    except (TypeError, ValueError):  # a static part that cannot be hashed or compared: no caching
        key, found = None, None
    if found is None:
        closed, shapes = jax.make_jaxpr(model.to_constrained, return_shape=True)(
            jax.ShapeDtypeStruct((int(dim),), jnp.float32))
        jaxpr = closed.jaxpr
        made = {id(v): eqn for eqn in jaxpr.eqns for v in eqn.outvars}
        source = {id(v) for v in jaxpr.invars}

        def plain(var) -> bool:  # made of the input by structural primitives alone
            while id(var) not in source:
                eqn = made.get(id(var))
                if eqn is None or eqn.primitive.name not in _STRUCTURAL or len(eqn.invars) != 1:
                    return False
                var = eqn.invars[0]
            return True

        names = sorted(shapes)
        outs = dict(zip(names, jaxpr.outvars)) if len(jaxpr.outvars) == len(names) else {}
        found = {name: (tuple(shapes[name].shape), not (name in outs and plain(outs[name]))) for name in names}
        if key is not None:
            if len(_SITES) > 64:
                _SITES.clear()
            _SITES[key] = found
    return found


def constrained_labels(model, dim: int) -> tuple[str, ...]:
    """The names of `constrained_flat`'s columns: "name" for a scalar site, "name[i]", "name[i,j]"...
    (`dim`: K, the unconstrained length)."""
    import numpy as np

    labels = []
    for name, (shape, changed) in _site_info(model, dim).items():
        if not changed:
            continue
        if not shape:
            labels.append(name)
            continue
        labels.extend(f"{name}[{','.join(str(int(i)) for i in index)}]" for index in np.ndindex(*shape))
    return tuple(labels)


def log_ratios(model, family: Family, params: PyTree, key: Array, num_draws: int,
               batch_size: int = 256) -> tuple[Array, Array]:
    """(num_draws, K) draws of q (made with `sampling_key(key)`) and their log p - log q (in the
    working dtype: `centred_log_ratios` keeps the accurate centred values apart from the shift)."""
    zeta, centred, shift = centred_log_ratios(model, family, params, key, num_draws, batch_size)
    return zeta, shift + centred


def _draws_mode(model, args: dict):
    """The draws' compiler options: by their number (`compile_options.compile_mode`); where that says
    "mid" or "full" for a model class that asks for "mid" (`full_compile_mode`: the ready GLMs, whose
    draws' log densities run in the native difference kernel, out of XLA's sight), by the traced
    program's own arithmetic (`compile_options.ByCost`): fast where the fast code's estimated extra
    run time is below the compile it saves (N = 1e4, D = 10, 1,024 draws: about 0.5 ms against
    0.2-0.3 s), else by the number."""
    if (getattr(type(model), "full_compile_mode", "full") == "mid"
            and compile_options.compile_mode(model, args["num_draws"]) != "fast"):
        return compile_options.ByCost(1, args["num_draws"])
    return args["num_draws"]


draws_and_log_ratios = compile_options.jit(functools.partial(centred_log_ratios, constrained=True),
                                           static_argnames=("family", "num_draws", "batch_size"), mode=_draws_mode)
"""`centred_log_ratios(..., constrained=True)`, compiled once per model structure, family and S:
(zeta, centred, shift, constrained draws). Every caller (the fit's diagnostics, `compile_ahead`,
`Result.importance_draws`, the CLI's warm-up) gets the one program, constrained draws included."""


DRAW_BLOCK = 4096
"""The most draws of q one compiled program makes (`draw_blocks`): the diagnostics' largest automatic
sample (`fit_diagnostics.DIAGNOSTIC_DRAWS_MAX`), so a larger one (a k-hat re-estimate, PSIS resampling's
proposals) reuses that program."""


def fold_in_key(key: Array, value: int) -> Array:
    """`jax.random.fold_in(key, value)`, on the host for a threefry key on the CPU (`run.host_keys`:
    the same bits, no program to compile), else by `jax.random`."""
    from advi_jax.run import host_keys

    if host_keys.fit_keys(key) is not None:
        data = host_keys.fold_in(np.asarray(jax.random.key_data(key)), int(value))
        return jax.random.wrap_key_data(data, impl="threefry2x32")
    return jax.random.fold_in(key, int(value))


def draw_blocks(key: Array, num_draws: int, block: int = DRAW_BLOCK) -> list[tuple[Array, int]]:
    """(key, draws) of each block q's `num_draws` draws are made in: one block (`key`, `num_draws`) up
    to `block` draws, else blocks of `block` draws (the last one the remainder), block i from
    `fold_in(key, i)` and block 0 from `key` itself (so the first `block` draws of a larger sample are
    the draws of a sample of `block`).

    Example:
      >>> import jax
      >>> [n for _, n in draw_blocks(jax.random.key(0), 9000)]
      [4096, 4096, 808]
    """
    num_draws, block = int(num_draws), int(block)
    if num_draws <= block:
        return [(key, num_draws)]
    sizes = [block] * (num_draws // block) + ([num_draws % block] if num_draws % block else [])
    return [(key if i == 0 else fold_in_key(key, i), size) for i, size in enumerate(sizes)]


def blocked(draw: Callable[[Array, int], Any], key: Array, num_draws: int, block: int = DRAW_BLOCK) -> Any:
    """`draw(key, n)` (a pytree of arrays with a leading axis of n draws) over `draw_blocks(key, num_draws)`,
    concatenated on the host and put back on the device where there is more than one block (JAX arrays
    as one block gives, and nothing to compile). Leaves without a leading draw axis (a scalar shift) are
    taken from the first block."""
    parts = [draw(k, n) for k, n in draw_blocks(key, num_draws, block)]
    if len(parts) == 1:
        return parts[0]
    parts = jax.device_get(parts)

    def join(*leaves):
        first = np.asarray(leaves[0])
        return jax.device_put(np.concatenate([np.asarray(x) for x in leaves]) if first.ndim else first)

    return jax.tree_util.tree_map(join, *parts)


def blocked_log_ratios(model, family: Family, params: PyTree, key: Array, num_draws: int) -> tuple:
    """`draws_and_log_ratios(model, family, params, key, num_draws)` made in blocks (`draw_blocks`):
    (zeta, centred, shift, constrained draws), one compiled program for every sample of `DRAW_BLOCK`
    draws or more. The shift (log p - log q at q's mean) is the same in every block."""
    return blocked(lambda k, n: draws_and_log_ratios(model, family, params, k, n), key, num_draws)


FULL_EXTRA_COMPILE_SECONDS_PER_EQN = 2.3e-3
"""Compile CPU seconds XLA's full options cost more than the fast ones, per equation of the
diagnostics' program (wells_badly_scaled's 222 equations: 0.70 against 0.19 s; loaded 2-core machine)."""

AHEAD_COMPILE_SHARE = 0.25
"""The share of a compile on a fit's background thread that the fit's wall time pays on a loaded
two-core machine (the other core is shared with the start's compile and run and with the load):
the diagnostics compile full on the thread where the fast code's estimated extra run time is at
least this share of the full options' extra compile CPU (`compile_ahead`)."""


def compile_ahead(model, family: Family, params: PyTree, key: Array, num_draws: int) -> str:
    """Compile `draws_and_log_ratios` for these (abstract) arguments, on a background thread of a fit.

    There the compile overlaps the fit's start and loop, while the program's run time does not.
    Where the size rule says "fast" and the fast code's estimated extra run time
    (`compile_options.arithmetic` of the traced program, priced by `FAST_EXTRA_SECONDS`) is at least
    `AHEAD_COMPILE_SHARE` of the full options' estimated extra compile CPU
    (`FULL_EXTRA_COMPILE_SECONDS_PER_EQN` per equation), the program compiles with XLA's full
    options (the MLIR emitters vectorise the batched log density) and is pinned to them
    (`_SizedJit.pin`), so the fit's own call, and every later call with these shapes, runs it.
    Measured (benchmarks/PERFORMANCE.md, "wells' first call"; loaded 2-core machine):
    wells_badly_scaled's 4,096 draws over 3,020 rows run 0.26-0.8 s a call fast against
    0.05-0.14 s full, for 0.5 s more compile CPU (estimated 0.19 s against 0.13 s: full, its first
    call 0.2 s shorter); births_poisson_state's 0.07 against 0.02 s, for 0.7 s more compile CPU
    (estimated 0.065 against 0.17 s: fast; forced full, its first call was 0.4 s longer). The
    draws and ratios equal the fast code's to float32 rounding (not bit for bit).

    Args:
      model, family, params, key, num_draws: as `draws_and_log_ratios` takes them (arrays or
        `jax.ShapeDtypeStruct`s).

    Returns:
      The mode it compiled with: "fast", "mid" or "full".

    Example:
      >>> import jax, jax.numpy as jnp, advi_jax as aj
      >>> from advi_jax import importance
      >>> model = aj.Model(lambda p: -0.5 * jnp.sum(p["x"] ** 2), {"x": aj.real((2,))})
      >>> family = aj.MeanFieldGaussian()
      >>> params = family.init(jax.random.key(1), 2)
      >>> importance.compile_ahead(model, family, params, jax.random.key(0), 128) in ("fast", "full")
      True
    """
    args = (model, family, params, key, num_draws)
    mode = compile_options.compile_mode(model, num_draws)
    if mode == "fast" and compile_options.forced_mode() is None:  # "fast" only on CPU
        cost = compile_options.arithmetic(draws_and_log_ratios.full.trace(*args).jaxpr)
        full_extra_compile = FULL_EXTRA_COMPILE_SECONDS_PER_EQN * cost.eqns
        if compile_options.fast_extra_seconds(cost) >= AHEAD_COMPILE_SHARE * full_extra_compile:
            mode = "full"
            draws_and_log_ratios.pin(mode, *args)
    draws_and_log_ratios.lower(*args).compile()
    return mode
