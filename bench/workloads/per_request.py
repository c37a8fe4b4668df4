"""Issue 9's per-request patterns, as a web view written against the sync SDK does them with
one client for the process. Latency per request (p50/p99), sbsync vs the sync SDK.

``open_send_close``: a sender opened, used once and closed::

    with client.get_queue_sender(queue) as sender:
        sender.send_messages(message)

The sync SDK pays a link attach and detach every time (~0.5 s each: it reads the handshake one
frame per 50 ms poll, and its close waits for a keep-alive tick); sbsync parks the closed link
and the next ``get_queue_sender`` with the same arguments takes it over.

``session_state``: a session receiver opened to read one session's state, then closed (what
``sbsync.flask``'s ``get_session_state`` does)::

    with client.get_queue_receiver(queue, session_id=sid) as receiver:
        receiver.session.get_state()

A session link cannot be parked (it holds the session's lock), so both pay a link open and
close every time: sbsync at the pace of the broker's replies (hooks ``link-open`` and
``keep-alive-stop``).
"""

from __future__ import annotations

from typing import Any

import azure.servicebus as sync_sdk

import sbsync
from bench._harness import SBSYNC, SYNC, Context, Meter, Row, classify, interleave, latency_figure
from bench.workloads._common import SHORT_TTL, messages, timed

IMPLS = (SYNC, SBSYNC)
QUEUE = "bench-per-request"
SESSION_QUEUE = "bench-per-request-sessions"
EMULATOR_ARGS = ("--queue", QUEUE, "--session-queue", SESSION_QUEUE)


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


class _SessionStatePerRequest(_PerRequest):
    def _request(self) -> None:
        with self.client.get_queue_receiver(SESSION_QUEUE, session_id=f"{self._sdk.__name__}") as receiver:
            receiver.session.get_state()


def run(ctx: Context) -> list[Row]:
    requests, reps = ctx.pick((2, 2), (10, min(5, ctx.reps)))
    conn = ctx.emulator.conn_str
    rows = []
    for name, kind, what, note in (
        ("open_send_close", _PerRequest, "open sender, send 1, close",
         "sbsync reuses a parked link (warm links); the first request is excluded"),
        ("session_state", _SessionStatePerRequest, "open session receiver, get_state, close",
         "a new session link each request for both"),
    ):
        ctx.log(f"per_request: {reps} reps x {requests} requests ({what})")
        results = interleave(
            {SYNC: kind(sync_sdk, conn, requests), SBSYNC: kind(sbsync, conn, requests)},
            reps,
            ctx.emulator,
            ctx.log,
        )
        row = Row(
            "per_request",
            name,
            "ms",
            higher_is_better=False,
            figures={impl: latency_figure(samples) for impl, samples in results.items()},
            note=note,
        )
        row.bound = classify(row)
        rows.append(row)
    return rows
