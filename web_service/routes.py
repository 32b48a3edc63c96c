"""The pages: HTTP in, HTML out. Every page is built from the APIs, as the signed-in user."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import structlog
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.templating import Jinja2Templates

from common.errors import BadRequest, DepotError, Forbidden, PayloadTooLarge
from common.middleware import request_id_of
from web_service.security import CSRF_FIELD, CSRF_HEADER, check_csrf
from web_service.sessions import Session, SessionCookies
from web_service.settings import WebSettings
from web_service.upstream import Api, Refused, Service, SignInRequired, UserApi, problem_of, segment

log = structlog.get_logger("depot.web")

MAX_FORM_BYTES = 64 * 1024
NOTICES = {
    "user_created": "The user was created.",
    "user_updated": "The user was updated.",
    "group_created": "The group was created.",
    "members_changed": "The group's members were changed.",
    "rules_saved": "The validation rules were saved.",
}


@dataclass
class Web:
    """What the pages share for the app's lifetime."""

    settings: WebSettings
    api: Api
    cookies: SessionCookies
    templates: Jinja2Templates


class Visit:
    """One request to a page: its session, the APIs as its user, its form."""

    def __init__(self, request: Request, web: Web, session: Session) -> None:
        self.request = request
        self.web = web
        self.session = session
        self.user = UserApi(web.api, session)
        self.form: dict[str, str] = {}
        self.changed = False

    @property
    def htmx(self) -> bool:
        return self.request.headers.get("HX-Request") == "true"

    def field(self, name: str) -> str:
        return self.form.get(name, "").strip()

    def render(self, template: str, code: int = 200, **context: Any) -> HTMLResponse:
        context |= {"session": self.session, "csrf": self.session.csrf, "request_id": request_id_of(self.request)}
        return self.web.templates.TemplateResponse(self.request, template, context, status_code=code)

    def error(self, status: int, detail: str) -> HTMLResponse:
        return self.render("error.html", status, status=status, title=HTTPStatus(status).phrase, detail=detail)


Handler = Callable[[Visit], Awaitable[Response]]


def local_target(target: str | None) -> str:
    """`target` when it is a path of this site (`/…`, never `//host` or `/\\host`), else `/`."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    if any(ord(char) < 0x20 or char == "\\" for char in target):
        return "/"
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else "/"


def to_sign_in(visit: Visit) -> Response:
    request = visit.request
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if request.method != "GET" or visit.htmx:
        referer = request.headers.get("Referer", "")
        parts = urlsplit(referer)
        target = parts.path + (f"?{parts.query}" if parts.query else "") if referer else "/"
    location = "/login?" + urlencode({"next": local_target(target)})
    if visit.htmx:
        return Response(status_code=200, headers={"HX-Redirect": location})
    return RedirectResponse(location, status_code=303)


async def read_form(request: Request) -> dict[str, str]:
    """An `application/x-www-form-urlencoded` body (the only kind the pages send), bounded."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise PayloadTooLarge("The form is too large.")
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=200)
    except (UnicodeDecodeError, ValueError) as error:
        raise BadRequest("The form could not be read.") from error
    return {name: values[0] for name, values in fields.items()}


