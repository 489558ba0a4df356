"""Connection-level limits uvicorn lacks: a deadline for receiving each request, a connection cap that keeps
room for health checks, and JSON instead of plain-text protocol errors.

uvicorn's only timer is ``timeout_keep_alive`` (idle time *between* requests), and any received byte cancels
it, so a client that sends its request head or body one byte a second holds a connection for ever (slow
loris). ASGI middleware cannot see a request before its head is complete, so this lives in the HTTP protocol
class: a subclass of uvicorn's protocol for the request parser in use, passed as ``uvicorn.Config(http=...)``:
``guard_httptools`` (llhttp, C; the default when ``httptools`` is installed: at 64 concurrent small requests
h11's pure-Python parser was about a fifth of the event loop) or ``guard_h11`` (h11, pure Python). Both enforce
the same rules; the shared pieces are here.

- **Head size**: a request line + headers over ``max_head_bytes`` (16 KiB) is refused (h11: 400; httptools:
  431), so a client cannot grow a connection's memory with endless headers.
- **Header deadline**: from the connection's start (or the first byte after a keep-alive pause) to a complete
  request head: ``header_timeout_s``; on expiry a 408 JSON response and the connection is closed.
- **Body deadline**: from the head to the end of the body: ``body_timeout_s`` plus a grace second (the
  application's own body timeout answers 408 first; this closes whatever still trickles, e.g. a body sent
  to an endpoint that never reads it).
- **Connection cap**: beyond ``max_connections`` open connections, a connection may only ask for
  ``/v2/health/*`` (anything else gets 503 JSON with Retry-After); beyond ``max_connections +
  health_reserve`` it is answered 503 and closed at once.
- **Drain** (SIGTERM): uvicorn closed idle keep-alive connections at once, so a request the client was sending
  just then met a closed socket (one lost request per connection), and the last responses did not say the
  connection would end. Here a response still being computed goes out with ``Connection: close``; a new
  request on an open connection gets a JSON 503 with ``Connection: close`` and Retry-After; a connection that
  stays idle is closed after ``drain_idle_s``.
"""
from __future__ import annotations

import json
import socket
from dataclasses import dataclass

HEALTH_PREFIX = "/v2/health/"


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = 256
    health_reserve: int = 64
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    retry_after_s: int = 1
    drain_idle_s: float = 2.0  # during a drain, an idle keep-alive connection is closed after this long
    max_head_bytes: int = 16 * 1024  # request line + headers (h11's max incomplete event size)


def json_response_bytes(status: int, reason: str, message: str, retry_after: int | None = None) -> bytes:
    """A complete HTTP/1.1 response ``{"error": message}`` that closes the connection."""
    body = json.dumps({"error": message}).encode()
    head = [f"HTTP/1.1 {status} {reason}", "content-type: application/json", f"content-length: {len(body)}",
            "connection: close"]
    if retry_after is not None:
        head.append(f"retry-after: {retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def health_only(app, retry_after: int):
    """An ASGI app that passes ``/v2/health/*`` to ``app`` and answers 503 to anything else."""

    async def guarded(scope, receive, send):
        if scope["type"] != "http" or scope["path"].startswith(HEALTH_PREFIX):
            return await app(scope, receive, send)
        body = json.dumps({"error": "server busy: too many open connections; retry later"}).encode()
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"), (b"retry-after", str(retry_after).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    return guarded


CLOSE = (b"connection", b"close")


def draining(retry_after: int):
    """The ASGI app a connection gets once the server drains: 503 JSON, Retry-After, Connection: close."""
    body = json.dumps({"error": "the server is shutting down; retry on a new connection"}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"retry-after", str(retry_after).encode()), CLOSE]

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def _set_nodelay(transport) -> None:
    """TCP_NODELAY on every accepted connection.

    asyncio sets it only for sockets created with ``proto=IPPROTO_TCP``; the listening socket here (ours and
    uvicorn's) has proto 0, so h11's separate header and body writes met Nagle + the client's delayed ACK and
    every keep-alive request waited ~40 ms (24 requests/s on one connection, health included).
    """
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


class CoalescingTransport:
    """The connection's transport with writes made in one event-loop step sent as one ``write`` (one syscall):
    uvicorn's h11 cycle writes a response's head and its body separately, and on loopback at high concurrency that
    second send was a tenth of the event loop's time. The first write of a step schedules the flush for the next
    loop iteration (call_soon), so nothing waits for a later write (an interim ``100 Continue`` goes out at once);
    close() and write_eof() flush first. Everything else is the wrapped transport's."""

    __slots__ = ("_transport", "_loop", "_pending")

    def __init__(self, transport, loop):
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        if self._pending:
            data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
            self._pending = []
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def __getattr__(self, name):
        return getattr(self._transport, name)


PARSERS = ("auto", "httptools", "h11")


def http_parser(choice: str = "auto") -> str:
    """The request parser ``choice`` means here: auto is httptools when it is installed, else h11."""
    if choice == "auto":
        import importlib.util

        return "httptools" if importlib.util.find_spec("httptools") is not None else "h11"
    return choice


def guarded_protocol(limits: ConnectionLimits, parser: str = "auto") -> type:
    """The uvicorn protocol class enforcing ``limits`` (one class per server) on the ``parser`` (PARSERS)."""
    if http_parser(parser) == "httptools":
        from alexnet_deploy.server.guard_httptools import guarded_httptools

        return guarded_httptools(limits)
    from alexnet_deploy.server.guard_h11 import guarded_h11

    return guarded_h11(limits)
