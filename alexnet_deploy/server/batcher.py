"""Dynamic batching: concurrent requests coalesced up to ``max_batch`` images or ``max_queue_delay_ms``,
run as one batch off the event loop (one worker thread owns the runner), results split back.

The queue delay is an upper bound, not a fixed wait: a batch waits for more requests only while some request is
on its way in (its handler has started and is still receiving or parsing it: ``incoming()``). With nobody else
coming (one client, or every client already queued) it starts at once; at concurrency 1 that wait was the whole
2 ms default per request (Triton's dynamic batcher waits it out)."""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np


class QueueFull(Exception):
    pass


@dataclass
class _Item:
    x: np.ndarray
    future: asyncio.Future
    enqueued: float


class DynamicBatcher:
    def __init__(self, runner, max_batch: int = 32, max_queue_delay_ms: float = 2.0, max_queue: int = 256,
                 on_batch=None):
        self.runner = runner
        self.max_batch = max(1, int(max_batch))
        self.delay = max(0.0, max_queue_delay_ms) / 1000.0
        self.max_queue = int(max_queue)
        self.on_batch = on_batch  # callback(batch_images, queue_seconds_list, compute_seconds)
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._pending_images = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infer")
        self._task: asyncio.Task | None = None
        self._closing = False
        self.arriving = 0  # requests being received or parsed (incoming()): worth waiting for

    @contextmanager
    def incoming(self):
        """Around receiving and parsing one request: while any is open, a forming batch waits (up to the delay)."""
        self.arriving += 1
        try:
            yield
        finally:
            self.arriving -= 1

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def submit(self, x: np.ndarray) -> np.ndarray:
        return await self.enqueue(x)

    def enqueue(self, x: np.ndarray) -> asyncio.Future:
        """Queue ``x`` (QueueFull when shutting down or over --max-queue) -> the future of its output rows. A future
        that is already done when its batch finishes (deadline passed, client gone) is skipped."""
        if self._closing:
            raise QueueFull("the server is shutting down")
        if self._pending_images + len(x) > self.max_queue:
            raise QueueFull(f"the queue holds {self._pending_images} images (limit {self.max_queue})")
        fut = asyncio.get_running_loop().create_future()
        self._pending_images += len(x)
        self._queue.put_nowait(_Item(x, fut, time.perf_counter()))  # unbounded queue: never blocks
        return fut

    async def run_direct(self, x: np.ndarray) -> np.ndarray:
        """Run on the inference thread without batching (warm-up)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.runner.infer, x)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            items, n = [first], len(first.x)
            deadline = first.enqueued + self.delay
            while n < self.max_batch:
                timeout = deadline - time.perf_counter()
                if not self._queue.empty():
                    nxt = self._queue.get_nowait()  # a backlog joins at once, whatever the deadline
                elif timeout <= 0 or self.arriving <= 0:  # out of time, or nobody else on the way
                    break
                else:
                    try:
                        nxt = await asyncio.wait_for(self._queue.get(), timeout=timeout)
                    except asyncio.TimeoutError:
                        break
                if n + len(nxt.x) > self.max_batch:
                    await self._run(loop, items)  # run what we have; the newcomer starts the next batch
                    items, n, deadline = [nxt], len(nxt.x), nxt.enqueued + self.delay
                    continue
                items.append(nxt)
                n += len(nxt.x)
            await self._run(loop, items)

    def _timed_infer(self, x: np.ndarray):
        t0 = time.perf_counter()
        out = self.runner.infer(x)
        return out, time.perf_counter() - t0

    async def _run(self, loop, items: list[_Item]) -> None:
        now = time.perf_counter()
        x = np.concatenate([it.x for it in items]) if len(items) > 1 else items[0].x
        try:
            out = await loop.run_in_executor(self._executor, self._timed_infer, x)
        except Exception as exc:  # noqa: BLE001 - handed to every waiting request
            for it in items:
                if not it.future.done():
                    it.future.set_exception(exc)
            return
        finally:
            self._pending_images -= len(x)  # queued + in flight: what drain() waits for
        out, compute_s = out
        if self.on_batch:
            self.on_batch(len(x), [now - it.enqueued for it in items], compute_s)
        start = 0
        for it in items:
            if not it.future.done():
                it.future.set_result(out[start: start + len(it.x)])
            start += len(it.x)

    async def drain(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then stop (graceful shutdown)."""
        self._closing = True
        end = time.perf_counter() + timeout
        while (self._pending_images > 0 or not self._queue.empty()) and time.perf_counter() < end:
            await asyncio.sleep(0.01)
        if self._task:
            self._task.cancel()
        self._executor.shutdown(wait=True)
