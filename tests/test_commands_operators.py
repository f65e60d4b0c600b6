"""Management commands as a careless operator or a CI script meets them: client ids that
change hands, repeated or contradictory flags, bytes that are not UTF-8, two runs at once,
and what reaches the terminal (exit status, one-line errors, no secret on failure)."""

from __future__ import annotations

import io
import threading

import pytest
from django.core.management import CommandError, ManagementUtility, call_command
from django.db import connection, connections
from oauth2_provider.models import get_application_model

from kohakku_controller.oauth import ClientScopes

pytestmark = pytest.mark.django_db

NOT_UTF8 = b"eu-\xff".decode("utf-8", "surrogateescape")  # as sys.argv holds it


def create(name, *args, scopes="tasks:read"):
    out = io.StringIO()
    call_command("kohakku_create_client", name, "--scopes", scopes, *args, stdout=out)
    return dict(line.split("=", 1) for line in out.getvalue().splitlines())


def run(monkeypatch, capsys, *argv):
    """Run ``manage.py *argv`` in-process; return (exit status, stdout, stderr)."""
    # run_from_argv closes the connections at the end, which would end the test's transaction.
    monkeypatch.setattr(connections, "close_all", lambda: None)
    capsys.readouterr()
    try:
        ManagementUtility(["manage.py", *argv]).execute()
        status = 0
    except SystemExit as exc:
        status = exc.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_create_client_refuses_a_new_client_id_for_an_existing_name():
    first = create("ci")
    application = get_application_model().objects.get()
    with pytest.raises(
        CommandError,
        match=(
            rf"The application 'ci' has the client id '{first['client_id']}', not 'ci-2'\..*"
            "--change-client-id"
        ),
    ):
        create("ci", "--client-id", "ci-2")
    assert get_application_model().objects.get() == application
    application.refresh_from_db()
    assert application.client_id == first["client_id"]


def test_create_client_changes_the_client_id_only_when_asked_and_reruns_are_resets():
    create("ci")
    application = get_application_model().objects.get()
    changed = create("ci", "--client-id", "ci-2", "--change-client-id")
    application.refresh_from_db()
    assert (application.client_id, changed["client_id"]) == ("ci-2", "ci-2")
    # Running the same provisioning again resets the same application.
    for args in (["--client-id", "ci-2"], ["--client-id", "ci-2", "--change-client-id"], []):
        again = create("ci", *args)
        assert again["client_id"] == "ci-2"
        assert again["client_secret"] != changed["client_secret"]
    assert list(get_application_model().objects.all()) == [application]


def test_create_client_refuses_to_rename_onto_a_name_in_use():
    create("eu", "--client-id", "eu-id")
    create("us", "--client-id", "us-id")
    with pytest.raises(
        CommandError,
        match=r"Cannot rename the application 'us' to 'eu': .* client id 'eu-id'",
    ):
        create("eu", "--client-id", "us-id", "--rename")
    model = get_application_model()
    assert sorted(model.objects.values_list("name", "client_id")) == [
        ("eu", "eu-id"),
        ("us", "us-id"),
    ]


@pytest.mark.parametrize("flag", ["--rename", "--change-client-id"])
def test_create_client_flags_that_need_a_client_id(flag):
    with pytest.raises(CommandError, match=f"{flag} needs --client-id"):
        create("ci", flag)
    assert not get_application_model().objects.exists()


@pytest.mark.parametrize(
    "args",
    [
        ["--client-id", "a", "--client-id", "b"],
        ["--scopes", "tasks:write", "--client-id", "a"],
    ],
)
def test_create_client_refuses_repeated_options(args):
    option = "--client-id" if args.count("--client-id") == 2 else "--scopes"
    with pytest.raises(CommandError, match=f"argument {option}: given more than once"):
        create("ci", *args)
    assert not get_application_model().objects.exists()


