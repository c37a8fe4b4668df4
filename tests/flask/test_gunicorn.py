"""The example app under a real gunicorn: 2 worker processes x 4 threads, with and without
``--preload``, a burst of concurrent HTTP requests over loopback, then SIGTERM."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from wsgi_servers import (
    CLIENTS,
    CUSTOMERS_PER_CLIENT,
    Gunicorn,
    Server,
    assert_exactly_once_in_order,
    closing_all,
    customers,
    drain,
    fire_orders,
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


@pytest.fixture
def orders_queue(emulator: Emulator) -> str:
    name = f"orders-{uuid.uuid4().hex[:8]}"
    emulator.create_entity(EntityConfig(name=name, requires_session=True))
    return name


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    with closing_all() as started:
        yield started


@pytest.mark.timeout(90)
@pytest.mark.parametrize("preload", [True, False], ids=["preload", "no-preload"])
def test_burst_under_gunicorn(
    preload: bool, servers: list[Server], emulator: Emulator, reader: sbsync.ServiceBusClient, orders_queue: str,
    tmp_path: Path,
) -> None:
    env = dict(os.environ)
    env.update(
        SERVICEBUS_CONNECTION_STR=emulator.connection_string,
        ORDERS_QUEUE=orders_queue,
        ORDERS_DEBUG_ENDPOINTS="1",
        ORDERS_PRELOAD="1" if preload else "0",
        PYTHONUNBUFFERED="1",
    )
    config = ["-c", str(EXAMPLE_DIR / "gunicorn.conf.py")]
    server = Gunicorn("app:create_app()", EXAMPLE_DIR, env, tmp_path / "gunicorn.log", WORKERS, THREADS, *config)
    servers.append(server)
    server.wait_serving(WORKERS)

    statuses, latencies = fire_orders(server, ORDERS)
    total = CLIENTS * CUSTOMERS_PER_CLIENT * len(ORDERS)
    assert len(statuses) == total
    assert [s for s in statuses if not 200 <= s < 300] == []
    print(f"\n[{'preload' if preload else 'no-preload'}] {total} POSTs, {CLIENTS} at a time: {summary(latencies)}")

    # Each worker process: one sbsync loop thread, whatever its number of request threads.
    reports = worker_reports(server, WORKERS, "/debug/threads")
    assert set(reports) == set(server.worker_pids()), reports
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
