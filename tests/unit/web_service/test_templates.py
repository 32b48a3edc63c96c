"""The pages' template environment and filters, without servers."""

from __future__ import annotations

from types import SimpleNamespace

from web_service.app import template_environment
from web_service.filters import filesize, when


def render(source: str, **context: object) -> str:
    return template_environment().from_string(source).render(**context)


def test_a_dot_reads_a_json_objects_keys_even_those_named_like_dict_methods() -> None:
    listed = {"items": [1, 2], "keys": "k", "get": "g", "status": "available"}
    assert render("{{ o.items|join(',') }} {{ o.keys }} {{ o.get }} {{ o.status }}", o=listed) == "1,2 k g available"
    assert render("[{{ o.missing }}]", o=listed) == "[]"
    assert render("{{ o.name }}", o=SimpleNamespace(name="attribute")) == "attribute"
    assert render("{{ 'x'.upper() }}") == "X"


def test_what_a_dot_reads_is_still_escaped() -> None:
    hostile = {"description": '<script>alert(1)</script>"onmouseover="x'}
    out = render('<p title="{{ o.description }}">{{ o.description }}</p>', o=hostile)
    assert "<script>" not in out
    assert '"onmouseover=' not in out
    assert "&lt;script&gt;" in out


def test_times_read_as_people_read_them() -> None:
    assert when("2026-11-23T10:00:59Z") == "2026-11-23 10:00 UTC"
    assert when("2026-11-23T10:00:59.123456Z") == "2026-11-23 10:00 UTC"
    assert when("2026-11-23T10:00:59Z") == "2026-11-23 10:00 UTC", "remembered, the same"
    assert when("yesterday") == "yesterday"
    assert when(None) == "—"


def test_sizes_read_as_people_read_them_and_anything_else_is_a_dash() -> None:
    sizes = {0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB", 5 * 1024**3: "5.0 GiB"}
    sizes[5 * 1024**5] = "5120.0 TiB"  # no unit past TiB
    for _ in range(2):  # worked out, then remembered
        assert {size: filesize(size) for size in sizes} == sizes
    for other in (None, "1536", [1], {"size": 1}):
        assert filesize(other) == "—"