def page(handler: Handler, *, public: bool = False) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint: opens the session, checks CSRF on a POST, asks for sign-in, renders errors as pages,
    and stores the session again when it changed (a renewed token must never be lost, even on an error)."""

    async def endpoint(request: Request) -> Response:
        web: Web = request.app.state.web
        session, known = web.cookies.open(request.cookies.get(web.cookies.name))
        visit = Visit(request, web, session)
        try:
            if request.method == "POST":
                visit.form = await read_form(request)
                check_csrf(session.csrf, visit.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER))
            response = await handler(visit) if public or session.signed_in else to_sign_in(visit)
        except SignInRequired:
            if session.refresh is not None:
                session.sign_out()
                visit.changed = True
            response = to_sign_in(visit)
        except DepotError as error:
            response = visit.error(error.status, error.detail)
        except Exception:  # a bug: logged with its traceback, answered with a page that shows none
            log.exception("page_failed")
            response = visit.error(500, "Something went wrong on our side. It has been logged.")
        if visit.changed or visit.user.changed or not known:
            web.cookies.store(response, session)
        return response

    return endpoint


def _params(visit: Visit, *names: str) -> dict[str, str]:
    query = visit.request.query_params
    return {name: query[name] for name in names if query.get(name)}


# Sign in and out


async def sign_in_form(visit: Visit) -> Response:
    target = local_target(visit.request.query_params.get("next"))
    if visit.session.signed_in:
        return RedirectResponse(target, status_code=303)
    return visit.render("login.html", next=target)


async def sign_in(visit: Visit) -> Response:
    target = local_target(visit.form.get("next"))
    username = visit.field("username")
    try:
        pair = await visit.web.api.login(username, visit.form.get("password", ""))
    except Refused as refused:
        status = refused.status if 400 <= refused.status < 500 else 400
        return visit.render("login.html", status, next=target, username=username, error=refused.message)
    visit.session.sign_in(username, False, pair)
    me = await visit.user.get("auth", "/auth/me")
    visit.session.sign_in(str(me["username"]), "admin" in me["roles"], pair)
    visit.changed = True
    return RedirectResponse(target, status_code=303)


async def sign_out(visit: Visit) -> Response:
    if visit.session.refresh is not None:
        # The cookie goes anyway; a refresh token that could not be revoked dies with its expiry.
        with contextlib.suppress(DepotError):
            await visit.web.api.send("POST", "auth", "/auth/logout", body={"refresh_token": visit.session.refresh})
    visit.session.sign_out()
    visit.changed = True
    return RedirectResponse("/login", status_code=303)


# Packages


async def packages(visit: Visit) -> Response:
    search = _params(visit, "q", "regex", "owner")
    params = {**search, **_params(visit, "cursor"), "limit": str(visit.web.settings.page_size)}
    error = None
    try:
        found = await visit.user.get("packages", "/packages", params)
    except Refused as refused:
        found, error = {"items": [], "next_cursor": None}, refused.message
    next_page = None
    if found["next_cursor"]:
        next_page = "/?" + urlencode({**search, "cursor": found["next_cursor"]})
    context = {"search": search, "packages": found["items"], "next_page": next_page, "error": error}
    if visit.htmx and visit.request.headers.get("HX-Target") == "results":
        return visit.render("_packages.html", **context)
    return visit.render("packages.html", paged="cursor" in visit.request.query_params, **context)


# What a row of a package page's versions shows (templates/_version_row.html), and a package in a
# list of packages (templates/_package_card.html): each rendered once and kept (web_service/fragments.py).
VERSION_ROW_FIELDS = ("version", "status", "size", "sha256", "filename", "uploaded_by", "created_at", "yank_reason")
PACKAGE_CARD_FIELDS = (
    "name", "visibility", "description", "owner", "latest_version", "version_count", "download_count",
)  # fmt: skip
_VERSION_ROW_QUERY = {"fields": ",".join(VERSION_ROW_FIELDS), "include": "package", "include_yanked": "true"}


async def package(visit: Visit) -> Response:
    name = segment(visit.request.path_params["name"])
    # One call answers the package and its versions (`include=package`), with only the fields a row
    # shows (`fields`: no report or metadata). A package_service that does not know `include` or
    # `fields` yet (mid-deployment) answers every field and leaves the package out: it is then asked for.
    params = {**_VERSION_ROW_QUERY, "limit": "100", **_params(visit, "cursor")}
    versions = await visit.user.get("packages", f"/packages/{name}/versions", params)
    found = versions.get("package") or await visit.user.get("packages", f"/packages/{name}")
    next_page = None
    if versions["next_cursor"]:
        next_page = f"/p/{name}?" + urlencode({"cursor": versions["next_cursor"]})
    return visit.render("package.html", package=found, versions=versions["items"], next_page=next_page)


async def _version_and_report(visit: Visit) -> tuple[dict[str, Any], dict[str, Any] | None]:
    name = segment(visit.request.path_params["name"])
    version = segment(visit.request.path_params["version"])
    found = await visit.user.get("packages", f"/packages/{name}/versions/{version}")
    report = await visit.user.find("validate", f"/validate/reports/{name}/{segment(found['version'])}")
    return found, report


async def version_page(visit: Visit) -> Response:
    name = segment(visit.request.path_params["name"])  # any spelling finds the package
    (found, report), package_found = await asyncio.gather(
        _version_and_report(visit), visit.user.get("packages", f"/packages/{name}")
    )
    return visit.render("version.html", package=package_found, version=found, report=report)


async def report_fragment(visit: Visit) -> Response:
    found, report = await _version_and_report(visit)
    return visit.render("_report.html", version=found, report=report)


async def download(visit: Visit) -> Response:
    name = segment(visit.request.path_params["name"])
    version = segment(visit.request.path_params["version"])
    try:
        answer = await visit.user.call(
            "GET", "packages", f"/packages/{name}/versions/{version}/content", params={"redirect": "1"}
        )
    except Refused as refused:
        return visit.error(refused.status, refused.message)
    location = answer.headers.get("Location")
    if answer.status_code != HTTPStatus.TEMPORARY_REDIRECT or not location:
        return visit.error(503, "The download could not be started. Try again in a moment.")
    # A short-lived presigned S3 URL: the bytes never pass through web_service.
    return RedirectResponse(location, status_code=303)


# Your account


async def _account(visit: Visit, status: int = 200, **context: Any) -> Response:
    me = await visit.user.get("auth", "/auth/me")
    tokens = await visit.user.get("auth", "/auth/api-tokens")
    return visit.render("account.html", status, me=me, tokens=tokens["items"], **context)


async def account(visit: Visit) -> Response:
    return await _account(visit)


async def create_token(visit: Visit) -> Response:
    body: dict[str, Any] = {"name": visit.field("name")}
    if visit.field("expires_in_days"):
        try:
            body["expires_in_days"] = int(visit.field("expires_in_days"))
        except ValueError:
            return await _account(visit, 400, problem_at="tokens", problem="The number of days must be a whole number.")
    try:
        created = (await visit.user.call("POST", "auth", "/auth/api-tokens", body=body)).json()
    except Refused as refused:
        return await _account(visit, refused.status, problem_at="tokens", problem=refused.message)
    return await _account(visit, 201, new_token=created)


async def revoke_token(visit: Visit) -> Response:
    token_id = segment(visit.request.path_params["token_id"])
    try:
        await visit.user.call("DELETE", "auth", f"/auth/api-tokens/{token_id}")
    except Refused as refused:
        if refused.status != 404:  # already gone: what was asked holds
            return await _account(visit, refused.status, problem_at="tokens", problem=refused.message)
    if visit.htmx:
        return HTMLResponse("")  # the row is swapped for nothing
    return RedirectResponse("/account", status_code=303)


async def change_password(visit: Visit) -> Response:
    new = visit.form.get("new_password", "")
    if new != visit.form.get("confirm_password", ""):
        return await _account(visit, 400, problem_at="password", problem="The two new passwords differ.")
    body = {"current_password": visit.form.get("current_password", ""), "new_password": new}
    response = await visit.web.api.send("PUT", "auth", "/auth/me/password", token=await visit.user.token(), body=body)
    if response.status_code == HTTPStatus.UNAUTHORIZED:
        return await _account(visit, 400, problem_at="password", problem="The current password is wrong.")
    if response.status_code != HTTPStatus.NO_CONTENT:
        refused = Refused(response.status_code, *problem_of(response))
        return await _account(visit, refused.status, problem_at="password", problem=refused.message)
    # Changing the password revoked every refresh token, this session's too: sign in again with it.
    pair = await visit.web.api.login(visit.session.username or "", new)
    visit.session.sign_in(visit.session.username or "", visit.session.admin, pair)
    visit.changed = True
    return await _account(visit, notice="Your password was changed; your other sessions are signed out.")


# Admin


def _require_admin(visit: Visit) -> None:
    if not visit.session.admin:
        raise Forbidden("This page is for administrators.")


USERS_PAGE = 100
MEMBER_SCAN_PAGES = 50
"""Pages of users read to list the groups' members (the API gives groups with counts only): 5,000 users."""


