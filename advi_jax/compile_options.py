"""XLA compiler options by problem size and work: compile small programs fast, optimise large ones fully.

On CPU a fit of a small model spends almost all its first call compiling: XLA's optimising
backend (LLVM at -O2-like settings, the MLIR fusion emitters) takes seconds for programs whose
run time is milliseconds. For such problems `FAST_OPTIONS` (the backend at optimisation level 0
and XLA's classic elemental fusion emitter instead of the MLIR fusion emitters) compiles 3-6x
faster; the code it produces runs slower (unvectorised elementwise loops; matrix products and
factorisations call the same library kernels), which costs nothing next to the compile time
while the data are small and a lot once they are large.

The rule (`fast_compile`), per compiled program: on CPU, compile with `FAST_OPTIONS` when the
model's arrays (its data and any arrays it carries, e.g. a whitening factor) times the most
log-density (gradient) evaluations the program makes is at most `FAST_MAX_WORK` (1e8);
otherwise use XLA's defaults. A program that does not say how many it makes is counted at
`DEFAULT_EVALS` (20,000: the rule is then at most `FAST_MAX_ENTRIES` = 5,000 entries, as before
the count existed). On GPU/TPU the defaults are always used (the options are CPU settings).
The counts the default fit's programs give (`jit(..., mode=...)`):

* the start program (`advi_jax.run.start._start_program`): by its own arithmetic (below; its
  Pathfinder loop priced at 200 iterations, fast where the extra run time is at most half the
  compile saved), else by at most about 2,300 evaluations (Pathfinder's 200 L-BFGS iterations, 100
  BaM steps of 16 draws, 5 x 64 draws of ELBO): fast for a logistic regression up to ~18,000 x 10;
* the loop (`driver.run_chunk`, `init_loop`): ADVI's loop where this rule allows fast or "mid"
  (its step budget `num_steps x num_samples`; the default's cap 12,000 x 4) chooses between the
  two by its own arithmetic (below); other methods: unknown (the size rule);
* the diagnostics' draws (`importance.draws_and_log_ratios`): their number of draws (compiled on
  a fit's background thread, XLA's full options where the fast code's estimated extra run time
  outweighs a share of their extra compile, `importance.compile_ahead`; pinned for later calls
  by `_SizedJit.pin`);
* ADVI's `single.finish` (no evaluation) and the key and bookkeeping programs: always fast.

Measured on a loaded 2-core machine (`benchmarks/bench_first_call.py`; compile as process CPU
time, run per call of the program):

* compile: 3-6x less CPU time (the start program: breast cancer 1.1-1.4 s against 6.3-7.0 s,
  wells 1.2 against 4.9 s; the loop: 0.5-0.8 s against 3.4-3.6 s);
* run: a log-density gradient costs 1.5-16 ns more per data entry, most where the model
  evaluates many transcendental functions (breast cancer's start program, 17,600 entries: 44 ->
  121 ms; the badly scaled wells GLM's, 18,100 entries: 124 -> 785 ms; the loop per step of 4
  draws: breast cancer 44-49 -> 165-181 us, wells 53 -> 317 us, radon (K = 90, its 8,100 entries
  of whitening factor) 97-106 -> 627-684 us).

So 1e8 entry-evaluations cost at most about 0.15-1.6 s more run time, against 2-5 s of CPU time
saved on the first call; every later call of the same shapes pays the slower code again (the
start program of breast cancer / wells: +0.08 / +0.66 s per call), which is why the loop, whose
budget is 20x the start's, keeps the full optimisation above a few thousand entries.

**The arithmetic rule** (`ByCost`, `cost_mode`). Data size is a poor proxy for what the fast
code costs: a K = 90 hierarchical model with 2,842 data entries spends each step on K x K
masks and products of the natural-gradient step and the whitening, and a 3,000-row GLM on
transcendental functions. A program that returns `ByCost(trips, evals)` from its mode function
(or holds one in a static argument the mode function returns, as the driver's
`Settings.compile`) is traced once (JAX's own trace, which the chosen version's call then finds
in JAX's caches) and its jaxpr is read (`arithmetic`, a walk of the equations, 5-40 ms): the
numbers that elementwise operations, transcendental functions, matrix products and triangular
solves and factorisations produce, and the operations run, with a `scan` counted by its length
and the outermost `while` loops by `trips` (the driver's loop: its expected steps,
`run.single._expected_steps`, half the cap where a stopping rule can end it). It compiles fast
when the fast code's estimated extra run time (`FAST_EXTRA_SECONDS` per unit) is at most the
estimated compile CPU time saved (`FAST_SAVED_SECONDS_PER_EQN` per equation); else as the size
rule says ("mid" where that says fast), and "mid" also where the size rule says "full" but the
"mid" code's own extra run time (`MID_EXTRA_SECONDS`: about 1 ns per exp or log, 12 ns per
lgamma or digamma, nothing measurable on elementwise work) is below its compile saving
(`MID_SAVED_SECONDS_PER_EQN`). The choice is made once per abstract signature.

Calibrated on the default fit's loop of nine suite posteriors (`benchmarks/PERFORMANCE.md`,
"compile rule"; loaded 2-core machine, each program compiled once per mode in a fresh process,
run time per step from the fit's own steps): fast minus "mid" run time per step, measured
(estimated): eight schools, lkj_mvn -2, -1 us (17, 19); garch11 112 (46); breast cancer 172
(106); german credit 177 (117); births_poisson_state 226 (275); wells_badly_scaled 315 (211);
radon_noncentered 389 (358); radon_varying_slopes 1,233 (1,149). Compile CPU saved: 0.8-2.0 s
per loop of 947-1,321 equations (0.7-2.1 ms per equation; the start programs 0.9-2.5 ms, the
diagnostics' 0.8-2.2 ms; median 1.5 ms). Over 6,000 expected steps the rule compiles the loop
fast for breast cancer (extra 0.64 s against 1.42 s saved), german credit, garch, eight schools,
lkj, wells and births (both near the line), and "mid" for the radon models (2.1 s against
1.7 s; 6.9 s against 1.8 s), where forcing fast made radon's first call 8 s instead of 4.6 s.
Measured again on a quiet machine (2026-12-03, eleven loops; fast minus "mid" or full per step):
the fast code cost about twice the estimate on every loop of over 5e5 elementwise numbers a step
(breast cancer 237 us, births 492, reg_horseshoe 323, rats_tumour 772, gp_poisson_latent 467,
ar1_state_space 678, radon 872; eight schools and Neal's funnel 17-19 as estimated), and three
loops that run to their cap in fast code (ar1_state_space, gp_poisson_latent, reg_horseshoe) took
4-12 s a call where "mid" takes 1-4 s. The elementwise price was refitted then (5.6e-11 -> 1.7e-10
s): the rule now compiles the loops of ar1_state_space, gp_poisson_latent, rats_tumour and
births_poisson_state "mid" (first calls 0.6-6.7 s shorter and later calls 1.2-9.5 s shorter on the
first three; births' first call 1.2-1.3 s longer, its later calls 0.2-0.3 s shorter), and keeps
reg_horseshoe's fast (2.16 s estimated against 2.19 s saved over 6,000 steps; it runs 10,000).

`jit` is `jax.jit` with that choice made per call from the model argument: it holds two jitted
versions of the function (each with its own cache), so the choice never recompiles a program.
A model class may also ask for "mid" where the rule says "full" (a class attribute
`full_compile_mode = "mid"`, CPU only): the ready GLMs (`models.regression.RegressionModel`) do,
since the classic fusion emitter halves the CPU time of their full compiles at N = 1e6 with the
same run time and the same numbers.

Example:
  >>> import jax.numpy as jnp, advi_jax as aj
  >>> from advi_jax import compile_options
  >>> model = aj.Model(lambda p: -0.5 * jnp.sum(p["x"] ** 2), {"x": aj.real((3,))})
  >>> compile_options.fast_compile(model) == (compile_options.jax.default_backend() == "cpu")
  True
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Any, Callable, Iterator, NamedTuple

import jax
import numpy as np

from advi_jax import _lapack_batched

_lapack_batched.install()  # batched CPU Cholesky / triangular solves without jaxlib's deadlock (its docstring)

__all__ = ["FAST_OPTIONS", "MID_OPTIONS", "FAST_MAX_ENTRIES", "FAST_MAX_WORK", "MID_MAX_WORK", "DEFAULT_EVALS",
           "fast_compile", "compile_mode", "jit", "forced", "forced_mode", "ByCost", "Arithmetic", "arithmetic",
           "cost_mode", "FAST_EXTRA_SECONDS", "FAST_SAVED_SECONDS_PER_EQN", "fast_extra_seconds", "MODE_OPTIONS",
           "MID_EXTRA_SECONDS", "MID_SAVED_SECONDS_PER_EQN", "mid_extra_seconds", "optimised_mode",
           "compile_by_cost"]

FAST_OPTIONS = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False,
                "xla_cpu_parallel_codegen_split_count": 1}
"""XLA options of a fast compile (CPU): no LLVM optimisation, the classic fusion emitter, and the
LLVM module compiled in one piece. XLA otherwise splits it for parallel codegen on several threads,
which costs more CPU time in all: the default fit's start program (breast cancer, wells; the same
executable numbers) 0.78-1.02 against 0.85-1.39 s of compile CPU (loaded 2-core machine,
2026-11-29), and `aj.fit` compiles its loop on the second core meanwhile (`advi_jax.run.ahead`)."""

FAST_MAX_ENTRIES = 5_000
"""The most numbers a model's arrays may hold for `fast_compile` to choose `FAST_OPTIONS` for a
program whose number of evaluations is not known (`DEFAULT_EVALS`)."""

FAST_MAX_WORK = 100_000_000
"""The most (array entries x log-density evaluations) a program may do for `fast_compile` to choose
`FAST_OPTIONS`: at the measured 1.5-15 ns per entry and evaluation that the fast code costs
more, at most about 0.2-1.5 s of run time, against 2-3 s of CPU time its full compile costs more."""

DEFAULT_EVALS = FAST_MAX_WORK // FAST_MAX_ENTRIES
"""Evaluations assumed for a program that does not say (20,000: a default fit's count)."""

MID_OPTIONS = {"xla_cpu_use_fusion_emitters": False}
"""XLA options of a "mid" compile (CPU): full LLVM optimisation with the classic fusion emitter.
Measured: 25-35% less compile CPU time than XLA's defaults and the same numbers bit for bit (the
default fit's start program on three models, its loop on two); the code runs 0-40% slower."""

MID_MAX_WORK = 1_000_000_000
"""The most (entries x evaluations) for `MID_OPTIONS` (a program whose evaluations are known and
above `FAST_MAX_WORK`): at the measured 0.1-0.7 ns per entry and evaluation the mid code costs
more, at most 0.1-0.7 s, against the 0.7-2.2 s of compile CPU time it saves."""

_FORCED: list[str | None] = [None]


@contextlib.contextmanager
def forced(mode: str | None) -> Iterator[None]:
    """Within the block, compile every `jit` program "fast", "mid" or "full" whatever the size (None: by the rule).

    For benchmarks and tests that compare the two. Programs already compiled in a mode stay cached.

    Raises:
      ValueError: a mode other than "fast", "mid", "full" or None.
    """
    if mode not in ("fast", "mid", "full", None):
        raise ValueError(f"mode must be 'fast', 'mid', 'full' or None, got {mode!r}")
    before = _FORCED[0]
    _FORCED[0] = mode
    try:
        yield
    finally:
        _FORCED[0] = before


def forced_mode() -> str | None:
    """The mode a `forced` block imposes ("fast", "mid" or "full"), or None outside one (callers
    that choose their own options leave the choice to the block there)."""
    return _FORCED[0]


@functools.lru_cache(maxsize=None)
def _on_cpu() -> bool:
    return jax.default_backend() == "cpu"


def num_entries(tree: Any) -> int:
    """Numbers held by the array leaves of a pytree (a model's data, a whitening shift and factor)."""
    return int(sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(tree) if hasattr(leaf, "shape")))


