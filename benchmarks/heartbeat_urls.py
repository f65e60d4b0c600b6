"""The example project's URLs plus ``bench/ping/``, the ceiling the heartbeat is compared to.

``ping`` goes through the same middleware, authentication (an OAuth2 token lookup),
permission, JSON parser and renderer as the heartbeat, and does nothing else.
"""

from django.urls import path
from rest_framework.request import Request
from rest_framework.response import Response

from example_project.urls import urlpatterns as example_urlpatterns
from kohakku_controller.api import ControllerAPIView
from kohakku_controller.dispatchers.views import IsDispatcherClient


class PingView(ControllerAPIView):
    permission_classes = [IsDispatcherClient]

    def post(self, request: Request) -> Response:
        request.data  # noqa: B018  (parse the body like the heartbeat does)
        return Response({"status": "ok", "dispatcher_guid": None})


urlpatterns = [path("bench/ping/", PingView.as_view()), *example_urlpatterns]
