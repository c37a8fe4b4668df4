"""``sbsync consume``: run a command once per message, settle by its exit status."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable

from azure.servicebus import NEXT_AVAILABLE_SESSION, ServiceBusReceivedMessage
from azure.servicebus.exceptions import (
    OperationTimeoutError,
    ServiceBusError,
    SessionCannotBeLockedError,
)

from ._cli_args import CliError, connection_string, entity
from ._renewer import AutoLockRenewer
from .client import ServiceBusClient

_log = logging.getLogger(__name__)

# How long a worker blocks in a receive before it looks at the stop flag again.
_POLL = 1.0


def message_body(message: ServiceBusReceivedMessage) -> bytes:
    """The body as bytes: data sections joined, a value or sequence body as JSON-ish text."""
    body = message.body
    if isinstance(body, (bytes, bytearray)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    try:
        return b"".join(body)
    except TypeError:
        return str(message).encode()


def message_environment(message: ServiceBusReceivedMessage) -> dict[str, str]:
    """SBSYNC_* variables describing ``message`` for the command."""
    def text(value: Any) -> str:
        if value is None:
            return ""
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

    env = {
        "SBSYNC_MESSAGE_ID": text(message.message_id),
        "SBSYNC_SESSION_ID": text(message.session_id),
        "SBSYNC_SEQUENCE_NUMBER": text(message.sequence_number),
        "SBSYNC_DELIVERY_COUNT": text(message.delivery_count),
        "SBSYNC_ENQUEUED_TIME_UTC": text(message.enqueued_time_utc),
        "SBSYNC_CORRELATION_ID": text(message.correlation_id),
        "SBSYNC_SUBJECT": text(message.subject),
        "SBSYNC_CONTENT_TYPE": text(message.content_type),
        "SBSYNC_REPLY_TO": text(message.reply_to),
    }
    properties = {text(k): text(v) for k, v in (message.application_properties or {}).items()}
    env["SBSYNC_APPLICATION_PROPERTIES"] = json.dumps(properties)
    for key, value in properties.items():
        env["SBSYNC_PROPERTY_" + re.sub(r"[^A-Za-z0-9]", "_", key).upper()] = value
    return env


class _Consumer:
    """The shared state of one ``sbsync consume`` run."""

    def __init__(self, args: argparse.Namespace, client: ServiceBusClient) -> None:
        self.args = args
        self.client = client
        self.stop = threading.Event()
        self.renewer = AutoLockRenewer(max_lock_renewal_duration=24 * 3600)
        self.lock = threading.Lock()
        self.running: set[subprocess.Popen[bytes]] = set()
        self.taken = 0
        self.succeeded = 0
        self.failed = 0
        self.last_message = time.monotonic()

    # -- budget and idleness -----------------------------------------------------------------

    def take_slot(self) -> bool:
        """Reserve one message of --max-messages; False when the budget is spent."""
        with self.lock:
            if self.args.max_messages is not None and self.taken >= self.args.max_messages:
                return False
            self.taken += 1
            return True

    def give_back_slot(self) -> None:
        with self.lock:
            self.taken -= 1

    def idle_too_long(self) -> bool:
        limit = self.args.max_wait_time
        return limit is not None and time.monotonic() - self.last_message >= limit

    def should_stop(self) -> bool:
        if self.stop.is_set() or self.idle_too_long():
            return True
        with self.lock:
            return self.args.max_messages is not None and self.taken >= self.args.max_messages

    # -- receiving ---------------------------------------------------------------------------

    def receiver(self, session_id: Any = None) -> Any:
        name, subscription = entity(self.args)
        kwargs: dict[str, Any] = {"max_wait_time": _POLL}
        if session_id is not None:
            kwargs["session_id"] = session_id
        if subscription is None:
            return self.client.get_queue_receiver(name, **kwargs)
        return self.client.get_subscription_receiver(name, subscription, **kwargs)

    def drain(self, receiver: Any, *, until_idle: float | None = None) -> None:
        """Process messages from ``receiver`` one at a time until told to stop.

        With ``until_idle`` (seconds), return once no message came for that long: a worker
        serving NEXT_AVAILABLE_SESSION then releases its session and takes another.
        """
        idle_since = time.monotonic()
        session_registered = False
        while not self.should_stop():
            if not self.take_slot():
                return
            messages = receiver.receive_messages(max_message_count=1, max_wait_time=_POLL)
            if not messages:
                self.give_back_slot()
                if until_idle is not None and time.monotonic() - idle_since >= until_idle:
                    return
                continue
            idle_since = self.last_message = time.monotonic()
            if receiver.session is not None and not session_registered:
                # The session is taken by the first receive: keep it from then on.
                self.renewer.register(receiver, receiver.session)
                session_registered = True
            self.run_one(receiver, messages[0])

    def run_one(self, receiver: Any, message: ServiceBusReceivedMessage) -> None:
        if receiver.session is None:  # a session's messages are covered by the session lock
            self.renewer.register(receiver, message)
        env = dict(os.environ)
        env.update(message_environment(message))
        proc = subprocess.Popen(self.args.exec_cmd, shell=True, stdin=subprocess.PIPE, env=env)
        with self.lock:
            self.running.add(proc)
        try:
            proc.communicate(message_body(message))
        finally:
            with self.lock:
                self.running.discard(proc)
        if proc.returncode == 0:
            receiver.complete_message(message)
            with self.lock:
                self.succeeded += 1
            return
        with self.lock:
            self.failed += 1
        if proc.returncode < 0 or not self.args.dead_letter_on_failure:
            # Killed after the grace period, or a plain failure: let the broker redeliver.
            _log.warning("command exited with %s: abandoning message %s", proc.returncode, message.message_id)
            receiver.abandon_message(message)
        else:
            _log.warning("command exited with %s: dead-lettering message %s", proc.returncode, message.message_id)
            receiver.dead_letter_message(
                message,
                reason="CommandFailed",
                error_description=f"{self.args.exec_cmd!r} exited with {proc.returncode}",
            )

    # -- workers -----------------------------------------------------------------------------

    def shared_receiver_worker(self, receiver: Any) -> None:
        self.guard(self.drain, receiver)

    def next_session_worker(self) -> None:
        while not self.should_stop():
            receiver = self.receiver(NEXT_AVAILABLE_SESSION)
            try:
                with receiver:
                    self.drain(receiver, until_idle=_POLL)
            except (OperationTimeoutError, SessionCannotBeLockedError):
                continue  # no session free right now
            except ServiceBusError as exc:
                self.report(exc)

    def guard(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except ServiceBusError as exc:
            self.report(exc)

    def report(self, exc: BaseException) -> None:
        _log.error("consume: %s: %s", type(exc).__name__, exc)
        with self.lock:
            self.failed += 1
        self.stop.set()

    def terminate_running(self) -> None:
        with self.lock:
            running = list(self.running)
        for proc in running:
            proc.terminate()


def main_consume(args: argparse.Namespace) -> int:
    """Entry point of ``sbsync consume``; returns the exit status."""
    entity(args)  # validate the entity before connecting
    if args.session and args.concurrency > 1:
        raise CliError("--session keeps one session in order: --concurrency must be 1")
    conn = connection_string(args)
    received_signal: list[int] = []
    with ServiceBusClient.from_connection_string(conn) as client:
        consumer = _Consumer(args, client)

        def on_signal(signum: int, _frame: Any) -> None:
            received_signal.append(signum)
            consumer.stop.set()

        previous = {
            sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            _run_workers(consumer, args)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            consumer.renewer.close()
    print(
        f"consumed {consumer.succeeded + consumer.failed} message(s): "
        f"{consumer.succeeded} succeeded, {consumer.failed} failed",
        file=sys.stderr,
    )
    if received_signal:
        return 128 + received_signal[0]
    return 1 if consumer.failed else 0


def _run_workers(consumer: _Consumer, args: argparse.Namespace) -> None:
    shared = None
    work: Callable[[], None]
    if args.next_session:
        work = consumer.next_session_worker
    else:
        # One receiver shared by every worker thread: sbsync receivers are thread-safe.
        shared = consumer.receiver(args.session)
        work = functools.partial(consumer.shared_receiver_worker, shared)
    threads = [
        threading.Thread(target=work, name=f"sbsync-consume-{i}", daemon=True)
        for i in range(args.concurrency)
    ]
    for thread in threads:
        thread.start()
    try:
        while any(t.is_alive() for t in threads) and not consumer.stop.is_set():
            consumer.stop.wait(0.2)
        # Stopping: running commands get the grace period, then are terminated.
        deadline = time.monotonic() + args.grace_period
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        consumer.terminate_running()
        for thread in threads:
            thread.join(10.0)
    finally:
        if shared is not None:
            shared.close()
