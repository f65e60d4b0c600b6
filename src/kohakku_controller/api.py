"""Base classes for the controller's views.

They pin the controller's own authentication, permissions, parsers, pagination, throttles
(none by default), versioning (none), error handling and schema, so the API behaves the
same whatever a host project puts in its global ``REST_FRAMEWORK`` setting. Extend a
concrete viewset and override one hook (``get_queryset``, ``get_serializer_class``,
``perform_create``) rather than a whole view.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import types
from typing import Any

from django_filters.rest_framework import DjangoFilterBackend
from rest_framework import mixins, parsers, renderers, viewsets
from rest_framework.decorators import MethodMapper
from rest_framework.exceptions import MethodNotAllowed, NotFound
from rest_framework.metadata import SimpleMetadata
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.views import APIView

from .auth import ScopedPermission
from .conf import kohakku_settings
from .exceptions import LengthRequired, UnsupportedContentEncoding, exception_handler
from .parsers import BoundedJSONParser
from .schema import ControllerAutoSchema


class _FromSettings:
    """A view attribute read from the controller's settings on every request, so that a
    settings change applies at once; a view given its own (``as_view(name=...)``,
    ``@action(name=...)``, or a class attribute of the same name) keeps that."""

    def __init__(self, setting: str) -> None:
        self.setting = setting

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is not None and self.name in instance.__dict__:
            return instance.__dict__[self.name]
        if instance is None:
            # Read on the class while modules load (URL patterns, schema decorators): a path
            # that does not import must not stop the system checks, whose E002 names it.
            try:
                return getattr(kohakku_settings, self.setting)
            except ImportError:
                return self
        return getattr(kohakku_settings, self.setting)

    def __set__(self, instance: Any, value: Any) -> None:
        instance.__dict__[self.name] = value


class ControllerViewMixin:
    """Authentication, permission, parsing, pagination and errors for every controller view."""

    permission_classes = [ScopedPermission]
    parser_classes = [BoundedJSONParser]
    renderer_classes = [renderers.JSONRenderer, renderers.BrowsableAPIRenderer]
    schema = ControllerAutoSchema()
    # One API version, in the URL: a host's DEFAULT_VERSIONING_CLASS would refuse requests
    # that do not name a version the host knows (406).
    versioning_class = None
    content_negotiation_class = DefaultContentNegotiation
    metadata_class = SimpleMetadata
    # A view lists its own; a host's DEFAULT_FILTER_BACKENDS would filter every queryset.
    filter_backends: list[Any] = []
    read_scope: str | None = None
    write_scope: str | None = None
    action_scopes: dict[str, str | tuple[str, ...] | None] = {}
    action_extra_permissions: dict[str, tuple[str, ...]] = {}

    authentication_classes = _FromSettings("AUTHENTICATION_CLASSES")
    pagination_class = _FromSettings("PAGINATION_CLASS")
    throttle_classes = _FromSettings("THROTTLE_CLASSES")

    def get_exception_handler(self) -> Any:
        return exception_handler

    def filter_backends_for_action(self) -> list[Any]:
        """The filter backends that apply to this request.

        The list filters (``?status=``, ``?label=`` …: django-filter filtersets) describe the
        ``list`` action. Elsewhere they would turn a lookup by guid or slug into a 404 (a
        task's events under ``?status=running``) or a 400; other backends, such as a host's
        own object-visibility backend, apply everywhere.
        """
        backends = list(getattr(self, "filter_backends", []))
        if getattr(self, "action", None) == "list":
            return backends
        return [backend for backend in backends if not issubclass(backend, DjangoFilterBackend)]

    def filter_queryset(self, queryset: Any) -> Any:
        for backend in self.filter_backends_for_action():
            queryset = backend().filter_queryset(self.request, queryset, self)
        return queryset

    def check_permissions(self, request: Any) -> None:
        # An authenticated caller using a method the endpoint lacks learns that (405), not
        # that it lacks a permission for an action that does not exist (403).
        if request.successful_authenticator is not None and not hasattr(
            self, request.method.lower()
        ):
            raise MethodNotAllowed(request.method)
        super().check_permissions(request)

    def initial(self, request: Any, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        # Django reads a body only as far as Content-Length says: a chunked body would be
        # read as empty and, say, store an empty file or fail its signature. Refuse it.
        meta = request._request.META
        if "HTTP_TRANSFER_ENCODING" in meta and not meta.get("CONTENT_LENGTH"):
            raise LengthRequired()
        # A compressed body would be parsed, signed or stored as if it were not, and one
        # that claims a coding it does not have would pass unnoticed: refuse both.
        encoding = meta.get("HTTP_CONTENT_ENCODING", "").strip()
        if encoding and encoding.lower() != "identity":
            raise UnsupportedContentEncoding(encoding)
        # No stored key holds a NUL character (PostgreSQL refuses one in text), so a URL
        # with one names nothing; it must not reach the database as a lookup.
        if any("\x00" in str(value) for value in kwargs.values()):
            raise NotFound()


class ControllerAPIView(ControllerViewMixin, APIView):
    pass


class ControllerGenericViewSet(ControllerViewMixin, viewsets.GenericViewSet):
    """A viewset whose extra actions (``@action``) stay actions when a subclass, or a mixin
    before it, overrides them: ``def cancel(self, request, *args, **kwargs)`` calling
    ``super()`` keeps the route, the methods and the OpenAPI description of ``cancel``. DRF
    alone routes only methods decorated with ``@action``, so such an override would remove
    the endpoint (404). Only a plain function is recognised this way (not a staticmethod or
    classmethod). Set the name to ``None`` to remove an action."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, method, inherited in _overridden_actions(cls):
            setattr(cls, name, _as_action(method, inherited))

    def get_response_serializer(self, instance: Any) -> Any:
        """The serializer of an answer about ``instance``: ``get_serializer_class()`` when it
        returns the viewset's ``serializer_class`` or a subclass (a host adding fields),
        else ``serializer_class`` (an override that returns a request serializer for an
        action, DRF's usual pattern, leaves that action's answer as it was)."""
        serializer_class = self.get_serializer_class()
        if not (
            isinstance(serializer_class, type)
            and issubclass(serializer_class, self.serializer_class)
        ):
            serializer_class = self.serializer_class
        return serializer_class(instance, context=self.get_serializer_context())


_ACTION_ATTRIBUTES = ("mapping", "detail", "url_path", "url_name")


def _is_action(method: Any) -> bool:
    return isinstance(getattr(method, "mapping", None), MethodMapper)


def _overridden_actions(cls: type) -> list[tuple[str, Any, Any]]:
    """(name, plain function, the action it overrides) for each extra action that the first
    class defining the name along ``cls``'s MRO overrides without ``@action``. Class
    dictionaries are read directly: no descriptor (settings-backed attributes) is run."""
    found = []
    names = {name for klass in cls.__mro__ for name in vars(klass)}
    for name in sorted(names):
        owners = [klass for klass in cls.__mro__ if name in vars(klass)]
        method = vars(owners[0])[name]
        if not inspect.isfunction(method) or _is_action(method):
            continue
        inherited = next(
            (vars(klass)[name] for klass in owners[1:] if _is_action(vars(klass)[name])), None
        )
        if inherited is not None:
            found.append((name, method, inherited))
    return found


def _as_action(method: Any, inherited: Any) -> Any:
    """A copy of ``method`` (the class that defined it keeps its own) routed as ``inherited``."""
    action = types.FunctionType(
        method.__code__,
        method.__globals__,
        method.__name__,
        method.__defaults__,
        method.__closure__,
    )
    action.__kwdefaults__ = method.__kwdefaults__
    functools.update_wrapper(action, method)  # name, docstring, annotations, attributes
    for attribute in _ACTION_ATTRIBUTES:
        setattr(action, attribute, getattr(inherited, attribute))
    own = getattr(method, "kwargs", {})
    action.kwargs = {**inherited.kwargs, **own}
    if "schema" in own and "schema" in inherited.kwargs:
        # Its own @extend_schema changes what it names and keeps the rest (the responses…).
        with contextlib.suppress(TypeError):  # bases that cannot combine: its own alone
            action.kwargs["schema"] = type(
                "ExtendedMetaSchema", (own["schema"], inherited.kwargs["schema"]), {}
            )
    if method.__doc__:
        action.kwargs["description"] = method.__doc__
    return action


class ControllerReadOnlyViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, ControllerGenericViewSet
):
    pass


class ControllerModelViewSet(
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    ControllerGenericViewSet,
):
    pass


#: Parsers for upload endpoints.
UPLOAD_PARSERS = [parsers.MultiPartParser, parsers.FormParser]

__all__ = [
    "UPLOAD_PARSERS",
    "ControllerAPIView",
    "ControllerGenericViewSet",
    "ControllerModelViewSet",
    "ControllerReadOnlyViewSet",
    "ControllerViewMixin",
]
