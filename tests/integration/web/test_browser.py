"""The journeys of the issue in a real browser: Debian's Chromium driven by Playwright, in front of
web_service and the three services on real PostgreSQL and S3 (the `site` fixture of test_pages).

Every page a test opens is watched: a console error, an uncaught script error or a Content-Security-
Policy violation fails the test, so the strict CSP is proven to block nothing the pages need. The
main pages are also measured at 360 px wide: nothing may overflow the viewport sideways.

`DEPOT_SCREENSHOTS=1 pytest tests/integration/web/test_browser.py` saves the main pages to
docs/screenshots/ (the README shows two of them); other runs write nothing.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, ViewportSize, async_playwright, expect

from tests.helpers import eventually
from tests.integration.auth.conftest import ADMIN
from tests.integration.web.conftest import PASSWORD, Site, bad_zip, good_zip

CHROMIUM = next(
    (path for path in ("/usr/bin/chromium", shutil.which("chromium")) if path and Path(path).is_file()), None
)
# Read at import: an autouse fixture removes every DEPOT_ variable before each test runs.
SCREENSHOTS = os.environ.get("DEPOT_SCREENSHOTS") == "1"
SCREENSHOT_DIR = Path(__file__).resolve().parents[3] / "docs" / "screenshots"
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 360, "height": 740}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        CHROMIUM is None, reason="no Chromium at /usr/bin/chromium or on PATH: apt-get install chromium"
    ),
]

# Each page reports its CSP violations to the test through a binding, from before its first script runs.
REPORT_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => {
  window.depotViolation(`${event.violatedDirective} blocked ${event.blockedURI || "inline"}`);
});
"""


class Watched:
    """What went wrong in a browser context's pages: console errors, page errors, CSP violations."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.problems.append(f"console error: {message.text} ({message.location.get('url')})")

    def page_error(self, error: Exception) -> None:
        self.problems.append(f"page error: {error}")

    def violation(self, _source: object, text: str) -> None:
        self.problems.append(f"CSP violation: {text}")

    def assert_none(self) -> None:
        assert self.problems == [], self.problems


@pytest.fixture
async def chromium() -> AsyncIterator[Browser]:
    assert CHROMIUM is not None
    async with async_playwright() as playwright:
        # Headless; no sandbox, which Chromium refuses to set up as root.
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            await browser.close()


@asynccontextmanager
async def person(browser: Browser, *, viewport: ViewportSize = DESKTOP) -> AsyncIterator[tuple[Page, Watched]]:
    """One person's browser (cookies of its own) and one page in it; fails if anything went wrong in it."""
    context = await browser.new_context(viewport=viewport)
    watched = Watched()
    await context.expose_binding("depotViolation", watched.violation)
    await context.add_init_script(REPORT_VIOLATIONS)
    context.on("console", watched.console)
    context.on("weberror", lambda web_error: watched.page_error(web_error.error))
    try:
        yield await context.new_page(), watched
    finally:
        await context.close()
    watched.assert_none()


async def sign_in(page: Page, site: Site, username: str, password: str = PASSWORD) -> None:
    await page.goto(site.url + "/")
    await expect(page).to_have_url(re.compile(r"/login\?next=%2F$"))
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password", exact=True).fill(password)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Packages")
    await expect(page.get_by_role("button", name="Sign out")).to_contain_text(username)


async def sign_out(page: Page) -> None:
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")


async def fits(page: Page, path: str) -> None:
    """The page at 360 px wide scrolls only down (wide tables scroll inside their own box)."""
    await page.goto(path)
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"{path} is {width} px wide at {PHONE['width']} px"


async def screenshot(page: Page, name: str) -> None:
    if SCREENSHOTS:
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=SCREENSHOT_DIR / f"{name}.png", full_page=True)


async def catalogue(site: Site) -> None:
    await site.depot.add_user("rita")
    good = await site.publish("tiny-resnet", "1.0.0", good_zip(), visibility="public",
                              description="A tiny ResNet for the smoke tests", filename="tiny-resnet.zip")  # fmt: skip
    assert good["status"] == "available"
    bad = await site.publish("tiny-resnet", "1.1.0", bad_zip(), filename="tiny-resnet-1.1.zip")
    assert bad["status"] == "rejected"
    await site.publish("imagenet-labels", "2024.1.0", good_zip(), visibility="public",
                       description="The 1,000 ImageNet class names, one a line")  # fmt: skip


