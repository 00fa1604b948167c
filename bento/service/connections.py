"""Connections one client cannot hoard (uvicorn's HTTP protocol, replaced by patches.py).

uvicorn starts no timer until a connection's first response: a client that sends a request line and never ends its
headers holds the connection, a file descriptor and a parser for ever (6,000 such connections were all still open
after 20 s), and nothing limits how many one address opens. Here a connection must complete its first request's
headers within `header_timeout_seconds` of opening, and each later request's within that of its first byte (idle
kept-alive connections stay uvicorn's keep-alive timeout's business), or is answered 408 and closed (a connection
that never sent a byte is just closed); and one
client address holds at most `max_connections_per_client` connections at once in a worker, the next one being
answered 503 and closed at once."""

from __future__ import annotations

from collections import Counter

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from bento.service.build import args

_OPEN: Counter = Counter()  # open connections per client address, in this worker


class BoundedConnections(HttpToolsProtocol):
    _deadline = None
    _address = None
    _begun = False  # a request's first bytes came, its headers are not complete yet

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._address = self.client[0] if self.client else None
        _OPEN[self._address] += 1
        if self._address is not None and _OPEN[self._address] > args.max_connections_per_client:
            return self._refuse(503, f"more than {args.max_connections_per_client} connections from one address "
                                     "(package.max_connections_per_client)")
        self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        if self._address is not None:
            _OPEN[self._address] -= 1
            if _OPEN[self._address] <= 0:
                del _OPEN[self._address]
            self._address = None
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._begun = True
        if self._deadline is None:  # a later request on a kept-alive connection: its headers, on their own clock
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        self._begun = False
        super().on_headers_complete()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(args.header_timeout_seconds, self._stalled)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _stalled(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if not self._begun:  # opened and never used: nothing to answer
            self.transport.close()
            return
        self._refuse(408, f"the request headers did not arrive within {args.header_timeout_seconds:g} s "
                          "(package.header_timeout_seconds)")

    def _refuse(self, status: int, error: str) -> None:
        import json

        body = json.dumps({"error": error}).encode()
        reason = {408: b"Request Timeout", 503: b"Service Unavailable"}[status]
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n%s" % (status, reason, len(body), body))
        self.transport.close()
