"""Core checks the conformance modules do not make: codec, restart, auto-create, raw protocol
errors, TTL dead-lettering, batch sizing, locks of a vanished receiver."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage

from sbsync.emulator import Emulator, EntityConfig

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(
        queues=["q"],
        entities=[
            EntityConfig(
                name="ttl", default_message_ttl=0.3, dead_lettering_on_message_expiration=True
            ),
        ],
    ) as emulator:
        yield emulator


@pytest.fixture
def client(emu: Emulator) -> Iterator[ServiceBusClient]:
    with ServiceBusClient.from_connection_string(emu.connection_string, retry_total=0) as c:
        yield c


def _send(client: ServiceBusClient, queue: str, *messages: ServiceBusMessage) -> None:
    with client.get_queue_sender(queue) as sender:
        sender.send_messages(list(messages) if len(messages) > 1 else messages[0])


def test_ttl_dead_letters(client: ServiceBusClient, emu: Emulator) -> None:
    _send(client, "ttl", ServiceBusMessage("x"))
    time.sleep(0.5)
    assert emu.stats("ttl").dead_letter == 1


def test_restart_keeps_messages(emu: Emulator) -> None:
    with ServiceBusClient.from_connection_string(emu.connection_string) as c:
        _send(c, "q", ServiceBusMessage("persist"))
    port = emu.port
    emu.restart()
    assert emu.port == port
    with ServiceBusClient.from_connection_string(emu.connection_string) as c:
        with c.get_queue_receiver("q") as rcv:
            [m] = rcv.receive_messages(max_wait_time=5)
            assert str(m) == "persist"


def test_vanished_receiver_releases_locks(emu: Emulator) -> None:
    c = ServiceBusClient.from_connection_string(emu.connection_string)
    with c.get_queue_sender("q") as sender:
        sender.send_messages(ServiceBusMessage("x"))
    rcv = c.get_queue_receiver("q")
    assert len(rcv.receive_messages(max_wait_time=5)) == 1
    assert emu.stats("q").locked == 1
    emu.faults.drop_connections()
    time.sleep(0.3)
    assert emu.stats("q").active == 1 and emu.stats("q").locked == 0
    rcv.close()
    c.close()


def test_raw_protocol_errors(emu: Emulator) -> None:
    import uuid

    from azure.servicebus._pyamqp.utils import generate_sas_token
    from proton import Delivery, Message
    from proton.utils import BlockingConnection, LinkDetached

    conn = BlockingConnection(f"amqp://{emu.host}:{emu.port}", allowed_mechs="ANONYMOUS",
                              timeout=5)
    try:
        def call(sender, receiver, msg):
            msg.id = str(uuid.uuid4())
            sender.send(msg)
            return receiver.receive(timeout=5)

        cbs_s, cbs_r = conn.create_sender("$cbs"), conn.create_receiver("$cbs")
        audience = f"sb://{emu.host}:{emu.port}"
        expired = generate_sas_token(audience, "RootManageSharedAccessKey", "SAS_KEY_VALUE",
                                     int(time.time()) - 10)
        reply = call(cbs_s, cbs_r, Message(body=expired, properties={
            "operation": "put-token", "type": "jwt", "name": audience}))
        assert reply.properties["status-code"] == 401
        with pytest.raises(LinkDetached):
            conn.create_sender(f"amqps://{emu.host}:{emu.port}/q")
        good = generate_sas_token(audience, "RootManageSharedAccessKey", "SAS_KEY_VALUE",
                                  int(time.time()) + 100)
        reply = call(cbs_s, cbs_r, Message(body=good, properties={
            "operation": "put-token", "type": "jwt", "name": audience}))
        assert reply.properties["status-code"] == 200
        # a transfer that is not an AMQP message is rejected, the link stays usable
        sender = conn.create_sender(f"amqps://{emu.host}:{emu.port}/q")
        dlv = sender.link.delivery("garbage")
        sender.link.send(b"\x00\x53\x77\xa1\xff")
        sender.link.advance()
        conn.wait(lambda: dlv.remote_state != 0, msg="no outcome")
        assert dlv.remote_state == Delivery.REJECTED
        sender.send(Message(body="fine"))
        assert emu.stats("q").active == 1
        ms, mr = conn.create_sender("q/$management"), conn.create_receiver("q/$management")
        cases = [("com.microsoft:bogus", {}, 501),
                 ("com.microsoft:renew-lock", {"lock-tokens": "garbage"}, 400),
                 ("com.microsoft:renew-lock", "not a map", 400),
                 ("com.microsoft:renew-lock", {"lock-tokens": [uuid.uuid4()]}, 410),
                 ("com.microsoft:peek-message", {"from-sequence-number": 1,
                                                 "message-count": 5}, 200)]
        for op, body, status in cases:
            reply = call(ms, mr, Message(body=body, properties={"operation": op}))
            assert reply.properties["statusCode"] == status, op
    finally:
        conn.close()


def test_auto_create_queue_turns_topic() -> None:
    with Emulator(auto_create=True) as emu, \
            ServiceBusClient.from_connection_string(emu.connection_string) as c, \
            c.get_topic_sender("t") as sender:
        sender.send_messages(ServiceBusMessage("before any subscription"))
        with c.get_subscription_receiver("t", "s") as rcv:
            sender.send_messages(ServiceBusMessage("kept"))
            [m] = rcv.receive_messages(max_wait_time=5)
            assert str(m) == "kept"
            rcv.complete_message(m)
        assert emu.stats("t/Subscriptions/s").active == 0


def test_codec_round_trip_and_dead_letter_properties() -> None:
    from proton import Message, symbol

    from sbsync.emulator._codec import DATA, enc_binary, parse_message, section, split_batch
    from sbsync.emulator._records import StoredMessage

    original = Message(body=b"payload", id="m-1", subject="s", group_id="g", ttl=30.0,
                       properties={"k": 1, "t": "x"}, priority=7,
                       annotations={symbol("x-opt-partition-key"): "pk"})
    parsed = parse_message(original.encode())
    assert parsed.group_id == "g" and parsed.ttl_ms == 30000 and parsed.priority == 7
    assert split_batch(original.encode()) is None
    stored = StoredMessage(parsed, 42, 1_000)
    stored.delivery_count = 2
    stored.set_app_props({"DeadLetterReason": "why"})
    back = Message()
    back.decode(stored.encode(locked_until_ms=5_000))
    assert (back.id, back.subject, back.group_id, back.body) == ("m-1", "s", "g", b"payload")
    assert back.properties == {"k": 1, "t": "x", "DeadLetterReason": "why"}
    assert back.delivery_count == 2 and back.priority == 7 and back.ttl == 30.0
    assert back.annotations["x-opt-sequence-number"] == 42
    assert back.annotations["x-opt-partition-key"] == "pk"
    assert int(back.annotations["x-opt-locked-until"]) == 5_000
    # a batch envelope: data sections that each hold one encoded message
    envelope = b"".join(section(DATA, enc_binary(Message(body=str(i)).encode()))
                        for i in range(3))
    inner = split_batch(envelope)
    assert inner is not None and len(inner) == 3
    bare = Message()
    bare.decode(inner[1])
    assert bare.body == "1"


def test_batch_size_follows_max_message_size() -> None:
    with Emulator(queues=["q"], max_message_size=64 * 1024) as emu, \
            ServiceBusClient.from_connection_string(emu.connection_string) as c, \
            c.get_queue_sender("q") as sender:
        assert sender.create_message_batch().max_size_in_bytes == 64 * 1024


def test_codec_decodes_strings_and_refuses_bad_ones() -> None:
    from proton import Message

    from sbsync.emulator._codec import CodecError, decode, parse_message

    parsed = parse_message(Message(properties={"région": "eu", "n": 7, "long": "x" * 300},
                                   body=b"").encode())
    props, _ = decode(parsed.bare, parsed.app_start + 3)
    assert props == {"région": "eu", "n": 7, "long": "x" * 300}
    for bad in (b"\xa1\x05ab", b"\xa1\x02\xff\xfe", b"\xa1"):
        with pytest.raises(CodecError):
            decode(bad)
