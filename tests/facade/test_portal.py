"""The portal on its own: pure asyncio, no Service Bus."""

from __future__ import annotations

import asyncio
import contextvars
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback

import pytest

from sbsync._portal import Portal
from sbsync.exceptions import ClientClosedError, LoopThreadError, OperationTimeoutError

pytestmark = pytest.mark.timeout(60)

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("REQUEST_ID", default="unset")


@pytest.fixture
def portal():
    p = Portal()
    yield p
    p.shutdown()


async def _boom() -> None:
    await asyncio.sleep(0)
    raise KeyError("loop-side")


def test_call_returns_result_on_loop_thread(portal):
    async def where() -> str:
        return threading.current_thread().name

    name = portal.call(where)
    assert name.startswith("sbsync-loop-")
    assert name != threading.current_thread().name


def test_one_thread_per_portal(portal):
    async def ident() -> int:
        return threading.get_ident()

    assert len({portal.call(ident) for _ in range(20)}) == 1


def test_exception_keeps_type_and_both_tracebacks(portal):
    with pytest.raises(KeyError) as info:
        portal.call(_boom)
    frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert "test_exception_keeps_type_and_both_tracebacks" in frames  # caller side
    assert "_boom" in frames  # loop side


def test_contextvars_are_copied_into_the_coroutine(portal):
    async def read() -> str:
        value = REQUEST_ID.get()
        REQUEST_ID.set("changed-on-loop")
        return value

    token = REQUEST_ID.set("req-42")
    try:
        assert portal.call(read) == "req-42"
        assert REQUEST_ID.get() == "req-42"  # the loop's change stays on the loop
    finally:
        REQUEST_ID.reset(token)


def test_timeout_cancels_the_coroutine(portal):
    cancelled = threading.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    start = time.monotonic()
    with pytest.raises(OperationTimeoutError):
        portal.call(slow, timeout=0.2)
    assert time.monotonic() - start < 2
    assert cancelled.wait(1)


def test_result_arriving_with_the_timeout_is_not_lost(portal):
    async def stubborn() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return "finished anyway"
        return "slept"

    assert portal.call(stubborn, timeout=0.1) == "finished anyway"


def test_deadlock_guard(portal):
    async def inner() -> int:
        return 1

    async def blocking_from_loop() -> None:
        portal.call(inner)

    with pytest.raises(LoopThreadError, match="event-loop thread"):
        portal.call(blocking_from_loop)
    assert issubclass(LoopThreadError, RuntimeError)


def test_submit_and_cancel(portal):
    async def value() -> int:
        return 7

    assert portal.submit(value).result(5) == 7

    started = threading.Event()
    cancelled = threading.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    future = portal.submit(forever)
    assert started.wait(5)
    future.cancel()
    assert cancelled.wait(5)
    assert future.cancelled()


def test_many_threads_share_one_portal(portal):
    async def echo(i: int) -> int:
        await asyncio.sleep(0)
        return i

    results: dict[int, int] = {}
    start = threading.Barrier(16)  # all at once: calls handed over together share a wake-up

    def worker(base: int) -> None:
        start.wait()
        for i in range(base, base + 100):
            results[i] = portal.call(lambda i=i: echo(i))

    threads = [threading.Thread(target=worker, args=(n * 1000,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 1600 and all(k == v for k, v in results.items())


def test_shutdown_unblocks_a_waiting_call_and_is_idempotent():
    portal = Portal()
    started = threading.Event()

    async def forever() -> None:
        started.set()
        await asyncio.sleep(60)

    errors: list[BaseException] = []

    def blocked() -> None:
        try:
            portal.call(forever)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=blocked)
    t.start()
    assert started.wait(5)
    thread = portal._thread
    start = time.monotonic()
    portal.shutdown()
    portal.shutdown()
    t.join(5)
    assert time.monotonic() - start < 3
    assert len(errors) == 1 and isinstance(errors[0], ClientClosedError)
    assert thread is not None and not thread.is_alive()
    with pytest.raises(ClientClosedError):
        portal.call(forever)


def test_shutdown_of_an_unused_portal():
    portal = Portal()
    portal.shutdown()
    assert portal._thread is None


def _run_script(body: str, **kwargs) -> subprocess.Popen:
    script = textwrap.dedent(
        """
        import asyncio, os, sys, threading, time
        from sbsync._portal import Portal
        """
    ) + textwrap.dedent(body)
    return subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )


def test_ctrl_c_cancels_the_call_and_raises_keyboard_interrupt():
    proc = _run_script(
        """
        portal = Portal()
        async def forever():
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                print("cancelled-on-loop", flush=True)
                raise
        print("ready", flush=True)
        try:
            portal.call(forever)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(3)
        """
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert time.monotonic() - sent < 3, err
    assert proc.returncode == 3, err
    assert "cancelled-on-loop" in out and "interrupted" in out


def test_process_exits_promptly_without_shutdown():
    proc = _run_script(
        """
        portal = Portal()
        async def forever():
            await asyncio.sleep(600)
        portal.submit(forever)
        async def one():
            return 1
        assert portal.call(one) == 1
        print("done", flush=True)
        """
    )
    start = time.monotonic()
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "done" in out
    assert time.monotonic() - start < 10


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_child_gets_its_own_loop():
    proc = _run_script(
        """
        portal = Portal()
        async def ident():
            return threading.get_ident(), os.getpid()
        parent = portal.call(ident)
        pid = os.fork()
        if pid == 0:
            try:
                child = portal.call(ident, timeout=5)
                ok = child[1] == os.getpid() and portal.generation == 1
                portal.shutdown()
                os._exit(0 if ok else 1)
            except BaseException as exc:
                print("child failed", repr(exc), flush=True)
                os._exit(2)
        _, status = os.waitpid(pid, 0)
        assert portal.call(ident) == parent
        portal.shutdown()
        print("child-status", os.waitstatus_to_exitcode(status), flush=True)
        """
    )
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "child-status 0" in out, out + err


def test_a_loop_whose_descriptor_another_part_of_the_process_closed_ends_quietly(monkeypatch, caplog):
    """As when uWSGI closes every descriptor before it re-executes itself on a reload."""
    crashes: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", crashes.append)
    portal = Portal()
    loop = portal.loop
    thread = portal._thread
    assert thread is not None
    with caplog.at_level("WARNING", logger="sbsync._portal"):
        os.close(loop._selector.fileno())  # type: ignore[attr-defined]
        loop.call_soon_threadsafe(lambda: None)  # its next wait finds the descriptor gone
        thread.join(10)
        assert not thread.is_alive()
        with pytest.raises(ClientClosedError):
            portal.call(lambda: asyncio.sleep(0))
        portal.shutdown()  # closes without a finalizer error
    assert crashes == []  # no traceback from the loop thread
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "closed by another part of the process" in warnings[0], warnings
    assert not loop.is_closed()  # its descriptors' numbers may be someone else's: never closed
