import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djorders.settings")

application = get_wsgi_application()
# Import the views (and so the client) now: under gunicorn --preload, in the master.
from . import urls  # noqa: E402,F401
