"""Bad request bodies get a JSON 4xx, never a 500."""

import pytest
from django.test import override_settings

pytestmark = pytest.mark.django_db
URL = "/test-api/echo/"


@pytest.mark.parametrize(
    "body", [b"{", b"{'a': 1}", b"[1,]", b"NaN", b'{"a": Infinity}', b'{"a": -1e400}']
)
def test_malformed_json_is_400(staff_client, body):
    response = staff_client.post(URL, body, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["detail"].startswith("JSON parse error")


def test_deeply_nested_json_is_400(staff_client):
    body = b"[" * 100_000 + b"]" * 100_000
    with override_settings(KOHAKKU_CONTROLLER={"MAX_JSON_BODY_BYTES": 1_000_000}):
        response = staff_client.post(URL, body, content_type="application/json")
    assert response.status_code == 400
    assert "nested too deeply" in response.json()["detail"]


def test_nesting_past_max_json_depth_is_400(staff_client):
    def nested(depth):
        return b'{"scopes": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"

    with override_settings(KOHAKKU_CONTROLLER={"MAX_JSON_DEPTH": 5}):
        deep = staff_client.post(URL, nested(6), content_type="application/json")
        at_limit = staff_client.post(URL, nested(5), content_type="application/json")
    assert deep.status_code == 400
    assert "more than 5 levels" in deep.json()["detail"]
    # Five levels parse; the serializer then judges the shape.
    assert "nested too deeply" not in at_limit.content.decode()


def test_chunked_body_is_411(staff_client):
    """A body without Content-Length would read as empty: it is refused, not misread."""
    response = staff_client.generic(
        "POST", URL, b"", content_type="application/json", headers={"Transfer-Encoding": "chunked"}
    )
    assert response.status_code == 411
    assert "Content-Length" in response.json()["detail"]


def test_unsupported_content_type_is_415(staff_client):
    response = staff_client.post(URL, b"scopes=1", content_type="text/plain")
    assert response.status_code == 415
    assert "Unsupported media type" in response.json()["detail"]


def test_body_over_cap_is_413(staff_client):
    with override_settings(KOHAKKU_CONTROLLER={"MAX_JSON_BODY_BYTES": 100}):
        response = staff_client.post(URL, {"scopes": ["x" * 200]}, format="json")
    assert response.status_code == 413
    assert "larger than 100 bytes" in response.json()["detail"]


def test_wrong_type_names_the_field(staff_client):
    response = staff_client.post(URL, {"scopes": {"not": "a list"}}, format="json")
    assert response.status_code == 400
    assert "scopes" in response.json()


def test_unknown_object_is_json_404(staff_client):
    response = staff_client.get(f"{URL}999999/")
    assert response.status_code == 404
    assert response.json() == {"detail": "No ClientScopes matches the given query."}


def test_bad_page_number_is_json_400_and_a_page_past_the_end_json_404(staff_client):
    response = staff_client.get(f"{URL}?page=abc")
    assert response.status_code == 400
    assert response.json() == {"page": ["Must be a positive integer."]}
    response = staff_client.get(f"{URL}?page=99")
    assert response.status_code == 404
    assert "detail" in response.json()


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        (
            b'{"scopes": ["a\\u0000b"]}',
            {"scopes": ["The string at scopes[0] contains a NUL character (\\u0000), "
                        "which text cannot hold."]},
        ),
        (
            b'{"scopes": {"k": {"\\u0000": 1}}}',
            {"scopes": ["A key in scopes.k contains a NUL character (\\u0000), "
                        "which text cannot hold."]},
        ),
        (
            b'{"scopes": ["\\udc00"]}',
            {"scopes": ["The string at scopes[0] contains half of a surrogate pair, "
                        "which is not Unicode."]},
        ),
        (
            b'"\\ud800"',
            {"detail": "JSON parse error - the string at the top level contains half of a "
                       "surrogate pair, which is not Unicode"},
        ),
        (
            b'{"\\u0000": 1}',
            {"detail": "JSON parse error - a key in the top-level object contains a NUL "
                       "character (\\u0000), which text cannot hold"},
        ),
    ],
)  # fmt: skip
def test_text_no_column_can_hold_is_400_naming_the_field(staff_client, body, errors):
    """PostgreSQL refuses NUL in text and jsonb; half a surrogate pair is not Unicode."""
    response = staff_client.post(URL, body, content_type="application/json")
    assert response.status_code == 400
    assert response.json() == errors


def test_escaped_backslash_and_whole_surrogate_pairs_are_fine(staff_client):
    body = b'{"scopes": ["\\\\u0000", "\\ud83d\\ude80"]}'
    response = staff_client.post(URL, body, content_type="application/json")
    assert response.status_code == 201, response.content
    assert response.json()["echo"] == {"scopes": ["\\u0000", "\U0001f680"]}


def test_nul_in_a_url_lookup_is_json_404(staff_client):
    response = staff_client.get("/api/v1/skills/a%00b/")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not found."}


# --- the host-level handlers: JSON 404/500 under the API's URLs --------------------------------


@pytest.fixture
def host_with_handlers(settings):
    settings.ROOT_URLCONF = "tests.error_handler_urls"
    settings.DEBUG = False


@pytest.mark.parametrize(
    "path",
    ["/api/v1/", "/api/v1/nope/", "/api/v1/dispatchers/x/y/z/", "/outer/schema-only/nope/"],
)
def test_unknown_api_url_is_json_404(client, host_with_handlers, path):
    response = client.get(path)
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": "Not found."}


@pytest.mark.parametrize("path", ["/nope/", "/api/v2/nope/", "/outer/nope/", "/site/nope/"])
def test_unknown_host_url_keeps_the_hosts_page(client, host_with_handlers, path):
    response = client.get(path)
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


def test_host_routes_under_the_api_prefix_are_not_shadowed(client, host_with_handlers):
    response = client.get("/api/v1/host-extra/")
    assert response.status_code == 200
    assert response.content == b"host page"


def test_unexpected_error_under_the_api_is_json_500(host_with_handlers, monkeypatch):
    from django.test import Client

    from kohakku_controller.urls import SwaggerUIView

    def broken(self, request, *args, **kwargs):
        raise RuntimeError("secret detail")

    monkeypatch.setattr(SwaggerUIView, "get", broken)
    client = Client(raise_request_exception=False)
    response = client.get("/api/v1/docs/")
    assert response.status_code == 500
    assert response.json() == {"detail": "Server error."}
    assert b"secret detail" not in response.content
    # Outside the API the host's own error page answers.
    response = client.get("/site/broken/")
    assert response.status_code == 500
    assert response["Content-Type"].startswith("text/html")


@pytest.mark.parametrize(("path", "json"), [("/api/v1/tasks/", True), ("/site/", False)])
def test_a_host_not_allowed_is_a_json_400_under_the_api(host_with_handlers, settings, path, json):
    from django.test import Client

    settings.ALLOWED_HOSTS = ["controller.example"]
    response = Client().get(path, HTTP_HOST="evil.example")
    assert response.status_code == 400
    if json:
        assert response.json() == {"detail": "Bad request."}
    else:
        assert response["Content-Type"].startswith("text/html")


def test_example_project_answers_json_404_under_the_api(client, settings):
    settings.ROOT_URLCONF = "example_project.urls"
    settings.DEBUG = False
    response = client.get("/api/v1/nope/")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not found."}
    assert client.get("/nope/")["Content-Type"].startswith("text/html")
