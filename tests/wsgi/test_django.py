"""A Django project that follows docs/wsgi.rst's recipe (a module-level client from settings,
closed at exit; a sender per request) under a real gunicorn: 2 workers x 4 threads,
``--preload`` (the client is created in the master, before the fork), 200 concurrent
requests, then SIGTERM."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from wsgi_servers import (
    APP_DIR,
    CLIENT_KINDS,
    CLIENTS,
    CUSTOMERS_PER_CLIENT,
    Gunicorn,
    Server,
    app_env,
    assert_exactly_once_in_order,
    closed_in,
    closing_all,
    customers,
    drain,
    fire_orders,
    summary,
    worker_reports,
)

import sbsync
from sbsync.emulator import Emulator

pytestmark = pytest.mark.timeout(120)

WORKERS = 2
THREADS = 4
ORDERS = range(5)  # per customer: 20 clients x 2 customers x 5 = 200 requests


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    with closing_all() as started:
        yield started


@pytest.mark.parametrize("client_kind", CLIENT_KINDS)
def test_django_orders_under_gunicorn(
    client_kind: str, servers: list[Server], emulator: Emulator, reader: sbsync.ServiceBusClient,
    orders_queue: str, tmp_path: Path,
) -> None:
    label = f"django gunicorn --preload, {client_kind}"
    env = app_env(emulator, orders_queue, client_kind)
    server = Gunicorn("djorders.wsgi:application", APP_DIR, env, tmp_path / "gunicorn.log", WORKERS, THREADS,
                      "--preload", "--graceful-timeout", "10")
    servers.append(server)
    server.wait_serving(WORKERS)

    statuses, latencies = fire_orders(server, ORDERS)
    total = CLIENTS * CUSTOMERS_PER_CLIENT * len(ORDERS)
    ok = sum(200 <= s < 300 for s in statuses)
    print(f"\n[{label}] {ok}/{total} 2xx, {CLIENTS} at a time: {summary(latencies)}")
    assert ok == total, (statuses, server.log())

    reports = worker_reports(server, WORKERS)
    assert set(reports) == set(server.worker_pids()), (reports, server.log())
    for report in reports.values():
        assert report["loaded_in"] == server.proc.pid, report  # --preload: made in the master
        assert report["loop_threads"] == (1 if client_kind == "sbsync" else 0), report
        assert report["sent"] > 0, report
    assert sum(r["sent"] for r in reports.values()) == total

    # SIGTERM: gunicorn stops; each worker closes its client at exit.
    took = server.stop(signal.SIGTERM, 30)
    log = server.log()
    print(f"[{label}] SIGTERM to exit: {took:.2f} s")
    assert server.proc.returncode == 0, log
    assert closed_in(log) >= set(reports), log
    for bad in ("WORKER TIMEOUT", "SIGKILL", "Traceback"):
        assert bad not in log, log

    assert emulator.stats(orders_queue).active == total
    received = drain(reader, orders_queue, customers(), len(ORDERS))
    assert assert_exactly_once_in_order(received, ORDERS) == total
    stats = emulator.stats(orders_queue)
    assert (stats.active, stats.locked, stats.dead_letter) == (0, 0, 0)
