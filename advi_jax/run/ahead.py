"""Compile a fit's later programs on a background thread while its start compiles.

A first call of `aj.fit` on a small model spends most of its time compiling: the start
(`advi_jax.run.start._start_program`), then the driver's loop (`driver.init_loop`,
`driver.run_chunk`), `single.finish`, `laplace.transform` and the diagnostics' draws
(`importance.draws_and_log_ratios`), one after the other. The shapes and static settings of the
later programs are known before the start runs (the run model is the model, or a `Whitened`
view of it with a (K,) shift and a (K, K) factor), so they can be traced, lowered and compiled
from abstract arguments (`jax.ShapeDtypeStruct`) on a second thread. XLA compiles without
holding Python's GIL, so on a machine with two or more cores the later programs compile while
the start compiles. JAX caches what `jit(f).lower(...).compile()` builds, and the fit's own
later call of `f` with concrete arguments of the same shapes finds it: nothing compiles twice,
and the numbers are the same as without the thread (the same programs run on the same inputs),
except the diagnostics' draws and ratios where the thread compiles their program with XLA's full
options (`importance.compile_ahead`: its compile is hidden there, its run time is not); they then
agree with the fast code's to float32 rounding.

The background thread waits until the main thread has traced and lowered the start (`release`),
so the two threads' Python work (tracing and lowering, which hold the GIL) does not interleave
with it. The main thread waits (`wait(name)`) for a program before it calls it, so a call never
compiles a program the thread is compiling. A guess that turns out wrong (the start fell back
to zero, so the run model is the plain model) costs the thread's CPU time, never a wrong result:
the fit's call then compiles its own program as it would without the thread. An error on the
thread (which the fit's own call would raise again, with its message) ends the thread quietly.

`aj.fit` uses the thread where the loop compiles with `compile_options.FAST_OPTIONS` or
`MID_OPTIONS` (`advi_jax.run.single._AHEAD_MODES`), or chooses between them by its own arithmetic
(`compile_options.ByCost`: the thread traces the loop, reads its arithmetic and compiles the
chosen version; the fit's call finds that choice and that program): the start program compiles with the fast
options, on one core, so the loop's compile has the second. Measured (benchmarks/PERFORMANCE.md,
two cores): eight schools' first call 1.37-1.40 s against 1.98-2.06 s compiled on one thread;
with a "mid" loop (breast cancer, wells, radon) 0.5-1.0 s shorter.
Once the start is done the main thread has nothing to do until the loop is compiled, and the jobs
after the loop (its finish, the whitening's transform, the diagnostics' draws) do not need the loop's
program: `help` runs them on a second thread meanwhile, on the core the start used, so they compile
while the loop compiles and runs instead of after its compile.
`disabled()` turns the threads off (benchmarks and tests compare the two).

Example:
  >>> from advi_jax.run.ahead import Ahead
  >>> ahead = Ahead([("double", lambda done: done.update(double=2 * 21))])
  >>> ahead.release()
  >>> ahead.wait("double")
  42
"""

from __future__ import annotations

import atexit
import contextlib
import threading
from typing import Any, Callable, Iterator

import jax

__all__ = ["Ahead", "disabled", "enabled", "leave"]

_ENABLED = [True]
_LEFT: list = []


def leave(ahead: "Ahead") -> None:
    """Let `ahead`'s job run on after its caller is done with it (a compile the caller no longer waits
    for); it is joined when the interpreter exits (a daemon thread inside XLA at exit may crash it)."""
    _LEFT[:] = [a for a in _LEFT if a._thread.is_alive()] + [ahead]


