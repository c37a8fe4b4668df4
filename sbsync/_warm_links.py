"""Warm sender links a client keeps: closing a sender parks its open link for the next one.

Opening an SDK sender costs ~0.5 s and closing it as much again, so code that opens a sender
per request (``with client.get_queue_sender(q) as s: s.send_messages(m)``) would spend a
second per request on link handshakes. ``sender.close()`` instead parks the healthy, idle
link; the next ``get_queue_sender`` with the same arguments takes it over. Receivers are
never parked: they hold locks, credit and buffered messages. ``client.close()`` closes
everything parked.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

__all__ = ["MAX_PARKED_PER_KEY", "WarmLinks", "link_key"]

#: Links parked per distinct set of sender arguments; more are closed.
MAX_PARKED_PER_KEY = 2


def link_key(kind: str, name: str, *args: Any, **kwargs: Any) -> Hashable | None:
    """What makes two senders interchangeable; None (never parked) if an argument is unhashable."""
    key = (kind, name, args, tuple(sorted(kwargs.items())))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _reusable(sdk: Any) -> bool:
    # An SDK sender whose link is up and that nobody shut down.
    return bool(getattr(sdk, "_running", False)) and not sdk._shutdown.is_set()


class WarmLinks:
    """Loop-thread state: parked SDK senders by :func:`link_key`."""

    def __init__(self) -> None:
        self._parked: dict[Hashable, list[Any]] = {}

    def take(self, key: Hashable | None) -> Any | None:
        """A parked sender for ``key`` whose link is still up, or None."""
        parked = self._parked.get(key) if key is not None else None
        while parked:
            sdk = parked.pop()
            if _reusable(sdk):
                return sdk
        return None

    def park(self, key: Hashable | None, sdk: Any) -> bool:
        """Keep ``sdk`` for reuse; False if it cannot be (the caller closes it then)."""
        if key is None or not _reusable(sdk):
            return False
        parked = self._parked.setdefault(key, [])
        if len(parked) >= MAX_PARKED_PER_KEY:
            return False
        parked.append(sdk)
        return True

    def drain(self) -> list[Any]:
        """Everything parked (to close), leaving nothing."""
        links = [sdk for parked in self._parked.values() for sdk in parked]
        self._parked.clear()
        return links
