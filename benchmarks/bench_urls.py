"""The example project's URLs plus ``/trivial/``, the ceiling the callback is compared with."""

from django.http import HttpResponse
from django.urls import path

from example_project.urls import urlpatterns as example_urlpatterns


def trivial(request):
    return HttpResponse(b'{"status": "ok"}', content_type="application/json")


urlpatterns = [path("trivial/", trivial), *example_urlpatterns]
