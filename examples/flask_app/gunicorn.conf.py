"""gunicorn settings for the orders app: ``gunicorn -c gunicorn.conf.py 'app:create_app()'``.

sbsync needs no hooks here: its client is fork-safe, so ``preload_app`` is safe (each
worker builds its own event-loop thread and connection on first use, and closes them when it
exits), and there is no ``post_fork``/``worker_exit`` to write.
"""

import os

bind = os.environ.get("ORDERS_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("ORDERS_WORKERS", "2"))
# Threads share the worker's one sbsync client and its one sender per queue (gthread worker).
worker_class = "gthread"
threads = int(os.environ.get("ORDERS_THREADS", "4"))
# Sends block a thread for about a millisecond; a view waits at most SERVICEBUS_TIMEOUT (10 s).
timeout = 30
# On SIGTERM, requests in flight may finish; sbsync then closes its links (milliseconds).
graceful_timeout = 10
preload_app = os.environ.get("ORDERS_PRELOAD", "1") == "1"
