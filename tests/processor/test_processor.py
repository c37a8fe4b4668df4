"""SessionProcessor against the emulator: workers, idle roll-over, FIFO, errors, stop()."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest

from sbsync import ServiceBusClient, ServiceBusMessage, ServiceBusSubQueue
from sbsync.emulator import Emulator, EntityConfig
from sbsync.processor import SessionContext, SessionProcessor

QUEUE = "orders"
POISON_QUEUE = "poison"
SLOW_QUEUE = "slow"


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator(
        session_queues=[QUEUE, POISON_QUEUE, SLOW_QUEUE], lock_duration=5, max_delivery_count=2
    ) as emu:
        yield emu


@pytest.fixture(scope="module")
def client(emulator: Emulator) -> Iterator[ServiceBusClient]:
    with ServiceBusClient.from_connection_string(emulator.connection_string) as c:
        yield c


def send(client: ServiceBusClient, queue: str, sessions: int, per_session: int) -> None:
    with client.get_queue_sender(queue) as sender:
        sender.send_messages(
            [
                ServiceBusMessage(f"{s}:{n}", session_id=f"s{s:02d}")
                for n in range(per_session)
                for s in range(sessions)
            ]
        )


def wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.mark.timeout(120)
def test_two_workers_serve_twenty_sessions_in_order(client: ServiceBusClient) -> None:
    send(client, QUEUE, sessions=20, per_session=5)
    seen: dict[str, list[int]] = defaultdict(list)
    threads_per_session: dict[str, set[str]] = defaultdict(set)
    starts: list[str] = []
    closes: list[str] = []
    lock = threading.Lock()

    def handler(message: Any, context: SessionContext) -> None:
        session_part, n = str(message).split(":")
        assert context.session_id == f"s{int(session_part):02d}"
        with lock:
            seen[context.session_id].append(int(n))
            threads_per_session[context.session_id].add(threading.current_thread().name)
        context.session.set_state(n)  # checkpoint

    processor = SessionProcessor(
        client,
        queue_name=QUEUE,
        handler=handler,
        max_concurrent_sessions=2,
        session_idle_timeout=0.5,
        on_session_start=lambda ctx: starts.append(ctx.session_id),
        on_session_close=lambda ctx: closes.append(ctx.session_id),
    )
    with processor:
        assert wait_for(lambda: sum(map(len, seen.values())) >= 100, 90)
    # Only two workers, yet twenty sessions: each was released when idle and the next taken.
    assert len({name for names in threads_per_session.values() for name in names}) == 2
    assert sorted(seen) == [f"s{s:02d}" for s in range(20)]
    assert all(order == [0, 1, 2, 3, 4] for order in seen.values()), dict(seen)
    assert len(set(starts)) == 20 and set(closes) == set(starts)
    assert processor.stats.messages_completed == 100
    # The checkpoint of each session is its last message.
    with client.get_queue_receiver(QUEUE, session_id="s07", max_wait_time=1) as receiver:
        assert receiver.session.get_state() == b"4"
        assert receiver.peek_messages(max_message_count=5) == []


@pytest.mark.timeout(120)
def test_handler_error_abandons_then_dead_letters(client: ServiceBusClient) -> None:
    with client.get_queue_sender(POISON_QUEUE) as sender:
        sender.send_messages(
            [ServiceBusMessage(body, session_id="p") for body in ("bad", "good")]
        )
    errors: list[tuple[BaseException, Any]] = []
    handled: list[str] = []

    def handler(message: Any, context: SessionContext) -> None:
        if str(message) == "bad":
            raise RuntimeError("poison")
        handled.append(str(message))

    processor = SessionProcessor(
        client,
        queue_name=POISON_QUEUE,
        handler=handler,
        max_concurrent_sessions=1,
        session_idle_timeout=0.5,
        on_error=lambda exc, ctx: errors.append((exc, ctx)),
    )
    with processor:
        assert wait_for(lambda: handled == ["good"], 60)
    # max_delivery_count=2: two failed attempts, then the broker dead-letters the message,
    # and the session's next message is processed.
    assert [str(exc) for exc, _ in errors] == ["poison", "poison"]
    assert all(ctx.session_id == "p" for _, ctx in errors)
    assert processor.stats.messages_abandoned == 2
    with client.get_queue_receiver(
        POISON_QUEUE, sub_queue=ServiceBusSubQueue.DEAD_LETTER, max_wait_time=2
    ) as dlq:
        dead = dlq.receive_messages(max_message_count=5, max_wait_time=2)
        assert [str(m) for m in dead] == ["bad"]
        assert dead[0].dead_letter_reason == "MaxDeliveryCountExceeded"
        dlq.complete_message(dead[0])


@pytest.mark.timeout(120)
def test_stop_finishes_the_message_in_hand_and_completes_nothing_else(
    client: ServiceBusClient,
) -> None:
    with client.get_queue_sender(SLOW_QUEUE) as sender:
        sender.send_messages([ServiceBusMessage(str(n), session_id="slow") for n in range(5)])
    started = threading.Event()
    finished: list[str] = []

    def handler(message: Any, context: SessionContext) -> None:
        started.set()
        time.sleep(1.0)
        finished.append(str(message))

    processor = SessionProcessor(
        client, queue_name=SLOW_QUEUE, handler=handler, max_concurrent_sessions=1
    )
    processor.start()
    assert started.wait(30)
    begin = time.monotonic()
    assert processor.stop(timeout=10) is True
    assert time.monotonic() - begin < 5
    assert finished == ["0"]  # the message in hand was finished, no further one started
    assert processor.stats.messages_completed == 1
    # The rest is still there, in order, for the next consumer.
    with client.get_queue_receiver(SLOW_QUEUE, session_id="slow", max_wait_time=2) as receiver:
        rest = receiver.receive_messages(max_message_count=10, max_wait_time=2)
        assert [str(m) for m in rest] == ["1", "2", "3", "4"]
        for message in rest:
            receiver.complete_message(message)


def test_bad_arguments(client: ServiceBusClient) -> None:
    def handler(message: Any, context: SessionContext) -> None:
        pass

    with pytest.raises(ValueError, match="queue_name"):
        SessionProcessor(client, handler=handler)
    with pytest.raises(ValueError, match="subscription_name"):
        SessionProcessor(client, topic_name="t", handler=handler)
    with pytest.raises(TypeError, match="callable"):
        SessionProcessor(client, queue_name=QUEUE, handler="nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_concurrent_sessions"):
        SessionProcessor(client, queue_name=QUEUE, handler=handler, max_concurrent_sessions=0)
    with pytest.raises(ValueError, match="session_idle_timeout"):
        SessionProcessor(client, queue_name=QUEUE, handler=handler, session_idle_timeout=0)


def test_closing_the_client_under_a_running_processor_ends_it(emulator: Emulator, caplog: Any) -> None:
    """A closed client reopens on its next use; the processor's workers must not be that use
    (they would start a loop thread nobody closes): they end, with one WARNING."""
    emulator.create_entity(EntityConfig(name="closing", requires_session=True))
    client = ServiceBusClient.from_connection_string(emulator.connection_string)
    processor = SessionProcessor(
        client, handler=lambda context, message: None, queue_name="closing", max_concurrent_sessions=3
    )
    with caplog.at_level("WARNING", logger="sbsync.processor"):
        processor.start()
        time.sleep(0.5)
        client.close()
        assert wait_for(lambda: not any(w.is_alive() for w in processor._workers), 10)
    assert processor.stop(5)
    assert [r.getMessage() for r in caplog.records if "client was closed" in r.getMessage()] == [
        "session processor stopping: its client was closed (stop the processor first)"
    ]
    loop = client._portal._thread
    assert loop is None or not loop.is_alive()