def fast_compile(model: Any = None, evals: int | None = None) -> bool:
    """Whether a program over `model` compiles with `FAST_OPTIONS` (see the module docstring).

    Args:
      model: the model (any pytree; its array leaves are counted), or None for a program without
        one (bookkeeping of size O(K^2), always fast on CPU).
      evals: how many times (at most) the program evaluates the model's log density or its
        gradient, or None when unknown (`DEFAULT_EVALS`).

    Returns:
      True on CPU when entries x evals <= `FAST_MAX_WORK` (with `DEFAULT_EVALS`: the model's arrays
      hold at most `FAST_MAX_ENTRIES` numbers), or a mode is `forced`; False otherwise.
    """
    return compile_mode(model, evals) == "fast"


def compile_mode(model: Any = None, evals: int | None = None) -> str:
    """"fast" (`FAST_OPTIONS`), "mid" (`MID_OPTIONS`) or "full" (XLA's defaults) for a program over
    `model` making at most `evals` evaluations (see `fast_compile`; "mid" only where `evals` is
    given and entries x evals <= `MID_MAX_WORK`, or where the model's class sets
    `full_compile_mode = "mid"`). Off CPU always "full"; a `forced` mode wins.

    Raises:
      ValueError: negative `evals`.
    """
    if evals is not None and evals < 0:
        raise ValueError(f"evals must be None or >= 0, got {evals}")
    if not _on_cpu():
        return "full"
    if _FORCED[0] is not None:
        return _FORCED[0]
    if model is None:
        return "fast"
    work = num_entries(model) * (DEFAULT_EVALS if evals is None else max(int(evals), 1))
    if work <= FAST_MAX_WORK:
        return "fast"
    if evals is not None and work <= MID_MAX_WORK:
        return "mid"
    return "mid" if getattr(type(model), "full_compile_mode", "full") == "mid" else "full"


