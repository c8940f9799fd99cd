"""The `advi-jax` command: `fit`, `vae` and `variance` sub-commands.

Each sub-command lives in its own module exposing `add_parser(subparsers)` (which registers the
sub-command and sets `func` on its parser) so the jobs stay independent. Bad input exits with
status 2 and a one-line message, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys

from advi_jax._extras import MissingExtraError

_SUBCOMMANDS = (
    "advi_jax.cli.fit",
    "advi_jax.cli.vae",
    "advi_jax.cli.variance",
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


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="advi-jax",
        description="Automatic-differentiation variational inference in JAX.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.unavailable = {}  # sub-command -> the ModuleNotFoundError of its missing extra
    subparsers = parser.add_subparsers(dest="command", metavar="{fit,vae,variance}")
    for module_name in _SUBCOMMANDS:
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
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
