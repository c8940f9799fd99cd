"""The default optimiser of the gradient-based algorithms, and its step-size constants.

Kept apart from any algorithm so that the argument checks (`advi_jax.checks`), ADVI
(`advi_jax.vi.advi`) and the gradient-variance tools resolve `optimizer=`/`learning_rate=` the
same way.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optax

__all__ = ["DEFAULT_LEARNING_RATE", "ADAPT_LEARNING_RATES", "default_optimizer"]

DEFAULT_LEARNING_RATE = 0.01
"""Adam's default peak step size: 1e-2 converged on every benchmark GLM (standardised features)
and the conjugate test models within a few thousand steps without tuning; 1e-1 oscillates on the
full-rank scales of poorly conditioned posteriors and 1e-3 needs ~10x more steps."""

ADAPT_LEARNING_RATES = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001)
"""Candidate Adam step sizes for `learning_rate="adapt"` (Stan's eta grid is 100, 10, 1, 0.1,
0.01 for its normalised step; see `advi_jax.vi.advi.adapt_learning_rate`)."""


@functools.lru_cache(maxsize=None)
def default_optimizer(learning_rate: float = DEFAULT_LEARNING_RATE,
                      num_steps: int | None = None) -> optax.GradientTransformation:
    """The default optimiser: Adam, constant for the first half of the run, then cosine-decayed.

    With a constant step size the stochastic gradient keeps the iterates jittering around the
    optimum by roughly one step size; decaying the step over the second half of `num_steps` to
    1% of its peak removes most of that jitter at no extra cost (benchmarks/PERFORMANCE.md).
    Without `num_steps` the step size stays constant. Cached, so repeated fits with the same
    settings reuse one object and one compilation.

    Args:
      learning_rate: Adam's peak step size.
      num_steps: the run's step budget, or None for a constant step size.

    Returns:
      An optax `GradientTransformation`.

    Example:
      >>> from advi_jax.optim import default_optimizer
      >>> opt = default_optimizer(0.01, 1000)
    """
    import optax  # here, not at the top: `import advi_jax` does not load optax (0.2 s), fits without ADVI never do

    if num_steps is None:
        return optax.adam(learning_rate)
    half = max(num_steps // 2, 1)
    schedule = optax.join_schedules(
        [optax.constant_schedule(learning_rate),
         optax.cosine_decay_schedule(learning_rate, max(num_steps - half, 1), alpha=0.01)],
        [half])
    return optax.adam(schedule)
