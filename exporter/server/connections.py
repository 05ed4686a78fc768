"""Connection policy under uvicorn: a deadline for each request head, idle connections closed, a cap on connections.

uvicorn has no timeout for receiving a request: timeout_keep_alive covers only
the idle time between requests, and a connection that trickles its headers, or
never sends a byte, stays open for ever. ASGI middleware can't help, because it
runs once the head is parsed. So this wraps uvicorn's own HTTP protocol class
(h11 or httptools, whichever uvicorn picks), as xorbitsai/inference#5213 does:

- a new connection that sends nothing is idle, and is closed after the
  keep-alive timeout, as it would be between two requests;
- from the first byte of a request, its head must be complete within
  header_timeout, else the connection is closed (Go calls it ReadHeaderTimeout);
- once the head is in, the body must be complete within body_timeout, else
  the client gets a 408 and the connection is closed. Here rather than in the
  routes, because a timer per connection costs far less than a cancel scope
  per request, and because every route is covered;
- at most max_connections are open. Past the cap, the connection that has
  waited longest for a request is closed to make room, as nginx reuses its
  keep-alive connections; when every connection has a request in flight, the
  newcomer gets a 503 and is closed. uvicorn's own limit_concurrency is no
  cap: it still accepts every connection (so the open-file limit is reached
  anyway, and then accept() fails for everyone), and it counts idle
  connections without closing them, so a few thousand idle sockets make every
  request a 503 for as long as their owner likes.

The size of a body is bounded by the routes (app.py: by Content-Length before reading, and while streaming).
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

logger = logging.getLogger("uvicorn.error")

NOTICE_EVERY_S = 10.0


class ConnectionGuard:
    """The policy and bookkeeping shared by every connection of one server."""

    def __init__(self, header_timeout: float, body_timeout: float, max_connections: int):
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.request_timeout = _answer(408, "Request Timeout",
                                       f"the request body did not arrive within {body_timeout:g}s")
        self.max_connections = max_connections
        self.waiting: dict[Any, None] = {}  # connections with no request in flight, the longest-waiting first
        self.closing: set[Any] = set()  # closed by us, not yet gone: they no longer count against the cap
        self.evicted = self.refused = 0
        self._noticed = 0.0

    def protocol(self, base: type) -> type:
        """uvicorn's HTTP protocol class `base`, guarded by this policy (pass it as uvicorn.Config(http=...))."""
        return type(f"Guarded{base.__name__}", (GuardedProtocol, base), {"guard": self})

    def full(self, connections: set) -> bool:
        return len(connections) - len(self.closing) > self.max_connections

    def make_room(self) -> bool:
        """Close the connection that has waited longest for a request; False when each one has a request in flight."""
        while self.waiting:
            protocol = next(iter(self.waiting))
            del self.waiting[protocol]
            if protocol.waiting_for_request() and not protocol.transport.is_closing():
                self.close(protocol)
                self.evicted += 1
                self._notice()
                return True
        return False

    def close(self, protocol: Any) -> None:
        self.closing.add(protocol)
        protocol.transport.close()

    def _notice(self) -> None:
        """One log line now and then, never one per connection: under attack that would be a second attack."""
        now = time.monotonic()
        if now - self._noticed >= NOTICE_EVERY_S:
            self._noticed = now
            logger.warning("%d connections open (the cap, --max-connections): %d idle ones closed to make room "
                           "and %d newcomers refused with 503 so far", self.max_connections, self.evicted, self.refused)


def _answer(status: int, reason: str, message: str, extra: bytes = b"") -> bytes:
    """A whole HTTP response in the server's JSON error shape, written by the protocol itself, then closed."""
    body = json.dumps({"error": message}).encode()
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\nconnection: close\r\n%scontent-length: %d\r\n\r\n%s"
            % (status, reason.encode(), extra, len(body), body))


SERVICE_UNAVAILABLE = _answer(503, "Service Unavailable", "this server has as many connections as it takes, each with "
                              "a request in flight; retry shortly", extra=b"retry-after: 1\r\n")


class GuardedProtocol:
    """Mixed in before uvicorn's H11Protocol or HttpToolsProtocol: both keep `cycle`, `transport`, `connections`
    and the keep-alive timer under the same names."""

    guard: ConnectionGuard

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.head_deadline: asyncio.TimerHandle | None = None
        self.body_deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        guard = self.guard
        if guard.full(self.connections) and not guard.make_room():
            guard.refused += 1
            guard._notice()
            transport.write(SERVICE_UNAVAILABLE)
            guard.close(self)
            return
        guard.waiting[self] = None
        # uvicorn arms no timer before a first response: a new connection that sends nothing is as idle as a
        # kept-alive one
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def data_received(self, data: bytes) -> None:
        if self.head_deadline is None and self.waiting_for_request():
            self.head_deadline = self.loop.call_later(self.guard.header_timeout, self._head_overdue)
        super().data_received(data)
        cycle = self.cycle
        if self.body_deadline is None and cycle is not None and cycle.more_body and not cycle.response_complete:
            self.body_deadline = self.loop.call_later(self.guard.body_timeout, self._body_overdue)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._disarm()
        if not self.transport.is_closing():
            self.guard.waiting.pop(self, None)
            self.guard.waiting[self] = None  # to the back of the line

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.guard.waiting.pop(self, None)
        self.guard.closing.discard(self)
        super().connection_lost(exc)

    def waiting_for_request(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _head_overdue(self) -> None:
        self.head_deadline = None
        if self.waiting_for_request() and not self.transport.is_closing():
            logger.debug("closed a connection whose request head took longer than %gs", self.guard.header_timeout)
            self.guard.close(self)

    def _body_overdue(self) -> None:
        self.body_deadline = None
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not cycle.response_started and not self.transport.is_closing():
            logger.debug("closed a connection whose request body took longer than %gs", self.guard.body_timeout)
            self.transport.write(self.guard.request_timeout)
            self.guard.close(self)  # the route waiting for the body sees a disconnect

    def _disarm(self) -> None:
        for deadline in (self.head_deadline, self.body_deadline):
            if deadline is not None:
                deadline.cancel()
        self.head_deadline = self.body_deadline = None


class CloseWhileDraining:
    """ASGI: while the server drains (SIGTERM), every response says `connection: close`. Clients then open a new
    connection for their next request, which is served during the drain and cleanly refused after it, instead of
    losing a request on a kept-alive connection the server is about to close."""

    def __init__(self, app: Any):
        self.app = app
        self.state = app.state

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.state.draining:
            return await self.app(scope, receive, send)

        async def send_closing(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_closing)
