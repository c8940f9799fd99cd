"""The command line's persistent compilation cache: where it goes, how it is turned off, pruning."""

import os
import subprocess
import sys

from advi_jax.compilation_cache import _prune
from conftest import FAST_XLA_FLAGS, fast_xla

PROBE = ("import jax; from advi_jax.cli import enable_compilation_cache as e; f = e(); "
         "print(f, jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)")


def _probe(tmp_path, **env):
    # ADVI_JAX_NATIVE=0: importing advi_jax with an empty cache folder would start a build of the native
    # GLM kernel into it (detached, ~40 CPU-s) that nothing here uses; the folder does not depend on it.
    full = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "ADVI_JAX_COMPILATION_CACHE")}
    full.update(ADVI_JAX_CACHE_DIR=str(tmp_path), JAX_PLATFORMS="cpu", ADVI_JAX_NATIVE="0", **env)
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


FIT = """
import sys, jax, jax.numpy as jnp, numpy as np
import advi_jax as aj
hits = []
jax.monitoring.register_event_listener(lambda name, **kw: hits.append(name) if name == "/jax/compilation_cache/cache_hits" else None)
folder = aj.enable_compilation_cache(sys.argv[1])
model = aj.Model(lambda p: -0.5 * jnp.sum((p["x"] - 1.0) ** 2) - 0.5 * jnp.log(p["s"]) ** 2 - jnp.log(p["s"]),
                 {"x": aj.real((2,)), "s": aj.positive()})
result = aj.fit(model, key=jax.random.key(0), method="advi", num_steps=200, progress=False)
print(folder == sys.argv[1], len(hits), repr(np.asarray(result.mean()["x"]).tolist()))
"""


def test_enable_compilation_cache_lets_a_new_process_load_what_an_earlier_one_compiled(tmp_path):
    """The first process compiles and writes the cache; the second loads (cache hits) and gets the same fit."""
    folder = str(tmp_path / "xla")
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "ADVI_JAX_COMPILATION_CACHE")}
    env["JAX_PLATFORMS"] = "cpu"
    if fast_xla():  # the suite's compile options (tests/conftest.py); both processes use the same ones
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + FAST_XLA_FLAGS).strip()
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", FIT, folder], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        runs.append(out.stdout.split(maxsplit=2))
    (same0, hits0, mean0), (same1, hits1, mean1) = runs
    assert same0 == same1 == "True"
    assert int(hits0) == 0 and os.listdir(folder)
    assert int(hits1) >= 2  # at least the fit's start and loop programs
    assert mean1 == mean0


def test_enable_compilation_cache_rejects_a_bad_size():
    import pytest

    import advi_jax as aj

    with pytest.raises(TypeError, match="max_bytes"):
        aj.enable_compilation_cache(max_bytes=0)
