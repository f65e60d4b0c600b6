"""The django-oauth-toolkit classes the controller recommends.

Enable them with::

    OAUTH2_PROVIDER = {
        ...,
        "OAUTH2_VALIDATOR_CLASS": "kohakku_controller.oauth_validators.ControllerOAuth2Validator",
        "OAUTH2_BACKEND_CLASS": "kohakku_controller.oauth_validators.ControllerOAuthLibCore",
    }
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

from oauth2_provider.models import get_access_token_model
from oauth2_provider.oauth2_backends import OAuthLibCore
from oauth2_provider.oauth2_validators import OAuth2Validator
from oauth2_provider.scopes import get_scopes_backend
from oauthlib.oauth2.rfc6749 import errors

from .db import JoinedLookup
from .exceptions import API_APP_NAME
from .oauth import lock_client


class ControllerOAuth2Validator(OAuth2Validator):
    """django-oauth-toolkit's validator, with the bearer-token lookup in one prepared statement.

    Every OAuth2 request looks its access token up, with its application and user. The
    stock lookup compiles that ORM query anew for each request, which costs more CPU than
    the rest of a heartbeat; this one reads the same row into the same objects with a
    statement assembled once. Expiry, scopes and revocation are checked exactly as before:
    nothing is kept between requests.
    """

    def _load_application(self, client_id: Any, request: Any) -> Any:
        # No client id holds a NUL character. django-oauth-toolkit expects the database to
        # refuse one with a ValueError; PostgreSQL with server-side binding raises a
        # DataError instead, which would answer 500.
        if isinstance(client_id, str) and "\x00" in client_id:
            return None
        return super()._load_application(client_id, request)

    def _save_bearer_token(self, token: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        """Issue the token only if the client's secret and grant are still the ones this
        request was checked against.

        A token request checks the secret (slowly: it is hashed) and the scopes before it
        saves the token. A reset of the secret or a narrowed grant that commits in between
        revokes the client's tokens, but this one is not saved yet. Here, in the
        transaction that saves it, the client's row is locked (resets and grant changes lock
        it too, so one in progress is waited for) and both are read again.
        """
        client = request.client
        current = lock_client(client)
        if current is None or current != client.client_secret:
            raise errors.InvalidClientError(request=request)
        available = get_scopes_backend().get_available_scopes(application=client, request=request)
        if not set(request.scopes or []) <= set(available):
            raise errors.InvalidScopeError(request=request)
        return super()._save_bearer_token(token, request, *args, **kwargs)

    def _load_access_token(self, token: str) -> Any:
        checksum = hashlib.sha256(token.encode("utf-8")).hexdigest()
        return _access_token_lookup().get(checksum)


@functools.cache
def _access_token_lookup() -> JoinedLookup:
    return JoinedLookup(get_access_token_model(), "token_checksum", related=["application", "user"])


class ControllerOAuthLibCore(OAuthLibCore):
    """django-oauth-toolkit's backend, except that an access token in the query string is
    refused and API requests' bodies are read only if they are URL-encoded forms.

    On a request to the API an OAuth2 parameter can only travel in an
    ``application/x-www-form-urlencoded`` body (RFC 6750 section 2.2). The stock backend
    reads ``request.POST`` on every request, which on an API view parses the whole body,
    JSON or multipart included, before the caller is authenticated: an anonymous client
    could make the server parse (and, for a multipart upload, spool to disk) a body of the
    maximum size, and a malformed one answered 400 instead of 401. This one leaves such
    bodies to the view, which parses them after authentication and permission checks. A
    JSON body's ``request.POST`` is empty anyway and an upload carries no OAuth2 parameter,
    so what django-oauth-toolkit sees is unchanged. Elsewhere (the token endpoint) forms are
    read as before, multipart included, for clients that send their token requests so.
    """

    def verify_request(self, request: Any, scopes: list[str]) -> tuple[bool, Any]:
        # RFC 6750 section 5.3, RFC 9700 section 4.3.2: an access token never travels in the
        # URL, where access logs, browser history and Referer headers would keep it. Refused
        # whatever COMPLIANT_BCP_RFC9700_ACCESS_TOKEN_TRANSPORT says.
        if "access_token" in request.GET:
            return False, None
        return super().verify_request(request, scopes)

    def extract_body(self, request: Any) -> list[tuple[str, str]]:
        media_type = request.META.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
        if media_type == "application/x-www-form-urlencoded" or (
            media_type == "multipart/form-data" and not _is_api_request(request)
        ):
            return super().extract_body(request)
        return []


def _is_api_request(request: Any) -> bool:
    match = getattr(request, "resolver_match", None)
    return match is not None and API_APP_NAME in match.app_names
