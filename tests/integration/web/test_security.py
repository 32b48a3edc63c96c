"""What a hostile string, page or cookie can do to the pages: nothing."""

from __future__ import annotations

import re

import httpx

from tests.integration.web.conftest import Site, csrf_of, good_zip, zip_with_names
from web_service.security import CONTENT_SECURITY_POLICY
from web_service.sessions import SessionCookies

HOSTILE = "<script>alert(1)</script>\"onmouseover=alert(2) x='"
HOSTILE_FILENAME = '<script>alert(1)"onmouseover=alert(2).zip'  # a file name has no "/"
SCRIPT_TAGS = re.compile(r"<script\b[^>]*>", re.IGNORECASE)


def assert_escaped(html: str) -> None:
    assert "<script>alert" not in html
    assert '"onmouseover=' not in html
    # The only scripts are the two static files.
    assert SCRIPT_TAGS.findall(html) == [
        '<script src="/static/htmx-2.0.11.min.js" defer>',
        '<script src="/static/depot.js" defer>',
    ]


async def test_user_strings_are_escaped_on_every_page(site: Site) -> None:
    await site.depot.add_user("rita")
    name = "hostile-pkg"
    await site.publish(name, "1.0.0", good_zip(), visibility="public", description=HOSTILE, filename=HOSTILE_FILENAME)
    # A report whose details name hostile archive members (an absolute path fails the archive check).
    await site.publish(name, "2.0.0", zip_with_names([f"/{HOSTILE}.txt", f"../{HOSTILE}"]), filename=HOSTILE_FILENAME)
    patched = await site.depot.packages.patch(
        f"/packages/{name}/versions/1.0.0",
        json={"description": HOSTILE, "metadata": {HOSTILE: HOSTILE, "nested": [HOSTILE]}},
        headers=site.depot.callers.owner,
    )
    assert patched.status_code == 200, patched.text
    report = (await site.depot.report(name, "2.0.0")).json()
    assert any("onmouseover" in (check["detail"] or "") for check in report["checks"]), report
    async with site.signed_in("rita") as rita:
        for path in ("/", f"/?q={name}", f"/p/{name}", f"/p/{name}/1.0.0", f"/p/{name}/2.0.0",
                     f"/p/{name}/2.0.0/report", f"/?regex={HOSTILE}"):  # fmt: skip
            page = await rita.get(path)
            assert page.status_code == 200, path
            if "report" in path:
                assert "<script>alert" not in page.text
                assert '"onmouseover=' not in page.text
            else:
                assert_escaped(page.text)
            if path != "/" and "regex" not in path:
                assert "&lt;script&gt;alert(1)&lt;/script&gt;&#34;onmouseover=" in page.text, path
            if path == f"/p/{name}":
                assert "&lt;script&gt;alert(1)&#34;onmouseover=alert(2).zip" in page.text
        login = await rita.get("/login", params={"next": '/"><script>alert(1)</script>'})
        assert login.status_code in {200, 303}


async def test_every_answer_carries_the_security_headers(site: Site) -> None:
    await site.depot.add_user("rita")
    async with site.signed_in("rita") as rita:
        for path in ("/", "/login", "/account", "/p/missing", "/no/such/page", "/static/depot.css"):
            answer = await rita.get(path)
            assert answer.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY, path
            assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"]
            assert "unsafe-inline" not in answer.headers["Content-Security-Policy"]
            assert answer.headers["X-Frame-Options"] == "DENY"
            assert answer.headers["Referrer-Policy"] == "same-origin"
            assert answer.headers["X-Content-Type-Options"] == "nosniff"
            assert answer.headers["X-Request-ID"]
        assert (await rita.get("/account")).headers["Cache-Control"] == "no-store"


async def test_a_form_without_its_csrf_token_is_refused(site: Site) -> None:
    await site.depot.add_user("rita")
    async with site.signed_in("rita") as rita:
        for data in ({"name": "stolen"}, {"name": "stolen", "csrf": "forged"}):
            answer = await rita.post("/account/tokens", data=data)
            assert answer.status_code == 403
            assert "did not come from this site" in answer.text
        htmx = await rita.post("/logout", headers={"HX-Request": "true", "X-CSRF-Token": "forged"})
        assert htmx.status_code == 403
        assert "No API tokens" in (await rita.get("/account")).text
    # A token of another session is no better.
    async with site.signed_in("rita") as first, site.signed_in("rita") as second:
        other = csrf_of((await first.get("/account")).text)
        answer = await second.post("/account/tokens", data={"name": "x", "csrf": other})
        assert answer.status_code == 403


async def test_the_session_cookie_is_sealed_httponly_lax_and_expires_with_the_refresh_token(site: Site) -> None:
    await site.depot.add_user("rita")
    async with site.browser() as browser:
        answer = await site.sign_in(browser, "rita")
        cookie = answer.headers["Set-Cookie"]
        assert cookie.startswith("depot_session=")
        attributes = [part.strip().lower() for part in cookie.split(";")]
        assert "httponly" in attributes
        assert "samesite=lax" in attributes
        assert "path=/" in attributes
        assert "secure" not in attributes  # the public URL is http here
        max_age = int(next(a for a in attributes if a.startswith("max-age=")).split("=")[1])
        assert 3600 < max_age <= 31 * 24 * 3600
        value = browser.cookies["depot_session"]
        assert "rita" not in value  # encrypted, not only signed
        put_session(browser, value[:-4] + ("AAAA" if not value.endswith("AAAA") else "BBBB"))
        assert (await browser.get("/account")).status_code == 303  # back to sign in


async def test_an_expired_access_token_is_renewed_without_the_user_noticing(site: Site) -> None:
    await site.depot.add_user("rita")
    cookies = SessionCookies(site.settings.session_key.get_secret_value(), secure=False)  # type: ignore[union-attr]
    async with site.signed_in("rita") as rita:
        session, known = cookies.open(session_of(rita))
        assert known
        session.access_expires = 0.0
        old_refresh = session.refresh
        put_session(rita, cookies.seal(session))
        answer = await rita.get("/account")
        assert answer.status_code == 200
        renewed, _ = cookies.open(session_of(rita))
        assert renewed.refresh != old_refresh
        assert renewed.access_fresh
        # The spent refresh token, sent again by a parallel request, gets the same new pair.
        session.access_expires = 0.0
        put_session(rita, cookies.seal(session))
        assert (await rita.get("/account")).status_code == 200
        # A session whose refresh token is revoked goes to sign in, and comes back after it.
        await site.depot.auth.post("/auth/logout", json={"refresh_token": rita_refresh(cookies, rita)})
        expired, _ = cookies.open(session_of(rita))
        expired.access_expires = 0.0
        put_session(rita, cookies.seal(expired))
        answer = await rita.get("/account")
        assert answer.status_code == 303
        assert answer.headers["Location"] == "/login?next=%2Faccount"


def session_of(client: httpx.AsyncClient) -> str:
    return next(cookie.value or "" for cookie in client.cookies.jar if cookie.name == "depot_session")


def put_session(client: httpx.AsyncClient, value: str) -> None:
    """Replace the session cookie, as a user who edits it would."""
    client.cookies.clear()
    client.cookies.set("depot_session", value, domain="127.0.0.1")


def rita_refresh(cookies: SessionCookies, client: httpx.AsyncClient) -> str:
    session, _ = cookies.open(session_of(client))
    assert session.refresh is not None
    return session.refresh
