"""django-oauth-toolkit's admin for OAuth2 applications, without its "View on site" link.

That link reverses ``oauth2_provider:detail``, an application-management page that
``kohakku_controller.oauth_urls`` does not mount. Name it in
``OAUTH2_PROVIDER["APPLICATION_ADMIN_CLASS"]``.
"""

from oauth2_provider.admin import ApplicationAdmin


class ClientApplicationAdmin(ApplicationAdmin):
    view_on_site = False
