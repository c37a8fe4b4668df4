"""The portal: one private asyncio loop on one daemon thread, and the only way into it.

Every blocking sbsync call crosses here: :meth:`Portal.call` schedules a coroutine factory
on the loop and blocks the calling thread until it finishes; :meth:`Portal.submit` does the
same without blocking and returns a :class:`concurrent.futures.Future`.

The hop is kept cheap on purpose (it is paid on every SDK call): the caller schedules one
callback with ``call_soon_threadsafe``; that callback creates the task directly, and the task
itself stores the outcome and releases a pre-acquired ``threading.Lock`` the caller is
blocked on. No ``concurrent.futures`` machinery, no condition variables, no extra loop
iteration for done-callbacks. :meth:`Portal.enlist` goes further for work that already has an
owner on the loop (a sender's group commit): no task at all, the caller's waiter is handed to
that owner, which finishes it.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import contextvars
import errno
import itertools
import logging
import os
import sys
import threading
import weakref
from collections.abc import Awaitable
from typing import Any, Callable, TypeVar

from azure.servicebus.exceptions import OperationTimeoutError

from .exceptions import LoopThreadError, closed_error

__all__ = ["Portal", "PortalFuture", "Waiter", "freeze_if_exiting"]

_LOGGER = logging.getLogger(__name__)

T = TypeVar("T")

#: How long a timed-out or interrupted call waits for its coroutine to unwind on the loop.
CANCEL_GRACE = 2.0
#: How long shutdown waits for the loop's remaining tasks and for the thread to end.
SHUTDOWN_GRACE = 5.0
#: atexit is for processes that never closed their client: be quick, not graceful.
_ATEXIT_GRACE = 1.0

#: Python 3.12+: a call's task takes its first step at once, in the loop iteration that
#: received the call, instead of one iteration later (one epoll round less per call).
_EAGER_TASKS = sys.version_info >= (3, 12)

_THREAD_NUMBERS = itertools.count(1)
_PORTALS: weakref.WeakSet[Portal] = weakref.WeakSet()
# Loops that can no longer run, kept referenced here (never closed) so that no finalizer
# closes descriptors that are not theirs any more: in a forked child, the parent's loop,
# thread and SDK objects (the parent still owns their sockets); and a loop whose selector
# descriptor another part of the process closed (its numbers may already be reused).
_ORPHANS: list[object] = []
# Serializes the pid-detected fork reset (see Portal._ensure_loop): a child's first calls
# may come from several request threads at once.
_FORK_LOCK = threading.Lock()
# Set at interpreter exit. Only daemon threads are left by then; one blocked in a call stays
# blocked and dies with the interpreter (as in a blocking socket read of the sync SDK),
# instead of waking up to a ClientClosedError traceback printed while the interpreter exits.
_EXITING = False


def freeze_if_exiting() -> None:
    """Caller side, before raising "closed": at interpreter exit, a daemon thread blocks
    forever instead (see ``_EXITING``); it is about to be stopped with the interpreter."""
    if _EXITING and threading.current_thread().daemon:
        threading.Event().wait()


class _Pending:
    """One caller's call on the loop: its outcome, and the lock its caller blocks on until the
    outcome is in; finished exactly once, on the loop thread."""

    __slots__ = ("_ctx", "_pending", "cancel_requested", "done", "error", "finished", "future", "result")

    def __init__(self, pending: set[_Pending], future: PortalFuture[Any] | None = None) -> None:
        # Work for the caller runs in a copy of its context, so contextvars it set are seen.
        self._ctx = contextvars.copy_context()
        self._pending = pending
        self.done = threading.Lock()
        self.done.acquire()
        self.result: Any = None
        self.error: BaseException | None = None
        self.cancel_requested = False
        self.finished = False
        self.future = future

    @property
    def context(self) -> contextvars.Context:
        """The caller's context (a copy), for work done on the caller's behalf."""
        return self._ctx

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Loop thread: begin the work (unless cancelled or finished before it started)."""
        if self.finished:
            return
        if self.cancel_requested:
            self.finish(asyncio.CancelledError())
            return
        self._begin(loop)

    def _begin(self, loop: asyncio.AbstractEventLoop) -> None:
        raise NotImplementedError

    def cancel(self) -> None:
        """Loop thread: stop the work, or make sure it never starts."""
        raise NotImplementedError

    def finish(self, error: BaseException | None) -> None:
        """Loop thread: record the outcome and wake whoever waits for it (once; later calls do nothing)."""
        if self.finished:
            return
        self.finished = True
        self.error = error
        self._pending.discard(self)
        if _EXITING:
            return
        future = self.future
        if future is not None:
            _settle_future(future, self.result, error)
        self.done.release()


