"""The example project's URLs plus a small scoped view to exercise authentication."""

from django.urls import include, path
from rest_framework import serializers
from rest_framework.response import Response

from example_project.urls import urlpatterns as example_urlpatterns
from kohakku_controller.api import ControllerModelViewSet
from kohakku_controller.oauth import ClientScopes


class EchoSerializer(serializers.ModelSerializer):
    scopes = serializers.ListField(child=serializers.CharField())

    class Meta:
        model = ClientScopes
        fields = ["id", "scopes"]


class ScopedEchoViewSet(ControllerModelViewSet):
    """Reads need ``tasks:read``, writes ``tasks:write``; ``special`` needs ``dispatchers``."""

    queryset = ClientScopes.objects.order_by("id")
    serializer_class = EchoSerializer
    read_scope = "tasks:read"
    write_scope = "tasks:write"
    action_scopes = {"destroy": None}

    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return Response({"echo": request.data}, status=201)


from rest_framework.routers import SimpleRouter  # noqa: E402

router = SimpleRouter()
router.register("echo", ScopedEchoViewSet, basename="echo")

urlpatterns = [
    path("test-api/", include((router.urls, "test_api"))),
    *example_urlpatterns,
]
