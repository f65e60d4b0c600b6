"""Filters for the delivery log."""

from __future__ import annotations

import django_filters

from ..filters import IsoDateTimeFilter, StrictBooleanFilter, WholeNumberFilter
from .models import Delivery, DeliveryStatus, Verification


class DeliveryFilter(django_filters.FilterSet):
    source = django_filters.CharFilter()
    event = django_filters.CharFilter()
    status = django_filters.ChoiceFilter(choices=DeliveryStatus.choices)
    verification = django_filters.ChoiceFilter(choices=Verification.choices)
    routed_to = django_filters.CharFilter()
    external_id = django_filters.CharFilter()
    task_guid = django_filters.UUIDFilter()
    status_code = WholeNumberFilter(min_value=100, max_value=599)
    received_after = IsoDateTimeFilter(field_name="received_at", lookup_expr="gte")
    received_before = IsoDateTimeFilter(field_name="received_at", lookup_expr="lt")
    is_replay = StrictBooleanFilter(field_name="replay_of", lookup_expr="isnull", exclude=True)

    class Meta:
        model = Delivery
        fields = [
            "source",
            "event",
            "status",
            "verification",
            "routed_to",
            "external_id",
            "task_guid",
            "status_code",
        ]
