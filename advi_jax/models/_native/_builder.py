"""Compile the native GLM kernel into the cache: run as a script, detached from the caller.

`python _builder.py SPEC` where SPEC is JSON {"command": [...], "source": ..., "target": ...} ("source": one
path or a list of paths, compiled together into one library).
Runs in its own session (started by `advi_jax.models._native`) so that it finishes and fills
the cache even when the process that started it exits first. Imports nothing from advi_jax
(so it starts in milliseconds and never starts another build).

Steps: take an exclusive lock on `<target>.lock` (a second builder of the same target waits,
then finds the library built); compile into a folder `tmp-<host>-<pid>-*` beside the target;
keep the compiler's output (warnings) as `<target>.log`; move the library into place with one
atomic rename. Exit status 0 when the library exists at the end; otherwise the compiler's exit
status (or 3 for an unwritable cache folder), with the compiler's output on stdout.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path


def tmp_prefix(pid: int | None = None) -> str:
    """The prefix of this process's scratch folder: `tmp-<host>-<pid>-` (for stale-folder checks)."""
    host = socket.gethostname().replace("-", "_") or "host"
    return f"tmp-{host}-{os.getpid() if pid is None else pid}-"


def _say(text: str) -> None:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except (BrokenPipeError, OSError):  # the caller has gone: the cache is what matters
        pass


def build(command: list[str], source: str | list[str], target: str) -> int:
    """Compile `source` (one file or several) into `target` with `command` (module docstring); an exit status."""
    target_path = Path(target)
    folder = target_path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / (target_path.name + ".lock"), "a")  # noqa: SIM115 - held until exit
    except OSError as err:
        _say(f"the native-kernel cache folder {folder} is not writable ({err.strerror or err})\n")
        return 3
    try:
        import fcntl

        fcntl.flock(lock, fcntl.LOCK_EX)
    except (ImportError, OSError):  # no advisory locks here: concurrent builders still each rename a whole file
        pass
    if target_path.exists():
        return 0
    try:
        tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix(), dir=folder))
    except OSError as err:
        _say(f"the native-kernel cache folder {folder} is not writable ({err.strerror or err})\n")
        return 3
    try:
        out = tmp / target_path.name
        try:
            sources = [source] if isinstance(source, str) else list(source)
            proc = subprocess.run([*command, *sources, "-o", str(out), "-lpthread"], capture_output=True,
                                  text=True, check=False)
        except OSError as err:
            _say(f"could not run the compiler {command[0]}: {err}\n")
            return 127
        output = (proc.stdout or "") + (proc.stderr or "")
        if proc.returncode != 0:
            _say(output)
            return proc.returncode or 1
        log = tmp / "build.log"
        log.write_text(output)
        os.replace(log, target_path.with_name(target_path.name + ".log"))
        os.replace(out, target_path)  # atomic: readers see no file or a whole one
        _say(output)
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    sys.exit(build(spec["command"], spec["source"], spec["target"]))
