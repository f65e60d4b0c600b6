from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("api/v1/", include("kohakku_controller.urls")),
    path("", include("kohakku_controller.health.urls")),
    path("o/", include("kohakku_controller.oauth_urls")),  # token, revoke_token, introspect
    path("admin/", admin.site.urls),
]

# Unknown URLs and unexpected errors under the API answer JSON, like the API's own errors.
handler400 = "kohakku_controller.exceptions.bad_request"
handler404 = "kohakku_controller.exceptions.not_found"
handler500 = "kohakku_controller.exceptions.server_error"
