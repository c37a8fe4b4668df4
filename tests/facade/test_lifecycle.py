"""Timeouts, closing, the deadlock guard and credentials."""

from __future__ import annotations

import base64
import contextvars
import gc
import hashlib
import hmac
import logging
import threading
import time
from urllib.parse import quote_plus

import pytest
from azure.core.credentials import AccessToken, AzureNamedKeyCredential, AzureSasCredential

import sbsync
from sbsync import ServiceBusMessage
from sbsync.exceptions import ClientClosedError, LoopThreadError, OperationTimeoutError

pytestmark = pytest.mark.timeout(60)


def _key_parts(conn_str: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in conn_str.split(";") if part)


def test_timeout_cancels_a_blocked_receive_and_the_receiver_stays_usable(client, queue):
    with client.get_queue_receiver(queue) as receiver:
        start = time.monotonic()
        with pytest.raises(OperationTimeoutError):
            receiver.receive_messages(max_wait_time=30, timeout=0.5)
        assert time.monotonic() - start < 2.5
        with client.get_queue_sender(queue) as sender:
            sender.send_messages(ServiceBusMessage("after-timeout"))
        (message,) = receiver.receive_messages(max_wait_time=5)
        assert str(message) == "after-timeout"
        receiver.complete_message(message)


def test_deadlock_guard(client, queue):
    sender = client.get_queue_sender(queue)

    async def misuse():
        sender.send_messages(ServiceBusMessage("from the loop thread"))

    future = client._portal.submit(misuse)
    with pytest.raises(LoopThreadError, match="event-loop thread"):
        future.result(10)


def test_close_is_idempotent_and_handles_after_close_fail_clearly(conn_str, queue):
    client = sbsync.ServiceBusClient.from_connection_string(conn_str)
    sender = client.get_queue_sender(queue)
    receiver = client.get_queue_receiver(queue, max_wait_time=1)
    sender.send_messages(ServiceBusMessage("x"))
    loop_thread = client._portal._thread
    assert loop_thread is not None and loop_thread.is_alive()

    receiver.close()
    receiver.close()
    with pytest.raises(ClientClosedError, match="receiver is closed"):
        receiver.receive_messages()
    sender.send_messages(ServiceBusMessage("the client still works"))

    start = time.monotonic()
    client.close()
    client.close()
    assert time.monotonic() - start < 5
    assert not loop_thread.is_alive()
    # Handles from before the close stay closed, with a ValueError as the SDK's raise.
    for call in (
        lambda: sender.send_messages(ServiceBusMessage("y")),
        lambda: receiver.receive_messages(),
    ):
        with pytest.raises(ClientClosedError, match="is closed") as raised:
            call()
        assert isinstance(raised.value, ValueError)
    sender.close()  # closing a handle of a closed client is fine
    assert "closed" in repr(client)


def test_context_managers_close(conn_str, queue):
    with sbsync.ServiceBusClient.from_connection_string(conn_str) as client:
        with client.get_queue_sender(queue) as sender:
            sender.send_messages(ServiceBusMessage("cm"))
        with pytest.raises(ClientClosedError):
            sender.send_messages(ServiceBusMessage("after exit"))
        with client.get_queue_receiver(queue, max_wait_time=2) as receiver:
            (message,) = receiver.receive_messages(max_wait_time=5)
            receiver.complete_message(message)
        thread = client._portal._thread
    assert thread is not None and not thread.is_alive()


class SasTokenCredential:
    """A real synchronous TokenCredential: signs a namespace-wide SAS token on each call."""

    def __init__(self, namespace: str, key_name: str, key: str) -> None:
        self._uri = f"sb://{namespace}/"
        self._key_name = key_name
        self._key = key
        self.threads: list[str] = []

    def get_token(self, *scopes: str, **kwargs) -> AccessToken:
        self.threads.append(threading.current_thread().name)
        expiry = int(time.time()) + 3600
        resource = quote_plus(self._uri)
        signature = base64.b64encode(
            hmac.new(self._key.encode(), f"{resource}\n{expiry}".encode(), hashlib.sha256).digest()
        ).decode()
        token = f"SharedAccessSignature sr={resource}&sig={quote_plus(signature)}&se={expiry}&skn={self._key_name}"
        return AccessToken(token, expiry)


def test_sync_token_credential_runs_off_the_loop_thread(conn_str, queue):
    parts = _key_parts(conn_str)
    namespace = parts["Endpoint"].split("://", 1)[1]
    credential = SasTokenCredential(namespace, parts["SharedAccessKeyName"], parts["SharedAccessKey"])
    with sbsync.ServiceBusClient(namespace, credential, use_tls=False) as client:
        with client.get_queue_sender(queue) as sender:
            sender.send_messages(ServiceBusMessage("token"))
        with client.get_queue_receiver(queue, max_wait_time=2) as receiver:
            (message,) = receiver.receive_messages(max_wait_time=5)
            receiver.complete_message(message)
    assert credential.threads, "get_token was never called"
    assert all("executor" in name for name in credential.threads), credential.threads


