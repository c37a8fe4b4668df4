"""Bad input, as a table: each case gets its own exception type and a message that says what
to do, and the client that saw it keeps working."""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable

import pytest

from sbsync import ServiceBusClient, ServiceBusMessage, ServiceBusReceiveMode
from sbsync.emulator import Emulator
from sbsync.exceptions import (
    ClientClosedError,
    LoopThreadError,
    MessagingEntityNotFoundError,
    ServiceBusAuthenticationError,
)
from sbsync.processor import SessionProcessor

pytestmark = pytest.mark.timeout(60)


@dataclass
class Env:
    """One client and its links, opened once for the whole table (links cost ~1 s each)."""

    emulator: Emulator
    client: ServiceBusClient
    sender: Any
    receiver: Any
    session_receiver: Any
    probe_sender: Any
    probe_receiver: Any


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with Emulator(queues=["q", "probe"], session_queues=["sq"], lock_duration=30) as emu:
        with ServiceBusClient.from_connection_string(emu.connection_string, retry_backoff_factor=0.05) as client:
            with client.get_queue_sender("q") as sender, \
                    client.get_queue_receiver("q", max_wait_time=1) as receiver, \
                    client.get_queue_receiver("sq", session_id="bad-input", max_wait_time=1) as session_receiver, \
                    client.get_queue_sender("probe") as probe_sender, \
                    client.get_queue_receiver("probe", max_wait_time=5,
                                              receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE) as probe:
                yield Env(emu, client, sender, receiver, session_receiver, probe_sender, probe)


def conn_str_with(emu: Emulator, **changes: str) -> str:
    parts = dict(p.split("=", 1) for p in emu.connection_string.split(";") if p)
    parts.update(changes)
    return ";".join(f"{k}={v}" for k, v in parts.items() if v)


def one_shot(env: Env, conn_str: str, action: Callable[[ServiceBusClient], Any]) -> Any:
    """Open a client from ``conn_str`` (no retries), run ``action`` on it, close it."""
    with ServiceBusClient.from_connection_string(conn_str, retry_total=0) as client:
        return action(client)


def closed_sender(env: Env) -> Any:
    sender = env.client.get_queue_sender("q")
    sender.close()
    return sender.send_messages(ServiceBusMessage("after close"))


def closed_receiver(env: Env) -> Any:
    receiver = env.client.get_queue_receiver("q")
    receiver.close()
    return receiver.receive_messages(1, max_wait_time=1)


def closed_client(env: Env) -> Any:
    # The client itself reopens on its next use (as the SDK's does); what it handed out before
    # the close stays closed.
    client = ServiceBusClient.from_connection_string(env.emulator.connection_string)
    sender = client.get_queue_sender("q")
    client.close()
    return sender.send_messages(ServiceBusMessage("after the client closed"))


def from_loop_thread(env: Env) -> Any:
    sender = env.client.get_queue_sender("q")
    try:
        async def blocking_call_inside_the_loop() -> None:
            sender.send_messages(ServiceBusMessage("from the loop"))

        return env.client._portal.call(blocking_call_inside_the_loop)  # what a loop callback would do
    finally:
        sender.close()


def session_call(env: Env, call: Callable[[Any], Any]) -> Any:
    return call(env.session_receiver)


def plain_receiver_call(env: Env, call: Callable[[Any], Any]) -> Any:
    return call(env.receiver)


def sender_call(env: Env, call: Callable[[Any], Any]) -> Any:
    return call(env.sender)


def unknown_entity(env: Env) -> Any:
    with env.client.get_queue_sender("nope") as sender:
        return sender.send_messages(ServiceBusMessage("x"))


def processor(**kwargs: Any) -> Callable[[Env], Any]:
    def make(env: Env) -> Any:
        return SessionProcessor(env.client, queue_name="sq", handler=lambda m, c: None, **kwargs)

    return make


M = ServiceBusMessage

