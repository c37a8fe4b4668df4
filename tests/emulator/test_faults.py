"""Each ``Faults`` method has an effect the official SDK can observe."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusReceiveMode
from azure.servicebus.exceptions import (
    MessageLockLostError,
    ServiceBusError,
    ServiceBusServerBusyError,
)

from .conftest import Sdk, new_queue, receive, wait_for

pytestmark = pytest.mark.timeout(90)


def test_drop_connections(sdk: Sdk, servicebus_emulator_factory: Any) -> None:
    emulator = servicebus_emulator_factory(queues=["q"])
    client = sdk.client(emulator.connection_string, retry_backoff_factor=0.05)
    sender, receiver = sdk.open(client.get_queue_sender("q"), client.get_queue_receiver("q"))
    sender.send_messages(ServiceBusMessage("before"))
    [held] = receive(receiver, 1)
    assert emulator.stats("q").locked == 1
    assert emulator.faults.drop_connections() == 2  # this sender's and this receiver's
    # The broken connection gave the lock back.
    assert wait_for(lambda: emulator.stats("q").locked == 0)
    # The SDK reconnects on its own (its retry policy) and carries on.
    sender.send_messages(ServiceBusMessage("after"))
    got = receive(receiver, 2, timeout=10)
    assert sorted(str(m) for m in got) == ["after", "before"]
    redelivered = next(m for m in got if str(m) == "before")
    assert redelivered.sequence_number == held.sequence_number
    for m in got:
        receiver.complete_message(m)
    assert emulator.stats("q").active == 0


def test_fail_next_send(emulator: Any, sdk: Sdk, no_retry: Any) -> None:
    queue = new_queue(emulator)
    retrying = sdk.client(emulator.connection_string, retry_total=3, retry_backoff_factor=0.05)
    sender, patient = sdk.open(no_retry.get_queue_sender(queue), retrying.get_queue_sender(queue))
    emulator.faults.fail_next(2, operation="send")
    for _ in range(2):
        with pytest.raises(ServiceBusServerBusyError):
            sender.send_messages(ServiceBusMessage("refused"))
    sender.send_messages(ServiceBusMessage("accepted"))
    assert emulator.stats(queue).active == 1
    # With retries (the SDK default), one server-busy answer goes unnoticed.
    emulator.faults.fail_next(1)  # any operation
    patient.send_messages(ServiceBusMessage("eventually"))
    assert emulator.stats(queue).active == 2


def test_fail_next_management_and_attach(emulator: Any, sdk: Sdk, no_retry: Any) -> None:
    queue = new_queue(emulator)
    sender, receiver = sdk.open(
        no_retry.get_queue_sender(queue), no_retry.get_queue_receiver(queue)
    )
    sender.send_messages(ServiceBusMessage("m"))
    [msg] = receive(receiver, 1)
    emulator.faults.fail_next(1, operation="com.microsoft:renew-lock")
    # Other operations are unaffected.
    assert receiver.peek_messages(max_message_count=1, sequence_number=msg.sequence_number)
    with pytest.raises(ServiceBusServerBusyError):
        receiver.renew_message_lock(msg)
    receiver.renew_message_lock(msg)
    receiver.complete_message(msg)

    emulator.faults.fail_next(1, operation="receive-attach")
    [refused] = sdk.open_failures(no_retry.get_queue_receiver(queue))
    assert isinstance(refused, ServiceBusServerBusyError)
    sdk.open(no_retry.get_queue_receiver(queue))  # the next attach is fine


def test_delay_and_clear(emulator: Any, sdk: Sdk, no_retry: Any) -> None:
    queue = new_queue(emulator)
    sender = sdk.open(no_retry.get_queue_sender(queue))
    emulator.faults.delay(1.0, operation="send")
    started = time.monotonic()
    sender.send_messages(ServiceBusMessage("slow"))
    assert time.monotonic() - started >= 0.9
    emulator.faults.delay(0, operation="send")  # zero lifts that delay
    started = time.monotonic()
    sender.send_messages(ServiceBusMessage("fast"))
    assert time.monotonic() - started < 0.9
    # clear() forgets every pending failure and delay.
    emulator.faults.fail_next(5)
    emulator.faults.delay(2.0)
    emulator.faults.clear()
    started = time.monotonic()
    sender.send_messages(ServiceBusMessage("unhindered"))
    assert time.monotonic() - started < 0.9
    assert emulator.stats(queue).active == 3


def test_expire_message_locks(emulator: Any, sdk: Sdk, client: Any) -> None:
    queue = new_queue(emulator)  # 60 s locks: only the fault can end them this soon
    sender, receiver = sdk.open(client.get_queue_sender(queue), client.get_queue_receiver(queue))
    sender.send_messages([ServiceBusMessage("a"), ServiceBusMessage("b")])
    held = receive(receiver, 2)
    assert emulator.faults.expire_message_locks(queue) == 2
    assert emulator.stats(queue).locked == 0
    # The client still believes it holds the locks; the emulator says otherwise.
    with pytest.raises(MessageLockLostError):
        receiver.complete_message(held[0])
    with pytest.raises(MessageLockLostError):
        receiver.renew_message_lock(held[1])
    again = receive(receiver, 2)
    assert [m.sequence_number for m in again] == [m.sequence_number for m in held]
    assert [m.delivery_count for m in again] == [1, 1]
    for m in again:
        receiver.complete_message(m)
    assert emulator.faults.expire_message_locks(queue) == 0


def _amqp_answers(host: str, port: int) -> bool:
    """Whether something on the port answers an AMQP protocol header within a second."""
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"AMQP\x03\x01\x00\x00")
            return sock.recv(8).startswith(b"AMQP")
    except OSError:
        return False


def test_stop_and_resume_listening(sdk: Sdk, servicebus_emulator_factory: Any) -> None:
    emulator = servicebus_emulator_factory(queues=["q"])
    client = sdk.client(emulator.connection_string, retry_total=0)
    sender = sdk.open(client.get_queue_sender("q"))
    sender.send_messages(ServiceBusMessage("one"))
    assert _amqp_answers(emulator.host, emulator.port)
    emulator.faults.stop_listening()
    assert not _amqp_answers(emulator.host, emulator.port)
    with pytest.raises(ServiceBusError):  # its connection was dropped, no new one taken
        sender.send_messages(ServiceBusMessage("lost"))
    emulator.faults.resume_listening()
    assert _amqp_answers(emulator.host, emulator.port)
    sender, receiver = sdk.open(
        client.get_queue_sender("q"),
        client.get_queue_receiver("q", receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE),
    )
    sender.send_messages(ServiceBusMessage("two"))
    assert [str(m) for m in receive(receiver, 2)] == ["one", "two"]
