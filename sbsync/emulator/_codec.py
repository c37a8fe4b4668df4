"""Minimal AMQP 1.0 type codec for the hot path: split messages into sections, read the few
fields the broker needs, and write the header and annotation sections of a delivery.

Everything else (management bodies, CBS) goes through proton's own codec; this module exists
because re-encoding whole messages with proton for every delivery is the dominant cost.
"""

from __future__ import annotations

import struct
import uuid
from typing import Any

BATCH_FORMAT = 0x80013700

# section descriptor codes
HEADER, DELIVERY_ANN, MESSAGE_ANN, PROPERTIES, APP_PROPS = 0x70, 0x71, 0x72, 0x73, 0x74
DATA, SEQUENCE, VALUE, FOOTER = 0x75, 0x76, 0x77, 0x78
_BODY_CODES = (DATA, SEQUENCE, VALUE)

_U8 = struct.Struct(">B")
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")
_U64 = struct.Struct(">Q")

# width of the fixed-size part by the constructor's high nibble
_FIXED = {0x4: 0, 0x5: 1, 0x6: 2, 0x7: 4, 0x8: 8, 0x9: 16}


class CodecError(ValueError):
    """The bytes are not a well-formed AMQP encoding."""


class Described:
    """An undecoded-meaning described value (descriptor, value)."""

    __slots__ = ("descriptor", "value")

    def __init__(self, descriptor: Any, value: Any) -> None:
        self.descriptor = descriptor
        self.value = value


class Symbol(str):
    """A decoded AMQP symbol (kept distinct from strings so it can be re-encoded as one)."""


def skip(buf: bytes, pos: int) -> int:
    """Return the position just after the encoded value starting at ``pos``."""
    try:
        code = buf[pos]
        pos += 1
        if code == 0x00:
            pos = skip(buf, pos)
            return skip(buf, pos)
        hi = code >> 4
        width = _FIXED.get(hi)
        if width is not None:
            end = pos + width
        elif hi in (0xA, 0xC, 0xE):
            end = pos + 1 + buf[pos]
        elif hi in (0xB, 0xD, 0xF):
            end = pos + 4 + _U32.unpack_from(buf, pos)[0]
        else:
            raise CodecError(f"bad constructor 0x{code:02x}")
    except (IndexError, struct.error) as exc:
        raise CodecError("truncated value") from exc
    if end > len(buf):
        raise CodecError("truncated value")
    return end


def decode(buf: bytes, pos: int = 0) -> tuple[Any, int]:
    """Decode one value; return it and the position after it."""
    try:
        return _decode(buf, pos)
    except (IndexError, struct.error, UnicodeDecodeError) as exc:
        raise CodecError("malformed value") from exc


def _decode(buf: bytes, pos: int) -> tuple[Any, int]:
    return _decode_body(buf[pos], buf, pos + 1)


