"""`served_content_type`: the type a download is sent with, never one that a browser runs or renders."""

from __future__ import annotations

import pytest

from package_service.downloads import served_content_type


@pytest.mark.parametrize(
    "stored",
    [
        "text/html",
        "TEXT/HTML",
        "text/html; charset=utf-8",
        "text/html;charset=utf-8",
        "text/HTML ; q=1",
        "application/xhtml+xml",
        "image/svg+xml",
        "text/xml",
        "application/xml",
        "application/atom+xml",
        "application/xml-dtd",
        "application/javascript",
        "application/x-javascript",
        "text/javascript",
        "application/ecmascript",
        "text/jscript",
        "text/vbscript",
        "application/pdf",
        "application/x-shockwave-flash",
        "multipart/related; type=text/html",
        "multipart/x-mixed-replace",
        "message/rfc822",
        "text/css",
        "text/markdown",
        "text/plain2",
        "*/*",
        "text/*",
        "text",
        "",
        ";",
        "text/plain text/html",
        "text/plain,text/html",
        "te xt/plain",
        "application/\u0430pdf",  # a Cyrillic a
    ],
)
def test_types_browsers_run_or_render_are_sent_as_octet_stream(stored: str) -> None:
    assert served_content_type(stored) == "application/octet-stream"


@pytest.mark.parametrize(
    ("stored", "sent"),
    [
        ("application/octet-stream", "application/octet-stream"),
        ("text/plain", "text/plain"),
        ("Text/Plain; charset=utf-8", "text/plain"),
        ("application/x-safetensors", "application/x-safetensors"),
        ("application/vnd.pytorch+zip", "application/vnd.pytorch+zip"),
        ("image/png", "image/png"),
        ("application/gzip", "application/gzip"),
        ("application/json", "application/json"),
    ],
)
def test_inert_types_are_kept_without_parameters(stored: str, sent: str) -> None:
    assert served_content_type(stored) == sent
