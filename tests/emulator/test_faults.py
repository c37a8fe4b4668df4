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


def test_drop_connections(emulator: Any, sdk: Sdk, client: Any) -> None:
    queue = new_queue(emulator)
    with client.get_queue_sender(queue) as sender, client.get_queue_receiver(queue) as receiver:
        sender.send_messages(ServiceBusMessage("before"))
        [held] = receive(receiver, 1)
        assert emulator.stats(queue).locked == 1
        dropped = emulator.faults.drop_connections()
        assert dropped >= 2  # at least this sender's and this receiver's
        # The broken connection gave the lock back.
        assert wait_for(lambda: emulator.stats(queue).locked == 0)
        # The SDK reconnects on its own (its default retry policy) and carries on.
        sender.send_messages(ServiceBusMessage("after"))
        got = receive(receiver, 2, timeout=10)
        assert sorted(str(m) for m in got) == ["after", "before"]
        redelivered = next(m for m in got if str(m) == "before")
        assert redelivered.sequence_number == held.sequence_number
        for m in got:
            receiver.complete_message(m)
    assert emulator.stats(queue).active == 0


def test_fail_next_send(emulator: Any, sdk: Sdk) -> None:
    queue = new_queue(emulator)
    client = sdk.client(emulator.connection_string, retry_total=0)
    with client.get_queue_sender(queue) as sender:
        sender.send_messages(ServiceBusMessage("warm-up"))
        emulator.faults.fail_next(2, operation="send")
        for _ in range(2):
            with pytest.raises(ServiceBusServerBusyError):
                sender.send_messages(ServiceBusMessage("refused"))
        sender.send_messages(ServiceBusMessage("accepted"))
    assert emulator.stats(queue).active == 2


def test_fail_next_is_retried_by_the_sdk(emulator: Any, sdk: Sdk) -> None:
    queue = new_queue(emulator)
    client = sdk.client(emulator.connection_string, retry_total=3, retry_backoff_factor=0.05)
    with client.get_queue_sender(queue) as sender:
        emulator.faults.fail_next(1)  # any operation
        sender.send_messages(ServiceBusMessage("eventually"))
    assert emulator.stats(queue).active == 1


def test_fail_next_management_operation(emulator: Any, sdk: Sdk) -> None:
    queue = new_queue(emulator)
    client = sdk.client(emulator.connection_string, retry_total=0)
    with client.get_queue_sender(queue) as sender:
        sender.send_messages(ServiceBusMessage("m"))
    with client.get_queue_receiver(queue) as receiver:
        [msg] = receive(receiver, 1)
        emulator.faults.fail_next(1, operation="com.microsoft:renew-lock")
        # Other operations are unaffected.
        assert receiver.peek_messages(max_message_count=1, sequence_number=msg.sequence_number)
        with pytest.raises(ServiceBusServerBusyError):
            receiver.renew_message_lock(msg)
        receiver.renew_message_lock(msg)
        receiver.complete_message(msg)


def test_fail_next_receive_attach(emulator: Any, sdk: Sdk) -> None:
    queue = new_queue(emulator)
    client = sdk.client(emulator.connection_string, retry_total=0)
    emulator.faults.fail_next(1, operation="receive-attach")
    with pytest.raises(ServiceBusServerBusyError):
        with client.get_queue_receiver(queue) as receiver:
            receiver.receive_messages(max_message_count=1, max_wait_time=1)
    with client.get_queue_receiver(queue) as receiver:
        assert receiver.receive_messages(max_message_count=1, max_wait_time=0.5) == []


def test_delay(emulator: Any, client: Any) -> None:
    queue = new_queue(emulator)
    with client.get_queue_sender(queue) as sender:
        sender.send_messages(ServiceBusMessage("warm-up"))
        emulator.faults.delay(1.0, operation="send")
        started = time.monotonic()
        sender.send_messages(ServiceBusMessage("slow"))
        assert time.monotonic() - started >= 0.9
        emulator.faults.delay(0, operation="send")
        started = time.monotonic()
        sender.send_messages(ServiceBusMessage("fast"))
        assert time.monotonic() - started < 0.9
    assert emulator.stats(queue).active == 3


def test_expire_message_locks(emulator: Any, client: Any) -> None:
    queue = new_queue(emulator)  # 60 s locks: only the fault can end them this soon
    with client.get_queue_sender(queue) as sender:
        sender.send_messages([ServiceBusMessage("a"), ServiceBusMessage("b")])
    with client.get_queue_receiver(queue) as receiver:
        held = receive(receiver, 2)
        assert emulator.faults.expire_message_locks(queue) == 2
        assert emulator.stats(queue).locked == 0
        # The client still believes it holds the lock; the emulator says otherwise.
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
    with client.get_queue_sender("q") as sender:
        sender.send_messages(ServiceBusMessage("one"))
        assert _amqp_answers(emulator.host, emulator.port)
        emulator.faults.stop_listening()
        assert not _amqp_answers(emulator.host, emulator.port)
        with pytest.raises(ServiceBusError):  # its connection was dropped, no new one taken
            sender.send_messages(ServiceBusMessage("lost"))
        emulator.faults.resume_listening()
        assert _amqp_answers(emulator.host, emulator.port)
    with client.get_queue_sender("q") as sender:
        sender.send_messages(ServiceBusMessage("two"))
    with client.get_queue_receiver("q", receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE) as r:
        assert [str(m) for m in receive(r, 2)] == ["one", "two"]


def test_clear(emulator: Any, sdk: Sdk) -> None:
    queue = new_queue(emulator)
    client = sdk.client(emulator.connection_string, retry_total=0)
    with client.get_queue_sender(queue) as sender:
        sender.send_messages(ServiceBusMessage("warm-up"))
        emulator.faults.fail_next(5)
        emulator.faults.delay(2.0)
        emulator.faults.clear()
        started = time.monotonic()
        sender.send_messages(ServiceBusMessage("unhindered"))
        assert time.monotonic() - started < 1.5
    assert emulator.stats(queue).active == 2
