"""The rules of role keys (signet_cluster.security.roles, issue 12): the text forms of private
and public keys, the key id every node derives alike, what an unusable key file or public key
is told, and which signatures verify. The known-answer vector signed with a role key is in
tests/test_signing_rules.py."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from signet_cluster.errors import ConfigError
from signet_cluster.security.roles import (
    PRIVATE_PREFIX,
    PUBLIC_PREFIX,
    generate_role_key,
    load_role_key,
    parse_public_keys,
    parse_role_key,
    public_text,
    role_key_id,
    verify_role,
)

SEED = hashlib.sha256(b"role rules seed").digest()
PRIVATE_TEXT = PRIVATE_PREFIX + base64.urlsafe_b64encode(SEED).rstrip(b"=").decode()


def _raw_public(text: str) -> bytes:
    body = text.removeprefix(PUBLIC_PREFIX)
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


def test_a_generated_key_pair_is_one_line_each_and_they_belong_together() -> None:
    """Rule: a new key pair is a private key file text of one line
    `ed25519-private:<43 base64url characters>` ending in a newline, and the public key text
    `ed25519:<43 base64url characters>` of the same key; two pairs differ."""
    private_text, public = generate_role_key()
    assert re.fullmatch(r"ed25519-private:[A-Za-z0-9_-]{43}\n", private_text)
    assert re.fullmatch(r"ed25519:[A-Za-z0-9_-]{43}", public)
    key = parse_role_key(private_text, "key")
    assert key.public == public
    assert generate_role_key()[1] != public


def test_the_key_id_is_derived_from_the_public_key() -> None:
    """Rule: a role key's id is `e` and the first 12 hex digits of
    SHA-256("signet-cluster role key" NUL public key bytes), so every node derives the same id
    from the public key alone, and it cannot look like a cluster key's `k...` id."""
    key = parse_role_key(PRIVATE_TEXT, "key")
    raw = _raw_public(key.public)
    expected = "e" + hashlib.sha256(b"signet-cluster role key\0" + raw).hexdigest()[:12]
    assert key.id == expected
    public = key.private.public_key()
    assert role_key_id(public) == expected
    assert public_text(public) == key.public
    assert raw == public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert parse_public_keys([key.public], "admin_public_keys") == {expected: public}


def test_a_signature_is_unpadded_base64url_and_verifies_only_its_message() -> None:
    """Rule: a role signature is 86 base64url characters; it verifies for the signed bytes
    under the signer's public key, and nothing else does: other bytes, another key, a
    signature that is not base64url or has the wrong length."""
    key = parse_role_key(PRIVATE_TEXT, "key")
    other = parse_role_key(generate_role_key()[0], "key")
    signature = key.sign(b"message")
    assert re.fullmatch(r"[A-Za-z0-9_-]{86}", signature)
    public = key.private.public_key()
    assert verify_role(public, signature, b"message") is True
    assert verify_role(public, signature, b"messagf") is False
    assert verify_role(other.private.public_key(), signature, b"message") is False
    assert verify_role(public, signature[:-2], b"message") is False
    assert verify_role(public, "A", b"message") is False
    assert verify_role(public, other.sign(b"message"), b"message") is False


def test_a_private_key_is_never_shown() -> None:
    """Rule: a role key's repr names its id, never the private key."""
    key = parse_role_key(PRIVATE_TEXT, "key")
    assert "private" not in repr(key) and key.id in repr(key)


@pytest.mark.parametrize(
    "text",
    [
        PRIVATE_TEXT.removeprefix(PRIVATE_PREFIX),  # no prefix
        PUBLIC_PREFIX + PRIVATE_TEXT.removeprefix(PRIVATE_PREFIX),  # a public key's prefix
        PRIVATE_TEXT[:-2],  # 31 bytes
        PRIVATE_TEXT + "AAAA",  # 35 bytes
        PRIVATE_PREFIX + "!" * 43,  # not base64url
        PRIVATE_PREFIX + "A",  # not base64 at all (bad padding)
    ],
)
def test_an_unusable_private_key_names_the_setting_and_not_the_text(text: str) -> None:
    """Rule: a private key that is not `ed25519-private:` and 32 base64url bytes is a
    configuration error naming where it came from and how to make one, never quoting it."""
    with pytest.raises(ConfigError) as info:
        parse_role_key(text, "coordinator_key_file /etc/k")
    assert info.value.problems == [
        "coordinator_key_file /etc/k: not a role key (make one with "
        "`signet-cluster keygen --role ...`)"
    ]


def test_a_key_file_is_read_with_its_whitespace_stripped(tmp_path: Path) -> None:
    """Rule: a private key file may carry surrounding whitespace (an editor's newline); an
    unreadable one is a configuration error naming the setting, the path and why."""
    path = tmp_path / "admin.key"
    path.write_text(f"\n  {PRIVATE_TEXT}  \n", encoding="utf-8")
    assert load_role_key(path, "admin key").id == parse_role_key(PRIVATE_TEXT, "k").id
    missing = tmp_path / "none.key"
    with pytest.raises(ConfigError) as info:
        load_role_key(missing, "admin key")
    assert info.value.problems == [f"admin key {missing} cannot be read: FileNotFoundError"]
    binary = tmp_path / "binary.key"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError) as info:
        load_role_key(binary, "admin key")
    assert info.value.problems == [f"admin key {binary} cannot be read: UnicodeDecodeError"]
    garbled = tmp_path / "garbled.key"
    garbled.write_text("ed25519-private:nope", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_role_key(garbled, "admin key")
    assert info.value.problems == [
        f"admin key {garbled}: not a role key (make one with `signet-cluster keygen --role ...`)"
    ]


def test_public_keys_are_read_all_at_once_and_every_bad_one_is_listed() -> None:
    """Rule: public keys are keyed by their id, surrounding whitespace ignored; every
    unreadable one (a private key's text included) is listed by its index in one error."""
    first = parse_role_key(PRIVATE_TEXT, "k")
    second = parse_role_key(generate_role_key()[0], "k")
    keys = parse_public_keys([f" {first.public}\n", second.public], "admin_public_keys")
    assert sorted(keys) == sorted([first.id, second.id])
    with pytest.raises(ConfigError) as info:
        parse_public_keys([first.public, PRIVATE_TEXT, "ed25519:short"], "admin_public_keys")
    assert info.value.problems == [
        "admin_public_keys[1]: not an `ed25519:...` public key",
        "admin_public_keys[2]: not an `ed25519:...` public key",
    ]
    assert parse_public_keys([], "admin_public_keys") == {}