#: (id, call, exception type, regex the message must match: what is wrong and what to do)
CASES: list[tuple[str, Callable[[Env], Any], type[BaseException], str]] = [
    # connection strings
    ("conn-str-garbage", lambda e: ServiceBusClient.from_connection_string("not a connection string"),
     ValueError, r"malformed"),
    ("conn-str-empty", lambda e: ServiceBusClient.from_connection_string(""), ValueError, r"blank"),
    ("conn-str-no-key", lambda e: ServiceBusClient.from_connection_string(
        conn_str_with(e.emulator, SharedAccessKey="")), ValueError, r"SharedAccessKey"),
    ("conn-str-no-key-name", lambda e: ServiceBusClient.from_connection_string(
        conn_str_with(e.emulator, SharedAccessKeyName="")), ValueError, r"SharedAccessKeyName"),
    ("conn-str-only-endpoint", lambda e: ServiceBusClient.from_connection_string("Endpoint=sb://h.example"),
     ValueError, r"SharedAccessKey"),
    ("conn-str-none", lambda e: ServiceBusClient.from_connection_string(None),  # type: ignore[arg-type]
     TypeError, r"conn_str.*str"),
    ("conn-str-bytes", lambda e: ServiceBusClient.from_connection_string(b"Endpoint=sb://x"),  # type: ignore[arg-type]
     TypeError, r"conn_str.*str"),
    ("wrong-key", lambda e: one_shot(e, conn_str_with(e.emulator, SharedAccessKey="d3Jvbmc="),
                                     lambda c: c.get_queue_sender("q").send_messages(M("x"))),
     ServiceBusAuthenticationError, r"(?i)auth|token|unauthori"),
    ("unknown-entity", unknown_entity, MessagingEntityNotFoundError, r"nope.*could not be found"),
    # messages and state of the wrong type
    ("send-int", lambda e: sender_call(e, lambda s: s.send_messages(123)), TypeError, r"ServiceBusMessage"),
    ("send-str", lambda e: sender_call(e, lambda s: s.send_messages("text")), TypeError, r"ServiceBusMessage"),
    ("send-list-of-none", lambda e: sender_call(e, lambda s: s.send_messages([None])), TypeError,
     r"ServiceBusMessage"),
    ("schedule-time-str", lambda e: sender_call(e, lambda s: s.schedule_messages(M("x"), "tomorrow")),
     TypeError, r"schedule_time_utc must be datetime"),
    ("set-state-int", lambda e: session_call(e, lambda r: r.session.set_state(123)), TypeError,
     r"state must be str or bytes"),
    ("set-state-dict", lambda e: session_call(e, lambda r: r.session.set_state({"a": 1})), TypeError,
     r"state must be str or bytes"),
    ("complete-str", lambda e: plain_receiver_call(e, lambda r: r.complete_message("lock-token")), TypeError,
     r"ServiceBusReceivedMessage"),
    ("renew-str", lambda e: plain_receiver_call(e, lambda r: r.renew_message_lock("lock-token")), TypeError,
     r"ServiceBusReceivedMessage"),
    # non-positive timeouts and counts
    ("receive-count-0", lambda e: plain_receiver_call(e, lambda r: r.receive_messages(0)), ValueError,
     r"max_message_count must be greater than 0"),
    ("receive-count-neg", lambda e: plain_receiver_call(e, lambda r: r.receive_messages(-5)), ValueError,
     r"max_message_count must be greater than 0"),
    ("receive-wait-0", lambda e: plain_receiver_call(e, lambda r: r.receive_messages(1, max_wait_time=0)),
     ValueError, r"max_wait_time must be greater than 0"),
    ("receive-wait-neg", lambda e: plain_receiver_call(e, lambda r: r.receive_messages(1, max_wait_time=-1)),
     ValueError, r"max_wait_time must be greater than 0"),
    ("receiver-wait-neg", lambda e: e.client.get_queue_receiver("q", max_wait_time=-1), ValueError,
     r"max_wait_time must be greater than 0"),
    ("timeout-0", lambda e: sender_call(e, lambda s: s.send_messages(M("x"), timeout=0)), ValueError,
     r"timeout must be greater than 0"),
    ("timeout-neg", lambda e: session_call(e, lambda r: r.session.get_state(timeout=-1)), ValueError,
     r"timeout must be greater than 0"),
    ("timeout-str", lambda e: plain_receiver_call(e, lambda r: r.peek_messages(1, timeout="5")), TypeError,
     r"timeout must be a number"),
    ("peek-count-0", lambda e: plain_receiver_call(e, lambda r: r.peek_messages(0)), ValueError,
     r"max_message_count must be greater than 0"),
    ("batch-size-0", lambda e: sender_call(e, lambda s: s.create_message_batch(0)), ValueError,
     r"max_size_in_bytes must be greater than 0"),
    ("retry-total-neg", lambda e: ServiceBusClient.from_connection_string(e.emulator.connection_string,
                                                                          retry_total=-1),
     ValueError, r"retry_total"),
    ("processor-sessions-0", processor(max_concurrent_sessions=0), ValueError, r"max_concurrent_sessions"),
    ("processor-idle-0", processor(session_idle_timeout=0), ValueError, r"session_idle_timeout"),
    ("processor-renewal-neg", processor(max_lock_renewal_duration=-1), ValueError, r"max_lock_renewal_duration"),
    # calls after close, and from the loop thread
    ("sender-after-close", closed_sender, ClientClosedError, r"closed.*(?i:new|create)"),
    ("receiver-after-close", closed_receiver, ClientClosedError, r"closed.*(?i:new|create)"),
    ("client-after-close", closed_client, ClientClosedError, r"closed.*(?i:new|create)"),
    ("from-loop-thread", from_loop_thread, LoopThreadError, r"own event-loop thread.*your own threads"),
]


def assert_usable(env: Env) -> None:
    """A round trip through the shared client: send, receive, complete."""
    stamp = datetime.datetime.now().isoformat()
    env.probe_sender.send_messages(ServiceBusMessage(stamp))
    assert stamp in [str(m) for m in env.probe_receiver.receive_messages(1)]
    env.session_receiver.session.renew_lock()  # the session links work too (and stay ours)


@pytest.mark.parametrize("call, error, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(env: Env, call: Callable[[Env], Any], error: type[BaseException], message: str) -> None:
    with pytest.raises(error) as info:
        call(env)
    assert type(info.value) is error or issubclass(type(info.value), error)
    assert re.search(message, str(info.value)), f"unhelpful message: {info.value}"
    assert_usable(env)
