"""Pieces of pages rendered once and kept, by the values they are made of.

A package page is mostly its versions' rows, and the same rows come back on every load of a
package (as the same packages do in lists and searches). A row is rendered from a few named fields
of its item (and values shared by every row, like the package's quoted name), kept in an LRU keyed
by those values and their types, and rendered again only when one of them changes. Rendering the
rows in Python, not in a template loop, also spares Jinja2's lookup and escape of every field: a
row kept costs a tuple and a dict lookup.

A fragment's template sees those values and nothing else (no session, CSRF token or request): what
it shows belongs to no user or request. Its output is escaped, as every page's is, when rendered.
A field its template reads but was not given is an error (`StrictUndefined`), not an empty cell.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterable, Mapping
from typing import Any

from jinja2 import Environment, StrictUndefined
from markupsafe import Markup

MAX_KEPT = 4096
"""Rendered pieces kept per fragment and process: a hundred-row page forty times over, a few MiB."""

Key = tuple[tuple[tuple[str, Any], ...], tuple[Any, ...], tuple[type, ...]]


class Fragment:
    """`template` rendered once per distinct item, named `name` (its `fields` only), with the `shared` values."""

    def __init__(
        self, environment: Environment, template: str, name: str, fields: tuple[str, ...], maxsize: int = MAX_KEPT
    ) -> None:
        if len(fields) < 2:
            raise ValueError("a fragment is made of two fields or more")  # itemgetter's tuple
        self._environment = environment.overlay(undefined=StrictUndefined)
        self._template = template
        self._name = name
        self._fields = fields
        self._field_values = operator.itemgetter(*fields)
        self._kept = functools.lru_cache(maxsize=maxsize)(self._render)

    def __call__(self, items: Iterable[Mapping[str, Any]], **shared: Any) -> Markup:
        """Every item's piece, in order, as one piece of markup."""
        common = tuple(shared.items())
        common_types = tuple(type(value) for _, value in common)
        pieces = []
        for item in items:
            try:
                values = self._field_values(item)
            except KeyError:  # a field the item does not have: None, as Jinja2 would show it
                values = tuple(item.get(field) for field in self._fields)
            # The types too: `1`, `1.0` and `True` are equal keys but not the same text.
            key = (common, values, (*common_types, *map(type, values)))
            try:
                pieces.append(self._kept(key))
            except TypeError:  # a value that cannot be a key (a list): rendered, not kept
                pieces.append(self._render(key))
        return Markup("".join(pieces))  # noqa: S704 - each piece is markup already

    def _render(self, key: Key) -> Markup:
        common, values, _ = key
        context = {**dict(common), self._name: dict(zip(self._fields, values, strict=True))}
        return Markup(self._environment.get_template(self._template).render(context))  # noqa: S704 - escaped by the template
