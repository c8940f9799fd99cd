"""The one driver: a compiled, chunked loop that runs any `VIAlgorithm` (see `advi_jax.base`).

One jitted function, `run_chunk`, runs steps of an algorithm inside a `lax.while_loop` until a
traced bound `stop` or a stop flag. The model is an *argument* (its data are pytree leaves), the
settings are static and hashable, and the bounds are traced integers, so a second fit with the
same shapes and settings compiles nothing, whatever `num_steps` is (`num_traces()` counts how
often the loop body was traced; a test checks it stays put). Between calls Python only updates
the progress bar, calls the user's `callback`, and reads the stop flags.

Three shapes of run share the loop:

* one fit (`settings.num_fits is None`): the step runs as is;
* B fits (`num_fits=B`): the step runs under `jax.vmap` (over the model too when its data carry a
  leading batch axis) with a per-fit mask: a fit that has stopped keeps its state;
* per-step inputs (`settings.inputs`): each call gets a chunk of inputs with a leading axis of
  `chunk_size` (minibatch indices gathered from the device copy of the data, or minibatches
  streamed from the host); step t of the call uses entry t. This is how minibatching is a batch
  source of the same loop (`advi_jax.run.minibatch`).

Stopping rule (optional, `tol_rel_obj`), after Stan's: every `eval_every` steps the mean of the
per-step ELBO estimates over those steps is compared with the previous such mean; the relative
change |new - old| / |new| goes into a circular buffer of `window` entries, and once the buffer
is full the fit stops when the mean or the median of the buffer falls below `tol_rel_obj`.
Averaging the steps' own estimates costs no extra draws, and waiting for a full buffer avoids
stopping on one lucky comparison. A deterministic algorithm's own test (`StepInfo.converged`)
also stops it.

Non-finite steps: the algorithm reports `finite=False` and keeps its state (its contract); the
driver counts them and stops a fit after `max_consecutive_nonfinite` in a row.

A switch of programs (`Switch`, optional): a loop compiled with the fast options (`compile_options`)
may run its steps from a step fixed in advance on the same loop compiled with the optimising
options, compiled meanwhile on a background thread (`advi_jax.run.ahead`). The switch step is fixed
and every call switches there (waiting for the compile if it has not ended), so a fit gives the
same numbers on every call; the two programs compute the same steps to float32 rounding.

Ctrl-C: a `KeyboardInterrupt` (from the keyboard or raised by `callback`) between or during calls
keeps the state after the last completed call; during compilation the initial state is kept.
The stop reason says which (`STOP_REASONS`).
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from advi_jax import compile_options
from advi_jax._types import Array
from advi_jax.base import Family, StepInfo
from advi_jax.run.ahead import Ahead, leave

__all__ = ["Settings", "LoopState", "Convergence", "Progress", "Outcome", "STOP_REASONS", "init_loop", "run_chunk",
           "drive", "num_traces", "stop_reason", "CALL_SECONDS", "Switch"]

CALL_SECONDS = 0.25
"""Target wall time of one compiled call of the loop (between progress-bar updates)."""

STOP_REASONS = {
    0: "reached num_steps",
    1: "converged: mean relative ELBO change below tol_rel_obj",
    2: "converged: median relative ELBO change below tol_rel_obj",
    3: "stopped: too many consecutive non-finite steps (last finite parameters kept)",
    4: "converged: the method's own convergence test passed",
    -1: "interrupted by the user (last parameters kept)",
    -2: "interrupted by the user during compilation (the initial state is returned)",
}
"""The one table of stop codes; every entry point reports through `stop_reason`."""

_TRACES = [0]


def num_traces() -> int:
    """How many times the driver's loop has been traced (compiled) in this process.

    A second fit with the same shapes and settings must leave it unchanged.

    Example:
      >>> from advi_jax.run import num_traces
      >>> before = num_traces()  # doctest: +SKIP
    """
    return _TRACES[0]


class Settings(NamedTuple):
    """The driver's static settings (hashable; part of the compilation key)."""

    method: Any  # an algorithm module of advi_jax.vi (NAME, build, ...)
    family: Family
    options: Any  # the method's Options
    chunk_size: int = 1000
    eval_every: int = 100
    window: int = 10
    tol_rel_obj: float = 0.0  # <= 0: never stop on convergence
    max_consecutive_nonfinite: int = 50
    num_fits: int | None = None  # None: one fit; B: B fits under vmap
    model_batched: bool = False  # the model's data carry a leading axis of B
    inputs: str | None = None  # None, "indices" (gather from model.data) or "batches" (given)
    batch_size: int = 0  # minibatch size with inputs
    batch_sharding: Any = None
    compile: str | None = None  # "fast" / "mid" / "full": the loop's XLA options (`compile_options`); None: by size


