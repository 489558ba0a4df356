"""DynamicBatcher's queue delay is an upper bound: a batch waits only while a request is on its way in."""
from __future__ import annotations

import asyncio
import time

import numpy as np

from alexnet_deploy.server.batcher import DynamicBatcher


class _Rows:
    """A runner whose output row i is input row i's sum (so a split result can be checked)."""

    def infer(self, x):
        return x.reshape(len(x), -1).sum(axis=1, keepdims=True)


def _run(coro):
    return asyncio.run(coro)


def _batcher(delay_ms: float):
    batches: list[int] = []
    b = DynamicBatcher(_Rows(), max_batch=8, max_queue_delay_ms=delay_ms, on_batch=lambda n, waits, s: batches.append(n))
    return b, batches


def test_a_lone_request_does_not_wait_out_the_delay():
    async def main():
        b, batches = _batcher(400)
        b.start()
        t0 = time.perf_counter()
        out = await b.enqueue(np.ones((1, 3), np.float32))
        elapsed = time.perf_counter() - t0
        await b.drain()
        return out, elapsed, batches

    out, elapsed, batches = _run(main())
    assert out.tolist() == [[3.0]] and batches == [1]
    assert elapsed < 0.2, f"{elapsed * 1000:.0f} ms: waited for the 400 ms delay with nobody else coming"


def test_a_request_on_its_way_in_joins_the_batch():
    async def main():
        b, batches = _batcher(400)
        b.start()
        with b.incoming():  # a second request is being received
            first = b.enqueue(np.ones((1, 3), np.float32))
            await asyncio.sleep(0.05)
            second = b.enqueue(np.full((2, 3), 2, np.float32))
        outs = await asyncio.gather(first, second)
        await b.drain()
        return outs, batches

    (a, c), batches = _run(main())
    assert batches == [3], batches  # one batch of 1 + 2 images
    assert a.tolist() == [[3.0]] and c.tolist() == [[6.0], [6.0]]


def test_the_delay_still_bounds_the_wait():
    async def main():
        b, batches = _batcher(100)
        b.start()
        with b.incoming():  # never enqueued while the first waits
            t0 = time.perf_counter()
            await b.enqueue(np.ones((1, 3), np.float32))
            elapsed = time.perf_counter() - t0
        await b.drain()
        return elapsed, batches

    elapsed, batches = _run(main())
    assert 0.09 <= elapsed < 0.5 and batches == [1], elapsed


def test_incoming_counts_down_on_errors():
    b, _ = _batcher(1)
    try:
        with b.incoming():
            assert b.arriving == 1
            raise ValueError
    except ValueError:
        pass
    assert b.arriving == 0
