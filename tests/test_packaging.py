"""The core works without the optional extras, and each missing extra is named in its error.

One fresh interpreter in which flax, numpyro, formulaic, pandas, arviz and blackjax cannot be
imported (as after `pip install advi-jax-vi` without extras).
"""

import json
import os
import subprocess
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIONAL = ("flax", "numpyro", "formulaic", "pandas", "arviz", "blackjax")

SCRIPT = r"""
import json, sys
for name in %r:
    sys.modules[name] = None  # `import name` now raises ModuleNotFoundError, as when not installed
import contextlib, io
import jax, numpy as np
import advi_jax as aj
from advi_jax._extras import MissingExtraError
out = {}
x = np.random.default_rng(0).normal(size=(60, 2)); y = (x[:, 0] > 0) * 1.0
model = aj.models.logistic_regression(x, y)
result = aj.fit(model, key=jax.random.key(0), num_steps=50, progress=False, diagnostics=False)
out["fit_ok"] = bool(np.isfinite(result.elbo[-1]))
def error_of(fn):
    try:
        fn()
    except MissingExtraError as err:
        return str(err)
    return "no error"
out["numpyro"] = error_of(lambda: aj.from_numpyro(lambda: None))
out["formula"] = error_of(lambda: aj.models.from_formula("logistic", {"x": x[:, 0], "y": y}, "y ~ x"))
from advi_jax.interop.arviz import to_arviz
out["arviz"] = error_of(lambda: to_arviz(result))
from advi_jax.cli import main
for name, argv in (("cli_vae", ["vae", "--epochs", "1"]),
                   ("cli_formula", ["fit", "--data", sys.argv[1], "--formula", "y ~ a"])):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    out[name] = [code, err.getvalue()]
print(json.dumps(out))
""" % (OPTIONAL,)


def test_core_without_extras_and_named_extras(tmp_path):
    (tmp_path / "d.csv").write_text("a,y\n1,0\n2,1\n3,0\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "d.csv")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["fit_ok"]
    assert "[numpyro]" in out["numpyro"] and "from_numpyro needs numpyro" in out["numpyro"]
    assert "[formula]" in out["formula"] and "[arviz]" in out["arviz"]
    for name, extra in (("cli_vae", "[vae]"), ("cli_formula", "[formula]")):
        code, err = out[name]
        assert code == 2 and len(err.strip().splitlines()) == 1 and extra in err, (name, err)


def test_pyproject_extras_and_name():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        project = tomllib.load(handle)["project"]
    assert project["name"] == "advi-jax-vi"  # "advi-jax" belongs to an unrelated project
    core = " ".join(project["dependencies"])
    for name in ("flax", "numpyro", "formulaic", "pandas", "arviz", "blackjax"):
        assert name not in core
    extras = project["optional-dependencies"]
    from advi_jax._extras import DISTRIBUTION, EXTRA_FOR_MODULE

    assert DISTRIBUTION == project["name"]
    for module, extra in EXTRA_FOR_MODULE.items():
        assert any(req.startswith(module) for req in extras[extra]), (module, extra)
        if extra != "bench":
            assert any(req.startswith(module) for req in extras["test"]), module


def test_benchmarks_without_blackjax_name_the_bench_extra(tmp_path):
    script = ("import sys, runpy; sys.modules['blackjax'] = None; sys.argv = ['benchmarks', '--quick']; "
              "runpy.run_module('benchmarks', run_name='__main__', alter_sys=True)")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "blackjax" in proc.stderr and "[bench]" in proc.stderr and "Traceback" not in proc.stderr
