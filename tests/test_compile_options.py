"""The compiler options rule by a program's own arithmetic (`compile_options.arithmetic`, `cost_mode`,
`ByCost`): the counts it reads from a jaxpr, and the choice it makes from them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advi_jax import compile_options as co

ON_CPU = jax.default_backend() == "cpu"


def _cost(f, *args, trips=1):
    return co.arithmetic(jax.jit(f).trace(*args).jaxpr, trips)


def test_arithmetic_counts_loops_products_and_solves():
    scan = _cost(lambda x: jax.lax.fori_loop(0, 10, lambda i, c: jnp.exp(c) + 1.0, x), jnp.ones(3))
    assert scan.transcendental == 30.0 and scan.elementwise >= 30.0
    dot = _cost(lambda a, b: a @ b, jnp.ones((2, 3)), jnp.ones((3, 4)))
    assert dot.dot == 2 * 4 * 3 and dot.transcendental == 0.0
    # A while loop's body runs `trips` times; a nested one once per outer trip.
    def nested(x):
        inner = lambda c: jax.lax.while_loop(lambda d: d[0] < 5.0, lambda d: jnp.log1p(d), c)
        return jax.lax.while_loop(lambda c: c[0] < 3.0, inner, x)
    assert _cost(nested, jnp.ones(4), trips=7).transcendental == 7 * 4
    # cond: the dearer branch; triangular solve: m^2 per column; Cholesky: m^3.
    branches = _cost(lambda p, x: jax.lax.cond(p, lambda: jnp.sum(jnp.exp(x)), lambda: jnp.sum(x)), True,
                     jnp.ones(6))
    assert branches.transcendental == 6.0
    tri = jnp.tril(jnp.ones((5, 5))) + jnp.eye(5)
    solve = _cost(lambda a, b: jax.scipy.linalg.solve_triangular(a, b, lower=True), tri, jnp.ones((5, 2)))
    assert solve.linalg == 5 * 5 * 2
    assert _cost(jnp.linalg.cholesky, tri @ tri.T).linalg == 5**3


def test_arithmetic_counts_work_the_loop_hoists_once():
    # XLA moves what does not change from trip to trip out of a while loop (a Poisson's log y! of the data,
    # a constant mask): it runs once, not `trips` times; what depends on the carry runs every trip.
    y = jnp.ones(500)
    loop = lambda body: (lambda c, y: jax.lax.while_loop(lambda c: c < 1e9, lambda c: body(c, y), c))
    fixed = _cost(loop(lambda c, y: c + jnp.sum(jax.scipy.special.gammaln(y + 1.0))), 0.0, y, trips=1000)
    moving = _cost(loop(lambda c, y: c + jnp.sum(jax.scipy.special.gammaln(y + c))), 0.0, y, trips=1000)
    assert fixed.transcendental == 500 and moving.transcendental == 1000 * 500
    # through a jitted log density whose data-only term is inside it, and a carry passed through unchanged
    def term(c, y):
        return jax.jit(lambda c, y: c * jnp.sum(y) + jnp.sum(jnp.log(y + 1.0)))(c, y)
    both = _cost(lambda c, y: jax.lax.while_loop(lambda s: s[0] < 1e9, lambda s: (s[0] + term(s[0], s[1]), s[1]),
                                                 (c, y))[0], 0.0, y, trips=1000)
    assert both.transcendental == 500  # log(y + 1) of the passed-through y: once
    # c * sum(y): the 500-number sum is hoisted, counted once; the scalar product and sums run every trip
    assert 1000 <= both.elementwise < 10 * 1000


def test_cost_mode_weighs_the_compile_saving_against_the_extra_run_time():
    # A small program run often but cheaply: fast. A K = 300 elementwise-heavy step run 6,000 times:
    # the fast code's extra run time (~1e6 elementwise numbers a step) exceeds its compile saving.
    def step(x, m):
        return jnp.tanh(m @ x) + jnp.where(jnp.tril(m) > 0, m * x[None, :], 0.0).sum(axis=1)
    small = _cost(lambda x, m: jax.lax.while_loop(lambda c: c[0] < 1e9, lambda c: step(c, m), x),
                  jnp.ones(5), jnp.ones((5, 5)), trips=6000)
    large = _cost(lambda x, m: jax.lax.while_loop(lambda c: c[0] < 1e9, lambda c: step(c, m), x),
                  jnp.ones(300), jnp.ones((300, 300)), trips=6000)
    assert small.eqns == large.eqns  # the same program: the same compile saving
    extra_small = float(np.dot(co.FAST_EXTRA_SECONDS[1:], small[1:]))
    extra_large = float(np.dot(co.FAST_EXTRA_SECONDS[1:], large[1:]))
    saved = co.FAST_SAVED_SECONDS_PER_EQN * small.eqns
    assert extra_small < saved < extra_large
    assert co.cost_mode(None, small) == ("fast" if ON_CPU else "full")
    assert co.cost_mode(None, large, evals=6000) == ("mid" if ON_CPU else "full")
    assert co.cost_mode(None, large._replace(eqns=10**9)) == ("fast" if ON_CPU else "full")  # a huge compile pays
    # saved_share: the extra run time may reach only that share of the saving
    between = large._replace(eqns=int(np.ceil(1.5 * extra_large / co.FAST_SAVED_SECONDS_PER_EQN)))
    assert co.cost_mode(None, between) == ("fast" if ON_CPU else "full")
    assert co.cost_mode(None, between, evals=6000, saved_share=0.5) == ("mid" if ON_CPU else "full")
    with pytest.raises(ValueError, match="saved_share"):
        co.ByCost(1, saved_share=0.0)
    with co.forced("full"):
        assert co.cost_mode(None, small) == "full"


def test_special_functions_are_counted_apart_and_keep_xla_s_full_options():
    y = jnp.ones(1000)
    body = lambda f: (lambda c, y: jax.lax.while_loop(lambda c: c < 1e9, lambda c: c + jnp.sum(f(y * c)), c))
    exp = _cost(body(jnp.exp), 0.0, y, trips=6000)
    lgamma = _cost(body(jax.scipy.special.gammaln), 0.0, y, trips=6000)
    assert exp.transcendental == lgamma.transcendental == 6000 * 1000
    assert exp.special == 0.0 and lgamma.special == 6000 * 1000  # lgamma also counts as a special function
    assert co.fast_extra_seconds(exp) == co.fast_extra_seconds(lgamma)  # the fast options' price is unchanged

    big = {"data": np.zeros(100_000, np.float32)}  # data that make the size rule say "full" at these evaluations
    evals = co.MID_MAX_WORK // 100_000 + 1
    assert co.compile_mode(big, evals) == "full"
    # no fast compile here (its extra run time is far above its saving), "mid" where its own extra run time
    # is below its compile saving: exp and log cost it ~1 ns a number, lgamma ~12 ns
    for cost in (exp, lgamma):
        assert co.fast_extra_seconds(cost) > co.FAST_SAVED_SECONDS_PER_EQN * cost.eqns
    eqns = int(np.ceil(2 * co.mid_extra_seconds(exp) / co.MID_SAVED_SECONDS_PER_EQN))
    assert co.mid_extra_seconds(lgamma._replace(eqns=eqns)) > co.MID_SAVED_SECONDS_PER_EQN * eqns
    assert co.cost_mode(big, exp._replace(eqns=eqns), evals) == ("mid" if ON_CPU else "full")
    assert co.cost_mode(big, lgamma._replace(eqns=eqns), evals) == "full"
    # saved_share: a program every later call runs again weighs only that share of the saving
    assert co.cost_mode(big, exp._replace(eqns=eqns), evals, saved_share=0.25) == "full"
    with co.forced("full"):
        assert co.cost_mode(big, exp._replace(eqns=eqns), evals) == "full"


def test_by_cost_programs_choose_once_from_their_own_arithmetic_and_trace_once():
    traced = []

    @co.jit(model_arg=None, static_argnames=("work",), mode=lambda model, args: args["work"])
    def loop(x, m, n, work):
        traced.append(x.shape)
        body = lambda c: (jnp.tanh(m @ c[0]) + jnp.where(jnp.tril(m) > 0, m * c[0][None, :], 0.0).sum(axis=1), c[1] + 1)
        return jax.lax.while_loop(lambda c: c[1] < n, body, (x, 0))[0]

    assert co.ByCost(5) == co.ByCost(6000) and hash(co.ByCost(5)) == hash(co.ByCost(1, 7))
    with pytest.raises(ValueError, match="trips"):
        co.ByCost(-1)
    small, large = (jnp.ones(5), jnp.ones((5, 5))), (jnp.ones(300), jnp.ones((300, 300)))
    out = loop(*small, 3, work=co.ByCost(6000))
    loop(*small, 4, work=co.ByCost(6000))
    loop(*large, 3, work=co.ByCost(6000, evals=1))
    loop(*large, 3, work=co.ByCost(1))  # equal to the first ByCost: the decision made stands
    assert traced == [(5,), (300,)]  # each shape traced once: the decision reuses JAX's trace
    if ON_CPU:
        assert loop.fast._cache_size() == 1 and loop.mid._cache_size() == 1  # small fast, large "mid"
    else:
        assert loop.full._cache_size() == 2
    np.testing.assert_allclose(np.asarray(out), np.asarray(loop.full(*small, 3, work=None)), rtol=1e-5)


def test_a_pinned_signature_compiles_in_its_mode_and_others_follow_the_rule():
    @co.jit(model_arg=None)
    def double(x, scale):
        return 2.0 * x * scale

    with pytest.raises(ValueError, match="mode"):
        double.pin("slow", jnp.ones(3), 1.0)
    double.pin("full", jax.ShapeDtypeStruct((3,), jnp.float32), 1.0)
    double.pin("mid", jnp.ones(3), 2.0)  # the same abstract signature: the first pin stands
    out = double(jnp.arange(3.0), 2.0)
    double(jnp.ones(4), 2.0)  # another shape: the rule's choice (fast on CPU)
    np.testing.assert_array_equal(np.asarray(out), [0.0, 4.0, 8.0])
    if ON_CPU:
        assert double.full._cache_size() == 1 and double.fast._cache_size() == 1
        assert double.mid._cache_size() == 0
        with co.forced("fast"):  # a forced mode wins over a pin
            double(jnp.ones(3), 2.0)
        assert double.fast._cache_size() == 2


def test_the_default_loop_at_k84_is_priced_at_its_measured_fast_code_cost(key, monkeypatch):
    # A K = 84 random walk with a cheap density (ar1_state_space's shape): the default fit's loop is the
    # full-rank natural step's K x K arithmetic, about 4e6 elementwise numbers a step. Measured (benchmarks/
    # PERFORMANCE.md, 2026-12-03, ar1_state_space's loop): fast-compiled 678 us a step more than "mid". The
    # elementwise price before then (5.6e-11 s) estimated ~320 us here, and the rule compiled such loops fast:
    # 9-12 s a call at the cap against 2-2.5 s "mid".
    import advi_jax as aj

    decided = []
    real = co.cost_mode

    def record(model, cost, evals=None, saved_share=1.0):
        decided.append((cost, saved_share, real(model, cost, evals, saved_share)))
        return "fast"  # the test reads the decision; the program compiles cheaply

    monkeypatch.setattr(co, "cost_mode", record)

    def log_joint(p):
        x = p["x"]
        return -0.5 * jnp.sum(jnp.diff(x) ** 2) - 0.5 * x[0] ** 2 - 0.5 * jnp.sum((x - 1.0) ** 2)

    def stop(progress):
        raise KeyboardInterrupt  # the loop has compiled (and decided) by its first progress report

    aj.fit(aj.Model(log_joint, {"x": aj.real((84,))}), key=key, progress=False, warn=False, diagnostics=False,
           callback=stop)
    loops = [(cost, mode) for cost, share, mode in decided if share == 1.0 and cost.eqns > 500]
    assert len(loops) == 1, decided
    cost, mode = loops[0]
    trips = 6000  # the default's expected steps: half its 12,000-step cap (`run.single._expected_steps`)
    per_step = co.fast_extra_seconds(cost) / trips
    assert 0.6 * 678e-6 < per_step < 1.7 * 678e-6, per_step
    assert mode == ("mid" if ON_CPU else "full")