class Convergence(NamedTuple):
    running_sum: Array
    previous: Array
    rel_changes: Array
    count: Array
    stop_code: Array  # see STOP_REASONS


class LoopState(NamedTuple):
    """What the loop carries for one fit (every leaf gets a leading B axis for B fits).

    Attributes:
      state: the algorithm's state.
      step, num_nonfinite, consecutive_nonfinite: int32 counters.
      num_grad_evals, num_logp_evals: int32 sums of the steps' `StepInfo` counters.
      conv: the stopping rule's state and the stop code.
    """

    state: Any
    step: Array
    num_nonfinite: Array
    consecutive_nonfinite: Array
    num_grad_evals: Array
    num_logp_evals: Array
    conv: Convergence


class Progress(NamedTuple):
    """Passed to a `callback` after every compiled call (raise KeyboardInterrupt to stop)."""

    step: int  # steps done (the furthest fit's, for B fits)
    num_steps: int
    elbo: float  # mean ELBO estimate of the last (up to) 100 finite steps
    num_nonfinite: int
    seconds: float


class Outcome(NamedTuple):
    """What `drive` returns."""

    loop: LoopState  # on the host side: device arrays
    elbo: np.ndarray  # (steps,) or (B, max steps), NaN-padded
    stop_codes: np.ndarray  # () or (B,)
    compile_seconds: float
    run_seconds: float


