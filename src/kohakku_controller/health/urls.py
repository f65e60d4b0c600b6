"""Liveness and readiness probes; mount at the site root: ``path("", include(...))``."""

from django.urls import path

from .views import HealthView, ReadyView

app_name = "kohakku_health"

urlpatterns = [
    path("health/", HealthView.as_view(), name="health"),
    path("ready/", ReadyView.as_view(), name="ready"),
]