class ByCost:
    """A program's request to have `jit` choose its options from its own arithmetic (`cost_mode`).

    Returned by a `jit(..., mode=...)` function, or held by a static argument the mode function
    reads (the driver's `Settings.compile`). Every `ByCost` equals every other, so the numbers it
    carries never split JAX's compilation cache: the first call of a program with given shapes
    decides its options, and later calls with those shapes reuse that program whatever they say.

    Args:
      trips: how many times (expected) the program's outermost `while` loops run their body (the
        driver's loop: its expected steps; 1 for a program without such a loop). `scan` and
        `fori_loop` with static bounds count their own lengths.
      evals: the program's most log-density evaluations, for the choice between "mid" and
        "full" where the fast options do not pay (`compile_mode`).
      saved_share: the share of the estimated compile saving the fast code's extra run time may
        reach (`cost_mode`): 1 weighs one call's extra run against the compile it saves; less for
        a program every later call runs again (the default fit's start program: 0.5).
    """

    __slots__ = ("trips", "evals", "saved_share")

    def __init__(self, trips: float = 1, evals: int | None = None, saved_share: float = 1.0):
        if not trips >= 0:
            raise ValueError(f"trips must be >= 0, got {trips}")
        if not saved_share > 0:
            raise ValueError(f"saved_share must be > 0, got {saved_share}")
        self.trips, self.evals, self.saved_share = float(trips), evals, float(saved_share)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ByCost)

    def __hash__(self) -> int:
        return hash(ByCost)

    def __repr__(self) -> str:
        return f"ByCost(trips={self.trips:g}, evals={self.evals}, saved_share={self.saved_share:g})"