def test_create_client_prints_the_scopes_it_granted():
    printed = create("ci", scopes="tasks:write,tasks:read tasks:read")
    assert printed["scopes"] == "tasks:read tasks:write"
    assert ClientScopes.objects.get().scopes == ["tasks:read", "tasks:write"]


def test_create_client_escapes_unknown_scopes_in_its_error():
    with pytest.raises(CommandError) as error:
        create("ci", scopes="\x1b[2Jadmin")
    assert "\x1b" not in str(error.value)
    assert r"unknown scopes: \x1b[2Jadmin" in str(error.value)


def test_names_that_are_not_utf8_are_refused_not_a_traceback():
    with pytest.raises(CommandError, match="The application name must be valid UTF-8"):
        create(NOT_UTF8)
    with pytest.raises(CommandError, match="--client-id must be valid UTF-8"):
        create("eu", "--client-id", NOT_UTF8)
    with pytest.raises(CommandError, match="--name: must be valid UTF-8"):
        call_command("kohakku_scheduler", "--once", "--name", NOT_UTF8, stdout=io.StringIO())
    assert not get_application_model().objects.exists()


@pytest.mark.parametrize("name", [" eu-1", "eu-1 ", "eu-1\u00a0"])
def test_padded_names_are_refused(name):
    with pytest.raises(CommandError, match="application name must not start or end with white"):
        create(name)
    with pytest.raises(CommandError, match="--name: must not start or end with white space"):
        call_command("kohakku_scheduler", "--once", "--name", name, stdout=io.StringIO())
    assert not get_application_model().objects.exists()


def test_prune_deliveries_prints_minus_zero_days_as_zero():
    out = io.StringIO()
    call_command("kohakku_prune_deliveries", "--days", "-0", "--dry-run", stdout=out)
    assert out.getvalue() == "Would delete 0 deliveries older than 0 days.\n"


def test_create_client_from_the_command_line(monkeypatch, capsys):
    status, out, err = run(
        monkeypatch, capsys, "kohakku_create_client", "ci", "--scopes", "dispatchers"
    )
    assert (status, err) == (0, "")
    assert [line.split("=")[0] for line in out.splitlines()] == [
        "client_id",
        "client_secret",
        "scopes",
    ]

    # Refusals: status 1, one line on stderr, nothing on stdout (no secret), no traceback.
    for argv in (
        ["ci", "--scopes", "dispatchers", "--client-id", "other"],
        ["ci", "--scopes", "admin"],
        ["ci", "--scopes", "dispatchers", "--rename"],
        [NOT_UTF8, "--scopes", "dispatchers"],
    ):
        status, out, err = run(monkeypatch, capsys, "kohakku_create_client", *argv)
        assert (status, out) == (1, "")
        assert err.startswith("CommandError: ")
        assert err.count("\n") == 1
        assert "Traceback" not in err

    # Usage errors: status 2.
    status, out, err = run(
        monkeypatch, capsys, "kohakku_create_client", "ci", "--scopes", "a", "--scopes", "b"
    )
    assert (status, out) == (2, "")
    assert "argument --scopes: given more than once" in err
    assert get_application_model().objects.count() == 1


def provision_at_once(runs, name, *args):
    """``runs`` threads create the client ``name`` at the same moment; their client ids, and
    what they raised."""
    barrier = threading.Barrier(runs)
    printed, failures = [], []

    def provision():
        try:
            barrier.wait()
            printed.append(create(name, *args)["client_id"])
        except BaseException as exc:
            failures.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=provision) for _ in range(runs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return printed, failures


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_create_client_runs_make_one_application():
    """Two provisioning jobs at once (say, two deploys) must not make two applications with
    one name, nor fail on the client id's unique constraint."""
    for round_, args in enumerate([[], ["--client-id", "shared-id"], []]):
        name = f"race-{round_}"
        printed, failures = provision_at_once(6, name, *args)
        assert failures == []
        assert get_application_model().objects.filter(name=name).count() == 1
        assert len(set(printed)) == 1
