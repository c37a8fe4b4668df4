"""Trace context with azure-core-tracing-opentelemetry: each caller's span is the parent of
its send span, and its message carries its caller's trace context (``Diagnostic-Id``), for one
thread and for 16 threads sharing one sender (whose sends group commit puts in one transfer).
The official sync SDK (one send per caller, under a lock) is the reference."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any, Callable

import azure.servicebus
import pytest
from azure.core.settings import settings
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import sbsync
import sbsync._sdk
from sbsync import ServiceBusMessage, ServiceBusReceiveMode
from sbsync._sdk import _hooks, _private

pytestmark = pytest.mark.timeout(60)

SEND_SPAN = "ServiceBus.send"
MESSAGE_SPAN = "ServiceBus.message"  # the SDK's span for stamping a message (its trace context)
ROUNDS = {1: 20, 16: 5}  # messages per thread: 20 and 80 messages in all


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    """Every span, kept in memory; azure-core traces only while this module runs."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    spans = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    settings.tracing_implementation = "opentelemetry"
    try:
        yield spans
    finally:
        settings.tracing_implementation.unset_value()
        spans.shutdown()


def trace_id_of(message: Any) -> int | None:
    """The trace id in a received message's ``Diagnostic-Id`` (``00-<trace>-<span>-01``)."""
    value = (message.application_properties or {}).get(b"Diagnostic-Id")
    if value is None:
        return None
    return int(value.decode().split("-")[1], 16)


def run_callers(send: Callable[[ServiceBusMessage], None], threads: int) -> dict[str, tuple[int, int]]:
    """``threads`` threads, each sending ``ROUNDS[threads]`` messages, each from inside a span
    of its own (a request's); all threads start each round together. Body -> (trace, span)."""
    tracer = trace.get_tracer(__name__)
    barrier = threading.Barrier(threads)
    callers: dict[str, tuple[int, int]] = {}
    errors: list[BaseException] = []

    def work(t: int) -> None:
        for r in range(ROUNDS[threads]):
            body = f"t{t}-r{r}"
            try:
                barrier.wait(10)
                with tracer.start_as_current_span(f"request {body}") as span:
                    context = span.get_span_context()
                    callers[body] = (context.trace_id, context.span_id)
                    send(ServiceBusMessage(body))
            except BaseException as exc:
                errors.append(exc)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    return callers


def receive_all(client: sbsync.ServiceBusClient, queue: str, count: int) -> dict[str, Any]:
    """``count`` messages by body (fewer if they do not come within 30 s)."""
    got: dict[str, Any] = {}
    deadline = time.monotonic() + 30
    with client.get_queue_receiver(queue, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE) as receiver:
        while len(got) < count and time.monotonic() < deadline:
            got.update((str(m), m) for m in receiver.receive_messages(count - len(got), max_wait_time=2))
    return got


def tally(callers: dict[str, tuple[int, int]], received: dict[str, Any], spans: list[Any]) -> dict[str, int]:
    """How many callers' messages carry their own trace id; how many callers' spans have
    exactly one send span (and one message span) as children; how many transfers were shared."""
    sends = [s for s in spans if s.name == SEND_SPAN]

    def children(name: str) -> Counter[tuple[int, int]]:
        return Counter((s.context.trace_id, s.parent.span_id) for s in spans if s.name == name and s.parent)

    send_children, message_children = children(SEND_SPAN), children(MESSAGE_SPAN)
    return {
        "messages": len(received),
        "own trace id": sum(
            body in received and trace_id_of(received[body]) == tid for body, (tid, _) in callers.items()
        ),
        "send span in own trace": sum(send_children[caller] == 1 for caller in callers.values()),
        "message span in own trace": sum(message_children[caller] == 1 for caller in callers.values()),
        "grouped transfers": sum(
            (s.attributes or {}).get("messaging.batch.message_count", 1) > 1 for s in sends
        ),
    }


@pytest.mark.parametrize("threads", [1, 16])
def test_each_caller_traces_its_own_send(
    threads: int, exporter: InMemorySpanExporter, emulator: Any, client: sbsync.ServiceBusClient, queue: str
) -> None:
    total = threads * ROUNDS[threads]
    conn_str = emulator.connection_string
    results = {}

    # The reference: the official sync SDK, one shared sender used under a lock.
    with azure.servicebus.ServiceBusClient.from_connection_string(conn_str) as sdk_client:
        with sdk_client.get_queue_sender(queue) as sdk_sender:
            lock = threading.Lock()

            def sdk_send(message: ServiceBusMessage) -> None:
                with lock:
                    sdk_sender.send_messages(message)

            exporter.clear()
            callers = run_callers(sdk_send, threads)
            spans = list(exporter.get_finished_spans())
    results["sync SDK"] = tally(callers, receive_all(client, queue, total), spans)

    # sbsync: one sender shared by every thread, no lock; sends slowed so that they pile up.
    with client.get_queue_sender(queue) as sender:
        sender.send_messages(ServiceBusMessage("warm-up"))
        receive_all(client, queue, 1)
        exporter.clear()
        emulator.faults.delay(0.02, operation="send")
        try:
            callers = run_callers(sender.send_messages, threads)
        finally:
            emulator.faults.delay(0, operation="send")
        spans = list(exporter.get_finished_spans())
    results["sbsync"] = tally(callers, receive_all(client, queue, total), spans)

    print(f"\n{threads} thread(s), {total} messages:")
    for name, row in results.items():
        print(f"  {name:9} {row}")
    for row in results.values():
        assert row["messages"] == row["own trace id"] == row["send span in own trace"] == total, results
        assert row["message span in own trace"] == total, results
    assert results["sync SDK"]["grouped transfers"] == 0
    if threads > 1:
        assert results["sbsync"]["grouped transfers"] > 0, "group commit never engaged: the test proves nothing"


@pytest.fixture
def fresh_hooks() -> Iterator[None]:
    _hooks.reset()
    yield
    _hooks.reset()


def test_without_the_sdks_tracing_helpers_a_caller_gets_no_span_of_its_own(
    exporter: InMemorySpanExporter, fresh_hooks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback of hook ``trace-grouped-sends`` (its WARNING: tests/sdk/test_hooks.py)."""
    monkeypatch.setattr(_private, "sdk_tracing", None)
    exporter.clear()
    sbsync._sdk.record_send_span(object(), ServiceBusMessage("x"), 0, None)
    assert [s for s in exporter.get_finished_spans() if s.name == SEND_SPAN] == []


def test_a_callers_send_span_records_the_shared_transfers_failure(exporter: InMemorySpanExporter) -> None:
    from azure.servicebus.aio import ServiceBusClient as AsyncClient
    from opentelemetry.trace import StatusCode

    conn_str = "Endpoint=sb://127.0.0.1:1;SharedAccessKeyName=k;SharedAccessKey=v;UseDevelopmentEmulator=true"
    sdk_sender = AsyncClient.from_connection_string(conn_str).get_queue_sender("orders")  # no I/O
    exporter.clear()
    with trace.get_tracer(__name__).start_as_current_span("request") as request:
        started = sbsync._sdk.now_ns()
        sbsync._sdk.record_send_span(sdk_sender, ServiceBusMessage("x"), started, ValueError("boom"))
    (send,) = [s for s in exporter.get_finished_spans() if s.name == SEND_SPAN]
    assert send.parent is not None and send.parent.span_id == request.get_span_context().span_id
    assert send.start_time == started
    assert send.status.status_code is StatusCode.ERROR
    assert (send.attributes or {}).get("messaging.operation") == "publish"