@pytest.mark.parametrize("kind", ["named-key", "sas"])
def test_named_key_and_sas_credentials_pass_through(conn_str, queue, kind):
    parts = _key_parts(conn_str)
    namespace = parts["Endpoint"].split("://", 1)[1]
    if kind == "named-key":
        credential = AzureNamedKeyCredential(parts["SharedAccessKeyName"], parts["SharedAccessKey"])
    else:
        signer = SasTokenCredential(namespace, parts["SharedAccessKeyName"], parts["SharedAccessKey"])
        credential = AzureSasCredential(signer.get_token().token)
    with sbsync.ServiceBusClient(namespace, credential, use_tls=False) as client:
        with client.get_queue_sender(queue) as sender:
            sender.send_messages(ServiceBusMessage(kind))
        with client.get_queue_receiver(queue, max_wait_time=2) as receiver:
            assert [str(m) for m in receiver.peek_messages(1)] == [kind]


def test_one_loop_thread_per_client(client, queue):
    before = {t.name for t in threading.enumerate() if t.name.startswith("sbsync-loop")}
    handles = [client.get_queue_sender(queue) for _ in range(5)] + [client.get_queue_receiver(queue) for _ in range(5)]
    after = {t.name for t in threading.enumerate() if t.name.startswith("sbsync-loop")}
    assert after == before
    for handle in handles:
        handle.close()


def test_a_sender_keeps_its_client_alive_and_a_dropped_client_stops_its_loop(conn_str, queue):
    sender = sbsync.ServiceBusClient.from_connection_string(conn_str).get_queue_sender(queue)
    gc.collect()
    sender.send_messages(ServiceBusMessage("client object already dropped"))
    thread = sender._portal._thread
    del sender
    gc.collect()
    assert thread is not None
    thread.join(5)
    assert not thread.is_alive()


REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("REQUEST_ID", default=None)


def test_contextvars_reach_the_sdk_on_the_loop_thread(client, queue):
    seen: list[tuple[str, str | None]] = []

    class Capture(logging.Handler):
        def emit(self, record):
            seen.append((threading.current_thread().name, REQUEST_ID.get()))

    receiver = client.get_queue_receiver(queue)
    logger = logging.getLogger("azure.servicebus")
    handler, level = Capture(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    token = REQUEST_ID.set("req-7")
    try:
        receiver.peek_messages(1)
    finally:
        REQUEST_ID.reset(token)
        logger.removeHandler(handler)
        logger.setLevel(level)
        receiver.close()
    on_loop = [rid for name, rid in seen if name.startswith("sbsync-loop")]
    assert on_loop and set(on_loop) == {"req-7"}


def test_a_closed_sender_leaves_its_link_warm_for_the_next(conn_str, queue):
    with sbsync.ServiceBusClient.from_connection_string(conn_str) as client:
        with client.get_queue_sender(queue) as first:
            first.send_messages(ServiceBusMessage("1"))
            identifier = first.client_identifier
        with pytest.raises(ClientClosedError):
            first.send_messages(ServiceBusMessage("closed is closed"))
        with client.get_queue_sender(queue) as second:
            second.send_messages(ServiceBusMessage("2"))
            assert second.client_identifier == identifier  # the same open link, taken over
        with client.get_queue_sender(queue, client_identifier="other-args") as third:
            assert third.client_identifier == "other-args"  # other arguments, other link
        with client.get_queue_receiver(queue, max_wait_time=1) as receiver:
            assert sorted(str(m) for m in receiver.peek_messages(5)) == ["1", "2"]
        parked = client._warm
    assert parked is not None and parked.drain() == []  # client.close() closed the parked links


def test_successful_calls_skip_the_retry_machinery(client, monkeypatch):
    # Building the retry machinery costs more than the thread hop: only a failure engages it.
    import sbsync._handle as handle_module

    engaged = []
    real = handle_module.run_with_retry

    def counting(*args, **kwargs):
        engaged.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(handle_module, "run_with_retry", counting)

    async def ok(_sdk):
        return 1

    async def fails(_sdk):
        raise KeyError("not transient")

    assert [client._run("probe", ok) for _ in range(5)] == [1] * 5
    assert engaged == []
    with pytest.raises(KeyError):
        client._run("probe", fails)
    assert engaged == ["probe"]
