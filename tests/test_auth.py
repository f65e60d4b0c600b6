"""Who may call what: DRF tokens for operators, OAuth2 client credentials with scopes."""

import base64
import io
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.test import Client
from django.urls import resolve
from django.utils import timezone
from oauth2_provider.models import Application, get_access_token_model, get_application_model
from rest_framework.throttling import UserRateThrottle

from kohakku_controller.oauth import ClientScopes, create_or_reset_client

from .admin_pages import opened_version

pytestmark = pytest.mark.django_db
URL = "/test-api/echo/"


def test_unauthenticated_gets_401_with_challenge_and_json(api_client):
    response = api_client.get(URL)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response.json() == {"detail": "Authentication credentials were not provided."}


@pytest.mark.parametrize(
    "header",
    ["Token", "Token a b", "Token unknown-token", "Bearer", "Bearer not-a-token", "Basic ???"],
)
def test_malformed_or_unknown_credentials_get_401(api_client, header):
    response = api_client.get(URL, HTTP_AUTHORIZATION=header)
    assert response.status_code == 401
    assert "detail" in response.json()


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"{", "application/json"),  # malformed
        (b"[" * 100_000, "application/json"),  # nested too deeply, and over the size cap
        (b"anything", "text/plain"),  # a media type the API does not take
        (b"garbage", "multipart/form-data"),  # no boundary
        (b"--b\r\ngarbage", "multipart/form-data; boundary=b"),  # a truncated upload
    ],
)
def test_bodies_of_unauthenticated_requests_are_not_read(api_client, body, content_type):
    """Authentication comes first: an anonymous client cannot make the server parse a body."""
    paths = (
        "/api/v1/dispatchers/checkin/",
        "/api/v1/tasks/",
        "/api/v1/skills/x/upload/",
        "/api/v1/workflows/",
    )
    for path in paths:
        response = api_client.post(path, body, content_type=content_type)
        assert response.status_code == 401, (path, response.content)
        assert response["WWW-Authenticate"].startswith("Bearer")


