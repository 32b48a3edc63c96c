"""Access-token verification with static keys, key sets, bearer parsing and role checks (no network)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from datetime import datetime, tzinfo
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa, x25519
from jwt.algorithms import OKPAlgorithm, RSAAlgorithm
from structlog.testing import capture_logs

from common.auth import (
    AUDIENCE,
    REJECTION_DETAIL,
    KeySet,
    Principal,
    TokenVerifier,
    VerificationKey,
    algorithm_for,
    bearer_token,
    key_id,
    require_admin,
    require_service_or_admin,
)
from common.errors import Forbidden, Unauthorized

ISSUER = "depot-test"
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

# RFC 7638 section 3.1.
RFC7638_JWK = {
    "kty": "RSA",
    "n": (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3"
        "oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdA"
        "ZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8"
        "awapJzKnqDKgw"
    ),
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.fixture(scope="module")
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def verifier(ed_key: ed25519.Ed25519PrivateKey) -> TokenVerifier:
    return TokenVerifier(ISSUER, keys=KeySet.from_public_keys([ed_key.public_key()]))


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    values: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "5d1c7a52-3c4e-4c8e-9a53-2f7d3f0b2d10",
        "name": "alice",
        "groups": ["ml", "data"],
        "roles": ["admin"],
        "iat": now,
        "nbf": now,
        "exp": now + 900,
        "jti": uuid.uuid4().hex,
    }
    values.update(overrides)
    return {name: value for name, value in values.items() if value is not None}


def sign(private_key: PrivateKey, payload: dict[str, Any], *, kid: str | None = None, **headers: Any) -> str:
    public = private_key.public_key()
    header = {"kid": kid if kid is not None else key_id(public), **headers}
    return jwt.encode(payload, private_key, algorithm=algorithm_for(public), headers=header)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}.{b64(signature)}"


async def assert_rejected(verifier: TokenVerifier, token: str) -> None:
    with pytest.raises(Unauthorized) as raised:
        await verifier.verify(token)
    assert raised.value.status == 401
    assert raised.value.detail == REJECTION_DETAIL  # one detail for every reason: no oracle
    assert raised.value.headers == {"WWW-Authenticate": "Bearer"}


# --- valid tokens -----------------------------------------------------------------------------------------------


async def test_a_valid_eddsa_token_gives_its_principal(
    verifier: TokenVerifier, ed_key: ed25519.Ed25519PrivateKey
) -> None:
    payload = claims()
    principal = await verifier.verify(sign(ed_key, payload))
    assert principal == Principal(
        user_id=payload["sub"], username="alice", groups=frozenset({"ml", "data"}), roles=frozenset({"admin"})
    )
    assert principal.is_admin
    assert not principal.is_service


@pytest.mark.parametrize("fixture", ["ec_key", "rsa_key"])
async def test_es256_and_rs256_keys_work_too(fixture: str, request: pytest.FixtureRequest) -> None:
    private_key: PrivateKey = request.getfixturevalue(fixture)
    verifier = TokenVerifier(ISSUER, keys=KeySet.from_public_keys([private_key.public_key()]))
    principal = await verifier.verify(sign(private_key, claims(groups=None, roles=["service"])))
    assert principal.username == "alice"
    assert principal.groups == frozenset()
    assert principal.is_service
    assert not principal.is_admin


async def test_expired_within_the_leeway_is_still_accepted(
    verifier: TokenVerifier, ed_key: ed25519.Ed25519PrivateKey
) -> None:
    now = int(time.time())
    principal = await verifier.verify(sign(ed_key, claims(iat=now - 905, nbf=now - 905, exp=now - 5)))
    assert principal.username == "alice"


async def test_static_keys_from_a_pem_bundle_work_without_any_url(
    ed_key: ed25519.Ed25519PrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    pems = [
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        for key in (ed_key, ec_key)
    ]
    bundle = "# current and previous\n" + b"\n".join(pems).decode() + "\n"
    keys = KeySet.from_pem_bundle(bundle)
    assert dict(keys) == {
        key_id(ed_key.public_key()): VerificationKey(ed_key.public_key(), "EdDSA"),
        key_id(ec_key.public_key()): VerificationKey(ec_key.public_key(), "ES256"),
    }
    verifier = TokenVerifier(ISSUER, keys=keys)
    for private_key in (ed_key, ec_key):
        assert (await verifier.verify(sign(private_key, claims(name="bob")))).username == "bob"
    await verifier.aclose()


# --- invalid tokens ---------------------------------------------------------------------------------------------


async def test_a_tampered_payload_or_signature_is_rejected(
    verifier: TokenVerifier, ed_key: ed25519.Ed25519PrivateKey
) -> None:
    header, payload, signature = sign(ed_key, claims(roles=[])).split(".")
    promoted = b64(json.dumps(claims(roles=["admin"])).encode())
    await assert_rejected(verifier, f"{header}.{promoted}.{signature}")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    await assert_rejected(verifier, f"{header}.{payload}.{flipped}")
    await assert_rejected(verifier, f"{header}.{payload}.")


async def test_alg_none_is_rejected(verifier: TokenVerifier, ed_key: ed25519.Ed25519PrivateKey) -> None:
    kid = key_id(ed_key.public_key())
    await assert_rejected(verifier, forge({"alg": "none", "kid": kid}, claims()))
    await assert_rejected(verifier, forge({"alg": "None", "kid": kid}, claims()))


@pytest.mark.parametrize("fixture", ["ed_key", "rsa_key"])
async def test_hs256_signed_with_the_public_key_is_rejected(fixture: str, request: pytest.FixtureRequest) -> None:
    private_key: PrivateKey = request.getfixturevalue(fixture)
    public = private_key.public_key()
    verifier = TokenVerifier(ISSUER, keys=KeySet.from_public_keys([public]))
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "typ": "JWT", "kid": key_id(public)}
    unsigned = forge(header, claims()).rsplit(".", 1)[0]
    signature = hmac.new(pem, unsigned.encode(), hashlib.sha256).digest()
    await assert_rejected(verifier, f"{unsigned}.{b64(signature)}")


async def test_a_header_alg_other_than_the_keys_is_rejected(
    verifier: TokenVerifier, ed_key: ed25519.Ed25519PrivateKey, rsa_key: rsa.RSAPrivateKey
) -> None:
    _, payload, signature = sign(ed_key, claims()).split(".")
    for alg in ("ES256", "RS256", "HS256", "PS256", "Ed25519"):
        header = b64(json.dumps({"alg": alg, "kid": key_id(ed_key.public_key())}).encode())
        await assert_rejected(verifier, f"{header}.{payload}.{signature}")
    # The right RSA key, but with another algorithm than the one fixed for it.
    rsa_verifier = TokenVerifier(ISSUER, keys=KeySet.from_public_keys([rsa_key.public_key()]))
    pss = jwt.encode(claims(), rsa_key, algorithm="PS256", headers={"kid": key_id(rsa_key.public_key())})
    await assert_rejected(rsa_verifier, pss)


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"aud": "elsewhere"}, id="wrong-aud"),
        pytest.param({"aud": ["elsewhere", "other"]}, id="wrong-aud-list"),
        pytest.param({"iss": "someone-else"}, id="wrong-iss"),
        # Times relative to when the test runs (collection can be minutes earlier).
        pytest.param({"exp": lambda now: now - 60}, id="expired-beyond-leeway"),
        pytest.param({"nbf": lambda now: now + 120}, id="nbf-in-future"),
        pytest.param({"iat": lambda now: now + 120}, id="iat-in-future"),
        pytest.param({"exp": None}, id="missing-exp"),
        pytest.param({"sub": None}, id="missing-sub"),
        pytest.param({"jti": None}, id="missing-jti"),
        pytest.param({"iat": None}, id="missing-iat"),
        pytest.param({"iss": None}, id="missing-iss"),
        pytest.param({"aud": None}, id="missing-aud"),
        pytest.param({"name": None}, id="missing-name"),
        pytest.param({"groups": "ml"}, id="groups-not-a-list"),
        pytest.param({"roles": ["admin", 1]}, id="roles-not-strings"),
        pytest.param({"roles": {"admin": True}}, id="roles-an-object"),
        pytest.param({"sub": 42}, id="sub-not-a-string"),
        pytest.param({"sub": ""}, id="sub-empty"),
        pytest.param({"name": ["alice"]}, id="name-not-a-string"),
        pytest.param({"jti": ""}, id="jti-empty"),
        pytest.param({"exp": "tomorrow"}, id="exp-not-a-number"),
    ],
)
async def test_bad_claims_are_rejected(
    verifier: TokenVerifier, ed_key: ed25519.Ed25519PrivateKey, overrides: dict[str, Any]
) -> None:
    now = int(time.time())
    resolved = {name: value(now) if callable(value) else value for name, value in overrides.items()}
    await assert_rejected(verifier, sign(ed_key, claims(**resolved)))


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a.b.c",
        "....",
        "eyJhbGciOiJFZERTQSJ9",
        forge({"alg": "EdDSA"}, claims()),  # no kid
        forge({"alg": "EdDSA", "kid": 7}, claims()),
        forge({"alg": "EdDSA", "kid": ""}, claims()),
        b64(b"[1, 2]") + ".e30.",
        b64(b"not json") + ".e30.",
        "x" * 9000,
        "é.é.é",
    ],
)
async def test_garbage_is_rejected(verifier: TokenVerifier, token: str) -> None:
    await assert_rejected(verifier, token)


async def test_a_key_outside_the_set_is_rejected_whatever_its_kid_or_jku(
    verifier: TokenVerifier, ed_key: ed25519.Ed25519PrivateKey
) -> None:
    attacker = ed25519.Ed25519PrivateKey.generate()
    real_kid = key_id(ed_key.public_key())
    await assert_rejected(verifier, sign(attacker, claims(), kid=real_kid))
    await assert_rejected(verifier, sign(attacker, claims()))
    # Headers that point at other keys are ignored: only our key set counts.
    attacker_jwk = {**ed25519_jwk(attacker), "kid": real_kid}
    for headers in (
        {"jku": "https://evil.example/jwks.json"},
        {"x5u": "https://evil.example/cert.pem"},
        {"jwk": attacker_jwk},
        {"x5c": ["MIIB"]},
    ):
        await assert_rejected(verifier, sign(attacker, claims(), kid=real_kid, **headers))
        await assert_rejected(verifier, sign(attacker, claims(), **headers))


def ed25519_jwk(private_key: ed25519.Ed25519PrivateKey) -> dict[str, Any]:
    (jwk,) = KeySet.from_public_keys([private_key.public_key()]).to_jwks()["keys"]
    return jwk


async def test_rejections_log_the_reason_but_never_the_token(
    verifier: TokenVerifier, ed_key: ed25519.Ed25519PrivateKey
) -> None:
    token = sign(ed_key, claims(aud="elsewhere"))
    with capture_logs() as logs:
        await assert_rejected(verifier, token)
    (line,) = logs
    assert line["event"] == "access_token_rejected"
    assert "InvalidAudienceError" in line["reason"]
    assert token not in json.dumps(logs)
    assert token.split(".")[2] not in json.dumps(logs)


def test_a_verifier_needs_keys_or_a_url() -> None:
    with pytest.raises(ValueError, match="keys"):
        TokenVerifier(ISSUER)


# --- keys -------------------------------------------------------------------------------------------------------


def test_key_id_is_the_rfc_7638_thumbprint() -> None:
    public = RSAAlgorithm.from_jwk(RFC7638_JWK)
    assert isinstance(public, rsa.RSAPublicKey)
    assert key_id(public) == RFC7638_THUMBPRINT
    assert list(KeySet.from_public_keys([public])) == [RFC7638_THUMBPRINT]
    # A JWK keeps its own kid.
    assert list(KeySet.from_jwks({"keys": [RFC7638_JWK]})) == ["2011-04-29"]


def test_algorithm_for_supported_keys(
    ed_key: ed25519.Ed25519PrivateKey, ec_key: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey
) -> None:
    assert algorithm_for(ed_key.public_key()) == "EdDSA"
    assert algorithm_for(ec_key.public_key()) == "ES256"
    assert algorithm_for(rsa_key.public_key()) == "RS256"


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: ec.generate_private_key(ec.SECP384R1()).public_key(), id="P-384"),
        pytest.param(lambda: ec.generate_private_key(ec.SECP256K1()).public_key(), id="secp256k1"),
        pytest.param(lambda: rsa.generate_private_key(65537, 1024).public_key(), id="RSA-1024"),  # noqa: S505 - refused
        pytest.param(lambda: ed448.Ed448PrivateKey.generate().public_key(), id="Ed448"),
        pytest.param(lambda: x25519.X25519PrivateKey.generate().public_key(), id="X25519"),
        pytest.param(lambda: b"secret", id="bytes"),
    ],
)
def test_algorithm_for_refuses_other_keys(make: Any) -> None:
    with pytest.raises(ValueError, match=r"unsupported|P-256|bits"):
        algorithm_for(make())


def test_jwks_round_trip_and_unusable_keys_are_skipped(
    ed_key: ed25519.Ed25519PrivateKey, ec_key: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey
) -> None:
    keys = KeySet.from_public_keys([ed_key.public_key(), ec_key.public_key(), rsa_key.public_key()])
    document = keys.to_jwks()
    assert {(jwk["kty"], jwk["alg"], jwk["use"]) for jwk in document["keys"]} == {
        ("OKP", "EdDSA", "sig"),
        ("EC", "ES256", "sig"),
        ("RSA", "RS256", "sig"),
    }
    assert all("d" not in jwk for jwk in document["keys"])
    assert json.loads(json.dumps(document)) == document
    assert KeySet.from_jwks(document) == keys

    ed_jwk = ed25519_jwk(ed_key)
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    junk: list[Any] = [
        "not an object",
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
        {**ed_jwk, "kid": "enc", "use": "enc"},
        {**ed_jwk, "kid": "ops", "key_ops": ["encrypt"]},
        {**ed_jwk, "kid": "mismatch", "alg": "RS256"},
        {**ed_jwk, "kid": "none", "alg": "none"},
        {**ed_jwk, "kid": "broken", "x": "!!"},
        {**ed_jwk, "kid": 12},
        {**OKPAlgorithm.to_jwk(ed_key, as_dict=True), "kid": "private"},
        {"kty": "EC", "crv": "P-384", "kid": "p384", **{k: v for k, v in _ec_jwk(p384).items() if k in "xy"}},
        {"kty": "EC", "crv": "P-256", "kid": "off-curve", "x": b64(b"\x01" * 32), "y": b64(b"\x02" * 32)},
        {"kty": "RSA", "kid": "tiny", "n": b64(b"\xc3" * 64), "e": "AQAB"},
        {"kid": "no-kty"},
    ]
    with capture_logs() as logs:
        parsed = KeySet.from_jwks({"keys": [*junk, ed_jwk]})
    assert list(parsed) == [ed_jwk["kid"]]
    assert sum(line["event"] == "jwks_key_skipped" for line in logs) == len(junk)
    # A JWK without use/alg/kid is still fine; its kid is then its thumbprint.
    bare = {k: v for k, v in ed_jwk.items() if k not in ("use", "alg", "kid")}
    assert list(KeySet.from_jwks({"keys": [bare]})) == [key_id(ed_key.public_key())]


def _ec_jwk(public: ec.EllipticCurvePublicKey) -> dict[str, Any]:
    size = (public.curve.key_size + 7) // 8
    numbers = public.public_numbers()
    return {"x": b64(numbers.x.to_bytes(size, "big")), "y": b64(numbers.y.to_bytes(size, "big"))}


@pytest.mark.parametrize("document", [None, [], {}, {"keys": {}}, {"keys": "x"}, "{}"])
def test_a_malformed_jwks_document_is_an_error(document: Any) -> None:
    with pytest.raises(ValueError, match="JWKS"):
        KeySet.from_jwks(document)


def test_pem_bundles_must_hold_usable_public_keys(ed_key: ed25519.Ed25519PrivateKey) -> None:
    private_pem = ed_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    x_pem = (
        x25519.X25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    for text in ("", "no keys here", private_pem, x_pem, "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"):
        with pytest.raises(ValueError):  # noqa: PT011 - the messages come from several layers
            KeySet.from_pem_bundle(text)


def test_key_sets_are_immutable_and_merge_keeps_their_own_keys(
    ed_key: ed25519.Ed25519PrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    ours = KeySet({"k1": VerificationKey(ed_key.public_key(), "EdDSA")})
    theirs = KeySet(
        {"k1": VerificationKey(ec_key.public_key(), "ES256"), "k2": VerificationKey(ec_key.public_key(), "ES256")}
    )
    merged = ours.merge(theirs)
    assert sorted(merged) == ["k1", "k2"]
    assert merged["k1"].algorithm == "EdDSA"
    assert sorted(ours) == ["k1"]
    with pytest.raises(TypeError):
        ours["k3"] = merged["k2"]  # type: ignore[index]
    key, algorithm = merged["k2"]
    assert algorithm == "ES256"
    assert key == ec_key.public_key()


# --- bearer tokens and roles ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer abc.def.ghi", "abc.def.ghi"),
        ("bearer abc.def.ghi", "abc.def.ghi"),
        ("BEARER abc-_.~+/==", "abc-_.~+/=="),
        ("Bearer  abc", "abc"),
        ("Bearer " + "a" * 8192, "a" * 8192),
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("Bearer a b", None),
        ("Bearer a\tb", None),
        ("Bearer a\nb", None),
        ("Bearer abc ", None),
        (" Bearer abc", None),
        ("Basic dXNlcjpwYXNz", None),
        ("Bearerabc", None),
        ("Token abc", None),
        ("Bearer " + "a" * 8193, None),
        ("Bearer é", None),
        ("Bearer a=b", None),
    ],
)
def test_bearer_token_parsing(header: str | None, expected: str | None) -> None:
    assert bearer_token(header) == expected


def test_role_checks() -> None:
    admin = Principal("1", "root", frozenset(), frozenset({"admin"}))
    service = Principal("2", "validator", frozenset(), frozenset({"service"}))
    user = Principal("3", "alice", frozenset({"admin"}), frozenset({"user"}))  # a group is not a role
    assert require_admin(admin) is admin
    assert require_service_or_admin(admin) is admin
    assert require_service_or_admin(service) is service
    for principal in (service, user):
        with pytest.raises(Forbidden) as raised:
            require_admin(principal)
        assert raised.value.status == 403
    with pytest.raises(Forbidden):
        require_service_or_admin(user)


# --- tokens seen before ---------------------------------------------------------------------------------------


def counting_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tokens that went through a full signature check from now on."""
    decoded: list[str] = []
    real = jwt.decode

    def decode(token: str, *args: Any, **kwargs: Any) -> Any:
        decoded.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", decode)
    return decoded


