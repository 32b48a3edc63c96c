"""Access tokens: who the caller is, checked by every service on its own.

auth_service signs short-lived JWTs with an asymmetric key and publishes the public halves as a
JWKS. Every service verifies signature, `iss`, `aud` and `exp` locally with keys fetched from
there (or given in settings); no request calls auth_service to check a token. The algorithm
always comes from our key, never from the token's header, so `alg: none`, HMAC-with-public-key
and similar confusions cannot work.

A client sends the same token with every request for its lifetime, so each verifier remembers
the tokens it verified (a bounded cache, keyed by the whole token): a token seen before costs a
dictionary lookup, until its `exp` and only while the key that verified it is still the key of
its `kid`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple, NoReturn

import httpx
import jwt
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.utils import base64url_decode

from common.errors import Forbidden, ServiceUnavailable, Unauthorized
from common.http import service_client

AUDIENCE = "depot"
MAX_TOKEN_LENGTH = 8 * 1024
REJECTION_DETAIL = "The access token is invalid or expired."

PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey

log = structlog.get_logger("depot.auth")

_MIN_RSA_BITS = 2048
_MAX_JWKS_BYTES = 1024 * 1024
# RFC 7638 section 3.2: the members that make up a key's thumbprint, per key type.
_THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_PEM_BLOCK = re.compile(r"-----BEGIN PUBLIC KEY-----[A-Za-z0-9+/=\s]+?-----END PUBLIC KEY-----")
_BEARER = re.compile(r"Bearer +([A-Za-z0-9._~+/-]+=*)", re.IGNORECASE)
_REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub", "jti"]


@dataclass(frozen=True)
class Principal:
    """The verified caller of a request."""

    user_id: str
    username: str
    groups: frozenset[str]
    roles: frozenset[str]

    @property
    def is_admin(self) -> bool:
        """Whether the caller holds the `admin` role."""
        return "admin" in self.roles

    @property
    def is_service(self) -> bool:
        """Whether the caller is another service (the `service` role)."""
        return "service" in self.roles


def require_admin(principal: Principal) -> Principal:
    """`principal` if it is an admin; `403` otherwise."""
    if not principal.is_admin:
        raise Forbidden("This operation requires the admin role.")
    return principal


def require_service_or_admin(principal: Principal) -> Principal:
    """`principal` if it is a service or an admin; `403` otherwise."""
    if not (principal.is_service or principal.is_admin):
        raise Forbidden("This operation requires the service or admin role.")
    return principal


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None if there is no usable one."""
    if authorization is None or len(authorization) > MAX_TOKEN_LENGTH + 64:
        return None
    match = _BEARER.fullmatch(authorization)
    if match is None or len(match.group(1)) > MAX_TOKEN_LENGTH:
        return None
    return match.group(1)


def algorithm_for(key: object) -> str:
    """The one JWS algorithm `key` verifies: EdDSA, ES256 or RS256; ValueError for anything else."""
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "EdDSA"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        if key.curve.name != "secp256r1":
            raise ValueError(f"EC keys must use P-256, not {key.curve.name}")
        return "ES256"
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        if key.key_size < _MIN_RSA_BITS:
            raise ValueError(f"RSA keys must have at least {_MIN_RSA_BITS} bits, not {key.key_size}")
        return "RS256"
    raise ValueError(f"unsupported key type: {type(key).__name__}")


def _public_jwk(key: PublicKey) -> dict[str, Any]:
    if isinstance(key, ed25519.Ed25519PublicKey):
        return dict(OKPAlgorithm.to_jwk(key, as_dict=True))
    if isinstance(key, ec.EllipticCurvePublicKey):
        return dict(ECAlgorithm.to_jwk(key, as_dict=True))
    return dict(RSAAlgorithm.to_jwk(key, as_dict=True))


