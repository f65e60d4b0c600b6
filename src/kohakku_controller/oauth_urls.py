"""django-oauth-toolkit's endpoints that a client-credentials server has, and no others.

Mount them with ``path("o/", include("kohakku_controller.oauth_urls"))``. Its whole
``oauth2_provider.urls`` also serves the authorization, device and OpenID Connect
endpoints and the application management pages, which the controller's clients never use,
and which answer errors with ``OAUTH2_SERVER_CLASS`` set to client credentials only.
"""

from django.urls import path
from oauth2_provider import views

app_name = "oauth2_provider"

urlpatterns = [
    path("token/", views.TokenView.as_view(), name="token"),
    path("revoke_token/", views.RevokeTokenView.as_view(), name="revoke-token"),
    path("introspect/", views.IntrospectTokenView.as_view(), name="introspect"),
]
