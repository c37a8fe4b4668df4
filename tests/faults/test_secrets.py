"""No SharedAccessKey or SAS signature in any log record (DEBUG, every logger), in repr()/str()
of sbsync's objects, or in an exception message."""

from __future__ import annotations

import base64
import logging
import re
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from sbsync import AutoLockRenewer, ServiceBusClient, ServiceBusMessage
from sbsync.emulator import Emulator
from sbsync.exceptions import ServiceBusError
from sbsync.processor import SessionProcessor

from .conftest import send_session

pytestmark = pytest.mark.timeout(90)

KEY = base64.b64encode(b"faults-suite-very-secret-key-0123456789").decode()
KEY_NAME = "FaultsSuiteKeyName"
#: A SAS token's signature field (sig=<url-encoded base64>) or a whole token.
SAS_PATTERNS = [re.compile(r"sig=[A-Za-z0-9%+/=]{20,}"), re.compile(r"SharedAccessSignature\s+sr=")]


def secret_hits(text: str) -> list[str]:
    hits = [KEY] if KEY in text else []
    if urllib.parse.quote_plus(KEY) in text or urllib.parse.quote(KEY, safe="") in text:
        hits.append("url-encoded key")
    hits += [p.pattern for p in SAS_PATTERNS if p.search(text)]
    return hits


class Everything(logging.Handler):
    """Formats every record, arguments and traceback included, as a user's handler would."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[tuple[str, str]] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        extra = " ".join(f"{k}={v!r}" for k, v in vars(record).items() if k not in logging.LogRecord(
            "", 0, "", 0, "", (), None).__dict__ and k != "message")
        self.texts.append((record.name, text + " " + extra))


@pytest.fixture
def captured() -> Iterator[Everything]:
    handler = Everything()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(queues=["q"], session_queues=["sq"], key_name=KEY_NAME, key=KEY, lock_duration=5) as emu:
        yield emu


def exercise(emu: Emulator, **client_kwargs: Any) -> tuple[list[Any], list[BaseException]]:
    """Drive every kind of object and failure; return the objects and exceptions met."""
    objects: list[Any] = []
    errors: list[BaseException] = []
    with ServiceBusClient.from_connection_string(emu.connection_string, retry_backoff_factor=0.05,
                                                 **client_kwargs) as client:
        objects.append(client)
        send_session(client, "sq", "s1", 2)
        renewer = AutoLockRenewer(max_lock_renewal_duration=10)
        objects.append(renewer)
        with client.get_queue_sender("q") as sender, \
                client.get_queue_receiver("q", max_wait_time=3, auto_lock_renewer=renewer) as receiver:
            objects += [sender, receiver]
            sender.send_messages(ServiceBusMessage("m"))
            messages = receiver.receive_messages(1)
            objects += messages
            emu.faults.drop_connections()  # reconnects put a new token
            emu.faults.fail_next(1, operation="send")
            sender.send_messages(ServiceBusMessage("after drop"))
            for message in messages + receiver.receive_messages(2):
                try:
                    receiver.complete_message(message)
                except ServiceBusError as exc:
                    errors.append(exc)
        with client.get_queue_receiver("sq", session_id="s1", max_wait_time=3) as session_receiver:
            objects += [session_receiver, session_receiver.session]
            session_receiver.session.set_state(b"state")
            session_receiver.session.get_state()
        processor = SessionProcessor(client, queue_name="sq", handler=lambda m, c: None, max_concurrent_sessions=1)
        objects += [processor, processor.stats]
        renewer.close()
    wrong = emu.connection_string.replace(KEY, base64.b64encode(b"wrong-key-wrong-key").decode())
    with ServiceBusClient.from_connection_string(wrong, retry_total=0) as bad:
        objects.append(bad)
        try:
            bad.get_queue_sender("q").send_messages(ServiceBusMessage("x"))
        except ServiceBusError as exc:
            errors.append(exc)
    try:
        ServiceBusClient.from_connection_string(emu.connection_string.replace("Endpoint=", "Endpt="))
    except ValueError as exc:
        errors.append(exc)
    try:
        sender.send_messages(ServiceBusMessage("closed"))
    except ValueError as exc:
        errors.append(exc)
    return objects, errors


def check(captured: Everything, objects: list[Any], errors: list[BaseException]) -> None:
    assert captured.texts, "nothing was logged: the capture is not working"
    leaks = [(name, text[:300]) for name, text in captured.texts if secret_hits(text)]
    assert leaks == [], f"secrets in {len(leaks)} log records, e.g. {leaks[:3]}"
    for obj in objects:
        for text in (repr(obj), str(obj)):
            assert secret_hits(text) == [], f"secret in repr/str of {type(obj).__name__}"
    assert len(errors) >= 3
    for exc in errors:
        for text in (str(exc), repr(exc), str(getattr(exc, "inner_exception", ""))):
            assert secret_hits(text) == [], f"secret in {type(exc).__name__}: {text[:200]}"


def test_no_secrets_anywhere(emulator: Emulator, captured: Everything) -> None:
    objects, errors = exercise(emulator)
    check(captured, objects, errors)


def test_no_secrets_with_sdk_network_tracing(emulator: Emulator, captured: Everything) -> None:
    """``logging_enable=True`` turns on the SDK's AMQP frame trace, put-token frames included."""
    objects, errors = exercise(emulator, logging_enable=True)
    check(captured, objects, errors)


def test_the_check_itself_finds_a_secret() -> None:
    assert secret_hits(f"Endpoint=sb://x;SharedAccessKey={KEY}")
    assert secret_hits("SharedAccessSignature sr=sb%3a%2f%2fh&sig=abcdefghijklmnopqrstuvwxyz0123%3d&se=1")
