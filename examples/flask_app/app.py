"""Orders service: a Flask app that queues each customer's orders in that customer's session.

``POST /customers/<customer_id>/orders`` (a JSON object) puts the order on the
session-enabled queue ``ORDERS_QUEUE`` with ``session_id = customer_id``, so the worker
(``worker.py``) processes one customer's orders one at a time, in the order they were posted.
``GET /customers/<customer_id>`` shows what the worker has recorded in that session's state.

Run it (from this directory, with an emulator or a real namespace)::

    export SERVICEBUS_CONNECTION_STR='Endpoint=sb://...'
    gunicorn -c gunicorn.conf.py 'app:create_app()'
"""

from __future__ import annotations

import json
import os
import re
import threading
import uuid
from typing import Any

from azure.servicebus.exceptions import OperationTimeoutError, SessionCannotBeLockedError
from flask import Flask, abort, jsonify, request

from sbsync.flask import ServiceBus

servicebus = ServiceBus()

_LOOP_THREAD = re.compile(r"sbsync-loop-\d+")


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """The app; ``config`` overrides what comes from the environment (tests)."""
    app = Flask(__name__)
    app.config.update(
        SERVICEBUS_CONNECTION_STR=os.environ.get("SERVICEBUS_CONNECTION_STR"),
        SERVICEBUS_TIMEOUT=float(os.environ.get("SERVICEBUS_TIMEOUT", "10")),
        ORDERS_QUEUE=os.environ.get("ORDERS_QUEUE", "orders"),
        DEBUG_ENDPOINTS=os.environ.get("ORDERS_DEBUG_ENDPOINTS") == "1",
    )
    app.config.update(config or {})
    servicebus.init_app(app)
    counters = _Counters()
    created_in = os.getpid()  # under gunicorn --preload: the master, before the fork

    @app.post("/customers/<customer_id>/orders")
    def post_order(customer_id: str) -> Any:
        order = request.get_json(silent=True)
        if not isinstance(order, dict):
            abort(400, "The order must be a JSON object.")
        order_id = str(uuid.uuid4())
        servicebus.send(
            {**order, "order_id": order_id, "customer_id": customer_id},
            queue_name=app.config["ORDERS_QUEUE"],
            session_id=customer_id,
            message_id=order_id,
        )
        counters.add_sent()
        return jsonify(order_id=order_id), 202

    @app.get("/customers/<customer_id>")
    def customer(customer_id: str) -> Any:
        try:
            state = servicebus.get_session_state(customer_id, queue_name=app.config["ORDERS_QUEUE"])
        except SessionCannotBeLockedError:
            # The worker held this customer's session for all of SERVICEBUS_TIMEOUT (the SDK
            # retries meanwhile): the state is moving.
            return _retry_later("orders of this customer are being processed", 409)
        except OperationTimeoutError:
            return _retry_later("Service Bus did not answer in time", 503)
        if state is None:
            return jsonify(customer_id=customer_id, orders=0), 200
        return jsonify(customer_id=customer_id, **json.loads(state)), 200

    @app.get("/healthz")
    def healthz() -> Any:
        return jsonify(status="ok"), 200

    if app.config["DEBUG_ENDPOINTS"]:

        @app.get("/debug/threads")
        def debug_threads() -> Any:
            # For the tests (and curious operators): how many sbsync loops this worker runs.
            names = [t.name for t in threading.enumerate()]
            return jsonify(
                pid=os.getpid(),
                app_created_in_pid=created_in,
                loop_threads=sum(1 for n in names if _LOOP_THREAD.fullmatch(n)),
                threads=names,
                orders_sent=counters.sent,
            )

    return app


def _retry_later(error: str, status: int) -> Any:
    response = jsonify(error=error)
    response.headers["Retry-After"] = "2"
    return response, status


class _Counters:
    """Per-process counters for the debug endpoint."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sent = 0

    def add_sent(self) -> None:
        with self._lock:
            self.sent += 1
