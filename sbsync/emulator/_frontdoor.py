"""One port, every client: what a new connection speaks, decided by its first bytes.

- ``A`` (an AMQP protocol header): AMQP in the clear, as the SDK speaks to
  ``UseDevelopmentEmulator=true``;
- ``0x16`` (a TLS handshake record): TLS, and inside it again ``A`` = AMQPS (uAMQP, pyamqp
  with TLS, production-shaped clients) or anything else = HTTP/1.1 (the administration
  client's HTTPS); a TLS-only listener (``--tls-port``) accepts nothing but this;
- anything else: HTTP/1.1 in the clear.

AMQP connections first pass through our SASL exchange (``_sasl``). Once a plain AMQP
connection is past it, the loop drops its ``FrontDoor`` and pushes bytes straight into
proton, so the plain path costs what it did before; TLS and HTTP connections keep theirs.
TLS runs in memory (``ssl.SSLObject`` over ``MemoryBIO``), so the single-threaded loop keeps
its non-blocking sockets.
"""

from __future__ import annotations

import logging
import ssl
from typing import Callable

from ._http import HttpConnection, HttpHandler
from ._sasl import SaslError, SaslServer

_LOG = logging.getLogger(__name__)

_TLS_HANDSHAKE = 0x16
_AMQP_FIRST = ord("A")
_READ = 64 * 1024


class FrontError(Exception):
    """The connection cannot go on (bad TLS, bad SASL, TLS required): close it once
    ``out`` is sent."""


class FrontDoor:
    """A connection's bytes between the socket and proton (or the HTTP handler).

    The loop feeds raw socket bytes in (``feed``), takes ``amqp_in`` for the proton transport
    once ``amqp`` is set, hands the transport's output to ``send_amqp``, and writes ``out``
    to the socket.
    """

    __slots__ = ("_handshaken", "_http", "_http_handler", "_plain", "_sasl", "_tls", "_tls_context",
                 "_tls_in", "_tls_only", "_tls_out", "amqp", "amqp_in", "closing", "out")

    def __init__(self, tls_context: Callable[[], ssl.SSLContext], tls_only: bool,
                 http_handler: Callable[[], HttpHandler]) -> None:
        self._tls_context = tls_context
        self._tls_only = tls_only
        self._http_handler = http_handler
        self._tls: ssl.SSLObject | None = None
        self._tls_in: ssl.MemoryBIO | None = None
        self._tls_out: ssl.MemoryBIO | None = None
        self._handshaken = False
        self._plain: bytearray | None = None  # plaintext before its protocol is known
        self._sasl: SaslServer | None = None
        self._http: HttpConnection | None = None
        self.amqp = False  # past SASL: the loop binds a proton transport
        self.amqp_in = bytearray()  # plaintext for the transport
        self.out = bytearray()  # bytes for the socket
        self.closing = False  # close once ``out`` is sent

    @property
    def tls(self) -> bool:
        return self._tls is not None

    @property
    def direct(self) -> bool:
        """Plain AMQP past SASL with nothing buffered: the loop may bypass us from now on."""
        return self.amqp and self._tls is None and not self.out and not self.amqp_in

    # ------------------------------------------------------------ input

    def feed(self, raw: bytes) -> None:
        """Raw bytes from the socket (never empty)."""
        if self._plain is None and self._tls is None:  # the very first bytes
            if raw[0] == _TLS_HANDSHAKE:
                self._start_tls()
            elif self._tls_only:
                raise FrontError("a TLS-only port got a connection without a TLS handshake")
            self._plain = bytearray()
        if self._tls is not None:
            assert self._tls_in is not None
            self._tls_in.write(raw)
            self._receive(self._tls_read())
        else:
            self._receive(raw)

    def _receive(self, data: bytes) -> None:
        if not data:
            return
        if self.amqp:
            self.amqp_in += data
            return
        if self._http is not None:
            self._send(self._http.feed(data))
            if self._http.closing:
                self.closing = True
            return
        buf = self._plain
        assert buf is not None
        buf += data
        if self._sasl is None:
            if buf[0] != _AMQP_FIRST:
                self._http = HttpConnection(self._http_handler)
                self._plain = None
                self._receive(bytes(buf))
                return
            self._sasl = SaslServer()
        try:
            reply = self._sasl.feed(buf)
        except SaslError as exc:
            self._send(exc.reply)
            raise FrontError(f"SASL: {exc}") from None
        self._send(reply)
        if self._sasl.done:
            _LOG.debug("SASL %s%s", self._sasl.mechanism, " over TLS" if self._tls else "")
            self.amqp = True
            self.amqp_in += buf
            self._plain = None

    # ------------------------------------------------------------ output

    def send_amqp(self, data: bytes) -> None:
        """Output of the proton transport."""
        self._send(data)

    def _send(self, data: bytes) -> None:
        if not data:
            return
        if self._tls is None:
            self.out += data
            return
        try:
            self._tls.write(data)
        except ssl.SSLError as exc:
            raise FrontError(f"TLS: {exc}") from None
        self._drain_tls()

    def close_tls(self) -> None:
        """Queue a TLS close_notify (a polite end; errors do not matter here)."""
        if self._tls is not None:
            try:
                self._tls.unwrap()
            except (ssl.SSLError, ValueError):
                pass
            self._drain_tls()

    # ------------------------------------------------------------ TLS

    def _start_tls(self) -> None:
        try:
            context = self._tls_context()
        except Exception as exc:  # no usable certificate: say so once per connection
            _LOG.warning("TLS connection refused: %s", exc)
            raise FrontError(f"TLS is not available: {exc}") from None
        self._tls_in, self._tls_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._tls_in, self._tls_out, server_side=True)

    def _tls_read(self) -> bytes:
        tls = self._tls
        assert tls is not None
        chunks = []
        try:
            if not self._handshaken:
                tls.do_handshake()
                self._handshaken = True
            while True:
                chunk = tls.read(_READ)
                if not chunk:
                    break
                chunks.append(chunk)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass  # handshake in progress, or a partial record: more input needed
        except ssl.SSLZeroReturnError:  # close_notify: treat as end of input
            self.closing = True
        except ssl.SSLError as exc:
            self._drain_tls()  # the alert, if any
            raise FrontError(f"TLS: {exc}") from None
        self._drain_tls()
        return b"".join(chunks)

    def _drain_tls(self) -> None:
        assert self._tls_out is not None
        pending = self._tls_out.pending
        if pending:
            self.out += self._tls_out.read(pending)
