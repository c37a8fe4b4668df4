"""Issue 9's per-request pattern: a sender opened, used once and closed for every request.

    with client.get_queue_sender(queue) as sender:
        sender.send_messages(message)

as a web view written against the sync SDK does it, with one client for the process. Latency
per request (p50/p99), sbsync vs the sync SDK. The sync SDK pays a link attach and detach
every time (~0.5 s each, client-side polling); sbsync parks the closed link and the next
``get_queue_sender`` with the same arguments takes it over.
"""

from __future__ import annotations

from typing import Any

import azure.servicebus as sync_sdk

import sbsync
from bench._harness import SBSYNC, SYNC, Context, Meter, Row, classify, interleave, latency_figure
from bench.workloads._common import SHORT_TTL, messages, timed

IMPLS = (SYNC, SBSYNC)
QUEUE = "bench-per-request"
EMULATOR_ARGS = ("--queue", QUEUE)


class _PerRequest:
    def __init__(self, sdk: Any, conn_str: str, requests: int) -> None:
        self._sdk, self._conn_str, self._requests = sdk, conn_str, requests

    def setup(self) -> None:
        self.client = self._sdk.ServiceBusClient.from_connection_string(self._conn_str)
        self._request()  # the first request of a process (sbsync: nothing warm yet) is not timed

    def _request(self) -> None:
        with self.client.get_queue_sender(QUEUE) as sender:
            sender.send_messages(messages(1, ttl=SHORT_TTL)[0])

    def rep(self, meter: Meter) -> dict[str, Any]:
        with meter.timing():
            samples = timed(self._request, self._requests)
        meter.sample()
        return {"latency": samples}

    def teardown(self) -> None:
        self.client.close()


def run(ctx: Context) -> list[Row]:
    requests, reps = ctx.pick((2, 2), (10, min(5, ctx.reps)))
    conn = ctx.emulator.conn_str
    ctx.log(f"per_request: {reps} reps x {requests} requests (open sender, send 1, close)")
    results = interleave(
        {
            SYNC: _PerRequest(sync_sdk, conn, requests),
            SBSYNC: _PerRequest(sbsync, conn, requests),
        },
        reps,
        ctx.emulator,
        ctx.log,
    )
    row = Row(
        "per_request",
        "open_send_close",
        "ms",
        higher_is_better=False,
        figures={name: latency_figure(reps) for name, reps in results.items()},
        note="sbsync reuses a parked link (warm links); the first request is excluded",
    )
    row.bound = classify(row)
    return [row]
