"""A timeline of one `advi-jax fit --quiet` run: the command's steps and its figure process's, in
seconds since the launch (stderr), with JAX's import and the steps of `advi_jax.cli.fit` found by
hooks on module loading (nothing is imported before the command itself imports it).

    python benchmarks/cli_timeline.py --tree /work/wt/base [--cold] [-- extra fit arguments]

`--cold` empties the XLA compilation cache folders (`xla-*`) of the cache in use
(`$ADVI_JAX_CACHE_DIR`, else `$XDG_CACHE_HOME/advi_jax`) first. Rows say `main` (the command) or
`CHILDnn` (the figure process and its forks, by process id); `> x` / `< x` are a call's start and
end. Run it under `chrt -r 10` on a shared machine.
"""
import importlib.abc
import importlib.machinery
import os
import sys
import time

if "CLI_TIMELINE_T0" not in os.environ:  # the launcher: time the whole process from outside
    import argparse, glob, shutil, subprocess, tempfile
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tree", default=".")
    p.add_argument("--cold", action="store_true")
    p.add_argument("extra", nargs="*")
    a = p.parse_args()
    if a.cold:
        base = os.environ.get("ADVI_JAX_CACHE_DIR") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "advi_jax")
        for folder in glob.glob(os.path.join(base, "xla-*")):
            shutil.rmtree(folder, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, PYTHONPATH=os.path.abspath(a.tree), JAX_PLATFORMS="cpu",
                   CLI_TIMELINE_T0=repr(time.time()))
        subprocess.run([sys.executable, os.path.abspath(__file__), os.path.join(tmp, "out"), *a.extra], cwd=tmp,
                       env=env, stdout=subprocess.DEVNULL)
        print(f"{time.time() - float(env['CLI_TIMELINE_T0']):7.3f} process ended", file=sys.stderr)
    sys.exit(0)
T0 = float(os.environ["CLI_TIMELINE_T0"])
def p(m): sys.stderr.write(f"{time.time()-T0:7.3f} main {m}\n"); sys.stderr.flush()
p("script start (interpreter up)")
def wrap(obj, name, label):
    f = getattr(obj, name)
    def g(*a, **k):
        p(f"> {label}")
        try: return f(*a, **k)
        finally: p(f"< {label}")
    setattr(obj, name, g)
PRE = ("import time,os,sys; T0=float(os.environ['CLI_TIMELINE_T0']); P=lambda m: (sys.stderr.write(f'{time.time()-T0:7.3f} CHILD{os.getpid()%100:02d} {m}\\n'), sys.stderr.flush());"
 "P('start'); import runpy; _rp=runpy.run_path\n"
 "def rp(*a, **k):\n"
 "    ns=_rp(*a, **k); P('fit_plots loaded (numpy)'); g=ns['serve'].__globals__; im=g['_import_matplotlib']; sv=g['save']\n"
 "    g['_import_matplotlib']=lambda: (im(), P('matplotlib imported + font warm'))\n"
 "    g['save']=lambda f,path: (P('drawn (before save) '+str(path).rsplit('/',1)[-1]), sv(f,path), P('saved '+str(path).rsplit('/',1)[-1]))\n"
 "    return ns\n"
 "runpy.run_path=rp\n")
def on_jax(m): p("import jax done")
def on_aj_run(m): p("advi_jax.run imported")
def on_figures(m):
    m._CHILD = PRE + m._CHILD
    if hasattr(m, "start_early"): wrap(m, "start_early", "figures.start_early")
    wrap(m.FigureJobs, "finish", "figures.finish")
def on_fit(m):
    wrap(m, "_load", "load data"); wrap(m, "_posterior_outputs", "posterior_outputs")
    wrap(m, "_write_outputs", "write_outputs"); wrap(m, "start_figures", "start_figures")
    import advi_jax as aj
    orig = m._fit_and_write
    def fw(*a, **k):
        wrap(aj, "fit", "aj.fit"); return orig(*a, **k)
    m._fit_and_write = fw
def on_cli(m):
    wrap(m, "enable_compilation_cache", "enable_compilation_cache"); wrap(m, "build_parser", "build_parser")
HOOKS = {"jax": on_jax, "advi_jax.cli.figures": on_figures, "advi_jax.cli.fit": on_fit, "advi_jax.cli": on_cli,
         "advi_jax.run": on_aj_run}
class Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in HOOKS: return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None: return None
        orig = spec.loader.exec_module
        def exec_module(module, orig=orig):
            orig(module); HOOKS[name](module)
        spec.loader.exec_module = exec_module
        return spec
sys.meta_path.insert(0, Finder())
sys.argv = ["advi-jax", "fit", "--quiet", "--out", sys.argv[1]] + sys.argv[2:]
import atexit
atexit.register(lambda: p("atexit"))
from advi_jax.cli import main
rc = main(); p(f"main() returned {rc}")
