"""Links that cost nothing per request: warm senders, idle close, replacement, background close."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import azure.servicebus as sdk
import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusReceiveMode

import sbsync
from sbsync.emulator import EntityConfig
from sbsync.exceptions import MessageSizeExceededError, ServiceBusServerBusyError

LINKS_LOGGER = "sbsync.links"


def _link_log(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LINKS_LOGGER]


def _drain(client: sbsync.ServiceBusClient, queue: str, **kwargs) -> list[str]:
    got: list[str] = []
    with client.get_queue_receiver(queue, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE, **kwargs) as r:
        while batch := r.receive_messages(100, max_wait_time=1):
            got += [str(m) for m in batch]
    return got


def test_sender_per_request_reuses_one_link_and_logs_its_lifecycle(conn_str, queue, caplog):
    caplog.set_level(logging.DEBUG, logger=LINKS_LOGGER)
    with sbsync.ServiceBusClient.from_connection_string(conn_str) as client:
        identifiers = set()
        started = time.monotonic()
        for i in range(20):
            with client.get_queue_sender(queue) as sender:
                sender.send_messages(ServiceBusMessage(f"req-{i}"))
                identifiers.add(sender.client_identifier)
        per_request = (time.monotonic() - started) / 20
        assert identifiers and len(identifiers) == 1  # one link for every request
        assert per_request < 0.25  # the SDK's own open + close is ~1 s; generous for a loaded box
        assert sorted(_drain(client, queue)) == sorted(f"req-{i}" for i in range(20))
    log = _link_log(caplog)
    link = f"sender link to {queue!r}"
    assert log.count(f"{link} reused") == 19
    assert log.count(f"{link} parked for reuse") == 20
    assert sum(line.startswith(f"{link} opened") for line in log) == 1
    assert f"{link} closed" in log  # by client.close()


def test_links_open_and_close_at_the_brokers_pace_not_the_sdks(conn_str, queue, session_queue):
    """The SDK paces a link open at 50 ms per handshake frame (>= 0.45 s) and makes a close wait
    for its keep-alive task's next tick (~0.5-1 s right after an open): these 4 cycles (12 links
    opened, 8 clients closed) would take over 9 s. sbsync (hooks link-open, keep-alive-stop)
    takes ~0.2 s a cycle here."""
    cycles = 4
    started = time.monotonic()
    for i in range(cycles):
        client = sbsync.ServiceBusClient.from_connection_string(conn_str, sender_idle_timeout=0)
        with client.get_queue_sender(queue) as sender:
            sender.send_messages(ServiceBusMessage(f"m{i}"))
        client.close()
        with sbsync.ServiceBusClient.from_connection_string(conn_str) as client:
            with client.get_queue_sender(session_queue) as sender:
                sender.send_messages(ServiceBusMessage(f"s{i}", session_id="s"))
            with client.get_queue_receiver(session_queue, session_id="s", max_wait_time=5) as receiver:
                (message,) = receiver.receive_messages(1, max_wait_time=5)
                receiver.complete_message(message)
                assert str(message) == f"s{i}"
    took = time.monotonic() - started
    assert took < 3.0, f"{2 * cycles} clients took {took:.1f} s to open and close their links"
    with sbsync.ServiceBusClient.from_connection_string(conn_str) as client:
        assert sorted(_drain(client, queue)) == [f"m{i}" for i in range(cycles)]


def test_an_idle_parked_link_is_closed_after_sender_idle_timeout(conn_str, queue, caplog):
    caplog.set_level(logging.DEBUG, logger=LINKS_LOGGER)
    with sbsync.ServiceBusClient.from_connection_string(conn_str, sender_idle_timeout=0.5) as client:
        with client.get_queue_sender(queue) as sender:
            sender.send_messages(ServiceBusMessage("before idle"))
            first = sender.client_identifier
        parked_sdk = sender._sdk_obj
        deadline = time.monotonic() + 5
        while parked_sdk._running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not parked_sdk._running  # closed by the idle timer, not by anyone's call
        assert any(line.startswith(f"sender link to {queue!r} idle for") for line in _link_log(caplog))
        with client.get_queue_sender(queue) as sender:
            sender.send_messages(ServiceBusMessage("after idle"))
            assert sender.client_identifier != first  # a new link
        assert sorted(_drain(client, queue)) == ["after idle", "before idle"]


def test_sender_idle_timeout_zero_parks_nothing_and_bad_values_are_refused(conn_str, queue):
    with sbsync.ServiceBusClient.from_connection_string(conn_str, sender_idle_timeout=0) as client:
        with client.get_queue_sender(queue) as sender:
            sender.send_messages(ServiceBusMessage("x"))
        assert not sender._sdk_obj._running  # closed on close(), as the sync SDK does
    with pytest.raises(ValueError, match="sender_idle_timeout"):
        sbsync.ServiceBusClient.from_connection_string(conn_str, sender_idle_timeout=-1)
    with pytest.raises(TypeError, match="sender_idle_timeout"):
        sbsync.ServiceBusClient.from_connection_string(conn_str, sender_idle_timeout="60")


def test_a_parked_link_broken_by_a_dropped_connection_is_replaced(emulator, conn_str, queue, caplog):
    caplog.set_level(logging.DEBUG, logger=LINKS_LOGGER)
    with sbsync.ServiceBusClient.from_connection_string(conn_str) as client:
        with client.get_queue_sender(queue) as sender:
            sender.send_messages(ServiceBusMessage("1"))
        assert emulator.faults.drop_connections() >= 1  # the parked link's connection among them
        with client.get_queue_sender(queue) as sender:
            sender.send_messages(ServiceBusMessage("2"))  # no error reaches the caller
        emulator.faults.drop_connections()  # and a link in use
        with client.get_queue_sender(queue) as sender:
            sender.send_messages(ServiceBusMessage("3"))
        assert sorted(_drain(client, queue)) == ["1", "2", "3"]
    log = _link_log(caplog)
    replaced_or_reopened = [
        line for line in log if line.startswith(f"sender link to {queue!r} replaced") or line.startswith(f"sender link to {queue!r} opened")
    ]
    assert len(replaced_or_reopened) >= 2  # the first open, then at least one replacement


def test_receiver_close_returns_at_once_and_releases_the_session_promptly(emulator, conn_str, session_queue):
    with sdk.ServiceBusClient.from_connection_string(conn_str) as rival, rival.get_queue_sender(session_queue) as s:
        s.send_messages([ServiceBusMessage(f"m{i}", session_id="handover") for i in range(2)])
        client = sbsync.ServiceBusClient.from_connection_string(conn_str)
        receiver = client.get_queue_receiver(session_queue, session_id="handover")
        (first,) = receiver.receive_messages(1, max_wait_time=5)
        receiver.complete_message(first)
        assert emulator.stats(session_queue).locked_sessions == 1
        started = time.monotonic()
        receiver.close()
        close_took = time.monotonic() - started
        while emulator.stats(session_queue).locked_sessions and time.monotonic() - started < 5:
            time.sleep(0.005)
        released_after = time.monotonic() - started
        # Another client (another process, as far as the broker knows) takes the session over.
        with rival.get_queue_receiver(session_queue, session_id="handover", max_wait_time=5) as taker:
            taken = taker.receive_messages(1, max_wait_time=5)
            taken_after = time.monotonic() - started
            assert [str(m) for m in taken] == ["m1"]
            taker.complete_message(taken[0])
        client.close()
    assert close_took < 0.25, close_took  # the SDK's own close takes ~0.5 s
    assert released_after < 0.4, released_after
    assert taken_after < 1.0, taken_after  # mostly the rival SDK's own ~0.5 s link open


def test_client_close_waits_for_a_receiver_closing_in_the_background(conn_str, queue):
    client = sbsync.ServiceBusClient.from_connection_string(conn_str)
    receiver = client.get_queue_receiver(queue)
    receiver.peek_messages(1)  # opens the link
    sdk_receiver = receiver._sdk_obj
    # The SDK's teardown takes milliseconds here; hold it until released, as a slow network would.
    release = threading.Event()
    close_handler = sdk_receiver._close_handler

    async def slow_close_handler():
        while not release.is_set():
            await asyncio.sleep(0.01)
        await close_handler()

    sdk_receiver._close_handler = slow_close_handler
    started = time.monotonic()
    receiver.close()
    assert time.monotonic() - started < 0.5  # close() did not wait for the SDK's teardown
    assert sdk_receiver._running  # which is still going on
    threading.Timer(0.3, release.set).start()
    client.close()
    assert release.is_set()  # client.close() waited for it
    assert not sdk_receiver._running and sdk_receiver._handler is None


def test_each_caller_of_a_coalesced_send_gets_its_own_outcome(emulator, conn_str, queue):
    with sbsync.ServiceBusClient.from_connection_string(conn_str, retry_total=0) as client:
        sender = client.get_queue_sender(queue)
        sender.send_messages(ServiceBusMessage("open the link"))
        emulator.faults.delay(0.3, operation="send")  # let the callers pile up behind one transfer
        outcomes: dict[str, object] = {}
        gate = threading.Barrier(9)

        def send(name: str, body: bytes | str) -> None:
            gate.wait()
            try:
                sender.send_messages(ServiceBusMessage(body))
                outcomes[name] = "ok"
            except Exception as exc:
                outcomes[name] = exc

        threads = [threading.Thread(target=send, args=(f"small-{i}", f"small-{i}")) for i in range(8)]
        threads.append(threading.Thread(target=send, args=("huge", b"x" * (2 * 1024 * 1024))))
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        emulator.faults.delay(0, operation="send")
        assert isinstance(outcomes.pop("huge"), MessageSizeExceededError)  # only its own caller fails
        assert set(outcomes.values()) == {"ok"}

        # A failed transfer fails every caller it carried, each with its own exception object.
        emulator.faults.delay(0.3, operation="send")
        emulator.faults.fail_next(2, operation="send")
        outcomes.clear()
        gate = threading.Barrier(8)
        threads = [threading.Thread(target=send, args=(f"b{i}", f"b{i}")) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        emulator.faults.delay(0, operation="send")
        failed = {name: exc for name, exc in outcomes.items() if exc != "ok"}
        assert failed and all(isinstance(exc, ServiceBusServerBusyError) for exc in failed.values())
        assert len({id(exc) for exc in failed.values()}) == len(failed)
        sender.close()
        delivered = _drain(client, queue)
    sent_ok = {name for name, outcome in outcomes.items() if outcome == "ok"}
    assert sorted(delivered) == sorted(["open the link", *(f"small-{i}" for i in range(8)), *sent_ok])


def test_management_calls_go_on_past_the_reply_links_credit(emulator, conn_str, queue, monkeypatch):
    # pyamqp grants a $management reply link DEFAULT_LINK_CREDIT (10,000) replies once and
    # never more. A grant of 20 makes the test quick; the emulator honours it as it would 10,000.
    import azure.servicebus._pyamqp.aio._link_async as aio_link
    import azure.servicebus._pyamqp.link as sync_link

    emulator.create_entity(EntityConfig(name=queue, requires_session=True))  # its own: state is left behind
    monkeypatch.setattr(sync_link, "DEFAULT_LINK_CREDIT", 20)
    monkeypatch.setattr(aio_link, "DEFAULT_LINK_CREDIT", 20)
    # The official SDK stops getting answers once the grant is spent ...
    with sdk.ServiceBusClient.from_connection_string(conn_str, retry_total=0) as official:
        with official.get_queue_receiver(queue, session_id="credit-sdk") as receiver:
            with pytest.raises(sdk.exceptions.OperationTimeoutError):
                for _ in range(25):
                    receiver.session.get_state(timeout=2)
    # ... sbsync's receivers renew it.
    with sbsync.ServiceBusClient.from_connection_string(conn_str) as client:
        with client.get_queue_receiver(queue, session_id="credit") as receiver:
            for i in range(60):
                receiver.session.set_state(str(i), timeout=5)
            assert receiver.session.get_state(timeout=5) == b"59"
