"""A client's lifecycle, as an enum (httpx's ClientState, with the SDK's reopen)."""

from __future__ import annotations

import enum

__all__ = ["Lifecycle"]


class Lifecycle(enum.Enum):
    """Where a ``ServiceBusClient`` is in its life.

    ``OPEN``: usable (its loop thread starts on first use). ``CLOSING``: ``close()`` is
    releasing its links and stopping its loop. ``CLOSED``: nothing of it runs; the next use
    (``with client:``, ``get_*_sender``/``get_*_receiver``, ``list_*_sessions``) reopens it
    with a new loop, as the SDK's client does. Senders and receivers obtained before a close
    stay closed.
    """

    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"
