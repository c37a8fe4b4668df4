"""sbsync: a blocking, thread-safe facade over ``azure.servicebus.aio``.

Same names, parameters, defaults and return types as the synchronous ``azure.servicebus``:
migrating is changing ``from azure.servicebus import ...`` to ``from sbsync import ...``::

    from sbsync import ServiceBusClient, ServiceBusMessage

    with ServiceBusClient.from_connection_string(conn_str) as client:
        with client.get_queue_sender("orders") as sender:
            sender.send_messages(ServiceBusMessage("hello"))

Each :class:`ServiceBusClient` runs the async SDK on one private event loop in one daemon
thread; its senders, receivers and sessions can be shared by any number of threads. Each
operation of theirs also takes a keyword-only ``timeout`` (seconds) that cancels it when it
expires. Errors are the SDK's own types (:mod:`sbsync.exceptions` re-exports them), plus
``ClientClosedError`` and ``LoopThreadError``.
"""

from __future__ import annotations

from azure.servicebus import (
    NEXT_AVAILABLE_SESSION,
    ServiceBusConnectionStringProperties,
    ServiceBusMessage,
    ServiceBusMessageBatch,
    ServiceBusMessageState,
    ServiceBusReceivedMessage,
    ServiceBusReceiveMode,
    ServiceBusSessionFilter,
    ServiceBusSubQueue,
    TransportType,
    parse_connection_string,
)

from ._renewer import AutoLockRenewer
from .client import ServiceBusClient
from .processor import SessionContext, SessionProcessor
from .receiver import ServiceBusReceiver
from .sender import ServiceBusSender
from .session import ServiceBusSession

__all__ = [
    "NEXT_AVAILABLE_SESSION",
    "AutoLockRenewer",
    "ServiceBusClient",
    "ServiceBusConnectionStringProperties",
    "ServiceBusMessage",
    "ServiceBusMessageBatch",
    "ServiceBusMessageState",
    "ServiceBusReceiveMode",
    "ServiceBusReceivedMessage",
    "ServiceBusReceiver",
    "ServiceBusSender",
    "ServiceBusSession",
    "ServiceBusSessionFilter",
    "ServiceBusSubQueue",
    "SessionContext",
    "SessionProcessor",
    "TransportType",
    "parse_connection_string",
]
