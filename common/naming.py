"""Usernames, package names and versions (shared: package_service stores names, the validator
compares manifests with them and asks auth_service about users).

Usernames (API.md section 2) match `USERNAME_PATTERN` and are stored lowercase.

Package names match `^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,98}[A-Za-z0-9])?$` (ASCII only). Two names that
are equal after lowercasing and collapsing each run of `.`, `_`, `-` into one `-` are the same
package: `normalize_name` gives that canonical key.

Versions follow Semantic Versioning 2.0.0 (an optional single leading `v` or `V` is dropped).
`Version.sort_key` is a byte string whose plain bytewise order (as PostgreSQL orders `bytea`) is
SemVer precedence, so the database can `ORDER BY` it with an index:

- a number (major, minor, patch, or a numeric prerelease identifier) is one byte holding the count
  of its decimal digits, then those ASCII digits. Numbers have no leading zeros, so more digits
  means a larger number, and with equal counts the digits compare as the numbers do;
- the key is `num(major) num(minor) num(patch)`, then `0x02` for a release, or, for a
  prerelease, `0x01`, each identifier, and a closing `0x00`;
- a numeric identifier is `0x01 num(n)`; an alphanumeric one is `0x02`, its ASCII bytes and `0x00`.

Every part is self-delimiting, so keys compare part by part: a release (`0x02`) sorts after all of
its prereleases (`0x01`); the end of a prerelease list (`0x00`) sorts before any further identifier,
so a shorter list with an equal prefix comes first; numeric identifiers (`0x01`) sort before
alphanumeric ones (`0x02`); alphanumerics compare in ASCII order, and their `0x00` terminator (below
every allowed character) puts a prefix first. Build metadata never enters the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from common.errors import BadRequest

USERNAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{2,63}"
NAME_MAX_LENGTH = 100
VERSION_MAX_LENGTH = 128

_USERNAME = re.compile(USERNAME_PATTERN)
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,98}[A-Za-z0-9])?")
_SEPARATORS = re.compile(r"[-_.]+")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

# The regular expression of semver.org, with `[0-9]` for `\d` (which would match any Unicode digit)
# and used with `fullmatch` (`$` would accept a trailing newline).
_NUMBER = r"0|[1-9][0-9]*"
_PRERELEASE_ID = r"(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)"
_SEMVER = re.compile(
    rf"[vV]?({_NUMBER})\.({_NUMBER})\.({_NUMBER})"
    rf"(?:-({_PRERELEASE_ID}(?:\.{_PRERELEASE_ID})*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?"
)
_NUMERIC_ID = re.compile(_NUMBER)
_ALPHANUMERIC_ID = re.compile(r"[0-9]*[a-zA-Z-][0-9a-zA-Z-]*")
_BUILD_ID = re.compile(r"[0-9a-zA-Z-]+")

_RELEASE = b"\x02"
_PRERELEASE = b"\x01"
_END = b"\x00"
_NUMERIC = b"\x01"
_ALPHANUMERIC = b"\x02"


def is_username(text: str) -> bool:
    """Whether `text` can be a username, in any case (anything else names nobody)."""
    return _USERNAME.fullmatch(text) is not None


def validate_name(name: str) -> str:
    """`name` unchanged if it is a valid package name; `BadRequest` saying why otherwise."""
    if not name:
        raise BadRequest("The package name is empty.")
    if len(name) > NAME_MAX_LENGTH:
        raise BadRequest(f"The package name is longer than {NAME_MAX_LENGTH} characters.")
    if _NAME.fullmatch(name) is None:
        raise BadRequest(
            "The package name must consist of ASCII letters, digits, '.', '_' and '-', "
            "and start and end with a letter or digit."
        )
    return name


def normalize_name(name: str) -> str:
    """The canonical key of a package name: runs of `.`, `_`, `-` become one `-`, letters lowercase.

    It may be applied to any spelling found in a path. Only ASCII letters are lowered, so that no
    non-ASCII character (such as the Kelvin sign, whose `str.lower()` is `k`) folds onto a real name.
    """
    return _SEPARATORS.sub("-", name).translate(_ASCII_LOWER)


def _number_key(value: int) -> bytes:
    digits = str(value).encode("ascii")
    return bytes((len(digits),)) + digits


@dataclass(frozen=True, eq=False, order=False)
class Version:
    """A Semantic Versioning 2.0.0 version.

    Comparisons (`==`, `<`, ...) and hashing follow SemVer precedence through `sort_key`: two
    versions that differ only in build metadata are equal, as they are the same version in Depot.
    Numeric prerelease identifiers are `int`s, alphanumeric ones `str`s.
    """

    major: int
    minor: int
    patch: int
    prerelease: tuple[str | int, ...] = ()
    build: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for number in (self.major, self.minor, self.patch):
            if type(number) is not int or number < 0:
                raise ValueError(f"version numbers must be non-negative integers, not {number!r}")
        for identifier in self.prerelease:
            if isinstance(identifier, bool) or not (
                (isinstance(identifier, int) and identifier >= 0)
                or (isinstance(identifier, str) and _ALPHANUMERIC_ID.fullmatch(identifier))
            ):
                raise ValueError(f"invalid prerelease identifier: {identifier!r}")
        for identifier in self.build:
            if not isinstance(identifier, str) or _BUILD_ID.fullmatch(identifier) is None:
                raise ValueError(f"invalid build identifier: {identifier!r}")
        if len(self.text) > VERSION_MAX_LENGTH:
            raise ValueError(f"a version is at most {VERSION_MAX_LENGTH} characters long")

    @classmethod
    def parse(cls, text: str) -> Version:
        """The version `text` spells (strict SemVer 2.0.0, optional leading `v`); `BadRequest` otherwise."""
        if len(text) > VERSION_MAX_LENGTH:
            raise BadRequest(f"The version is longer than {VERSION_MAX_LENGTH} characters.")
        match = _SEMVER.fullmatch(text)
        if match is None:
            raise BadRequest(
                f"{text!r} is not a Semantic Versioning 2.0.0 version such as '1.2.3', '1.2.3-rc.1' or '1.2.3+build.5'."
            )
        major, minor, patch, prerelease, build = match.groups()
        return cls(
            int(major),
            int(minor),
            int(patch),
            tuple(int(part) if _NUMERIC_ID.fullmatch(part) else part for part in prerelease.split("."))
            if prerelease
            else (),
            tuple(build.split(".")) if build else (),
        )

    @property
    def identity(self) -> str:
        """The canonical string without build metadata, e.g. `1.2.3-rc.1`: what makes it the same version."""
        core = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            core += "-" + ".".join(str(part) for part in self.prerelease)
        return core

    @property
    def text(self) -> str:
        """The canonical full string, build metadata included, e.g. `1.2.3-rc.1+build.5`."""
        return self.identity + ("+" + ".".join(self.build) if self.build else "")

    @property
    def is_prerelease(self) -> bool:
        """Whether it has prerelease identifiers (and so is never `latest`)."""
        return bool(self.prerelease)

    @cached_property
    def sort_key(self) -> bytes:
        """Bytes whose bytewise order is SemVer precedence (see the module docstring); build metadata ignored."""
        key = _number_key(self.major) + _number_key(self.minor) + _number_key(self.patch)
        if not self.prerelease:
            return key + _RELEASE
        parts = [key, _PRERELEASE]
        for identifier in self.prerelease:
            if isinstance(identifier, int):
                parts += (_NUMERIC, _number_key(identifier))
            else:
                parts += (_ALPHANUMERIC, identifier.encode("ascii"), _END)
        parts.append(_END)
        return b"".join(parts)

    def __str__(self) -> str:
        return self.text

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self.sort_key == other.sort_key

    def __hash__(self) -> int:
        return hash(self.sort_key)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self.sort_key < other.sort_key

    def __le__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self.sort_key <= other.sort_key

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self.sort_key > other.sort_key

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self.sort_key >= other.sort_key
