"""Access tokens minted with a key of our own, for tests and benchmarks.

A service given this key's public half in `DEPOT_AUTH_PUBLIC_KEYS` verifies these tokens as it
verifies auth_service's: signature, `iss`, `aud`, `exp` and the rest, for real.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from common.auth import AUDIENCE, key_id


@dataclass(frozen=True)
class TokenSigner:
    """Signs access tokens with an Ed25519 key generated for the occasion."""

    key: ed25519.Ed25519PrivateKey = field(default_factory=ed25519.Ed25519PrivateKey.generate)
    issuer: str = "depot"

    @property
    def public_pem(self) -> str:
        """The public key, for `DEPOT_AUTH_PUBLIC_KEYS`."""
        public = self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return public.decode()

    def headers(
        self, username: str, groups: Iterable[str] = (), roles: Iterable[str] = (), lifetime: int = 600
    ) -> dict[str, str]:
        """An `Authorization` header carrying a fresh token for this user."""
        now = int(time.time())
        claims = {
            "iss": self.issuer, "aud": AUDIENCE, "sub": str(uuid.uuid4()), "name": username, "groups": list(groups),
            "roles": list(roles), "iat": now, "nbf": now, "exp": now + lifetime, "jti": uuid.uuid4().hex,
        }  # fmt: skip
        token = jwt.encode(claims, self.key, algorithm="EdDSA", headers={"kid": key_id(self.key.public_key())})
        return {"Authorization": f"Bearer {token}"}
