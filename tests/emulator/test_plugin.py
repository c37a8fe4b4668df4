"""The pytest plugin, as a user's test suite sees it (a separate pytest run, found by entry point)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(90)

USER_TESTS = """
import socket

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusReceiveMode

PORTS = {}


def _round_trip(conn_str, queue, body):
    with ServiceBusClient.from_connection_string(conn_str) as client:
        with client.get_queue_sender(queue) as sender:
            sender.send_messages(ServiceBusMessage(body))
        with client.get_queue_receiver(
            queue, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE, max_wait_time=5
        ) as receiver:
            return [str(m) for m in receiver.receive_messages(max_wait_time=5)]


def _listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_shared_emulator_creates_queues_on_demand(servicebus_emulator):
    PORTS["shared"] = servicebus_emulator.port
    assert _round_trip(servicebus_emulator.connection_string, "anything", "hi") == ["hi"]


def test_shared_emulator_is_shared(servicebus_emulator):
    assert servicebus_emulator.port == PORTS["shared"]


def test_factory(servicebus_emulator_factory):
    first = servicebus_emulator_factory(queues=["jobs"], lock_duration=5)
    second = servicebus_emulator_factory(queues=["jobs"])
    assert first.port != second.port and first.host == "127.0.0.1"
    PORTS["factory"] = [first.port, second.port]
    assert _round_trip(first.connection_string, "jobs", "one") == ["one"]
    assert second.stats("jobs").active == 0


def test_factory_emulators_were_stopped():
    assert not any(_listening(port) for port in PORTS["factory"])
"""

OTHER_MODULE = """
def test_new_module_gets_a_new_emulator(servicebus_emulator):
    from test_user import PORTS, _listening
    assert servicebus_emulator.port != PORTS["shared"]
    assert not _listening(PORTS["shared"])  # the first module's emulator was stopped
"""


def test_fixtures_in_a_user_suite(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(textwrap.dedent(USER_TESTS))
    (tmp_path / "test_zz_other.py").write_text(textwrap.dedent(OTHER_MODULE))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=80,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 passed" in result.stdout


def test_loading_the_plugin_does_not_need_proton() -> None:
    code = "import sys, sbsync.emulator.pytest_plugin; print('proton' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30
    )
    assert result.stdout.strip() == "False", result.stderr
