"""The orders views: a sender per request, from the process's client."""

import json
import os
import re
import threading
import uuid

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from .servicebus import LOADED_IN, client

if os.environ.get("ORDERS_CLIENT") == "sdk":
    from azure.servicebus import ServiceBusMessage
else:
    from sbsync import ServiceBusMessage

_LOOP_THREAD = re.compile(r"sbsync-loop-\d+")
_sent = 0
_sent_lock = threading.Lock()


@csrf_exempt
@require_POST
def post_order(request: HttpRequest, customer_id: str) -> JsonResponse:
    global _sent
    order = json.loads(request.body)
    order_id = str(uuid.uuid4())
    body = json.dumps({**order, "order_id": order_id, "customer_id": customer_id, "pid": os.getpid()})
    with client.get_queue_sender(settings.ORDERS_QUEUE) as sender:
        sender.send_messages(ServiceBusMessage(body, session_id=customer_id, message_id=order_id), timeout=10)
    with _sent_lock:
        _sent += 1
    return JsonResponse({"order_id": order_id}, status=202)


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok", "pid": os.getpid()})


@require_GET
def debug(request: HttpRequest) -> JsonResponse:
    # Threads of this process only: after a C-level fork, threading still lists the parent's.
    here = {int(tid) for tid in os.listdir("/proc/self/task")}
    loops = [t for t in threading.enumerate() if _LOOP_THREAD.fullmatch(t.name) and t.native_id in here]
    return JsonResponse({"pid": os.getpid(), "loaded_in": LOADED_IN, "sent": _sent, "loop_threads": len(loops)})
