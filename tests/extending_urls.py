"""A host that replaces the tasks viewset with its own subclass (the example in docs/extend.md)."""

from django.urls import include, path

from kohakku_controller.tasks.views import TaskViewSet
from kohakku_controller.urls import build_urlpatterns


class TeamTaskViewSet(TaskViewSet):
    """Operators see the tasks labelled with one of their groups; staff and clients see all."""

    def get_queryset(self):
        queryset = super().get_queryset()
        user = self.request.user
        if user is None or user.is_staff:  # an OAuth2 client, or staff
            return queryset
        teams = list(user.groups.values_list("name", flat=True))
        return queryset.filter(labels__team__in=teams)


urlpatterns = [
    path("api/v1/", include((build_urlpatterns({"task": TeamTaskViewSet}), "kohakku_controller"))),
]
