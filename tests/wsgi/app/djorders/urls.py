from django.urls import path

from . import views

urlpatterns = [
    path("customers/<str:customer_id>/orders", views.post_order),
    path("healthz", views.healthz),
    path("debug", views.debug),
]
