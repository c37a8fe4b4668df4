"""Warm sender links a client keeps: closing a sender parks its open link for the next one.

Opening an SDK sender is a handshake of a dozen frames and a token (~0.5 s at the SDK's own
pace, a few network round trips at sbsync's: the ``link-open`` hook), so code that opens a
sender per request (``with client.get_queue_sender(q) as s: s.send_messages(m)``) would pay
a handshake per request. ``sender.close()`` instead parks the healthy, idle link; the next
``get_queue_sender`` with the same arguments takes it over. A link parked for longer than the
client's ``sender_idle_timeout`` is closed, and ``client.close()`` closes everything parked.
Receivers are never parked: they hold locks, credit and buffered messages.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Hashable
from typing import Any, Callable

from ._sdk import link_reusable

__all__ = ["DEFAULT_IDLE_TIMEOUT", "MAX_PARKED_PER_KEY", "WarmLinks", "check_idle_timeout", "link_key"]

_LOGGER = logging.getLogger("sbsync.links")

#: Links parked per distinct set of sender arguments; more are closed.
MAX_PARKED_PER_KEY = 2

#: Seconds a parked link waits for its next sender before it is closed (the service itself
#: closes a link idle for 10 minutes).
DEFAULT_IDLE_TIMEOUT = 60.0


def check_idle_timeout(value: float | None) -> None:
    """None (keep until ``client.close()``), 0 (park nothing) or a positive number of seconds."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"sender_idle_timeout must be a number of seconds or None, not {type(value).__name__}.")
    if value < 0:
        raise ValueError(f"sender_idle_timeout must be 0 (park no link) or more (got {value!r}).")


def link_key(kind: str, name: str, *args: Any, **kwargs: Any) -> Hashable | None:
    """What makes two senders interchangeable; None (never parked) if an argument is unhashable."""
    key = (kind, name, args, tuple(sorted(kwargs.items())))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _describe(key: Hashable) -> str:
    return f"sender link to {key[1]!r}"  # type: ignore[index]  # as the handle's label says


class WarmLinks:
    """Loop-thread state: parked SDK senders by :func:`link_key`, newest last.

    ``close`` is how an expired link gets closed (the client runs it as a task it waits for
    on ``client.close()``).
    """

    def __init__(self, idle_timeout: float | None, close: Callable[[Any], None]) -> None:
        self._idle_timeout = idle_timeout
        self._close = close
        self._parked: dict[Hashable, list[tuple[float, Any]]] = {}
        self._expiry: asyncio.TimerHandle | None = None

    def take(self, key: Hashable | None) -> Any | None:
        """The most recently parked sender for ``key`` whose link is still up, or None."""
        parked = self._parked.get(key) if key is not None else None
        while parked:
            _, sdk = parked.pop()
            if link_reusable(sdk):
                _LOGGER.debug("%s reused", _describe(key))
                return sdk
            self._close(sdk)  # broken while parked: release what is left of it
        return None

    def park(self, key: Hashable | None, sdk: Any) -> bool:
        """Keep ``sdk`` for reuse; False if it cannot be (the caller closes it then)."""
        if key is None or self._idle_timeout == 0 or not link_reusable(sdk):
            return False
        parked = self._parked.setdefault(key, [])
        if len(parked) >= MAX_PARKED_PER_KEY:
            return False
        parked.append((time.monotonic(), sdk))
        _LOGGER.debug("%s parked for reuse", _describe(key))
        if self._expiry is None and self._idle_timeout is not None:
            self._expiry = asyncio.get_running_loop().call_later(self._idle_timeout, self._expire)
        return True

    def _expire(self) -> None:
        """Timer: close the links idle for ``idle_timeout``; wake again for the next to expire."""
        self._expiry = None
        assert self._idle_timeout is not None
        now = time.monotonic()
        oldest: float | None = None
        for key, parked in list(self._parked.items()):
            for entry in [e for e in parked if now - e[0] >= self._idle_timeout]:
                parked.remove(entry)
                _LOGGER.debug("%s idle for %.0f s: closing it", _describe(key), now - entry[0])
                self._close(entry[1])
            if parked:
                oldest = parked[0][0] if oldest is None else min(oldest, parked[0][0])
            else:
                del self._parked[key]
        if oldest is not None:
            delay = max(oldest + self._idle_timeout - now, 0.0)
            self._expiry = asyncio.get_running_loop().call_later(delay, self._expire)

    def drain(self) -> list[Any]:
        """Everything parked (to close), leaving nothing."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        links = [sdk for parked in self._parked.values() for _, sdk in parked]
        self._parked.clear()
        return links
