"""POST /api/v1/dispatchers/checkin/: register by name, update, ownership, secrets, bad input."""

from __future__ import annotations

import json

import pytest
from django.test import override_settings

from kohakku_controller import signals
from kohakku_controller.dispatchers import services
from kohakku_controller.dispatchers.models import Dispatcher
from kohakku_controller.dispatchers.secrets import current_signing_secret, valid_signing_secrets

from .conftest import CHECKIN_URL, checkin_body

pytestmark = pytest.mark.django_db


def test_first_checkin_creates_and_returns_the_secret_once(dispatcher_client):
    response = dispatcher_client.post(CHECKIN_URL, checkin_body(), format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    dispatcher = Dispatcher.objects.get()
    assert body == {
        "status": "ok",
        "action": "created",
        "dispatcher_guid": str(dispatcher.guid),
        "dispatcher_slug": "local-dev",
        "signing_secret": body["signing_secret"],
    }
    assert len(body["signing_secret"]) >= 40
    assert current_signing_secret(dispatcher) == body["signing_secret"]
    assert response["Cache-Control"] == "no-store"
    assert dispatcher.application_id == dispatcher_client.application.pk
    assert dispatcher.endpoint_url == "http://dispatcher:8080"
    assert dispatcher.backends == ["local"]
    assert dispatcher.heartbeat_interval_seconds == 60
    assert dispatcher.capacity == 4
    assert dispatcher.last_heartbeat_at == dispatcher.first_checkin_at
    assert dispatcher.status() == "online"


def test_secret_is_encrypted_at_rest(dispatcher_client):
    secret = dispatcher_client.post(CHECKIN_URL, checkin_body(), format="json").json()[
        "signing_secret"
    ]
    row = Dispatcher.objects.values().get()
    assert all(secret not in str(value) for value in row.values())


def test_second_checkin_updates_without_a_secret(dispatcher_client):
    first = dispatcher_client.post(CHECKIN_URL, checkin_body(capacity=9), format="json").json()
    created = Dispatcher.objects.get()
    changed = checkin_body(
        endpoint_url="https://dispatcher.example:8443/",
        cloud="aws",
        backends=["k8s", "local"],
        labels={"gpu": "a100", "zone": "eu-west-1"},
        heartbeat_interval_seconds=30,
        version="1.2.3",
        metadata={"host": "node-1"},
    )
    response = dispatcher_client.post(CHECKIN_URL, changed, format="json")
    assert response.status_code == 200, response.content
    assert response.json() == {
        "status": "ok",
        "action": "updated",
        "dispatcher_guid": first["dispatcher_guid"],
        "dispatcher_slug": "local-dev",
    }
    dispatcher = Dispatcher.objects.get()
    assert dispatcher.endpoint_url == "https://dispatcher.example:8443"
    assert dispatcher.cloud == "aws"
    assert dispatcher.backends == ["k8s", "local"]
    assert dispatcher.labels == {"gpu": "a100", "zone": "eu-west-1"}
    assert dispatcher.heartbeat_interval_seconds == 30
    assert dispatcher.version == "1.2.3"
    assert dispatcher.metadata == {"host": "node-1"}
    assert dispatcher.capacity == 9, "an omitted field keeps its stored value"
    assert dispatcher.first_checkin_at == created.first_checkin_at
    assert dispatcher.last_checkin_at > created.last_checkin_at
    assert dispatcher.signing_secret_encrypted == created.signing_secret_encrypted


def test_checkin_clears_lost_and_counts_as_a_heartbeat(dispatcher_client, register):
    dispatcher = register()
    Dispatcher.objects.filter(pk=dispatcher.pk).update(
        last_heartbeat_at=dispatcher.last_heartbeat_at.replace(year=2020),
        lost_at=dispatcher.last_heartbeat_at,
    )
    dispatcher_client.post(CHECKIN_URL, checkin_body(), format="json")
    dispatcher.refresh_from_db()
    assert dispatcher.lost_at is None
    assert dispatcher.status() == "online"


def test_name_owned_by_another_application_is_403(dispatcher_client, oauth_client):
    dispatcher_client.post(CHECKIN_URL, checkin_body(), format="json")
    before = Dispatcher.objects.values().get()
    intruder = oauth_client("dispatchers", name="intruder")
    response = intruder.post(
        CHECKIN_URL, checkin_body(endpoint_url="http://evil:1", rotate_secret=True), format="json"
    )
    assert response.status_code == 403
    assert "another client" in response.json()["detail"]
    assert Dispatcher.objects.values().get() == before


def test_name_of_a_deleted_client_is_403_saying_so_until_an_operator_deletes_it(
    dispatcher_client, oauth_client, staff_client
):
    dispatcher_client.post(CHECKIN_URL, checkin_body(), format="json")
    dispatcher_client.application.delete()
    orphan = Dispatcher.objects.values().get()
    assert orphan["application_id"] is None
    newcomer = oauth_client("dispatchers", name="newcomer")
    response = newcomer.post(CHECKIN_URL, checkin_body(), format="json")
    assert response.status_code == 403
    assert "no longer exists" in response.json()["detail"]
    assert Dispatcher.objects.values().get() == orphan
    deleted = staff_client.delete(f"/api/v1/dispatchers/{orphan['guid']}/")
    assert deleted.status_code == 204
    response = newcomer.post(CHECKIN_URL, checkin_body(), format="json")
    assert response.status_code == 201
    assert response.json()["dispatcher_guid"] != str(orphan["guid"])


def test_rotate_secret_on_checkin_keeps_the_old_one_for_the_grace(dispatcher_client):
    old = dispatcher_client.post(CHECKIN_URL, checkin_body(), format="json").json()
    with override_settings(KOHAKKU_CONTROLLER={"SECRET_ROTATION_GRACE_SECONDS": 600}):
        response = dispatcher_client.post(
            CHECKIN_URL, checkin_body(rotate_secret=True), format="json"
        )
    assert response.status_code == 200
    body = response.json()
    assert body["action"] == "updated"
    assert body["signing_secret"] != old["signing_secret"]
    assert response["Cache-Control"] == "no-store"
    dispatcher = Dispatcher.objects.get()
    assert current_signing_secret(dispatcher) == body["signing_secret"]
    assert valid_signing_secrets(dispatcher) == [body["signing_secret"], old["signing_secret"]]
    grace = (dispatcher.previous_secret_valid_until - dispatcher.last_checkin_at).total_seconds()
    assert grace == 600


def test_rotate_secret_false_does_not_rotate(dispatcher_client):
    dispatcher_client.post(CHECKIN_URL, checkin_body(), format="json")
    response = dispatcher_client.post(CHECKIN_URL, checkin_body(rotate_secret=False), format="json")
    assert "signing_secret" not in response.json()


@pytest.mark.parametrize(
    ("names", "slugs"),
    [
        (["Local Dev!"], ["local-dev"]),
        (["GPU box", "gpu-box", "gpu_box "], ["gpu-box", "gpu-box-2", "gpu_box"]),
        (["日本", "東京"], ["dispatcher", "dispatcher-2"]),
    ],
)
def test_slug_is_derived_from_the_name_and_unique(dispatcher_client, names, slugs):
    got = [
        dispatcher_client.post(CHECKIN_URL, checkin_body(name), format="json").json()[
            "dispatcher_slug"
        ]
        for name in names
    ]
    assert got == slugs


def test_registered_signal_fires_after_commit_on_creation_only(
    dispatcher_client, django_capture_on_commit_callbacks
):
    received = []

    def receiver(sender, dispatcher, **kwargs):
        received.append(dispatcher.name)

    signals.dispatcher_registered.connect(receiver)
    try:
        with django_capture_on_commit_callbacks(execute=True) as callbacks:
            dispatcher_client.post(CHECKIN_URL, checkin_body(), format="json")
        assert len(callbacks) == 1
        assert received == ["local-dev"]
        with django_capture_on_commit_callbacks(execute=True):
            dispatcher_client.post(CHECKIN_URL, checkin_body(), format="json")
        assert received == ["local-dev"]
    finally:
        signals.dispatcher_registered.disconnect(receiver)


def test_service_returns_a_checkin_result(dispatcher_client):
    created = services.checkin(application=dispatcher_client.application, data=checkin_body())
    assert created.action == "created" and created.created
    assert created.signing_secret
    updated = services.checkin(application=dispatcher_client.application, data=checkin_body())
    assert updated.action == "updated" and not updated.created
    assert updated.signing_secret is None
    assert updated.dispatcher.pk == created.dispatcher.pk


# --- who may check in ---------------------------------------------------------------------


def test_unauthenticated_is_401(api_client):
    response = api_client.post(CHECKIN_URL, checkin_body(), format="json")
    assert response.status_code == 401
    assert not Dispatcher.objects.exists()


def test_expired_token_is_401(oauth_client):
    client = oauth_client("dispatchers", expired=True)
    assert client.post(CHECKIN_URL, checkin_body(), format="json").status_code == 401


def test_wrong_scope_is_403(oauth_client):
    client = oauth_client("tasks:read", "tasks:write", "skills:write")
    response = client.post(CHECKIN_URL, checkin_body(), format="json")
    assert response.status_code == 403
    assert "dispatchers" in response.json()["detail"]
    assert not Dispatcher.objects.exists()


def test_operator_token_is_not_a_dispatcher(staff_client):
    response = staff_client.post(CHECKIN_URL, checkin_body(), format="json")
    assert response.status_code == 403
    assert not Dispatcher.objects.exists()


# --- bad input: 400 naming the field, nothing written ---------------------------------------

BAD_INPUT = [
    ("name", None, "missing"),
    ("name", "", None),
    ("name", "   ", None),
    ("name", "x" * 101, None),
    ("name", "bad\x00name", None),
    ("name", "bad\nname", None),
    # Control characters at either end used to be trimmed away, not refused.
    ("name", "gpu-1\n", None),
    ("name", "\tgpu-1", None),
    ("name", "\x1cgpu-1\x1f", None),
    ("name", "gpu-1\u2028", None),
    ("name", "\n", None),
    ("name", "zero\u200bwidth", None),
    ("name", 123, None),
    ("name", ["local-dev"], None),
    ("name", None, None),
    ("endpoint_url", None, "missing"),
    ("endpoint_url", "ftp://dispatcher:21", None),
    ("endpoint_url", "dispatcher:8080", None),
    ("endpoint_url", "javascript:alert(1)", None),
    ("endpoint_url", "http://", None),
    ("endpoint_url", "http://user:pass@dispatcher:8080", None),
    ("endpoint_url", "http://token@dispatcher:8080", None),
    ("endpoint_url", "http://dispatcher:99999", None),
    ("endpoint_url", "http://dispatcher:8080/a path", None),
    ("endpoint_url", "http://dispatcher:8080/?next=1", None),
    ("endpoint_url", "http://dispatcher:8080/#x", None),
    ("endpoint_url", "http://d/" + "x" * 500, None),
    # Hosts no client can call: they stopped the scheduler when a push was sent.
    ("endpoint_url", "http://[v1.x]:8080", None),
    ("endpoint_url", "http://[::1::2]:8080", None),
    ("endpoint_url", "http://a..b:8080", None),
    ("endpoint_url", "http://.dispatcher:8080", None),
    ("endpoint_url", "http://" + "a" * 64 + ".example:8080", None),
    ("endpoint_url", 8080, None),
    ("endpoint_url", "http://dispatcher:8080\n", None),
    # Hosts the scheduler's HTTP client refuses, or would send to no resolver's name.
    ("endpoint_url", "http://999.1.1.1:8080", None),
    ("endpoint_url", "http://256.0.0.1", None),
    ("endpoint_url", "http://\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.com", None),
    ("endpoint_url", "http://a<b>:8080", None),
    ("endpoint_url", "http://%:8080", None),
    ("cloud", 12, None),
    ("cloud", "has space", None),
    ("cloud", "x" * 65, None),
    ("cloud", "aws\n", None),
    ("backends", "local", None),
    ("backends", {"local": True}, None),
    ("backends", [1], None),
    ("backends", [None], None),
    ("backends", ["Local"], None),
    ("backends", ["a b"], None),
    ("backends", ["x" * 33], None),
    ("backends", ["local", "local"], None),
    ("backends", ["local\n"], None),
    ("backends", [" local"], None),
    ("backends", [f"b{i}" for i in range(33)], None),
    ("labels", [], None),
    ("labels", "gpu=a100", None),
    ("labels", {"gpu": 1}, None),
    ("labels", {"gpu": None}, None),
    ("labels", {"gpu": {"model": "a100"}}, None),
    ("labels", {"gpu": ["a100"]}, None),
    ("labels", {"bad key": "v"}, None),
    ("labels", {"": "v"}, None),
    ("labels", {"k=v": "v"}, None),
    ("labels", {"x" * 64: "v"}, None),
    ("labels", {"gpu": "x" * 256}, None),
    ("labels", {"gpu": "a\nb"}, None),
    ("labels", {"gpu\n": "a100"}, None),
    ("labels", {f"k{i}": "v" for i in range(65)}, None),
    ("heartbeat_interval_seconds", 4, None),
    ("heartbeat_interval_seconds", 3601, None),
    ("heartbeat_interval_seconds", 0, None),
    ("heartbeat_interval_seconds", -60, None),
    ("heartbeat_interval_seconds", "60", None),
    ("heartbeat_interval_seconds", 60.5, None),
    ("heartbeat_interval_seconds", True, None),
    ("heartbeat_interval_seconds", None, None),
    ("capacity", 0, None),
    ("capacity", 10_001, None),
    ("capacity", "4", None),
    ("capacity", False, None),
    ("version", 1, None),
    ("version", "x" * 65, None),
    ("version", "\x1f1.0", None),
    ("version", "1.0\r\n", None),
    ("metadata", [], None),
    ("metadata", "x", None),
    ("metadata", {"blob": "x" * 20_000}, None),
    ("rotate_secret", "true", None),
    ("rotate_secret", 1, None),
    ("nmae", "typo", None),
    ("status", "ok", None),
    ("signing_secret", "mine", None),
]


@pytest.mark.parametrize(
    ("field", "value", "mode"), BAD_INPUT, ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(BAD_INPUT)]
)
def test_bad_input_is_400_naming_the_field_and_writes_nothing(
    dispatcher_client, field, value, mode
):
    body = checkin_body()
    if mode == "missing":
        del body[field]
    else:
        body[field] = value
    response = dispatcher_client.post(CHECKIN_URL, body, format="json")
    assert response.status_code == 400, response.content
    errors = response.json()
    assert field in errors, errors
    assert isinstance(errors[field], list | dict) and errors[field]
    assert not Dispatcher.objects.exists()


