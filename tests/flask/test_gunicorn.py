"""The example app under a real gunicorn: 2 worker processes x 4 threads, with and without
``--preload``, a burst of concurrent HTTP requests over loopback, then SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from gunicorn.config import Config

import sbsync
from sbsync.emulator import Emulator, EntityConfig

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "flask_app"

WORKERS = 2
THREADS = 4
CLIENTS = 20  # concurrent HTTP clients
CUSTOMERS_PER_CLIENT = 2
ORDERS_PER_CUSTOMER = 5  # 20 * 2 * 5 = 200 requests
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


def get(url: str) -> tuple[int, Any]:
    with urllib.request.urlopen(url, timeout=15) as response:
        return response.status, json.loads(response.read() or b"null")


def post(url: str, payload: dict[str, Any]) -> int:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


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


def fire_orders(server: Gunicorn) -> tuple[list[int], list[float]]:
    """CLIENTS threads; each posts its customers' orders alternately, each in sequence."""
    statuses: list[int] = []
    latencies: list[float] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        customers = [f"cust-{index}-{k}" for k in range(CUSTOMERS_PER_CLIENT)]
        for seq in range(ORDERS_PER_CUSTOMER):
            for customer in customers:
                started = time.perf_counter()
                status = post(server.url(f"/customers/{customer}/orders"), {"seq": seq, "amount": 1})
                elapsed = time.perf_counter() - started
                with lock:
                    statuses.append(status)
                    latencies.append(elapsed)

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client, range(CLIENTS)))
    return statuses, latencies


def worker_reports(server: Gunicorn) -> dict[int, dict[str, Any]]:
    """``/debug/threads`` from every worker: ask concurrently until both have answered."""
    reports: dict[int, dict[str, Any]] = {}
    with ThreadPoolExecutor(8) as pool:
        for _ in range(20):
            for status, report in pool.map(lambda _: get(server.url("/debug/threads")), range(16)):
                assert status == 200
                reports[report["pid"]] = report
            if len(reports) == WORKERS:
                break
    return reports


def drain(client: sbsync.ServiceBusClient, queue: str, customers: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Every message of every customer's session, completed, in the order received."""

    def one(customer: str) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        with client.get_queue_receiver(queue, session_id=customer, max_wait_time=1) as receiver:
            while True:
                batch = receiver.receive_messages(max_message_count=50, max_wait_time=1)
                if not batch:
                    return got
                for message in batch:
                    receiver.complete_message(message)
                    got.append(json.loads(b"".join(message.body)))

    with ThreadPoolExecutor(8) as pool:
        return dict(zip(customers, pool.map(one, customers)))


@pytest.mark.timeout(90)
@pytest.mark.parametrize("preload", [True, False], ids=["preload", "no-preload"])
def test_burst_under_gunicorn(
    preload: bool, gunicorn_factory: Any, emulator: Emulator, reader: sbsync.ServiceBusClient, orders_queue: str
) -> None:
    server = gunicorn_factory(preload)
    server.wait_ready()

    statuses, latencies = fire_orders(server)
    total = CLIENTS * CUSTOMERS_PER_CLIENT * ORDERS_PER_CUSTOMER
    assert len(statuses) == total
    assert [s for s in statuses if not 200 <= s < 300] == []
    latencies.sort()
    print(
        f"\n[{'preload' if preload else 'no-preload'}] {total} POSTs, {CLIENTS} at a time: "
        f"p50 {statistics.median(latencies) * 1000:.1f} ms, p95 {latencies[int(total * 0.95)] * 1000:.1f} ms, "
        f"max {latencies[-1] * 1000:.1f} ms"
    )

    # Each worker process: one sbsync loop thread, whatever its number of request threads.
    reports = worker_reports(server)
    assert set(reports) == server.worker_pids(), reports
    for report in reports.values():
        # With --preload the app and its client were made in the master, before the fork.
        assert (report["app_created_in_pid"] == server.proc.pid) is preload, report
        assert report["loop_threads"] == 1, report
        assert report["orders_sent"] > 0, report  # both workers served orders
    assert sum(r["orders_sent"] for r in reports.values()) == total

    # Exactly once, each customer's orders in its session in the order they were posted.
    assert emulator.stats(orders_queue).active == total
    customers = [f"cust-{i}-{k}" for i in range(CLIENTS) for k in range(CUSTOMERS_PER_CLIENT)]
    received = drain(reader, orders_queue, customers)
    for customer, orders in received.items():
        assert [o["seq"] for o in orders] == list(range(ORDERS_PER_CUSTOMER)), customer
        assert {o["customer_id"] for o in orders} == {customer}
    order_ids = [o["order_id"] for orders in received.values() for o in orders]
    assert len(set(order_ids)) == total
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
