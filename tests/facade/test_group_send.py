"""Group commit's inline path and its batches: a lone send goes out in its caller's own task;
sends arriving meanwhile queue and travel together after it; each caller gets its own outcome."""

from __future__ import annotations

import asyncio
import datetime
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

import pytest
from azure.servicebus import ServiceBusMessageBatch
from azure.servicebus.aio._transport._pyamqp_transport_async import PyamqpTransportAsync

import sbsync
from sbsync import ServiceBusMessage, ServiceBusReceiveMode
from sbsync._group_send import SendGroup
from sbsync._sdk import _batch as batch_module
from sbsync._sdk import _hooks, fill_batch
from sbsync.exceptions import (
    MessageSizeExceededError,
    OperationTimeoutError,
    ServiceBusConnectionError,
    ServiceBusServerBusyError,
)

pytestmark = pytest.mark.timeout(60)


def _drain(client: sbsync.ServiceBusClient, queue: str) -> list[str]:
    got: list[str] = []
    with client.get_queue_receiver(queue, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE) as r:
        while batch := r.receive_messages(100, max_wait_time=1):
            got += [str(m) for m in batch]
    return got


@contextmanager
def _slow_sends(emulator: Any, seconds: float) -> Iterator[None]:
    emulator.faults.delay(seconds, operation="send")
    try:
        yield
    finally:
        emulator.faults.delay(0, operation="send")


def _wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.005)


class _Caller(threading.Thread):
    """Sends one message from its own thread; ``outcome`` is "ok" or the exception."""

    def __init__(
        self, sender: sbsync.ServiceBusSender, body: str | bytes | ServiceBusMessage, timeout: float | None = None
    ) -> None:
        super().__init__()
        self._sender, self._timeout = sender, timeout
        self._message = body if isinstance(body, ServiceBusMessage) else ServiceBusMessage(body)
        self.outcome: object = None

    def run(self) -> None:
        try:
            self._sender.send_messages(self._message, timeout=self._timeout)
            self.outcome = "ok"
        except Exception as exc:
            self.outcome = exc

    def result(self) -> object:
        self.join(30)
        assert not self.is_alive(), "a caller hung"
        return self.outcome


def _start_inline(sender: sbsync.ServiceBusSender, first: _Caller) -> None:
    """Start ``first`` and wait until its send is on the wire inline."""
    first.start()
    _wait_until(lambda: sender._group._inline)


@contextmanager
def _first_send_inline(sender: sbsync.ServiceBusSender, emulator: Any, seconds: float) -> Iterator[_Caller]:
    """The link open and sends slowed by ``seconds``: a first caller's send is on the wire
    inline, so that callers started meanwhile queue behind it."""
    sender.send_messages(ServiceBusMessage("open"))
    with _slow_sends(emulator, seconds):
        first = _Caller(sender, "first")
        _start_inline(sender, first)
        yield first


def _inline_then_behind(sender: sbsync.ServiceBusSender, first: _Caller, behind: int) -> list[_Caller]:
    """Start ``first`` and, once its send is on the wire inline, ``behind`` more callers."""
    _start_inline(sender, first)
    others = [_Caller(sender, f"o{i}") for i in range(behind)]
    for caller in others:
        caller.start()
    return others


def test_lone_sends_go_out_in_their_callers_tasks(client, queue):
    with client.get_queue_sender(queue) as sender:
        for i in range(5):
            sender.send_messages(ServiceBusMessage(f"m{i}"))
        assert sender._group._flusher is None  # no flusher was needed
        assert not sender._group.busy
    assert sorted(_drain(client, queue)) == [f"m{i}" for i in range(5)]


def test_sends_arriving_during_an_inline_send_travel_together_after_it(client, emulator, queue, caplog):
    caplog.set_level(logging.DEBUG, logger="sbsync._group_send")
    with client.get_queue_sender(queue) as sender:
        sender.send_messages(ServiceBusMessage("open"))
        with _slow_sends(emulator, 0.4):
            first = _Caller(sender, "first")
            others = _inline_then_behind(sender, first, 6)
            assert [c.result() for c in [first, *others]] == ["ok"] * 7
        assert not sender._group.busy
    assert any("messages in one transfer" in r.getMessage() for r in caplog.records)
    assert sorted(_drain(client, queue)) == sorted(["open", "first", *(f"o{i}" for i in range(6))])


def test_a_send_that_gives_up_while_queued_is_never_sent(client, emulator, queue):
    with client.get_queue_sender(queue) as sender:
        with _first_send_inline(sender, emulator, 1.0) as first:
            gives_up = _Caller(sender, "gave-up", timeout=0.2)
            kept = _Caller(sender, "kept")
            gives_up.start()
            kept.start()
            assert isinstance(gives_up.result(), OperationTimeoutError)
            assert first.result() == "ok" and kept.result() == "ok"
    assert sorted(_drain(client, queue)) == ["first", "kept", "open"]