@pytest.mark.parametrize(
    ("url", "stored"),
    [
        ("http://[::1]:8080/", "http://[::1]:8080"),
        ("http://dispatcher_1:8080", "http://dispatcher_1:8080"),  # a compose service name
        ("https://münchen.example/kohakku", "https://münchen.example/kohakku"),
        ("http://10.0.0.7:8080", "http://10.0.0.7:8080"),
    ],
)
def test_endpoint_urls_of_real_hosts_are_accepted(dispatcher_client, url, stored):
    response = dispatcher_client.post(CHECKIN_URL, checkin_body(endpoint_url=url), format="json")
    assert response.status_code == 201, response.content
    assert Dispatcher.objects.get().endpoint_url == stored


def test_metadata_cap_counts_utf8_bytes(dispatcher_client):
    """16 KiB once encoded: "é" is two bytes of UTF-8, not the six of a JSON escape."""
    body = checkin_body(metadata={"notes": "é" * 6000})  # 12,000 bytes
    response = dispatcher_client.post(CHECKIN_URL, body, format="json")
    assert response.status_code == 201, response.content
    body = checkin_body(name="other", metadata={"notes": "é" * 8200})  # 16,400 bytes
    assert dispatcher_client.post(CHECKIN_URL, body, format="json").status_code == 400


