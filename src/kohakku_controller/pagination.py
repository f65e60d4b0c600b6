"""Pagination that keeps list bodies a bare JSON array and moves navigation to headers.

This is the list style of the controller's API: ``GET /api/v1/skills/`` answers ``[...]``,
with an RFC 8288 ``Link`` header (``rel="first"``, ``"prev"``, ``"next"``, ``"last"``) and
``X-Total-Count``.
"""

from __future__ import annotations

from typing import Any

from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response
from rest_framework.utils.urls import remove_query_param, replace_query_param

from .conf import kohakku_settings
from .parsers import positive_int_param


class LinkHeaderPagination(PageNumberPagination):
    page_query_param = "page"
    page_size_query_param = "page_size"

    def get_page_size(self, request: Any) -> int:
        """``?page_size=``, capped at ``MAX_PAGE_SIZE``; 400 unless a positive integer."""
        self.page_size = kohakku_settings.PAGE_SIZE
        self.max_page_size = kohakku_settings.MAX_PAGE_SIZE
        requested = positive_int_param(request, self.page_size_query_param)
        return self.page_size if requested is None else min(requested, self.max_page_size)

    def get_page_number(self, request: Any, paginator: Any) -> int | str:
        """``?page=``: a positive integer or ``last`` (400 otherwise); past the end is 404."""
        if request.query_params.get(self.page_query_param) in self.last_page_strings:
            return paginator.num_pages
        return positive_int_param(request, self.page_query_param) or 1

    def _page_url(self, number: int) -> str:
        url = self.request.build_absolute_uri()
        if number == 1:
            return remove_query_param(url, self.page_query_param)
        return replace_query_param(url, self.page_query_param, number)

    def get_link_header(self) -> str:
        page = self.page
        links = [(self._page_url(1), "first")]
        if page.has_previous():
            links.append((self._page_url(page.previous_page_number()), "prev"))
        if page.has_next():
            links.append((self._page_url(page.next_page_number()), "next"))
        links.append((self._page_url(max(page.paginator.num_pages, 1)), "last"))
        return ", ".join(f'<{url}>; rel="{rel}"' for url, rel in links)

    def get_paginated_response(self, data: Any) -> Response:
        headers = {"Link": self.get_link_header(), "X-Total-Count": str(self.page.paginator.count)}
        return Response(data, headers=headers)

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        return schema
