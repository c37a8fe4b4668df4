"""Tracing for group commit (hook ``trace-grouped-sends``).

When group commit sends several callers' messages in one transfer, the SDK's send span can be
the child of one caller's span only. Each of the other callers gets the span the SDK makes for
a message sent alone: the same name and attributes (``add_span_attributes``) and a link to the
message's trace context, which the SDK keeps in the pyamqp message (``message._message``).
"""

from __future__ import annotations

import time
from typing import Any

from azure.core.settings import settings
from azure.core.tracing import SpanKind

from . import _private
from ._hooks import available

__all__ = ["now_ns", "record_send_span", "tracing_enabled"]


def tracing_enabled() -> bool:
    """Whether azure-core has a tracing implementation (``azure-core-tracing-opentelemetry``)."""
    return settings.tracing_implementation() is not None


def now_ns() -> int:
    """A span timestamp (OpenTelemetry's: nanoseconds since the epoch)."""
    return time.time_ns()


def record_send_span(sdk: Any, message: Any, started_ns: int, error: BaseException | None) -> None:
    """In the current context, the send span the SDK makes when ``message`` is sent alone by
    ``sdk``: from ``started_ns`` until now, failed with ``error`` if not None."""
    span_impl: Any = settings.tracing_implementation()
    if span_impl is None or not available("trace-grouped-sends"):
        return
    tracing = _private.sdk_tracing
    link = tracing.get_span_link_from_message(message._message)
    span = span_impl(
        name=tracing.SPAN_NAME_SEND, kind=SpanKind.CLIENT, links=[link] if link else [], start_time=started_ns
    )
    span.__enter__()
    try:
        tracing.add_span_attributes(span, tracing.TraceOperationTypes.PUBLISH, sdk, message_count=1)
    finally:
        if error is None:
            span.__exit__(None, None, None)
        else:
            span.__exit__(type(error), error, error.__traceback__)