def test_an_inline_send_that_times_out_does_not_hold_up_those_behind_it(client, emulator, queue):
    with client.get_queue_sender(queue) as sender:
        sender.send_messages(ServiceBusMessage("open"))
        with _slow_sends(emulator, 1.0):
            first = _Caller(sender, "first", timeout=0.3)
            others = _inline_then_behind(sender, first, 3)
            assert isinstance(first.result(), OperationTimeoutError)
            assert [c.result() for c in others] == ["ok"] * 3
        sender.send_messages(ServiceBusMessage("after"))
    delivered = _drain(client, queue)
    # "first" was on the wire when its caller gave up: it may or may not have arrived.
    assert sorted(m for m in delivered if m != "first") == sorted(["open", "after", *(f"o{i}" for i in range(3))])


def test_an_inline_send_error_is_its_callers_alone(conn_str, emulator, queue):
    with sbsync.ServiceBusClient.from_connection_string(conn_str, retry_total=0) as client:
        with client.get_queue_sender(queue) as sender:
            sender.send_messages(ServiceBusMessage("open"))
            with pytest.raises(MessageSizeExceededError):
                sender.send_messages(ServiceBusMessage(b"x" * (2 * 1024 * 1024)))
            with _slow_sends(emulator, 0.4):
                emulator.faults.fail_next(1, operation="send")
                first = _Caller(sender, "first")
                others = _inline_then_behind(sender, first, 3)
                assert isinstance(first.result(), ServiceBusServerBusyError)
                assert [c.result() for c in others] == ["ok"] * 3
            sender.send_messages(ServiceBusMessage("after"))
            assert not sender._group.busy
        assert sorted(_drain(client, queue)) == sorted(["open", "after", *(f"o{i}" for i in range(3))])


def _queued(sender: sbsync.ServiceBusSender, count: int) -> None:
    _wait_until(lambda: len(sender._group._queue) == count)


def _tasks_on_the_loop(client: sbsync.ServiceBusClient) -> int:
    async def count() -> int:
        return len(asyncio.all_tasks()) - 1  # not this one

    return client._portal.call(count)


def test_callers_joining_a_busy_group_wait_without_a_task_of_their_own(client, emulator, queue):
    with client.get_queue_sender(queue) as sender:
        with _first_send_inline(sender, emulator, 0.5) as first:
            tasks_before = _tasks_on_the_loop(client)
            others = [_Caller(sender, f"o{i}") for i in range(6)]
            for caller in others:
                caller.start()
            _queued(sender, 6)
            assert all(entry.waiter is not None for entry in sender._group._queue)
            assert _tasks_on_the_loop(client) == tasks_before
            assert [c.result() for c in [first, *others]] == ["ok"] * 7
    assert sorted(_drain(client, queue)) == sorted(["open", "first", *(f"o{i}" for i in range(6))])


def test_callers_of_a_failed_group_retry_and_each_message_arrives_once(conn_str, emulator, queue):
    with sbsync.ServiceBusClient.from_connection_string(conn_str, retry_backoff_factor=0.05) as client:
        with client.get_queue_sender(queue) as sender:
            sender.send_messages(ServiceBusMessage("open"))
            with _slow_sends(emulator, 0.3):
                # The inline send fails, then the group's transfer (it goes first: the inline
                # caller's retry waits for its backoff).
                emulator.faults.fail_next(2, operation="send")
                first = _Caller(sender, "first")
                others = _inline_then_behind(sender, first, 4)
                assert [c.result() for c in [first, *others]] == ["ok"] * 5
        delivered = _drain(client, queue)
    assert sorted(delivered) == sorted(["open", "first", *(f"o{i}" for i in range(4))])


@pytest.mark.parametrize("closing", ["sender", "client"])
def test_closing_ends_the_wait_of_callers_queued_in_a_group(conn_str, emulator, queue, closing):
    client = sbsync.ServiceBusClient.from_connection_string(conn_str)
    try:
        sender = client.get_queue_sender(queue)
        sender.send_messages(ServiceBusMessage("open"))
        with _slow_sends(emulator, 2.0):
            first = _Caller(sender, "first")
            others = _inline_then_behind(sender, first, 4)
            _queued(sender, 4)
            (sender if closing == "sender" else client).close()
            outcomes = [c.result() for c in [first, *others]]
        assert all(isinstance(o, sbsync.exceptions.ClientClosedError) for o in outcomes), outcomes
        with pytest.raises(sbsync.exceptions.ClientClosedError):
            sender.send_messages(ServiceBusMessage("after"))
    finally:
        client.close()


