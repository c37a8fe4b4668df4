"""The orders app (module-level client, a sender per request) under a real uWSGI: 2 workers x
4 threads in each of uWSGI's ways of loading an app, a burst of concurrent requests, a reload
(SIGTERM, or ``--touch-reload``) with more requests to the new workers, then SIGINT.

By default uWSGI loads the app in the master and forks at the C level, so no Python fork hook
runs in the workers: sbsync must notice the fork by itself (the process id).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from wsgi_servers import (
    APP_DIR,
    CLIENT_KINDS,
    CLIENTS,
    CUSTOMERS_PER_CLIENT,
    Server,
    app_env,
    assert_exactly_once_in_order,
    closed_in,
    closing_all,
    customers,
    drain,
    fire_orders,
    free_port,
    summary,
    worker_reports,
)

import sbsync
from sbsync.emulator import Emulator

UWSGI = shutil.which("uwsgi", path=str(Path(sys.executable).parent)) or shutil.which("uwsgi")

pytestmark = [
    pytest.mark.skipif(
        UWSGI is None,
        reason="uwsgi is not installed (the 'test' extra builds it from source: it needs a C compiler "
        "and the Python headers)",
    ),
    pytest.mark.timeout(120),
]

WORKERS = 2
THREADS = 4
FIRST = range(5)  # orders per customer before the reload: 20 clients x 2 customers x 5 = 200
SECOND = range(5, 6)  # and after it: 40 more, served by the new workers

#: uWSGI's ways of loading the app: in the master before forking (its default), in each
#: worker after forking, or in the master with Python's fork hooks called in the workers.
MODES = {
    "default": [],
    "lazy-apps": ["--lazy-apps"],
    "py-call-osafterfork": ["--py-call-osafterfork"],
}
#: How a mode's test reloads: SIGTERM makes uWSGI reload (not exit); so does touching the file.
#: (A reload with py-call-osafterfork is the default mode's plus Python's fork hooks: not repeated.)
RELOADS = {"default": "SIGTERM", "lazy-apps": "touch"}


class Uwsgi(Server):
    def __init__(self, mode: str, env: dict[str, str], tmp_path: Path) -> None:
        self.touch_file = tmp_path / "reload.touch"
        self.touch_file.touch()
        port = free_port()
        self.stats_port = free_port()
        command = [
            str(UWSGI),
            "--master",
            "--processes", str(WORKERS),
            "--threads", str(THREADS),
            "--enable-threads",
            "--http-socket", f"127.0.0.1:{port}",
            "--module", "orders:app",
            "--touch-reload", str(self.touch_file),
            "--worker-reload-mercy", "10",
            "--disable-logging",  # no line per request
            "--stats", f"127.0.0.1:{self.stats_port}",  # for wait_idle()
            *MODES[mode],
        ]
        super().__init__(command, env, tmp_path / "uwsgi.log", APP_DIR, port)

    def worker_pids(self) -> list[int]:
        """Every worker spawned so far, in order."""
        return [int(pid) for pid in re.findall(r"spawned uWSGI worker \d+ \(pid: (\d+)", self.log())]

    def wait_idle(self, timeout: float = 30) -> None:
        """Until the stats server reports every worker idle. uWSGI skips a worker's atexit hooks
        (the app's ``client.close()``) if the worker is busy when told to exit, and a worker
        still counts as busy for a moment after its last response went out: a signal sent then
        would make a worker skip the close these tests look for."""
        deadline = time.monotonic() + timeout
        while True:
            with socket.create_connection(("127.0.0.1", self.stats_port), timeout=5) as sock:
                raw = b"".join(iter(lambda: sock.recv(65536), b""))
            statuses = [worker["status"] for worker in json.loads(raw)["workers"]]
            if all(status == "idle" for status in statuses):
                return
            assert time.monotonic() < deadline, (statuses, self.log())
            time.sleep(0.05)


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    with closing_all() as started:
        yield started


def check_burst(server: Uwsgi, seqs: range, label: str) -> dict[int, dict[str, Any]]:
    statuses, latencies = fire_orders(server, seqs)
    total = CLIENTS * CUSTOMERS_PER_CLIENT * len(seqs)
    ok = sum(200 <= s < 300 for s in statuses)
    print(f"\n[{label}] {ok}/{total} 2xx, {CLIENTS} at a time: {summary(latencies)}")
    assert ok == total, (statuses, server.log())
    reports = worker_reports(server, WORKERS)
    assert len(reports) == WORKERS, reports
    return reports


@pytest.mark.parametrize("client_kind", CLIENT_KINDS)
@pytest.mark.parametrize("mode", list(MODES))
def test_orders_under_uwsgi(
    mode: str, client_kind: str, servers: list[Server], emulator: Emulator, reader: sbsync.ServiceBusClient,
    orders_queue: str, tmp_path: Path,
) -> None:
    label = f"uwsgi {mode}, {client_kind}"
    server = Uwsgi(mode, app_env(emulator, orders_queue, client_kind), tmp_path)
    servers.append(server)
    server.wait_serving(WORKERS)
    master = server.proc.pid

    reports = check_burst(server, FIRST, label)
    first_workers = set(reports)
    assert first_workers == set(server.worker_pids()), (reports, server.log())
    for report in reports.values():
        # Loaded in the master before the fork, except with --lazy-apps.
        assert report["loaded_in"] == (report["pid"] if mode == "lazy-apps" else master), report
        assert report["loop_threads"] == (1 if client_kind == "sbsync" else 0), report
        assert report["sent"] > 0, report  # both workers served orders
    assert sum(r["sent"] for r in reports.values()) == CLIENTS * CUSTOMERS_PER_CLIENT * len(FIRST)

    # Reload: the old workers close their clients and exit; new ones serve.
    seqs = FIRST
    reload = RELOADS.get(mode)
    if reload is not None:
        server.wait_idle()
        if reload == "SIGTERM":
            server.proc.send_signal(signal.SIGTERM)
        else:
            os.utime(server.touch_file)
        server.wait_serving(2 * WORKERS)
        assert closed_in(server.log()) >= first_workers, server.log()
        reports = check_burst(server, SECOND, f"{label}, after {reload} reload")
        assert set(reports) == set(server.worker_pids()[WORKERS:]), (reports, server.log())
        assert not set(reports) & first_workers
        seqs = range(FIRST.start, SECOND.stop)

    # SIGINT: uWSGI stops, each worker closing its client first.
    server.wait_idle()
    took = server.stop(signal.SIGINT, 30)
    log = server.log()
    print(f"[{label}] SIGINT to exit: {took:.2f} s")
    assert "goodbye to uWSGI" in log, log
    assert closed_in(log) >= set(reports), log
    assert "Traceback" not in log, log

    # Exactly once, each customer's orders in its session in the order they were posted.
    total = CLIENTS * CUSTOMERS_PER_CLIENT * len(seqs)
    assert emulator.stats(orders_queue).active == total
    received = drain(reader, orders_queue, customers(), len(seqs))
    assert assert_exactly_once_in_order(received, seqs) == total
    stats = emulator.stats(orders_queue)
    assert (stats.active, stats.locked, stats.dead_letter) == (0, 0, 0)