@atexit.register
def _join_left() -> None:
    for ahead in _LEFT:
        ahead.close()


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Within the block, fits compile everything on the calling thread, one program after another."""
    before = _ENABLED[0]
    _ENABLED[0] = False
    try:
        yield
    finally:
        _ENABLED[0] = before


def enabled() -> bool:
    """Whether fits compile their later programs ahead on a background thread (see `disabled`)."""
    return _ENABLED[0]


class Ahead:
    """Runs `jobs` in order on a daemon thread once `release()` is called.

    Args:
      jobs: (name, job) pairs; `job(done)` gets the dict of earlier jobs' results (by name) and
        stores its own result in it under its name (the later jobs read the abstract outputs of
        the earlier ones from it).
      x64: run the jobs under `jax.enable_x64(x64)` (a thread-local setting: pass the caller's),
        or None to leave the thread's as it is. The caller's matrix-product precision (also
        thread-local; `advi_jax.run.precision`) is always carried over, so the thread traces the
        programs the caller will call.
      name: the thread's name (as logs show it).
    """

    def __init__(self, jobs: list[tuple[str, Callable[[dict], Any]]], x64: bool | None = None,
                 name: str = "advi_jax-compile-ahead"):
        self._jobs = list(jobs)
        self._x64 = x64
        self._precision = jax.config.jax_default_matmul_precision  # the caller's, read on its thread
        self._done: dict[str, Any] = {}
        self._events = {name: threading.Event() for name, _ in self._jobs}
        self._go = threading.Event()
        self._claim_lock = threading.Lock()
        self._claimed: dict[str, int] = {}  # the thread that began each job begun (`_claim`)
        self._cancelled = False
        self._interrupted = False
        self._helper: threading.Thread | None = None
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def _work(self, jobs: list | None = None) -> None:
        self._go.wait()
        try:
            with contextlib.ExitStack() as stack:
                if self._x64 is not None:
                    stack.enter_context(jax.enable_x64(self._x64))
                if self._precision is not None:
                    stack.enter_context(jax.default_matmul_precision(self._precision))
                self._run_jobs(self._jobs if jobs is None else jobs)
        except KeyboardInterrupt:  # raised by the user's code while tracing: the waiting call raises it
            self._interrupted = True
        except Exception:  # noqa: BLE001 - the fit's own call raises it again, with its message
            pass
        finally:  # the jobs this thread began and those nobody began (abandoned): done
            mine = threading.get_ident()
            with self._claim_lock:
                for name, _ in self._jobs if jobs is None else jobs:
                    if self._claimed.setdefault(name, mine) == mine:
                        self._events[name].set()

    def _claim(self, name: str) -> bool:
        """Whether the calling thread may run job `name` (no thread has begun it); it is then begun."""
        with self._claim_lock:
            return self._claimed.setdefault(name, threading.get_ident()) == threading.get_ident()

    def _run_jobs(self, jobs: list) -> None:
        for name, job in jobs:
            if self._cancelled:
                break
            if not self._claim(name):  # the other thread took it (`help`): later jobs may read its result
                self._events[name].wait()
                continue
            job(self._done)
            self._done.setdefault(name, None)
            self._events[name].set()

    def help(self, busy: str) -> None:
        """While job `busy` runs, run the jobs after it on a second daemon thread, in order, each
        unless a thread has begun it (the first thread then skips it; either may read the other's
        results, waiting for them; none may read `busy`'s). Stops at the first job that raises (the
        caller's own call of the program raises it again, with its message) or when cancelled.
        Returns at once.

        `aj.fit` calls it when its start is done and its loop's compile (`busy`, on the first thread)
        is not: the programs after the loop (`single.finish`, the whitening's transform, the
        diagnostics' draws) then compile on the core the start used, while the loop compiles and
        then runs, instead of after the loop's compile (benchmarks/PERFORMANCE.md)."""
        if busy not in self._events or self._cancelled or self._events[busy].is_set():
            return
        names = [name for name, _ in self._jobs]
        later = self._jobs[names.index(busy) + 1:]
        self._helper = threading.Thread(target=self._work, args=(later,), name=self._thread.name + "-2", daemon=True)
        self._helper.start()

    def release(self) -> None:
        """Let the thread start (call it once the main thread's own tracing is done)."""
        self._go.set()

    def wait(self, name: str) -> Any:
        """Wait until job `name` is done (or the thread ended early); its result, or None.

        Raises:
          KeyboardInterrupt: the thread's tracing was interrupted (as the calling thread's own
            tracing would have been) before job `name` was done.
        """
        self._go.set()
        event = self._events.get(name)
        if event is not None:
            event.wait()
        if self._interrupted and name not in self._done:
            self._interrupted = False
            raise KeyboardInterrupt
        return self._done.get(name)

    def cancel(self) -> None:
        """Stop after the job that is running (the fit raised or ended early)."""
        self._cancelled = True
        self._go.set()

    def close(self) -> None:
        """`cancel`, then wait for the thread to end, so that no compile outlives the fit (an
        interpreter that exits while a daemon thread is inside XLA may crash on the way out)."""
        self.cancel()
        self._thread.join()
        if self._helper is not None:
            self._helper.join()
