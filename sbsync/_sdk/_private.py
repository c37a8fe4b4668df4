"""Imports of private SDK modules, each allowed to be missing (its hook then reports it).

Verified on azure-servicebus 7.14.0, 7.14.3 and 7.15.0.
"""

from __future__ import annotations

from typing import Any

# The pyamqp message type, to build a probe message (see _hooks.Probe).
try:
    from azure.servicebus._pyamqp.message import Message as PyamqpMessage
except ImportError:  # pragma: no cover - an SDK without pyamqp
    PyamqpMessage = None  # type: ignore[assignment,misc]

# pyamqp's encoder module and message sections, compiled into one encoder, and the SDK's own
# steps of ServiceBusMessageBatch.add_message: its conversion and its per-message overhead (batch-fill).
pyamqp_encode: Any
PyamqpHeader: Any
PyamqpProperties: Any
transform_outbound_messages: Any
batch_overhead: Any
try:
    from azure.servicebus._common.constants import _BATCH_MESSAGE_OVERHEAD_COST as batch_overhead
    from azure.servicebus._common.utils import transform_outbound_messages
    from azure.servicebus._pyamqp import _encode as pyamqp_encode
    from azure.servicebus._pyamqp.message import Header as PyamqpHeader
    from azure.servicebus._pyamqp.message import Properties as PyamqpProperties
except ImportError:  # pragma: no cover
    pyamqp_encode = PyamqpHeader = PyamqpProperties = transform_outbound_messages = batch_overhead = None

# pyamqp's aio clients and connection: the socket read timeout (settle-socket-timeout), the
# readiness check polled while a link opens (link-open) and the keep-alive task (keep-alive-stop).
AMQPClientAsync: Any
ReceiveClientAsync: Any
ConnectionAsync: Any
try:
    from azure.servicebus._pyamqp.aio import AMQPClientAsync, ReceiveClientAsync
    from azure.servicebus._pyamqp.aio import Connection as ConnectionAsync
except ImportError:  # pragma: no cover
    AMQPClientAsync = ReceiveClientAsync = ConnectionAsync = None

# The renew-lock reply's expiry key, and the SDK's conversion of it (batch-lock-renewal).
MGMT_RESPONSE_MESSAGE_EXPIRATION: Any
utc_from_timestamp: Any
try:
    from azure.servicebus._common.constants import MGMT_RESPONSE_MESSAGE_EXPIRATION
    from azure.servicebus._common.utils import utc_from_timestamp
except ImportError:  # pragma: no cover
    MGMT_RESPONSE_MESSAGE_EXPIRATION = utc_from_timestamp = None

# The SDK's tracing helpers: a send span like the SDK's own for each caller whose message
# travelled in a transfer shared with others (trace-grouped-sends).
sdk_tracing: Any
try:
    from azure.servicebus._common import tracing as sdk_tracing
except ImportError:  # pragma: no cover
    sdk_tracing = None
