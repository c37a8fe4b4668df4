"""The compiled message encoder writes exactly pyamqp's bytes (pure logic: no Service Bus)."""

from __future__ import annotations

import datetime
import types
import uuid
from collections import namedtuple
from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage
from azure.servicebus._common.utils import transform_outbound_messages
from azure.servicebus._pyamqp import _encode as codec
from azure.servicebus._pyamqp.message import Header, Message, Properties
from azure.servicebus._transport._pyamqp_transport import PyamqpTransport
from azure.servicebus.amqp import AmqpAnnotatedMessage

from sbsync._sdk._encode import compile_encoder

WHEN = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)


def _outgoing(message: Any) -> Any:
    """The pyamqp message the SDK makes of ``message`` to send it."""
    return transform_outbound_messages(message, ServiceBusMessage, PyamqpTransport.to_outgoing_amqp_message)._message


def _pyamqp(message: Any) -> bytes:
    return bytes(codec.encode_payload(bytearray(), message))


class _CountingCodec(types.SimpleNamespace):
    """pyamqp's encoder module, counting the messages it is handed whole."""

    def __init__(self) -> None:
        super().__init__(**{name: getattr(codec, name) for name in dir(codec) if not name.startswith("__")})
        self.whole = 0

        def encode_payload(out: bytearray, message: Any) -> Any:
            if isinstance(message, Message):  # not one of the section tuples the encoder builds
                self.whole += 1
            return codec.encode_payload(out, message)

        self.encode_payload = encode_payload


@pytest.fixture
def counting() -> _CountingCodec:
    return _CountingCodec()


@pytest.fixture
def encode(counting: _CountingCodec) -> Any:
    encoder = compile_encoder(counting, Message, Header, Properties)
    assert encoder is not None
    return encoder


SENT_BY_SENDERS = {
    "bytes body": ServiceBusMessage(b"x" * 1024),
    "str body, time to live": ServiceBusMessage("hello", time_to_live=datetime.timedelta(seconds=10)),
    "empty body, int id": ServiceBusMessage(b"", message_id=12345),
    "no body": ServiceBusMessage(None),
    "non-ASCII text": ServiceBusMessage("ünïcødé", subject="sübject", application_properties={"ключ": "значение"}),
    "every property": ServiceBusMessage(
        b"y" * 300,
        message_id="m",
        correlation_id=str(uuid.uuid4()),
        content_type="text/plain",
        subject="subject",
        to="to",
        reply_to="reply",
        reply_to_session_id="rs",
        session_id="s1",
        partition_key="s1",
        scheduled_enqueue_time_utc=WHEN,
        application_properties={"i": -3, "f": 2.5, "b": False, "s": "v", "n": None, "d": WHEN, "y": b"x"},
    ),
    "properties past list8": ServiceBusMessage(b"z", subject="s" * 300),
    "large body": ServiceBusMessage(b"z" * 70_000),
    "raw: header and annotations": AmqpAnnotatedMessage(
        data_body=[b"part-1", b"part-2"],
        header={"priority": 5, "durable": True, "first_acquirer": False, "delivery_count": 2, "time_to_live": 60000},
        annotations={"x-opt-custom": "a", "x-opt-number": 7},
        properties={"group_id": "g", "group_sequence": 3, "reply_to_group_id": "rg", "user_id": b"u"},
    ),
}


@pytest.mark.parametrize("name", sorted(SENT_BY_SENDERS))
def test_what_senders_send_is_encoded_as_pyamqp_does_without_handing_it_over(name, encode, counting):
    message = _outgoing(SENT_BY_SENDERS[name])
    assert bytes(encode(message)) == _pyamqp(message)
    assert counting.whole == 0  # compiled, not pyamqp's encoder with extra steps


@pytest.mark.parametrize(
    "message",
    [
        _outgoing(AmqpAnnotatedMessage(value_body={"k": [1, 2]})),
        _outgoing(AmqpAnnotatedMessage(sequence_body=[[1, "a"]])),
        _outgoing(AmqpAnnotatedMessage(data_body=b"d", delivery_annotations={"x-opt-d": 1}, footer={"f": 1})),
    ],
    ids=["value body", "sequence body", "delivery annotations and footer"],
)
def test_sections_senders_rarely_set_go_to_pyamqp_whole(message, encode, counting):
    assert bytes(encode(message)) == _pyamqp(message)
    assert counting.whole == 1


def test_a_value_a_typed_encoder_refuses_gets_pyamqps_bytes_for_it(encode):
    # pyamqp catches the typed encoder's TypeError and encodes the value as of unknown type.
    message = Message(header=Header(priority="high"), properties=Properties(group_sequence="3"), data=[b"d"])
    assert bytes(encode(message)) == _pyamqp(message)


def test_a_message_pyamqp_cannot_encode_fails_as_it_does(encode):
    message = _outgoing(ServiceBusMessage("bad", application_properties={"k": object()}))
    with pytest.raises(TypeError) as pyamqp_error:
        _pyamqp(message)
    with pytest.raises(type(pyamqp_error.value)):
        encode(message)


def test_a_pyamqp_of_another_shape_is_not_compiled():
    Reordered = namedtuple("Reordered", list(reversed(Message._fields)))  # type: ignore[misc]
    assert compile_encoder(codec, Reordered, Header, Properties) is None
    stripped = types.SimpleNamespace(**{k: getattr(codec, k) for k in dir(codec) if k != "_ENCODE_MAP"})
    assert compile_encoder(stripped, Message, Header, Properties) is None
