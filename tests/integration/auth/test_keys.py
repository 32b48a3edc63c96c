"""Signing keys: where they come from, and rotation without logging anyone out."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from auth_service.app import create_app
from auth_service.keys import generate_pem, load_signing_key
from auth_service.settings import AuthSettings
from tests.helpers import in_process
from tests.integration.auth.conftest import Api, auth_settings, bearer, wait_for_admin


def public_pem(private_pem: bytes) -> str:
    key = serialization.load_pem_private_key(private_pem, password=None)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


async def test_rotation_keeps_old_tokens_valid_until_the_old_key_is_dropped(database_url: str, tmp_path: Path) -> None:
    old, new = generate_pem(), generate_pem()
    async with in_process(create_app(auth_settings(database_url, tmp_path, signing_key=old.decode()))) as client:
        await wait_for_admin(client)
        api = Api(client)
        await api.register("olga")
        old_token = (await api.login("olga"))["access_token"]

    rotated = auth_settings(database_url, tmp_path, signing_key=new.decode(), previous_public_keys=public_pem(old))
    async with in_process(create_app(rotated)) as client:
        api = Api(client)
        kids = [key["kid"] for key in (await client.get("/auth/.well-known/jwks.json")).json()["keys"]]
        assert len(kids) == 2
        assert (await client.get("/auth/me", headers=bearer(old_token))).status_code == 200
        new_token = (await api.login("olga"))["access_token"]
        assert (await client.get("/auth/me", headers=bearer(new_token))).status_code == 200

    retired = auth_settings(database_url, tmp_path, signing_key=new.decode())
    async with in_process(create_app(retired)) as client:
        assert len((await client.get("/auth/.well-known/jwks.json")).json()["keys"]) == 1
        assert (await client.get("/auth/me", headers=bearer(old_token))).status_code == 401
        assert (await client.get("/auth/me", headers=bearer(new_token))).status_code == 200


def test_development_key_is_generated_once_and_kept(tmp_path: Path) -> None:
    settings = AuthSettings(data_dir=tmp_path)
    first, second = load_signing_key(settings), load_signing_key(settings)
    assert first.kid == second.kid
    assert first.algorithm == "EdDSA"
    assert (tmp_path / "auth" / "signing-key.pem").stat().st_mode & 0o777 == 0o600


def test_keys_from_a_file_and_of_other_types(tmp_path: Path) -> None:
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "key.pem").write_bytes(pem)
    signing = load_signing_key(AuthSettings(signing_key_file=tmp_path / "key.pem"))
    assert signing.algorithm == "ES256"


def test_production_refuses_to_start_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPOT_ENVIRONMENT", "production")
    with pytest.raises(ValueError, match="DEPOT_SIGNING_KEY"):
        AuthSettings()
    monkeypatch.setenv("DEPOT_SIGNING_KEY", generate_pem().decode())
    assert AuthSettings().signing_key is not None
