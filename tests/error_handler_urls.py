"""A host URLconf for the JSON 400/404/500 handlers: the API under a regex prefix, a host view
mounted under the same prefix after it, a partial include, and the host's own pages."""

from django.http import HttpResponse
from django.urls import include, path, re_path

from kohakku_controller.urls import schema_urlpatterns


def host_view(request):
    return HttpResponse("host page")


def broken_view(request):
    raise RuntimeError("a bug")


urlpatterns = [
    re_path(r"^api/v1/", include("kohakku_controller.urls")),
    path("api/v1/host-extra/", host_view),
    path(
        "outer/",
        include([path("schema-only/", include((schema_urlpatterns, "kohakku_controller")))]),
    ),
    path("", include("kohakku_controller.health.urls")),
    path("site/", host_view),
    path("site/broken/", broken_view),
]

handler400 = "kohakku_controller.exceptions.bad_request"
handler404 = "kohakku_controller.exceptions.not_found"
handler500 = "kohakku_controller.exceptions.server_error"
