"""The example app under a real gunicorn: 2 worker processes x 4 threads, with and without
``--preload``, a burst of concurrent HTTP requests over loopback, then SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gunicorn.config import Config
from wsgi_servers import (
    CLIENTS,
    CUSTOMERS_PER_CLIENT,
    assert_exactly_once_in_order,
    customers,
    drain,
    fire_orders,
    get,
    summary,
    worker_reports,
)

import sbsync
from sbsync.emulator import Emulator, EntityConfig

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "flask_app"

WORKERS = 2
THREADS = 4
ORDERS = range(5)  # per customer: 20 clients x 2 customers x 5 = 200 requests
SHUTDOWN_LIMIT = 5.0


class Gunicorn:
    """A gunicorn master serving the example app; its log goes to a file we read."""

    def __init__(self, log_path: Path, env: dict[str, str], preload: bool) -> None:
        command = [
            sys.executable, "-m", "gunicorn",
            "-c", str(EXAMPLE_DIR / "gunicorn.conf.py"),
            "--chdir", str(EXAMPLE_DIR),
            "-b", "127.0.0.1:0",  # the master binds a free port and logs it
            "-w", str(WORKERS),
            "--threads", str(THREADS),
            *(["--preload"] if preload else []),
            # gunicorn >= 24 opens a control socket under $HOME by default: not in tests.
            *(["--no-control-socket"] if "control_socket_disable" in Config().settings else []),
            "app:create_app()",
        ]
        self.log_path = log_path
        self._log = open(log_path, "wb")  # closed by close_log()
        self.proc = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.port = 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> set[int]:
        return {int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", self.log())}

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"gunicorn exited early:\n{self.log()}"
            found = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", self.log())
            if found and len(self.worker_pids()) == WORKERS:
                self.port = int(found.group(1))
                try:
                    if get(self.url("/healthz"))[0] == 200:
                        return
                except OSError:
                    pass
            time.sleep(0.1)
        raise AssertionError(f"gunicorn did not come up:\n{self.log()}")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def kill(self) -> None:
        """Last resort (a failed test): the master and the workers we know of, by pid."""
        for pid in [self.proc.pid, *self.worker_pids()]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)

    def close_log(self) -> None:
        self._log.close()


@pytest.fixture
def orders_queue(emulator: Emulator) -> str:
    name = f"orders-{uuid.uuid4().hex[:8]}"
    emulator.create_entity(EntityConfig(name=name, requires_session=True))
    return name


@pytest.fixture
def gunicorn_factory(tmp_path: Path, conn_str: str, orders_queue: str) -> Iterator[Any]:
    started: list[Gunicorn] = []

    def start(preload: bool) -> Gunicorn:
        env = dict(os.environ)
        env.update(
            SERVICEBUS_CONNECTION_STR=conn_str,
            ORDERS_QUEUE=orders_queue,
            ORDERS_DEBUG_ENDPOINTS="1",
            ORDERS_PRELOAD="1" if preload else "0",
            PYTHONUNBUFFERED="1",
        )
        server = Gunicorn(tmp_path / "gunicorn.log", env, preload)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.kill()
        server.close_log()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("preload", [True, False], ids=["preload", "no-preload"])
def test_burst_under_gunicorn(
    preload: bool, gunicorn_factory: Any, emulator: Emulator, reader: sbsync.ServiceBusClient, orders_queue: str
) -> None:
    server = gunicorn_factory(preload)
    server.wait_ready()

    statuses, latencies = fire_orders(server, ORDERS)
    total = CLIENTS * CUSTOMERS_PER_CLIENT * len(ORDERS)
    assert len(statuses) == total
    assert [s for s in statuses if not 200 <= s < 300] == []
    print(f"\n[{'preload' if preload else 'no-preload'}] {total} POSTs, {CLIENTS} at a time: {summary(latencies)}")

    # Each worker process: one sbsync loop thread, whatever its number of request threads.
    reports = worker_reports(server, WORKERS, "/debug/threads")
    assert set(reports) == server.worker_pids(), reports
    for report in reports.values():
        # With --preload the app and its client were made in the master, before the fork.
        assert (report["app_created_in_pid"] == server.proc.pid) is preload, report
        assert report["loop_threads"] == 1, report
        assert report["orders_sent"] > 0, report  # both workers served orders
    assert sum(r["orders_sent"] for r in reports.values()) == total

    # Exactly once, each customer's orders in its session in the order they were posted.
    assert emulator.stats(orders_queue).active == total
    received = drain(reader, orders_queue, customers(), len(ORDERS))
    assert assert_exactly_once_in_order(received, ORDERS) == total
    stats = emulator.stats(orders_queue)
    assert (stats.active, stats.locked, stats.dead_letter) == (0, 0, 0)

    # SIGTERM: the master and both workers are gone within the limit, none killed or hung.
    sent = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(SHUTDOWN_LIMIT + 5)
    took = time.monotonic() - sent
    log = server.log()
    assert took < SHUTDOWN_LIMIT, f"gunicorn took {took:.1f} s to stop:\n{log}"
    assert server.proc.returncode == 0, log
    for pid in reports:
        assert f"Worker exiting (pid: {pid})" in log
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    for bad in ("WORKER TIMEOUT", "SIGKILL", "Traceback", "Exception"):
        assert bad not in log, log
    print(f"[{'preload' if preload else 'no-preload'}] SIGTERM to exit: {took:.2f} s")
