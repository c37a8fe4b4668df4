"""Quick end-to-end checks of the emulator core with the real azure-servicebus SDK."""

from __future__ import annotations

import asyncio
import datetime
import socket
import time
from collections.abc import Iterator

import pytest
from azure.servicebus import (
    NEXT_AVAILABLE_SESSION,
    ServiceBusClient,
    ServiceBusMessage,
    ServiceBusReceiveMode,
    ServiceBusSubQueue,
)
from azure.servicebus.aio import ServiceBusClient as AsyncClient
from azure.servicebus.exceptions import (
    MessageLockLostError,
    MessageSizeExceededError,
    MessagingEntityNotFoundError,
    OperationTimeoutError,
    ServiceBusAuthenticationError,
    ServiceBusServerBusyError,
    SessionCannotBeLockedError,
    SessionLockLostError,
)

from sbsync.emulator import Emulator, EntityConfig

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(
        queues=["q"],
        session_queues=["sq"],
        topics=["t"],
        subscriptions=["t/s1", "t/s2"],
        entities=[
            EntityConfig(name="short", lock_duration=1.0, max_delivery_count=2),
            EntityConfig(
                name="ttl", default_message_ttl=0.3, dead_lettering_on_message_expiration=True
            ),
            EntityConfig(name="ssq", requires_session=True, lock_duration=1.0),
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


def test_properties_round_trip(client: ServiceBusClient, emu: Emulator) -> None:
    msg = ServiceBusMessage(
        b"body",
        application_properties={"i": 7, "s": "x", "f": 1.5},
        subject="subj",
        content_type="text/plain",
        correlation_id="c1",
        message_id="m1",
        to="dest",
        reply_to="r",
        time_to_live=datetime.timedelta(seconds=300),
    )
    _send(client, "q", msg)
    assert emu.stats("q").active == 1
    with client.get_queue_receiver("q") as rcv:
        [got] = rcv.receive_messages(max_wait_time=5)
        assert b"".join(got.body) == b"body"
        assert got.application_properties == {b"i": 7, b"s": b"x", b"f": 1.5}
        assert (
            got.subject,
            got.content_type,
            got.correlation_id,
            got.message_id,
            got.to,
            got.reply_to,
        ) == ("subj", "text/plain", "c1", "m1", "dest", "r")
        assert got.time_to_live == datetime.timedelta(seconds=300)
        assert got.sequence_number == 1 and got.delivery_count == 0
        assert got.locked_until_utc is not None and got.enqueued_time_utc is not None
        rcv.complete_message(got)
    assert emu.stats("q").active == 0 and emu.stats("q").locked == 0


def test_abandon_defer_dead_letter(client: ServiceBusClient, emu: Emulator) -> None:
    _send(client, "q", *[ServiceBusMessage(str(i)) for i in range(3)])
    with client.get_queue_receiver("q") as rcv:
        msgs = rcv.receive_messages(max_message_count=3, max_wait_time=5)
        assert [str(m) for m in msgs] == ["0", "1", "2"]
        rcv.abandon_message(msgs[0])
        rcv.defer_message(msgs[1])
        rcv.dead_letter_message(msgs[2], reason="bad", error_description="very bad")
        [again] = rcv.receive_messages(max_wait_time=5)
        assert str(again) == "0" and again.delivery_count == 1
        rcv.complete_message(again)
        [deferred] = rcv.receive_deferred_messages([msgs[1].sequence_number])
        assert str(deferred) == "1"
        rcv.complete_message(deferred)
    with client.get_queue_receiver("q", sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
        [dead] = dlq.receive_messages(max_wait_time=5)
        assert (dead.dead_letter_reason, dead.dead_letter_error_description) == ("bad", "very bad")
        dlq.complete_message(dead)
    assert emu.stats("q") == type(emu.stats("q"))()


def test_peek_and_schedule(client: ServiceBusClient, emu: Emulator) -> None:
    with client.get_queue_sender("q") as sender:
        sender.send_messages([ServiceBusMessage(str(i)) for i in range(5)])
        at = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=1)
        seqs = sender.schedule_messages(
            [ServiceBusMessage("later"), ServiceBusMessage("never")], at
        )
        sender.cancel_scheduled_messages(seqs[1])
    assert emu.stats("q").scheduled == 1
    with client.get_queue_receiver("q") as rcv:
        peeked = rcv.peek_messages(max_message_count=3, sequence_number=2)
        assert [m.sequence_number for m in peeked] == [2, 3, 4]
        got = []
        deadline = time.time() + 5
        while len(got) < 6 and time.time() < deadline:
            for m in rcv.receive_messages(max_message_count=10, max_wait_time=1):
                rcv.complete_message(m)
                got.append(str(m))
    assert got == ["0", "1", "2", "3", "4", "later"]


def test_lock_expiry_and_max_delivery(client: ServiceBusClient, emu: Emulator) -> None:
    _send(client, "short", ServiceBusMessage("x"))
    with client.get_queue_receiver("short") as rcv:
        [first] = rcv.receive_messages(max_wait_time=5)
        time.sleep(1.3)
        with pytest.raises(MessageLockLostError):
            rcv.complete_message(first)
        [second] = rcv.receive_messages(max_wait_time=5)
        assert second.delivery_count == 1
        rcv.renew_message_lock(second)
        assert emu.faults.expire_message_locks("short") == 1
    assert emu.stats("short").dead_letter == 1
    with client.get_queue_receiver("short", sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
        [dead] = dlq.receive_messages(max_wait_time=5)
        assert dead.dead_letter_reason == "MaxDeliveryCountExceeded"


def test_ttl_dead_letters(client: ServiceBusClient, emu: Emulator) -> None:
    _send(client, "ttl", ServiceBusMessage("x"))
    time.sleep(0.5)
    assert emu.stats("ttl").dead_letter == 1


def test_topic_fan_out(client: ServiceBusClient, emu: Emulator) -> None:
    with client.get_topic_sender("t") as sender:
        sender.send_messages(ServiceBusMessage("hi"))
    for sub in ("s1", "s2"):
        with client.get_subscription_receiver("t", sub) as rcv:
            [m] = rcv.receive_messages(max_wait_time=5)
            assert str(m) == "hi"
            rcv.complete_message(m)


def test_sessions(client: ServiceBusClient, emu: Emulator) -> None:
    _send(client, "sq", *[ServiceBusMessage(f"A{i}", session_id="A") for i in range(3)])
    with client.get_queue_receiver("sq", session_id=NEXT_AVAILABLE_SESSION, max_wait_time=5) as rcv:
        assert rcv.session.session_id == "A"
        with pytest.raises(SessionCannotBeLockedError):
            with client.get_queue_receiver("sq", session_id="A") as other:
                other.receive_messages(max_wait_time=1)
        rcv.session.set_state(b"state")
        rcv.session.renew_lock()
        msgs = rcv.receive_messages(max_message_count=3, max_wait_time=5)
        assert [str(m) for m in msgs] == ["A0", "A1", "A2"]
        for m in msgs:
            rcv.complete_message(m)
    with client.get_queue_receiver("sq", session_id="A") as again:
        assert again.session.get_state() == b"state"
    with pytest.raises(OperationTimeoutError):
        with client.get_queue_receiver(
            "sq", session_id=NEXT_AVAILABLE_SESSION, max_wait_time=1
        ) as none:
            none.receive_messages(max_wait_time=1)


def test_session_lock_lost(client: ServiceBusClient, emu: Emulator) -> None:
    _send(client, "sq", ServiceBusMessage("x", session_id="B"))
    with client.get_queue_receiver("sq", session_id="B") as rcv:
        [_m] = rcv.receive_messages(max_wait_time=5)
        emu.faults.expire_session_lock("sq", "B")
        with pytest.raises(SessionLockLostError):
            rcv.session.get_state()
    assert emu.stats("sq").active == 1


def test_errors(emu: Emulator, client: ServiceBusClient) -> None:
    with pytest.raises(MessagingEntityNotFoundError):
        _send(client, "nope", ServiceBusMessage("x"))
    bad = emu.connection_string.replace("SAS_KEY_VALUE", "wrong")
    with ServiceBusClient.from_connection_string(bad, retry_total=0) as c:
        with pytest.raises(ServiceBusAuthenticationError):
            _send(c, "q", ServiceBusMessage("x"))
    with pytest.raises(MessageSizeExceededError):
        _send(client, "q", ServiceBusMessage(b"x" * (300 * 1024)))
    emu.faults.fail_next(1, operation="send")
    with pytest.raises(ServiceBusServerBusyError):
        _send(client, "q", ServiceBusMessage("x"))
    # garbage on the socket: that connection dies, the emulator keeps serving
    with socket.create_connection((emu.host, emu.port)) as sock:
        sock.sendall(b"\x00garbage" * 100)
    _send(client, "q", ServiceBusMessage("ok"))
    assert emu.stats("q").active == 1


def test_aio_flow(emu: Emulator) -> None:
    async def main() -> None:
        async with AsyncClient.from_connection_string(emu.connection_string) as c:
            async with c.get_queue_sender("sq") as sender:
                await sender.send_messages(ServiceBusMessage("a", session_id="S"))
            async with c.get_queue_receiver("sq", session_id="S") as rcv:
                await rcv.session.set_state(b"s")
                assert await rcv.session.get_state() == b"s"
                [m] = await rcv.receive_messages(max_wait_time=5)
                await rcv.complete_message(m)
            async with c.get_queue_sender("q") as sender:
                await sender.send_messages([ServiceBusMessage("b"), ServiceBusMessage("c")])
            async with c.get_queue_receiver(
                "q", receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE
            ) as rcv:
                got = await rcv.receive_messages(max_message_count=2, max_wait_time=5)
                assert [str(m) for m in got] == ["b", "c"]

    asyncio.run(main())
    assert emu.stats("q").active == 0


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


def test_faults_and_reconnect(client: ServiceBusClient, emu: Emulator) -> None:
    retrying = ServiceBusClient.from_connection_string(emu.connection_string,
                                                       retry_backoff_factor=0.1)
    with retrying, retrying.get_queue_sender("q") as sender:
        sender.send_messages(ServiceBusMessage("1"))
        assert emu.faults.drop_connections() == 1
        sender.send_messages(ServiceBusMessage("2"))  # the SDK reconnects
        emu.faults.stop_listening()
        emu.faults.resume_listening()
        sender.send_messages(ServiceBusMessage("3"))
    emu.faults.fail_next(1, operation="receive-attach")
    with pytest.raises(ServiceBusServerBusyError):
        with client.get_queue_receiver("q") as rcv:
            rcv.receive_messages(max_wait_time=1)
    emu.faults.fail_next(1, operation="com.microsoft:peek-message")
    with client.get_queue_receiver("q", prefetch_count=10) as rcv:
        with pytest.raises(ServiceBusServerBusyError):
            rcv.peek_messages(5)
        emu.faults.delay(0.3, operation="com.microsoft:peek-message")
        started = time.monotonic()
        assert len(rcv.peek_messages(5)) == 3
        assert time.monotonic() - started >= 0.3
        emu.faults.clear()
        [first] = rcv.receive_messages(max_message_count=1, max_wait_time=5)
        rcv.complete_message(first)
    # prefetched leftovers come back without counting a delivery
    time.sleep(0.2)
    assert emu.stats("q").active == 2 and emu.stats("q").locked == 0
    with client.get_queue_receiver("q") as rcv:
        assert [m.delivery_count for m in rcv.peek_messages(5)] == [0, 0]


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


def test_client_vanishing_mid_frame(client: ServiceBusClient, emu: Emulator) -> None:
    for payload in (b"AMQP\x03\x01\x00\x00\x00\x00\x00\x40\x02\x01",  # SASL header + half a frame
                    b"AMQP\x00\x01\x00\x00\x00\x00\x01\x00"):
        with socket.create_connection((emu.host, emu.port)) as sock:
            sock.sendall(payload)
    _send(client, "q", ServiceBusMessage("still serving"))
    assert emu.stats("q").active == 1
