"""Connections dropped (by the broker) during each kind of call: what each caller sees after."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any, Callable

import pytest

from sbsync import NEXT_AVAILABLE_SESSION, ServiceBusClient, ServiceBusMessage
from sbsync.emulator import Emulator
from sbsync.exceptions import MessageLockLostError, ServiceBusError, SessionLockLostError

from .conftest import connect, number, send_session, wait_for

pytestmark = pytest.mark.timeout(90)


def test_sends_survive_drops_at_least_once(emulator: Emulator, client: ServiceBusClient) -> None:
    """4 threads send 50 messages each while the broker drops every connection 5 times."""
    total, threads_n = 200, 4
    errors: list[BaseException] = []
    drops = 0
    done = threading.Event()

    def produce(t: int) -> None:
        with client.get_queue_sender("q") as sender:
            for n in range(total // threads_n):
                try:
                    sender.send_messages(ServiceBusMessage(f"{t}:{n}", message_id=f"{t}:{n}"))
                except BaseException as exc:  # the test's assertion: there are none
                    errors.append(exc)
                time.sleep(0.005)

    workers = [threading.Thread(target=produce, args=(t,)) for t in range(threads_n)]
    for w in workers:
        w.start()

    def dropper() -> None:
        nonlocal drops
        for _ in range(5):
            if done.wait(0.3):
                return
            drops += emulator.faults.drop_connections()

    chaos = threading.Thread(target=dropper)
    chaos.start()
    for w in workers:
        w.join(60)
    done.set()
    chaos.join(5)
    assert errors == [], f"sends failed despite retries: {errors[:3]}"
    assert drops > 0
    # Every send that returned arrived (at least once); duplicates are counted, not forbidden.
    seen: Counter[str] = Counter()
    with client.get_queue_receiver("q", receive_mode="receiveanddelete") as receiver:
        while True:
            batch = receiver.receive_messages(100, max_wait_time=1)
            if not batch:
                break
            seen.update(str(m) for m in batch)
    assert set(seen) == {f"{t}:{n}" for t in range(threads_n) for n in range(total // threads_n)}
    duplicates = sum(seen.values()) - len(seen)
    assert duplicates <= drops * threads_n, f"{duplicates} duplicates for {drops} drops"


def test_plain_receiver_carries_on_through_drops(emulator: Emulator, client: ServiceBusClient) -> None:
    """A non-session receiver keeps receiving and completing across drops; nothing is left."""
    count = 40
    with client.get_queue_sender("q") as sender:
        sender.send_messages([ServiceBusMessage(f"m:{n}") for n in range(count)])
    completed: set[int] = set()
    failed_settles = 0
    drops = 0
    with client.get_queue_receiver("q", max_wait_time=2) as receiver:
        deadline = time.monotonic() + 45
        while len(completed) < count and time.monotonic() < deadline:
            batch = receiver.receive_messages(5, max_wait_time=2)
            for i, message in enumerate(batch):
                if i == 2 and drops < 4:
                    drops += emulator.faults.drop_connections()  # mid-batch: the rest lose their locks
                try:
                    receiver.complete_message(message)
                    completed.add(number(message))
                except (MessageLockLostError, ServiceBusError):
                    failed_settles += 1  # redelivered below
    assert drops >= 4
    assert failed_settles > 0, "a drop mid-batch should have cost some locks"
    assert completed == set(range(count))
    assert wait_for(lambda: emulator.stats("q").active == 0 and emulator.stats("q").locked == 0, 5)


def test_receive_blocked_during_a_drop_carries_on(emulator: Emulator, client: ServiceBusClient) -> None:
    """A receive waiting for messages when the connection drops neither fails nor hangs."""
    results: list[Any] = []
    with client.get_queue_receiver("q") as receiver, client.get_queue_sender("q") as sender:

        def wait_for_one() -> None:
            try:
                results.append(receiver.receive_messages(1, max_wait_time=8))
            except Exception as exc:
                results.append(exc)

        waiter = threading.Thread(target=wait_for_one)
        waiter.start()
        time.sleep(1.0)  # the receive is waiting on the link now
        assert emulator.faults.drop_connections() >= 1
        time.sleep(0.5)
        sender.send_messages(ServiceBusMessage("m:0"))
        waiter.join(15)
        assert not waiter.is_alive()
        assert len(results) == 1 and not isinstance(results[0], Exception), results
        got = results[0] or receiver.receive_messages(1, max_wait_time=5)  # a receive cut short may return []
        assert [str(m) for m in got] == ["m:0"]
        receiver.complete_message(got[0])
    assert emulator.stats("q").active == 0


def test_lock_renewal_after_drop_reports_loss_and_redelivers(emulator: Emulator, client: ServiceBusClient) -> None:
    with client.get_queue_sender("q") as sender:
        sender.send_messages(ServiceBusMessage("m:0"))
    with client.get_queue_receiver("q", max_wait_time=5) as receiver:
        [message] = receiver.receive_messages(1)
        receiver.renew_message_lock(message)
        assert emulator.faults.drop_connections() >= 1
        with pytest.raises(MessageLockLostError):
            receiver.renew_message_lock(message)
        [again] = receiver.receive_messages(1)  # the same receiver carries on
        assert again.sequence_number == message.sequence_number
        assert again.delivery_count == message.delivery_count + 1
        receiver.complete_message(again)
    assert emulator.stats("q").active == 0


# -- sessions -----------------------------------------------------------------------------------

Op = Callable[[Any, Any], Any]

SESSION_OPS: dict[str, Op] = {
    "receive": lambda r, m: r.receive_messages(1, max_wait_time=2),
    "complete": lambda r, m: r.complete_message(m),
    "get_state": lambda r, m: r.session.get_state(),
    "set_state": lambda r, m: r.session.set_state(b"after-drop"),
    "renew_lock": lambda r, m: r.session.renew_lock(),
}


@pytest.mark.parametrize("operation", sorted(SESSION_OPS))
def test_session_receiver_loses_session_on_drop_and_a_new_one_resumes(
    emulator: Emulator, operation: str
) -> None:
    """After a drop every session op raises SessionLockLostError; a new receiver takes the
    session and gets the first unsettled message."""
    with connect(emulator) as client:
        send_session(client, "sq", "s1", 6)
        receiver = client.get_queue_receiver("sq", session_id="s1", max_wait_time=3)
        with receiver:
            got = receiver.receive_messages(3)
            assert [number(m) for m in got] == [0, 1, 2]
            receiver.complete_message(got[0])
            receiver.complete_message(got[1])
            receiver.session.set_state(b"checkpoint-1")
            assert emulator.faults.drop_connections() >= 1
            with pytest.raises(SessionLockLostError):
                SESSION_OPS[operation](receiver, got[2])
            # ...and it stays lost: the receiver does not quietly take the session again.
            with pytest.raises(SessionLockLostError):
                receiver.session.get_state()
        with client.get_queue_receiver("sq", session_id=NEXT_AVAILABLE_SESSION, max_wait_time=5) as again:
            assert again.session.get_state() == b"checkpoint-1"
            resumed = again.receive_messages(10)
            assert [number(m) for m in resumed][:1] == [2], "continues from the first unsettled message"
            while len(resumed) < 4:
                more = again.receive_messages(10)
                assert more, "messages missing"
                resumed += more
            assert [number(m) for m in resumed] == [2, 3, 4, 5]
            assert resumed[0].delivery_count == got[2].delivery_count + 1
            for m in resumed:
                again.complete_message(m)
    assert emulator.stats("sq").active == 0 and emulator.stats("sq").locked == 0