class Arithmetic(NamedTuple):
    """What a program computes, read from its jaxpr by `arithmetic` (loops counted by their trips).

    Attributes:
      eqns: the program's equations, each sub-program counted where it is called (what XLA
        compiles; loop bodies once).
      elementwise: numbers produced by elementwise operations, reductions, gathers, selects and
        the like (their largest operand or result).
      transcendental: numbers produced by exp, log, log1p, tanh, logistic, sin, erf, lgamma,
        pow, sqrt, ...
      dot: multiply-adds of matrix products (`dot_general`).
      linalg: m^2 n for an (m, m) triangular solve of n columns, m^3 for an (m, m) Cholesky,
        eigendecomposition, LU or QR factorisation (per batch member).
      operations: operations run (equations other than reshapes, broadcasts, conversions and
        the like), each counted as often as its loops run it.
      special: the part of `transcendental` from special functions XLA expands into long
        polynomial and rational approximations (lgamma, digamma, igamma, erf_inv, ...: `_SPECIAL`).
    """

    eqns: int
    elementwise: float
    transcendental: float
    dot: float
    linalg: float
    operations: float
    special: float = 0.0


_SPECIAL = frozenset({"lgamma", "digamma", "igamma", "igammac", "igamma_grad_a", "random_gamma_grad", "erf_inv",
                      "bessel_i0e", "bessel_i1e", "polygamma", "zeta", "regularized_incomplete_beta"})
_TRANSCENDENTAL = _SPECIAL | frozenset({
    "exp", "exp2", "log", "log1p", "expm1", "tanh", "logistic", "sin", "cos", "tan", "asin", "acos", "atan",
    "sinh", "cosh", "asinh", "acosh", "atanh", "atan2", "erf", "erfc", "pow", "sqrt", "rsqrt", "cbrt"})
_FREE = frozenset({"reshape", "squeeze", "expand_dims", "broadcast_in_dim", "convert_element_type", "copy",
                   "copy_p", "stop_gradient", "iota", "optimization_barrier", "pvary", "bitcast_convert_type"})
_LINALG = frozenset({"cholesky", "eigh", "lu", "qr", "svd", "householder_product", "geqrf", "schur", "eig"})


def _size(var: Any) -> int:
    shape = getattr(getattr(var, "aval", None), "shape", None)
    return 1 if shape is None else int(np.prod(shape, dtype=np.int64))


def _walk(jaxpr: Any, trips: float, in_while: bool, memo: dict,
          fixed: frozenset = frozenset()) -> tuple[int, np.ndarray, np.ndarray]:
    """(equations, work per run of `jaxpr`, work hoisted out of the outermost `while` loop), each work
    as [elementwise, transcendental, dot, linalg, operations, special].

    Inside the outermost `while` loop (`in_while`), an equation whose operands do not change from one
    trip to the next (`fixed`: the indices of `jaxpr.invars` that do not; the loop's constants, the
    carry it passes through unchanged, the jaxpr's own constants, literals, and what equations make of
    them) runs once: XLA's loop-invariant code motion hoists it (measured: `gammaln` of the data in a
    loop's body, 0.26 us a trip fast-compiled, against 80 us where it depends on the carry), so its work
    is hoisted, not multiplied by the trips. A model's data-only terms (a Poisson's log y!, a binomial
    coefficient) are such work. Nested loops and branches with changing operands count as before."""
    key = (id(jaxpr), in_while, fixed)
    if key in memo:
        return memo[key]
    eqns, work, hoisted = 0, np.zeros(6), np.zeros(6)
    still = set(jaxpr.constvars) | {jaxpr.invars[i] for i in fixed}
    is_still = lambda v: hasattr(v, "val") or v in still  # noqa: E731 - a literal, or an unchanging var
    for eqn in jaxpr.eqns:
        n, own, inner = _eqn_work(eqn, trips, in_while, memo, is_still)
        eqns += n
        if in_while and all(is_still(v) for v in eqn.invars):
            hoisted += own + inner
            still.update(eqn.outvars)
        else:
            work, hoisted = work + own, hoisted + inner
    memo[key] = (eqns, work, hoisted)
    return eqns, work, hoisted


