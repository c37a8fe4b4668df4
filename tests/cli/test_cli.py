"""The ``sbsync`` command line, run as a real subprocess against the emulator."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sbsync import ServiceBusClient, ServiceBusMessage, ServiceBusSubQueue
from sbsync.emulator import Emulator

QUEUE = "jobs"
SESSION_QUEUE = "orders"


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator(
        queues=[QUEUE, "failing", "slow"],
        session_queues=[SESSION_QUEUE],
        lock_duration=5,
        max_delivery_count=3,
    ) as emu:
        yield emu


def sbsync_cli(
    *args: str, conn: str | None = None, input: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("SERVICEBUS_CONNECTION_STR", None)
    if conn is not None:
        env["SERVICEBUS_CONNECTION_STR"] = conn
    return subprocess.run(
        [sys.executable, "-m", "sbsync", *args],
        input=input,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def test_help_teaches() -> None:
    result = sbsync_cli("--help")
    assert result.returncode == 0
    for word in ("demo", "consume", "send", "peek", "session", "emulator", "SERVICEBUS_CONNECTION_STR"):
        assert word in result.stdout
    consume_help = sbsync_cli("consume", "--help")
    assert "--exec" in consume_help.stdout and "exit status" in consume_help.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (("send", "jobs", "x"), "no connection string"),
        (("consume", "jobs"), "--exec"),
        (("peek", "jobs", "--count", "0"), "must be at least 1"),
        (("consume", "--exec", "true"), "name a QUEUE"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(args: tuple[str, ...], message: str) -> None:
    result = sbsync_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_queue_is_one_clear_line(emulator: Emulator) -> None:
    result = sbsync_cli("send", "no-such-queue", "x", conn=emulator.connection_string)
    assert result.returncode == 2
    assert "MessagingEntityNotFoundError" in result.stderr
    assert "Traceback" not in result.stderr
    assert "SAS_KEY_VALUE" not in result.stderr


def test_send_peek_and_session_state(emulator: Emulator) -> None:
    conn = emulator.connection_string
    sent = sbsync_cli(
        "send", SESSION_QUEUE, "--session-id", "c-1", "--property", "kind=order", input="a\nb\n", conn=conn
    )
    assert sent.returncode == 0, sent.stderr
    peeked = sbsync_cli("peek", SESSION_QUEUE, "--session", "c-1", conn=conn)
    assert peeked.returncode == 0, peeked.stderr
    rows = [json.loads(line) for line in peeked.stdout.splitlines()]
    assert [r["body"] for r in rows] == ["a", "b"]
    assert rows[0]["application_properties"] == {"kind": "order"}
    assert rows[0]["session_id"] == "c-1"

    assert sbsync_cli("session", "set-state", SESSION_QUEUE, "c-1", "step-2", conn=conn).returncode == 0
    state = sbsync_cli("session", "get-state", SESSION_QUEUE, "c-1", conn=conn)
    assert state.stdout.strip() == "step-2"
    listed = sbsync_cli("session", "list", SESSION_QUEUE, conn=conn)
    assert listed.returncode == 0, listed.stderr
    assert "c-1" in listed.stdout.split()


def test_consume_runs_the_command_per_message(emulator: Emulator, tmp_path: Path) -> None:
    conn = emulator.connection_string
    with ServiceBusClient.from_connection_string(conn) as client, client.get_queue_sender("failing") as sender:
        sender.send_messages(
            [
                ServiceBusMessage(body, application_properties={"tenant": "t1"})
                for body in ("ok-1", "bad", "ok-2")
            ]
        )
    out = tmp_path / "out.txt"
    # Appends body and a property from the environment; fails on "bad".
    command = f'body=$(cat); echo "$body $SBSYNC_PROPERTY_TENANT" >> {out}; test "$body" != bad'
    result = sbsync_cli(
        "consume", "failing", "--exec", command, "--max-wait-time", "3", "--dead-letter-on-failure", conn=conn
    )
    assert result.returncode == 1, result.stderr  # one command failed
    assert "2 succeeded, 1 failed" in result.stderr
    assert out.read_text().splitlines() == ["ok-1 t1", "bad t1", "ok-2 t1"]
    with ServiceBusClient.from_connection_string(conn) as client:
        with client.get_queue_receiver("failing", max_wait_time=1) as receiver:
            assert receiver.peek_messages(max_message_count=5) == []
        with client.get_queue_receiver(
            "failing", sub_queue=ServiceBusSubQueue.DEAD_LETTER, max_wait_time=2
        ) as dlq:
            dead = dlq.receive_messages(max_message_count=5, max_wait_time=2)
            assert [str(m) for m in dead] == ["bad"]
            assert dead[0].dead_letter_reason == "CommandFailed"


def test_consume_stops_cleanly_on_sigterm(emulator: Emulator, tmp_path: Path) -> None:
    conn = emulator.connection_string
    with ServiceBusClient.from_connection_string(conn) as client, client.get_queue_sender("slow") as sender:
        sender.send_messages([ServiceBusMessage(f"m{n}") for n in range(3)])
    started = tmp_path / "started"
    done = tmp_path / "done"
    command = f"cat > /dev/null; touch {started}; sleep 2; echo x >> {done}"
    env = dict(os.environ, SERVICEBUS_CONNECTION_STR=conn)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sbsync", "consume", "slow", "--exec", command],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "1 succeeded, 0 failed" in stderr  # the running command finished; no new one began
    assert done.read_text().count("x") == 1
    with ServiceBusClient.from_connection_string(conn) as client:
        with client.get_queue_receiver("slow", max_wait_time=2) as receiver:
            rest = receiver.receive_messages(max_message_count=5, max_wait_time=3)
            assert sorted(str(m) for m in rest) == ["m1", "m2"]
            for message in rest:
                receiver.complete_message(message)


@pytest.mark.timeout(180)
def test_demo_end_to_end() -> None:
    result = sbsync_cli("demo", "--messages", "300", "--sessions", "10", "--workers", "4", timeout=150)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "300/300 processed" in result.stdout
    assert "sessions   10/10" in result.stdout
    assert "FIFO       ok" in result.stdout
