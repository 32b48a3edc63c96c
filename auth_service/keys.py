"""The key that signs access tokens, and the public keys published at the JWKS endpoint.

Rotation: publish the new key's predecessor in `DEPOT_PREVIOUS_PUBLIC_KEYS` while switching
`DEPOT_SIGNING_KEY` to the new key; drop it once its last tokens have expired (README).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from auth_service.settings import AuthSettings
from common.auth import KeySet, algorithm_for, key_id

SigningPrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class SigningKey:
    private_key: SigningPrivateKey
    kid: str
    algorithm: str

    def sign(self, claims: dict[str, Any]) -> str:
        """A JWT of `claims`, with this key's `kid` in its header."""
        return jwt.encode(claims, self.private_key, algorithm=self.algorithm, headers={"kid": self.kid, "typ": "JWT"})


def generate_pem() -> bytes:
    """A new Ed25519 private key, PEM-encoded."""
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _development_pem(data_dir: Path) -> bytes:
    # Kept with the data so that tokens survive a restart of `make run`.
    path = data_dir / "auth" / "signing-key.pem"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_bytes(generate_pem())
    return path.read_bytes()


def load_signing_key(settings: AuthSettings) -> SigningKey:
    """The configured key (PEM in settings or a file), or in development one generated under the data folder."""
    if settings.signing_key is not None:
        pem = settings.signing_key.get_secret_value().encode()
    elif settings.signing_key_file is not None:
        pem = settings.signing_key_file.read_bytes()
    else:
        pem = _development_pem(settings.data_dir)
    return signing_key_from_pem(pem)


def signing_key_from_pem(pem: bytes) -> SigningKey:
    """The signing key in `pem` (an unencrypted PEM private key); ValueError or TypeError if it is none."""
    private_key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(private_key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise TypeError("the signing key must be Ed25519, EC P-256 or RSA")
    public_key = private_key.public_key()
    return SigningKey(private_key, key_id(public_key), algorithm_for(public_key))


def published_keys(settings: AuthSettings, signing: SigningKey) -> KeySet:
    """The signing key's public half and the retired keys still accepted."""
    keys = KeySet.from_public_keys([signing.private_key.public_key()])
    if settings.previous_public_keys:
        keys = keys.merge(KeySet.from_pem_bundle(settings.previous_public_keys))
    return keys


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m auth_service.keys", description="Signing key tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("generate", help="print a new Ed25519 private key (PEM) for DEPOT_SIGNING_KEY")
    sub.add_parser("public", help="print the public key of the PEM private key read from standard input")
    sub.add_parser(
        "check", help="exit 0 if standard input is a signing key auth_service loads (its kid is printed), else 1"
    )
    args = parser.parse_args()
    if args.command == "generate":
        sys.stdout.write(generate_pem().decode())
        return
    if args.command == "check":
        try:
            signing = signing_key_from_pem(sys.stdin.buffer.read())
        except (ValueError, TypeError, UnsupportedAlgorithm) as error:  # never echo the input: it may be a secret
            sys.stderr.write(f"not a signing key auth_service can load ({type(error).__name__})\n")
            raise SystemExit(1) from None
        sys.stdout.write(f"{signing.algorithm} key {signing.kid}\n")
        return
    private_key = serialization.load_pem_private_key(sys.stdin.buffer.read(), password=None)
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    sys.stdout.write(public_pem.decode())


if __name__ == "__main__":
    main()
