"""A closed client reopens on its next use, as the SDK's does; what it handed out stays closed."""

from __future__ import annotations

import os
import threading
import time

import pytest

import sbsync
from sbsync import ServiceBusMessage
from sbsync._lifecycle import Lifecycle
from sbsync.exceptions import ClientClosedError, ServiceBusConnectionError

pytestmark = pytest.mark.timeout(120)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_the_sdk_samples_connection_retries_reopen_the_client(conn_str, queue):
    """failure_and_recovery.py's "connection retries": a failure inside ``with servicebus_client:``
    closes the client, and the next round enters ``with servicebus_client:`` again."""
    client = sbsync.ServiceBusClient.from_connection_string(conn_str)
    rounds: list[str] = []
    first_sender = None
    for attempt in range(3):  # the sample's connection retries
        try:
            with client:
                sender = client.get_queue_sender(queue)
                try:
                    with sender:
                        sender.send_messages(ServiceBusMessage(f"round {attempt}"))
                except ValueError:  # the sample: "handler was shut down previously"
                    rounds.append("sender shut down")
                if attempt == 0:
                    first_sender = sender
                    raise ServiceBusConnectionError(message="the connection dropped")  # the failure
                receiver = client.get_queue_receiver(queue, max_wait_time=5)
                with receiver:
                    received = []
                    while len(received) < 2:
                        batch = receiver.receive_messages(max_message_count=10, max_wait_time=5)
                        assert batch, "messages sent before and after the reopen must arrive"
                        for message in batch:
                            receiver.complete_message(message)
                        received += [str(m) for m in batch]
                rounds.append(f"received {sorted(received)}")
                break
        except ServiceBusConnectionError:
            rounds.append("connection error")
    assert rounds == ["connection error", "received ['round 0', 'round 1']"]
    assert client._lifecycle is Lifecycle.CLOSED
    # A handler from before the close stays closed: a ValueError, as the SDK's shut-down handlers.
    assert first_sender is not None
    with pytest.raises(ValueError, match="sender is closed"):
        first_sender.send_messages(ServiceBusMessage("too late"))


def test_handles_from_before_a_close_stay_closed_and_new_ones_work(conn_str, queue, session_queue):
    client = sbsync.ServiceBusClient.from_connection_string(conn_str)
    old_sender = client.get_queue_sender(queue)
    old_receiver = client.get_queue_receiver(queue, max_wait_time=1)
    old_thread = client._portal._thread
    client.close()
    assert client._lifecycle is Lifecycle.CLOSED and "closed" in repr(client)
    assert old_thread is not None and not old_thread.is_alive()

    new_sender = client.get_queue_sender(queue)  # reopens: a new loop thread
    assert client._lifecycle is Lifecycle.OPEN and "closed" not in repr(client)
    assert client._portal._thread is not old_thread
    new_sender.send_messages(ServiceBusMessage("after reopen"))
    with client.get_queue_receiver(queue, max_wait_time=5) as receiver:
        (message,) = receiver.receive_messages(max_wait_time=5)
        receiver.complete_message(message)
    for stale in (
        lambda: old_sender.send_messages(ServiceBusMessage("x")),
        lambda: old_receiver.receive_messages(),
    ):
        with pytest.raises(ClientClosedError, match="is closed"):
            stale()
    assert list(client.list_queue_sessions(session_queue)) == []
    client.close()
    assert list(client.list_queue_sessions(session_queue)) == []  # reopens for listing too
    client.close()


def test_50_close_reopen_cycles_leave_no_thread_or_fd(conn_str, queue):
    """Five clients, ten cycles each, side by side (each cycle opens a link: ~1 s of SDK-side
    handshakes and polling, so they overlap to keep the suite quick)."""
    clients = [sbsync.ServiceBusClient.from_connection_string(conn_str) for _ in range(5)]
    errors: list[BaseException] = []

    def cycles(client: sbsync.ServiceBusClient, count: int) -> None:
        try:
            for _ in range(count):
                with client:  # the sample's pattern: re-entered after each close
                    client.get_queue_sender(queue).send_messages(ServiceBusMessage("cycle"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    def run(count: int) -> None:
        threads = [threading.Thread(target=cycles, args=(c, count)) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join(100)

    run(1)  # first use: whatever is created once per process exists from here on
    threads, fds = threading.active_count(), _fds()
    run(10)
    assert errors == []
    deadline = time.monotonic() + 5
    while (threading.active_count(), _fds()) > (threads, fds) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= threads, [t.name for t in threading.enumerate()]
    assert _fds() <= fds
    with clients[0].get_queue_receiver(queue, max_wait_time=5) as receiver:
        total = 0
        while batch := receiver.receive_messages(max_message_count=100, max_wait_time=2):
            total += len(batch)
            for message in batch:
                receiver.complete_message(message)
    assert total == 55  # nothing lost across the reopens
    for client in clients:
        client.close()
