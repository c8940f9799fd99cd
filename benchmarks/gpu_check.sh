#!/usr/bin/env bash
# The GPU checks of issues 15 and 16, as one prepared run for a lent accelerator (the `device`
# tool runs it from the repository root; OUT is the folder whose files come back).
#   issue 16: bench_time_to_answer's N = 1e6 rows on the XLA path (ADVI_JAX_NATIVE=0), every peer
#             measured over its full 10,000 steps (no projection), D = 10 first, then D = 100;
#   issue 15: the accuracy suite's two largest posteriors (radon varying slopes K = 176, stochastic
#             volatility K = 153): the default aj.fit against NumPyro's svi.run (AutoMVN, 10,000 steps).
# Each part has its own time limit, so one slow part cannot take the others' time; each writes its
# log (rows as they finish) and its JSON to OUT.
# Usage there: OUT=/some/dir bash benchmarks/gpu_check.sh [limit_tta10_s limit_auto_s limit_tta100_s]
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export JAX_PLATFORMS=${JAX_PLATFORMS:-cuda} ADVI_JAX_NATIVE=0 XLA_PYTHON_CLIENT_PREALLOCATE=false
PY=${PY:-python3}
{
  date -u; nvidia-smi -L; nproc
  $PY -c "import jax, jaxlib, numpyro, optax; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'numpyro', numpyro.__version__, 'optax', optax.__version__); print(jax.devices())"
} 2>&1 | tee "$OUT/env.txt"
run() {  # name limit_s args...
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s) $(date -u +%T)"
  local t0=$SECONDS
  timeout "$limit" "$PY" "$@" 2>&1 | tee "$OUT/$name.log"
  echo "=== $name rc ${PIPESTATUS[0]} in $((SECONDS - t0)) s"
}
run tta_d10 "${1:-200}" -m benchmarks.bench_time_to_answer --n 1000000 --d 10 \
    --project-from-n 1e9 --repeat-second 3 --out "$OUT/tta_d10.json"
run auto_k150 "${2:-170}" -m benchmarks.bench_auto --models radon_varying_slopes,stochastic_volatility \
    --candidates auto,svi --out "$OUT/auto_k150.json"
run tta_d100 "${3:-150}" -m benchmarks.bench_time_to_answer --n 1000000 --d 100 \
    --project-from-n 1e9 --repeat-second 3 --out "$OUT/tta_d100.json"
