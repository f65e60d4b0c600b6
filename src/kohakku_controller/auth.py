"""Authentication and permissions shared by every controller view.

Two kinds of caller reach the API:

* OAuth2 clients (orchestrators, dispatchers) with a client-credentials access token.
  Each view action needs one scope, named in :data:`SCOPES`.
* Operators: Django users with a DRF token. Staff may do everything; other users need the
  Django model permission that matches the action (``view``, ``add``, ``change``, ``delete``).

:class:`ScopedPermission` applies both rules from one table on the view.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.utils.translation import gettext_lazy as _
from rest_framework import permissions

if TYPE_CHECKING:
    from rest_framework.request import Request
    from rest_framework.views import APIView

#: The OAuth2 scopes the controller understands, with their descriptions.
SCOPES: dict[str, str] = {
    "tasks:read": "Read tasks and their events",
    "tasks:write": "Create and cancel tasks",
    "skills:read": "Read skills and download packages",
    "skills:write": "Create skills and upload packages",
    "workflows:read": "Read workflows and webhook deliveries",
    "workflows:write": "Create, change and dry-run workflows",
    "dispatchers": "Check in and heartbeat as a dispatcher",
}

# Which model permission an operator needs for each kind of action.
_SAFE_ACTIONS = {"list", "retrieve", "metadata"}
_MODEL_PERMISSION_BY_ACTION = {"create": "add", "destroy": "delete"}


def is_oauth2_token(auth: Any) -> bool:
    """True when ``request.auth`` is a django-oauth-toolkit access token."""
    return auth is not None and hasattr(auth, "is_valid") and hasattr(auth, "allow_scopes")


class ScopedPermission(permissions.BasePermission):
    """Map each view action to an OAuth2 scope and to a Django model permission.

    A view declares:

    * ``read_scope`` and ``write_scope``: the scope for safe methods and for the rest;
    * ``action_scopes`` (optional): ``{action: scope}`` for actions that differ, a tuple of
      scopes meaning all of them, ``None`` meaning the action is not open to OAuth2 clients
      at all;
    * ``action_model_permissions`` (optional): ``{action: "view" | "add" | "change" |
      "delete"}`` for custom actions; the default is ``view`` for safe methods and
      ``change`` otherwise;
    * ``action_extra_permissions`` (optional): ``{action: ("app_label.codename", ...)}``,
      Django permissions an operator needs on top of that one (for an action that also
      does what another model's permission guards, such as creating tasks).
    """

    message = _("Your credential does not allow this action.")

    def has_permission(self, request: Request, view: APIView) -> bool:
        if is_oauth2_token(request.auth):
            # Client-credentials tokens often have no user; the scope alone decides.
            scopes = self.required_scopes(request, view)
            return bool(scopes) and request.auth.is_valid(scopes)
        user = request.user
        if not (user and user.is_authenticated):
            return False
        if user.is_staff:
            return True
        model = self.model_for(view)
        if model is None:
            return False
        codename = f"{self.model_permission(request, view)}_{model._meta.model_name}"
        extra = (getattr(view, "action_extra_permissions", {}) or {}).get(
            self.action_name(request, view), ()
        )
        return user.has_perms([f"{model._meta.app_label}.{codename}", *extra])

    @staticmethod
    def action_name(request: Request, view: APIView) -> str:
        return getattr(view, "action", None) or request.method.lower()

    def required_scopes(self, request: Request, view: APIView) -> list[str]:
        """Every scope an OAuth2 client needs for this request (none: closed to clients)."""
        scope = self.required_scope(request, view)
        if scope is None:
            return []
        return [scope] if isinstance(scope, str) else list(scope)

    def required_scope(self, request: Request, view: APIView) -> str | tuple[str, ...] | None:
        action = self.action_name(request, view)
        overrides = getattr(view, "action_scopes", {}) or {}
        if action in overrides:
            return overrides[action]
        if request.method in permissions.SAFE_METHODS:
            return getattr(view, "read_scope", None)
        return getattr(view, "write_scope", None)

    def model_permission(self, request: Request, view: APIView) -> str:
        action = self.action_name(request, view)
        overrides = getattr(view, "action_model_permissions", {}) or {}
        if action in overrides:
            return overrides[action]
        if action in _MODEL_PERMISSION_BY_ACTION:
            return _MODEL_PERMISSION_BY_ACTION[action]
        if request.method in permissions.SAFE_METHODS or action in _SAFE_ACTIONS:
            return "view"
        return "change"

    @staticmethod
    def model_for(view: APIView) -> Any:
        model = getattr(view, "permission_model", None)
        if model is not None:
            return model
        queryset = getattr(view, "queryset", None)
        return getattr(queryset, "model", None)
