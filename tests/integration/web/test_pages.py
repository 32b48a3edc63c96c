"""Every page over real HTTP, built from the three services on real PostgreSQL and S3."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.helpers import real_server
from tests.integration.web.conftest import PASSWORD, Site, bad_zip, csrf_of, good_zip, open_site
from web_service import routes


async def test_a_visitor_signs_in_and_comes_back_to_the_page_asked_for(site: Site) -> None:
    await site.depot.add_user("rita")
    async with site.browser() as browser:
        asked = await browser.get("/p/some-model?tab=versions")
        assert asked.status_code == 303
        location = asked.headers["Location"]
        assert location.startswith("/login?")
        target = parse_qs(urlsplit(location).query)["next"][0]
        assert target == "/p/some-model?tab=versions"
        form = await browser.get(location)
        answer = await browser.post(
            "/login", data={"csrf": csrf_of(form.text), "username": "rita", "password": PASSWORD, "next": target}
        )
        assert answer.status_code == 303
        assert answer.headers["Location"] == target


async def test_sign_in_refuses_a_wrong_password_and_a_foreign_next(site: Site) -> None:
    await site.depot.add_user("rita")
    async with site.browser() as browser:
        form = await browser.get("/login")
        wrong = await browser.post(
            "/login", data={"csrf": csrf_of(form.text), "username": "rita", "password": "nope-nope", "next": "/"}
        )
        assert wrong.status_code == 401
        assert "Wrong username or password" in wrong.text
        for foreign in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:alert(1)"):
            form = await browser.get("/login")
            answer = await browser.post(
                "/login", data={"csrf": csrf_of(form.text), "username": "rita", "password": PASSWORD, "next": foreign}
            )
            assert answer.status_code == 303
            assert answer.headers["Location"] == "/", foreign
            await browser.post("/logout", data={"csrf": csrf_of((await browser.get("/")).text)})


async def test_packages_search_package_and_version_pages(site: Site) -> None:
    await site.depot.add_user("rita")
    good = await site.publish("tiny-resnet", "1.0.0", good_zip(), visibility="public",
                              description="A tiny ResNet", filename="tiny.zip")  # fmt: skip
    assert good["status"] == "available"
    bad = await site.publish("tiny-resnet", "1.1.0", bad_zip())
    assert bad["status"] == "rejected"
    await site.publish("other-thing", "0.1.0", good_zip(), visibility="public", description="unrelated")
    async with site.signed_in("rita") as rita:
        listing = await rita.get("/")
        assert listing.status_code == 200
        assert "tiny-resnet" in listing.text
        assert "other-thing" in listing.text

        # Search as you type: htmx asks for the results alone.
        partial = await rita.get(
            "/", params={"q": "tiny_resnet"}, headers={"HX-Request": "true", "HX-Target": "results"}
        )
        assert partial.status_code == 200
        assert "<html" not in partial.text
        assert "tiny-resnet" in partial.text
        assert "other-thing" not in partial.text
        by_owner = await rita.get("/", params={"owner": "nobody-at-all"})
        assert "No packages found" in by_owner.text
        bad_regex = await rita.get("/", params={"regex": "("})
        assert bad_regex.status_code == 200
        assert 'class="alert error"' in bad_regex.text

        page = await rita.get("/p/tiny-resnet")
        assert page.status_code == 200
        for expected in ("A tiny ResNet", "olivia", "depot pull tiny-resnet@1.0.0", good["sha256"][:12], "rejected",
                         "available", "tiny.zip", "/p/tiny-resnet/1.0.0/download"):  # fmt: skip
            assert expected in page.text, expected

        version = await rita.get("/p/tiny-resnet/1.0.0")
        assert version.status_code == 200
        assert good["sha256"] in version.text
        assert "depot pull tiny-resnet@1.0.0" in version.text
        for check in ("sha256", "size", "archive", "pickle", "manifest"):
            assert f"<td>{check}</td>" in version.text

        rejected = await rita.get("/p/tiny-resnet/1.1.0")
        assert rejected.status_code == 200
        assert '<span class="status fail">fail</span>' in rejected.text
        assert "/download" not in rejected.text.split("<h2>Validation</h2>")[0].split("</dl>")[1]

        fragment = await rita.get("/p/tiny-resnet/1.1.0/report")
        assert fragment.status_code == 200
        assert fragment.text.lstrip().startswith('<section id="report"')

        download = await rita.get("/p/tiny-resnet/1.0.0/download")
        assert download.status_code == 303
        async with httpx.AsyncClient() as s3:
            fetched = await s3.get(download.headers["Location"])
        assert fetched.status_code == 200
        assert fetched.content == good_zip() or len(fetched.content) == good["size"]
        refused = await rita.get("/p/tiny-resnet/1.1.0/download")
        assert refused.status_code == 409
        assert "<h1>409" in refused.text


async def test_api_tokens_are_shown_once_listed_and_revoked(site: Site) -> None:
    await site.depot.add_user("rita")
    async with site.signed_in("rita") as rita:
        account = await rita.get("/account")
        assert account.status_code == 200
        assert "No API tokens" in account.text
        created = await rita.post("/account/tokens", data={"csrf": csrf_of(account.text), "name": "laptop",
                                                           "expires_in_days": "30"})  # fmt: skip
        assert created.status_code == 201
        assert "dpt_" in created.text
        again = await rita.get("/account")
        assert "laptop" in again.text
        assert "dpt_" not in again.text  # shown once
        tokens = await site.depot.auth.get("/auth/api-tokens", headers=await bearer_of(site, "rita"))
        token_id = tokens.json()["items"][0]["id"]
        revoked = await rita.post(
            f"/account/tokens/{token_id}/revoke",
            headers={"HX-Request": "true", "X-CSRF-Token": csrf_of(again.text)},
        )
        assert revoked.status_code == 200
        assert revoked.text == ""
        assert "No API tokens" in (await rita.get("/account")).text


async def test_a_password_change_keeps_the_session(site: Site) -> None:
    await site.depot.add_user("rita")
    async with site.signed_in("rita") as rita:
        account = await rita.get("/account")
        form = {"csrf": csrf_of(account.text), "current_password": "wrong-wrong", "new_password": "a new secret!",
                "confirm_password": "a new secret!"}  # fmt: skip
        wrong = await rita.post("/account/password", data=form)
        assert wrong.status_code == 400
        assert "current password is wrong" in wrong.text
        changed = await rita.post("/account/password", data=form | {"current_password": PASSWORD})
        assert changed.status_code == 200
        assert "password was changed" in changed.text
        assert (await rita.get("/account")).status_code == 200  # still signed in, with the new login
    async with site.signed_in("rita", "a new secret!"):
        pass


async def test_admin_manages_users_groups_and_rules(site: Site) -> None:
    await site.depot.add_user("rita")
    async with site.admin() as admin:
        page = await admin.get("/admin")
        assert page.status_code == 200
        csrf = csrf_of(page.text)
        made = await admin.post("/admin/users", data={"csrf": csrf, "username": "nora", "password": PASSWORD})
        assert made.status_code == 303
        group = await admin.post("/admin/groups", data={"csrf": csrf, "name": "team", "description": "the team"})
        assert group.status_code == 303
        added = await admin.post("/admin/groups/team/members", data={"csrf": csrf, "username": "nora", "action": "add"})
        assert added.status_code == 303
        listed = await admin.get(added.headers["Location"])
        assert "The group&#39;s members were changed." in listed.text
        assert "nora" in listed.text
        duplicate = await admin.post("/admin/users", data={"csrf": csrf, "username": "nora", "password": PASSWORD})
        assert duplicate.status_code == 409
        assert 'class="alert error"' in duplicate.text
        rules = await admin.post("/admin/rules", data={
            "csrf": csrf, "max_artifact_bytes": "1000000", "max_unpacked_bytes": "5000000", "max_entries": "100",
            "max_compression_ratio": "50", "pickle_policy": "warn", "allowed_licenses": "MIT, Apache-2.0"})  # fmt: skip
        assert rules.status_code == 303
        stored = await site.depot.validator.get("/validate/rules", headers=site.depot.callers.admin)
        assert stored.json()["pickle_policy"] == "warn"
        assert stored.json()["allowed_licenses"] == ["MIT", "Apache-2.0"]
        disabled = await admin.post("/admin/users/nora", data={"csrf": csrf, "action": "disable"})
        assert disabled.status_code == 303
    async with site.browser() as nora:
        form = await nora.get("/login")
        refused = await nora.post("/login", data={"csrf": csrf_of(form.text), "username": "nora", "password": PASSWORD})
        assert refused.status_code == 401
    async with site.signed_in("rita") as rita:
        forbidden = await rita.get("/admin")
        assert forbidden.status_code == 403
        assert "<h1>403" in forbidden.text


async def test_a_groups_members_are_listed_whatever_page_of_users_is_shown(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(routes, "USERS_PAGE", 2)  # members are read across several pages of users
    names = ["ann", "bob", "cyd", "dee", "eve"]
    for name in names:
        await site.depot.add_user(name)
    async with site.admin() as admin:
        csrf = csrf_of((await admin.get("/admin")).text)
        assert (await admin.post("/admin/groups", data={"csrf": csrf, "name": "crew"})).status_code == 303
        for name in ("ann", "eve"):
            data = {"csrf": csrf, "username": name, "action": "add"}
            assert (await admin.post("/admin/groups/crew/members", data=data)).status_code == 303
        # The users table shows only "bob"; the group still lists both of its members.
        page = await admin.get("/admin", params={"q": "bob"})
        crew = page.text[page.text.index("<td>crew</td>") :]
        crew = crew[: crew.index("</tr>")]
        listed = re.findall(r'name="username" value="([^"]+)"', crew)
        assert listed == ["ann", "eve"]


async def test_the_api_calls_of_a_page_carry_its_request_id_and_the_users_token(site: Site) -> None:
    seen: list[dict[str, str]] = []

    async def record(request: Request) -> Response:
        seen.append({"path": request.url.path, **{k.lower(): v for k, v in request.headers.items()}})
        answer = JSONResponse({"type": "about:blank", "title": "Not Found", "status": 404, "detail": "none"}, 404)
        answer.set_cookie("api_cookie", f"set-for-{request.headers.get('authorization')}")
        return answer

    recorder = Starlette(routes=[Route("/{path:path}", record)])
    await site.depot.add_user("rita")
    async with (
        real_server(recorder) as recorder_url,
        # By name: a cookie jar would keep a cookie from a host name, where it refuses one from an IP.
        open_site(site.depot, packages_url=recorder_url.replace("127.0.0.1", "localhost")) as recorded,
        recorded.signed_in("rita") as rita,
    ):
        for page in ("/p/some%2Bthing", "/p/some%2Bthing/1.0.0"):
            answer = await rita.get(page, headers={"X-Request-ID": "page-request-7"})
            assert answer.status_code == 404
    # The package page asks for the package with its versions, in one call (`include=package`).
    assert sorted(call["path"] for call in seen) == [
        "/packages/some+thing", "/packages/some+thing/versions", "/packages/some+thing/versions/1.0.0"
    ]  # fmt: skip
    for call in seen:
        assert call["x-request-id"] == "page-request-7"
        assert call["authorization"].startswith("Bearer ")
        assert "cookie" not in call, "web_service keeps no cookie an API sets: it calls for every user"


async def test_a_package_service_that_leaves_the_package_out_of_its_version_list_still_gives_a_page(
    site: Site,
) -> None:
    # Mid-deployment, web_service may meet a package_service that does not know `include=package`.
    asked: list[str] = []
    package = {
        "name": "Older-Service", "description": "from the package's own call", "visibility": "public",
        "owner": "olivia", "read_groups": [], "write_groups": [], "latest_version": None, "version_count": 0,
        "download_count": 0, "created_at": "2026-11-23T10:00:00Z", "updated_at": "2026-11-23T10:00:00Z",
    }  # fmt: skip

    async def older(request: Request) -> Response:
        asked.append(f"{request.url.path}?{request.url.query}")
        if request.url.path.endswith("/versions"):
            return JSONResponse({"items": [], "next_cursor": None})
        return JSONResponse(package)

    older_service = Starlette(routes=[Route("/{path:path}", older)])
    await site.depot.add_user("rita")
    async with (
        real_server(older_service) as older_url,
        open_site(site.depot, packages_url=older_url) as recorded,
        recorded.signed_in("rita") as rita,
    ):
        answer = await rita.get("/p/older-service")
    assert answer.status_code == 200
    assert "from the package&#39;s own call" in answer.text
    assert "No versions yet." in answer.text
    assert [urlsplit(call).path for call in asked] == ["/packages/older-service/versions", "/packages/older-service"]
    assert parse_qs(urlsplit(asked[0]).query)["include"] == ["package"]


async def test_errors_are_pages(site: Site) -> None:
    await site.depot.add_user("rita")
    await site.depot.create("hidden-one")  # private, olivia's
    async with site.signed_in("rita") as rita:
        for path in ("/p/no-such-package", "/p/hidden-one", "/p/no-such-package/1.0.0", "/nothing/here"):
            answer = await rita.get(path)
            assert answer.status_code == 404, path
            assert answer.headers["Content-Type"].startswith("text/html")
            assert "<h1>404" in answer.text
            assert "Traceback" not in answer.text
    async with (
        open_site(site.depot, validate_url="http://127.0.0.1:9") as broken,
        broken.signed_in("rita") as rita,
    ):
        await site.publish("visible", "1.0.0", good_zip(), visibility="public")
        answer = await rita.get("/p/visible/1.0.0")
        assert answer.status_code == 503
        assert "<h1>503" in answer.text
        assert "127.0.0.1:9" not in answer.text
    async with open_site(site.depot, auth_url="http://127.0.0.1:9") as broken, broken.browser() as visitor:
        form = await visitor.get("/login")
        answer = await visitor.post("/login", data={"csrf": csrf_of(form.text), "username": "rita", "password": "x"})
        assert answer.status_code == 503
        assert "<h1>503" in answer.text


async def test_health(site: Site) -> None:
    async with site.browser() as client:
        assert (await client.get("/health")).json()["service"] == "web_service"
        ready = await client.get("/health/ready")
        assert ready.status_code == 200, ready.text


async def bearer_of(site: Site, username: str) -> dict[str, str]:
    answer = await site.depot.auth.post("/auth/login", json={"username": username, "password": PASSWORD})
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}
