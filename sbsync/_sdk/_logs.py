"""Quiet logs for what sbsync handles: the SDK's tracebacks on sbsync's loop threads go to DEBUG.

The SDK logs some errors with their traceback at WARNING/ERROR as it raises them (e.g.
``Unexpected error occurred (...). Handler shutting down.``); on sbsync's loop threads those
errors then reach sbsync, which retries them (logging one WARNING line per retry), reports
them as a lost lock, or raises them in the caller's thread with their traceback. Printed by
the SDK as well, a recovered error would leave a traceback on stderr and an unrecovered one
would print twice. :class:`DemoteOnLoopThreads` turns those records into DEBUG records, only
on sbsync's loop threads (``sbsync-loop-N`` and their executors): the user's own use of the
SDK, on their own threads, logs as before. Records stay available at DEBUG.
"""

from __future__ import annotations

import logging
import threading

__all__ = ["DemoteOnLoopThreads", "install_log_filter"]

#: The prefix of the names of sbsync's loop threads (see ``sbsync._portal``).
LOOP_THREAD_PREFIX = "sbsync-loop-"


class DemoteOnLoopThreads(logging.Filter):
    """WARNING/ERROR records carrying a traceback, emitted on an sbsync loop thread, become DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.levelno >= logging.WARNING
            and record.exc_info
            and threading.current_thread().name.startswith(LOOP_THREAD_PREFIX)
        ):
            record.levelno = logging.DEBUG
            record.levelname = logging.getLevelName(logging.DEBUG)
        return True


_FILTER = DemoteOnLoopThreads()


def install_log_filter() -> None:
    """Put the filter on every ``azure.servicebus`` logger there is (a logger's filters see only
    its own records, so each gets it; the SDK creates its loggers at import, before any client)."""
    manager = logging.Logger.manager
    for name, logger in list(manager.loggerDict.items()):
        if (name == "azure.servicebus" or name.startswith("azure.servicebus.")) and isinstance(logger, logging.Logger):
            if _FILTER not in logger.filters:
                logger.addFilter(_FILTER)
