"""Every private SDK name sbsync uses is checked at client construction: each hook's target is
removed from the real SDK in turn (restored after the test), and the client must either fall
back with one WARNING naming the feature and the SDK version, or refuse with an error naming
the supported range. Never silence."""

from __future__ import annotations

import configparser
import logging
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.credentials import AzureNamedKeyCredential
from azure.servicebus import ServiceBusReceivedMessage
from azure.servicebus._pyamqp.client import AMQPClient
from azure.servicebus.aio import ServiceBusClient as AsyncServiceBusClient
from azure.servicebus.aio import ServiceBusReceiver as AsyncServiceBusReceiver
from azure.servicebus.aio._servicebus_session_async import (
    ServiceBusSession as AsyncServiceBusSession,
)
from azure.servicebus.exceptions import ServiceBusError

import sbsync
from sbsync._sdk import _hooks, _private
from sbsync.emulator import Emulator
from sbsync.exceptions import IncompatibleSdkError, UnsupportedTransportError

DUMMY = "Endpoint=sb://hooks.invalid/;SharedAccessKeyName=k;SharedAccessKey=v"


@pytest.fixture(autouse=True)
def fresh_hooks() -> Iterator[None]:
    _hooks.reset()
    yield
    _hooks.reset()


def _drop_instance_attribute(monkeypatch: pytest.MonkeyPatch, cls: type, name: str) -> None:
    """``cls``'s instances come without ``name`` (a renamed attribute)."""
    init = cls.__init__

    def init_without(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.__dict__.pop(name, None)

    monkeypatch.setattr(cls, "__init__", init_without)


def _drop_method(monkeypatch: pytest.MonkeyPatch, cls: type, name: str) -> None:
    """``cls`` (every class of its MRO) without method ``name``."""
    for klass in cls.__mro__:
        if name in vars(klass):
            monkeypatch.delattr(klass, name)


def _hide_init_assignments(monkeypatch: pytest.MonkeyPatch, cls: type) -> None:
    """``cls.__init__`` (the one defined on ``cls``) seen by the probe as assigning nothing: for
    pyamqp objects the probe cannot build, it reads the attribute names in ``__init__``'s code."""
    init = vars(cls)["__init__"]

    def init_renamed(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__init__", init_renamed)


#: How each hook's target is taken away.
REMOVE = {
    "link-state": lambda mp: _drop_instance_attribute(mp, AsyncServiceBusReceiver, "_running"),
    "session-state": lambda mp: _drop_instance_attribute(mp, AsyncServiceBusSession, "_lock_lost"),
    "message-settled": lambda mp: _drop_instance_attribute(mp, ServiceBusReceivedMessage, "_settled"),
    "shutdown-error": lambda mp: _drop_method(mp, AsyncServiceBusReceiver, "_check_message_alive"),
    "link-log": lambda mp: _drop_method(mp, AsyncServiceBusReceiver, "_open"),
    "close-socket": lambda mp: _drop_method(mp, AsyncServiceBusReceiver, "_close_handler"),
    "mgmt-credit": lambda mp: _drop_method(mp, AsyncServiceBusReceiver, "_mgmt_request_response"),
    "settle-socket-timeout": lambda mp: _hide_init_assignments(mp, _private.ConnectionAsync),
    "link-open": lambda mp: _drop_method(mp, AsyncServiceBusReceiver, "_create_handler"),
    # (the assignment is in the sync base class's __init__)
    "keep-alive-stop": lambda mp: _hide_init_assignments(mp, AMQPClient),
    "batch-fill": lambda mp: mp.setattr(_private, "pyamqp_encode", None),
    # (not _renew_locks itself: the SDK's public renew_message_lock, the fallback, calls it)
    "trace-grouped-sends": lambda mp: mp.setattr(_private, "sdk_tracing", None),
    "batch-lock-renewal": lambda mp: mp.setattr(_private, "MGMT_RESPONSE_MESSAGE_EXPIRATION", None),
    "deferred-flag": lambda mp: _drop_instance_attribute(mp, ServiceBusReceivedMessage, "_is_deferred_message"),
    "received-time": lambda mp: _drop_instance_attribute(mp, ServiceBusReceivedMessage, "_received_timestamp_utc"),
    "session-listing": lambda mp: _drop_method(mp, AsyncServiceBusClient, "list_queue_sessions"),
    "retryable-flag": lambda mp: _drop_instance_attribute(mp, ServiceBusError, "_retryable"),
}


def test_every_hook_has_a_removal_test_and_says_why_and_where_verified():
    assert set(REMOVE) == set(_hooks.HOOKS)
    for hook in _hooks.HOOKS.values():
        assert hook.why and hook.targets and "7.15.0" in hook.verified


def test_the_installed_sdk_needs_no_fallback(caplog):
    with caplog.at_level(logging.WARNING, logger="sbsync.sdk"):
        sbsync.ServiceBusClient.from_connection_string(DUMMY).close()
    assert caplog.records == []
    assert all(_hooks.available(name) for name in _hooks.HOOKS)


@pytest.mark.parametrize("name", sorted(_hooks.HOOKS))
def test_a_missing_hook_target_is_a_warning_with_a_fallback_or_a_clear_error(name, monkeypatch, caplog):
    hook = _hooks.HOOKS[name]
    REMOVE[name](monkeypatch)
    with caplog.at_level(logging.WARNING, logger="sbsync.sdk"):
        if hook.fallback is None:
            with pytest.raises(IncompatibleSdkError) as raised:
                sbsync.ServiceBusClient.from_connection_string(DUMMY)
            text = str(raised.value)
            assert hook.feature in text and _hooks.SDK_VERSION in text and ">=7.15,<8" in text
        else:
            for _ in range(2):  # a second client: no second warning
                sbsync.ServiceBusClient.from_connection_string(DUMMY).close()
            assert not _hooks.available(name)
    lost = [r.getMessage() for r in caplog.records if hook.feature in r.getMessage()]
    if hook.fallback is None:
        assert lost == []  # the error says it all
    else:
        assert len(lost) == 1, caplog.text
        assert _hooks.SDK_VERSION in lost[0] and hook.fallback in lost[0]


def test_supported_range_is_setup_cfgs():
    config = configparser.ConfigParser()
    config.read(pathlib.Path(__file__).parents[2] / "setup.cfg")
    requirements = config["options"]["install_requires"].split()
    assert f"azure-servicebus{_hooks.SUPPORTED_RANGE}" in requirements


def test_uamqp_transport_is_refused_at_construction():
    for make in (
        lambda: sbsync.ServiceBusClient.from_connection_string(DUMMY, uamqp_transport=True),
        lambda: sbsync.ServiceBusClient("hooks.invalid", AzureNamedKeyCredential("k", "v"), uamqp_transport=True),
    ):
        with pytest.raises(UnsupportedTransportError, match="uamqp_transport=True is not supported") as raised:
            make()
        assert isinstance(raised.value, ValueError)
    sbsync.ServiceBusClient.from_connection_string(DUMMY, uamqp_transport=False).close()  # the default


def test_without_batch_renewal_the_renewer_renews_message_by_message(monkeypatch, caplog):
    """The fallback works end to end: one public renewal per lock."""
    REMOVE["batch-lock-renewal"](monkeypatch)
    with Emulator(queues=["q"], lock_duration=3) as emulator:
        with caplog.at_level(logging.WARNING, logger="sbsync.sdk"):
            client = sbsync.ServiceBusClient.from_connection_string(emulator.connection_string)
        assert "one renew request per message lock" in caplog.text
        renewer = sbsync.AutoLockRenewer(max_lock_renewal_duration=30)
        with client, renewer:
            with client.get_queue_sender("q") as sender:
                sender.send_messages([sbsync.ServiceBusMessage(f"m{i}") for i in range(2)])
            with client.get_queue_receiver("q", auto_lock_renewer=renewer, max_wait_time=5) as receiver:
                messages: list[Any] = []
                while len(messages) < 2:
                    messages += receiver.receive_messages(2, max_wait_time=5)
                time.sleep(4.5)  # past the 3 s lock: renewed, or it would be lost
                assert renewer.renewals >= 2
                for message in messages:
                    receiver.complete_message(message)  # the locks are still held


def test_an_sdk_below_the_floor_is_refused_and_one_above_the_range_warned(monkeypatch, caplog):
    monkeypatch.setattr(_hooks, "SDK_VERSION", "7.14.3")
    with pytest.raises(IncompatibleSdkError, match=r"azure-servicebus>=7\.15,<8; 7\.14\.3 is installed"):
        sbsync.ServiceBusClient.from_connection_string(DUMMY)
    _hooks.reset()
    monkeypatch.setattr(_hooks, "SDK_VERSION", "8.0.0b1")
    with caplog.at_level(logging.WARNING, logger="sbsync.sdk"):
        sbsync.ServiceBusClient.from_connection_string(DUMMY).close()
    assert "azure-servicebus 8.0.0b1 is newer than sbsync's supported range" in caplog.text
    assert _hooks.version_info("7.15.0") == (7, 15, 0) and _hooks.version_info("8.0.0b1") == (8, 0, 0)
