"""Pieces of pages kept by their values (web_service/fragments.py), without servers."""

from __future__ import annotations

from typing import Any

import pytest
from jinja2 import DictLoader, UndefinedError

from web_service.app import PageEnvironment, template_environment
from web_service.fragments import Fragment
from web_service.routes import PACKAGE_CARD_FIELDS, VERSION_ROW_FIELDS

ROW = "<tr>{{ v.a }}|{{ v.b }}|{{ shared }}</tr>"


def fragment(source: str = ROW, fields: tuple[str, ...] = ("a", "b")) -> tuple[Fragment, list[str]]:
    """A fragment of `source`, and the list that every real render of it appends to."""
    renders: list[str] = []

    def rendered() -> str:
        renders.append("rendered")
        return ""

    environment = PageEnvironment(loader=DictLoader({"row.html": source}), autoescape=True)
    environment.globals["rendered"] = rendered
    return Fragment(environment, "row.html", "v", fields), renders


def test_each_row_is_rendered_once_and_then_kept_while_its_values_stay_the_same() -> None:
    rows, renders = fragment("{{ rendered() }}" + ROW)
    items = [{"a": "x", "b": 1}, {"a": "y", "b": 2}]
    first = rows(items, shared="s")
    assert first == "<tr>x|1|s</tr><tr>y|2|s</tr>"
    assert rows(items, shared="s") == first
    assert len(renders) == 2, "the second page was made of kept rows"
    assert rows([{"a": "x", "b": 3}], shared="s") == "<tr>x|3|s</tr>", "a changed field is a new row"
    assert rows([{"a": "x", "b": 1}], shared="t") == "<tr>x|1|t</tr>", "so is a changed shared value"
    assert len(renders) == 4


def test_equal_values_of_different_types_are_different_rows() -> None:
    rows, _ = fragment()
    texts = [rows([{"a": value, "b": None}], shared="") for value in (1, 1.0, True)]
    assert texts == ["<tr>1|None|</tr>", "<tr>1.0|None|</tr>", "<tr>True|None|</tr>"]


def test_what_a_row_shows_is_escaped_whether_rendered_or_kept() -> None:
    rows, _ = fragment()
    hostile = {"a": "<script>alert(1)</script>", "b": '"onmouseover="x'}
    for _ in range(2):
        out = rows([hostile], shared="<b>")
        assert "<script>" not in out
        assert '"onmouseover=' not in out
        assert "<b>" not in out
        assert "&lt;script&gt;" in out


def test_values_that_cannot_be_a_key_are_rendered_every_time() -> None:
    rows, renders = fragment("{{ rendered() }}" + ROW)
    items = [{"a": ["a", "list"], "b": {"a": "dict"}}]
    shown = "<tr>[&#39;a&#39;, &#39;list&#39;]|{&#39;a&#39;: &#39;dict&#39;}|</tr>"
    assert rows(items, shared="") == rows(items, shared="") == shown
    assert len(renders) == 2


def test_a_missing_field_shows_as_none_and_a_field_not_given_is_an_error() -> None:
    rows, _ = fragment()
    assert rows([{"a": "only a"}], shared="") == "<tr>only a|None|</tr>"
    unnamed, _ = fragment("{{ v.a }}{{ v.c }}")
    with pytest.raises(UndefinedError):
        unnamed([{"a": "x", "b": "y", "c": "not a field of the fragment"}])
    private, _ = fragment("{{ v.a }}{{ csrf }}")  # a fragment sees none of a page's context
    with pytest.raises(UndefinedError):
        private([{"a": "x", "b": "y"}])


def test_a_fragment_is_made_of_two_fields_or_more() -> None:
    with pytest.raises(ValueError, match="two fields"):
        fragment(fields=("a",))


def version(**changes: Any) -> dict[str, Any]:
    return {
        "version": "1.2.0+build.5", "status": "available", "size": 1536, "sha256": "ab" * 32,
        "filename": "model 1.zip", "uploaded_by": "alice", "created_at": "2026-11-23T10:00:59Z", "yank_reason": None,
        "metadata": {"hidden": "not a field of the row"},
    } | changes  # fmt: skip


def test_a_package_pages_version_rows_show_every_field_they_name() -> None:
    rows = template_environment().globals["version_rows"]
    assert isinstance(rows, Fragment)
    yanked = version(version="1.0.0", status="yanked", yank_reason="broken <b>")
    out = str(rows([version(), yanked], quoted_name="m%20x"))
    assert out.count("<tr>") == 2
    shown = [
        'href="/p/m%20x/1.2.0%2Bbuild.5"', ">1.2.0+build.5<", "status available", "1.5 KiB", f'title="{"ab" * 32}"',
        f">{'ab' * 6}<", "model 1.zip", "alice", "2026-11-23 10:00 UTC", "broken &lt;b&gt;",
        'href="/p/m%20x/1.0.0/download"',
    ]  # fmt: skip
    for text in shown:
        assert text in out, text
    assert "hidden" not in out
    assert set(VERSION_ROW_FIELDS) <= set(version())


def test_a_package_in_a_list_shows_every_field_it_names() -> None:
    cards = template_environment().globals["package_cards"]
    assert isinstance(cards, Fragment)
    package = {
        "name": "vit small", "visibility": "private", "description": "<i>tiny</i>", "owner": "bob",
        "latest_version": None, "version_count": 3, "download_count": 1234, "read_groups": ["hidden-group"],
    }  # fmt: skip
    out = str(cards([package, package | {"description": "", "latest_version": "2.0.0"}]))
    assert out.count("<li>") == 2
    shown = ['href="/p/vit%20small"', ">vit small<", "badge private", "<p>&lt;i&gt;tiny&lt;/i&gt;</p>", "owner bob",
             "latest none", "latest 2.0.0", "3 versions", "1234 downloads"]  # fmt: skip
    for text in shown:
        assert text in out, text
    assert out.count("<p>") == 1, "an empty description is left out"
    assert "hidden-group" not in out
    assert set(PACKAGE_CARD_FIELDS) <= set(package)