def key_id(public_key: PublicKey) -> str:
    """The RFC 7638 JWK thumbprint (SHA-256, base64url without padding) of `public_key`."""
    jwk = _public_jwk(public_key)
    canonical = {name: jwk[name] for name in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    digest = hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class VerificationKey(NamedTuple):
    """A public key and the only algorithm it is used with."""

    key: PublicKey
    algorithm: str


def _key_from_jwk(jwk: Any) -> tuple[str, VerificationKey]:
    """One JWK as (kid, key); ValueError when it is not a usable public signature key."""
    if not isinstance(jwk, dict):
        raise ValueError("not an object")  # noqa: TRY004 - every unusable key is a ValueError, logged and skipped
    if jwk.get("use", "sig") != "sig":
        raise ValueError("not a signature key")
    key_ops = jwk.get("key_ops", ["verify"])
    if not isinstance(key_ops, list) or "verify" not in key_ops:
        raise ValueError("not a verification key")
    if _PRIVATE_MEMBERS & jwk.keys():
        raise ValueError("carries private key material")
    parsers = {"OKP": OKPAlgorithm.from_jwk, "EC": ECAlgorithm.from_jwk, "RSA": RSAAlgorithm.from_jwk}
    kty = jwk.get("kty")
    parser = parsers.get(kty) if isinstance(kty, str) else None
    if parser is None:
        raise ValueError("unsupported key type")
    try:
        key = parser(dict(jwk))
    except (jwt.PyJWTError, KeyError, TypeError) as error:
        raise ValueError(f"malformed: {error}") from error
    if not isinstance(key, PublicKey):
        raise ValueError("unsupported key")  # noqa: TRY004 - e.g. Ed448; callers catch ValueError
    algorithm = algorithm_for(key)
    if jwk.get("alg", algorithm) != algorithm:
        raise ValueError("its alg does not match its key type")
    kid = jwk.get("kid", key_id(key))
    if not isinstance(kid, str) or not kid:
        raise ValueError("malformed kid")
    return kid, VerificationKey(key, algorithm)


class KeySet(Mapping[str, VerificationKey]):
    """An immutable mapping of key id to (public key, algorithm)."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Mapping[str, VerificationKey] | None = None) -> None:
        self._keys: Mapping[str, VerificationKey] = MappingProxyType(dict(keys or {}))

    @classmethod
    def from_public_keys(cls, keys: Iterable[PublicKey]) -> KeySet:
        """Keys by their thumbprint; ValueError for a key of an unsupported type or size."""
        return cls({key_id(key): VerificationKey(key, algorithm_for(key)) for key in keys})

    @classmethod
    def from_pem_bundle(cls, text: str) -> KeySet:
        """The keys of one or more concatenated `PUBLIC KEY` PEM blocks; ValueError if any is unusable."""
        blocks = _PEM_BLOCK.findall(text)
        if not blocks:
            raise ValueError("no PEM public key found")
        keys: list[PublicKey] = []
        for block in blocks:
            key = serialization.load_pem_public_key(block.encode())
            if not isinstance(key, PublicKey):
                raise ValueError(f"unsupported key type: {type(key).__name__}")  # noqa: TRY004 - as documented
            keys.append(key)
        return cls.from_public_keys(keys)

    @classmethod
    def from_jwks(cls, document: Any) -> KeySet:
        """The usable keys of a JWKS document; unusable keys are skipped, a malformed document is a ValueError."""
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError('a JWKS document is an object with a "keys" list')  # noqa: TRY004 - as documented
        found: dict[str, VerificationKey] = {}
        for index, jwk in enumerate(document["keys"]):
            try:
                kid, key = _key_from_jwk(jwk)
            except ValueError as error:
                log.warning("jwks_key_skipped", index=index, reason=str(error))
                continue
            found.setdefault(kid, key)  # a duplicated kid keeps its first key
        return cls(found)

    def to_jwks(self) -> dict[str, list[dict[str, Any]]]:
        """The keys as a JWKS document, each with `kid`, `alg` and `use: sig`."""
        return {
            "keys": [
                {**_public_jwk(entry.key), "kid": kid, "alg": entry.algorithm, "use": "sig"}
                for kid, entry in self._keys.items()
            ]
        }

    def merge(self, other: Mapping[str, VerificationKey]) -> KeySet:
        """Both sets in one; where a kid is in both, this set's key wins."""
        return KeySet({**other, **self._keys})

    def __getitem__(self, kid: str) -> VerificationKey:
        return self._keys[kid]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"KeySet({sorted(self._keys)!r})"


@dataclass(frozen=True, slots=True)
class _Verified:
    """A token verified before: who it names, until when, and the key that verified it."""

    principal: Principal
    expires_at: float
    kid: str
    key: VerificationKey


class _Rejected(Exception):
    """A token is invalid; the reason is logged, never told to the caller."""


class TokenVerifier:
    """Verifies access tokens with static keys and/or keys fetched (and cached) from a JWKS URL."""

    def __init__(
        self,
        issuer: str,
        *,
        audience: str = AUDIENCE,
        keys: KeySet | None = None,
        jwks_url: str | None = None,
        leeway_seconds: float = 10,
        refetch_cooldown_seconds: float = 10,
        fetch_timeout_seconds: float = 2,
        cache_size: int = 4096,
    ) -> None:
        if keys is None and jwks_url is None:
            raise ValueError("a TokenVerifier needs keys, a jwks_url or both")
        self._issuer = issuer
        self._audience = audience
        self._static = keys or KeySet()
        self._keys = self._static
        self._leeway = leeway_seconds
        self._cooldown = refetch_cooldown_seconds
        self._jwks: tuple[str, httpx.AsyncClient] | None = None
        if jwks_url is not None:
            self._jwks = (jwks_url, service_client(timeout=fetch_timeout_seconds))
        self._lock = asyncio.Lock()
        self._fetched = False  # whether a JWKS was ever fetched successfully
        self._last_attempt: float | None = None
        self._attempts = 0  # fetches finished, whatever their outcome
        self._verified: dict[str, _Verified] = {}  # oldest first: evicted in insertion order
        self._cache_size = cache_size

    async def verify(self, token: str) -> Principal:
        """The principal of a valid token; `401` for any invalid one, `503` if no keys can be had."""
        seen = self._verified.get(token)
        if seen is not None:
            if seen.expires_at > time.time() and self._keys.get(seen.kid) is seen.key:
                return seen.principal
            del self._verified[token]  # expired, or its key was removed or replaced since
        try:
            verified = await self._verify(token)
        except _Rejected as error:
            log.info("access_token_rejected", reason=str(error))
            raise Unauthorized(REJECTION_DETAIL) from None
        if self._cache_size > 0:
            if len(self._verified) >= self._cache_size:
                del self._verified[next(iter(self._verified))]
            self._verified[token] = verified
        return verified.principal

    async def _verify(self, token: str) -> _Verified:
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            raise _Rejected("empty or oversized")
        kid = _unverified_kid(token)
        entry = self._keys.get(kid)
        if entry is None and self._jwks is not None:
            await self._refresh(*self._jwks)
            entry = self._keys.get(kid)
            if entry is None and not self._fetched:
                # The token may well be fine: we just cannot tell.
                raise ServiceUnavailable("Cannot verify tokens right now; try again shortly.")
        if entry is None:
            raise _Rejected(f"unknown kid {kid[:64]!r}")
        try:
            claims = jwt.decode(
                token,
                entry.key,
                algorithms=[entry.algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": _REQUIRED_CLAIMS},
            )
        except (jwt.PyJWTError, ValueError, TypeError) as error:
            raise _Rejected(f"{type(error).__name__}: {error}") from None
        return _Verified(_principal(claims), expires_at=float(claims["exp"]), kid=kid, key=entry)

    async def _refresh(self, url: str, client: httpx.AsyncClient) -> None:
        """Fetch the JWKS again: single-flight, and at most once per cooldown, whatever the outcome."""
        seen = self._attempts
        async with self._lock:
            if self._attempts != seen:
                return  # a fetch finished while this caller waited: it is this caller's answer too
            now = time.monotonic()
            if self._last_attempt is not None and now - self._last_attempt < self._cooldown:
                return
            self._last_attempt = now
            fetched: KeySet | None = None
            try:
                fetched = await _fetch(url, client)
            except (httpx.HTTPError, ValueError) as error:
                # With keys cached, carry on with them; without, verify() answers 503.
                log.warning("jwks_fetch_failed", error=str(error) or type(error).__name__, cached=self._fetched)
            self._attempts += 1
            if fetched is None:
                return
            # Configured keys always stay, and win over a fetched key with the same kid.
            self._keys = self._static.merge(fetched)
            self._fetched = True
            log.info("jwks_fetched", kids=sorted(fetched))

    async def aclose(self) -> None:
        """Close the HTTP client used for JWKS fetches."""
        if self._jwks is not None:
            await self._jwks[1].aclose()


def _unverified_kid(token: str) -> str:
    """The `kid` of a token's header, the one thing taken from it before the signature is checked
    (`alg`, `jku`, `x5u` and friends are ignored). Only the header is decoded: `jwt.decode` decodes
    the whole token afterwards, so PyJWT's `get_unverified_header` would do that work twice."""
    try:
        header = json.loads(base64url_decode(token.split(".", 1)[0]))
    except (ValueError, TypeError) as error:  # binascii.Error and JSONDecodeError are ValueErrors
        raise _Rejected(f"malformed header: {type(error).__name__}") from None
    kid = header.get("kid") if isinstance(header, dict) else None
    if not isinstance(kid, str) or not kid:
        raise _Rejected("no kid")
    return kid


def _principal(claims: Mapping[str, Any]) -> Principal:
    for name in ("sub", "name", "jti"):
        if not isinstance(claims.get(name), str) or not claims[name]:
            _reject(f"claim {name} is not a non-empty string")
    sets: list[frozenset[str]] = []
    for name in ("groups", "roles"):
        value = claims.get(name, [])
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            _reject(f"claim {name} is not a list of strings")
        sets.append(frozenset(value))
    return Principal(user_id=claims["sub"], username=claims["name"], groups=sets[0], roles=sets[1])


def _reject(reason: str) -> NoReturn:
    raise _Rejected(reason)


async def _fetch(url: str, client: httpx.AsyncClient) -> KeySet:
    """The usable keys of the JWKS at `url`; httpx.HTTPError or ValueError when there are none to be had."""
    async with client.stream("GET", url) as response:
        if response.status_code != 200:
            raise ValueError(f"status {response.status_code}")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > _MAX_JWKS_BYTES:
                raise ValueError("JWKS document too large")
    keys = KeySet.from_jwks(json.loads(body))
    if not keys:
        raise ValueError("JWKS document has no usable key")
    return keys
