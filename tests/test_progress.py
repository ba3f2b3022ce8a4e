"""Per-step progress from inside the sampling scan (jaxdiff/samplers/loop.py): one bar per pass
that moves with the steps, however many images or devices report each step."""

from __future__ import annotations

import io

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.samplers import loop


def test_ticker_shows_each_pass_once_whatever_the_order_of_ticks():
    t = loop._Ticker("s", 4, file=io.StringIO())
    # two devices report every step, unordered; then a late duplicate of the last step
    for i in (0, 1, 0, 2, 1, 3, 2, 3, 3):
        t(i)
    assert t.completed == 1 and t.bar is None
    for i in (0, 1, 2):  # the next call of the compiled sampler
        t(i)
        assert t.bar is not None and t.bar.n == i + 1
    t(3)
    assert t.completed == 2


def test_a_jitted_vmapped_chain_ticks_every_k_steps(monkeypatch):
    made, seen = [], []

    class Recording(loop._Ticker):
        def __init__(self, label, total):
            super().__init__(label, total, file=io.StringIO())
            made.append(self)

        def _show(self, n):
            seen.append(n)
            super()._show(n)

    monkeypatch.setattr(loop, "_Ticker", Recording)
    n, every = 10, loop.progress_interval(10, ticks=4)
    assert every == 3

    def chain(key, x):
        step = lambda x, k, z, st: (x + 0.01 * z, st, {})  # noqa: E731
        return loop.run_chain(step, x, np.arange(n)[::-1], key=key, progress_every=every).x

    f = jax.jit(jax.vmap(chain))
    keys = jax.random.split(jax.random.key(0), 3)
    for _ in range(2):
        jax.block_until_ready(f(keys, jnp.zeros((3, 4))))
        jax.effects_barrier()
    (ticker,) = made  # one bar per compiled sampler, not per image
    assert ticker.completed == 2
    assert seen == [1, 4, 7, 10] * 2  # steps 0, 3, 6 and the last, in each pass
