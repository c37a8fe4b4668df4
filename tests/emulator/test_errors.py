"""Error cases the SDK must see as its own exception types: auth, missing entities, size."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
from azure.servicebus import ServiceBusMessage, ServiceBusReceiveMode
from azure.servicebus.exceptions import (
    MessageSizeExceededError,
    MessagingEntityNotFoundError,
    ServiceBusAuthenticationError,
)

from sbsync.emulator import DEFAULT_KEY, DEFAULT_KEY_NAME, Emulator

from .conftest import Sdk, receive, sas_token

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


def _round_trip(sdk: Sdk, client: Any, queue: str, body: str) -> None:
    sender, receiver = sdk.open(
        client.get_queue_sender(queue),
        client.get_queue_receiver(queue, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE),
    )
    sender.send_messages(ServiceBusMessage(body))
    assert [str(m) for m in receive(receiver, 1)] == [body]


def _conn_str(emulator: Emulator, key_name: str, key: str) -> str:
    return (
        f"Endpoint=sb://{emulator.host}:{emulator.port};SharedAccessKeyName={key_name};"
        f"SharedAccessKey={key};UseDevelopmentEmulator=true"
    )


def _refusals(sdk: Sdk, *handlers: Any) -> list[type]:
    return [type(exc) for exc in sdk.open_failures(*handlers)]


def test_wrong_key_is_refused(strict: Emulator, sdk: Sdk) -> None:
    wrong_key = sdk.client(_conn_str(strict, DEFAULT_KEY_NAME, "wrong-key"), retry_total=0)
    wrong_name = sdk.client(_conn_str(strict, "SomeOtherPolicy", DEFAULT_KEY), retry_total=0)
    assert (
        _refusals(
            sdk,
            wrong_key.get_queue_sender("known"),
            wrong_key.get_queue_receiver("known"),
            wrong_name.get_queue_sender("known"),
            wrong_name.get_subscription_receiver("news", "all"),
        )
        == [ServiceBusAuthenticationError] * 4
    )


def test_custom_key_emulator(sdk: Sdk, servicebus_emulator_factory: Any) -> None:
    emulator = servicebus_emulator_factory(queues=["q"], key_name="app", key="s3cret")
    assert "SharedAccessKeyName=app" in emulator.connection_string
    default_key = sdk.client(_conn_str(emulator, DEFAULT_KEY_NAME, DEFAULT_KEY), retry_total=0)
    assert _refusals(sdk, default_key.get_queue_sender("q")) == [ServiceBusAuthenticationError]
    _round_trip(sdk, sdk.client(emulator.connection_string), "q", "custom key")


def test_sas_and_named_key_credentials(strict: Emulator, sdk: Sdk) -> None:
    namespace = f"sb://{strict.host}:{strict.port}/"
    valid = sas_token(namespace, int(time.time()) + 3600)
    _round_trip(sdk, sdk.credential_client(strict, AzureSasCredential(valid)), "known", "sas")
    named = AzureNamedKeyCredential(DEFAULT_KEY_NAME, DEFAULT_KEY)
    _round_trip(sdk, sdk.credential_client(strict, named), "known", "named key")


def test_sas_refusals(strict: Emulator, sdk: Sdk) -> None:
    namespace = f"sb://{strict.host}:{strict.port}/"
    expired = sdk.credential_client(
        strict, AzureSasCredential(sas_token(namespace, int(time.time()) - 60)), retry_total=0
    )
    other_token = sas_token(namespace + "news", int(time.time()) + 3600)
    other = sdk.credential_client(strict, AzureSasCredential(other_token), retry_total=0)
    assert (
        _refusals(
            sdk,
            expired.get_queue_sender("known"),
            other.get_queue_sender("known"),  # a token for another entity
        )
        == [ServiceBusAuthenticationError] * 2
    )
    # The entity the token names is fine, and so are its subscriptions.
    sender, receiver = sdk.open(
        other.get_topic_sender("news"),
        other.get_subscription_receiver(
            "news", "all", receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE
        ),
    )
    sender.send_messages(ServiceBusMessage("y"))
    assert [str(m) for m in receive(receiver, 1)] == ["y"]


def test_unknown_entity(strict: Emulator, sdk: Sdk) -> None:
    client = sdk.client(strict.connection_string, retry_total=0)
    assert (
        _refusals(
            sdk,
            client.get_queue_sender("missing"),
            client.get_queue_receiver("missing"),
            client.get_subscription_receiver("news", "missing"),
            client.get_topic_sender("missing-topic"),
            client.get_queue_receiver("missing", session_id="s"),
        )
        == [MessagingEntityNotFoundError] * 5
    )


def test_oversize_message(strict: Emulator, sdk: Sdk) -> None:
    client = sdk.client(strict.connection_string, retry_total=0)
    sender, receiver = sdk.open(
        client.get_queue_sender("known"),
        client.get_queue_receiver("known", receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE),
    )
    with pytest.raises(MessageSizeExceededError):
        sender.send_messages(ServiceBusMessage(b"x" * (MAX_SIZE + 1024)))
    # The emulator advertises its limit, so a batch refuses the message up front.
    batch = sender.create_message_batch()
    assert batch.max_size_in_bytes == MAX_SIZE
    with pytest.raises(MessageSizeExceededError):
        batch.add_message(ServiceBusMessage(b"x" * (MAX_SIZE + 1024)))
    batch.add_message(ServiceBusMessage(b"x" * 1024))
    sender.send_messages(batch)
    sender.send_messages(ServiceBusMessage(b"x" * (MAX_SIZE // 2)))  # the link still works
    assert [len(b"".join(m.body)) for m in receive(receiver, 2)] == [1024, MAX_SIZE // 2]
