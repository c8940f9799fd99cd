"""Accuracy of the importance log ratios behind k-hat: float32 plain vs centred vs float64, same draws.

For each model: the default `aj.fit` (float32, diagnostics off), then for several keys the same
draws of q and their log ratios computed three ways:

* plain: `log p(zeta) - log q(zeta)` in float32 (the arithmetic before centring; for a ready GLM
  its value pass now sums blocks with a compensated carry, so at N = 1e6 the plain ratios round to
  a few distinct values and their k-hat reads -inf: see the main branch for the old noise);
* centred: `advi_jax.importance.centred_log_ratios` (the diagnostics' arithmetic), in float32;
* float64: the same draws, model and q parameters cast to float64 under `jax.enable_x64`.

It prints sd(log ratios), the sd of each float32 path's error against float64 (after removing
the constant shift, which k-hat ignores), and k-hat of each. One command:

  ADVI_JAX_DATA=../shared/data JAX_PLATFORMS=cpu python -m benchmarks.bench_khat_accuracy \
      --models wells_logistic,mixture_weights,dirichlet_multinomial,glm_1e6
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import advi_jax as aj
from advi_jax.diagnostics import psis
from advi_jax.importance import centred_log_ratios

_centred = jax.jit(centred_log_ratios, static_argnames=("family", "num_draws", "batch_size"))


def _to64(tree):
    def cast(a):
        return jnp.asarray(a, jnp.float64) if hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating) else a

    return jax.tree_util.tree_map(cast, tree)


def build(name):
    if name.startswith("glm_"):
        from benchmarks.bench_time_to_answer import make_model

        return make_model("logistic", int(float(name[4:])), 10)
    from benchmarks.suite import MODELS

    m = MODELS[name]()
    return aj.from_numpyro(m.fn, *m.args)


def khat(r):
    return float(psis(np.asarray(r - np.mean(r), np.float32)).khat)  # k-hat ignores the shift


def run(name, seeds=4, log=print):
    model = build(name)
    res = aj.fit(model, key=jax.random.key(0), progress=False, diagnostics=False, warn=False)
    draws = 256 if name.startswith("glm_") else 4096
    log(f"{name}: method {res.report.method}, family {res.family.name}, {draws} draws")
    plain_fn = jax.jit(lambda m, z: jax.lax.map(m.log_density, z, batch_size=256))
    for seed in range(seeds):
        key = jax.random.key(100 + seed)
        zeta, centred, shift = _centred(model, res.family, res.params, key, draws)
        plain = np.asarray(plain_fn(model, zeta) - res.family.log_prob(res.params, zeta), np.float64)
        centred = np.asarray(centred, np.float64) + float(shift)
        with jax.enable_x64(True):
            m64, p64, z64 = _to64(model), _to64(res.params), jnp.asarray(np.asarray(zeta), jnp.float64)
            exact = np.asarray(plain_fn(m64, z64) - res.family.log_prob(p64, z64), np.float64)

        def err(r):
            e = r - exact
            return float(np.std(e - np.mean(e)))

        log(f"  key {100 + seed}: sd(log ratio) {exact.std():.3g}; error sd plain {err(plain):.2g}, centred "
            f"{err(centred):.2g}; k-hat plain {khat(plain):.3f}, centred {khat(centred):.3f}, float64 {khat(exact):.3f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="wells_logistic,mixture_weights,dirichlet_multinomial,glm_1e6")
    p.add_argument("--seeds", type=int, default=4)
    args = p.parse_args(argv)
    for name in args.models.split(","):
        run(name, args.seeds)


if __name__ == "__main__":
    main()