def _fixed(sub_invars: list, operands: list, is_still: Callable) -> frozenset:
    """Indices of a sub-jaxpr's invars bound to unchanging operands (none where they do not align)."""
    if len(sub_invars) != len(operands):
        return frozenset()
    return frozenset(i for i, v in enumerate(operands) if is_still(v))


def _eqn_work(eqn: Any, trips: float, in_while: bool, memo: dict,
              is_still: Callable) -> tuple[int, np.ndarray, np.ndarray]:
    """(equations, work, hoisted work) of one equation, its sub-jaxprs included (see `_walk`)."""
    name, params = eqn.primitive.name, eqn.params
    eqns, work, hoisted = 1, np.zeros(6), np.zeros(6)
    if name not in _FREE:
        work[4] += 1
    if name == "scan":
        inner = params["jaxpr"].jaxpr
        fixed = _fixed(inner.invars[:params["num_consts"]], eqn.invars[:params["num_consts"]], is_still)
        n, w, h = _walk(inner, trips, in_while, memo, fixed)
        return eqns + n, work + params["length"] * w, hoisted + h
    if name == "while":
        times = 1.0 if in_while else trips
        body = params["body_jaxpr"].jaxpr  # the carry positions its body passes through unchanged
        through = [i for i, out in enumerate(body.outvars) if out is body.invars[params["body_nconsts"] + i]]
        loops = ((params["body_jaxpr"], params["body_nconsts"]), (params["cond_jaxpr"], params["cond_nconsts"]))
        for sub, consts in loops:
            fixed = frozenset()
            if not in_while:  # the outermost loop: its constants and the carry passed through
                fixed = frozenset(range(consts)) | frozenset(consts + i for i in through)
            n, w, h = _walk(sub.jaxpr, trips, True, memo, fixed)
            eqns, work, hoisted = eqns + n, work + times * w, hoisted + h
        return eqns, work, hoisted
    if name == "cond":  # the dearest branch runs (nothing is hoisted out of a branch whose index changes)
        found = [_walk(b.jaxpr, trips, in_while, memo) for b in params["branches"]]
        return (eqns + sum(n for n, _, _ in found), work + np.max([w for _, w, _ in found], axis=0),
                hoisted + np.max([h for _, _, h in found], axis=0))
    if name == "dot_general":
        (contract, _), _ = params["dimension_numbers"]
        shape = eqn.invars[0].aval.shape
        work[2] += _size(eqn.outvars[0]) * float(np.prod([shape[d] for d in contract]))
    elif name == "triangular_solve":
        m = eqn.invars[0].aval.shape[-1]
        work[3] += m * _size(eqn.invars[1])
    elif name in _LINALG:
        shape = eqn.invars[0].aval.shape
        work[3] += float(np.prod(shape[:-2])) * shape[-1] ** 3
    else:
        subs = [getattr(v, "jaxpr", v) for v in params.values() if hasattr(getattr(v, "jaxpr", v), "eqns")]
        if subs:  # jit, custom_jvp_call, custom_vjp_call, remat, closed_call, ...
            for sub in subs:
                n, w, h = _walk(sub, trips, in_while, memo, _fixed(sub.invars, eqn.invars, is_still))
                eqns, work, hoisted = eqns + n, work + w, hoisted + h
        elif name in _TRANSCENDENTAL:
            work[1] += max(_size(v) for v in eqn.outvars)
            if name in _SPECIAL:
                work[5] += max(_size(v) for v in eqn.outvars)
        elif name not in _FREE:
            work[0] += max([_size(v) for v in eqn.outvars] + [_size(v) for v in eqn.invars])
    return eqns, work, hoisted


def arithmetic(closed_jaxpr: Any, trips: float = 1) -> Arithmetic:
    """The `Arithmetic` of a traced program (`jax.jit(f).trace(...).jaxpr`), its outermost `while`
    loops run `trips` times (scans their own lengths; a `cond`, its dearest branch), except the work in
    them whose operands do not change from trip to trip, which XLA hoists and runs once (`_walk`).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from advi_jax import compile_options
      >>> f = lambda x: jax.lax.fori_loop(0, 10, lambda i, c: jnp.exp(c), x)
      >>> compile_options.arithmetic(jax.jit(f).trace(jnp.ones(3)).jaxpr).transcendental
      30.0
    """
    eqns, work, hoisted = _walk(getattr(closed_jaxpr, "jaxpr", closed_jaxpr), float(trips), False, {})
    return Arithmetic(int(eqns), *(float(w) for w in work + hoisted))


