"""Many threads, one client/sender/receiver, no locks of their own."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

import pytest

import sbsync
from sbsync import NEXT_AVAILABLE_SESSION, ServiceBusMessage, ServiceBusReceiveMode
from sbsync.exceptions import ClientClosedError, MessageSizeExceededError

pytestmark = pytest.mark.timeout(90)


def _in_threads(n, target):
    errors = []

    def run(i):
        try:
            target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a worker thread hung"
    assert errors == []


def test_16_threads_share_one_sender(client, queue, caplog):
    caplog.set_level(logging.DEBUG, logger="sbsync._group_send")
    per_thread = 25
    with client.get_queue_sender(queue) as sender:

        def send(t):
            for i in range(per_thread):
                sender.send_messages(ServiceBusMessage(f"{t}-{i}"))
                if t == 0 and i == 10:  # a failure in a group is that caller's alone
                    with pytest.raises(MessageSizeExceededError):
                        sender.send_messages(ServiceBusMessage(b"x" * 300_000))

        _in_threads(16, send)

    expected = {f"{t}-{i}" for t in range(16) for i in range(per_thread)}
    seen = Counter()
    with client.get_queue_receiver(queue, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE) as receiver:
        deadline = time.monotonic() + 30
        while sum(seen.values()) < len(expected) and time.monotonic() < deadline:
            seen.update(str(m) for m in receiver.receive_messages(100, max_wait_time=1))
        seen.update(str(m) for m in receiver.receive_messages(100, max_wait_time=0.5))
    assert set(seen) == expected
    assert max(seen.values()) == 1  # every message arrived exactly once
    grouped = [r for r in caplog.records if r.name == "sbsync._group_send"]
    assert grouped, "concurrent sends never travelled together (group commit)"


def test_8_threads_share_one_receiver(client, queue):
    total = 160
    with client.get_queue_sender(queue) as sender:
        sender.send_messages([ServiceBusMessage(str(i)) for i in range(total)])

    completed = Counter()
    lock = threading.Lock()
    with client.get_queue_receiver(queue, max_wait_time=1) as receiver:

        def work(_):
            while True:
                with lock:
                    if sum(completed.values()) >= total:
                        return
                batch = receiver.receive_messages(max_message_count=10, max_wait_time=1)
                for message in batch:
                    receiver.complete_message(message)
                    with lock:
                        completed[str(message)] += 1

        _in_threads(8, work)
        assert receiver.peek_messages(10) == []
    assert set(completed) == {str(i) for i in range(total)}
    assert max(completed.values()) == 1  # each message completed exactly once


def test_settling_alongside_a_waiting_receive_is_quick(client, queue):
    """A receive waiting for messages holds the socket until its read times out (0.2 s in the
    SDK), and paced every settlement from other threads by it (p50 ~0.2 s). Settlements lower
    the read timeout while they are in flight; it is restored once they are done."""
    total = 40
    with client.get_queue_sender(queue) as sender:
        sender.send_messages([ServiceBusMessage(str(i)) for i in range(total)])
    with client.get_queue_receiver(queue) as receiver:
        messages = []
        while len(messages) < total:
            messages += receiver.receive_messages(total, max_wait_time=2)
        handler = receiver._peek()._handler
        defaults = (handler._socket_timeout, handler._connection._socket_timeout)
        waiter = threading.Thread(target=lambda: receiver.receive_messages(1, max_wait_time=4))
        waiter.start()
        time.sleep(0.3)  # the receive is waiting on the socket
        took = []

        def settle(i):
            for message in messages[i::4]:
                start = time.monotonic()
                receiver.complete_message(message)
                took.append(time.monotonic() - start)

        _in_threads(4, settle)
        waiter.join(10)
        took.sort()
        assert took[len(took) // 2] < 0.1, f"settlement p50 {took[len(took) // 2]:.3f} s"
        assert (handler._socket_timeout, handler._connection._socket_timeout) == defaults
        assert receiver.peek_messages(10) == []


def test_threads_share_one_session(client, session_queue):
    with client.get_queue_sender(session_queue) as sender:
        sender.send_messages(ServiceBusMessage("s", session_id="shared"))
    with client.get_queue_receiver(session_queue, session_id="shared", max_wait_time=2) as receiver:
        session = receiver.session

        def work(t):
            for i in range(15):
                session.set_state(f"{t}-{i}")
                assert session.get_state() is not None
                session.renew_lock()

        _in_threads(8, work)
        (message,) = receiver.receive_messages(1, max_wait_time=2)
        receiver.complete_message(message)
        session.set_state(None)


@pytest.mark.parametrize("how", ["receive_messages", "iterate"])
def test_close_from_another_thread_unblocks_receive(client, queue, how):
    receiver = client.get_queue_receiver(queue, max_wait_time=30)
    receiver.peek_messages(1)  # open the link first, so the blocked call is a pure wait
    outcome = []
    started = threading.Event()

    def blocked():
        started.set()
        try:
            if how == "iterate":
                outcome.append(list(receiver))
            else:
                outcome.append(receiver.receive_messages(max_wait_time=30))
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=blocked)
    t.start()
    assert started.wait(5)
    time.sleep(0.5)
    start = time.monotonic()
    receiver.close()
    t.join(5)
    assert not t.is_alive()
    assert time.monotonic() - start < 3
    if how == "iterate":
        assert outcome == [[]]  # the stream simply ends
    else:
        assert len(outcome) == 1 and isinstance(outcome[0], ClientClosedError)
    with pytest.raises(ClientClosedError):
        receiver.receive_messages()


def test_next_available_session_receivers_in_parallel(client, session_queue):
    with client.get_queue_sender(session_queue) as sender:
        sender.send_messages([ServiceBusMessage(f"p{i}", session_id=f"par-{i}") for i in range(3)])
    got = []

    def work(_):
        with client.get_queue_receiver(session_queue, session_id=NEXT_AVAILABLE_SESSION, max_wait_time=3) as r:
            for message in r.receive_messages(5, max_wait_time=2):
                r.complete_message(message)
                got.append((r.session.session_id, str(message)))

    _in_threads(3, work)
    assert sorted(got) == [(f"par-{i}", f"p{i}") for i in range(3)]


def test_grouped_sends_keep_sessions_apart(client, session_queue):
    with client.get_queue_sender(session_queue) as sender:
        _in_threads(8, lambda t: [sender.send_messages(ServiceBusMessage(f"{t}-{i}", session_id=f"g{t % 2}")) for i in range(10)])
    for session_id in ("g0", "g1"):
        with client.get_queue_receiver(
            session_queue, session_id=session_id, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE
        ) as receiver:
            got = []
            while True:
                batch = receiver.receive_messages(50, max_wait_time=1)
                if not batch:
                    break
                got += batch
        assert {m.session_id for m in got} == {session_id}
        assert sorted(str(m) for m in got) == sorted(f"{t}-{i}" for t in range(8) if f"g{t % 2}" == session_id for i in range(10))


def test_client_close_from_another_thread_unblocks_receive(conn_str, queue):
    client = sbsync.ServiceBusClient.from_connection_string(conn_str)
    receiver = client.get_queue_receiver(queue)
    receiver.peek_messages(1)
    outcome = []
    t = threading.Thread(target=lambda: outcome.append(_outcome(lambda: receiver.receive_messages(max_wait_time=30))))
    t.start()
    time.sleep(0.5)
    start = time.monotonic()
    client.close()
    t.join(5)
    assert not t.is_alive() and time.monotonic() - start < 5
    assert len(outcome) == 1 and isinstance(outcome[0], ClientClosedError)


def _outcome(call):
    try:
        return call()
    except BaseException as exc:
        return exc
