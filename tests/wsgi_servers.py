"""Driving a real WSGI server (gunicorn, uWSGI) in tests: start it, load it with concurrent orders over HTTP,
ask each worker about itself, read back what reached the queue."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from gunicorn.config import Config

import sbsync
from sbsync.emulator import Emulator

APP_DIR = Path(__file__).resolve().parent / "wsgi" / "app"

#: Which clients the app runs with: sbsync always; ``SBSYNC_WSGI_COMPARE=1`` adds the official
#: sync SDK as the reference (slow: it opens a link per request), for the numbers in reports.
CLIENT_KINDS = ["sbsync", "sdk"] if os.environ.get("SBSYNC_WSGI_COMPARE") == "1" else ["sbsync"]

CLIENTS = 20  # concurrent HTTP clients
CUSTOMERS_PER_CLIENT = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str) -> tuple[int, Any]:
    with urllib.request.urlopen(url, timeout=15) as response:
        return response.status, json.loads(response.read() or b"null")


def post(url: str, payload: dict[str, Any]) -> int:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def app_env(emulator: Emulator, queue: str, client_kind: str) -> dict[str, str]:
    """The environment of app/orders.py (and app/djangoorders) for ``client_kind``."""
    env = dict(os.environ)
    env.update(
        # A host name, as in production: connecting then resolves it in a helper thread of the
        # client's loop (before the fork, with ORDERS_WARM=1), which a worker must not wait for.
        SERVICEBUS_CONNECTION_STR=emulator.connection_string.replace("127.0.0.1", "localhost"),
        ORDERS_QUEUE=queue,
        ORDERS_CLIENT=client_kind,
        # sbsync: a link open in the process that forks; the SDK is not fork-safe with one.
        ORDERS_WARM="1" if client_kind == "sbsync" else "0",
        PYTHONUNBUFFERED="1",
    )
    return env


class Server:
    """A server process whose output goes to a file; stopped by pid (its own and its workers')."""

    def __init__(self, command: Sequence[str], env: dict[str, str], log_path: Path, cwd: Path, port: int) -> None:
        self.log_path = log_path
        self.port = port
        self._log = open(log_path, "wb")  # closed by close()
        self.proc = subprocess.Popen(
            list(command), env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        """Every worker process started so far, in order (from the log)."""
        raise NotImplementedError

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_serving(self, workers: int, timeout: float = 60) -> None:
        """Until ``workers`` workers have been started in all and /healthz answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the server exited early:\n{self.log()}"
            if len(self.worker_pids()) >= workers:
                try:
                    if get(self.url("/healthz"))[0] == 200:
                        return
                except OSError:
                    pass
            time.sleep(0.1)
        raise AssertionError(f"the server did not come up:\n{self.log()}")

    def stop(self, sig: int, timeout: float) -> float:
        """Send ``sig`` and wait for the exit; how long it took."""
        sent = time.monotonic()
        self.proc.send_signal(sig)
        self.proc.wait(timeout)
        return time.monotonic() - sent

    def close(self) -> None:
        """Kill what still runs (a failed test: the master and the workers we know of)."""
        if self.proc.poll() is None:
            for pid in [self.proc.pid, *self.worker_pids()]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.wait(10)
        self._log.close()


class Gunicorn(Server):
    """``python -m gunicorn`` with gthread workers on a free loopback port."""

    def __init__(
        self, app: str, cwd: Path, env: dict[str, str], log_path: Path, workers: int, threads: int, *options: str
    ) -> None:
        port = free_port()
        command = [
            sys.executable, "-m", "gunicorn",
            "--workers", str(workers),
            "--worker-class", "gthread",
            "--threads", str(threads),
            "--bind", f"127.0.0.1:{port}",
            # gunicorn >= 24 opens a control socket under $HOME by default: not in tests.
            *(["--no-control-socket"] if "control_socket_disable" in Config().settings else []),
            *options,
            app,
        ]
        super().__init__(command, env, log_path, cwd, port)

    def worker_pids(self) -> list[int]:
        return [int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", self.log())]


@contextmanager
def closing_all() -> Iterator[list[Server]]:
    """A list for the servers a test starts; each is closed (killed if still running) after."""
    started: list[Server] = []
    try:
        yield started
    finally:
        for server in started:
            server.close()


def customers() -> list[str]:
    return [f"cust-{i}-{k}" for i in range(CLIENTS) for k in range(CUSTOMERS_PER_CLIENT)]


class _Served(Protocol):
    def url(self, path: str) -> str: ...


def fire_orders(server: _Served, seqs: range) -> tuple[list[int], list[float]]:
    """CLIENTS threads; each posts its customers' orders ``seqs`` alternately, in sequence."""
    statuses: list[int] = []
    latencies: list[float] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        mine = [f"cust-{index}-{k}" for k in range(CUSTOMERS_PER_CLIENT)]
        for seq in seqs:
            for customer in mine:
                started = time.perf_counter()
                status = post(server.url(f"/customers/{customer}/orders"), {"seq": seq, "amount": 1})
                elapsed = time.perf_counter() - started
                with lock:
                    statuses.append(status)
                    latencies.append(elapsed)

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client, range(CLIENTS)))
    return statuses, latencies


def summary(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {statistics.median(ordered) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms"


def worker_reports(server: _Served, workers: int, path: str = "/debug") -> dict[int, dict[str, Any]]:
    """``path`` (a report with the worker's ``pid``) from every worker: ask concurrently until
    each has answered."""
    reports: dict[int, dict[str, Any]] = {}
    with ThreadPoolExecutor(8) as pool:
        for _ in range(30):
            for status, report in pool.map(lambda _: get(server.url(path)), range(16)):
                assert status == 200
                reports[report["pid"]] = report
            if len(reports) == workers:
                break
    return reports


def drain(
    client: sbsync.ServiceBusClient, queue: str, sessions: list[str], expected: int
) -> dict[str, list[dict[str, Any]]]:
    """Each session's messages, completed, in the order received: until ``expected`` of them
    have come (then the caller checks that the queue is empty: no duplicate left behind)."""

    def one(session: str) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        with client.get_queue_receiver(queue, session_id=session, max_wait_time=5) as receiver:
            while len(got) < expected:
                batch = receiver.receive_messages(max_message_count=expected - len(got), max_wait_time=5)
                if not batch:
                    return got
                for message in batch:
                    receiver.complete_message(message)
                    got.append(json.loads(b"".join(message.body)))
        return got

    with ThreadPoolExecutor(16) as pool:
        return dict(zip(sessions, pool.map(one, sessions)))


def assert_exactly_once_in_order(received: dict[str, list[dict[str, Any]]], seqs: range) -> int:
    """Each customer's orders arrived once each, in the order posted; how many in all."""
    for customer, orders in received.items():
        assert [o["seq"] for o in orders] == list(seqs), customer
        assert {o["customer_id"] for o in orders} == {customer}
    order_ids = [o["order_id"] for orders in received.values() for o in orders]
    assert len(set(order_ids)) == len(order_ids)
    return len(order_ids)


def closed_in(log: str) -> set[int]:
    """The processes whose app logged that its client closed at exit (see app/orders.py)."""
    return {int(pid) for pid in re.findall(r"orders: client closed in pid (\d+)", log)}
