"""The OpenAPI document is valid, warning-free, and documents auth and errors."""

import pytest
from django.core.management import call_command
from openapi_spec_validator import validate

pytestmark = pytest.mark.django_db


def test_schema_endpoint_serves_valid_openapi_3(client):
    response = client.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    validate(document)


def test_schema_generates_without_warnings(tmp_path, settings):
    settings.ROOT_URLCONF = "example_project.urls"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "s.yml"))


def test_operations_document_auth_and_errors(client):
    document = client.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    schemes = document["components"]["securitySchemes"]
    assert {"oauth2", "tokenAuth"} <= set(schemes)
    credentials = schemes["oauth2"]["flows"]["clientCredentials"]
    assert credentials["tokenUrl"] == "/o/token/"
    assert {"dispatchers", "tasks:write"} <= set(credentials["scopes"])
    ready = document["paths"]["/ready/"]["get"]
    assert {"200", "503"} <= set(ready["responses"])
    create_task = document["paths"]["/api/v1/tasks/"]["post"]
    assert {"400", "401", "403", "411", "413", "415"} <= set(create_task["responses"])
    list_parameters = {p["name"] for p in document["paths"]["/api/v1/tasks/"]["get"]["parameters"]}
    assert {"status", "page"} <= list_parameters
    events = document["paths"]["/api/v1/tasks/{guid}/events/"]["get"]
    assert {p["name"] for p in events["parameters"]} == {"guid", "page", "page_size"}
    workflow = document["paths"]["/api/v1/workflows/{slug}/"]
    assert {"200", "400", "404", "409"} <= set(workflow["patch"]["responses"])
    assert "409" in workflow["put"]["responses"]


def test_dispatcher_callbacks_document_the_callback_token(client):
    document = client.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    scheme = document["components"]["securitySchemes"]["callbackToken"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    callback = document["paths"]["/api/v1/tasks/{guid}/callback/"]["post"]
    upload = document["paths"]["/api/v1/tasks/{guid}/result/upload/"]["put"]
    for operation in (callback, upload):
        assert operation["security"] == [{"callbackToken": []}]
        assert "401" in operation["responses"]
    headers = {p["name"] for p in callback["parameters"] if p["in"] == "header"}
    assert headers == {"X-Kohakku-Timestamp", "X-Kohakku-Signature"}


def test_swagger_ui_renders_with_local_assets(client):
    response = client.get("/api/v1/docs/")
    assert response.status_code == 200
    assert b"/static/drf_spectacular_sidecar/swagger-ui-dist/" in response.content


def test_webhook_ingest_documents_the_headers_it_reads_and_both_answers(client):
    document = client.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    ingest = document["paths"]["/api/v1/webhooks/"]["post"]
    headers = {p["name"] for p in ingest["parameters"] if p["in"] == "header"}
    # The seed's own, then each sender's signature and delivery id.
    assert {"X-Webhook-Source", "X-Webhook-Event", "X-GitHub-Event", "X-Slack-Signature"} <= headers
    assert {"X-Hub-Signature-256", "X-Slack-Request-Timestamp", "webhook-signature"} <= headers
    assert all(not p.get("required") for p in ingest["parameters"])
    answer = ingest["responses"]["200"]["content"]["application/json"]["schema"]
    shapes = document["components"]["schemas"]["IngestResult"]["oneOf"]
    assert answer == {"$ref": "#/components/schemas/IngestResult"}
    names = {shape["$ref"].rsplit("/", 1)[1] for shape in shapes}
    assert names == {"IngestAnswer", "SlackChallenge"}
    assert document["components"]["schemas"]["SlackChallenge"]["required"] == ["challenge"]


def test_swagger_ui_answers_options_with_405_not_an_error(client):
    response = client.options("/api/v1/docs/")
    assert response.status_code == 405
