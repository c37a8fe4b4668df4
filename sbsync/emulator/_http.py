"""HTTP/1.1 on the emulator's port: the door for the administration API.

The SDK's ``ServiceBusAdministrationClient`` always speaks HTTPS to the connection string's
own host:port, i.e. to our AMQP port. The front door (``_frontdoor``) sends a connection
here when its first plaintext byte is not an AMQP header (inside TLS, or in the clear for
tools like curl), and ``HttpConnection`` turns its bytes into calls of one handler.

The handler interface (what the administration API plugs into)::

    HttpHandler = Callable[[str, str, dict[str, str], bytes], tuple[int, dict[str, str], bytes]]

    def handler(method, target, headers, body):
        # method: "GET", "PUT", "DELETE", ... (as sent)
        # target: the request target as sent, path and query: "/myqueue?api-version=2021-05"
        # headers: names lower-cased; repeated headers joined with ", "
        # body: the whole request body (Content-Length or chunked, already decoded)
        return 200, {"Content-Type": "application/atom+xml"}, b"<entry ...>"

- It runs on the emulator's loop thread, like every AMQP callback, so it may read and
  change the broker directly (``Adapter.broker``) and must not block.
- Set it with ``Emulator.http_handler = handler`` (or ``Adapter.http_handler``); the default,
  ``not_found``, answers 404 to everything.
- We add ``Content-Length`` (and ``Connection: close`` when closing); a raised exception is
  logged and answered with 500. Connections are persistent (HTTP/1.1 keep-alive) unless the
  client asks for ``Connection: close``; ``Expect: 100-continue`` is honoured.
"""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Callable

_LOG = logging.getLogger(__name__)

HttpHandler = Callable[[str, str, "dict[str, str]", bytes], "tuple[int, dict[str, str], bytes]"]

MAX_HEAD = 64 * 1024
_LINE_MAX = 16 * 1024
# what a request line may look like so far: a method token, a target, a version
_REQUEST_LINE_PREFIX = re.compile(rb"(?:[A-Z]{1,16}(?: [\x21-\x7e]*(?: [\x21-\x7e]*)?)?)?\r?")
MAX_BODY = 64 * 1024 * 1024


def not_found(method: str, target: str, headers: dict[str, str],
              body: bytes) -> tuple[int, dict[str, str], bytes]:
    """The default handler: nothing is served over HTTP."""
    return 404, {"Content-Type": "text/plain; charset=utf-8"}, \
        f"No HTTP resource at {target}\n".encode()


class HttpError(Exception):
    """A request we cannot parse: answered with ``status`` and the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def response(status: int, headers: dict[str, str], body: bytes, close: bool = False) -> bytes:
    """Serialise one HTTP/1.1 response."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [f"HTTP/1.1 {status} {reason}"]
    for name, value in headers.items():
        if name.lower() not in ("content-length", "connection", "transfer-encoding"):
            lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class HttpConnection:
    """One HTTP/1.1 connection's request parser; ``feed`` returns the bytes to send back."""

    def __init__(self, handler: Callable[[], HttpHandler]) -> None:
        self._handler = handler  # looked up per request, so a handler set later applies
        self._buf = bytearray()
        self._head: tuple[str, str, dict[str, str]] | None = None
        self._continued = False
        self.closing = False  # answer sent with Connection: close; nothing more is read

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        out = bytearray()
        while not self.closing:
            try:
                reply = self._next()
            except HttpError as exc:
                self.closing = True
                out += response(exc.status, {"Content-Type": "text/plain; charset=utf-8"},
                                f"{exc}\n".encode(), close=True)
                break
            if reply is None:
                break
            out += reply
        return bytes(out)

    def _next(self) -> bytes | None:
        """Handle the next complete request in the buffer, if there is one."""
        if self._head is None:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                self._check_start()
                if len(self._buf) > MAX_HEAD:
                    raise HttpError(431, "request head too large")
                return None
            self._head = self._parse_head(bytes(self._buf[:end]).decode("latin-1"))
            del self._buf[: end + 4]
            self._continued = False
        method, target, headers = self._head
        early = b""
        if headers.get("expect", "").lower() == "100-continue" and not self._continued:
            self._continued = True
            early = b"HTTP/1.1 100 Continue\r\n\r\n"
        body = self._body(headers)
        if body is None:
            return early or None
        self._head = None
        close = "close" in headers.get("connection", "").lower()
        try:
            status, out_headers, out_body = self._handler()(method, target, headers, body)
        except Exception as exc:  # a bug in the handler: answer, keep serving
            _LOG.exception("HTTP %s %s failed", method, target)
            status, out_headers, out_body = 500, {"Content-Type": "text/plain"}, \
                f"Internal error: {exc!r}\n".encode()
        if close:
            self.closing = True
        return early + response(status, out_headers, out_body, close)

    def _check_start(self) -> None:
        """Fail fast on bytes that cannot begin a request line (``METHOD target HTTP/1.x``),
        rather than wait for a blank line that noise may never contain."""
        line_end = self._buf.find(b"\r\n")
        line = bytes(self._buf[: _LINE_MAX + 1] if line_end < 0 else self._buf[:line_end])
        if len(line) > _LINE_MAX:
            raise HttpError(414, "request line too long")
        if not _REQUEST_LINE_PREFIX.fullmatch(line):
            raise HttpError(400, "not an HTTP request")

    @staticmethod
    def _parse_head(text: str) -> tuple[str, str, dict[str, str]]:
        lines = text.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise HttpError(400, f"not an HTTP/1.1 request line: {lines[0][:100]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise HttpError(400, f"malformed header line: {line[:100]!r}")
            key = name.lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        return parts[0], parts[1], headers

    def _body(self, headers: dict[str, str]) -> bytes | None:
        """The whole body once it is in the buffer (consumed), else None."""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return self._chunked()
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise HttpError(400, "bad Content-Length") from None
        if length < 0 or length > MAX_BODY:
            raise HttpError(413, "request body too large")
        if len(self._buf) < length:
            return None
        body = bytes(self._buf[:length])
        del self._buf[:length]
        return body

    def _chunked(self) -> bytes | None:
        pos, body = 0, bytearray()
        while True:
            eol = self._buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            try:
                size = int(bytes(self._buf[pos:eol]).split(b";")[0], 16)
            except ValueError:
                raise HttpError(400, "bad chunk size") from None
            if size == 0:  # last chunk; then (ignored) trailers up to an empty line
                end = self._buf.find(b"\r\n\r\n", eol)
                if end < 0:
                    return None
                del self._buf[: end + 4]
                return bytes(body)
            if len(body) + size > MAX_BODY:
                raise HttpError(413, "request body too large")
            if len(self._buf) < eol + 2 + size + 2:
                return None
            body += self._buf[eol + 2: eol + 2 + size]
            pos = eol + 2 + size + 2
