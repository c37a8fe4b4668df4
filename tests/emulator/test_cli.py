"""``python -m sbsync.emulator`` run as a real subprocess, driven by the sync SDK."""

from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusReceiveMode
from azure.servicebus.exceptions import MessagingEntityNotFoundError

from sbsync.emulator._cli import main
from sbsync.emulator._tls import development_pair

from .conftest import receive

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "sbsync.emulator", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def _first_line(proc: subprocess.Popen[str], timeout: float = 15.0) -> str:
    """The first stdout line, without blocking past ``timeout`` if the child hangs."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            pytest.fail(f"no connection string within {timeout} s")
    return proc.stdout.readline().strip()


def _stop(proc: subprocess.Popen[str], sig: int) -> tuple[int, float, str]:
    started = time.monotonic()
    proc.send_signal(sig)
    try:
        _, stderr = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the emulator did not exit within 10 s of the signal")
    return proc.returncode, time.monotonic() - started, stderr


def _open_all(*handlers: Any) -> list[Any]:
    with ThreadPoolExecutor(len(handlers)) as pool:
        list(pool.map(lambda h: h.__enter__(), handlers))
    return list(handlers)


def _close_all(handlers: list[Any]) -> None:
    with ThreadPoolExecutor(len(handlers)) as pool:
        list(pool.map(lambda h: h.close(), handlers))


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test started; any still running at teardown are killed."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_serves_the_sdk_and_stops_on_sigterm(
    tmp_path: Path, spawned: list[subprocess.Popen[str]]
) -> None:
    config = tmp_path / "Config.json"
    config.write_text(
        json.dumps(
            {"UserConfig": {"Namespaces": [{"Name": "ns", "Queues": [{"Name": "from-config"}]}]}}
        )
    )
    proc = _spawn(
        "--port",
        "0",
        "--queue",
        "jobs",
        "--session-queue",
        "orders",
        "--subscription",
        "events/audit",
        "--config",
        str(config),
        "--lock-duration",
        "5",
    )
    spawned.append(proc)
    conn_str = _first_line(proc)
    assert conn_str.startswith("Endpoint=sb://127.0.0.1:")
    assert "UseDevelopmentEmulator=true" in conn_str
    with ServiceBusClient.from_connection_string(conn_str, retry_total=0) as client:
        # Links open and close side by side: each costs the SDK ~0.5 s of polling.
        senders = _open_all(
            client.get_queue_sender("jobs"),
            client.get_queue_sender("from-config"),
            client.get_topic_sender("events"),
            client.get_queue_sender("orders"),
        )
        jobs, from_config, events, orders = senders
        jobs.send_messages(ServiceBusMessage("to jobs"))
        from_config.send_messages(ServiceBusMessage("to from-config"))
        events.send_messages(ServiceBusMessage("event"))
        orders.send_messages(ServiceBusMessage("o", session_id="s1"))
        receivers = _open_all(
            client.get_queue_receiver("jobs"),
            client.get_queue_receiver("from-config"),
            client.get_subscription_receiver(
                "events", "audit", receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE
            ),
            client.get_queue_receiver("orders", session_id="s1"),
        )
        try:
            for queue, receiver in zip(("jobs", "from-config"), receivers):
                [msg] = receive(receiver, 1)
                assert str(msg) == f"to {queue}"
                # --lock-duration 5 is applied.
                left = (msg.locked_until_utc - msg.enqueued_time_utc).total_seconds()
                assert 3 < left < 7
                receiver.complete_message(msg)
            assert [str(m) for m in receive(receivers[2], 1)] == ["event"]
            [order] = receive(receivers[3], 1)
            receivers[3].complete_message(order)
            with pytest.raises(MessagingEntityNotFoundError):  # no --auto-create
                with client.get_queue_sender("unknown") as sender:
                    sender.send_messages(ServiceBusMessage("x"))
        finally:
            _close_all(senders + receivers)
    code, took, stderr = _stop(proc, signal.SIGTERM)
    assert code == 0, stderr
    assert took < 5
    assert "Traceback" not in stderr
    assert "listening on 127.0.0.1:" in stderr
    assert " DEBUG " not in stderr  # no -v


def test_auto_create_and_sigint(spawned: list[subprocess.Popen[str]]) -> None:
    proc = _spawn(
        "--port", "0", "--auto-create", "--key-name", "dev", "--key", "k3y", "-v",
        "--default-message-ttl", "1", "--max-delivery-count", "1",
    )  # fmt: skip
    spawned.append(proc)
    conn_str = _first_line(proc)
    assert "SharedAccessKeyName=dev" in conn_str
    with ServiceBusClient.from_connection_string(conn_str) as client:
        sender, receiver = _open_all(
            client.get_queue_sender("made-on-demand"), client.get_queue_receiver("made-on-demand")
        )
        try:
            sender.send_messages([ServiceBusMessage("abandoned"), ServiceBusMessage("expiring")])
            [abandoned] = receive(receiver, 1)
            receiver.abandon_message(abandoned)  # --max-delivery-count 1: dead-lettered
            peeked = receiver.peek_messages(max_message_count=5, sequence_number=1)
            assert [str(m) for m in peeked] == ["expiring"]
            time.sleep(1.5)  # --default-message-ttl 1: the other one expires
            assert receiver.peek_messages(max_message_count=5, sequence_number=1) == []
        finally:
            _close_all([sender, receiver])
    code, took, stderr = _stop(proc, signal.SIGINT)
    assert (code, "Traceback" in stderr) == (0, False), stderr
    assert took < 5
    assert " DEBUG " in stderr  # -v
    assert "k3y" not in stderr  # the key is never logged


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--port", "x"], "--port: not an integer"),
        (["--port", "70000"], "port must be 0..65535"),
        (["--subscription", "no-slash"], "expected TOPIC/NAME"),
        (["--session-subscription", "a/b/c"], "expected TOPIC/NAME"),
        (["--lock-duration", "0"], "positive number of seconds"),
        (["--max-delivery-count", "0"], "at least 1"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--config", "/nonexistent/Config.json"], "Config.json: cannot read"),
        (["--queue", "a", "--session-queue", "A"], "'A' is declared twice (--queue and"),
        (["--subscription", "t/s", "--subscription", "t/s"], "'t/Subscriptions/s' is declared"),
        (["--tls-cert", "/nonexistent/cert.pem"], "no such certificate or key file"),
        (["--tls-port", "-1"], "port must be 0..65535"),
    ],
)
def test_bad_flags(args: list[str], expected: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sbsync.emulator", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert lines[0].startswith("python -m sbsync.emulator: error: ")


def test_tls(spawned: list[subprocess.Popen[str]]) -> None:
    """--tls-port and --tls-cert/--tls-key: TLS on the main port and on its own port."""
    ca, cert, key = development_pair()
    proc = _spawn("--port", "0", "--tls-port", "0", "--tls-cert", cert, "--tls-key", key)
    spawned.append(proc)
    port = int(_first_line(proc).split(";")[0].rsplit(":", 1)[1].rstrip("/"))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        context = ssl.create_default_context(cafile=ca)
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version()
    code, _, stderr = _stop(proc, signal.SIGTERM)
    assert code == 0, stderr
    assert "TLS only on 127.0.0.1:" in stderr
    assert f"TLS clients trust {cert}" in stderr


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """``main`` configures logging as a program does; undo that after in-process runs."""
    root = logging.getLogger()
    ours = [logging.getLogger(f"sbsync.emulator.{name}") for name in ("_cli", "_tls")]
    handlers, level, our_levels = root.handlers[:], root.level, [lg.level for lg in ours]
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for logger, our_level in zip(ours, our_levels):
        logger.setLevel(our_level)


def test_malformed_config_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    config = tmp_path / "Config.json"
    config.write_text(
        '{"UserConfig": {"Namespaces": [{"Queues": [{"Name": "q", '
        '"Properties": {"LockDuration": "one minute"}}]}]}}'
    )
    assert main(["--port", "0", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert "Queues[0].Properties.LockDuration: 'one minute' is not an ISO-8601 duration" in err


def test_port_in_use(capsys: pytest.CaptureFixture[str], restore_logging: None) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["--port", str(port)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert f"cannot start on 127.0.0.1:{port}" in err


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--session-queue", "--subscription", "--config", "--auto-create", "--key",
                 "--tls-port", "--tls-cert", "--tls-key", "--next-session-wait"):
        assert flag in out


def test_main_is_importable_without_side_effects() -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-c", "import sbsync.emulator.__main__, sys; print('ok')"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert result.stdout.strip() == "ok" and result.returncode == 0, result.stderr


def test_dev_key_defaults_match_the_core() -> None:
    from sbsync.emulator import DEFAULT_KEY, DEFAULT_KEY_NAME, _cli

    assert (_cli._DEV_KEY_NAME, _cli._DEV_KEY) == (DEFAULT_KEY_NAME, DEFAULT_KEY)


WITHOUT_PROTON = """
import sys
sys.modules["proton"] = None  # as if python-qpid-proton were not installed
from sbsync.emulator._cli import main
from sbsync.emulator._tls import development_pair
sys.exit(main(sys.argv[1:]))
"""


def test_without_proton() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", WITHOUT_PROTON, *args],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO,
        )

    assert run("--help").returncode == 0
    bad_flag = run("--port", "x")
    assert bad_flag.returncode == 2 and "not an integer" in bad_flag.stderr
    result = run("--port", "0")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert "pip install 'sbsync[emulator]'" in result.stderr


def test_tls_certificate_made_on_first_use(spawned: list[subprocess.Popen[str]]) -> None:
    """Without TLS flags the development CA is made when the first TLS client comes (an
    emulator nobody reaches over TLS does not pay for it), and its path is logged then."""
    proc = _spawn("--port", "0")
    spawned.append(proc)
    port = int(_first_line(proc).split(";")[0].rsplit(":", 1)[1].rstrip("/"))
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the path is not known yet: that is the point
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version()
    code, _, stderr = _stop(proc, signal.SIGTERM)
    assert code == 0, stderr
    assert "made (and its path logged) on the first TLS connection" in stderr
    assert "generated a development CA; clients trust /" in stderr
