"""The connection guard (``connections``) on uvicorn's h11 protocol: the pure-Python parser, used when httptools
is not installed or ``alexnet-serve --http-parser h11`` asks for it. Request phases come from h11's own state
(``their_state``)."""
from __future__ import annotations

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from alexnet_deploy.server.connections import (CLOSE, CoalescingTransport, ConnectionLimits, _set_nodelay, draining,
                                               health_only, json_response_bytes)


def guarded_h11(limits: ConnectionLimits) -> type:
    """The uvicorn protocol class enforcing ``limits`` (one class per server)."""

    class GuardedH11Protocol(H11Protocol):
        _limits = limits

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.transport = CoalescingTransport(transport, self.loop)  # one send per response (head + body)
            _set_nodelay(transport)
            self._deadline = None
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
            self._arm(lim.header_timeout_s, self._header_timeout)

        def _arm(self, seconds: float, callback) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, callback)

        def _disarm(self) -> None:
            if getattr(self, "_deadline", None) is not None:
                self._deadline.cancel()
                self._deadline = None

        def _header_timeout(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            if self.conn.their_state is h11.IDLE:  # still waiting for (the rest of) a request head
                self.transport.write(json_response_bytes(
                    408, "Request Timeout", f"the request head did not arrive within {self._limits.header_timeout_s:g} s"))
            self.transport.close()

        def _body_timeout(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.close()  # the application sees a disconnect

        def _track(self) -> None:
            state = self.conn.their_state
            if state is h11.SEND_BODY:
                if getattr(self, "_phase", None) is not self.cycle:  # once per request
                    self._phase = self.cycle
                    self._arm(self._limits.body_timeout_s + 1.0, self._body_timeout)
            elif state is not h11.IDLE:  # DONE / MUST_CLOSE / ERROR / CLOSED: the request is fully received
                self._disarm()

        def data_received(self, data: bytes) -> None:
            if self._deadline is None and self.conn.their_state is h11.IDLE:
                self._arm(self._limits.header_timeout_s, self._header_timeout)  # a new request after keep-alive
            super().data_received(data)
            if not self.transport.is_closing():
                self._track()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._track()  # a pipelined request may have started from buffered bytes

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def shutdown(self) -> None:
            """The server drains (SIGTERM): end this connection politely instead of closing it under the client."""
            self.app = draining(self._limits.retry_after_s)  # any further request on it: 503 + Connection: close
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                cycle.keep_alive = False
                if not cycle.response_started:  # the final response says so (h11 then closes after it)
                    cycle.default_headers = [*cycle.default_headers, CLOSE]
                return
            if not self.transport.is_closing():
                self._arm(self._limits.drain_idle_s, self._drain_idle)

        def _drain_idle(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            if self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete):
                self.transport.close()  # idle for drain_idle_s: nothing more is coming
            else:  # a request arrived meanwhile: its (503) response closes the connection
                self._arm(self._limits.drain_idle_s, self._drain_idle)

        def send_400_response(self, msg: str) -> None:  # malformed HTTP: JSON like every other error
            self.transport.write(json_response_bytes(400, "Bad Request", "malformed HTTP request"))
            self.transport.close()

    return GuardedH11Protocol