FAST_EXTRA_SECONDS = Arithmetic(0, elementwise=1.7e-10, transcendental=7.2e-9, dot=0.0, linalg=5e-11,
                                operations=3.1e-9, special=0.0)
"""Seconds of run time the fast options' code costs more than the "mid" code, per unit of each
kind of `Arithmetic` (see the module docstring for the measurements): unvectorised elementwise
loops, transcendental functions evaluated without inlining, a fixed cost per operation run;
matrix products call the same library kernels in both (90 x 90 x 90: 19.9 against 20.4 us), the
expanded triangular solves and factorisations run about twice as slow (90 x 90: 82 against 47 us).
The elementwise price was 5.6e-11 s (fitted on a loaded machine, 2026-11-29); measured again on a
quiet one (2026-12-03, eleven default loops, benchmarks/PERFORMANCE.md) the fast code cost 1.5-2.7
times the estimate on every loop with over 5e5 elementwise numbers a step (ar1_state_space 678
against 319 us a step, radon 872 against 360, reg_horseshoe 323 against 165, breast cancer 237 against
106), and a micro-benchmark puts an unvectorised elementwise number at 0.26-0.5 ns; the least-squares
fit of the eleven (absolute errors, the other prices kept) is 1.73e-10."""

FAST_SAVED_SECONDS_PER_EQN = 1.5e-3
"""Compile CPU seconds the fast options save against "mid", per equation of the program (the
median of 27 programs: 0.7-2.5 ms)."""


MID_EXTRA_SECONDS = Arithmetic(0, elementwise=0.0, transcendental=1e-9, dot=0.0, linalg=0.0, operations=0.0,
                               special=1.2e-8)
"""Seconds of run time the "mid" options' code (`MID_OPTIONS`: the classic fusion emitter, LLVM fully
optimising) costs more than XLA's defaults, per unit of each kind of `Arithmetic`. Measured on the default
fit's loop (benchmarks/PERFORMANCE.md, 2026-12-03; later calls): radon_noncentered (4.7e6 elementwise
numbers a step) 140-169 against 138-182 us a step, a 5,000 x 10 logistic regression (42,000 log-sigmoid
numbers a step) 184-234 against 161-232 us, randhie_poisson (62,000 exp / log) 600 steps in 0.088-0.102
against 0.088-0.094 s, randhie_negbin (64,000 of lgamma / digamma a step, which XLA expands into long
rational approximations) 600 steps in 0.73-0.85 against 0.21-0.31 s: about 1 ns per transcendental number
at most, 12 ns per special-function number."""

MID_SAVED_SECONDS_PER_EQN = 0.8e-3
"""Compile CPU seconds the "mid" options save against XLA's defaults, per equation: the first calls of
those four fits were 0.1-1.6 s shorter with a "mid" loop of 1,089-1,415 equations."""


def mid_extra_seconds(cost: Arithmetic) -> float:
    """The "mid" options' estimated extra run time (seconds) over XLA's defaults for a program of this
    `Arithmetic` (`MID_EXTRA_SECONDS`)."""
    return float(np.dot(MID_EXTRA_SECONDS[1:], cost[1:]))


def fast_extra_seconds(cost: Arithmetic) -> float:
    """The fast options' estimated extra run time (seconds) for a program of this `Arithmetic`: each
    kind of work priced by `FAST_EXTRA_SECONDS`."""
    return float(np.dot(FAST_EXTRA_SECONDS[1:], cost[1:]))


def cost_mode(model: Any, cost: Arithmetic, evals: int | None = None, saved_share: float = 1.0) -> str:
    """"fast" where `saved_share` of the fast options' compile saving exceeds the extra run time of
    their code, both estimated from `cost` (see the module docstring); else `compile_mode(model, evals)`'s
    choice, "mid" where that says "fast", and "mid" too where it says "full" but `saved_share` of the "mid"
    options' compile saving (`MID_SAVED_SECONDS_PER_EQN`) exceeds their code's extra run time
    (`mid_extra_seconds`): a loop over thousands of rows whose work is exp and log (a Poisson or logistic
    regression of 5,000-10,000 rows: its first call 0.9-1.6 s shorter, the same run time), not one of
    lgamma and digamma (a negative binomial's: its steps run 2-3 times longer in "mid" code). Off CPU
    always "full"; a `forced` mode wins.

    Example:
      >>> from advi_jax import compile_options as co
      >>> cheap = co.Arithmetic(eqns=1000, elementwise=1e6, transcendental=1e4, dot=1e6, linalg=0.0, operations=1e3)
      >>> co.cost_mode(None, cheap) == ("fast" if co._on_cpu() else "full")
      True
    """
    if not _on_cpu():
        return "full"
    if _FORCED[0] is not None:
        return _FORCED[0]
    if fast_extra_seconds(cost) <= saved_share * FAST_SAVED_SECONDS_PER_EQN * cost.eqns:
        return "fast"
    return optimised_mode(model, cost, evals, saved_share)