def _init_convergence(window: int, dtype) -> Convergence:
    return Convergence(jnp.zeros((), dtype), jnp.full((), jnp.nan, dtype), jnp.full((window,), jnp.inf, dtype),
                       jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def _advance(cfg: Settings, loop: LoopState, new_state: Any, info: StepInfo) -> LoopState:
    """Count the step and update the stopping rule."""
    bad = (~info.finite).astype(jnp.int32)
    step = loop.step + 1
    consecutive = (loop.consecutive_nonfinite + bad) * bad
    conv = loop.conv
    code = jnp.where(info.converged & info.finite, 4, 0)
    if cfg.tol_rel_obj > 0:
        running = conv.running_sum + jnp.where(info.finite, info.elbo, 0.0).astype(conv.running_sum.dtype)
        at_eval = (step % cfg.eval_every) == 0
        current = running / cfg.eval_every
        rel = jnp.abs(current - conv.previous) / jnp.maximum(jnp.abs(current), jnp.finfo(current.dtype).tiny)
        push = at_eval & jnp.isfinite(conv.previous)
        rel_changes = jnp.where(push, conv.rel_changes.at[conv.count % cfg.window].set(rel), conv.rel_changes)
        count = conv.count + push.astype(jnp.int32)
        check = push & (count >= cfg.window)
        code = jnp.where(check & (jnp.mean(rel_changes) < cfg.tol_rel_obj), 1,
                         jnp.where(check & (jnp.median(rel_changes) < cfg.tol_rel_obj), 2, code))
        conv = Convergence(jnp.where(at_eval, 0.0, running), jnp.where(at_eval, current, conv.previous),
                           rel_changes, count, conv.stop_code)
    code = jnp.where(consecutive >= cfg.max_consecutive_nonfinite, 3, code)
    conv = conv._replace(stop_code=jnp.maximum(conv.stop_code, code))
    return LoopState(new_state, step, loop.num_nonfinite + bad, consecutive,
                     loop.num_grad_evals + info.num_grad_evals, loop.num_logp_evals + info.num_logp_evals, conv)


def _model_at(model: Any, inputs: Any, i: Array, cfg: Settings) -> Any:
    """The log density the step sees: the model, or the minibatch model of step i's input."""
    if cfg.inputs is None:
        return model
    if cfg.inputs == "indices":
        idx = inputs[i]
        batch = jax.tree_util.tree_map(lambda x: jnp.take(x, idx, axis=0), model.data)
    else:
        batch = jax.tree_util.tree_map(lambda x: x[i], inputs)
    if cfg.batch_sharding is not None:
        batch = jax.lax.with_sharding_constraint(batch, cfg.batch_sharding)
    return model.batch_model(batch, cfg.batch_size)


def _one_step(cfg: Settings, model: Any, inputs: Any, start: Array, key: Array, loop: LoopState):
    i = loop.step - start
    algorithm = cfg.method.build(_model_at(model, inputs, i, cfg), cfg.family, cfg.options)
    new_state, info = algorithm.step(key, loop.state)
    return _advance(cfg, loop, new_state, info), info.elbo


def _select(mask: Array, new, old):
    def pick(a, b):
        return jnp.where(jnp.reshape(mask, mask.shape + (1,) * (a.ndim - 1)), a, b)

    return jax.tree_util.tree_map(pick, new, old)


def _init_mode(model: Any, args: dict) -> Any:
    """`init_loop`'s options: chosen by its own arithmetic (one pass, `compile_options.ByCost`) where the
    loop's options are "mid" or "full"; those are for a program of many steps, while the start makes one
    or a few evaluations (the low-rank negative binomial's start: 0.6-1.3 s of "mid" compile against
    about 0.1 s fast)."""
    mode = args["cfg"].compile
    return compile_options.ByCost(1) if mode in ("mid", "full") else mode


@compile_options.jit(static_argnames=("cfg",), mode=_init_mode)
def init_loop(model: Any, keys: Array, locs: Array, cfg: Settings) -> LoopState:
    """The initial `LoopState`: `method.build(...).init(key, loc)` and zero counters.

    For B fits `keys` is (B,) and `locs` is (B, K); otherwise a key and a (K,) location.
    """

    def one(m, key, loc):
        algorithm = cfg.method.build(m, cfg.family, cfg.options)
        zero = jnp.zeros((), jnp.int32)
        return LoopState(algorithm.init(key, loc), zero, zero, zero, zero, zero,
                         _init_convergence(cfg.window, loc.dtype))

    if cfg.num_fits is None:
        return one(model, keys, locs)
    return jax.vmap(one, in_axes=(0 if cfg.model_batched else None, 0, 0))(model, keys, locs)


@compile_options.jit(static_argnames=("cfg",), mode=lambda model, args: args["cfg"].compile)
def run_chunk(model: Any, loop: LoopState, keys: Array, stop: Array, inputs: Any, cfg: Settings):
    """Run steps until each fit reaches `stop` or its stop flag; returns (loop, trace).

    Step t of a fit uses `fold_in(key, t)` whatever the chunking. `trace` holds the chunk's
    per-step ELBO values, shape (chunk_size,) or (B, chunk_size), NaN after the last step run.
    """
    _TRACES[0] += 1
    start = loop.step
    dtype = loop.conv.running_sum.dtype
    n = cfg.chunk_size
    if cfg.num_fits is None:
        # The chunk's keys in one vectorised call, cheaper than a scalar fold_in in every step
        # (none for a method whose step ignores its key, `STEP_KEYS = False`: the run key is passed).
        step_keys = (jax.vmap(lambda i: jax.random.fold_in(keys, i))(start + jnp.arange(n, dtype=start.dtype))
                     if getattr(cfg.method, "STEP_KEYS", True) else None)

        def cond(carry):
            lp, _ = carry
            return (lp.step < stop) & (lp.conv.stop_code == 0)

        def body(carry):
            lp, tr = carry
            key = keys if step_keys is None else step_keys[lp.step - start]
            new, elbo = _one_step(cfg, model, inputs, start, key, lp)
            return new, tr.at[lp.step - start].set(elbo.astype(dtype))

        return jax.lax.while_loop(cond, body, (loop, jnp.full((n,), jnp.nan, dtype)))

    num_fits = cfg.num_fits
    step_all = jax.vmap(functools.partial(_one_step, cfg),
                        in_axes=(0 if cfg.model_batched else None, None, 0, 0, 0))

    def active(lp):
        return (lp.step < stop) & (lp.conv.stop_code == 0)

    def cond(carry):
        return jnp.any(active(carry[0]))

    def body(carry):
        lp, tr = carry
        live = active(lp)
        step_keys = jax.vmap(jax.random.fold_in)(keys, lp.step) if getattr(cfg.method, "STEP_KEYS", True) else keys
        new, elbo = step_all(model, inputs, start, step_keys, lp)
        # A finished fit writes out of bounds (dropped) and keeps its state.
        index = jnp.where(live, lp.step - start, n)
        tr = tr.at[jnp.arange(num_fits), index].set(elbo.astype(dtype), mode="drop")
        return _select(live, new, lp), tr

    return jax.lax.while_loop(cond, body, (loop, jnp.full((num_fits, n), jnp.nan, dtype)))


class Switch(NamedTuple):
    """Run the steps from `at` on with `program` (`run_chunk`'s version with other compiler options,
    e.g. `run_chunk.mid`), compiling it from step `begin` on (`begin` <= `at`) on a background thread,
    or at `at` on the calling thread where `background` is False."""

    begin: int
    at: int
    program: Callable
    background: bool = True


def _start_compile(switch: Switch, model: Any, loop: LoopState, keys: Array, cfg: Settings) -> Ahead | None:
    """Compile `switch.program` for these arguments: on a background thread (the `Ahead` returned;
    its `wait("switch")` returns once it is compiled), or here (None returned)."""

    def job(done):
        switch.program.lower(model, loop, keys, np.int32(0), None, cfg).compile()

    if not switch.background:
        job({})
        return None
    worker = Ahead([("switch", job)], x64=jnp.result_type(float) == jnp.float64, name="advi_jax-compile-switch")
    worker.release()
    return worker


def stop_reason(code: int, num_nonfinite: int, max_consecutive: int, reached: str = "reached num_steps",
                kept_finite: bool = True) -> str:
    """The stop code in words, with the count of skipped non-finite steps (`kept_finite`: whether the
    parameters returned are finite, as the last finite state kept promises)."""
    if code == 0:
        reason = reached
    elif code == 3:
        reason = (f"stopped: {max_consecutive} consecutive steps had a non-finite ELBO or gradient "
                  f"({num_nonfinite} skipped in all)")
        if kept_finite:
            reason += "; the last finite parameters are kept"
    else:
        reason = STOP_REASONS[code]
    if code != 3 and num_nonfinite > 0:
        reason += (f" ({num_nonfinite} steps with a non-finite ELBO or gradient were skipped: q put draws where "
                   "the log density is not finite)")
    return reason


def _recent_elbo(trace: np.ndarray) -> float:
    tail = trace[..., -min(trace.shape[-1], 100):]
    return float(np.nanmean(tail)) if np.isfinite(tail).any() else float("nan")


def drive(model: Any, loop: LoopState, keys: Array, cfg: Settings, num_steps: int, *,
          inputs: Iterator[tuple[Any, int]] | None = None, progress: bool = False, desc: str = "fit",
          callback: Callable[[Progress], Any] | None = None,
          before_compile: Callable[[], Any] | None = None,
          switch: Callable[[], Switch | None] | None = None) -> Outcome:
    """Run the loop from `loop` until `num_steps`, every fit's stop flag, or a KeyboardInterrupt.

    Args:
      model: the log density (or the `MinibatchModel`, or its data-free statics with streamed
        batches); a jit argument.
      loop: from `init_loop`.
      keys: the run key (one fit) or (B,) per-fit run keys.
      cfg: static `Settings`.
      num_steps: the step budget.
      inputs: with `cfg.inputs`, an iterator of (chunk of per-step inputs, steps in it); each
        call runs one chunk. Without, calls are sized to take about `CALL_SECONDS`.
      progress: show a tqdm bar.
      desc: the bar's label.
      callback: called with a `Progress` after every call; a KeyboardInterrupt it raises stops
        the run as Ctrl-C does.
      before_compile: called first, as part of the compilation (a Ctrl-C there returns the
        initial state): `aj.fit` waits there for the loop its background thread compiles
        (`advi_jax.run.ahead`).
      switch: called once the loop has compiled; a `Switch` it returns moves the run to another
        version of the loop at a fixed step (see the module docstring); None: no switch. Only
        for runs without per-step `inputs`.

    Returns:
      An `Outcome`; `compile_seconds` is the first (zero-step) call, which only compiles.
    """
    batched = cfg.num_fits is not None
    worker = None
    stop0 = np.int32(0)  # numpy scalars: jnp.asarray(0, jnp.int32) would compile a conversion
    compiling = True
    bar = None
    traces: list[np.ndarray] = []
    done = 0
    codes = np.zeros((cfg.num_fits,) if batched else (), np.int32)
    compile_seconds = run_seconds = 0.0
    started = time.perf_counter()
    try:
        first = next(inputs, None) if inputs is not None else None
        # A zero-step call: compiles (or finds the compiled loop) and runs nothing, so the
        # compile time is measured apart from the run time.
        tick = time.perf_counter()
        if before_compile is not None:
            before_compile()
        jax.block_until_ready(run_chunk(model, loop, keys, stop0, first[0] if first is not None else None, cfg))
        compile_seconds = time.perf_counter() - tick
        compiling = False
        plan = switch() if switch is not None and inputs is None else None
        program, begun = run_chunk, False
        started = time.perf_counter()
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=num_steps, desc=desc, unit="step", leave=True, dynamic_ncols=True)
        per_call = min(cfg.chunk_size, 100)
        current = first
        while done < num_steps and not np.all(codes != 0):
            if inputs is not None:
                if current is None:
                    break
                chunk_inputs, count = current
                stop = min(done + count, num_steps)
            else:
                chunk_inputs, stop = None, min(done + per_call, num_steps)
            if plan is not None and program is run_chunk:
                if not begun and done >= plan.begin:
                    worker, begun = _start_compile(plan, model, loop, keys, cfg), True
                if done >= plan.at:  # the fixed step: every call switches here
                    if worker is not None:
                        worker.wait("switch")
                    worker, program = None, plan.program
                else:
                    stop = min(stop, plan.at)
            tick = time.perf_counter()
            new_loop, trace = program(model, loop, keys, np.int32(stop), chunk_inputs, cfg)
            if inputs is not None:
                current = next(inputs, None)  # issued before the result is read: transfer overlaps compute
            steps, new_codes, skipped, trace = jax.device_get(
                (new_loop.step, new_loop.conv.stop_code, new_loop.num_nonfinite, trace))
            loop = new_loop
            furthest = int(np.max(steps))
            ran = furthest - done
            traces.append(np.asarray(trace[..., :ran]))
            codes = np.asarray(new_codes)
            if ran and inputs is None:
                per_step = (time.perf_counter() - tick) / ran
                per_call = int(np.clip(CALL_SECONDS / max(per_step, 1e-9), 1, cfg.chunk_size))
            done = furthest
            if bar is not None:
                bar.update(ran)
                bar.set_postfix(elbo=f"{_recent_elbo(traces[-1]):.4g}", skipped=int(np.sum(skipped)), refresh=False)
            if callback is not None:
                callback(Progress(done, num_steps, _recent_elbo(traces[-1]), int(np.sum(skipped)),
                                  time.perf_counter() - started))
            if ran == 0 and inputs is None:
                break
    except KeyboardInterrupt:
        codes = np.where(codes == 0, -2 if compiling else -1, codes).astype(np.int32)
    finally:
        if bar is not None:
            bar.close()
        if worker is not None:  # the run ended before the switch: the compile goes on, joined at the latest at exit
            leave(worker)
    run_seconds = time.perf_counter() - started
    dtype = np.dtype(jnp.result_type(float))
    if traces:
        elbo = np.concatenate(traces, axis=-1)
    else:
        elbo = np.zeros(((cfg.num_fits,) if batched else ()) + (0,), dtype)
    return Outcome(loop, elbo, codes, compile_seconds, run_seconds)
