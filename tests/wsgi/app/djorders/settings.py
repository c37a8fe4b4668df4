"""Settings: only what the orders view needs (no database, no sessions, no admin)."""

import os

SECRET_KEY = "test-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "djorders.urls"
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

# Service Bus (see djorders/servicebus.py)
SERVICEBUS_CONNECTION_STR = os.environ["SERVICEBUS_CONNECTION_STR"]
ORDERS_QUEUE = os.environ.get("ORDERS_QUEUE", "orders")
