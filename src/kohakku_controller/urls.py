"""URL patterns of the controller's API.

Mount the API with ``path("api/v1/", include("kohakku_controller.urls"))`` and the probes
with ``path("", include("kohakku_controller.health.urls"))``. Hosts that want only part of
the API can include one of the pattern lists below instead, e.g.
``include((schema_urlpatterns, "kohakku_controller"))``.
"""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import SimpleRouter

from .dispatchers.views import DispatcherViewSet
from .skills import views as skill_views
from .tasks.views import TaskCallbackView, TaskResultUploadView, TaskViewSet
from .webhooks.views import DeliveryViewSet, WebhookIngestView
from .workflows.views import WorkflowViewSet

app_name = "kohakku_controller"


class SwaggerUIView(SpectacularSwaggerView):
    """Swagger UI served from bundled static files, so it renders without internet access."""

    @staticmethod
    def _swagger_ui_resource(filename: str) -> str:
        from django.templatetags.static import static

        return static(f"drf_spectacular_sidecar/swagger-ui-dist/{filename}")

    @staticmethod
    def _swagger_ui_favicon() -> str:
        from django.templatetags.static import static

        return static("drf_spectacular_sidecar/swagger-ui-dist/favicon-32x32.png")


router = SimpleRouter()
# Dispatchers first: their heartbeat is the most frequent request, and URL resolution tries
# the patterns in order (no pattern of another prefix can match a dispatcher's URL).
router.register("dispatchers", DispatcherViewSet, basename="dispatcher")
router.register(
    r"skills/(?P<skill_slug>[^/.]+)/versions",
    skill_views.SkillVersionViewSet,
    basename="skill-version",
)
router.register("skills", skill_views.SkillViewSet, basename="skill")
router.register("tasks", TaskViewSet, basename="task")
router.register("workflows", WorkflowViewSet, basename="workflow")
router.register("webhooks/deliveries", DeliveryViewSet, basename="delivery")

webhook_urlpatterns: list[URLPattern | URLResolver] = [
    path("webhooks/", WebhookIngestView.as_view(), name="webhook-ingest"),
]

schema_urlpatterns: list[URLPattern | URLResolver] = [
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SwaggerUIView.as_view(url_name="kohakku_controller:schema"), name="docs"),
]

task_urlpatterns: list[URLPattern | URLResolver] = [
    path("tasks/<uuid:guid>/callback/", TaskCallbackView.as_view(), name="task-callback"),
    path(
        "tasks/<uuid:guid>/result/upload/",
        TaskResultUploadView.as_view(),
        name="task-result-upload",
    ),
]

urlpatterns: list[URLPattern | URLResolver] = [
    *task_urlpatterns,
    *router.urls,
    *webhook_urlpatterns,
    *schema_urlpatterns,
]
