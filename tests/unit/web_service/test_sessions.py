"""The session cookie, the redirect target, the settings and the vendored htmx, without servers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pydantic import ValidationError
from starlette.responses import Response

from web_service.routes import local_target
from web_service.sessions import Session, SessionCookies
from web_service.settings import WebSettings

STATIC = Path(__file__).parents[3] / "web_service" / "static"


def test_vendored_htmx_is_the_pinned_file() -> None:
    data = (STATIC / "htmx-2.0.11.min.js").read_bytes()
    assert hashlib.sha256(data).hexdigest() == "d6fdc75f204e6bdefa99b69bf1e6d4ac69b8a364f77929f45c13476b4000f717"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/p/x?y=1", "/p/x?y=1"),
        ("/", "/"),
        (None, "/"),
        ("", "/"),
        ("//evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("https://evil.example/", "/"),
        ("javascript:alert(1)", "/"),
        ("/ok\r\nSet-Cookie: x=1", "/"),
        ("p/relative", "/"),
    ],
)
def test_only_local_paths_are_followed_after_sign_in(target: str | None, expected: str) -> None:
    assert local_target(target) == expected


def test_a_sealed_session_opens_and_a_tampered_or_foreign_one_does_not() -> None:
    cookies = SessionCookies("a" * 40, secure=False)
    session = Session()
    session.sign_in("rita", False, {"access_token": "a", "expires_in": 900, "refresh_token": "r",
                                    "refresh_expires_in": 3600})  # fmt: skip
    sealed = cookies.seal(session)
    opened, known = cookies.open(sealed)
    assert known
    assert opened == session
    # Opened cookies are remembered: what one request does to its session never reaches the next one's.
    opened.sign_out()
    again, known = cookies.open(sealed)
    assert known
    assert again == session
    assert again is not opened
    assert not cookies.open(sealed[:-2] + "xx")[1]
    assert not SessionCookies("b" * 40, secure=False).open(sealed)[1]
    assert not cookies.open("not a cookie")[1]


def test_an_expired_session_is_not_opened() -> None:
    cookies = SessionCookies("a" * 40, secure=False)
    session = Session()
    session.sign_in("rita", False, {"access_token": "a", "expires_in": 1, "refresh_token": "r",
                                    "refresh_expires_in": -1})  # fmt: skip
    assert not cookies.open(cookies.seal(session))[1]


def test_an_https_public_url_makes_the_cookie_secure_and_host_only() -> None:
    settings = WebSettings(api_url="http://lb", public_url="https://depot.example", session_key="s" * 32)
    assert settings.secure_cookies
    cookies = SessionCookies("s" * 32, secure=settings.secure_cookies)
    response = Response()
    cookies.store(response, Session())
    header = response.headers["set-cookie"].lower()
    assert header.startswith("__host-depot_session=")
    assert "; secure" in header
    assert "; httponly" in header
    assert "samesite=lax" in header


def test_settings_fail_loudly() -> None:
    with pytest.raises(ValidationError):
        WebSettings()  # no API URL
    with pytest.raises(ValidationError):
        WebSettings(api_url="http://lb", environment="production")  # no session key
    with pytest.raises(ValidationError):
        WebSettings(api_url="http://lb", session_key="short")
    with pytest.raises(ValidationError):
        WebSettings(api_url="ftp://lb", session_key="s" * 32)
    settings = WebSettings(api_url="http://lb/", validate_url="http://validator:8000", session_key="s" * 32)
    assert settings.upstream("auth") == "http://lb"
    assert settings.upstream("validate") == "http://validator:8000"
