"""`manifest_check` (depot.json names this package and version) and `license_check`."""

from __future__ import annotations

import json

import pytest

from validator_service.content import Rules
from validator_service.content.manifest import license_check, manifest_check, recognize_license


def manifest(**fields: object) -> bytes:
    return json.dumps(fields).encode()


# --- manifest --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "version"),
    [
        ("my-pkg", "1.0.0"),
        ("My_Pkg", "1.0.0"),  # the same package name, spelled differently
        ("my.pkg", "v1.0.0"),
        ("my-pkg", "1.0.0+abc"),  # build metadata is not part of a version's identity
    ],
)
def test_a_matching_manifest_passes(name: str, version: str) -> None:
    result = manifest_check(manifest(name=name, version=version), None, "my-pkg", "1.0.0", is_archive=True)
    assert result.id == "manifest"
    assert result.status == "pass"


@pytest.mark.parametrize(
    ("document", "detail"),
    [
        (manifest(name="other", version="1.0.0"), "depot.json: `name` is 'other', the package is 'my-pkg'"),
        (manifest(name="my-pkg", version="1.0.1"), "depot.json: `version` is '1.0.1', the version is '1.0.0'"),
        (manifest(name="my-pkg", version="1.0.0-rc.1"), "`version` is '1.0.0-rc.1'"),
        (manifest(name="my-pkg", version="one"), "`version` 'one' is not a Semantic Versioning 2.0.0 version"),
        (manifest(version="1.0.0"), "depot.json: `name` is missing or not a string"),
        (manifest(name="my-pkg", version=1), "depot.json: `version` is missing or not a string"),
        (
            manifest(name="x", version="2.0.0"),
            "depot.json: `name` is 'x', the package is 'my-pkg'; `version` is '2.0.0', the version is '1.0.0'",
        ),
        (b"{not json", "depot.json: not valid JSON"),
        (b"[1, 2]", "depot.json: not a JSON object"),
        (b"\xff\xfe", "depot.json: not UTF-8"),
        (b'{"name": "my-pkg", "name": "evil", "version": "1.0.0"}', "duplicate key 'name'"),
        (b"", "depot.json: not valid JSON"),
    ],
)
def test_a_mismatching_or_invalid_manifest_fails(document: bytes, detail: str) -> None:
    result = manifest_check(document, None, "my-pkg", "1.0.0", is_archive=True)
    assert result.status == "fail"
    assert detail in result.detail


def test_no_manifest_and_not_an_archive_skip() -> None:
    assert manifest_check(None, None, "p", "1.0.0", is_archive=True).status == "skip"
    result = manifest_check(manifest(name="other"), None, "p", "1.0.0", is_archive=False)
    assert (result.status, result.detail) == ("skip", "not an archive")


def test_an_unusable_manifest_fails_with_the_reason() -> None:
    result = manifest_check(None, "depot.json is larger than 1 MiB", "p", "1.0.0", is_archive=True)
    assert (result.status, result.detail) == ("fail", "depot.json is larger than 1 MiB")


# --- license ---------------------------------------------------------------------------------------

MIT = """MIT License

Copyright (c) 2024 Someone

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
"""
APACHE = "                                 Apache License\n                           Version 2.0, January 2004\n"
GPL3 = """                    GNU GENERAL PUBLIC LICENSE
                       Version 3, 29 June 2007
 ...
the library.  If this is what you want to do, use the GNU Lesser General
Public License instead of this License.
"""
LGPL3 = """                   GNU LESSER GENERAL PUBLIC LICENSE
                       Version 3, 29 June 2007
  This version of the GNU Lesser General Public License incorporates
the terms and conditions of version 3 of the GNU General Public
License, supplemented by the additional permissions listed below.
"""
BSD3 = """Redistribution and use in source and binary forms, with or without
modification, are permitted provided that the following conditions are met:
3. Neither the name of the copyright holder nor the names of its
   contributors may be used to endorse or promote products derived from
"""
BSD2 = """Redistribution and use in source and binary forms, with or without
modification, are permitted provided that the following conditions are met:
"""