def test_bodies_of_authenticated_requests_are_still_checked(oauth_client):
    client = oauth_client("tasks:write")
    response = client.post(URL, b"{", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["detail"].startswith("JSON parse error")
    response = client.post(URL, b"scopes=1", content_type="text/plain")
    assert response.status_code == 415


def test_oauth2_backend_reads_form_bodies_only(rf):
    from oauth2_provider.oauth2_backends import get_oauthlib_core

    from kohakku_controller.oauth_validators import ControllerOAuthLibCore

    core = get_oauthlib_core()
    assert isinstance(core, ControllerOAuthLibCore)
    form = rf.post(
        "/o/token/",
        "grant_type=client_credentials&scope=dispatchers",
        content_type="application/x-www-form-urlencoded",
    )
    assert sorted(core.extract_body(form)) == [
        ("grant_type", "client_credentials"),
        ("scope", "dispatchers"),
    ]
    document = rf.post("/api/v1/tasks/", b'{"skill": "x"}', content_type="application/json")
    assert core.extract_body(document) == []
    assert document.body == b'{"skill": "x"}'  # left for the view to parse
    # Multipart bodies carry no OAuth2 parameter (RFC 6749 section 3.2): an upload is left
    # for the view, which reads it only once the caller is authenticated.
    upload = rf.post("/api/v1/skills/x/upload/", {"file": io.BytesIO(b"zip")})
    upload.resolver_match = resolve("/api/v1/skills/x/upload/")
    assert core.extract_body(upload) == []
    assert not upload._read_started
    # Elsewhere (the token endpoint) multipart forms are read, as django-oauth-toolkit does.
    multipart = rf.post("/o/token/", {"grant_type": "client_credentials"})
    multipart.resolver_match = resolve("/o/token/")
    assert core.extract_body(multipart) == [("grant_type", "client_credentials")]


def test_expired_oauth2_token_gets_401(oauth_client):
    response = oauth_client("tasks:read", expired=True).get(URL)
    assert response.status_code == 401
    assert "invalid_token" in response["WWW-Authenticate"]
    assert response.json() == {"detail": "The access token has expired."}


def test_unknown_bearer_token_says_so(api_client):
    response = api_client.get(URL, HTTP_AUTHORIZATION="Bearer not-a-token")
    assert response.status_code == 401
    assert response.json() == {"detail": "The access token is invalid."}
    # No credentials at all: DRF's own words.
    assert "were not provided" in api_client.get(URL).json()["detail"]


def test_oauth2_scope_decides_read_and_write(oauth_client):
    reader = oauth_client("tasks:read")
    assert reader.get(URL).status_code == 200
    denied = reader.post(URL, {"scopes": []}, format="json")
    assert denied.status_code == 403
    assert denied.json()["detail"]
    writer = oauth_client("tasks:write")
    assert writer.get(URL).status_code == 403
    assert writer.post(URL, {"scopes": []}, format="json").status_code == 201


def test_action_closed_to_oauth2_clients(oauth_client):
    client = oauth_client("tasks:read", "tasks:write")
    assert client.delete(f"{URL}1/").status_code == 403


def test_staff_token_may_do_everything(staff_client):
    assert staff_client.get(URL).status_code == 200
    assert staff_client.post(URL, {"scopes": []}, format="json").status_code == 201


def test_operator_needs_model_permission(token_client):
    plain = token_client("plain")
    assert plain.get(URL).status_code == 403
    viewer = token_client("viewer", perms=("kohakku_controller.view_clientscopes",))
    assert viewer.get(URL).status_code == 200
    assert viewer.post(URL, {"scopes": []}, format="json").status_code == 403
    adder = token_client("adder", perms=("kohakku_controller.add_clientscopes",))
    assert adder.post(URL, {"scopes": []}, format="json").status_code == 201


def _token_request(client_id, secret, scope=None):
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    data = {"grant_type": "client_credentials"}
    if scope:
        data["scope"] = scope
    return Client().post("/o/token/", data, HTTP_AUTHORIZATION=f"Basic {basic}")


def test_client_credentials_grant_end_to_end():
    created = create_or_reset_client("orchestrator", ["tasks:read"])
    response = _token_request(created.client_id, created.client_secret)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["scope"] == "tasks:read"
    api = Client(HTTP_AUTHORIZATION=f"Bearer {body['access_token']}")
    assert api.get(URL).status_code == 200
    assert api.post(URL, {"scopes": []}, content_type="application/json").status_code == 403


def test_client_cannot_obtain_scope_it_was_not_granted():
    created = create_or_reset_client("dispatcher", ["dispatchers"])
    response = _token_request(created.client_id, created.client_secret, scope="tasks:write")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_scope"


def _issued_token(name, granted, scope):
    """A token issued by the token endpoint to client ``name`` (granted ``granted``)."""
    created = create_or_reset_client(name, granted)
    response = _token_request(created.client_id, created.client_secret, scope=scope)
    assert response.status_code == 200, response.content
    return Client(HTTP_AUTHORIZATION=f"Bearer {response.json()['access_token']}")


def test_resetting_a_client_revokes_the_tokens_issued_with_its_old_secret():
    api = _issued_token("orchestrator", ["tasks:read"], "tasks:read")
    assert api.get(URL).status_code == 200
    create_or_reset_client("orchestrator", ["tasks:read"])
    assert api.get(URL).status_code == 401


def test_changing_a_secret_anywhere_revokes_the_tokens_issued_with_the_old_one(admin_browser):
    api = _issued_token("orchestrator", ["tasks:read"], "tasks:read")
    application = get_application_model().objects.get(name="orchestrator")
    application.name = "renamed"  # other changes keep the tokens
    application.save()
    assert api.get(URL).status_code == 200
    application.client_secret = "a-new-secret-set-in-code"
    application.save()
    assert api.get(URL).status_code == 401

    # The same through django-oauth-toolkit's admin for applications.
    api = _issued_token("renamed", ["tasks:read"], "tasks:read")
    url = f"/admin/oauth2_provider/application/{application.pk}/change/"
    form = admin_browser.get(url).context["adminform"].form
    edit = {name: value for name, value in form.initial.items() if value is not None}
    edit.update(client_secret="another-secret-from-the-admin", user="", hash_client_secret="on")
    assert admin_browser.post(url, edit).status_code == 302
    assert api.get(URL).status_code == 401


class ProxyApplication(Application):
    class Meta:
        proxy = True
        app_label = "tests"


def test_a_secret_set_but_not_saved_keeps_the_tokens_and_a_proxy_revokes_them():
    api = _issued_token("orchestrator", ["tasks:read"], "tasks:read")
    application = get_application_model().objects.get(name="orchestrator")
    application.client_secret = "in-memory-only"
    application.name = "renamed"
    application.save(update_fields=["name"])  # the stored secret is unchanged
    assert api.get(URL).status_code == 200
    proxied = ProxyApplication.objects.get(pk=application.pk)
    proxied.client_secret = "saved-through-a-proxy"
    proxied.save()
    assert api.get(URL).status_code == 401


def test_narrowing_a_grant_revokes_the_tokens_that_carry_a_withdrawn_scope(admin_browser):
    wide = _issued_token("orchestrator", ["tasks:read", "tasks:write"], "tasks:read tasks:write")
    application = get_application_model().objects.get(name="orchestrator")
    grant = ClientScopes.objects.get(application=application)
    narrow_token = get_access_token_model().objects.create(
        application=application, token="narrow-token", scope="tasks:read",
        expires=timezone.now() + timedelta(hours=1),
    )  # fmt: skip
    narrow = Client(HTTP_AUTHORIZATION=f"Bearer {narrow_token.token}")

    grant.scopes = ["tasks:read"]
    grant.save()
    assert wide.get(URL).status_code == 401  # it carried tasks:write
    assert narrow.get(URL).status_code == 200  # it carries nothing withdrawn

    # The same through the admin's change page (a conditional update, not save()).
    url = f"/admin/kohakku_controller/clientscopes/{grant.pk}/change/"
    opened = opened_version(admin_browser, url)
    edit = {"application": str(application.pk), "scopes": ["tasks:write"], **opened}
    assert admin_browser.post(url, edit).status_code == 302
    assert narrow.get(URL).status_code == 401

    # And deleting the grant withdraws every controller scope.
    again = get_access_token_model().objects.create(
        application=application, token="again-token", scope="tasks:write",
        expires=timezone.now() + timedelta(hours=1),
    )  # fmt: skip
    ClientScopes.objects.filter(pk=grant.pk).delete()
    assert not get_access_token_model().objects.filter(pk=again.pk).exists()


def test_wrong_client_secret_is_refused():
    created = create_or_reset_client("dispatcher", ["dispatchers"])
    assert _token_request(created.client_id, "wrong").status_code == 401


@pytest.mark.parametrize(
    ("path", "body", "credentials"),
    [
        ("/o/token/", "grant_type=client_credentials&client_id=x%00&client_secret=y", None),
        ("/o/token/", "grant_type=client_credentials", "a\x00:b"),
        ("/o/revoke_token/", "token=a%00b", "client"),
        ("/o/introspect/", "token=a%00b", "client"),
    ],
)
def test_nul_characters_at_the_oauth2_endpoints_are_refused_not_500(path, body, credentials):
    """PostgreSQL refuses NUL in text: such a lookup must answer as "not found"."""
    created = create_or_reset_client("orchestrator", ["tasks:read"])
    if credentials == "client":
        credentials = f"{created.client_id}:{created.client_secret}"
    headers = {}
    if credentials:
        headers["HTTP_AUTHORIZATION"] = "Basic " + base64.b64encode(credentials.encode()).decode()
    response = Client(raise_request_exception=False).post(
        path, body, content_type="application/x-www-form-urlencoded", **headers
    )
    # Unknown tokens: revocation answers 200 (RFC 7009), introspection "active": false.
    assert response.status_code < 500, response.content
    if path == "/o/token/":
        assert response.json()["error"] == "invalid_client"


# --- where credentials may travel ---------------------------------------------------------


def test_an_access_token_in_the_query_string_is_refused(oauth_client, api_client):
    token = oauth_client("tasks:read")._credentials["HTTP_AUTHORIZATION"].split()[1]
    response = api_client.get(URL, {"access_token": token})
    assert response.status_code == 401
    assert api_client.get(URL, HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 200


def test_an_access_token_in_the_query_string_is_refused_by_the_backend_whatever_the_setting(
    oauth_client, api_client, settings
):
    settings.OAUTH2_PROVIDER = {
        **settings.OAUTH2_PROVIDER,
        "COMPLIANT_BCP_RFC9700_ACCESS_TOKEN_TRANSPORT": False,
    }
    token = oauth_client("tasks:read")._credentials["HTTP_AUTHORIZATION"].split()[1]
    assert api_client.get(URL, {"access_token": token}).status_code == 401


def test_the_token_endpoint_takes_client_credentials_only(make_user):
    user = make_user("alice")
    user.set_password("right-password")
    user.save()
    created = create_or_reset_client("dispatcher", ["dispatchers"])
    basic = base64.b64encode(f"{created.client_id}:{created.client_secret}".encode()).decode()
    answers = [
        Client().post(
            "/o/token/",
            {"grant_type": "password", "username": "alice", "password": password},
            HTTP_AUTHORIZATION=f"Basic {basic}",
        )
        for password in ("wrong-password", "right-password")
    ]
    # The same answer whether the password is right or not: it is never checked.
    assert [a.status_code for a in answers] == [400, 400]
    assert answers[0].json() == answers[1].json()
    assert answers[0].json()["error"] == "unsupported_grant_type"


@pytest.mark.parametrize("path", ["/api/v1/schema/", "/api/v1/docs/"])
def test_the_openapi_document_takes_no_credential(make_user, path):
    user = make_user("bob")
    user.set_password("right-password")
    user.save()
    answers = {
        password: Client()
        .get(
            path,
            HTTP_AUTHORIZATION="Basic " + base64.b64encode(f"bob:{password}".encode()).decode(),
        )
        .status_code
        for password in ("wrong-password", "right-password")
    }
    # It cannot be used to test passwords: a Basic header is not even read.
    assert answers == {"wrong-password": 200, "right-password": 200}


# --- the host's REST_FRAMEWORK defaults do not reach the controller -----------------------


HOST_DEFAULTS_PROBE = """
import json, django
django.setup()
from django.core.management import call_command
from django.test import Client
from rest_framework.authtoken.models import Token
from kohakku_controller.skills.models import Skill, SkillVersion
client = Client()
answers = {
    "health": [client.get("/health/").status_code for _ in range(3)],
    "api": [client.get("/api/v1/tasks/").status_code for _ in range(3)],
}
call_command("migrate", verbosity=0)
user = django.contrib.auth.get_user_model().objects.create(username="staff", is_staff=True)
staff = Client(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
skill = Skill.objects.create(name="Triage", slug="triage")
SkillVersion.objects.create(skill=skill, version_number=1, content_hash="a" * 64, size=1)
wrong = staff.post("/api/v1/tasks/", "[]", content_type="application/json")
answers.update(
    options=staff.options("/api/v1/tasks/").status_code,
    versions=len(staff.get("/api/v1/skills/triage/versions/").json()),
    non_field=[wrong.status_code, sorted(wrong.json())],
)
print(json.dumps(answers))
"""


def test_the_hosts_global_drf_defaults_do_not_apply():
    # DRF reads these defaults when a view class is defined, so they need a process of
    # their own: a host whose every view is throttled (1 a day), versioned (406), filtered
    # (to nothing) and without OPTIONS, with its own key for non-field errors.
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", HOST_DEFAULTS_PROBE],
        cwd=root,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.host_defaults_settings",
            "PYTHONPATH": os.pathsep.join([str(root), str(root / "example_project")]),
        },
        capture_output=True,
        text=True,
        check=True,
    )
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    # The probes answer, and the API asks for credentials: not 429, not 406. The host's
    # filter backend hides nothing, its metadata setting closes no OPTIONS, and errors keep
    # the API's key.
    assert answers == {
        "health": [200] * 3,
        "api": [401] * 3,
        "options": 200,
        "versions": 1,
        "non_field": [400, ["non_field_errors"]],
    }, result.stderr[-2000:]


