"""sbsync: a blocking, thread-safe facade over ``azure.servicebus.aio``.

Same names, parameters, defaults and return types as the synchronous ``azure.servicebus``:
migrating is changing ``from azure.servicebus import ...`` to ``from sbsync import ...``.
Each :class:`ServiceBusClient` runs the async SDK on one private event loop in one daemon
thread; its clients, senders, receivers and sessions can be shared by any number of threads.
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

from .client import ServiceBusClient
from .receiver import ServiceBusReceiver
from .sender import ServiceBusSender
from .session import ServiceBusSession

__all__ = [
    "NEXT_AVAILABLE_SESSION",
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
    "TransportType",
    "parse_connection_string",
]
