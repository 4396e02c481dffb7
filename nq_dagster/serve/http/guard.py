"""The server's HTTP protocol under uvicorn: uvicorn's httptools protocol with the two limits it lacks (issue
26 item 9: 8 MB of headers were accepted, and a connection that never finished its headers stayed open):

- `MAX_HEADER_BYTES` of request line and headers: past it, 431 and the connection closed;
- `HEADER_TIMEOUT_S` to send them, counted from the connection's start or the previous answer: past it, 408
  (or a plain close when nothing of a request came) and the connection closed.

Everything else (keep-alive, body limit, WebSocket upgrade) is uvicorn's and the app's. `uvicorn_options`
gives the settings `nq serve` starts uvicorn with.
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEADER_BYTES = 64 * 1024
HEADER_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 5  # an idle keep-alive connection is closed after this (uvicorn's default, stated)
MAX_CONNECTIONS = 2048  # connections and tasks at once; past it uvicorn answers 503
WS_MAX_MESSAGE = 64 * 1024  # bytes of a WebSocket message from a client (routes/ws.py: MAX_MESSAGE)

_STATUS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """See the module docstring."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._awaiting_headers = True
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._awaiting_headers, self._header_bytes = True, 0
        self._header_timer = self.loop.call_later(HEADER_TIMEOUT_S, self._headers_timed_out)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._awaiting_headers and not self.transport.is_closing():
            self._header_bytes += len(data)  # still in the headers after this read
            if self._header_bytes > MAX_HEADER_BYTES:
                self._refuse(431, f"request line and headers over {MAX_HEADER_BYTES} bytes")

    # the parser's callbacks: a request whose headers arrive in one read is measured here
    def on_message_begin(self) -> None:
        self._parsed_bytes, self._too_large = 0, False
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count(self, n: int) -> None:
        self._parsed_bytes += n
        if self._parsed_bytes > MAX_HEADER_BYTES:
            self._too_large = True
            raise ValueError("headers too large")  # the parser stops; uvicorn calls send_400_response

    def send_400_response(self, msg: str) -> None:
        if getattr(self, "_too_large", False):
            self._refuse(431, f"request line and headers over {MAX_HEADER_BYTES} bytes")
        else:
            super().send_400_response(msg)

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # the next request's headers get the same time, unless a pipelined request already started a cycle
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if not self._awaiting_headers or self.transport.is_closing():
            return
        if self._header_bytes == 0:
            self.transport.close()  # nothing of a request: an idle connection
        else:
            self._refuse(408, f"request headers not received within {HEADER_TIMEOUT_S:g} s")

    def _refuse(self, status: int, message: str) -> None:
        self._awaiting_headers = False
        self._disarm()
        body = json.dumps({"error": {"code": status, "message": message}}).encode()
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n" % (status, _STATUS[status], len(body))
        )
        self.transport.write(head + body)
        self.transport.close()


def uvicorn_options() -> dict:
    """The limits `nq serve` gives uvicorn (tests start their servers with the same)."""
    return {
        "http": GuardedHttpToolsProtocol,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,  # where the h11 protocol is chosen instead
        "timeout_keep_alive": KEEP_ALIVE_S,
        "limit_concurrency": MAX_CONNECTIONS,
        "ws_max_size": WS_MAX_MESSAGE,
    }