async def _group_members(visit: Visit, groups: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Each group's members, read from the users (every page, up to `MEMBER_SCAN_PAGES`), whatever page is shown."""
    members: dict[str, list[str]] = {group["name"]: [] for group in groups}
    if not any(group.get("member_count") for group in groups):
        return members
    params = {"limit": str(USERS_PAGE)}
    for _ in range(MEMBER_SCAN_PAGES):
        page = await visit.user.get("auth", "/auth/users", params)
        for user in page["items"]:
            for name in user["groups"]:
                members.setdefault(name, []).append(user["username"])
        if not page["next_cursor"]:
            break
        params = {"limit": str(USERS_PAGE), "cursor": page["next_cursor"]}
    return members


async def _admin(visit: Visit, status: int = 200, **context: Any) -> Response:
    _require_admin(visit)
    params = {"limit": str(USERS_PAGE), **_params(visit, "q", "cursor")}
    users = await visit.user.get("auth", "/auth/users", params)
    groups = (await visit.user.get("auth", "/auth/groups"))["items"]
    rules = await visit.user.get("validate", "/validate/rules")
    members = await _group_members(visit, groups)
    notice = NOTICES.get(visit.request.query_params.get("done", ""))
    next_page = None
    if users["next_cursor"]:
        next_page = "/admin?" + urlencode({**_params(visit, "q"), "cursor": users["next_cursor"]})
    return visit.render(
        "admin.html", status, users=users["items"], groups=groups, members=members, rules=rules,
        notice=notice, next_page=next_page, query=visit.request.query_params.get("q", ""), **context,
    )  # fmt: skip


async def admin(visit: Visit) -> Response:
    return await _admin(visit)


async def _admin_change(visit: Visit, method: str, service: Service, path: str, *, body: Any, done: str) -> Response:
    _require_admin(visit)
    try:
        await visit.user.call(method, service, path, body=body)
    except Refused as refused:
        return await _admin(visit, refused.status, error=refused.message)
    return RedirectResponse(f"/admin?done={done}", status_code=303)


async def create_user(visit: Visit) -> Response:
    body: dict[str, Any] = {"username": visit.field("username"), "password": visit.form.get("password", "")}
    if visit.field("email"):
        body["email"] = visit.field("email")
    if visit.form.get("admin") == "on":
        body["roles"] = ["admin"]
    return await _admin_change(visit, "POST", "auth", "/auth/users", body=body, done="user_created")


async def update_user(visit: Visit) -> Response:
    username = segment(visit.request.path_params["username"])
    action = visit.field("action")
    body: dict[str, Any]
    if action in {"disable", "enable"}:
        body = {"disabled": action == "disable"}
    elif action == "password":
        body = {"password": visit.form.get("password", "")}
    else:
        raise BadRequest("Unknown action.")
    return await _admin_change(visit, "PATCH", "auth", f"/auth/users/{username}", body=body, done="user_updated")


async def create_group(visit: Visit) -> Response:
    body = {"name": visit.field("name"), "description": visit.field("description")}
    return await _admin_change(visit, "POST", "auth", "/auth/groups", body=body, done="group_created")


async def change_members(visit: Visit) -> Response:
    group = segment(visit.request.path_params["group"])
    username = visit.field("username")
    method = "DELETE" if visit.field("action") == "remove" else "PUT"
    path = f"/auth/groups/{group}/members/{quote(username, safe='') or '-'}"
    return await _admin_change(visit, method, "auth", path, body=None, done="members_changed")


async def save_rules(visit: Visit) -> Response:
    try:
        body = {
            "max_artifact_bytes": int(visit.field("max_artifact_bytes")),
            "max_unpacked_bytes": int(visit.field("max_unpacked_bytes")),
            "max_entries": int(visit.field("max_entries")),
            "max_compression_ratio": float(visit.field("max_compression_ratio")),
            "pickle_policy": visit.field("pickle_policy"),
            "allowed_licenses": [s.strip() for s in visit.field("allowed_licenses").split(",") if s.strip()],
        }
    except ValueError:
        _require_admin(visit)
        return await _admin(visit, 400, error="The limits must be numbers.")
    return await _admin_change(visit, "PUT", "validate", "/validate/rules", body=body, done="rules_saved")


# Errors outside pages (an unknown path, a method not allowed)


async def not_a_page(request: Request, error: Exception) -> Response:
    web: Web = request.app.state.web
    session, _ = web.cookies.open(request.cookies.get(web.cookies.name))
    status = error.status_code if isinstance(error, HTTPException) else 500
    detail = "There is no page here." if status == 404 else HTTPStatus(status).phrase
    return Visit(request, web, session).error(status, detail)


def routes() -> list[BaseRoute]:
    return [
        Route("/", page(packages), methods=["GET"]),
        Route("/login", page(sign_in_form, public=True), methods=["GET"]),
        Route("/login", page(sign_in, public=True), methods=["POST"]),
        Route("/logout", page(sign_out, public=True), methods=["POST"]),
        Route("/p/{name}", page(package), methods=["GET"]),
        Route("/p/{name}/{version}", page(version_page), methods=["GET"]),
        Route("/p/{name}/{version}/report", page(report_fragment), methods=["GET"]),
        Route("/p/{name}/{version}/download", page(download), methods=["GET"]),
        Route("/account", page(account), methods=["GET"]),
        Route("/account/tokens", page(create_token), methods=["POST"]),
        Route("/account/tokens/{token_id}/revoke", page(revoke_token), methods=["POST"]),
        Route("/account/password", page(change_password), methods=["POST"]),
        Route("/admin", page(admin), methods=["GET"]),
        Route("/admin/users", page(create_user), methods=["POST"]),
        Route("/admin/users/{username}", page(update_user), methods=["POST"]),
        Route("/admin/groups", page(create_group), methods=["POST"]),
        Route("/admin/groups/{group}/members", page(change_members), methods=["POST"]),
        Route("/admin/rules", page(save_rules), methods=["POST"]),
    ]
