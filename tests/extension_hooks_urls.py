"""A host that extends the controller's viewsets through the hooks docs/extend.md names."""

from django.urls import include, path
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.filters import BaseFilterBackend

from kohakku_controller.skills.serializers import SkillDetailSerializer, SkillVersionSerializer
from kohakku_controller.skills.views import SkillVersionViewSet, SkillViewSet
from kohakku_controller.tasks.serializers import TaskSerializer
from kohakku_controller.tasks.views import TaskViewSet
from kohakku_controller.urls import build_urlpatterns
from kohakku_controller.webhooks.views import DeliveryViewSet

cancelled_by_the_host: list[str] = []


class TaskWithTicket(TaskSerializer):
    ticket = serializers.SerializerMethodField()

    class Meta(TaskSerializer.Meta):
        fields = [*TaskSerializer.Meta.fields, "ticket"]

    def get_ticket(self, task):
        return f"TICKET-{task.pk}"


class AuditCancels:
    """A mixin overriding an action without repeating @action: it stays routed."""

    def cancel(self, request, *args, **kwargs):
        response = super().cancel(request, *args, **kwargs)
        cancelled_by_the_host.append(kwargs["guid"])
        return response


class AuditedTaskViewSet(AuditCancels, TaskViewSet):
    def get_serializer_class(self):
        return TaskWithTicket


class SkillWithOwner(SkillDetailSerializer):
    owner = serializers.SerializerMethodField()

    class Meta(SkillDetailSerializer.Meta):
        fields = [*SkillDetailSerializer.Meta.fields, "owner"]

    def get_owner(self, skill):
        return "platform-team"


class VersionWithOwner(SkillVersionSerializer):
    owner = serializers.SerializerMethodField()

    class Meta(SkillVersionSerializer.Meta):
        fields = [*SkillVersionSerializer.Meta.fields, "owner"]

    def get_owner(self, version):
        return "platform-team"


class PublicSkillViewSet(SkillViewSet):
    """Skills whose slug starts with ``internal-`` are hidden from everyone."""

    def get_queryset(self):
        return super().get_queryset().exclude(slug__startswith="internal-")

    def get_serializer_class(self):
        return SkillWithOwner if self.action != "list" else super().get_serializer_class()

    # Only the summary changes; the inherited route, responses and the rest stay.
    @extend_schema(summary="Archive a skill (the platform team's way)")
    def archive(self, request, *args, **kwargs):
        return super().archive(request, *args, **kwargs)


class PublicSkillVersionViewSet(SkillVersionViewSet):
    def get_skill_queryset(self):
        return super().get_skill_queryset().exclude(slug__startswith="internal-")

    def get_serializer_class(self):
        return VersionWithOwner


class SlackOnlyWhenAsked(BaseFilterBackend):
    """A host's visibility backend: Slack deliveries only with ?with_slack=1."""

    def filter_queryset(self, request, queryset, view):
        if request.query_params.get("with_slack") == "1":
            return queryset
        return queryset.exclude(source="slack")

    def get_schema_operation_parameters(self, view):
        return [{"name": "with_slack", "in": "query", "schema": {"type": "string"}}]


class TeamDeliveryViewSet(DeliveryViewSet):
    filter_backends = [*DeliveryViewSet.filter_backends, SlackOnlyWhenAsked]


urlpatterns = [
    path(
        "api/v1/",
        include(
            (
                build_urlpatterns(
                    {
                        "task": AuditedTaskViewSet,
                        "skill": PublicSkillViewSet,
                        "skill-version": PublicSkillVersionViewSet,
                        "delivery": TeamDeliveryViewSet,
                    }
                ),
                "kohakku_controller",
            )
        ),
    )
]
