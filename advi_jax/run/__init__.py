"""The only Python-side loop: the one compiled driver and the fit pipelines over it.

* `driver`: `run_chunk` (the compiled, chunked loop), `drive` (progress, Ctrl-C, callback),
  `STOP_REASONS` (the one table of stop codes), `num_traces` (compile-once check).
* `start`: where a fit starts (zero, user, random, Laplace-, Pathfinder- or BaM-whitened).
* `choose`: `choose`, `choose_family`, `choose_method`: the policy of `family="auto"` and
  `method="auto"`.
* `single`, `many`, `minibatch`: `fit`, `fit_many`, `fit_minibatch` as pipelines:
  options -> start -> algorithm -> loop -> result.
"""

from advi_jax.run.choose import choose_method
from advi_jax.run.driver import STOP_REASONS, Progress, num_traces
from advi_jax.run.many import fit_many, stack_models
from advi_jax.run.minibatch import fit_minibatch
from advi_jax.run.single import DiagnosticWarning, fit

__all__ = ["DiagnosticWarning", "Progress", "STOP_REASONS", "choose_method", "fit", "fit_many", "fit_minibatch",
           "num_traces", "stack_models"]