def optimised_mode(model: Any, cost: Arithmetic, evals: int | None = None, saved_share: float = 1.0) -> str:
    """`cost_mode`'s choice where the fast options are not taken: "mid" or "full" (see `cost_mode`)."""
    mode = compile_mode(model, evals)
    if mode == "fast":
        return "mid"
    if mode == "full" and mid_extra_seconds(cost) <= saved_share * MID_SAVED_SECONDS_PER_EQN * cost.eqns:
        return "mid"
    return mode


MODE_OPTIONS = {"fast": FAST_OPTIONS, "mid": MID_OPTIONS, "full": {}}
"""The XLA options of each compile mode."""


def compile_by_cost(jitted: Callable, args: tuple, arrays: Any, evals: int, trips: float = 1) -> Any:
    """`jitted` (a `jax.jit` function) compiled for `args` with the options `cost_mode` picks from the
    traced program's `Arithmetic` (`trips`: the runs of its outermost `while` loops) and, where the
    fast options do not pay, from `arrays` (the arrays it reads, e.g. a model's data a closure holds)
    times `evals`. For programs that close over their model, so `jit`'s model argument cannot say.

    Used by the gradient-variance tools for the programs whose run time is not what they report.
    Measured (`advi-jax variance`, breast cancer, 2-core machine): the tracked fit's program 9.3 s of
    compile with XLA's defaults, 15.5 s "mid", 2.1 s fast, the same run time within noise (about 2 s);
    each estimator's moments 2.4-3.3 s -> about 0.5 s.
    """
    traced = jitted.trace(*args)
    mode = cost_mode(arrays, arithmetic(traced.jaxpr, trips), evals)
    return traced.lower().compile(dict(MODE_OPTIONS[mode]))


def _leaf_key(leaf: Any) -> Any:
    shape = getattr(leaf, "shape", None)
    if shape is None:  # a Python scalar (traced as a weakly typed scalar)
        return type(leaf)
    return tuple(shape), str(getattr(leaf, "dtype", "")), bool(getattr(leaf, "weak_type", False))


