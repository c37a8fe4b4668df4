"""Every field of every performative on the wire, trailing nulls included, as Service Bus sends them.

AMQP lets a sender leave out trailing null fields of a performative's list, and proton does
(an OPEN without idle-time-out or properties is four fields long). Service Bus's own AMQP
stack writes every field, and some clients index fields without checking the list's length:
azure-servicebus 7.14's pyamqp reads OPEN's 5th and 10th fields and BEGIN's 8th, and fails
with IndexError on proton's shorter lists (7.15 pads what it decodes). proton has no API to
force the full list (a session has no properties setter), so :class:`FullFrames` sits on
the engine's output: it passes the bytes through, re-encoding a performative whose list is
short with explicit nulls (``0x40``) appended. The frames mean the same; only their length
changes.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FullFrames", "pad_frame"]

#: Field counts by performative descriptor code (AMQP 1.0 transport and security sections).
FIELD_COUNTS = {
    0x10: 10,  # open
    0x11: 8,  # begin
    0x12: 14,  # attach
    0x13: 11,  # flow
    0x14: 11,  # transfer
    0x15: 6,  # disposition
    0x16: 3,  # detach
    0x17: 1,  # end
    0x18: 1,  # close
    0x40: 1,  # sasl-mechanisms
    0x42: 1,  # sasl-challenge
    0x44: 2,  # sasl-outcome
}

_NULL = b"\x40"


def _encode_list(items: bytes, count: int) -> bytes:
    if len(items) + 1 <= 0xFF and count <= 0xFF:
        return bytes((0xC0, len(items) + 1, count)) + items
    return b"\xd0" + (len(items) + 4).to_bytes(4, "big") + count.to_bytes(4, "big") + items


def pad_frame(frame: bytes) -> bytes:
    """One whole frame, with its performative's list padded to the full field count."""
    if len(frame) <= 8:
        return frame  # an empty (heartbeat) frame
    body_at = frame[4] * 4
    body = frame[body_at:]
    if len(body) < 3 or body[0] != 0x00:
        return frame
    if body[1] == 0x53:  # smallulong descriptor
        code, at = body[2], 3
    elif body[1] == 0x80 and len(body) >= 10:  # ulong descriptor
        code, at = int.from_bytes(body[2:10], "big"), 10
    else:
        return frame
    want = FIELD_COUNTS.get(code)
    if want is None or len(body) <= at:
        return frame
    kind = body[at]
    if kind == 0x45:  # list0
        count, items, end = 0, b"", at + 1
    elif kind == 0xC0 and len(body) >= at + 3:  # list8
        size, count = body[at + 1], body[at + 2]
        items, end = body[at + 3 : at + 2 + size], at + 2 + size
    elif kind == 0xD0 and len(body) >= at + 9:  # list32
        size, count = int.from_bytes(body[at + 1 : at + 5], "big"), int.from_bytes(body[at + 5 : at + 9], "big")
        items, end = body[at + 9 : at + 5 + size], at + 5 + size
    else:
        return frame
    if count >= want or end > len(body):
        return frame
    padded = body[:at] + _encode_list(items + _NULL * (want - count), want) + body[end:]  # payload kept
    head = frame[4:body_at]
    return (len(padded) + body_at).to_bytes(4, "big") + head + padded


class FullFrames:
    """A proton ``Transport`` whose output (``pending``/``peek``/``pop``) has every frame
    padded by :func:`pad_frame`; everything else is the transport's own."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._out = bytearray()
        self._partial = bytearray()  # the start of a frame proton has not finished writing

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def pending(self) -> int:
        transport = self._transport
        size = transport.pending()
        if size > 0:
            self._feed(transport.peek(size))
            transport.pop(size)
        if size < 0 and not self._out:
            return size  # output closed, and all of it sent
        return len(self._out)

    def peek(self, size: int) -> bytes:
        return bytes(self._out[:size])

    def pop(self, size: int) -> None:
        del self._out[:size]

    def _feed(self, data: bytes) -> None:
        buf = self._partial + data if self._partial else data
        at, end = 0, len(buf)
        while end - at >= 8:
            if buf[at : at + 4] == b"AMQP":  # a protocol header
                self._out += buf[at : at + 8]
                at += 8
                continue
            size = int.from_bytes(buf[at : at + 4], "big")
            if size < 8 or end - at < size:
                break
            self._out += pad_frame(bytes(buf[at : at + size]))
            at += size
        self._partial = bytearray(buf[at:])