def test_bad_input_on_update_changes_nothing(dispatcher_client):
    dispatcher_client.post(CHECKIN_URL, checkin_body(), format="json")
    before = Dispatcher.objects.values().get()
    body = checkin_body(cloud="aws", heartbeat_interval_seconds=1, rotate_secret=True)
    response = dispatcher_client.post(CHECKIN_URL, body, format="json")
    assert response.status_code == 400
    assert list(response.json()) == ["heartbeat_interval_seconds"]
    assert Dispatcher.objects.values().get() == before


def test_every_faulty_field_is_named_at_once(dispatcher_client):
    body = checkin_body(name="", endpoint_url="ftp://x", extra=1)
    response = dispatcher_client.post(CHECKIN_URL, body, format="json")
    assert response.status_code == 400
    assert set(response.json()) == {"name", "endpoint_url", "extra"}


@pytest.mark.parametrize("body", [[], ["local-dev"], "local-dev", 42, None])
def test_body_that_is_not_an_object_is_400(dispatcher_client, body):
    response = dispatcher_client.post(
        CHECKIN_URL, json.dumps(body), content_type="application/json"
    )
    assert response.status_code == 400
    assert response.json()
    assert not Dispatcher.objects.exists()


@pytest.mark.parametrize("raw", [b"{", b'{"name": "x",}', b"NaN", b'{"name": Infinity}'])
def test_malformed_json_is_400(dispatcher_client, raw):
    response = dispatcher_client.post(CHECKIN_URL, raw, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["detail"].startswith("JSON parse error")
    assert not Dispatcher.objects.exists()


def test_form_encoded_body_is_415(dispatcher_client):
    response = dispatcher_client.post(
        CHECKIN_URL, "name=x", content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 415
    assert not Dispatcher.objects.exists()


def test_body_over_the_cap_is_refused(dispatcher_client):
    body = checkin_body(metadata={"pad": "x" * 5000})
    with override_settings(KOHAKKU_CONTROLLER={"MAX_JSON_BODY_BYTES": 4096}):
        response = dispatcher_client.post(CHECKIN_URL, body, format="json")
    assert response.status_code == 413
    assert "larger than 4096 bytes" in response.json()["detail"]
    assert not Dispatcher.objects.exists()


def test_service_validates_too(dispatcher_client):
    from rest_framework.exceptions import ValidationError

    with pytest.raises(ValidationError) as excinfo:
        services.checkin(application=dispatcher_client.application, data={"name": "x"})
    assert "endpoint_url" in excinfo.value.detail
    assert not Dispatcher.objects.exists()


def test_too_many_backends_are_refused_by_their_count_before_any_name_is_checked(
    dispatcher_client,
):
    # A list of a hundred thousand names fits under the body cap; checking each one (and
    # looking for duplicates among them) before the count took over a minute of CPU.
    body = checkin_body(backends=["Not-A-Name", *(f"b{i}" for i in range(40))])
    response = dispatcher_client.post(CHECKIN_URL, body, format="json")
    assert response.status_code == 400
    assert response.json() == {"backends": ["Ensure this field has no more than 32 elements."]}
    assert not Dispatcher.objects.exists()


@pytest.mark.parametrize(
    "spelling", ["  gpu-1  ", "gpu-1\u00a0", "\u3000gpu-1", "\u2003gpu-1\u202f"]
)
def test_spaces_around_a_name_are_trimmed_whatever_their_kind(dispatcher_client, spelling):
    # A name that only looks like another one (a no-break or ideographic space at an end)
    # would be a second dispatcher, and another client could take it.
    first = dispatcher_client.post(CHECKIN_URL, checkin_body(name="gpu-1"), format="json")
    again = dispatcher_client.post(CHECKIN_URL, checkin_body(name=spelling), format="json")
    assert (first.status_code, again.status_code) == (201, 200)
    assert list(Dispatcher.objects.values_list("name", flat=True)) == ["gpu-1"]
