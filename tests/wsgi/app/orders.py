"""A WSGI app as legacy deployments write it: a module-level client, a sender per request.

``ORDERS_CLIENT=sdk`` makes it use the official sync SDK instead of sbsync (the reference in
benchmarks). ``ORDERS_WARM=1`` opens (and parks) a sender link while the module loads, so a
server that forks after loading (uWSGI's default, gunicorn ``--preload``) hands its workers a
live AMQP connection they must leave alone. Each process logs one line when its client closed
at exit, which the tests look for.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import sys
import threading
import uuid
from typing import Any

from flask import Flask, jsonify, request

if os.environ.get("ORDERS_CLIENT") == "sdk":
    from azure.servicebus import ServiceBusClient, ServiceBusMessage
else:
    from sbsync import ServiceBusClient, ServiceBusMessage

QUEUE = os.environ["ORDERS_QUEUE"]
LOADED_IN = os.getpid()

client = ServiceBusClient.from_connection_string(os.environ["SERVICEBUS_CONNECTION_STR"])
if os.environ.get("ORDERS_WARM") == "1":
    with client.get_queue_sender(QUEUE):
        pass

_LOOP_THREAD = re.compile(r"sbsync-loop-\d+")
_sent = 0
_sent_lock = threading.Lock()


def _close_client() -> None:
    client.close()
    # stderr, unbuffered: the server's log shows which processes closed their client.
    print(f"orders: client closed in pid {os.getpid()} (loaded in {LOADED_IN})", file=sys.stderr, flush=True)


atexit.register(_close_client)

app = Flask(__name__)


@app.post("/customers/<customer_id>/orders")
def post_order(customer_id: str) -> Any:
    global _sent
    order = request.get_json()
    order_id = str(uuid.uuid4())
    body = json.dumps({**order, "order_id": order_id, "customer_id": customer_id, "pid": os.getpid()})
    with client.get_queue_sender(QUEUE) as sender:
        sender.send_messages(ServiceBusMessage(body, session_id=customer_id, message_id=order_id), timeout=10)
    with _sent_lock:
        _sent += 1
    return jsonify(order_id=order_id), 202


@app.get("/healthz")
def healthz() -> Any:
    return jsonify(status="ok", pid=os.getpid())


@app.get("/debug")
def debug() -> Any:
    # Threads of this process only: after a C-level fork, threading still lists the parent's.
    here = {int(tid) for tid in os.listdir("/proc/self/task")}
    loops = [t for t in threading.enumerate() if _LOOP_THREAD.fullmatch(t.name) and t.native_id in here]
    return jsonify(pid=os.getpid(), loaded_in=LOADED_IN, sent=_sent, loop_threads=len(loops))
