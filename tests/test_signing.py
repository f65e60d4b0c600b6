"""The dispatcher-contract signatures, and that the module stays free of Django."""

import subprocess
import sys

import pytest

from kohakku_controller.signing import (
    SignatureError,
    compute_signature,
    sign_request,
    verify_signature,
)

BODY = b'{"status": "completed"}'


def test_signature_is_hmac_sha256_over_timestamp_dot_body():
    # Reference value computed independently:
    # printf '1700000000.{"status": "completed"}' | openssl dgst -sha256 -hmac secret
    import hashlib
    import hmac

    expected = hmac.new(b"secret", b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert compute_signature("secret", 1700000000, BODY) == f"sha256={expected}"


def test_round_trip():
    headers = sign_request("secret", BODY)
    verify_signature(
        ["secret"], BODY, headers["X-Kohakku-Timestamp"], headers["X-Kohakku-Signature"]
    )


def test_previous_secret_still_verifies_during_rotation():
    headers = sign_request("old", BODY)
    verify_signature(
        ["new", "old"], BODY, headers["X-Kohakku-Timestamp"], headers["X-Kohakku-Signature"]
    )


@pytest.mark.parametrize(
    ("timestamp", "signature", "reason"),
    [
        (None, "sha256=00", "missing"),
        ("1700000000", None, "missing"),
        ("soon", "sha256=00", "malformed"),
        ("9" * 400, "sha256=00", "malformed"),  # beyond a float: was an OverflowError
        ("1_700_000_000", "sha256=00", "malformed"),
        ("\u0661\u0667\u0660\u0660", "sha256=00", "malformed"),  # Arabic-Indic digits
        ("-1700000000", "sha256=00", "malformed"),
        ("1700000000", "md5=00", "malformed"),
        ("1700000000", "sha256=" + "0" * 64, "mismatch"),
    ],
)
def test_bad_headers_are_refused(timestamp, signature, reason):
    with pytest.raises(SignatureError) as info:
        verify_signature(["secret"], BODY, timestamp, signature, now=1700000000)
    assert info.value.reason == reason


def test_timestamp_outside_window_is_refused():
    headers = sign_request("secret", BODY, timestamp=1700000000)
    with pytest.raises(SignatureError) as info:
        verify_signature(
            ["secret"],
            BODY,
            headers["X-Kohakku-Timestamp"],
            headers["X-Kohakku-Signature"],
            now=1700000000 + 301,
        )
    assert info.value.reason == "expired"


def test_tampered_body_is_refused():
    headers = sign_request("secret", BODY)
    with pytest.raises(SignatureError):
        verify_signature(
            ["secret"], BODY + b" ", headers["X-Kohakku-Timestamp"], headers["X-Kohakku-Signature"]
        )


def test_module_imports_nothing_from_django():
    code = (
        "import sys, kohakku_controller.signing; "
        "assert not [m for m in sys.modules if m.startswith('django')], 'django imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