async def test_sign_in_search_read_a_package_its_versions_and_a_failing_check(site: Site, chromium: Browser) -> None:
    await catalogue(site)
    async with person(chromium) as (page, _):
        await sign_in(page, site, "rita")
        results = page.locator("#results")
        await expect(results.get_by_role("link", name="tiny-resnet")).to_be_visible()
        await expect(results.get_by_role("link", name="imagenet-labels")).to_be_visible()
        await screenshot(page, "packages")

        # Search as you type: htmx replaces the results and the address, the page itself stays.
        await page.evaluate("window.sameDocument = true")
        with_htmx: list[str] = []
        page.on("request", lambda request: with_htmx.append(request.url) if request.headers.get("hx-request") else None)
        await page.get_by_label("Name or description").press_sequentially("resnet", delay=30)
        await expect(results.get_by_role("link", name="imagenet-labels")).to_have_count(0)
        await expect(results.get_by_role("link", name="tiny-resnet")).to_be_visible()
        await expect(page).to_have_url(re.compile(r"\?q=resnet"))
        assert await page.evaluate("window.sameDocument") is True
        assert any("q=resnet" in url for url in with_htmx), with_htmx
        await page.get_by_label("Name or description").fill("no-such-thing")
        await expect(results).to_contain_text("No packages found.")
        await page.get_by_label("Name or description").fill("")
        await expect(results.get_by_role("link", name="imagenet-labels")).to_be_visible()

        # The package page.
        await results.get_by_role("link", name="tiny-resnet").click()
        await expect(page.get_by_role("heading", level=1)).to_contain_text("tiny-resnet")
        await expect(page.locator(".lead")).to_have_text("A tiny ResNet for the smoke tests")
        await expect(page.locator("#pull-line")).to_have_text("depot pull tiny-resnet@1.0.0")
        versions = page.locator("table tbody tr")
        await expect(versions).to_have_count(2)
        available = versions.filter(has=page.get_by_role("link", name="1.0.0", exact=True))
        await expect(available.locator(".status")).to_have_text("available")
        await expect(available.get_by_role("link", name="Download")).to_be_visible()
        rejected = versions.filter(has=page.get_by_role("link", name="1.1.0", exact=True))
        await expect(rejected.locator(".status")).to_have_text("rejected")
        await expect(rejected.get_by_role("link", name="Download")).to_have_count(0)
        await screenshot(page, "package")

        # A version that passed.
        await available.get_by_role("link", name="1.0.0").click()
        await expect(page.get_by_role("heading", level=1)).to_contain_text("tiny-resnet 1.0.0")
        await expect(page.get_by_role("heading", name="Validation")).to_be_visible()
        checks = page.locator("table.checks tbody tr")
        pickle = checks.filter(has=page.get_by_role("cell", name="pickle", exact=True))
        await expect(pickle.locator(".status")).to_have_text(re.compile("pass|skip"))
        await expect(page.locator("table.checks .status.fail")).to_have_count(0)
        await expect(page.get_by_role("link", name="Download")).to_be_visible()

        # The rejected version: its failing check says why.
        await page.get_by_role("link", name="tiny-resnet", exact=True).click()
        await page.get_by_role("link", name="1.1.0", exact=True).click()
        await expect(page.get_by_role("heading", level=1)).to_contain_text("tiny-resnet 1.1.0")
        await expect(page.get_by_role("heading", level=1).locator(".status")).to_have_text("rejected")
        failing = checks.filter(has=page.locator(".status.fail"))
        await expect(failing).to_have_count(1)
        await expect(failing.locator("td").first).to_have_text("pickle")
        await expect(failing.locator("td").nth(2)).to_contain_text("system")
        await expect(page.get_by_role("link", name="Download")).to_have_count(0)
        await screenshot(page, "version")


