"""Whole-process behaviour, each in a subprocess talking to the suite's emulator."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.timeout(60)

PRELUDE = """
import os, sys, time
import sbsync
from sbsync import ServiceBusMessage
conn_str, queue = sys.argv[1], sys.argv[2]
"""


def _spawn(body: str, conn_str: str, queue: str) -> subprocess.Popen:
    script = PRELUDE + textwrap.dedent(body)
    return subprocess.Popen(
        [sys.executable, "-c", script, conn_str, queue],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_ctrl_c_interrupts_a_blocked_receive(conn_str, queue):
    proc = _spawn(
        """
        client = sbsync.ServiceBusClient.from_connection_string(conn_str)
        receiver = client.get_queue_receiver(queue)
        receiver.peek_messages(1)  # link open: what follows is a pure wait
        print("ready", flush=True)
        try:
            receiver.receive_messages(max_wait_time=120)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(3)
        """,
        conn_str,
        queue,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 3, err
    assert "interrupted" in out
    assert time.monotonic() - sent < 5, "KeyboardInterrupt or exit was not prompt"


def test_process_exits_promptly_without_close(conn_str, queue):
    proc = _spawn(
        """
        client = sbsync.ServiceBusClient.from_connection_string(conn_str)
        sender = client.get_queue_sender(queue)
        sender.send_messages(ServiceBusMessage("bye"))
        receiver = client.get_queue_receiver(queue)
        receiver.receive_messages(max_wait_time=5)
        print("done", flush=True)
        """,
        conn_str,
        queue,
    )
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "done" in out


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_client_works_in_a_forked_child(conn_str, queue):
    proc = _spawn(
        """
        import threading
        client = sbsync.ServiceBusClient.from_connection_string(conn_str)
        sender = client.get_queue_sender(queue)
        sender.send_messages(ServiceBusMessage("before-fork"))
        pid = os.fork()
        if pid == 0:
            try:
                sender.send_messages(ServiceBusMessage("from-child"), timeout=20)
                with client.get_queue_receiver(queue, max_wait_time=2) as receiver:
                    got = []
                    deadline = time.monotonic() + 15
                    while len(got) < 2 and time.monotonic() < deadline:
                        got += receiver.receive_messages(5, max_wait_time=2)
                    for m in got:
                        receiver.complete_message(m)
                client.close()
                names = sorted(str(m) for m in got)
                print("child got", names, flush=True)
                os._exit(0 if names == ["before-fork", "from-child"] else 1)
            except BaseException as exc:
                print("child failed", repr(exc), flush=True)
                os._exit(2)
        _, status = os.waitpid(pid, 0)
        sender.send_messages(ServiceBusMessage("parent-after"))  # the parent's links still work
        client.close()
        print("child-exit", os.waitstatus_to_exitcode(status), flush=True)
        """,
        conn_str,
        queue,
    )
    out, err = proc.communicate(timeout=50)
    assert proc.returncode == 0, out + err
    assert "child-exit 0" in out, out + err


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_client_works_after_a_c_level_fork(conn_str, queue):
    """As uWSGI forks its workers: libc's fork(), so no ``os.register_at_fork`` hook runs.
    The child notices the new pid and starts over (four threads racing for the first call);
    it exits without close() and the parent's link, inherited by the child, is undisturbed.
    The host is a name, so connecting runs getaddrinfo in a helper thread of the parent's loop:
    the child's exit must not wait for that thread, which it does not have."""
    conn_str = conn_str.replace("127.0.0.1", "localhost")
    proc = _spawn(
        """
        import ctypes, threading
        client = sbsync.ServiceBusClient.from_connection_string(conn_str)
        sender = client.get_queue_sender(queue)
        sender.send_messages(ServiceBusMessage("before-fork"))
        pid = ctypes.PyDLL(None).fork()  # PyDLL: holds the GIL across fork(), as uWSGI does
        if pid == 0:
            errors = []
            def send(n):
                try:
                    sender.send_messages(ServiceBusMessage(f"child-{n}"), timeout=20)
                except BaseException as exc:
                    errors.append(exc)
            threads = [threading.Thread(target=send, args=(n,)) for n in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            loops = [t.name for t in threading.enumerate() if t.name.startswith("sbsync-loop") and t.is_alive()]
            print("child", os.getpid(), "errors", errors, flush=True)
            sys.exit(0 if not errors else 1)  # a normal exit: atexit runs, the client unclosed
        _, status = os.waitpid(pid, 0)
        print("child-exit", os.waitstatus_to_exitcode(status), flush=True)
        sender.send_messages(ServiceBusMessage("parent-after"), timeout=20)  # the parent's link still works
        got = []
        with client.get_queue_receiver(queue, max_wait_time=2) as receiver:
            deadline = time.monotonic() + 15
            while len(got) < 6 and time.monotonic() < deadline:
                batch = receiver.receive_messages(10, max_wait_time=2)
                for m in batch:
                    receiver.complete_message(m)
                got += batch
        client.close()
        print("parent got", sorted(str(m) for m in got), flush=True)
        """,
        conn_str,
        queue,
    )
    out, err = proc.communicate(timeout=50)
    assert proc.returncode == 0, out + err
    assert "child-exit 0" in out, out + err
    expected = sorted(["before-fork", "parent-after"] + [f"child-{n}" for n in range(4)])
    assert f"parent got {expected}" in out, out + err
    assert "Traceback" not in err, err
