"""The negative binomial's dispersion term D(y, phi) = lgamma(y + phi) - lgamma(phi) - y log phi in one tree:
its accuracy and the compile of its expectation's gradient, one JSON line.

* `value_err`: max |D - exact| / (1 + |D|), float64, counts 0..1e4 and phi in [1e-3, 1e8] (exact: the sum
  sum_{k<y} log1p(k / phi) of eps-accurate terms), and `value_err_f32` (float32, counts <= 300, phi <= 1e7,
  against the exact sum at the float32 phi);
* `consistency`: max |integral of dD/dphi over each step of that phi grid - the value's difference| /
  (1 + |D| at both ends): value and derivative agree (`glm_more.rising_ratio_dphi`, or in trees before it
  `_glm_lik.rising_ratio_dphi`);
* `compile_cpu_s`: process CPU of XLA's compile (`compile_options.MID_OPTIONS`, the low-rank loop's) of
  value_and_grad in (m_w, v_w) of `_glm_lik.distinct_dispersion` over 64 distinct counts, float32: the
  dispersion term's part of the negative binomial's exact-ELBO programs.

Run from the root of the tree under test (the script may live in another tree):
  `cd TREE && PYTHONPATH=. chrt -r 10 python /path/to/benchmarks/bench_nb_dispersion.py`
"""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def exact_d(ys, phis):
    return np.stack([np.sum(np.log1p(np.arange(int(y))[:, None] / phis[None, :]), axis=0) for y in ys])


def accuracy():
    from advi_jax.models import glm_more
    from advi_jax.vi import _glm_lik

    dphi = getattr(glm_more, "rising_ratio_dphi", None) or _glm_lik.rising_ratio_dphi
    ys = np.unique(np.concatenate([np.arange(0.0, 41.0), np.round(np.exp(np.linspace(np.log(41.0), np.log(1e4), 40)))]))
    phis = np.exp(np.linspace(np.log(1e-3), np.log(1e8), 401))
    with jax.enable_x64(True):
        d = np.asarray(glm_more.log_rising_ratio(jnp.asarray(ys)[:, None], jnp.asarray(phis)[None, :]))
        value_err = float(np.max(np.abs(d - exact_d(ys, phis)) / (1.0 + np.abs(d))))
        x, w = np.polynomial.legendre.leggauss(40)
        lo, hi = phis[:-1], phis[1:]
        pts = 0.5 * (lo + hi)[:, None] + 0.5 * (hi - lo)[:, None] * x
        integral = np.sum(np.asarray(dphi(jnp.asarray(ys)[:, None, None], jnp.asarray(pts)[None])) * w, -1) * 0.5 * (hi - lo)
        consistency = float(np.max(np.abs(integral - (d[:, 1:] - d[:, :-1])) / (1.0 + np.abs(d[:, 1:]) + np.abs(d[:, :-1]))))
    small = ys[ys <= 300]
    p32 = phis[phis <= 1e7].astype(np.float32)
    d32 = np.asarray(glm_more.log_rising_ratio(jnp.asarray(small, jnp.float32)[:, None], jnp.asarray(p32)[None, :]),
                     np.float64)
    ref = exact_d(small, p32.astype(np.float64))
    return value_err, consistency, float(np.max(np.abs(d32 - ref) / (1.0 + np.abs(ref))))


def compile_cpu():
    from advi_jax.compile_options import MID_OPTIONS
    from advi_jax.vi import _glm_lik

    def grad(m, v, values, counts):
        table = {"y_distinct": values, "y_count": counts}
        return jax.value_and_grad(lambda a, b: _glm_lik.distinct_dispersion(table, a, b), (0, 1))(m, v)

    lowered = jax.jit(grad).lower(jnp.float32(0.3), jnp.float32(0.01), jnp.arange(64.0, dtype=jnp.float32),
                                  jnp.ones(64, jnp.int32))
    c = time.process_time()
    lowered.compile(compiler_options=MID_OPTIONS)
    return time.process_time() - c


def main() -> None:
    import advi_jax

    cpu = compile_cpu()  # first, in a fresh process
    value_err, consistency, value_err_f32 = accuracy()
    print(json.dumps({"tree": advi_jax.__file__.rsplit("/advi_jax/", 1)[0], "compile_cpu_s": round(cpu, 3),
                      "value_err": value_err, "value_err_f32": value_err_f32, "consistency": consistency}))


if __name__ == "__main__":
    main()
