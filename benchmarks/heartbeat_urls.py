"""The example project's URLs plus ``bench/ping/``, the ceiling the heartbeat is compared to.

``ping`` goes through the same middleware, authentication (an OAuth2 token lookup),
permission, JSON parser and renderer as the heartbeat, and does nothing else. ``plain`` is
a bare Django view (middleware only: no DRF, no authentication, no database), the floor of
the server and framework themselves.
"""

from django.http import HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
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


@csrf_exempt
def plain(request):
    return HttpResponse(b'{"status": "ok"}', content_type="application/json")


urlpatterns = [
    path("bench/ping/", PingView.as_view()),
    path("bench/plain/", plain),
    *example_urlpatterns,
]
