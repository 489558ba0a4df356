"""The connection guard (``connections``) on uvicorn's httptools protocol (llhttp, a C parser): the default when
``httptools`` is installed. At 64 concurrent small binary requests on a 2-core host, h11's pure-Python parser
was about a fifth of the event loop; with llhttp alexnet-serve answered ~1.3x the requests (docs/benchmarks/).

llhttp keeps no state a timer can ask about, so the phase of the request being received is tracked from the
parser's callbacks: IDLE (nothing since the last complete request) -> HEAD (a request has begun) -> BODY (its head
is complete) -> DONE (the whole request arrived). Timers are set after each ``feed_data`` from the phase it left,
not in the callbacks, so a request whose head and body arrive in one read arms and cancels nothing.

llhttp has no limit on the request head; ``max_head_bytes`` (request line + header names and values) is counted
in the callbacks and answered 431 with the connection closed, which h11 does with its max incomplete event size.
"""
from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from alexnet_deploy.server.connections import (CLOSE, CoalescingTransport, ConnectionLimits, _set_nodelay, draining,
                                               health_only, json_response_bytes)

IDLE, HEAD, BODY, DONE = "idle", "head", "body", "done"


class _HeadTooLarge(Exception):
    """Raised in a parser callback: llhttp stops and feed_data raises (HttpParserCallbackError)."""


def guarded_httptools(limits: ConnectionLimits) -> type:
    """The uvicorn httptools protocol class enforcing ``limits`` (one class per server)."""

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _limits = limits

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.transport = CoalescingTransport(transport, self.loop)  # one send per response (head + body)
            _set_nodelay(transport)
            self._deadline = None
            self._deadline_for = None  # (kind, request number) the armed timer is for
            self._phase = IDLE
            self._requests = 0
            self._head_bytes = 0
            self._head_too_large = False
            open_now = len(self.connections)  # includes this one
            lim = self._limits
            if open_now > lim.max_connections + lim.health_reserve:
                transport.write(json_response_bytes(503, "Service Unavailable",
                                                    "server busy: too many open connections; retry later",
                                                    lim.retry_after_s))
                transport.close()
                return
            if open_now > lim.max_connections:
                self.app = health_only(self.app, lim.retry_after_s)
            self._arm("head", lim.header_timeout_s, self._header_timeout)  # from the connection's start

        # --- timers ---------------------------------------------------------------------------------------------
        def _arm(self, kind: str, seconds: float, callback) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, callback)
            self._deadline_for = (kind, self._requests)

        def _disarm(self) -> None:
            if getattr(self, "_deadline", None) is not None:
                self._deadline.cancel()
                self._deadline = None
                self._deadline_for = None

        def _header_timeout(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            if self._phase in (IDLE, HEAD):  # still waiting for (the rest of) a request head
                self.transport.write(json_response_bytes(
                    408, "Request Timeout", f"the request head did not arrive within {self._limits.header_timeout_s:g} s"))
            self.transport.close()

        def _body_timeout(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.close()  # the application sees a disconnect

        def _track(self) -> None:
            """Set the deadline for the phase the last bytes left the request in."""
            phase, armed = self._phase, self._deadline_for
            if phase is HEAD:
                if armed is None or armed[0] != "head":  # the first byte after a keep-alive pause (or a pipelined one)
                    self._arm("head", self._limits.header_timeout_s, self._header_timeout)
            elif phase is BODY:
                if armed != ("body", self._requests):  # once per request
                    self._arm("body", self._limits.body_timeout_s + 1.0, self._body_timeout)
            elif phase is DONE:
                self._disarm()

        # --- parser callbacks -----------------------------------------------------------------------------------
        def on_message_begin(self) -> None:
            self._phase = HEAD
            self._requests += 1
            self._head_bytes = 0
            super().on_message_begin()

        def _count(self, n: int) -> None:
            self._head_bytes += n
            if self._head_bytes > self._limits.max_head_bytes:
                self._head_too_large = True
                raise _HeadTooLarge

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._phase = BODY
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._phase = DONE
            super().on_message_complete()

        # --- transport events -----------------------------------------------------------------------------------
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if not self.transport.is_closing():
                self._track()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._track()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def shutdown(self) -> None:
            """The server drains (SIGTERM): end this connection politely instead of closing it under the client."""
            self.app = draining(self._limits.retry_after_s)  # any further request on it: 503 + Connection: close
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                cycle.keep_alive = False
                if not cycle.response_started:  # the final response says so
                    cycle.default_headers = [*cycle.default_headers, CLOSE]
                return
            if not self.transport.is_closing():
                self._arm("drain", self._limits.drain_idle_s, self._drain_idle)

        def _drain_idle(self) -> None:
            self._deadline = None
            self._deadline_for = None
            if self.transport.is_closing():
                return
            if self._phase in (IDLE, DONE) and (self.cycle is None or self.cycle.response_complete) and not self.pipeline:
                self.transport.close()  # idle for drain_idle_s: nothing more is coming
            else:  # a request arrived meanwhile: its (503) response closes the connection
                self._arm("drain", self._limits.drain_idle_s, self._drain_idle)

        def send_400_response(self, msg: str) -> None:  # malformed HTTP: JSON like every other error
            if self._head_too_large:
                self.transport.write(json_response_bytes(
                    431, "Request Header Fields Too Large",
                    f"the request line and headers exceed {self._limits.max_head_bytes} bytes"))
            else:
                self.transport.write(json_response_bytes(400, "Bad Request", "malformed HTTP request"))
            self.transport.close()

    return GuardedHttpToolsProtocol