def test_grouped_messages_arrive_with_every_property_they_were_sent_with(client, emulator, queue, caplog):
    """The compiled batch fill's bytes, read back by the broker and the SDK's receiver."""
    caplog.set_level(logging.DEBUG, logger="sbsync._group_send")
    when = datetime.datetime(2031, 5, 6, 7, 8, 9, tzinfo=datetime.timezone.utc)

    def rich(i: int) -> ServiceBusMessage:
        return ServiceBusMessage(
            f"body-{i}" * (i * 40 + 1),
            message_id=f"id-{i}",
            correlation_id=f"corr-{i}",
            subject="s" * (300 if i == 2 else 3),  # a properties list too long for list8
            content_type="text/plain",
            to="to",
            reply_to="back",
            time_to_live=datetime.timedelta(minutes=5 + i),
            application_properties={"i": i, "f": 0.5, "b": True, "s": "v", "when": when, "raw": b"r"},
        )

    with client.get_queue_sender(queue) as sender:
        with _first_send_inline(sender, emulator, 0.4) as first:
            others = [_Caller(sender, rich(i)) for i in range(4)]
            for caller in others:
                caller.start()
            assert [c.result() for c in [first, *others]] == ["ok"] * 5
    assert any("sending 4 messages in one transfer" in r.getMessage() for r in caplog.records)
    with client.get_queue_receiver(queue, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE) as receiver:
        got = {}
        while batch := receiver.receive_messages(100, max_wait_time=1):
            got.update({str(m.message_id): m for m in batch if m.message_id and m.message_id.startswith("id-")})
    assert sorted(got) == [f"id-{i}" for i in range(4)]
    for i in range(4):
        message, sent = got[f"id-{i}"], rich(i)
        assert str(message) == str(sent)
        assert (message.correlation_id, message.subject, message.content_type, message.to, message.reply_to) == (
            sent.correlation_id, sent.subject, sent.content_type, sent.to, sent.reply_to)
        assert message.time_to_live == sent.time_to_live
        props = {k.decode() if isinstance(k, bytes) else k: v for k, v in message.application_properties.items()}
        assert props["i"] == i and props["f"] == 0.5 and props["b"] is True
        assert props["s"] in ("v", b"v") and props["raw"] in ("r", b"r")


# -- filling a group's batch the compiled way (no Service Bus involved) ------------------------


def _batch(max_size: int = 256 * 1024) -> ServiceBusMessageBatch:
    return ServiceBusMessageBatch(max_size, amqp_transport=PyamqpTransportAsync)


def _messages() -> list[ServiceBusMessage]:
    return [
        ServiceBusMessage(b"x" * 1024),
        ServiceBusMessage("text", application_properties={"n": 1, "s": "v"}, subject="subj", message_id="id-1"),
        ServiceBusMessage(b"y" * 300, session_id="s1", partition_key="s1", correlation_id="c", content_type="a/b"),
        ServiceBusMessage(b"", to="somewhere", reply_to="back", reply_to_session_id="rs"),
    ]


def _filled_the_public_way(batch: ServiceBusMessageBatch, messages: list[ServiceBusMessage]) -> int:
    added = 0
    for message in messages:
        try:
            batch.add_message(message)
        except MessageSizeExceededError:
            break
        added += 1
    return added


@pytest.fixture
def fresh_hooks() -> Iterator[None]:
    _hooks.reset()
    yield
    _hooks.reset()


def test_a_batch_filled_the_compiled_way_equals_the_sdks(fresh_hooks):
    ours, public, messages = _batch(), _batch(), _messages()
    assert fill_batch(ours, messages) == _filled_the_public_way(public, messages) == 4
    assert _hooks.available("batch-fill")  # the check passed: the compiled way was used
    assert ours._message == public._message
    assert [m.message_id for m in ours._messages] == [m.message_id for m in public._messages]
    assert (ours.size_in_bytes, len(ours)) == (public.size_in_bytes, len(public))
    assert ours._amqp_transport is PyamqpTransportAsync  # the sender would rebuild the batch otherwise


def test_a_full_batch_stops_where_the_sdks_would(fresh_hooks):
    messages = [ServiceBusMessage(b"z" * 1000) for _ in range(10)]
    ours, public = _batch(4000), _batch(4000)
    added = fill_batch(ours, messages)
    assert 0 < added < 10 and added == _filled_the_public_way(public, messages)
    assert ours._message == public._message and ours.size_in_bytes == public.size_in_bytes


