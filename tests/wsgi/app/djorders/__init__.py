"""A Django project following docs/wsgi.rst's recipe: the orders app of ``orders.py``."""
