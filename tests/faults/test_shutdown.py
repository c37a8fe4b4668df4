"""Shutdown under load: close() with 16 threads mid-call, and interpreter exit with work running."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any, Callable

import pytest

from sbsync import ServiceBusMessage
from sbsync.emulator import Emulator
from sbsync.exceptions import ClientClosedError

from .conftest import LeakCheck, connect, send_session

pytestmark = pytest.mark.timeout(90)


def send_one(client: Any) -> None:
    with client.get_queue_sender("q") as sender:  # handles made while close() runs
        sender.send_messages(ServiceBusMessage("n"))


def test_close_with_16_threads_mid_call(emulator: Emulator) -> None:
    leaks = LeakCheck()
    outcomes: dict[str, list[str]] = {}
    unexpected: list[str] = []
    lock = threading.Lock()
    started = threading.Barrier(17)

    client = connect(emulator)
    send_session(client, "sq", "s1", 1)
    sender = client.get_queue_sender("q")
    receiver = client.get_queue_receiver("q")
    session_receiver = client.get_queue_receiver("sq", session_id="s1")
    with sender, receiver, session_receiver:  # links open before the load starts
        calls: dict[str, Callable[[], Any]] = {
            "send": lambda: sender.send_messages(ServiceBusMessage("x")),
            "send-list": lambda: sender.send_messages([ServiceBusMessage("y"), ServiceBusMessage("z")]),
            "receive": lambda: receiver.receive_messages(1, max_wait_time=60),  # blocks until closed
            "peek": lambda: receiver.peek_messages(5),
            "get_state": lambda: session_receiver.session.get_state(),
            "set_state": lambda: session_receiver.session.set_state(b"s"),
            "renew": lambda: session_receiver.session.renew_lock(),
            "new-sender": lambda: send_one(client),
        }
        names = list(calls) * 2  # 16 threads, two of each kind

        def caller(index: int, name: str) -> None:
            started.wait()
            results: list[str] = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    calls[name]()
                    results.append("ok")
                except ClientClosedError as exc:
                    results.append("closed")
                    if "closed" not in str(exc):
                        unexpected.append(f"{name}: unclear message {exc}")
                    break
                except Exception as exc:
                    unexpected.append(f"{name}: {exc!r}")
                    break
            with lock:
                outcomes[f"{name}-{index}"] = results

        threads = [threading.Thread(target=caller, args=(i, n), name=f"caller-{i}") for i, n in enumerate(names)]
        for t in threads:
            t.start()
        started.wait()
        time.sleep(1.0)  # well into the load
        t0 = time.monotonic()
        client.close()
        close_took = time.monotonic() - t0
        for t in threads:
            t.join(max(0.1, 5 - (time.monotonic() - t0)))
        all_back = time.monotonic() - t0
        assert not any(t.is_alive() for t in threads), "callers still blocked after close()"
    assert close_took < 5, f"close() took {close_took:.1f} s"
    assert all_back < 5, f"callers came back {all_back:.1f} s after close()"
    assert unexpected == []
    assert len(outcomes) == 16
    # Every caller ended with ClientClosedError; all but the blocked receivers got results first.
    assert all(r and r[-1] == "closed" for r in outcomes.values()), outcomes
    assert all("ok" in r for name, r in outcomes.items() if not name.startswith("receive")), outcomes
    with pytest.raises(ClientClosedError):
        sender.send_messages(ServiceBusMessage("after"))
    leaks.assert_clean()


def test_client_close_releases_links_the_caller_dropped_unclosed(emulator: Emulator) -> None:
    """A sender or receiver dropped without close() must not keep its connection open past
    ``client.close()`` (the sync SDK's sockets go with the dropped object)."""
    leaks = LeakCheck()
    client = connect(emulator)
    for _ in range(2):
        client.get_queue_sender("q").send_messages(ServiceBusMessage("x"))
        client.get_queue_receiver("q").receive_messages(1, max_wait_time=2)
    client.close()
    leaks.assert_clean()


EXIT_SCRIPT = textwrap.dedent(
    """
    import sys, threading, time
    from sbsync import ServiceBusClient, ServiceBusMessage
    from sbsync.processor import SessionProcessor

    conn_str = sys.argv[1]
    client = ServiceBusClient.from_connection_string(conn_str, retry_backoff_factor=0.05)
    other = ServiceBusClient.from_connection_string(conn_str)
    sender = other.get_queue_sender("q")
    sender.send_messages(ServiceBusMessage("before exit"))
    receiver = other.get_queue_receiver("q", max_wait_time=60)
    threading.Thread(target=lambda: receiver.receive_messages(5, max_wait_time=60), daemon=True).start()

    def handler(message, context):
        time.sleep(0.05)

    processor = SessionProcessor(client, queue_name="sq", handler=handler, max_concurrent_sessions=4)
    processor.start()
    time.sleep(3)  # sessions taken, receives blocked, nothing closed
    print("EXITING", flush=True)
    """
)


def test_interpreter_exit_with_open_clients_and_a_running_processor(emulator: Emulator) -> None:
    with connect(emulator) as client:
        for s in range(4):
            send_session(client, "sq", f"s{s}", 50)
    proc = subprocess.Popen(
        [sys.executable, "-c", EXIT_SCRIPT, emulator.connection_string],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the script is about to exit
        t0 = time.monotonic()
        assert line.strip() == "EXITING", proc.stderr.read() if proc.stderr else ""
        rc = proc.wait(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read() if proc.stderr else ""
    assert took < 5, f"interpreter exit took {took:.1f} s"
    assert rc == 0, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
