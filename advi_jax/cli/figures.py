"""The figures of `advi-jax fit`, drawn by a second Python process while the command works.

Drawing and writing the three PNGs is about 0.4 s of Python after everything else is done, and
importing matplotlib another 0.3-0.5 s, which a thread can only overlap with XLA's compilation
(both hold the GIL). On a command-line run (`advi-jax fit`, not `main(argv)` from Python),
a small Python process is started before the fit (by `start_early`, before the command imports
JAX, or else by `FigureJobs.start`; it imports NumPy and matplotlib and loads the font while the
command imports JAX; the command itself never imports matplotlib), and each figure is sent to
it as soon as its numbers exist: the ELBO trace after the fit, the marginals after the summary,
the predictive check after the check; it draws each in a forked copy of itself, so figures sent
together are drawn at once (`fit_plots.serve`). `finish` waits for the last one. The files are the same as drawn in the command's own process
(the same functions of `fit_plots`, the same dpi and compression).

Elsewhere (a call from Python, no usable interpreter or no matplotlib), the same object draws
the figures in this process at `finish`, as before, with matplotlib imported in the background
(`fit_plots.prefetch`). A figure that cannot be written raises the same `OSError` (message and
all) in either case; a figure process that fails otherwise (it crashed, or Python would not
start) costs a note on stderr and the figures are drawn in the command's process.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import queue
import subprocess
import sys
import threading
import types
from pathlib import Path

# fit_plots imports NumPy: it is imported where this process draws, so that `start_early` can start the
# figure process before the command imports anything heavy
_PLOTS_FILE = str(Path(__file__).with_name("fit_plots.py"))
_early: subprocess.Popen | None = None  # the process `start_early` started, until `FigureJobs.start` takes it

# The figure process runs fit_plots.py as a file (importing the package would import JAX). It ignores
# Ctrl-C: the first one stops the fit early and the command goes on to write its outputs; after a
# second one the command ends, and the process with it (its jobs reach end of file, or `close` kills it).
# When `serve` is done it leaves with os._exit after flushing its replies: the interpreter's teardown of
# matplotlib and NumPy (0.3 s on a slow machine) would otherwise be waited for by `finish`.
_CHILD = ("import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); import os, runpy, sys; "
          "sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "
          "status = runpy.run_path(sys.argv[1], run_name='advi_jax_figures')['serve'](sys.stdin.buffer, sys.stdout); "
          "sys.stdout.flush(); sys.stderr.flush(); os._exit(status)")


def elbo_payload(result) -> types.SimpleNamespace:
    """What `fit_plots.elbo_figure` reads of a `Result`, as plain picklable values."""
    import numpy as np

    return types.SimpleNamespace(elbo=np.asarray(result.elbo), family=types.SimpleNamespace(name=result.family.name),
                                 estimator=result.estimator, method=getattr(result, "method", None))


def check_payload(check) -> types.SimpleNamespace:
    """A `PredictiveCheck` as a namespace of the same fields (the figure process does not import advi_jax)."""
    return types.SimpleNamespace(**check._asdict())


def _spawn() -> subprocess.Popen | None:
    """Start a figure process, or return None where it cannot run (no interpreter, no matplotlib)."""
    if not sys.executable or getattr(sys, "frozen", False) or importlib.util.find_spec("matplotlib") is None:
        return None
    try:
        # one BLAS thread: the figures' arrays are tiny, and `serve` forks (see fit_plots.serve)
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
        return subprocess.Popen([sys.executable, "-c", _CHILD, _PLOTS_FILE], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, close_fds=True, env=env)
    except OSError:
        return None


def start_early() -> None:
    """Start the figure process now, for the next `FigureJobs.start(..., separate=True)` to use.

    Called by a command-line `advi-jax fit` before it imports JAX (`advi_jax.cli.main`), so the
    process's imports of NumPy and matplotlib (about 1.5 s of CPU on a slow machine) run while
    the command imports JAX on the other core, not while it compiles the fit on both. A process
    nobody takes is ended by `discard_early`.
    """
    global _early
    if _early is None:
        _early = _spawn()


def discard_early(process: subprocess.Popen | None = None) -> None:
    """End `process` (default: the early one, if `FigureJobs.start` did not take it)."""
    global _early
    if process is None:
        process, _early = _early, None
    if process is not None:
        process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            try:
                stream.close()
            except OSError:
                pass


class FigureJobs:
    """Figures to write: in a second process (`start(separate=True)`) or in this one at `finish`.

    Example:
      >>> jobs = FigureJobs.start(Path("out"), separate=False)  # doctest: +SKIP
      >>> jobs.add("marginals.png", "marginals", rows); written = jobs.finish()  # doctest: +SKIP
    """

    def __init__(self, out: Path, process: subprocess.Popen | None):
        self.out = Path(out)
        self.process = process
        self.paths: list[Path] = []
        self._jobs: list[tuple[str, Path, object]] = []
        self._queue: queue.Queue = queue.Queue()
        self._sender: threading.Thread | None = None
        self._send_error: BaseException | None = None
        if process is not None:  # pickles go through a thread: a large one must not block the command
            self._sender = threading.Thread(target=self._send, name="advi_jax-figure-jobs", daemon=True)
            self._sender.start()

    @classmethod
    def start(cls, out: Path, separate: bool) -> "FigureJobs":
        """Figures for the folder `out`; with `separate`, in the figure process `start_early` started,
        else in one started now (if possible); without, an early process is ended.

        Args:
          out: the output folder (created at the first `add`).
          separate: draw in a second process (a command-line run) rather than in this one.
        """
        global _early
        process, _early = _early, None
        if separate and process is None:
            process = _spawn()
        elif not separate and process is not None:
            discard_early(process)
            process = None
        if process is None:
            from advi_jax.cli import fit_plots

            fit_plots.prefetch()  # matplotlib's import overlaps the fit's compilation
        return cls(out, process)

    def add(self, name: str, kind: str, payload) -> None:
        """Queue the figure `kind` (a key of `fit_plots.MAKERS`) of `payload`, to be written as `out/name`."""
        path = self.out / name
        self.paths.append(path)
        self._jobs.append((kind, path, payload))
        if self.process is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        self._queue.put(pickle.dumps((kind, str(path), payload), protocol=pickle.HIGHEST_PROTOCOL))

    def _send(self) -> None:
        stdin = self.process.stdin
        try:
            while (job := self._queue.get()) is not None:
                stdin.write(job)
                stdin.flush()
        except (BrokenPipeError, OSError) as err:  # the process ended early: `finish` reports why
            self._send_error = err
        finally:
            try:
                stdin.close()
            except OSError:
                pass

    def finish(self) -> list[Path]:
        """Write (or wait for) every figure added; return their paths in the order added.

        If the figure process fails otherwise than by a file it cannot write (it crashed, or
        could not start Python), the figures are drawn in this process instead, after a note on
        stderr.

        Raises:
          OSError: a figure could not be written (the message of the underlying error).
        """
        if self.process is None:
            return self._draw_here()
        self._queue.put(None)
        self._sender.join()
        reply = self.process.stdout.read().decode(errors="replace")
        status = self.process.wait()
        self.process.stdout.close()
        self.process = None
        line = next((x for x in reply.splitlines() if x.startswith("error\t")), None)
        if line is not None:
            _, kind, name, message = (line.split("\t", 3) + ["", "", ""])[:4]
            if kind == "oserror":
                raise OSError(message)
            why = f"{name}: {message}"
        elif status != 0:
            why = f"it ended with status {status}" + (f" ({self._send_error})" if self._send_error else "")
        else:
            return list(self.paths)
        print(f"advi-jax: the figure process failed ({why}); drawing the figures here", file=sys.stderr)
        return self._draw_here()

    def _draw_here(self) -> list[Path]:
        if self._jobs:
            self.out.mkdir(parents=True, exist_ok=True)
        for kind, path, payload in self._jobs:
            from advi_jax.cli import fit_plots

            fit_plots.save(getattr(fit_plots, fit_plots.MAKERS[kind])(payload), path)
        self._jobs.clear()
        return list(self.paths)

    def close(self) -> None:
        """Stop the figure process if `finish` was not reached (an error or Ctrl-C in the command)."""
        if self.process is None:
            return
        process, self.process = self.process, None
        process.kill()
        self._queue.put(None)
        process.wait()
        if self._sender is not None:
            self._sender.join(timeout=5)
        process.stdout.close()