async def test_an_api_token_is_shown_once_works_and_is_revoked(site: Site, chromium: Browser) -> None:
    await site.depot.add_user("rita")
    async with person(chromium) as (page, _):
        await sign_in(page, site, "rita")
        await page.get_by_role("link", name="Account").click()
        await expect(page.get_by_role("heading", level=1)).to_have_text("Your account")
        await expect(page.get_by_text("No API tokens.")).to_be_visible()

        await page.get_by_label("Name", exact=True).fill("laptop")
        await page.get_by_label("Expires in (days)").fill("30")
        await page.get_by_role("button", name="Create token").click()
        await expect(page.get_by_role("status")).to_contain_text("it is shown only this once")
        token = (await page.locator("#new-token").text_content() or "").strip()
        assert token.startswith("dpt_")
        await expect(page.locator("#tokens tbody tr")).to_have_count(1)
        await expect(page.locator("#tokens tbody tr td").first).to_have_text("laptop")
        await screenshot(page, "account")
        async with httpx.AsyncClient(base_url=str(site.depot.auth.base_url), timeout=30) as api:
            grant = {"grant_type": "api_token", "api_token": token}
            exchanged = await api.post("/auth/token", json=grant)
            assert exchanged.status_code == 200, exchanged.text

            await page.get_by_role("link", name="Account").click()
            await expect(page.locator("#tokens tbody tr")).to_have_count(1)
            await expect(page.locator("#new-token")).to_have_count(0)
            assert token not in await page.content()

            # Revoked with htmx: the row goes, the page stays.
            await page.evaluate("window.sameDocument = true")
            await page.get_by_role("button", name="Revoke laptop").click()
            await expect(page.locator("#tokens tbody tr")).to_have_count(0)
            assert await page.evaluate("window.sameDocument") is True
            await page.reload()
            await expect(page.get_by_text("No API tokens.")).to_be_visible()
            refused = await api.post("/auth/token", json=grant)
            assert refused.status_code == 401, refused.text


async def test_an_admin_adds_a_user_to_a_group_who_then_sees_a_private_package(site: Site, chromium: Browser) -> None:
    await site.depot.add_user("nora")
    await site.depot.create("secret-model", visibility="private", read_groups=["team"], description="Team eyes only")
    async with person(chromium) as (nora, _):
        await sign_in(nora, site, "nora")
        await expect(nora.locator("#results")).to_contain_text("No packages found.")
        await sign_out(nora)

        async with person(chromium) as (admin, _):
            await site.depot.auth_admin()  # bootstrapped
            await sign_in(admin, site, ADMIN[0], ADMIN[1])
            await admin.get_by_role("link", name="Admin").click()
            await expect(admin.get_by_role("heading", level=1)).to_have_text("Admin")
            await admin.get_by_label("New group").fill("team")
            await admin.get_by_label("Description", exact=True).fill("The modelling team")
            await admin.get_by_role("button", name="Create group").click()
            await expect(admin.get_by_role("status")).to_have_text("The group was created.")
            await admin.get_by_label("Username to add to team").fill("nora")
            await admin.get_by_role("button", name="Add", exact=True).click()
            await expect(admin.get_by_role("status")).to_have_text("The group's members were changed.")
            team = admin.locator("tr").filter(has=admin.get_by_role("cell", name="team", exact=True))
            await expect(team.locator(".members li")).to_contain_text("nora")
            nora_row = admin.locator("tr").filter(has=admin.get_by_role("cell", name="nora", exact=True))
            await expect(nora_row.locator("td").nth(3)).to_have_text("team")
            await screenshot(admin, "admin")

        # Groups travel in the token: nora's next sign-in carries the new one.
        await sign_in(nora, site, "nora")
        secret = nora.locator("#results").get_by_role("link", name="secret-model")
        await expect(secret).to_be_visible()
        await secret.click()
        await expect(nora.get_by_role("heading", level=1)).to_contain_text("secret-model")
        await expect(nora.get_by_role("heading", level=1).locator(".badge")).to_have_text("private")
        await expect(nora.locator(".lead")).to_have_text("Team eyes only")
        await expect(nora.locator(".facts")).to_contain_text("team")


async def test_the_main_pages_fit_360_pixels(site: Site, chromium: Browser) -> None:
    await catalogue(site)
    async with person(chromium, viewport=PHONE) as (page, _):
        await fits(page, site.url + "/login")
        await sign_in(page, site, "rita")
        for path in ("/", "/?q=tiny", "/p/tiny-resnet", "/p/tiny-resnet/1.0.0", "/p/tiny-resnet/1.1.0", "/account"):
            await fits(page, site.url + path)
        await screenshot(page, "version-phone")
        await sign_out(page)
        await site.depot.auth_admin()
        await sign_in(page, site, ADMIN[0], ADMIN[1])
        await fits(page, site.url + "/admin")


async def test_the_watcher_sees_a_csp_violation(site: Site, chromium: Browser) -> None:
    """The other tests' silence means something: an inline script on a page is caught."""
    await site.depot.add_user("rita")
    async with person(chromium) as (page, watched):
        await sign_in(page, site, "rita")
        await page.evaluate("""() => {
            const script = document.createElement("script");
            script.textContent = "window.ranInline = true";
            document.body.append(script);
        }""")
        await eventually(lambda: watched.problems, message="a CSP violation reported")
        assert await page.evaluate("window.ranInline") is None
        assert any("CSP violation: script-src" in problem for problem in watched.problems), watched.problems
        watched.problems.clear()
