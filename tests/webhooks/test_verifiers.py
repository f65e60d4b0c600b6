"""Signature verifiers against the senders' own published test vectors."""

from __future__ import annotations

import pytest

from kohakku_controller.webhooks.verifiers import (
    VerificationError,
    decode_standard_webhooks_secret,
    verify_github_signature,
    verify_slack_signature,
    verify_standard_webhooks_signature,
)

# GitHub docs, "Validating webhook deliveries": secret, payload and expected signature.
GITHUB_SECRET = "It's a Secret to Everybody"
GITHUB_BODY = b"Hello, World!"
GITHUB_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"

# Slack docs, "Verifying requests from Slack": the slash command example.
SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
SLACK_TIMESTAMP = "1531420618"
SLACK_BODY = (
    b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&"
    b"channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&"
    b"command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands"
    b"%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&"
    b"trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)
SLACK_SIGNATURE = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"

# Standard Webhooks specification / reference libraries: the published example.
SW_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SW_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SW_TIMESTAMP = "1614265330"
SW_BODY = b'{"test": 2432232314}'
SW_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


class TestGitHub:
    def test_published_vector_verifies(self):
        verify_github_signature([GITHUB_SECRET], GITHUB_BODY, GITHUB_SIGNATURE)

    def test_any_of_several_secrets_verifies(self):
        verify_github_signature(["new-secret", GITHUB_SECRET], GITHUB_BODY, GITHUB_SIGNATURE)

    @pytest.mark.parametrize(
        ("secrets", "body", "signature", "reason"),
        [
            ([GITHUB_SECRET], b"Hello, World?", GITHUB_SIGNATURE, "mismatch"),
            (["wrong"], GITHUB_BODY, GITHUB_SIGNATURE, "mismatch"),
            ([], GITHUB_BODY, GITHUB_SIGNATURE, "mismatch"),
            ([GITHUB_SECRET], GITHUB_BODY, None, "missing"),
            ([GITHUB_SECRET], GITHUB_BODY, "", "missing"),
            ([GITHUB_SECRET], GITHUB_BODY, GITHUB_SIGNATURE.replace("sha256", "sha1"), "malformed"),
            ([GITHUB_SECRET], GITHUB_BODY, "sha256=zz", "malformed"),
            ([GITHUB_SECRET], GITHUB_BODY, "sha256=", "malformed"),
            ([GITHUB_SECRET], GITHUB_BODY, GITHUB_SIGNATURE[:-2], "mismatch"),
        ],
    )
    def test_rejections(self, secrets, body, signature, reason):
        with pytest.raises(VerificationError) as excinfo:
            verify_github_signature(secrets, body, signature)
        assert excinfo.value.reason == reason


class TestSlack:
    NOW = int(SLACK_TIMESTAMP) + 10

    def test_published_vector_verifies(self):
        verify_slack_signature(
            [SLACK_SECRET], SLACK_BODY, SLACK_TIMESTAMP, SLACK_SIGNATURE, now=self.NOW
        )

    def test_rotation_secret_list(self):
        verify_slack_signature(
            ["other", SLACK_SECRET], SLACK_BODY, SLACK_TIMESTAMP, SLACK_SIGNATURE, now=self.NOW
        )

    @pytest.mark.parametrize("skew", [301, -301, 10_000])
    def test_stale_or_future_timestamp_is_refused(self, skew):
        with pytest.raises(VerificationError) as excinfo:
            verify_slack_signature(
                [SLACK_SECRET],
                SLACK_BODY,
                SLACK_TIMESTAMP,
                SLACK_SIGNATURE,
                now=int(SLACK_TIMESTAMP) + skew,
            )
        assert excinfo.value.reason == "expired"

    def test_window_edge_is_accepted(self):
        verify_slack_signature(
            [SLACK_SECRET],
            SLACK_BODY,
            SLACK_TIMESTAMP,
            SLACK_SIGNATURE,
            now=int(SLACK_TIMESTAMP) + 300,
        )

    @pytest.mark.parametrize(
        ("body", "timestamp", "signature", "reason"),
        [
            (SLACK_BODY + b"&x=1", SLACK_TIMESTAMP, SLACK_SIGNATURE, "mismatch"),
            # The timestamp is signed: changing it breaks the signature.
            (SLACK_BODY, str(int(SLACK_TIMESTAMP) + 1), SLACK_SIGNATURE, "mismatch"),
            (SLACK_BODY, None, SLACK_SIGNATURE, "missing"),
            (SLACK_BODY, "yesterday", SLACK_SIGNATURE, "malformed"),
            (SLACK_BODY, "-1531420618", SLACK_SIGNATURE, "malformed"),
            (SLACK_BODY, "\u0661\u0665\u0663", SLACK_SIGNATURE, "malformed"),
            (SLACK_BODY, "9" * 40, SLACK_SIGNATURE, "malformed"),
            (SLACK_BODY, SLACK_TIMESTAMP, None, "missing"),
            (SLACK_BODY, SLACK_TIMESTAMP, SLACK_SIGNATURE.replace("v0=", "v1="), "malformed"),
            (SLACK_BODY, SLACK_TIMESTAMP, "v0=not-hex", "malformed"),
        ],
    )
    def test_rejections(self, body, timestamp, signature, reason):
        with pytest.raises(VerificationError) as excinfo:
            verify_slack_signature([SLACK_SECRET], body, timestamp, signature, now=self.NOW)
        assert excinfo.value.reason == reason


class TestStandardWebhooks:
    NOW = int(SW_TIMESTAMP)

    def test_published_vector_verifies(self):
        verify_standard_webhooks_signature(
            [SW_SECRET], SW_BODY, SW_ID, SW_TIMESTAMP, SW_SIGNATURE, now=self.NOW
        )

    def test_one_of_several_signatures_is_enough(self):
        header = f"v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= v1a,xyz {SW_SIGNATURE}"
        verify_standard_webhooks_signature(
            [SW_SECRET], SW_BODY, SW_ID, SW_TIMESTAMP, header, now=self.NOW
        )

    def test_one_of_several_secrets_is_enough(self):
        verify_standard_webhooks_signature(
            ["whsec_" + "A" * 32, "not base64 !!", SW_SECRET],
            SW_BODY,
            SW_ID,
            SW_TIMESTAMP,
            SW_SIGNATURE,
            now=self.NOW,
        )

    def test_secret_decoding(self):
        assert decode_standard_webhooks_secret(SW_SECRET) is not None
        assert decode_standard_webhooks_secret("whsec_!!!") is None

    @pytest.mark.parametrize(
        ("body", "msg_id", "timestamp", "signature", "reason"),
        [
            (b'{"test": 2432232315}', SW_ID, SW_TIMESTAMP, SW_SIGNATURE, "mismatch"),
            (SW_BODY, "msg_other", SW_TIMESTAMP, SW_SIGNATURE, "mismatch"),
            (SW_BODY, None, SW_TIMESTAMP, SW_SIGNATURE, "missing"),
            (SW_BODY, SW_ID, None, SW_SIGNATURE, "missing"),
            (SW_BODY, SW_ID, SW_TIMESTAMP, None, "missing"),
            (SW_BODY, SW_ID, "soon", SW_SIGNATURE, "malformed"),
            (SW_BODY, SW_ID, SW_TIMESTAMP, "v2,abc", "malformed"),
            (SW_BODY, SW_ID, SW_TIMESTAMP, "v1,***", "malformed"),
        ],
    )
    def test_rejections(self, body, msg_id, timestamp, signature, reason):
        with pytest.raises(VerificationError) as excinfo:
            verify_standard_webhooks_signature(
                [SW_SECRET], body, msg_id, timestamp, signature, now=self.NOW
            )
        assert excinfo.value.reason == reason

    def test_stale_timestamp_is_refused(self):
        with pytest.raises(VerificationError) as excinfo:
            verify_standard_webhooks_signature(
                [SW_SECRET], SW_BODY, SW_ID, SW_TIMESTAMP, SW_SIGNATURE, now=self.NOW + 301
            )
        assert excinfo.value.reason == "expired"


def test_verifiers_module_has_no_django_import():
    import ast
    from pathlib import Path

    import kohakku_controller.webhooks.verifiers as module

    tree = ast.parse(Path(module.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= {
        "__future__",
        "base64",
        "binascii",
        "hashlib",
        "hmac",
        "time",
        "collections",
    }
