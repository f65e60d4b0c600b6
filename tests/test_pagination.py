import pytest
from django.test import override_settings

from kohakku_controller.oauth import create_or_reset_client

pytestmark = pytest.mark.django_db


def test_list_is_bare_array_with_link_header(staff_client):
    for index in range(5):
        create_or_reset_client(f"client-{index}", [])
    with override_settings(KOHAKKU_CONTROLLER={"PAGE_SIZE": 2}):
        first = staff_client.get("/test-api/echo/")
        assert isinstance(first.json(), list) and len(first.json()) == 2
        assert first["X-Total-Count"] == "5"
        links = dict(
            (part.split("; ")[1], part.split("; ")[0].strip("<>"))
            for part in first["Link"].split(", ")
        )
        assert links['rel="next"'].endswith("?page=2")
        assert links['rel="last"'].endswith("?page=3")
        assert 'rel="prev"' not in links
        last = staff_client.get(links['rel="last"'])
        assert len(last.json()) == 1
        assert 'rel="next"' not in last["Link"]
        assert 'rel="prev"' in last["Link"]


def test_page_size_is_capped(staff_client):
    for index in range(3):
        create_or_reset_client(f"client-{index}", [])
    with override_settings(KOHAKKU_CONTROLLER={"PAGE_SIZE": 1, "MAX_PAGE_SIZE": 2}):
        response = staff_client.get("/test-api/echo/?page_size=100")
    assert len(response.json()) == 2


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("page=abc", "page"),
        ("page=0", "page"),
        ("page=-1", "page"),
        ("page=1.5", "page"),
        ("page=%C2%B2", "page"),
        ("page_size=abc", "page_size"),
        ("page_size=0", "page_size"),
        ("page_size=-5", "page_size"),
        ("page_size=10000000000", "page_size"),
    ],
)
def test_malformed_page_parameters_are_400_naming_them(staff_client, query, field):
    response = staff_client.get(f"/test-api/echo/?{query}")
    assert response.status_code == 400
    assert response.json() == {field: ["Must be a positive integer."]}


def test_empty_parameters_mean_the_defaults_and_a_page_past_the_end_is_404(staff_client):
    create_or_reset_client("client-0", [])
    with override_settings(KOHAKKU_CONTROLLER={"PAGE_SIZE": 1}):
        assert len(staff_client.get("/test-api/echo/?page=&page_size=").json()) == 1
        assert staff_client.get("/test-api/echo/?page=last").status_code == 200
        assert staff_client.get("/test-api/echo/?page=2").status_code == 404