def test_a_changed_sdk_falls_back_to_the_public_way(fresh_hooks, monkeypatch, caplog):
    # An SDK whose encoding no longer matches what the compiled encoder writes: the check must
    # notice, and the batch is filled the public way.
    def compile_stale(*args: Any) -> Callable[[Any], bytearray]:
        return lambda message: bytearray(b"\x00stale")

    monkeypatch.setattr(batch_module, "compile_encoder", compile_stale)
    ours, public, messages = _batch(), _batch(), _messages()
    with caplog.at_level(logging.WARNING, logger="sbsync.sdk"):
        assert fill_batch(ours, messages) == _filled_the_public_way(public, messages)
    assert not _hooks.available("batch-fill")
    assert ours._message == public._message and ours.size_in_bytes == public.size_in_bytes
    assert [r.message for r in caplog.records if "filling a group's batch with one compiled encoding" in r.message]


# -- the group's state machine alone (a stand-in SDK sender: no Service Bus involved) ---------


class _StandInSender:
    """Holds each send until released; can fail building a batch (as reopening a link can)."""

    def __init__(self, batch_error: Exception | None = None) -> None:
        self.release = asyncio.Event()
        self.sent: list[Any] = []
        self._batch_error = batch_error

    async def send_messages(self, payload: Any) -> None:
        await self.release.wait()
        self.sent.append(payload)

    async def create_message_batch(self) -> ServiceBusMessageBatch:
        if self._batch_error is not None:
            raise self._batch_error
        return _batch()


def test_callers_waiting_when_a_batch_cannot_be_built_get_the_error():
    async def scenario() -> list[object]:
        sdk = _StandInSender(batch_error=ServiceBusConnectionError(message="link gone"))
        group, lane = SendGroup(), asyncio.Lock()
        first = asyncio.ensure_future(group.send(sdk, ServiceBusMessage("first"), lane))
        await asyncio.sleep(0)
        assert group._inline
        queued = [asyncio.ensure_future(group.send(sdk, ServiceBusMessage(f"q{i}"), lane)) for i in range(3)]
        await asyncio.sleep(0)
        sdk.release.set()
        outcomes = await asyncio.wait_for(asyncio.gather(first, *queued, return_exceptions=True), 5)
        assert not group.busy
        return outcomes

    first, *queued = asyncio.run(scenario())
    assert first is None
    assert all(isinstance(o, ServiceBusConnectionError) for o in queued)
    assert len({id(o) for o in queued}) == 3  # each caller its own exception object


def test_a_queued_caller_cancelled_before_its_group_is_taken_is_left_out():
    async def scenario() -> list[Any]:
        sdk = _StandInSender()
        group, lane = SendGroup(), asyncio.Lock()
        first = asyncio.ensure_future(group.send(sdk, ServiceBusMessage("first"), lane))
        await asyncio.sleep(0)
        queued = {b: asyncio.ensure_future(group.send(sdk, ServiceBusMessage(b), lane)) for b in ("a", "b", "c")}
        await asyncio.sleep(0)
        queued["b"].cancel()
        sdk.release.set()
        await asyncio.wait_for(asyncio.gather(first, *queued.values(), return_exceptions=True), 5)
        assert queued["b"].cancelled() and queued["a"].result() is None and queued["c"].result() is None
        return sdk.sent

    sent = asyncio.run(scenario())
    assert len(sent) == 2 and str(sent[0]) == "first"
    assert [str(m) for m in sent[1]._messages] == ["a", "c"]  # one transfer, without "b"


def test_a_message_that_cannot_be_encoded_fails_only_its_own_caller():
    async def scenario() -> list[object]:
        sdk = _StandInSender()
        sdk.send_messages = _encoding_send(sdk.send_messages)
        group, lane = SendGroup(), asyncio.Lock()
        first = asyncio.ensure_future(group.send(sdk, ServiceBusMessage("first"), lane))
        await asyncio.sleep(0)
        bodies = [ServiceBusMessage("a"), ServiceBusMessage("bad", application_properties={"k": object()}),
                  ServiceBusMessage("c")]
        queued = [asyncio.ensure_future(group.send(sdk, m, lane)) for m in bodies]
        await asyncio.sleep(0)
        sdk.release.set()
        return await asyncio.wait_for(asyncio.gather(first, *queued, return_exceptions=True), 5)

    first, a, bad, c = asyncio.run(scenario())
    assert (first, a, c) == (None, None, None)
    assert isinstance(bad, TypeError)


def _encoding_send(send: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A stand-in send that encodes a lone message as the SDK does, failing as it would."""

    async def encoding_send(payload: Any) -> None:
        if isinstance(payload, ServiceBusMessage):
            _batch().add_message(payload)  # raises for what cannot be encoded
        await send(payload)

    return encoding_send
