"""TokenVerifier against a real JWKS endpoint: lazy fetch, rotation, refetch cooldown and outages."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from common.auth import AUDIENCE, KeySet, TokenVerifier, algorithm_for, key_id
from common.errors import ServiceUnavailable, Unauthorized
from tests.helpers import real_server

ISSUER = "depot-test"
JWKS_PATH = "/auth/.well-known/jwks.json"
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


@dataclass
class JwksServer:
    """A tiny auth_service stand-in: publishes `keys` (or fails with `status`) and counts requests."""

    keys: list[PrivateKey]
    status: int = 200
    body: bytes | None = None
    fetches: int = 0
    evil_fetches: int = 0
    url: str = ""
    evil_keys: list[PrivateKey] = field(default_factory=list)

    def app(self) -> Starlette:
        async def jwks(_: Request) -> Response:
            self.fetches += 1
            if self.body is not None:
                return Response(self.body, status_code=self.status, media_type="application/json")
            document = KeySet.from_public_keys([key.public_key() for key in self.keys]).to_jwks()
            return JSONResponse(document, status_code=self.status)

        async def evil(_: Request) -> Response:
            self.evil_fetches += 1
            return JSONResponse(KeySet.from_public_keys([key.public_key() for key in self.evil_keys]).to_jwks())

        return Starlette(routes=[Route(JWKS_PATH, jwks), Route("/evil/jwks.json", evil)])


@pytest.fixture
async def server() -> AsyncIterator[JwksServer]:
    state = JwksServer(keys=[ed25519.Ed25519PrivateKey.generate()])
    async with real_server(state.app()) as base_url:
        state.url = base_url
        yield state


@pytest.fixture
async def verifier(server: JwksServer) -> AsyncIterator[TokenVerifier]:
    verifier = TokenVerifier(ISSUER, jwks_url=server.url + JWKS_PATH)
    yield verifier
    await verifier.aclose()


def sign(private_key: PrivateKey, *, kid: str | None = None, name: str = "alice", **headers: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": str(uuid.uuid4()),
        "name": name,
        "groups": [],
        "roles": ["service"],
        "iat": now,
        "exp": now + 900,
        "jti": uuid.uuid4().hex,
    }
    public = private_key.public_key()
    header = {"kid": kid or key_id(public), **headers}
    return jwt.encode(claims, private_key, algorithm=algorithm_for(public), headers=header)


async def assert_rejected(verifier: TokenVerifier, token: str) -> None:
    with pytest.raises(Unauthorized) as raised:
        await verifier.verify(token)
    assert raised.value.status == 401


async def test_keys_are_fetched_lazily_once_and_cached(server: JwksServer, verifier: TokenVerifier) -> None:
    assert server.fetches == 0
    for _ in range(5):
        principal = await verifier.verify(sign(server.keys[0]))
        assert principal.username == "alice"
        assert principal.is_service
    assert server.fetches == 1


async def test_two_published_keys_both_verify(server: JwksServer, verifier: TokenVerifier) -> None:
    server.keys.append(ec.generate_private_key(ec.SECP256R1()))
    assert (await verifier.verify(sign(server.keys[0], name="old"))).username == "old"
    assert (await verifier.verify(sign(server.keys[1], name="new"))).username == "new"
    assert server.fetches == 1


async def test_a_key_published_after_rotation_is_accepted_after_a_refetch(server: JwksServer) -> None:
    verifier = TokenVerifier(ISSUER, jwks_url=server.url + JWKS_PATH, refetch_cooldown_seconds=0.2)
    try:
        old = server.keys[0]
        await verifier.verify(sign(old))
        new = ed25519.Ed25519PrivateKey.generate()
        server.keys.append(new)  # rotation: the new key is published, the old one kept for verification
        await asyncio.sleep(0.25)
        assert (await verifier.verify(sign(new, name="rotated"))).username == "rotated"
        assert (await verifier.verify(sign(old))).username == "alice"
        assert server.fetches == 2
    finally:
        await verifier.aclose()


async def test_random_unknown_kids_cannot_hammer_the_jwks(server: JwksServer, verifier: TokenVerifier) -> None:
    attacker = ed25519.Ed25519PrivateKey.generate()
    # Cold cache, all at once: single flight.
    results = await asyncio.gather(
        *(verifier.verify(sign(attacker, kid=uuid.uuid4().hex)) for _ in range(50)), return_exceptions=True
    )
    assert all(isinstance(result, Unauthorized) for result in results)
    # Warm cache, one after another: the cooldown holds.
    for _ in range(50):
        await assert_rejected(verifier, sign(attacker, kid=uuid.uuid4().hex))
    assert 1 <= server.fetches <= 2
    assert (await verifier.verify(sign(server.keys[0]))).username == "alice"


async def test_keys_outside_the_jwks_are_rejected_even_via_jku(server: JwksServer, verifier: TokenVerifier) -> None:
    attacker = ed25519.Ed25519PrivateKey.generate()
    server.evil_keys.append(attacker)
    real_kid = key_id(server.keys[0].public_key())
    jku = server.url + "/evil/jwks.json"
    await assert_rejected(verifier, sign(attacker, kid=real_kid))
    await assert_rejected(verifier, sign(attacker))
    await assert_rejected(verifier, sign(attacker, jku=jku))
    await assert_rejected(verifier, sign(attacker, kid=real_kid, jku=jku, x5u=jku))
    assert server.evil_fetches == 0


@pytest.mark.parametrize(
    ("status", "body"),
    [
        pytest.param(500, b'{"detail": "boom"}', id="server-error"),
        pytest.param(200, b"<html>not json</html>", id="bad-json"),
        pytest.param(200, b'{"keys": "nope"}', id="bad-document"),
        pytest.param(200, b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', id="no-usable-key"),
        pytest.param(302, b"", id="redirect"),
    ],
)
async def test_a_jwks_that_never_answered_well_is_a_503(
    server: JwksServer, verifier: TokenVerifier, status: int, body: bytes
) -> None:
    server.status, server.body = status, body
    for _ in range(10):
        with pytest.raises(ServiceUnavailable) as raised:
            await verifier.verify(sign(server.keys[0]))
        assert raised.value.status == 503
        assert raised.value.headers["Retry-After"]
    assert server.fetches == 1  # failures count for the cooldown too


async def test_verification_recovers_once_the_jwks_answers(server: JwksServer) -> None:
    verifier = TokenVerifier(ISSUER, jwks_url=server.url + JWKS_PATH, refetch_cooldown_seconds=0.2)
    try:
        server.status, server.body = 503, b"{}"
        with pytest.raises(ServiceUnavailable):
            await verifier.verify(sign(server.keys[0]))
        server.status, server.body = 200, None
        await asyncio.sleep(0.25)
        assert (await verifier.verify(sign(server.keys[0]))).username == "alice"
        assert server.fetches == 2
    finally:
        await verifier.aclose()


async def test_an_unreachable_jwks_is_a_503_and_is_not_retried_per_request() -> None:
    async with real_server(Starlette()) as base_url:
        pass  # now nothing listens there
    verifier = TokenVerifier(ISSUER, jwks_url=base_url + JWKS_PATH, fetch_timeout_seconds=0.5)
    try:
        started = time.monotonic()
        for _ in range(20):
            with pytest.raises(ServiceUnavailable):
                await verifier.verify(sign(ed25519.Ed25519PrivateKey.generate()))
        # Retried per request, 20 fetches would wait out 20 fetch timeouts: 10 s. Milliseconds when
        # idle; the bound leaves a loaded machine room.
        assert time.monotonic() - started < 20 * 0.5
    finally:
        await verifier.aclose()


async def test_cached_keys_keep_working_when_the_jwks_goes_down() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    state = JwksServer(keys=[key])
    async with real_server(state.app()) as base_url:
        verifier = TokenVerifier(
            ISSUER, jwks_url=base_url + JWKS_PATH, refetch_cooldown_seconds=0, fetch_timeout_seconds=0.5
        )
        await verifier.verify(sign(key))
    try:
        # An unknown kid now triggers a refetch that fails: the cached keys stay, and stay the answer.
        await assert_rejected(verifier, sign(ed25519.Ed25519PrivateKey.generate()))
        assert (await verifier.verify(sign(key, name="still"))).username == "still"
        assert state.fetches == 1
    finally:
        await verifier.aclose()


async def test_configured_keys_are_kept_alongside_fetched_ones(server: JwksServer) -> None:
    static = ec.generate_private_key(ec.SECP256R1())
    verifier = TokenVerifier(
        ISSUER, keys=KeySet.from_public_keys([static.public_key()]), jwks_url=server.url + JWKS_PATH
    )
    try:
        assert (await verifier.verify(sign(static, name="static"))).username == "static"
        assert server.fetches == 0  # a configured key needs no fetch
        assert (await verifier.verify(sign(server.keys[0], name="fetched"))).username == "fetched"
        assert (await verifier.verify(sign(static, name="static"))).username == "static"
        assert server.fetches == 1
    finally:
        await verifier.aclose()


async def test_concurrent_misses_share_one_fetch_even_without_a_cooldown(server: JwksServer) -> None:
    verifier = TokenVerifier(ISSUER, jwks_url=server.url + JWKS_PATH, refetch_cooldown_seconds=0)
    try:
        tokens = [sign(server.keys[0], name=f"user{index}") for index in range(20)]
        principals = await asyncio.gather(*(verifier.verify(token) for token in tokens))
        assert [principal.username for principal in principals] == [f"user{index}" for index in range(20)]
        assert server.fetches == 1
    finally:
        await verifier.aclose()


async def test_a_remembered_token_is_refused_once_its_key_is_withdrawn(server: JwksServer) -> None:
    verifier = TokenVerifier(ISSUER, jwks_url=server.url + JWKS_PATH, refetch_cooldown_seconds=0)
    try:
        old, new = server.keys[0], ed25519.Ed25519PrivateKey.generate()
        token = sign(old)
        assert (await verifier.verify(token)).username == "alice"  # verified, and remembered
        server.keys[:] = [new]  # the old key is withdrawn (compromised, say): only the new one is published
        assert (await verifier.verify(sign(new, name="bob"))).username == "bob"  # its unknown kid: a refetch
        await assert_rejected(verifier, token)
    finally:
        await verifier.aclose()