async def test_a_token_seen_before_is_not_verified_again(
    verifier: TokenVerifier, ed_key: ed25519.Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded = counting_decodes(monkeypatch)
    token = sign(ed_key, claims())
    first = await verifier.verify(token)
    assert await verifier.verify(token) == first
    assert decoded == [token]
    # The whole token is the key: any other token, however close, is checked in full.
    header, payload, signature = token.split(".")
    tampered = f"{header}.{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"
    await assert_rejected(verifier, tampered)
    await assert_rejected(verifier, tampered)
    assert decoded == [token, tampered, tampered], "refused tokens are not remembered"


async def test_a_remembered_token_expires_with_its_exp(
    ed_key: ed25519.Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier = TokenVerifier(ISSUER, keys=KeySet.from_public_keys([ed_key.public_key()]), leeway_seconds=0)
    now = time.time()
    token = sign(ed_key, claims(iat=int(now), nbf=int(now), exp=int(now) + 60))
    await verifier.verify(token)
    later = now + 61

    class Later(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> Later:
            return cls.fromtimestamp(later, tz)

    # A minute on, for the verifier's memory (time.time) and for PyJWT's own check (datetime.now).
    monkeypatch.setattr(time, "time", lambda: later)
    monkeypatch.setattr(jwt.api_jwt, "datetime", Later)
    await assert_rejected(verifier, token)


async def test_the_memory_of_tokens_is_bounded(
    ed_key: ed25519.Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier = TokenVerifier(ISSUER, keys=KeySet.from_public_keys([ed_key.public_key()]), cache_size=2)
    tokens = [sign(ed_key, claims()) for _ in range(3)]
    for token in tokens:
        await verifier.verify(token)
    decoded = counting_decodes(monkeypatch)
    for token in reversed(tokens):
        await verifier.verify(token)
    assert decoded == [tokens[0]], "the oldest was forgotten; the two newest were remembered"
