"""The SDK on its uAMQP transport (``uamqp_transport=True``), a second AMQP stack in C.

uAMQP ignores ``UseDevelopmentEmulator``: it speaks AMQPS only, asks for the ``MSSBCBS``
SASL mechanism, reads ``status-code`` strictly as an AMQP int and logs an ERROR when a
management reply overtakes the request's settlement. So every test here runs over TLS
(verified against the emulator's CA with ``connection_verify``) and fails on any ERROR
the SDK or uAMQP logs.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from azure.servicebus import (
    NEXT_AVAILABLE_SESSION,
    ServiceBusClient,
    ServiceBusMessage,
    ServiceBusSubQueue,
    TransportType,
)
from azure.servicebus.exceptions import OperationTimeoutError, SessionCannotBeLockedError

from sbsync.emulator import Emulator

from .conftest import Sdk, new_queue, receive, tls_client, tls_conn_str

pytest.importorskip("uamqp", reason="the uamqp package (test extra) is not installed")

pytestmark = pytest.mark.timeout(120)


def _uamqp_client(emulator: Emulator, port: int) -> ServiceBusClient:
    return ServiceBusClient.from_connection_string(
        tls_conn_str(emulator),
        uamqp_transport=True,
        transport_type=TransportType.Amqp,  # with a custom endpoint, else websockets
        custom_endpoint_address=f"sb://localhost:{port}",
        connection_verify=emulator.ca_file,
        retry_total=0,
    )


@pytest.fixture(scope="module")
def client(servicebus_emulator: Emulator) -> Iterator[ServiceBusClient]:
    """uAMQP on the TLS-only port, as it would on 5671."""
    assert servicebus_emulator.tls_port is not None
    with _uamqp_client(servicebus_emulator, servicebus_emulator.tls_port) as client:
        yield client


@pytest.fixture(autouse=True)
def no_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.INFO, logger="uamqp")
    yield
    errors = [f"{r.name}: {r.getMessage()}" for r in caplog.records
              if r.levelno >= logging.ERROR or "Did not receive send confirmation" in r.getMessage()
              or "not of type" in r.getMessage()]
    assert errors == []


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def test_same_port_tls(servicebus_emulator: Emulator, sdk: Sdk) -> None:
    """The AMQP port itself serves uAMQP's TLS (the first byte tells it apart); sync and
    aio (uAMQP's async code path)."""
    queue = new_queue(servicebus_emulator)
    client = tls_client(sdk, servicebus_emulator, uamqp_transport=True, retry_total=0)
    sender, receiver = sdk.open(client.get_queue_sender(queue), client.get_queue_receiver(queue))
    sender.send_messages(ServiceBusMessage("same port"))
    (message,) = receive(receiver, 1)
    assert str(message) == "same port"
    receiver.complete_message(message)
    assert len(sender.schedule_messages(ServiceBusMessage("x"), _now())) == 1  # management


def test_settlement_and_dead_lettering(servicebus_emulator: Emulator,
                                       client: ServiceBusClient) -> None:
    queue = new_queue(servicebus_emulator)
    with client.get_queue_sender(queue) as sender:
        sender.send_messages([ServiceBusMessage(f"m{i}") for i in range(4)])
    with client.get_queue_receiver(queue) as receiver:
        got = {str(m): m for m in receive(receiver, 4)}
        assert sorted(got) == ["m0", "m1", "m2", "m3"]
        assert receiver.renew_message_lock(got["m0"]) > _now()
        receiver.complete_message(got["m0"])
        receiver.abandon_message(got["m1"])
        receiver.defer_message(got["m2"])
        receiver.dead_letter_message(got["m3"], reason="bad", error_description="very bad")
        (again,) = receive(receiver, 1)
        assert (str(again), again.delivery_count) == ("m1", 1)
        receiver.complete_message(again)
        (deferred,) = receiver.receive_deferred_messages([got["m2"].sequence_number])
        assert str(deferred) == "m2"
        receiver.complete_message(deferred)
    with client.get_queue_receiver(queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
        (dead,) = receive(dlq, 1)
        assert (str(dead), dead.dead_letter_reason, dead.dead_letter_error_description) == \
            ("m3", "bad", "very bad")
        dlq.complete_message(dead)
    assert servicebus_emulator.stats(queue).active == 0


def test_scheduling_and_peeking(servicebus_emulator: Emulator, client: ServiceBusClient) -> None:
    queue = new_queue(servicebus_emulator)
    with client.get_queue_sender(queue) as sender:
        later = sender.schedule_messages(
            [ServiceBusMessage("later"), ServiceBusMessage("cancelled")],
            _now() + datetime.timedelta(hours=1))
        sender.schedule_messages(ServiceBusMessage("now"), _now())
        sender.cancel_scheduled_messages(later[1])
    with client.get_queue_receiver(queue) as receiver:
        peeked = receiver.peek_messages(10)
        assert [str(m) for m in peeked] == ["later", "now"]
        assert peeked[0].sequence_number == later[0]
        assert peeked[0].scheduled_enqueue_time_utc is not None
        assert [str(m) for m in receiver.peek_messages(10, sequence_number=peeked[1].sequence_number)] \
            == ["now"]
        (message,) = receive(receiver, 1)
        assert str(message) == "now"
        receiver.complete_message(message)


def test_sessions(servicebus_emulator: Emulator, client: ServiceBusClient) -> None:
    queue = new_queue(servicebus_emulator, requires_session=True)
    with client.get_queue_sender(queue) as sender:
        sender.send_messages([ServiceBusMessage(f"a{i}", session_id="a") for i in range(2)])
    with client.get_queue_receiver(queue, session_id=NEXT_AVAILABLE_SESSION,
                                   max_wait_time=5) as receiver:
        session = receiver.session
        assert session.session_id == "a"
        assert session.get_state() is None
        session.set_state(b"state of a")
        assert session.get_state() == b"state of a"
        until = session.locked_until_utc
        assert session.renew_lock() >= until
        got = receive(receiver, 2)
        assert [str(m) for m in got] == ["a0", "a1"]
        for message in got:
            receiver.complete_message(message)
        with pytest.raises(SessionCannotBeLockedError):
            with client.get_queue_receiver(queue, session_id="a"):
                pass


def test_next_session_wait(servicebus_emulator_factory: Any) -> None:
    """uAMQP sends no com.microsoft:timeout (max_wait_time stays client-side), so the
    service's own wait applies (65 s there; 1 s here) and ends with its timeout error."""
    emulator: Emulator = servicebus_emulator_factory(session_queues=["s"], tls_port=0,
                                                     next_session_wait=1)
    assert emulator.tls_port is not None
    with _uamqp_client(emulator, emulator.tls_port) as client:
        started = time.monotonic()
        with pytest.raises(OperationTimeoutError, match="allotted timeout of 00:00:01"):
            with client.get_queue_receiver("s", session_id=NEXT_AVAILABLE_SESSION,
                                           max_wait_time=30):
                pass
        assert time.monotonic() - started < 20