@pytest.mark.parametrize(
    ("text", "license_id"),
    [
        (MIT, "MIT"),
        (APACHE, "Apache-2.0"),
        (GPL3, "GPL-3.0"),
        (LGPL3, "LGPL-3.0"),
        (BSD3, "BSD-3-Clause"),
        (BSD2, "BSD-2-Clause"),
        ("GNU GENERAL PUBLIC LICENSE\n Version 2, June 1991", "GPL-2.0"),
        ("GNU LESSER GENERAL PUBLIC LICENSE\nVersion 2.1, February 1999", "LGPL-2.1"),
        ("Mozilla Public License Version 2.0\n==================================", "MPL-2.0"),
        (
            "Attribution 4.0 International\n... Creative Commons Attribution 4.0 International Public License",
            "CC-BY-4.0",
        ),
        ("Creative Commons Legal Code\n\nCC0 1.0 Universal", "CC0-1.0"),
        ("This is free and unencumbered software released into the public domain.", "Unlicense"),
        ("All rights reserved. Do not copy.", None),
    ],
)
def test_license_texts_are_recognized(text: str, license_id: str | None) -> None:
    assert recognize_license(text) == license_id


def test_any_license_is_fine_without_an_allowed_list() -> None:
    result = license_check(Rules(), None, None)
    assert (result.id, result.status) == ("license", "skip")


def test_the_license_of_depot_json_wins_over_the_license_file() -> None:
    rules = Rules(allowed_licenses=("mit",))
    result = license_check(rules, manifest(license="MIT"), license_text=GPL3)
    assert (result.status, result.detail) == ("pass", "'MIT' (from depot.json) is allowed")
    result = license_check(rules, manifest(license="GPL-3.0"), license_text=MIT)
    assert (result.status, result.detail) == ("fail", "'GPL-3.0' (from depot.json) is not an allowed license")


def test_a_license_file_is_used_without_a_declared_license() -> None:
    rules = Rules(allowed_licenses=("Apache-2.0", "MIT"))
    result = license_check(rules, manifest(name="p"), license_text=MIT)
    assert (result.status, result.detail) == ("pass", "'MIT' (from the LICENSE file) is allowed")
    result = license_check(rules, None, license_text=BSD2)
    assert (result.status, result.detail) == (
        "fail",
        "'BSD-2-Clause' (from the LICENSE file) is not an allowed license",
    )


def test_an_unrecognized_license_file_fails() -> None:
    result = license_check(Rules(allowed_licenses=("MIT",)), None, license_text="Proprietary. All rights reserved.")
    assert result.status == "fail"
    assert "not recognized" in result.detail


def test_no_license_at_all_fails() -> None:
    result = license_check(Rules(allowed_licenses=("MIT",)), manifest(name="p"), None)
    assert result.status == "fail"
    assert result.detail == "no license declared (depot.json `license` or a LICENSE file at the root)"


@pytest.mark.parametrize(
    ("expression", "status"),
    [
        ("MIT OR GPL-3.0", "pass"),  # one allowed choice is enough
        ("GPL-3.0 OR MIT", "pass"),
        ("MIT AND GPL-3.0", "fail"),  # both apply: both must be allowed
        ("MIT AND Apache-2.0", "pass"),
        ("(GPL-3.0 OR Apache-2.0) AND MIT", "pass"),
        ("GPL-3.0 OR Apache-2.0 AND BSD-2-Clause", "fail"),  # AND binds tighter
        ("Apache-2.0 WITH LLVM-exception", "pass"),
        ("mit", "pass"),
        ("GPL-2.0-only", "pass"),  # the allowed GPL-2.0 is the deprecated id of GPL-2.0-only
        ("GPL-2.0+", "fail"),
        ("MIT OR", "fail"),
        ("(MIT", "fail"),
        ("MIT GPL", "fail"),
        ("MIT/Apache", "fail"),
    ],
)
def test_spdx_expressions(expression: str, status: str) -> None:
    rules = Rules(allowed_licenses=("MIT", "Apache-2.0", "GPL-2.0"))
    assert license_check(rules, manifest(license=expression), None).status == status


def test_a_declared_license_that_is_not_a_string_fails() -> None:
    result = license_check(Rules(allowed_licenses=("MIT",)), manifest(license=["MIT"]), MIT)
    assert (result.status, result.detail) == ("fail", "depot.json `license` is not a non-empty string")


def test_an_invalid_manifest_declares_no_license() -> None:
    # The manifest check reports the broken JSON; the license comes from the LICENSE file then.
    result = license_check(Rules(allowed_licenses=("MIT",)), b"{broken", MIT)
    assert result.status == "pass"
