"""Error cases the SDK must see as its own exception types: auth, missing entities, size."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote_plus

import pytest
from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
from azure.servicebus import ServiceBusMessage, ServiceBusReceiveMode
from azure.servicebus.exceptions import (
    MessageSizeExceededError,
    MessagingEntityNotFoundError,
    ServiceBusAuthenticationError,
)

from sbsync.emulator import DEFAULT_KEY, DEFAULT_KEY_NAME, Emulator

from .conftest import Sdk, receive

pytestmark = pytest.mark.timeout(60)

MAX_SIZE = 64 * 1024


@pytest.fixture(scope="module")
def strict() -> Iterator[Emulator]:
    """An emulator that creates nothing on demand and takes small messages only."""
    emulator = Emulator(
        port=0,
        queues=["known"],
        topics=["news"],
        subscriptions=["news/all"],
        max_message_size=MAX_SIZE,
    )
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


def sas_token(
    resource: str, expiry: int, key_name: str = DEFAULT_KEY_NAME, key: str = DEFAULT_KEY
) -> str:
    """A Shared Access Signature the way Service Bus defines it (independent of the SDK)."""
    to_sign = f"{quote_plus(resource)}\n{expiry}".encode()
    sig = base64.b64encode(hmac.new(key.encode(), to_sign, hashlib.sha256).digest()).decode()
    return (
        f"SharedAccessSignature sr={quote_plus(resource)}&sig={quote_plus(sig)}"
        f"&se={expiry}&skn={quote_plus(key_name)}"
    )


def _round_trip(client: Any, queue: str, body: str) -> None:
    with client.get_queue_sender(queue) as sender:
        sender.send_messages(ServiceBusMessage(body))
    with client.get_queue_receiver(
        queue, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE
    ) as receiver:
        assert [str(m) for m in receive(receiver, 1)] == [body]


@pytest.mark.parametrize(
    ("key_name", "key"),
    [(DEFAULT_KEY_NAME, "wrong-key"), ("SomeOtherPolicy", DEFAULT_KEY)],
    ids=["wrong-key", "wrong-key-name"],
)
def test_wrong_key_is_refused(strict: Emulator, sdk: Sdk, key_name: str, key: str) -> None:
    conn_str = (
        f"Endpoint=sb://{strict.host}:{strict.port};SharedAccessKeyName={key_name};"
        f"SharedAccessKey={key};UseDevelopmentEmulator=true"
    )
    client = sdk.client(conn_str, retry_total=0)
    with pytest.raises(ServiceBusAuthenticationError):
        with client.get_queue_sender("known") as sender:
            sender.send_messages(ServiceBusMessage("x"))
    with pytest.raises(ServiceBusAuthenticationError):
        with client.get_queue_receiver("known") as receiver:
            receiver.receive_messages(max_message_count=1, max_wait_time=1)
    assert strict.stats("known").active == 0


def test_custom_key_emulator(sdk: Sdk, servicebus_emulator_factory: Any) -> None:
    emulator = servicebus_emulator_factory(queues=["q"], key_name="app", key="s3cret")
    assert "SharedAccessKeyName=app" in emulator.connection_string
    _round_trip(sdk.client(emulator.connection_string), "q", "custom key")
    default_conn_str = emulator.connection_string.replace("app", DEFAULT_KEY_NAME).replace(
        "s3cret", DEFAULT_KEY
    )
    with pytest.raises(ServiceBusAuthenticationError):
        with sdk.client(default_conn_str, retry_total=0).get_queue_sender("q") as sender:
            sender.send_messages(ServiceBusMessage("x"))


def test_sas_credential(strict: Emulator, sdk: Sdk) -> None:
    namespace = f"sb://{strict.host}:{strict.port}/"
    valid = sas_token(namespace, int(time.time()) + 3600)
    _round_trip(sdk.credential_client(strict, AzureSasCredential(valid)), "known", "sas ok")


def test_expired_sas_credential_is_refused(strict: Emulator, sdk: Sdk) -> None:
    namespace = f"sb://{strict.host}:{strict.port}/"
    expired = sas_token(namespace, int(time.time()) - 60)
    client = sdk.credential_client(strict, AzureSasCredential(expired), retry_total=0)
    with pytest.raises(ServiceBusAuthenticationError):
        with client.get_queue_sender("known") as sender:
            sender.send_messages(ServiceBusMessage("x"))


def test_sas_for_another_entity_is_refused(strict: Emulator, sdk: Sdk) -> None:
    other = f"sb://{strict.host}:{strict.port}/news"
    token = sas_token(other, int(time.time()) + 3600)
    client = sdk.credential_client(strict, AzureSasCredential(token), retry_total=0)
    with pytest.raises(ServiceBusAuthenticationError):
        with client.get_queue_sender("known") as sender:
            sender.send_messages(ServiceBusMessage("x"))
    with client.get_topic_sender("news") as sender:  # the entity it names is fine
        sender.send_messages(ServiceBusMessage("y"))
    with client.get_subscription_receiver(
        "news", "all", receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE
    ) as receiver:  # a token for a topic covers its subscriptions
        assert [str(m) for m in receive(receiver, 1)] == ["y"]


def test_named_key_credential(strict: Emulator, sdk: Sdk) -> None:
    credential = AzureNamedKeyCredential(DEFAULT_KEY_NAME, DEFAULT_KEY)
    _round_trip(sdk.credential_client(strict, credential), "known", "named key ok")


def test_unknown_entity(strict: Emulator, sdk: Sdk) -> None:
    client = sdk.client(strict.connection_string, retry_total=0)
    with pytest.raises(MessagingEntityNotFoundError):
        with client.get_queue_sender("missing") as sender:
            sender.send_messages(ServiceBusMessage("x"))
    with pytest.raises(MessagingEntityNotFoundError):
        with client.get_queue_receiver("missing") as receiver:
            receiver.receive_messages(max_message_count=1, max_wait_time=1)
    with pytest.raises(MessagingEntityNotFoundError):
        with client.get_subscription_receiver("news", "missing") as receiver:
            receiver.receive_messages(max_message_count=1, max_wait_time=1)
    with pytest.raises(MessagingEntityNotFoundError):
        with client.get_topic_sender("missing-topic") as sender:
            sender.send_messages(ServiceBusMessage("x"))


def test_oversize_message(strict: Emulator, sdk: Sdk) -> None:
    client = sdk.client(strict.connection_string, retry_total=0)
    with client.get_queue_sender("known") as sender:
        with pytest.raises(MessageSizeExceededError):
            sender.send_messages(ServiceBusMessage(b"x" * (MAX_SIZE + 1024)))
        # A batch's own limit is the SDK's (256 KB): the emulator refuses the transfer.
        batch = sender.create_message_batch()
        batch.add_message(ServiceBusMessage(b"x" * (MAX_SIZE + 1024)))
        with pytest.raises(MessageSizeExceededError):
            sender.send_messages(batch)
        sender.send_messages(ServiceBusMessage(b"x" * (MAX_SIZE // 2)))  # still usable
    with client.get_queue_receiver(
        "known", receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE
    ) as receiver:
        [got] = receive(receiver, 1)
        assert len(b"".join(got.body)) == MAX_SIZE // 2
