"""The responder's shared secret: reading it, its two uses kept apart, and a file replaced at run time."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from pathlib import Path

import pytest

from qiancheng.core import responder_secret
from qiancheng.core.responder_secret import SecretFile, authorization_header, http_credential, read_secret

SECRET = "0123456789abcdef0123456789abcdef"


def test_the_secret_is_the_file_without_surrounding_white_space(tmp_path: Path) -> None:
    file = tmp_path / "secret"
    file.write_text(f"  {SECRET}\n")
    assert read_secret(file) == SECRET.encode()


@pytest.mark.parametrize(("content", "why"), [(None, "cannot read"), ("", "0 bytes"), ("short-secret\n", "12 bytes")])
def test_an_unusable_secret_says_why(tmp_path: Path, content: str | None, why: str) -> None:
    file = tmp_path / "secret"
    if content is not None:
        file.write_text(content)
    with pytest.raises(ValueError, match=why):
        read_secret(file)


def test_the_http_credential_is_derived_and_does_not_reveal_the_stamp_key() -> None:
    secret = SECRET.encode()
    expected = hmac.new(secret, b"qiancheng responder http", hashlib.sha256).hexdigest()
    assert http_credential(secret) == expected
    assert authorization_header(secret) == f"Bearer {expected}"
    assert SECRET not in authorization_header(secret)


def test_a_replaced_file_is_read_again_and_a_broken_one_keeps_the_last_good_secret(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    now = [1000.0]
    monkeypatch.setattr(responder_secret, "monotonic", lambda: now[0])
    file = tmp_path / "secret"
    file.write_text(SECRET)
    secret = SecretFile(file)
    assert secret.secret == SECRET.encode()
    replaced = tmp_path / "secret.new"
    replaced.write_text("fedcba9876543210fedcba9876543210")
    os.replace(replaced, file)
    assert secret.secret == SECRET.encode()  # looked at no more than once a second
    now[0] += 1.0
    assert secret.secret == b"fedcba9876543210fedcba9876543210"
    file.write_text("too short")
    now[0] += 1.0
    with caplog.at_level(logging.WARNING, logger="qiancheng.secret"):
        assert secret.secret == b"fedcba9876543210fedcba9876543210"
        now[0] += 1.0
        assert secret.secret == b"fedcba9876543210fedcba9876543210"
    assert [r.message for r in caplog.records].count(next(r.message for r in caplog.records)) == 1
    assert "secret_unusable" in caplog.records[0].message
    file.write_text(SECRET)
    now[0] += 1.0
    assert secret.secret == SECRET.encode()