def _decode_body(code: int, buf: bytes, pos: int) -> tuple[Any, int]:
    if code == 0x00:
        descriptor, pos = _decode(buf, pos)
        value, pos = _decode(buf, pos)
        return Described(descriptor, value), pos
    if code == 0x40:
        return None, pos
    if code == 0x41:
        return True, pos
    if code == 0x42:
        return False, pos
    if code in (0x43, 0x44):
        return 0, pos
    if code == 0x45:
        return [], pos
    if code in (0x50, 0x52, 0x53):
        return buf[pos], pos + 1
    if code in (0x51, 0x54, 0x55):
        return struct.unpack_from(">b", buf, pos)[0], pos + 1
    if code == 0x56:
        return buf[pos] != 0, pos + 1
    if code == 0x60:
        return struct.unpack_from(">H", buf, pos)[0], pos + 2
    if code == 0x61:
        return struct.unpack_from(">h", buf, pos)[0], pos + 2
    if code == 0x70:
        return _U32.unpack_from(buf, pos)[0], pos + 4
    if code == 0x71:
        return struct.unpack_from(">i", buf, pos)[0], pos + 4
    if code == 0x72:
        return struct.unpack_from(">f", buf, pos)[0], pos + 4
    if code == 0x80:
        return _U64.unpack_from(buf, pos)[0], pos + 8
    if code in (0x81, 0x83):
        return _I64.unpack_from(buf, pos)[0], pos + 8
    if code == 0x82:
        return struct.unpack_from(">d", buf, pos)[0], pos + 8
    if code == 0x98:
        return uuid.UUID(bytes=bytes(buf[pos : pos + 16])), pos + 16
    if code in (0xA0, 0xA1, 0xA3, 0xB0, 0xB1, 0xB3):
        if code & 0x10:
            n = _U32.unpack_from(buf, pos)[0]
            pos += 4
        else:
            n = buf[pos]
            pos += 1
        raw = bytes(buf[pos : pos + n])
        if len(raw) != n:
            raise CodecError("truncated value")
        pos += n
        if code in (0xA0, 0xB0):
            return raw, pos
        text = raw.decode("utf-8")
        return (Symbol(text) if code in (0xA3, 0xB3) else text), pos
    if code in (0xC0, 0xC1, 0xD0, 0xD1):
        if code >= 0xD0:
            count = _U32.unpack_from(buf, pos + 4)[0]
            pos += 8
        else:
            count = buf[pos + 1]
            pos += 2
        items = []
        for _ in range(count):
            item, pos = _decode(buf, pos)
            items.append(item)
        if code in (0xC1, 0xD1):
            return {_hashable(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}, pos
        return items, pos
    if code in (0xE0, 0xF0):
        if code == 0xF0:
            count = _U32.unpack_from(buf, pos + 4)[0]
            pos += 8
        else:
            count = buf[pos + 1]
            pos += 2
        elem = buf[pos]
        if elem == 0x00:
            raise CodecError("described arrays are not supported")
        pos += 1
        out = []
        for _ in range(count):
            item, pos = _decode_body(elem, buf, pos)
            out.append(item)
        return out, pos
    raise CodecError(f"unsupported constructor 0x{code:02x}")


def _hashable(key: Any) -> Any:
    return key if not isinstance(key, (list, dict)) else repr(key)


# ---------------------------------------------------------------- encoding


def enc_long(v: int) -> bytes:
    return b"\x81" + _I64.pack(v)


def enc_bool(v: bool) -> bytes:
    return b"\x41" if v else b"\x42"


def enc_str(v: str, code8: int = 0xA1) -> bytes:
    raw = v.encode("utf-8")
    if len(raw) < 256:
        return bytes((code8, len(raw))) + raw
    return bytes((code8 + 0x10,)) + _U32.pack(len(raw)) + raw


def enc_symbol(v: str) -> bytes:
    return enc_str(v, 0xA3)


def enc_binary(v: bytes) -> bytes:
    if len(v) < 256:
        return bytes((0xA0, len(v))) + v
    return b"\xb0" + _U32.pack(len(v)) + v


def enc_value(v: Any) -> bytes:
    """Encode a simple Python value (used for annotation and application property values)."""
    if v is None:
        return b"\x40"
    if isinstance(v, bool):
        return enc_bool(v)
    if isinstance(v, Symbol):
        return enc_symbol(v)
    if isinstance(v, str):
        return enc_str(v)
    if isinstance(v, int):
        return enc_long(v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return enc_binary(bytes(v))
    if isinstance(v, float):
        return b"\x82" + struct.pack(">d", v)
    if isinstance(v, uuid.UUID):
        return b"\x98" + v.bytes
    raise CodecError(f"cannot encode {type(v).__name__}")


def enc_compound(code32: int, elements: bytes, count: int) -> bytes:
    """A list (0xd0) or map (0xd1) from already-encoded elements."""
    return bytes((code32,)) + _U32.pack(len(elements) + 4) + _U32.pack(count) + elements


def section(code: int, value: bytes) -> bytes:
    return b"\x00\x53" + bytes((code,)) + value


def enc_header(durable: bool, priority: int, ttl_ms: int | None, first_acquirer: bool,
               delivery_count: int) -> bytes:
    # delivery-count always written, even when 0: the SDK reads it from here
    ttl = b"\x40" if ttl_ms is None else b"\x70" + _U32.pack(min(ttl_ms, 0xFFFFFFFF))
    fields = (enc_bool(durable) + b"\x50" + _U8.pack(priority & 0xFF) + ttl
              + enc_bool(first_acquirer) + b"\x70" + _U32.pack(delivery_count))
    return section(HEADER, enc_compound(0xD0, fields, 5))


# ---------------------------------------------------------------- messages


class ParsedMessage:
    """An incoming message split into its sections.

    ``bare`` holds the properties, application-properties, body and footer sections exactly
    as sent; ``app_start:app_end`` is the application-properties section within it.
    """

    __slots__ = ("annotations", "app_end", "app_start", "bare", "durable", "group_id",
                 "has_id", "priority", "ttl_ms")

    def __init__(self) -> None:
        self.durable = False
        self.priority = 4
        self.ttl_ms: int | None = None
        self.annotations: tuple[tuple[Any, bytes], ...] = ()  # (key, raw key+value bytes)
        self.bare = b""
        self.app_start = 0
        self.app_end = 0
        self.group_id: str | None = None
        self.has_id = False  # properties carry a message-id


def parse_message(buf: bytes) -> ParsedMessage:
    """Split an encoded message into sections; raise CodecError when malformed."""
    msg = ParsedMessage()
    pos, n = 0, len(buf)
    if n == 0:
        raise CodecError("empty message")
    bare_start = -1
    app = (0, 0)
    try:
        while pos < n:
            if buf[pos] != 0x00 or buf[pos + 1] != 0x53:
                raise CodecError("expected a section")
            desc = buf[pos + 2]
            vpos = pos + 3
            if desc in _BODY_CODES:
                if bare_start < 0:
                    bare_start = pos
                skip(buf, vpos)  # the first body section must at least be well-formed
                break  # body sections and footer travel unchanged
            end = skip(buf, vpos)
            if desc == HEADER:
                fields, _ = decode(buf, vpos)
                if fields:
                    msg.durable = bool(fields[0])
                    if len(fields) > 1 and fields[1] is not None:
                        msg.priority = fields[1]
                    if len(fields) > 2:
                        msg.ttl_ms = fields[2]
            elif desc == MESSAGE_ANN:
                msg.annotations = tuple(map_entries(buf, vpos))
            elif desc == PROPERTIES:
                bare_start = pos
                msg.group_id = _list_item(buf, vpos, 10)
                msg.has_id = _first_item_set(buf, vpos)
            elif desc == APP_PROPS:
                if bare_start < 0:
                    bare_start = pos
                app = (pos, end)
            elif desc not in (DELIVERY_ANN, FOOTER):
                raise CodecError(f"unknown section 0x{desc:x}")
            pos = end
    except IndexError as exc:
        raise CodecError("truncated section") from exc
    if bare_start < 0:
        bare_start = n
    msg.bare = bytes(buf[bare_start:])
    if app[1]:
        msg.app_start, msg.app_end = app[0] - bare_start, app[1] - bare_start
    return msg


def ensure_message_id(msg: ParsedMessage, message_id: str) -> None:
    """Give a message without a message-id this one, as the service does (the JS SDK sends
    none and its receivers require one)."""
    if msg.has_id:
        return
    bare = msg.bare
    end = properties_end(bare)
    fields = [enc_str(message_id)]
    if end:  # a properties section whose message-id is null: keep its other fields
        pos, count = _list_start(bare, 3)
        for i in range(count):
            nxt = skip(bare, pos)
            if i:
                fields.append(bytes(bare[pos:nxt]))
            pos = nxt
    new = section(PROPERTIES, enc_compound(0xD0, b"".join(fields), len(fields)))
    msg.bare = new + bare[end:]
    if msg.app_end:
        msg.app_start += len(new) - end
        msg.app_end += len(new) - end
    msg.has_id = True


def _list_start(buf: bytes, pos: int) -> tuple[int, int]:
    """(position of the first element, element count) of the encoded list at ``pos``."""
    code = buf[pos]
    if code == 0xC0:
        return pos + 3, buf[pos + 2]
    if code == 0xD0:
        return pos + 9, _U32.unpack_from(buf, pos + 5)[0]
    if code == 0x45:
        return pos + 1, 0
    raise CodecError("expected a list")


def _first_item_set(buf: bytes, pos: int) -> bool:
    """Whether the encoded list at ``pos`` has a non-null first element."""
    first, count = _list_start(buf, pos)
    return count > 0 and buf[first] != 0x40


def properties_end(bare: bytes) -> int:
    """Where the properties section (if ``bare`` starts with one) ends."""
    if bare[:3] == b"\x00\x53\x73":
        return skip(bare, 3)
    return 0


def _list_item(buf: bytes, pos: int, index: int) -> Any:
    """Element ``index`` of the encoded list at ``pos`` if it is a string, else None."""
    pos, count = _list_start(buf, pos)
    if count <= index:
        return None
    for _ in range(index):
        pos = skip(buf, pos)
    value = decode(buf, pos)[0]
    return value if isinstance(value, str) else None


def map_entries(buf: bytes, pos: int) -> list[tuple[Any, bytes]]:
    """The entries of an encoded map as (decoded key, raw key+value bytes)."""
    code = buf[pos]
    if code == 0xC1:
        count, pos = buf[pos + 2], pos + 3
    elif code == 0xD1:
        count, pos = _U32.unpack_from(buf, pos + 5)[0], pos + 9
    elif code == 0x40:
        return []
    else:
        raise CodecError("expected a map")
    out = []
    for _ in range(count // 2):
        key, kend = decode(buf, pos)
        vend = skip(buf, kend)
        out.append((_hashable(key), bytes(buf[pos:vend])))
        pos = vend
    return out


def split_batch(buf: bytes) -> list[bytes] | None:
    """If ``buf`` is a batch envelope (body = data sections each holding an encoded message),
    return the inner messages, else None.

    proton's Python API does not expose the transfer's message-format (0x80013700 for
    batches), so the envelope is recognised by its shape.
    """
    pos, n = 0, len(buf)
    inner: list[bytes] = []
    try:
        while pos < n:
            if buf[pos] != 0x00:
                return None
            desc, vpos = decode(buf, pos + 1)
            end = skip(buf, vpos)
            if desc == DATA:
                payload, _ = decode(buf, vpos)
                if len(payload) < 3 or payload[0] != 0x00 or payload[1] != 0x53 \
                        or not (HEADER <= payload[2] <= FOOTER):
                    return None
                inner.append(payload)
            elif desc in (SEQUENCE, VALUE):
                return None
            pos = end
    except CodecError:
        return None
    return inner or None


def encode_annotations(ours: list[bytes], count: int,
                       kept: tuple[tuple[Any, bytes], ...], names: frozenset[str]) -> bytes:
    """A message-annotations section: our already-encoded ``count`` entries, then the kept
    raw ones whose keys are not in ``names``."""
    if kept:
        for k, raw in kept:
            if k not in names:
                ours.append(raw)
                count += 1
    body = b"".join(ours)
    return b"\x00\x53\x72\xd1" + _U32.pack(len(body) + 4) + _U32.pack(count * 2) + body


def encode_app_props(extra: dict[str, Any], kept: list[tuple[Any, bytes]]) -> bytes:
    parts = [enc_str(k) + enc_value(v) for k, v in extra.items()]
    parts.extend(raw for k, raw in kept if k not in extra)
    return section(APP_PROPS, enc_compound(0xD1, b"".join(parts), 2 * len(parts)))