class TwoADay(UserRateThrottle):
    """A fixed rate: DRF copies DEFAULT_THROTTLE_RATES into its classes when first imported."""

    rate = "2/day"


def test_throttles_are_the_controllers_own_setting(settings, staff_client):
    from django.core.cache import cache

    cache.clear()  # throttles count in the cache
    settings.KOHAKKU_CONTROLLER = {
        **settings.KOHAKKU_CONTROLLER,
        "THROTTLE_CLASSES": ["tests.test_auth.TwoADay"],
    }
    answers = [staff_client.get("/api/v1/tasks/").status_code for _ in range(3)]
    assert answers == [200, 200, 429]


def test_a_hosts_serve_permissions_still_decide_who_reads_the_document(settings):
    from kohakku_controller.urls import _schema_view_options

    # As the URLconf is built, before and after a host chose drf-spectacular's permissions.
    assert _schema_view_options()["authentication_classes"] == []
    settings.SPECTACULAR_SETTINGS = {
        **settings.SPECTACULAR_SETTINGS,
        "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAdminUser"],
    }
    options = _schema_view_options()
    assert "permission_classes" not in options and "authentication_classes" not in options
    assert (options["throttle_classes"], options["versioning_class"]) == ([], None)


@pytest.mark.parametrize("path", ["/o/authorize/", "/o/device/", "/o/applications/"])
def test_only_the_client_credentials_endpoints_are_mounted(admin_browser, path):
    # Logged in, as a browser would be: these pages would answer errors (or manage clients
    # outside the controller's scopes) with a client-credentials-only server.
    assert admin_browser.get(path).status_code == 404
