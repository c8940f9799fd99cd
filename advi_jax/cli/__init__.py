"""The `advi-jax` command: `fit`, `vae` and `variance` sub-commands.

Each sub-command lives in its own module exposing `add_parser(subparsers)` (which registers the
sub-command and sets `func` on its parser) so the jobs stay independent. Bad input exits with
status 2 and a one-line message, never a traceback.

Compilation cache: run as a command (`advi-jax ...`, `python -m advi_jax ...`), the compiled
XLA programs are kept in JAX's persistent compilation cache (`advi_jax.compilation_cache`: a
folder of the advi_jax cache named after the jax version and this machine's CPU), so a second
run on data of the same shape loads them instead of compiling (most of a small fit's time).
Set `ADVI_JAX_COMPILATION_CACHE=0` to turn it off; a `JAX_COMPILATION_CACHE_DIR` you set is used
as it is. `main(argv)` called from Python leaves JAX's settings alone.

Small data, cheaper compilation: on a table of at most `FAST_COMPILE_ENTRIES` numbers (rows x
(features + 1)), compiling is almost all of a command's cost and running the programs almost
none, so a command-line `fit` asks XLA for its lowest backend optimisation level
(`--xla_backend_optimization_level=0` in `XLA_FLAGS`, set before JAX starts its backend): about a
third less compile time on the bundled breast-cancer data, while its programs run a few times
slower (milliseconds there). Larger tables keep XLA's default (on the 20,190-row bundled counts
the cheaper level made the command slower overall). An `XLA_FLAGS` that already sets the level,
or `ADVI_JAX_FAST_COMPILE=0`, leaves it alone.

Work beside the fit (`fit`): the programs run after the fit (the diagnostics' draws, the
command's draws and predictive replications) are compiled in a background thread while the fit
compiles its own (`advi_jax.cli.warmup`), and on a command-line run the figures are drawn by a
second Python process as their numbers arrive (`advi_jax.cli.figures`), so the command itself
never imports matplotlib. That process is started first thing, before JAX is imported
(`import advi_jax` and this module load no JAX), so that its own imports run beside JAX's on a
second core. Both leave every output as it was.

Ending: a command-line run ends its process as soon as the command is done (`end_process`):
standard output and error are flushed and the `atexit` functions run, then the process exits
without the interpreter's teardown (unloading JAX, XLA and NumPy took 0.5-0.7 s of a 4-5 s
`advi-jax fit` on a slow machine). Every file the command writes is closed before that.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import math
import os
import sys
import threading
import warnings

from advi_jax._extras import MissingExtraError
from advi_jax.compilation_cache import enable_compilation_cache

_SUBCOMMANDS = (
    "advi_jax.cli.fit",
    "advi_jax.cli.vae",
    "advi_jax.cli.variance",
    "advi_jax.cli.build",
)

EPILOG = """examples:
  advi-jax fit                                   # logistic regression on the bundled breast-cancer data
  advi-jax fit --model poisson --family fullrank
  advi-jax fit --data my.csv --target y --out results/
  advi-jax vae --epochs 5 --latent 2             # VAE on MNIST
  advi-jax variance --draws 1000                 # gradient-estimator variance table and plots