class _SizedJit:
    """Three jitted versions of one function; each call picks one by `compile_mode` (the model argument,
    and the program's evaluations where `mode` gives them)."""

    def __init__(self, fun: Callable, model_arg: str | None, jit_kwargs: dict, mode: Callable | None = None):
        self.full = jax.jit(fun, **jit_kwargs)
        self.fast = jax.jit(fun, compiler_options=dict(FAST_OPTIONS), **jit_kwargs)
        self.mid = jax.jit(fun, compiler_options=dict(MID_OPTIONS), **jit_kwargs)
        self._model_arg = model_arg
        self._mode = mode
        self._signature = inspect.signature(fun)
        self._index = None
        names = list(self._signature.parameters)
        static = jit_kwargs.get("static_argnames", ())
        numbers = jit_kwargs.get("static_argnums", ())
        self._static = frozenset(((static,) if isinstance(static, str) else tuple(static))
                                 + tuple(names[i] for i in ((numbers,) if isinstance(numbers, int) else numbers)))
        self._decided: dict = {}  # ByCost decisions by the call's abstract signature
        self._costs: dict = {}  # ... and the `Arithmetic` each was made from
        self._pinned: dict = {}  # modes set by `pin`, by abstract signature
        if model_arg is not None:
            if model_arg not in names:
                raise ValueError(f"model_arg {model_arg!r} is not a parameter of {fun.__name__}: {names}")
            self._index = names.index(model_arg)
        functools.update_wrapper(self, fun)

    def _pick(self, args: tuple, kwargs: dict):
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves((args, kwargs))):
            return self.full  # called inside another traced program: compiled as its part, with its options
        if self._pinned and _on_cpu() and _FORCED[0] is None:
            pinned = self._pinned.get(self._abstract_key(self._signature.bind_partial(*args, **kwargs).arguments))
            if pinned is not None:
                return {"fast": self.fast, "mid": self.mid}.get(pinned, self.full)
        if self._model_arg is None:
            model = None
        elif self._index < len(args):
            model = args[self._index]
        else:
            model = kwargs.get(self._model_arg)
        if self._mode is None:
            mode = compile_mode(model)
        else:
            arguments = self._signature.bind_partial(*args, **kwargs).arguments
            chosen = self._mode(model, arguments)
            if isinstance(chosen, ByCost):
                mode = self._by_cost(model, chosen, args, kwargs, arguments)
            elif isinstance(chosen, str) and _FORCED[0] is None:  # the caller's decision
                mode = chosen if _on_cpu() else "full"
            else:  # a number of evaluations (or None): by the rule (or the forced mode)
                mode = compile_mode(model, None if isinstance(chosen, str) else chosen)
        return {"fast": self.fast, "mid": self.mid}.get(mode, self.full)

    def _by_cost(self, model: Any, chosen: ByCost, args: tuple, kwargs: dict, arguments: dict) -> str:
        """`cost_mode` of this call's traced program, decided once per abstract signature (the trace
        is JAX's own, which the chosen version's call then finds in JAX's caches)."""
        if not _on_cpu() or _FORCED[0] is not None:
            return compile_mode(model, chosen.evals)
        key = self._abstract_key(arguments)
        mode = self._decided.get(key)
        if mode is None:
            cost = arithmetic(self.full.trace(*args, **kwargs).jaxpr, chosen.trips)
            self._costs.setdefault(key, cost)
            mode = self._decided.setdefault(key, cost_mode(model, cost, chosen.evals, chosen.saved_share))
        return mode

    def decision(self, *args, **kwargs) -> tuple[str, Arithmetic] | None:
        """(mode, `Arithmetic`) of the choice a `ByCost` call with this abstract signature made, or None
        where none was made (another rule chose, or nothing was called with these shapes yet)."""
        key = self._abstract_key(self._signature.bind_partial(*args, **kwargs).arguments)
        mode, cost = self._decided.get(key), self._costs.get(key)
        return None if mode is None or cost is None else (mode, cost)

    def _abstract_key(self, arguments: dict) -> tuple:
        """The call's abstract signature: static arguments by value, the others by tree, shapes and dtypes."""
        key = []
        for name, value in arguments.items():
            if name in self._static:
                key.append((name, value))
            else:
                leaves, tree = jax.tree_util.tree_flatten(value)
                key.append((name, tree, tuple(_leaf_key(leaf) for leaf in leaves)))
        return tuple(key)

    def pin(self, mode: str, *args, **kwargs) -> None:
        """Compile every later call with the abstract signature of `args` (arrays or
        `jax.ShapeDtypeStruct`s) in `mode` ("fast", "mid" or "full"), whatever the rule says, on CPU
        and outside a `forced` block. For a program compiled ahead on a background thread
        (`advi_jax.run.ahead`) with options that pay only because the compile is hidden there: the
        fit's own call then finds that program. A signature already pinned keeps its first mode.

        Raises:
          ValueError: a mode other than "fast", "mid" or "full".
        """
        if mode not in ("fast", "mid", "full"):
            raise ValueError(f"mode must be 'fast', 'mid' or 'full', got {mode!r}")
        self._pinned.setdefault(self._abstract_key(self._signature.bind_partial(*args, **kwargs).arguments), mode)

    def __call__(self, *args, **kwargs):
        return self._pick(args, kwargs)(*args, **kwargs)

    def lower(self, *args, **kwargs):
        """`jax.jit(...).lower` of the version this call would run."""
        return self._pick(args, kwargs).lower(*args, **kwargs)

    def _cache_size(self) -> int:
        return self.full._cache_size() + self.fast._cache_size() + self.mid._cache_size()

    def __get__(self, obj, objtype=None):  # usable as a method, like a jitted function
        return self if obj is None else functools.partial(self, obj)


def jit(fun: Callable | None = None, *, model_arg: str | None = "model", mode: Callable | None = None,
        **jit_kwargs) -> Any:
    """`jax.jit(fun, **jit_kwargs)`, compiled with `FAST_OPTIONS` when `fast_compile(model)` says so.

    Args:
      fun: the function (or None, to use `jit(...)` as a decorator factory).
      model_arg: the name of `fun`'s parameter holding the model (its arrays decide), or None for
        a program without one (always fast on CPU).
      mode: None (`fast_compile(model)`), or `mode(model, arguments)` (the call's arguments by
        name) returning the program's number of log-density evaluations for
        `compile_mode(model, evals)` (None: unknown), or the decision itself, "fast", "mid" or "full".
      **jit_kwargs: passed to `jax.jit` (`static_argnames`, `static_argnums`, ...).

    Returns:
      A callable like a jitted function (`lower`, `_cache_size`).

    Example:
      >>> import jax.numpy as jnp
      >>> from advi_jax import compile_options
      >>> @compile_options.jit(model_arg=None)
      ... def double(x):
      ...     return 2 * x
      >>> double(jnp.ones(2)).tolist()
      [2.0, 2.0]
    """
    if fun is None:
        return lambda f: _SizedJit(f, model_arg, jit_kwargs, mode)
    return _SizedJit(fun, model_arg, jit_kwargs, mode)
