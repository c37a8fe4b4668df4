"""pyamqp's ``encode_payload``, compiled for the sections a Service Bus message carries.

pyamqp encodes a message by describing every field as a ``{TYPE: ..., VALUE: ...}`` dict and
dispatching each one through ``encode_value``; for a 1 KB message with a time to live that is
~20 µs, most of it the dispatch (cProfile, Python 3.11). :func:`compile_encoder` reads the
field types of pyamqp's ``Header`` and ``Properties`` once and calls pyamqp's own encoder of
each type directly (~5 µs): the bytes are pyamqp's. Annotations and application properties
are encoded by ``encode_payload`` itself, section by section. A message with a section a
sender rarely sets (delivery annotations, a sequence or value body, a footer) goes to
``encode_payload`` whole, and so does a message one of the typed encoders refuses: pyamqp then
encodes that field as of unknown type, which only its own code reproduces.

Everything here is pyamqp-internal (hook ``batch-fill``); the batch self-check
(:func:`sbsync._sdk._batch.self_check`) proves the result equal to pyamqp's before it is used.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

__all__ = ["compile_encoder"]

#: pyamqp's ``Message`` fields, in the order ``encode_payload`` reads them by index.
_MESSAGE_FIELDS = (
    "header",
    "delivery_annotations",
    "message_annotations",
    "properties",
    "application_properties",
    "data",
    "sequence",
    "value",
    "footer",
)
_DATA_SECTION = 0x75
_LIST8, _LIST32 = 0xC0, 0xD0
_pack_list8 = struct.Struct(">BB").pack
_pack_list32 = struct.Struct(">LL").pack

Encoder = Callable[[Any], bytearray]


def _described(codec: Any, code: int) -> bytes:
    """A described type's prefix: the descriptor constructor and its ulong code."""
    out = bytearray(b"\x00")
    codec.encode_ulong(out, code)
    return bytes(out)


def _compile_list(codec: Any, performative: Any) -> Callable[[bytearray, Any], None] | None:
    """``encode_value(out, describe_performative(value))`` for one performative type (a
    described list of typed fields), or None if it has a field this does not compile."""
    steps: list[Callable[..., None]] = []
    if len(performative._fields) != len(performative._definition):
        return None
    for field in performative._definition:
        if field is None or field.multiple:
            return None
        if isinstance(field.type, codec.FieldDefinition):
            steps.append(_field_step(codec, codec._FIELD_DEFINITIONS[field.type]))
        elif field.type in codec._ENCODE_MAP and field.type is not None:
            steps.append(codec._ENCODE_MAP[field.type])
        else:
            return None
    prefix = _described(codec, performative._code)
    null = bytearray()
    codec.encode_null(null)
    null_byte = null[0]
    typed = tuple(steps)

    def encode(out: bytearray, value: Any) -> None:
        body = bytearray()
        for step, item in zip(typed, value):
            if item is None:
                body.append(null_byte)
            else:
                step(body, item, with_constructor=True)
        # encode_list's framing: list8 while it fits, list32 beyond.
        count, size = len(typed), len(body)
        out += prefix
        if count <= 255 and size < 255:
            out.append(_LIST8)
            out += _pack_list8(size + 1, count)
        else:
            out.append(_LIST32)
            out += _pack_list32(size + 4, count)
        out += body

    return encode


def _field_step(codec: Any, describe: Callable[[Any], Any]) -> Callable[..., None]:
    encode_value = codec.encode_value

    def step(out: bytearray, item: Any, with_constructor: bool = True) -> None:
        encode_value(out, describe(item), with_constructor=with_constructor)

    return step


def compile_encoder(codec: Any, message_type: Any, header_type: Any, properties_type: Any) -> Encoder | None:
    """pyamqp's ``encode_payload(bytearray(), message)`` as one call, faster; None if pyamqp
    (``codec``: its ``_encode`` module) is not shaped as this expects."""
    try:
        if tuple(message_type._fields) != _MESSAGE_FIELDS:
            return None
        header = _compile_list(codec, header_type)
        properties = _compile_list(codec, properties_type)
        data_prefix = _described(codec, _DATA_SECTION)
        encode_binary, encode_payload = codec.encode_binary, codec.encode_payload
    except (AttributeError, KeyError, TypeError):
        return None
    if header is None or properties is None:
        return None

    def section(index: int, value: Any) -> tuple[Any, ...]:
        parts: list[Any] = [None] * len(_MESSAGE_FIELDS)
        parts[index] = value
        return tuple(parts)

    def encode(message: Any) -> bytearray:
        out = bytearray()
        head, delivery, annotations, props, application, data, sequence, value, footer = message
        if delivery or sequence or value or footer:
            return encode_payload(out, message)
        try:
            if head:
                header(out, head)
            if annotations:
                encode_payload(out, section(2, annotations))
            if props:
                properties(out, props)
            if application:
                encode_payload(out, section(4, application))
            if data:
                for item in data:
                    out += data_prefix
                    encode_binary(out, item)
        except (KeyError, TypeError):
            # pyamqp's encode_value catches these from a typed encoder and encodes the value
            # as of unknown type: only its own code gives those bytes.
            return encode_payload(bytearray(), message)
        return out

    return encode
