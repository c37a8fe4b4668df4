"""The emulator stops and starts again on the same port mid-run: clients recover in-process."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import pytest

from sbsync import ServiceBusMessage
from sbsync.emulator import Emulator
from sbsync.processor import SessionContext, SessionProcessor

from .conftest import LeakCheck, connect, number, send_session, wait_for

pytestmark = pytest.mark.timeout(120)


def test_clients_recover_after_the_emulator_restarts(emulator: Emulator) -> None:
    leaks = LeakCheck()
    port = emulator.port
    sent: list[int] = []
    # Error descriptions, not the exceptions: a traceback keeps the SDK's failed connection
    # (and its socket) alive, which would read as a leak below.
    send_errors: list[str] = []
    received: set[int] = set()
    receive_errors: list[str] = []
    stop = threading.Event()
    with connect(emulator) as client:
        sender = client.get_queue_sender("q")
        receiver = client.get_queue_receiver("q", max_wait_time=1)

        def produce() -> None:
            n = 0
            while not stop.is_set():
                try:
                    sender.send_messages(ServiceBusMessage(f"m:{n}"), timeout=10)
                    sent.append(n)
                    n += 1
                except Exception as exc:  # the outage: counted, then the same number again
                    send_errors.append(repr(exc))
                time.sleep(0.02)

        def consume() -> None:
            while not stop.is_set() or len(received) < len(set(sent)):
                try:
                    for message in receiver.receive_messages(10, max_wait_time=1, timeout=10):
                        receiver.complete_message(message, timeout=10)
                        received.add(number(message))
                except Exception as exc:
                    receive_errors.append(repr(exc))
                    time.sleep(0.1)
                if stop.is_set() and not wait_for(lambda: len(received) < len(set(sent)), 0):
                    return

        threads = [threading.Thread(target=produce), threading.Thread(target=consume)]
        for t in threads:
            t.start()
        assert wait_for(lambda: len(received) >= 20, 30), "no traffic before the restart"
        emulator.stop()
        time.sleep(1.5)  # clients see a refused port meanwhile
        emulator.start()
        assert emulator.port == port
        before = len(sent)
        assert wait_for(lambda: len(sent) >= before + 20, 45), f"sends did not resume: {send_errors[-3:]}"
        stop.set()
        for t in threads:
            t.join(40)
        assert not any(t.is_alive() for t in threads)
        # Everything whose send returned arrived, and the same receiver and sender did it all.
        assert set(sent) <= received, f"missing: {sorted(set(sent) - received)[:10]}"
        sender.close()
        receiver.close()
    assert wait_for(lambda: emulator.stats("q").active == 0 and emulator.stats("q").locked == 0, 15)
    leaks.assert_clean(collect=True)  # see facade-bugs F8


def test_session_work_resumes_after_stop_listening(emulator: Emulator) -> None:
    """The listener goes away and comes back; a new session receiver of the same client
    continues the session where it was left."""
    with connect(emulator) as client:
        send_session(client, "sq", "s1", 4)
        with client.get_queue_receiver("sq", session_id="s1", max_wait_time=2) as receiver:
            [first] = receiver.receive_messages(1)
            receiver.complete_message(first)
            emulator.faults.stop_listening()
            time.sleep(1)
            emulator.faults.resume_listening()
        with client.get_queue_receiver("sq", session_id="s1", max_wait_time=5) as again:
            rest = []
            while len(rest) < 3:
                batch = again.receive_messages(3)
                assert batch
                rest += batch
            assert [number(m) for m in rest] == [1, 2, 3]
            for m in rest:
                again.complete_message(m)
    assert emulator.stats("sq").active == 0


def test_processor_rides_through_a_restart(emulator: Emulator) -> None:
    """A running SessionProcessor keeps its client across the outage and finishes the work."""
    leaks = LeakCheck()
    seen: dict[str, list[int]] = defaultdict(list)
    sessions = [f"s{i}" for i in range(4)]
    lock = threading.Lock()

    def handler(message: object, context: SessionContext) -> None:
        with lock:
            seen[context.session_id].append(number(message))

    with connect(emulator) as client:
        for sid in sessions:
            send_session(client, "sq", sid, 10)
        processor = SessionProcessor(client, queue_name="sq", handler=handler, max_concurrent_sessions=4,
                                     session_idle_timeout=1.0, on_error=lambda exc, ctx: None)
        processor.start()
        try:
            assert wait_for(lambda: sum(map(len, seen.values())) >= 10, 20)
            emulator.stop()
            time.sleep(1.5)
            emulator.start()
            for sid in sessions:
                send_session(client, "sq", sid + "-after", 5)  # new work after the outage, too
            assert wait_for(lambda: emulator.stats("sq").active == 0 and emulator.stats("sq").locked == 0, 45)
        finally:
            assert processor.stop(timeout=15)
    for sid in sessions:
        assert list(dict.fromkeys(seen[sid])) == list(range(10)), f"{sid}: {seen[sid]}"
        assert list(dict.fromkeys(seen[sid + "-after"])) == list(range(5)), f"{sid}-after: {seen[sid + '-after']}"
    assert processor.stats.messages_completed >= 40 + 20
    leaks.assert_clean(collect=True)  # see facade-bugs F8
