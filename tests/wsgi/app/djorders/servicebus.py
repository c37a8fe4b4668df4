"""The process's Service Bus client (docs/wsgi.rst, "Django"): created on first import, shared
by every thread, closed at exit. ``ORDERS_CLIENT=sdk`` swaps in the official sync SDK (the
benchmarks' reference)."""

import atexit
import os
import sys

from django.conf import settings

if os.environ.get("ORDERS_CLIENT") == "sdk":
    from azure.servicebus import ServiceBusClient
else:
    from sbsync import ServiceBusClient

LOADED_IN = os.getpid()

client = ServiceBusClient.from_connection_string(settings.SERVICEBUS_CONNECTION_STR)


def _close() -> None:
    client.close()
    print(f"orders: client closed in pid {os.getpid()} (loaded in {LOADED_IN})", file=sys.stderr, flush=True)


atexit.register(_close)
