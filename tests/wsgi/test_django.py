"""A Django project that follows docs/wsgi.rst's recipe (a module-level client from settings,
closed at exit; a sender per request) under a real gunicorn: 2 workers x 4 threads,
``--preload`` (the client is created in the master, before the fork), 200 concurrent
requests, then SIGTERM."""

from __future__ import annotations

import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gunicorn.config import Config
from wsgi_servers import (
    APP_DIR,
    CLIENT_KINDS,
    CLIENTS,
    CUSTOMERS_PER_CLIENT,
    Server,
    app_env,
    assert_exactly_once_in_order,
    closed_in,
    customers,
    drain,
    fire_orders,
    free_port,
    summary,
    worker_reports,
)

import sbsync
from sbsync.emulator import Emulator

pytestmark = pytest.mark.timeout(120)

WORKERS = 2
THREADS = 4
ORDERS = range(5)  # per customer: 20 clients x 2 customers x 5 = 200 requests


class Gunicorn(Server):
    def __init__(self, env: dict[str, str], tmp_path: Path) -> None:
        port = free_port()
        command = [
            sys.executable, "-m", "gunicorn",
            "--workers", str(WORKERS),
            "--worker-class", "gthread",
            "--threads", str(THREADS),
            "--preload",
            "--graceful-timeout", "10",
            "--bind", f"127.0.0.1:{port}",
            # gunicorn >= 24 opens a control socket under $HOME by default: not in tests.
            *(["--no-control-socket"] if "control_socket_disable" in Config().settings else []),
            "djorders.wsgi:application",
        ]
        super().__init__(command, env, tmp_path / "gunicorn.log", APP_DIR, port)

    def worker_pids(self) -> list[int]:
        return [int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", self.log())]


@pytest.fixture
def gunicorn_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[Gunicorn] = []

    def start(env: dict[str, str]) -> Gunicorn:
        server = Gunicorn(env, tmp_path)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.kill(server.worker_pids())
        server.close()


@pytest.mark.parametrize("client_kind", CLIENT_KINDS)
def test_django_orders_under_gunicorn(
    client_kind: str, gunicorn_factory: Any, emulator: Emulator, reader: sbsync.ServiceBusClient, orders_queue: str
) -> None:
    label = f"django gunicorn --preload, {client_kind}"
    server = gunicorn_factory(app_env(emulator, orders_queue, client_kind))
    server.wait_serving(lambda: len(server.worker_pids()) == WORKERS)

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