"""


class UsageError(Exception):
    """Bad input from the command line: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump): `advi-jax fit: error: ... (see --help)`."""

    def error(self, message):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def seed_int(text: str) -> int:
    """argparse type: an int that `jax.random.key` takes (a signed 64-bit integer)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not -2**63 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"expected an integer in [-2^63, 2^63), got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The `advi-jax` parser. With `only` (a sub-command's name) only that sub-command's module is
    imported and registered in full; the others get a bare entry (importing `vae` loads flax,
    which a `fit` run does not need)."""
    parser = _Parser(
        prog="advi-jax",
        description="Automatic-differentiation variational inference in JAX.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.unavailable = {}  # sub-command -> the ModuleNotFoundError of its missing extra
    subparsers = parser.add_subparsers(dest="command", metavar="{fit,vae,variance,build}")
    for module_name in _SUBCOMMANDS:
        if only is not None and module_name.rsplit(".", 1)[-1] != only:
            subparsers.add_parser(module_name.rsplit(".", 1)[-1])
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and module_name.startswith(err.name):
                continue  # sub-command not part of this build
            raise
        try:
            module.add_parser(subparsers)
        except ModuleNotFoundError as err:  # needs an extra (e.g. flax for `vae`): say which when it is run
            name = module_name.rsplit(".", 1)[-1]
            _add_unavailable(subparsers, name, err)
            parser.unavailable[name] = err
    return parser


def _add_unavailable(subparsers, name: str, err: ModuleNotFoundError) -> None:
    """Register a sub-command whose optional dependency is missing: running it names the extra."""
    from advi_jax._extras import missing_extra_message

    hint = missing_extra_message(err)
    if hint is None:
        raise err
    if name not in subparsers.choices:  # add_parser may have failed after registering the name
        subparsers.add_parser(name, help=f"(unavailable: {hint})")


FAST_COMPILE_ENTRIES = 2 ** 15
FAST_COMPILE_VARIABLE = "ADVI_JAX_FAST_COMPILE"
_command_line = False


def fast_compile_for_small_data(num_rows: int, num_columns: int) -> bool:
    """On a command-line run, ask XLA for cheap compilation when the data are small (module docstring).

    Must run before JAX's backend starts (the flag is read once); otherwise, or when the table is
    larger than `FAST_COMPILE_ENTRIES` numbers, or on a call from Python, it changes nothing.

    Args:
      num_rows, num_columns: the shape of the table the command will fit.

    Returns:
      Whether the flag was set.
    """
    if not _command_line or num_rows * num_columns > FAST_COMPILE_ENTRIES:
        return False
    if os.environ.get(FAST_COMPILE_VARIABLE, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" in flags:
        return False
    from jax._src import xla_bridge

    if getattr(xla_bridge, "_backends", None):  # the backend has started: the flag would be ignored
        return False
    os.environ["XLA_FLAGS"] = (flags + " --xla_backend_optimization_level=0").strip()
    return True


def command_line() -> bool:
    """Whether this is a command-line run (`main()` with no argv), not a call of `main(argv)` from Python."""
    return _command_line


def end_process(status) -> None:
    """End this process now with `status`, as `sys.exit(status)` would, but without the interpreter's teardown.

    Waits for any non-daemon thread (as the interpreter's exit does, `threading._shutdown`: thread
    pools are told to stop first), runs the `atexit` functions and flushes standard output and
    error (what `sys.exit` does that matters to a caller), then leaves with `os._exit`: freeing every module, JAX's and
    XLA's objects and NumPy's BLAS threads one by one is 0.5-0.7 s of a command-line run's
    wall time on a slow machine, and nothing the command wrote depends on it.

    Args:
      status: what `sys.exit` takes: None (0), an int, or a message (printed to stderr; 1).
    """
    if status is None:
        code = 0
    elif isinstance(status, int):
        code = status
    else:
        print(status, file=sys.stderr)
        code = 1
    shutdown = getattr(threading, "_shutdown", None)  # what the interpreter's exit does first: stop thread
    if shutdown is not None and threading.current_thread() is threading.main_thread():  # pools, join threads
        shutdown()
    else:
        for thread in threading.enumerate():
            if thread is not threading.current_thread() and not thread.daemon:
                thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`advi-jax fit | head`) or stream
            pass
    os._exit(code & 0xFF)


def main(argv: list[str] | None = None) -> int:
    """Run the `advi-jax` command on `argv` (default: the command line) and return its exit status.

    With no `argv` (the `advi-jax` script, `python -m advi_jax`) the process ends when the
    command does (`end_process`; `main` does not return); an exception still propagates as usual.
    """
    if argv is None:  # a command-line run (not a call from Python)
        try:
            status = _main(None)
        except SystemExit as stop:  # argparse's --help and usage errors
            status = stop.code
        finally:
            if "advi_jax.cli.figures" in sys.modules:  # a figure process started early and not used
                sys.modules["advi_jax.cli.figures"].discard_early()
        end_process(status)
    return _main(argv)


def _draws_figures(argv: list[str]) -> bool:
    """Whether the command line `argv` (without the program) is an `advi-jax fit` that draws figures.

    Read before the parser exists (building it imports JAX), so by hand: `fit` first, and no
    `--no-plots` or `--help`, nor an abbreviation argparse would take for either. A wrong guess
    costs only time: an unused figure process is ended (`figures.discard_early`), and a missing
    one is started later (`figures.FigureJobs.start`).
    """
    if not argv or argv[0] != "fit":
        return False
    return not any(arg == "-h" or (len(arg) > 2 and ("--help".startswith(arg) or "--no-plots".startswith(arg)))
                   for arg in argv[1:])


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """`warnings.formatwarning` of a command-line run: one line, `advi-jax: RuntimeWarning: ...`, without
    the file and source line (a notice raised while JAX traces, or on the command's compile thread, named
    jax's or threading.py's line, which says nothing to someone who typed a command)."""
    text = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    return f"advi-jax: {category.__name__}: {text}\n"


def _main(argv: list[str] | None) -> int:
    global _command_line
    if argv is None:  # a command-line run (not a call from Python): keep compiled programs between runs
        _command_line = True
        warnings.formatwarning = _one_line_warning
        if _draws_figures(sys.argv[1:]):  # before anything imports JAX (`advi_jax.cli.figures.start_early`)
            from advi_jax.cli import figures

            figures.start_early()
        enable_compilation_cache()
    argv = sys.argv[1:] if argv is None else list(argv)
    names = {m.rsplit(".", 1)[-1] for m in _SUBCOMMANDS}
    parser = build_parser(argv[0] if argv and argv[0] in names else None)
    if argv and argv[0] in parser.unavailable:
        from advi_jax._extras import missing_extra_message

        print(f"advi-jax {argv[0]}: error: {missing_extra_message(parser.unavailable[argv[0]])}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ModuleNotFoundError as err:  # an optional dependency: name the extra that installs it
        from advi_jax._extras import missing_extra_message

        hint = missing_extra_message(err)
        if hint is None:
            raise
        print(f"advi-jax {args.command}: error: {hint}", file=sys.stderr)
        return 2
    except (UsageError, ValueError, OSError, MissingExtraError) as err:  # OSError: unreadable/unwritable paths
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"advi-jax {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"advi-jax {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
