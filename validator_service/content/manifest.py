"""The `manifest` and `license` checks: what an archive's `depot.json` and LICENSE file say.

`depot.json` (at the archive's root) is a JSON object; `name` and `version` must be those of the
version being validated (names compared after `normalize_name`, versions by SemVer identity, so
`My_Pkg` is `my-pkg` and `1.0.0+abc` is `1.0.0`). Its optional `license` is an SPDX license
expression (`MIT`, `MIT OR Apache-2.0`, ...); without it, the LICENSE file's text is recognized by
the distinctive phrases of a small table of well-known licenses.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from common.errors import BadRequest
from common.naming import Version, normalize_name
from validator_service.content import CheckResult, Rules, unique_keys

MANIFEST_ID: Final = "manifest"
LICENSE_ID: Final = "license"
NO_LICENSE: Final = "no license declared (depot.json `license` or a LICENSE file at the root)"

# Recognizing a license text: (SPDX id, phrases that must all appear), tried in order on the text
# lowercased with whitespace runs collapsed. The GNU licenses are told apart by their whole title
# lines, since each text names the others ("... use the GNU Lesser General Public License instead");
# a BSD text with the advertising clause is 4-clause, one with the endorsement clause 3-clause.
_TEXTS: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    ("LGPL-2.1", ("gnu lesser general public license version 2.1, february 1999",)),
    ("LGPL-3.0", ("gnu lesser general public license version 3, 29 june 2007",)),
    ("GPL-2.0", ("gnu general public license version 2, june 1991",)),
    ("GPL-3.0", ("gnu general public license version 3, 29 june 2007",)),
    ("AGPL-3.0", ("gnu affero general public license version 3, 19 november 2007",)),
    ("Apache-2.0", ("apache license", "version 2.0")),
    ("MPL-2.0", ("mozilla public license", "2.0")),
    ("MIT", ("permission is hereby granted, free of charge, to any person obtaining a copy",)),
    ("BSD-4-Clause", ("redistribution and use in source and binary forms", "all advertising materials mentioning")),
    (
        "BSD-3-Clause",
        ("redistribution and use in source and binary forms", "may be used to endorse or promote products"),
    ),
    ("BSD-2-Clause", ("redistribution and use in source and binary forms",)),
    ("CC-BY-4.0", ("creative commons attribution 4.0 international",)),
    ("CC0-1.0", ("cc0 1.0 universal",)),
    ("Unlicense", ("this is free and unencumbered software released into the public domain",)),
)
_WHITESPACE: Final = re.compile(r"\s+")
_SPDX_TOKEN: Final = re.compile(r"\s*(\(|\)|[A-Za-z0-9.+:-]+)")


class _BadExpression(Exception):
    """The license string is not an SPDX license expression."""


class _Unusable(Exception):
    """No license can be checked: none is declared, or what is declared cannot be read."""


def manifest_check(
    manifest: bytes | None, manifest_error: str | None, package: str, version: str, is_archive: bool
) -> CheckResult:
    """Whether `depot.json` (found at the archive's root, or not) names this package and version."""
    if not is_archive:
        return CheckResult(MANIFEST_ID, "skip", "not an archive")
    if manifest_error is not None:
        return CheckResult(MANIFEST_ID, "fail", manifest_error)
    if manifest is None:
        return CheckResult(MANIFEST_ID, "skip", "no depot.json at the archive's root")
    document, error = _load(manifest)
    if document is None:
        return CheckResult(MANIFEST_ID, "fail", f"depot.json: {error}")
    problems: list[str] = []
    name = document.get("name")
    if not isinstance(name, str):
        problems.append("`name` is missing or not a string")
    elif normalize_name(name) != normalize_name(package):
        problems.append(f"`name` is {_shown(name)}, the package is {package!r}")
    declared = document.get("version")
    if not isinstance(declared, str):
        problems.append("`version` is missing or not a string")
    else:
        try:
            same = Version.parse(declared).identity == Version.parse(version).identity
        except BadRequest:
            problems.append(f"`version` {_shown(declared)} is not a Semantic Versioning 2.0.0 version")
        else:
            if not same:
                problems.append(f"`version` is {_shown(declared)}, the version is {version!r}")
    if problems:
        return CheckResult(MANIFEST_ID, "fail", "depot.json: " + "; ".join(problems))
    return CheckResult(MANIFEST_ID, "pass", "depot.json names this package and version")


def license_check(rules: Rules, manifest: bytes | None, license_text: str | None) -> CheckResult:
    """Whether the artifact's license (depot.json `license`, else the LICENSE text) is allowed by `rules`."""
    if not rules.allowed_licenses:
        return CheckResult(LICENSE_ID, "skip", "any license is allowed (allowed_licenses is empty)")
    allowed = {_license_key(identifier) for identifier in rules.allowed_licenses}
    try:
        license_id, source, ok = _license(allowed, manifest, license_text)
    except _Unusable as error:
        return CheckResult(LICENSE_ID, "fail", str(error))
    if not ok:
        return CheckResult(LICENSE_ID, "fail", f"{_shown(license_id)} (from {source}) is not an allowed license")
    return CheckResult(LICENSE_ID, "pass", f"{_shown(license_id)} (from {source}) is allowed")


def _license(allowed: set[str], manifest: bytes | None, license_text: str | None) -> tuple[str, str, bool]:
    """The license found, where it was found, and whether it is allowed; `_Unusable` when none can be used."""
    declared = declared_license(manifest)
    if declared is not None:
        if not isinstance(declared, str) or not declared.strip():
            raise _Unusable("depot.json `license` is not a non-empty string")
        try:
            return declared, "depot.json", _expression_allowed(declared, allowed)
        except _BadExpression as error:
            raise _Unusable(
                f"depot.json `license` {_shown(declared)} is not an SPDX license expression: {error}"
            ) from None
    if license_text is not None:
        recognized = recognize_license(license_text)
        if recognized is None:
            raise _Unusable("the LICENSE file's license is not recognized; declare it as `license` in depot.json")
        return recognized, "the LICENSE file", _license_key(recognized) in allowed
    raise _Unusable(NO_LICENSE)


def declared_license(manifest: bytes | None) -> object | None:
    """The `license` value of a parseable depot.json object (any JSON type), or None when there is none.

    A depot.json that does not parse declares nothing here: the manifest check reports it.
    """
    if manifest is None:
        return None
    document, _ = _load(manifest)
    return None if document is None else document.get("license")


def recognize_license(text: str) -> str | None:
    """The SPDX id of a well-known license whose text `text` is (see `_TEXTS`), or None."""
    normalized = _WHITESPACE.sub(" ", text.casefold())
    for identifier, required in _TEXTS:
        if all(phrase in normalized for phrase in required):
            return identifier
    return None


def _load(manifest: bytes) -> tuple[dict[str, Any] | None, str]:
    """The depot.json object, or None and why it is not one."""
    try:
        document = json.loads(manifest.decode("utf-8"), object_pairs_hook=unique_keys)
    except UnicodeDecodeError:
        return None, "not UTF-8"
    except json.JSONDecodeError as error:
        return None, f"not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})"
    except ValueError as error:  # a duplicate key, from the hook
        return None, f"not valid JSON ({error})"
    if not isinstance(document, dict):
        return None, "not a JSON object"
    return document, ""


def _expression_allowed(expression: str, allowed: set[str]) -> bool:
    """Whether an SPDX license expression can be satisfied with allowed licenses only.

    `A OR B` needs one of them allowed, `A AND B` both (AND binds tighter than OR, as in SPDX);
    `A WITH exception` is allowed when `A` is (an exception only adds permissions) or when the
    whole `A WITH exception` is listed. Identifiers compare case-insensitively.
    """
    tokens = _tokens(expression)
    position = 0

    def peek() -> str | None:
        return tokens[position] if position < len(tokens) else None

    def take() -> str:
        nonlocal position
        token = peek()
        if token is None:
            raise _BadExpression("the expression ends too early")
        position += 1
        return token

    def disjunction() -> bool:
        result = conjunction()
        while (token := peek()) is not None and token.upper() == "OR":
            take()
            result = conjunction() or result  # evaluate both sides: each must be well formed
        return result

    def conjunction() -> bool:
        result = term()
        while (token := peek()) is not None and token.upper() == "AND":
            take()
            result = term() and result
        return result

    def term() -> bool:
        word = take()
        if word == "(":
            result = disjunction()
            if take() != ")":
                raise _BadExpression("a parenthesis is not closed")
            return result
        if word == ")" or word.upper() in {"AND", "OR", "WITH"}:
            raise _BadExpression(f"unexpected {word!r}")
        if (following := peek()) is not None and following.upper() == "WITH":
            take()
            exception = take()
            if exception in {"(", ")"}:
                raise _BadExpression("WITH needs an exception id")
            return _license_key(word) in allowed or f"{_license_key(word)} with {exception.casefold()}" in allowed
        return _license_key(word) in allowed

    result = disjunction()
    if position != len(tokens):
        raise _BadExpression(f"unexpected {tokens[position]!r}")
    return result


def _license_key(identifier: str) -> str:
    """An SPDX id in a comparable form: case-insensitive, with the deprecated spellings mapped.

    `GPL-2.0` (deprecated) means `GPL-2.0-only` and `GPL-2.0+` means `GPL-2.0-or-later`. An allowed
    entry `A WITH exception` is compared in this form too.
    """
    key = _WHITESPACE.sub(" ", identifier.strip().casefold())
    base, separator, exception = key.partition(" with ")
    base = base.removesuffix("-only")
    if base.endswith("+"):
        base = base[:-1] + "-or-later"
    return base + separator + exception


def _tokens(expression: str) -> list[str]:
    tokens: list[str] = []
    position = 0
    text = expression.rstrip()
    while position < len(text):
        match = _SPDX_TOKEN.match(text, position)
        if match is None:
            raise _BadExpression(f"unexpected character {text[position:].lstrip()[:1]!r}")
        tokens.append(match.group(1))
        position = match.end()
    if not tokens:
        raise _BadExpression("the expression is empty")
    return tokens


def _shown(value: str) -> str:
    """`value` quoted for a detail, cut short: it comes from the uploader."""
    return repr(value) if len(value) <= 100 else repr(value[:100]) + "..."
