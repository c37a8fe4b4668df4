"""The orders worker: processes each customer's orders in order, one session per customer.

A :class:`sbsync.processor.SessionProcessor` takes customers' sessions from the queue; for each
order it updates the customer's session state (a JSON summary the web app shows) before the
order is completed. Two workers never hold the same customer at once, so the read-modify-write
of the state needs no lock of its own.

Run it next to the web app::

    export SERVICEBUS_CONNECTION_STR='Endpoint=sb://...'
    python worker.py            # Ctrl-C or SIGTERM stops it after the order in hand

Without Python, ``sbsync consume orders --next-session --exec ./process-order.sh`` runs a
command per order instead (the order on stdin, its session id in ``SBSYNC_SESSION_ID``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from typing import Any

from sbsync import ServiceBusClient, ServiceBusReceivedMessage
from sbsync.processor import SessionContext, SessionProcessor

_log = logging.getLogger("orders.worker")


def order_of(message: ServiceBusReceivedMessage) -> dict[str, Any]:
    """The order a message carries (the web app sends it as JSON)."""
    return json.loads(b"".join(message.body))


def handle_order(message: ServiceBusReceivedMessage, context: SessionContext) -> None:
    """Record one order in its customer's session state."""
    order = order_of(message)
    raw = context.session.get_state()
    summary = json.loads(raw) if raw else {"orders": 0, "total": 0}
    summary["orders"] += 1
    summary["total"] += order.get("amount", 0)
    summary["last_order_id"] = order["order_id"]
    context.session.set_state(json.dumps(summary))
    _log.info("customer %s: order %s (%d so far)", context.session_id, order["order_id"], summary["orders"])


def build_processor(client: ServiceBusClient, queue_name: str, concurrency: int = 4) -> SessionProcessor:
    """A processor for the orders queue: ``concurrency`` customers at a time."""
    return SessionProcessor(
        client,
        queue_name=queue_name,
        handler=handle_order,
        max_concurrent_sessions=concurrency,
        session_idle_timeout=2.0,
    )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)  # the SDK's link chatter
    conn_str = os.environ["SERVICEBUS_CONNECTION_STR"]
    queue_name = os.environ.get("ORDERS_QUEUE", "orders")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with ServiceBusClient.from_connection_string(conn_str) as client:
        processor = build_processor(client, queue_name)
        processor.start()
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        processor.stop()


if __name__ == "__main__":
    main()
