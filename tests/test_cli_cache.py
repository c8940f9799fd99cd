"""The command line's persistent compilation cache: where it goes, how it is turned off, pruning."""

import os
import subprocess
import sys

from advi_jax.cli import _prune

PROBE = ("import jax; from advi_jax.cli import enable_compilation_cache as e; f = e(); "
         "print(f, jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)")


def _probe(tmp_path, **env):
    full = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "ADVI_JAX_COMPILATION_CACHE")}
    full.update(ADVI_JAX_CACHE_DIR=str(tmp_path), JAX_PLATFORMS="cpu", **env)
    out = subprocess.run([sys.executable, "-c", PROBE], env=full, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_cache_folder_is_per_jax_version_and_cpu_and_can_be_turned_off(tmp_path):
    import jax

    folder, configured, min_time = _probe(tmp_path)
    assert folder == configured and folder.startswith(str(tmp_path / f"xla-{jax.__version__}-"))
    assert os.path.isdir(folder) and float(min_time) == 0.0
    assert _probe(tmp_path, ADVI_JAX_COMPILATION_CACHE="0")[:2] == ["None", "None"]
    own = str(tmp_path / "mine")
    assert _probe(tmp_path, JAX_COMPILATION_CACHE_DIR=own)[:2] == ["None", own]  # the user's setting stays


def test_prune_removes_oldest_files_down_to_half_the_limit(tmp_path):
    for i in range(10):
        path = tmp_path / f"entry{i}"
        path.write_bytes(b"x" * 100)
        os.utime(path, (1000 + i, 1000 + i))
    _prune(tmp_path, 2000)  # under the limit: nothing removed
    assert len(list(tmp_path.iterdir())) == 10
    _prune(tmp_path, 800)  # over: the oldest go until at most 400 bytes remain
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"entry{i}" for i in range(6, 10)]
