"""Private names of azure-servicebus that sbsync uses, each with why and where verified.

(Merging note: the ``sbsync/_sdk`` package of branch i14-sdk is the door to the SDK's
internals; what is here moves into it as its tracing section.)

Tracing (``trace-grouped-sends``). When group commit sends several callers' messages in one
transfer, the SDK's send span can be the child of one caller's span only. Each of the other
callers gets the span the SDK would have made for its message sent alone: same name and
attributes (``add_span_attributes``) and a link to the message's trace context, which the SDK
keeps in the private pyamqp message (``get_span_link_from_message(message._message)``).
Verified on azure-servicebus 7.15.0 (tests/facade/test_tracing.py); present with the same
signatures in 7.14.0. Without them: one WARNING, and those callers' traces lack a send span
(their messages still carry their own trace context).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from azure.core.settings import settings
from azure.core.tracing import SpanKind

_LOGGER = logging.getLogger(__name__)

_tracing: Any
try:
    from azure.servicebus._common import tracing as _tracing
except ImportError:  # pragma: no cover - an SDK that moved it
    _tracing = None

__all__ = ["now_ns", "record_send_span", "tracing_enabled"]

_TRACING_NAMES = ("SPAN_NAME_SEND", "TraceOperationTypes", "add_span_attributes", "get_span_link_from_message")
_warned = False


def tracing_enabled() -> bool:
    """Whether azure-core has a tracing implementation (``azure-core-tracing-opentelemetry``)."""
    return settings.tracing_implementation() is not None


def now_ns() -> int:
    """A span timestamp (OpenTelemetry's: nanoseconds since the epoch)."""
    return time.time_ns()


def record_send_span(sdk: Any, message: Any, started_ns: int, error: BaseException | None) -> None:
    """In the current context, the send span the SDK makes when ``message`` is sent alone by
    ``sdk``: from ``started_ns`` until now, failed with ``error`` if not None."""
    global _warned
    span_impl: Any = settings.tracing_implementation()
    if span_impl is None:
        return
    if not all(hasattr(_tracing, name) for name in _TRACING_NAMES):
        if not _warned:
            _warned = True
            _LOGGER.warning(
                "This azure-servicebus lacks the tracing helpers sbsync uses: the callers whose "
                "messages travel in a shared transfer get no send span of their own"
            )
        return
    link = _tracing.get_span_link_from_message(message._message)
    span = span_impl(
        name=_tracing.SPAN_NAME_SEND, kind=SpanKind.CLIENT, links=[link] if link else [], start_time=started_ns
    )
    span.__enter__()
    try:
        _tracing.add_span_attributes(span, _tracing.TraceOperationTypes.PUBLISH, sdk, message_count=1)
    finally:
        if error is None:
            span.__exit__(None, None, None)
        else:
            span.__exit__(type(error), error, error.__traceback__)
