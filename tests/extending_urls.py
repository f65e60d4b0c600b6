"""A host that replaces the tasks viewset with its own subclass (the example in docs/extend.md)."""

from django.contrib.auth import get_user_model
from django.urls import include, path

from kohakku_controller.tasks.views import TaskViewSet
from kohakku_controller.urls import build_urlpatterns


class TeamTaskViewSet(TaskViewSet):
    """Operators see the tasks created by members of their groups; staff and clients see all."""

    def get_queryset(self):
        queryset = super().get_queryset()
        user = self.request.user
        if user is None or user.is_staff:  # an OAuth2 client, or staff
            return queryset
        teammates = get_user_model().objects.filter(groups__in=user.groups.all())
        return queryset.filter(created_by__in=teammates)


urlpatterns = [
    path("api/v1/", include((build_urlpatterns({"task": TeamTaskViewSet}), "kohakku_controller"))),
]
