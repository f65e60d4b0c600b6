"""The example project's URLs plus the ceilings the callback is compared with.

* ``/trivial/``: a plain Django view (middleware only), the floor of server and framework;
* ``/trivial/api/``: the controller's own stack doing nothing: a DRF view with the
  controller's JSON parser and renderer, no authentication, no database (the callback has
  its own credential, checked against its task's row).
"""

from django.http import HttpResponse
from django.urls import path
from rest_framework.response import Response

from example_project.urls import urlpatterns as example_urlpatterns
from kohakku_controller.api import ControllerAPIView


def trivial(request):
    return HttpResponse(b'{"status": "ok"}', content_type="application/json")


class TrivialAPIView(ControllerAPIView):
    authentication_classes = []
    permission_classes = []

    def post(self, request):
        request.data  # noqa: B018  (parse the body like the callback does)
        return Response({"status": "ok"})


urlpatterns = [
    path("trivial/", trivial),
    path("trivial/api/", TrivialAPIView.as_view()),
    *example_urlpatterns,
]
