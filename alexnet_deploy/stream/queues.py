"""The bounded queue between two pipeline stages, with the live-source drop policy and a clean shutdown.

A live stream hands its frames to inference through a queue of one (``StageQueue(1, drop_oldest=True)``): a
single slot that always holds the newest frame, so nothing stale waits in front of the model."""
from __future__ import annotations

import threading
from collections import deque


class Closed(Exception):
    """The queue was closed (and is empty, for a consumer) or aborted."""


class StageQueue:
    """A bounded FIFO. ``put`` on a full queue blocks (files never drop) or, with ``drop_oldest``, evicts the
    oldest items (live sources: the newest frame is the one worth classifying) and counts them in ``dropped``.

    ``close()`` lets the consumer drain what is queued, then ``get`` raises :class:`Closed`; ``abort()`` also
    discards the queued items and wakes every waiting producer and consumer.
    """

    def __init__(self, maxsize: int, *, drop_oldest: bool = False, on_put=None):
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self.drop_oldest = drop_oldest
        self.dropped = 0
        self._items: deque = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._on_put = on_put  # called after each put (a consumer that watches several queues waits on it)

    def put(self, item) -> int:
        """Queue ``item``; returns how many older items were evicted to make room (0 unless ``drop_oldest``)."""
        with self._cond:
            while not self.drop_oldest and len(self._items) >= self.maxsize and not self._closed:
                self._cond.wait()
            if self._closed:
                raise Closed
            evicted = 0
            while len(self._items) >= self.maxsize:
                self._items.popleft()
                evicted += 1
            self.dropped += evicted
            self._items.append(item)
            self._cond.notify_all()
        if self._on_put is not None:
            self._on_put()
        return evicted

    def get(self, block: bool = True):
        """The oldest item; ``None`` when ``block`` is false and nothing is queued; :class:`Closed` at the end."""
        with self._cond:
            while not self._items:
                if self._closed:
                    raise Closed
                if not block:
                    return None
                self._cond.wait()
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._on_put is not None:  # a watching consumer learns of the end without polling
            self._on_put()

    @property
    def closed(self) -> bool:
        return self._closed

    def abort(self) -> None:
        with self._cond:
            self._closed = True
            self._items.clear()
            self._cond.notify_all()
        if self._on_put is not None:
            self._on_put()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)
