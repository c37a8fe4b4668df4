"""The official JS SDK (``@azure/service-bus`` on rhea), a third AMQP client.

``js/conformance.js`` runs one scenario through the SDK and prints what it saw; these tests
assert on that and on the emulator's state. The SDK lives in ``tests/emulator/js``
(``npm ci --prefix tests/emulator/js``; installed here on first use if missing). Without
Node the tests skip: that is the only reason they may.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sbsync.emulator import Emulator

from .conftest import new_queue

pytestmark = pytest.mark.timeout(180)

JS_DIR = Path(__file__).resolve().parent / "js"
NODE = shutil.which("node")


@pytest.fixture(scope="session")
def js_sdk() -> Path:
    """The directory holding conformance.js with @azure/service-bus installed."""
    if NODE is None:
        pytest.skip("Node.js is not installed: the JS SDK cannot run")
    if not (JS_DIR / "node_modules" / "@azure" / "service-bus").is_dir():
        npm = shutil.which("npm")
        assert npm, "node is installed but npm is not: cannot install @azure/service-bus"
        with open(JS_DIR / ".install.lock", "w") as lock:  # pytest-xdist workers install once
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (JS_DIR / "node_modules" / "@azure" / "service-bus").is_dir():
                subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--prefix", str(JS_DIR)],
                               check=True, capture_output=True, timeout=300)
    return JS_DIR


def _run(js_sdk: Path, conn_str: str, scenario: str, entity: str,
         env: dict[str, str] | None = None) -> Any:
    assert NODE is not None
    result = subprocess.run(
        [NODE, str(js_sdk / "conformance.js"), scenario, entity],
        env={**os.environ, "SB_CONNECTION_STRING": conn_str, **(env or {})},
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _tls_conn_str(emulator: Emulator, port: int) -> str:
    """No UseDevelopmentEmulator: the JS SDK speaks TLS, to the endpoint's port."""
    return (emulator.connection_string.replace(f"sb://{emulator.host}:{emulator.port}",
                                               f"sb://localhost:{port}")
            .replace(";UseDevelopmentEmulator=true", ""))


def test_settlement_and_dead_lettering(servicebus_emulator: Emulator, js_sdk: Path) -> None:
    queue = new_queue(servicebus_emulator)
    seen = _run(js_sdk, servicebus_emulator.connection_string, "settlement", queue)
    assert seen == {
        "received": ["m0", "m1", "m2", "m3"],
        "renewedInFuture": True,
        "again": {"body": "m1", "deliveryCount": 1},
        "deferred": "m2",
        "dead": {"body": "m3", "reason": "bad", "description": "very bad"},
    }
    stats = servicebus_emulator.stats(queue)
    assert (stats.active, stats.dead_letter) == (0, 0)


@pytest.mark.parametrize("transport", ["amqp", "tls", "tls-port"])
def test_scheduling_and_peeking(servicebus_emulator: Emulator, js_sdk: Path,
                                transport: str) -> None:
    """Over plain AMQP, and over TLS on the same port and on the TLS-only port, trusting
    the emulator's CA as Node does (NODE_EXTRA_CA_CERTS)."""
    queue = new_queue(servicebus_emulator)
    conn_str, env = servicebus_emulator.connection_string, None
    if transport != "amqp":
        port = servicebus_emulator.tls_port if transport == "tls-port" else \
            servicebus_emulator.port
        assert port is not None
        conn_str = _tls_conn_str(servicebus_emulator, port)
        env = {"NODE_EXTRA_CA_CERTS": servicebus_emulator.ca_file}
    seen = _run(js_sdk, conn_str, "schedule", queue, env)
    assert seen["peeked"] == ["later", "now"]
    assert seen["peekedSequences"][0] == seen["laterSequence"]
    assert seen["peekedScheduled"] is True
    assert seen["due"] == "now"
    assert servicebus_emulator.stats(queue).scheduled == 1


def test_sessions(servicebus_emulator: Emulator, js_sdk: Path) -> None:
    queue = new_queue(servicebus_emulator, requires_session=True)
    seen = _run(js_sdk, servicebus_emulator.connection_string, "sessions", queue)
    assert seen["sessionId"] == "a"
    assert (seen["stateBefore"], seen["stateAfter"]) == (None, "state of a")
    assert seen["lockedUntilInFuture"] and seen["renewedNotEarlier"]
    assert seen["received"] == ["a0", "a1"]
    assert seen["locked"]["code"] == "SessionCannotBeLocked"
    # the SDK names its own wait (com.microsoft:timeout) and gets the service's error
    assert seen["none"]["code"] == "ServiceTimeout"
    assert seen["noneSeconds"] < 15
