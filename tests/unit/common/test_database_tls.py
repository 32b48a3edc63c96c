"""`DEPOT_DATABASE_SSL_ROOT_CERT`: a context that verifies the server (verify-full), or a clear refusal at start-up."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from pydantic import ValidationError

from common.db import create_engine, database_tls, engine_tls
from common.settings import CommonSettings
from tests.certificates import Authority


def test_a_root_certificate_gives_a_context_that_checks_the_certificate_and_the_host_name(tmp_path: Path) -> None:
    authority = Authority.create("Test RDS root")
    settings = CommonSettings(database_ssl_root_cert=authority.write(tmp_path / "bundle.pem"))
    context = database_tls(settings)
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    trusted = [dict(pair[0] for pair in ca["subject"]) for ca in context.get_ca_certs()]
    assert trusted == [{"commonName": "Test RDS root"}], "the bundle, and only the bundle, is trusted"


def test_without_a_root_certificate_the_driver_default_applies() -> None:
    assert database_tls(CommonSettings()) is None
    assert CommonSettings(database_ssl_root_cert="").database_ssl_root_cert is None, "compose passes unset as ''"


@pytest.mark.parametrize("content", [None, b"", b"not a certificate\n"])
def test_a_missing_or_unreadable_bundle_stops_the_service_at_start(tmp_path: Path, content: bytes | None) -> None:
    bundle = tmp_path / "bundle.pem"
    if content is not None:
        bundle.write_bytes(content)
    with pytest.raises(ValidationError, match="database_ssl_root_cert"):
        CommonSettings(database_ssl_root_cert=bundle)


async def test_the_engine_and_connections_beside_its_pool_share_the_context(tmp_path: Path) -> None:
    settings = CommonSettings(database_ssl_root_cert=Authority.create("root").write(tmp_path / "bundle.pem"))
    engine = create_engine(settings, "depot-test")
    try:
        tls = engine_tls(engine)
        assert tls is not None
        assert tls.verify_mode == ssl.CERT_REQUIRED
        assert tls.check_hostname
    finally:
        await engine.dispose()
    plain = create_engine(CommonSettings(), "depot-test")
    try:
        assert engine_tls(plain) is None
    finally:
        await plain.dispose()
