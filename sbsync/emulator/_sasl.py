"""The SASL exchange that opens every AMQP connection, answered by us rather than by proton.

Service Bus offers ``MSSBCBS`` (the uAMQP transport insists on it: "Could not find desired
SASL mechanism") as well as ``ANONYMOUS`` (pyamqp, rhea); either way the client proves
nothing here and authorises its links later with CBS tokens. proton's built-in SASL layer
(without Cyrus) cannot offer a mechanism it does not implement, so ``SaslServer`` answers the
few frames of the exchange itself and then hands the byte stream, starting at the client's
AMQP protocol header, to a proton transport that has no SASL layer.
"""

from __future__ import annotations

import struct
from typing import Callable

from proton import Data

from . import _codec as codec

SASL_HEADER = b"AMQP\x03\x01\x00\x00"
MECHANISMS = ("MSSBCBS", "ANONYMOUS")

_FRAME = struct.Struct(">IBBH")  # size, data offset (words), type, channel
_SASL_FRAME_TYPE = 1
_MAX_FRAME = 64 * 1024  # sasl-init carries at most a hostname and a short response
_MECHANISMS_CODE, _INIT_CODE, _OUTCOME_CODE = 0x40, 0x41, 0x44
_OUTCOME_OK, _OUTCOME_AUTH = 0, 1


class SaslError(Exception):
    """The client broke the SASL protocol or chose a mechanism we do not offer; ``reply``
    is what to send before closing."""

    def __init__(self, message: str, reply: bytes = b"") -> None:
        super().__init__(message)
        self.reply = reply


def _frame(code: int, put_fields: Callable[[Data], None]) -> bytes:
    data = Data()
    data.put_described()
    data.enter()
    data.put_ulong(code)
    data.put_list()
    data.enter()
    put_fields(data)
    data.exit()
    data.exit()
    body = data.encode()
    return _FRAME.pack(8 + len(body), 2, _SASL_FRAME_TYPE, 0) + body


def _put_mechanisms(data: Data) -> None:
    data.put_array(False, Data.SYMBOL)
    data.enter()
    for name in MECHANISMS:
        data.put_symbol(name)
    data.exit()


# built once: every connection sends the same bytes
_GREETING = SASL_HEADER + _frame(_MECHANISMS_CODE, _put_mechanisms)
_OUTCOME = _frame(_OUTCOME_CODE, lambda data: data.put_ubyte(_OUTCOME_OK))
_REFUSAL = _frame(_OUTCOME_CODE, lambda data: data.put_ubyte(_OUTCOME_AUTH))


class SaslServer:
    """Consumes the SASL part of a connection's input; ``done`` once the client may speak
    AMQP (the rest of the input, from its AMQP header on, belongs to proton)."""

    __slots__ = ("_greeted", "done", "mechanism")

    def __init__(self) -> None:
        self._greeted = False
        self.done = False
        self.mechanism: str | None = None

    def feed(self, buf: bytearray) -> bytes:
        """Consume what SASL frames ``buf`` holds (in place); return the bytes to send."""
        out = b""
        if not self._greeted:
            if len(buf) < 8:
                return out
            header = bytes(buf[:8])
            if header != SASL_HEADER:  # the service requires SASL: name it and hang up
                raise SaslError(f"unsupported protocol header {header!r}", SASL_HEADER)
            del buf[:8]
            self._greeted = True
            out = _GREETING
        while not self.done and len(buf) >= 8:
            size, doff, ftype, _ = _FRAME.unpack_from(buf)
            if size < 8 or size > _MAX_FRAME or doff < 2 or ftype != _SASL_FRAME_TYPE:
                raise SaslError("malformed SASL frame", out)
            if len(buf) < size:
                break
            body = bytes(buf[doff * 4: size])
            del buf[:size]
            if not body:  # an empty frame (heartbeat)
                continue
            out += self._performative(body, out)
        return out

    def _performative(self, body: bytes, sent: bytes) -> bytes:
        try:
            value, _ = codec.decode(body)
        except codec.CodecError as exc:
            raise SaslError("undecodable SASL frame", sent) from exc
        if not isinstance(value, codec.Described) or value.descriptor != _INIT_CODE:
            raise SaslError("expected sasl-init", sent)
        fields = value.value if isinstance(value.value, list) else []
        mechanism = str(fields[0]) if fields else ""
        if mechanism not in MECHANISMS:
            raise SaslError(f"mechanism {mechanism!r} is not offered", sent + _REFUSAL)
        self.mechanism = mechanism
        self.done = True
        return _OUTCOME
