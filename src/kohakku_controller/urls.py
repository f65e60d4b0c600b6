"""URL patterns of the controller's API.

Mount the API with ``path("api/v1/", include("kohakku_controller.urls"))`` and the probes
with ``path("", include("kohakku_controller.health.urls"))``. Hosts that want only part of
the API can include one of the pattern lists below instead, e.g.
``include((schema_urlpatterns, "kohakku_controller"))``; hosts that extend a viewset mount
``build_urlpatterns({"task": TheirTaskViewSet})`` the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.urls import URLPattern, URLResolver, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.permissions import AllowAny
from rest_framework.routers import SimpleRouter
from rest_framework.viewsets import ViewSetMixin

from .dispatchers.views import DispatcherViewSet
from .skills import views as skill_views
from .tasks.views import TaskCallbackView, TaskResultUploadView, TaskViewSet
from .webhooks.views import DeliveryViewSet, WebhookIngestView
from .workflows.views import WorkflowViewSet

app_name = "kohakku_controller"


class SwaggerUIView(SpectacularSwaggerView):
    """Swagger UI served from bundled static files, so it renders without internet access."""

    # An HTML page has no OPTIONS metadata to give (its template renderer has no template
    # for one): OPTIONS answers 405.
    metadata_class = None

    @staticmethod
    def _swagger_ui_resource(filename: str) -> str:
        from django.templatetags.static import static

        return static(f"drf_spectacular_sidecar/swagger-ui-dist/{filename}")

    @staticmethod
    def _swagger_ui_favicon() -> str:
        from django.templatetags.static import static

        return static("drf_spectacular_sidecar/swagger-ui-dist/favicon-32x32.png")


#: (URL prefix, basename, viewset) of every viewset, in the order URLs are tried. Dispatchers
#: come first: their heartbeat is the most frequent request, and no pattern of another prefix
#: can match a dispatcher's URL.
VIEWSET_ROUTES: list[tuple[str, str, type[ViewSetMixin]]] = [
    ("dispatchers", "dispatcher", DispatcherViewSet),
    (r"skills/(?P<skill_slug>[^/.]+)/versions", "skill-version", skill_views.SkillVersionViewSet),
    ("skills", "skill", skill_views.SkillViewSet),
    ("tasks", "task", TaskViewSet),
    ("workflows", "workflow", WorkflowViewSet),
    ("webhooks/deliveries", "delivery", DeliveryViewSet),
]


def build_router(viewsets: Mapping[str, type[ViewSetMixin]] | None = None) -> SimpleRouter:
    """A router of the controller's viewsets, with some replaced: ``viewsets`` maps a
    basename (``"task"``, ``"skill-version"`` …) to the viewset to use there, usually a
    subclass of the controller's own. URL names stay the same, so everything that reverses
    them (links, the scheduler's callback URLs) keeps working."""
    viewsets = dict(viewsets or {})
    unknown = sorted(set(viewsets) - {basename for _, basename, _ in VIEWSET_ROUTES})
    if unknown:
        known = ", ".join(basename for _, basename, _ in VIEWSET_ROUTES)
        raise ImproperlyConfigured(f"No controller viewset is named {unknown}; known: {known}.")
    router = SimpleRouter()
    for prefix, basename, viewset in VIEWSET_ROUTES:
        router.register(prefix, viewsets.get(basename, viewset), basename=basename)
    return router


router = build_router()

webhook_urlpatterns: list[URLPattern | URLResolver] = [
    path("webhooks/", WebhookIngestView.as_view(), name="webhook-ingest"),
]


def _schema_view_options() -> dict[str, Any]:
    """How the OpenAPI document and Swagger UI are served: without the host's default
    throttles and versioning, and, unless the host set drf-spectacular's
    ``SERVE_PERMISSIONS`` or ``SERVE_AUTHENTICATION``, open and reading no credential (with
    DRF's default authentication it would take HTTP Basic, and answer whether any user's
    password is right, unthrottled)."""
    options: dict[str, Any] = {"throttle_classes": [], "versioning_class": None}
    chosen = getattr(settings, "SPECTACULAR_SETTINGS", {})
    if "SERVE_PERMISSIONS" not in chosen and "SERVE_AUTHENTICATION" not in chosen:
        options.update(authentication_classes=[], permission_classes=[AllowAny])
    return options


schema_urlpatterns: list[URLPattern | URLResolver] = [
    path("schema/", SpectacularAPIView.as_view(**_schema_view_options()), name="schema"),
    path(
        "docs/",
        SwaggerUIView.as_view(url_name="kohakku_controller:schema", **_schema_view_options()),
        name="docs",
    ),
]

task_urlpatterns: list[URLPattern | URLResolver] = [
    path("tasks/<uuid:guid>/callback/", TaskCallbackView.as_view(), name="task-callback"),
    path(
        "tasks/<uuid:guid>/result/upload/",
        TaskResultUploadView.as_view(),
        name="task-result-upload",
    ),
]


def build_urlpatterns(
    viewsets: Mapping[str, type[ViewSetMixin]] | None = None,
) -> list[URLPattern | URLResolver]:
    """The whole API, with the viewsets ``viewsets`` names replaced (see ``build_router``).
    Mount it under the ``kohakku_controller`` namespace::

        path("api/v1/", include((build_urlpatterns({"task": TeamTaskViewSet}), app_name)))
    """
    return [
        *task_urlpatterns,
        *build_router(viewsets).urls,
        *webhook_urlpatterns,
        *schema_urlpatterns,
    ]


urlpatterns = build_urlpatterns()