class _Call(_Pending):
    """A coroutine run on the loop, in a task of its own, for one caller."""

    __slots__ = ("_factory", "task")

    def __init__(
        self,
        factory: Callable[[], Awaitable[Any]],
        pending: set[_Pending],
        future: PortalFuture[Any] | None = None,
    ) -> None:
        super().__init__(pending, future)
        self._factory = factory
        self.task: asyncio.Task[None] | None = None

    def _begin(self, loop: asyncio.AbstractEventLoop) -> None:
        if _EAGER_TASKS:
            self.task = asyncio.Task(self.run(), loop=loop, context=self._ctx, eager_start=True)  # type: ignore[call-arg]
        else:
            # create_task copies the current context: running it inside ctx hands the task a copy.
            self.task = self._ctx.run(loop.create_task, self.run())

    def cancel(self) -> None:
        self.cancel_requested = True
        if self.task is not None:
            self.task.cancel()

    async def run(self) -> None:
        if self.finished:  # swept by a stopping loop before its first step
            return
        try:
            self.result = await self._factory()
        except BaseException as exc:  # handed to the caller's thread, whatever it is
            self.finish(exc)
        else:
            self.finish(None)


class Waiter(_Pending):
    """A call with no task of its own (see :meth:`Portal.enlist`): on the loop thread it is
    handed to ``enter``, whose owner finishes it with :meth:`finish`; if its caller gives up
    first (timeout, Ctrl+C), ``leave`` takes it back and it ends cancelled."""

    __slots__ = ("_enter", "_leave")

    def __init__(
        self, enter: Callable[[Waiter], None], leave: Callable[[Waiter], None], pending: set[_Pending]
    ) -> None:
        super().__init__(pending)
        self._enter = enter
        self._leave = leave

    def _begin(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            self._enter(self)
        except BaseException as exc:  # the caller's to handle, in its own thread
            self.finish(exc)

    def cancel(self) -> None:
        self.cancel_requested = True
        if not self.finished:
            self._leave(self)
            self.finish(asyncio.CancelledError())


def _settle_future(future: PortalFuture[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    try:
        if error is None:
            future.set_result(result)
        elif isinstance(error, asyncio.CancelledError):
            future.cancel()
        else:
            future.set_exception(error)
    except concurrent.futures.InvalidStateError:
        pass  # cancelled by its owner at the same moment


class PortalFuture(concurrent.futures.Future[T]):
    """A :class:`concurrent.futures.Future` whose ``cancel()`` also cancels the loop task."""

    def __init__(self, portal: Portal) -> None:
        super().__init__()
        self._portal = portal
        self._call: _Call | None = None

    def cancel(self) -> bool:
        cancelled = super().cancel()
        if self._call is not None:
            self._portal._cancel(self._call)
        return cancelled


class _DaemonExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor (sync credentials' ``get_token``, ``getaddrinfo`` for a host
    name): each call in a daemon thread of its own, ending with the call.

    A ThreadPoolExecutor's idle workers are non-daemon threads the interpreter joins at exit.
    After a fork at the C level (uWSGI's default), the child's interpreter still lists the
    parent's, which do not exist there: its exit would wait for them forever. These calls are
    rare (a token refresh, a connection), so a thread each costs nothing that matters.
    """

    def __init__(self, thread_name_prefix: str) -> None:
        super().__init__(max_workers=1, thread_name_prefix=thread_name_prefix)
        self._name_prefix = thread_name_prefix

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # the caller's to handle, on the loop
                future.set_exception(exc)
            else:
                future.set_result(result)

        name = f"{self._name_prefix}_{next(_THREAD_NUMBERS)}"
        threading.Thread(target=run, name=name, daemon=True).start()
        return future


class Portal:
    """Owns one asyncio loop on one daemon thread (``sbsync-loop-N``), started lazily.

    ``generation`` changes when the process forks: objects built on the loop (SDK clients,
    links, locks) belong to one generation and must be rebuilt when it changes.

    A fork is noticed two ways: ``os.register_at_fork`` (``os.fork()``, multiprocessing,
    gunicorn), and the process id changing since the loop started, checked on every way in
    (servers that fork at the C level, as uWSGI does by default, run no Python fork hooks).
    """

    def __init__(self) -> None:
        self.generation = 0
        #: The process the loop (if any) runs in; another pid here means we were forked.
        self._pid = os.getpid()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._thread_id: int | None = None
        self._accepting = False
        self._pending: set[_Pending] = set()
        self._inbox: collections.deque[_Pending] = collections.deque()
        self._wake_sent = False
        self._lock = threading.Lock()
        _PORTALS.add(self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("running" if self._loop else "idle")
        name = self._thread.name if self._thread else None
        return f"<Portal {state} thread={name!r}>"

    # -- state -----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once :meth:`shutdown` has begun; no new calls are accepted."""
        return self._closed

    @property
    def in_loop_thread(self) -> bool:
        """True when the current thread is this portal's loop thread."""
        return self._thread_id is not None and threading.get_ident() == self._thread_id

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop, started if needed (for code that must schedule on it directly)."""
        return self._ensure_loop()

    # -- calls -----------------------------------------------------------------------------

    def call(self, factory: Callable[[], Awaitable[T]], *, timeout: float | None = None) -> T:
        """Run ``factory()`` on the loop and block until it finishes; return or raise its outcome.

        On ``timeout`` (seconds) the coroutine is cancelled on the loop and
        ``OperationTimeoutError`` is raised. A ``KeyboardInterrupt`` while waiting cancels the
        coroutine too, then propagates. Exceptions keep their type and their loop-side
        traceback, continued by the caller's frames.
        """
        self._refuse_if_closed()
        return self._call(factory, timeout)

    def submit(self, factory: Callable[[], Awaitable[T]]) -> PortalFuture[T]:
        """Schedule ``factory()`` on the loop without waiting; ``future.cancel()`` cancels it."""
        self._refuse_if_closed()
        loop = self._ensure_loop()
        future: PortalFuture[T] = PortalFuture(self)
        call = _Call(factory, self._pending, future)
        future._call = call
        self._schedule(loop, call)
        return future

    def _refuse_if_closed(self) -> None:
        """Caller side, first thing in every way in: ``ClientClosedError`` once shut down."""
        if self._closed:
            freeze_if_exiting()
            raise closed_error("client")

    def _join(self, call: _Pending, timeout: float | None) -> Any:
        """Block until ``call`` finishes; return or raise its outcome (see :meth:`call`)."""
        timed_out = self._wait(call, timeout)
        error = call.error
        if error is None:
            return call.result
        if isinstance(error, asyncio.CancelledError):
            if timed_out:
                error = OperationTimeoutError(message=f"The operation did not complete within {timeout} s.")
            elif self._closed or not self._accepting:
                error = closed_error("client", during_call=True)
        try:
            raise error
        finally:
            error = None
            call.error = None

    def enlist(
        self, enter: Callable[[Waiter], None], leave: Callable[[Waiter], None], *, timeout: float | None = None
    ) -> Any:
        """Block until work on the loop finishes a :class:`Waiter`; return or raise its outcome.

        For work that already has an owner on the loop (a sender's group commit): instead of a
        task per call, ``enter(waiter)`` runs on the loop thread and hands the waiter to that
        owner, which calls ``waiter.finish(error)`` (after setting ``waiter.result``). Waiters
        handed over together share one wake-up of the loop. ``timeout`` and Ctrl+C behave as
        in :meth:`call`; the waiter is then taken back with ``leave(waiter)``.
        """
        self._refuse_if_closed()
        return self._block_on(lambda: Waiter(enter, leave, self._pending), timeout)

    def _call(self, factory: Callable[[], Awaitable[T]], timeout: float | None) -> T:
        return self._block_on(lambda: _Call(factory, self._pending), timeout)

    def _block_on(self, make: Callable[[], _Pending], timeout: float | None) -> Any:
        """Every blocking way in: start the loop if needed, refuse a call from the loop thread
        itself (it would wait for itself forever), hand ``make()`` over and wait for it."""
        loop = self._ensure_loop()  # first: after a fork, a new thread may reuse the old loop thread's id
        if threading.get_ident() == self._thread_id:
            raise LoopThreadError(
                "A blocking sbsync call was made from sbsync's own event-loop thread; it would "
                "wait for itself forever. Make blocking calls from your own threads."
            )
        call = make()  # after _ensure_loop: a fork reset replaces the pending set it joins
        self._schedule(loop, call)
        return self._join(call, timeout)

    def _schedule(self, loop: asyncio.AbstractEventLoop, call: _Pending) -> None:
        """Hand ``call`` to the loop from the caller's thread: into the inbox, with one
        wake-up for every call handed over before the loop takes it (the task itself is
        created on the loop thread, where asyncio expects it)."""
        # Register before checking `_accepting`: the loop thread clears it before sweeping
        # `_pending`, so either the sweep finishes this call or we see the flag.
        self._pending.add(call)
        try:
            if not self._accepting:
                raise closed_error("client")
            self._inbox.append(call)
            # One wake-up per batch: callers arriving before the loop has taken the wake-up
            # ride on the one already on its way (the loop clears the flag *before* it looks
            # at what was handed over, and callers hand over *before* they read it).
            if not self._wake_sent:
                self._wake_sent = True
                loop.call_soon_threadsafe(self._start_inbox, loop)
        except RuntimeError as exc:  # the loop closed under us
            self._wake_sent = False
            self._pending.discard(call)
            raise closed_error("client") from exc
        except BaseException:
            self._pending.discard(call)
            raise

    def _start_inbox(self, loop: asyncio.AbstractEventLoop) -> None:
        """Loop thread: the wake-up; start every call handed over through the inbox, in order."""
        self._wake_sent = False
        inbox = self._inbox
        while inbox:
            inbox.popleft().start(loop)

    def _wait(self, call: _Pending, timeout: float | None) -> bool:
        """Block until ``call`` finishes; return True if it was cancelled for the timeout."""
        try:
            if timeout is None:
                call.done.acquire()  # interruptible by signals (KeyboardInterrupt) on POSIX
                return False
            if call.done.acquire(True, timeout):
                return False
        except BaseException:  # KeyboardInterrupt (or SystemExit) while waiting
            self._cancel(call)
            call.done.acquire(True, CANCEL_GRACE)
            raise
        self._cancel(call)
        if not call.done.acquire(True, CANCEL_GRACE):
            # The coroutine ignores cancellation; give up on it rather than hang the caller.
            raise OperationTimeoutError(
                message=f"The operation did not complete within {timeout} s (and did not stop when cancelled)."
            )
        return True

    def _cancel(self, call: _Pending) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(call.cancel)
        except RuntimeError:
            pass  # loop already closed: the call was finished by the shutdown sweep

    # -- the loop thread --------------------------------------------------------------------

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None and self._pid == os.getpid():  # the hot path: getpid() and an int compare
            return loop
        self._reset_if_forked()
        with self._lock:
            if self._closed:
                raise closed_error("client")
            if self._loop is None:
                self._start_thread()
            assert self._loop is not None
            return self._loop

    def _start_thread(self) -> None:
        ready = threading.Event()
        self._pid = os.getpid()
        name = f"sbsync-loop-{next(_THREAD_NUMBERS)}"
        thread = threading.Thread(target=self._serve, args=(ready, name), name=name, daemon=True)
        thread.start()
        ready.wait()
        if self._loop is None:
            raise LoopThreadError("sbsync's event-loop thread failed to start.")
        self._thread = thread

    def _serve(self, ready: threading.Event, name: str) -> None:
        try:
            loop = asyncio.new_event_loop()
            # Named threads for run_in_executor (sync credentials), so they are recognisable.
            executor = _DaemonExecutor(thread_name_prefix=f"{name}-executor")
            loop.set_default_executor(executor)
            asyncio.set_event_loop(loop)
        except BaseException:
            ready.set()
            raise
        self._thread_id = threading.get_ident()
        self._accepting = True
        self._loop = loop
        ready.set()
        orphaned = False
        try:
            loop.run_forever()
        except OSError as exc:
            # Only the selector's own wait raises out of run_forever. EBADF: another part of
            # the process closed the loop's descriptors (uWSGI does, to every descriptor, before
            # it re-executes itself on a reload). Nothing can run on this loop any more.
            if exc.errno != errno.EBADF:
                raise
            orphaned = True
            _LOGGER.warning(
                "%s stopped: its event loop's descriptor was closed by another part of the process; "
                "calls on this client raise ClientClosedError (create a new client)",
                name,
            )
        finally:
            self._accepting = False
            for call in list(self._pending):
                call.finish(closed_error("client", during_call=True))
            try:
                if not orphaned:
                    loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                executor.shutdown(wait=False, cancel_futures=True)
                asyncio.set_event_loop(None)
                if orphaned:
                    _ORPHANS.append(loop)
                else:
                    loop.close()
                _LOGGER.debug("%s stopped", name)

    async def _drain_and_stop(self, grace: float) -> None:
        """Loop thread: cancel every other task, give them ``grace`` seconds, stop the loop."""
        loop = asyncio.get_running_loop()
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks(loop) if t is not current]
        if _EXITING:
            # The interpreter is going: SDK work is frozen where it is, as a sync SDK call would
            # be, rather than cancelled into cleanup code that logs tracebacks while it exits.
            for task in tasks:
                task._log_destroy_pending = False  # type: ignore[attr-defined]
            loop.stop()
            return
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        loop.stop()

    def shutdown(
        self,
        finalizer: Callable[[], Awaitable[Any]] | None = None,
        *,
        timeout: float = SHUTDOWN_GRACE,
    ) -> None:
        """Refuse new calls, run ``finalizer()`` on the loop, stop the loop and join its thread.

        Idempotent. Errors from the finalizer are logged, not raised: closing must finish.
        """
        self._reset_if_forked()  # never wake or wait for a parent's loop thread
        if self.in_loop_thread:
            raise LoopThreadError("close() cannot be called from sbsync's own event-loop thread.")
        with self._lock:
            first = not self._closed
            self._closed = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if first:
            if finalizer is not None and self._accepting:  # (a loop that ended takes no finalizer)
                try:
                    self._call(finalizer, timeout)
                except Exception:
                    _LOGGER.warning("Error while closing; continuing shutdown", exc_info=True)
            try:
                loop.call_soon_threadsafe(lambda: loop.create_task(self._drain_and_stop(timeout / 2)))
            except RuntimeError:
                pass  # already stopped
        thread.join(timeout)
        if thread.is_alive():
            _LOGGER.warning("%s did not stop within %s s", thread.name, timeout)

    def abandon(self) -> None:
        """Stop the loop without waiting: for a client garbage-collected unclosed.

        Non-blocking, so it is safe wherever the garbage collector runs it, the loop thread
        included. SDK objects are not closed gracefully; their sockets close with the loop.
        """
        self._reset_if_forked()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(lambda: loop.create_task(self._drain_and_stop(_ATEXIT_GRACE)))
        except RuntimeError:
            pass  # already stopped

    def _reset_if_forked(self) -> None:
        """Drop the parent's loop if this process is not the one it runs in (a C-level fork,
        which ran no ``os.register_at_fork`` hook); exactly what that hook would have done."""
        with _FORK_LOCK:
            if self._pid != os.getpid():
                _LOGGER.debug("fork detected by pid (%d -> %d): starting a new loop", self._pid, os.getpid())
                self._forget_parent()

    def _forget_parent(self) -> None:
        """In a forked child: drop the parent's loop and thread without touching them."""
        self._pid = os.getpid()
        if self._loop is not None:
            _ORPHANS.append((self._loop, self._thread))
        self._loop = None
        self._thread = None
        self._thread_id = None
        self._accepting = False
        self._pending = set()
        self._inbox = collections.deque()
        self._wake_sent = False
        self._lock = threading.Lock()
        self.generation += 1

    def orphan(self, obj: object) -> None:
        """Keep a previous generation's object alive, unclosed (see ``_ORPHANS``)."""
        _ORPHANS.append(obj)


def _after_fork_in_child() -> None:
    global _FORK_LOCK
    _FORK_LOCK = threading.Lock()
    for portal in list(_PORTALS):
        portal._forget_parent()


def _shutdown_all_at_exit() -> None:
    global _EXITING
    _EXITING = True
    for portal in list(_PORTALS):
        try:
            portal.shutdown(timeout=_ATEXIT_GRACE)
        except Exception:
            _LOGGER.debug("Error stopping %r at exit", portal, exc_info=True)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_shutdown_all_at_exit)
