"""docker/rds_ca_bundle.py: the image trusts RDS's authorities, and only a bundle that holds nothing else."""

from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest
from cryptography.hazmat.primitives import serialization

from tests.certificates import Authority

ROOT = Path(__file__).resolve().parents[2]


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rds_ca_bundle", ROOT / "docker" / "rds_ca_bundle.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


script = load_script()


def pem(*names: str) -> bytes:
    """A bundle of new self-signed authorities with these common names."""
    return b"".join(Authority.create(name).certificate.public_bytes(serialization.Encoding.PEM) for name in names)


def test_a_bundle_of_rds_authorities_passes_and_a_pin_must_match() -> None:
    bundle = pem("Amazon RDS us-east-1 Root CA RSA2048 G1", "Amazon RDS eu-west-1 Root CA ECC384 G1")
    assert script.check_bundle(bundle) == [
        "Amazon RDS us-east-1 Root CA RSA2048 G1", "Amazon RDS eu-west-1 Root CA ECC384 G1",
    ]  # fmt: skip
    assert len(script.check_bundle(bundle, hashlib.sha256(bundle).hexdigest().upper())) == 2
    with pytest.raises(ValueError, match="pinned"):
        script.check_bundle(bundle, "0" * 64)


@pytest.mark.parametrize(
    "data",
    [b"", b"<html>captive portal</html>", pem("Amazon RDS Root 2019 CA", "Totally Trustworthy Root"), b"\xff\xfe"],
)
def test_anything_else_fails_the_build(data: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each has its own message
        script.check_bundle(data)


def test_only_https_is_fetched() -> None:
    with pytest.raises(ValueError, match="https"):
        script.fetch("http://truststore.pki.rds.amazonaws.com/global/global-bundle.pem")


def test_the_build_step_writes_the_checked_bundle_or_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = pem("Amazon RDS Root 2019 CA")
    monkeypatch.setattr(script, "fetch", lambda url: bundle)
    destination = tmp_path / "share" / "rds-ca-bundle.pem"
    assert script.main(["https://example.invalid/bundle.pem", str(destination), ""]) == 0
    assert destination.read_bytes() == bundle
    monkeypatch.setattr(script, "fetch", lambda url: pem("Someone Else"))
    refused = tmp_path / "refused.pem"
    assert script.main(["https://example.invalid/bundle.pem", str(refused)]) == 1
    assert not refused.exists()


def test_the_dockerfile_puts_the_checked_bundle_where_the_images_share_it() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(
        r"RUN python /build/rds_ca_bundle\.py \"\$RDS_CA_BUNDLE_URL\" /build/rds-ca-bundle\.pem", dockerfile
    )
    assert "ARG RDS_CA_BUNDLE_URL=https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem" in dockerfile
    base = dockerfile.split("AS base", 1)[1].split("\nFROM ", 1)[0]
    assert "COPY --from=rds_ca /build/rds-ca-bundle.pem /usr/local/share/depot/rds-ca-bundle.pem" in base
