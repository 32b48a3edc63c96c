"""Who may do what to a package: the one pure access decision every service uses.

The rules (API.md): `admin` may do anything. The owner may do anything to the package. Members of
`write_groups` may read and publish versions, yank and edit version metadata. Members of
`read_groups` may read and download. A `public` package may be read by any authenticated user.
Only the owner or an admin may change visibility, groups, or delete. A caller who may not read a
package gets `404` for it; one who may read but not do what it asks gets `403`.

Actions: `read` (see and download), `write` (publish, yank, edit version metadata) and `admin`
(change visibility or groups, delete). The `service` role gives no package rights by itself.
Group names and usernames are compared exactly: group names are case-sensitive, usernames are
always lowercase. Downloading a version is `read` plus the version's state (`decide_download`).

Reasons (`Decision.reason`), the same words wherever a decision is shown:
- allowed: `admin`, `owner`, `member of write group '<group>'`, `member of read group '<group>'`
  (the alphabetically first such group), `public package`;
- refused: `no such package` when the subject may not even read the package, whatever the
  action (the same words as for a package that does not exist: existence is not revealed),
  `not allowed to write`, `only the owner or an admin` (the `admin` action), and for a download
  `version is pending` or `version is rejected`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from common.errors import Forbidden, NotFound

if TYPE_CHECKING:
    from common.auth import Principal

Action = Literal["read", "write", "admin"]
Visibility = Literal["private", "public"]

NOT_FOUND_DETAIL = "No such package."
NO_SUCH_PACKAGE = "no such package"
"""The reason given to a subject that may not read a package, and for a package that does not exist."""
DOWNLOADABLE: frozenset[str] = frozenset({"available", "yanked"})
"""The version states anyone who may read downloads (a yanked version by its exact string only: `latest`
never resolves to one). Admins download versions in any state."""

_FORBIDDEN_DETAIL: dict[Action, str] = {
    "read": "You may not read this package.",
    "write": "You may read this package but not publish to it, yank or edit its versions.",
    "admin": "Only the package's owner or an admin may change its visibility or groups, or delete it.",
}


@dataclass(frozen=True)
class Subject:
    """Whoever asks: a username with its groups and roles."""

    username: str
    groups: frozenset[str]
    roles: frozenset[str]

    @classmethod
    def of(cls, principal: Principal) -> Subject:
        """The subject of a verified caller."""
        return cls(username=principal.username, groups=frozenset(principal.groups), roles=frozenset(principal.roles))

    @property
    def is_admin(self) -> bool:
        """Whether it holds the `admin` role."""
        return "admin" in self.roles


@dataclass(frozen=True)
class PackageAccess:
    """What of a package decides access to it: its owner, visibility and groups."""

    owner: str
    visibility: Visibility
    read_groups: frozenset[str]
    write_groups: frozenset[str]


@dataclass(frozen=True)
class Decision:
    """Whether an action is allowed, and a short human reason why (or why not)."""

    allowed: bool
    reason: str


def _is_owner(subject: Subject, package: PackageAccess) -> bool:
    # Exact: usernames are stored and issued lowercase, and SQL mirrors of these rules compare exactly.
    return bool(subject.username) and subject.username == package.owner


def _member_of(kind: str, groups: frozenset[str]) -> str | None:
    # The alphabetically first group, so that the reason does not depend on set order.
    return f"member of {kind} group '{min(groups)}'" if groups else None


def decide(subject: Subject, package: PackageAccess, action: Action) -> Decision:
    """Whether `subject` may do `action` to `package`, with the reason. Pure; defined for every input.

    A refusal because the subject may not even read says "no such package", whatever the action:
    to that subject the package does not exist.
    """
    if subject.is_admin:
        return Decision(allowed=True, reason="admin")
    if _is_owner(subject, package):
        return Decision(allowed=True, reason="owner")
    may_write = _member_of("write", subject.groups & package.write_groups)
    may_read = (
        may_write
        or _member_of("read", subject.groups & package.read_groups)
        or ("public package" if package.visibility == "public" else None)
    )
    granted = {"read": may_read, "write": may_write}.get(action)  # `admin` (or anything else): none
    if granted:
        return Decision(allowed=True, reason=granted)
    if not may_read:
        return Decision(allowed=False, reason=NO_SUCH_PACKAGE)
    return Decision(allowed=False, reason="not allowed to write" if action == "write" else "only the owner or an admin")


def decide_download(subject: Subject, package: PackageAccess, status: str) -> Decision:
    """Whether `subject` may download a version of `package` whose state is `status`, with the reason.

    `read`, then the state: a version still `pending` or `rejected` is served to admins only (as
    package_service's download answers `409` to anyone else). Pure; defined for every input.
    """
    readable = decide(subject, package, "read")
    if not readable.allowed or status in DOWNLOADABLE or subject.is_admin:
        return readable
    return Decision(allowed=False, reason=f"version is {status}")


def enforce(subject: Subject, package: PackageAccess, action: Action) -> None:
    """Return if `subject` may do `action`; `NotFound` if it may not even read; `Forbidden` otherwise."""
    if decide(subject, package, action).allowed:
        return
    if not decide(subject, package, "read").allowed:
        raise NotFound(NOT_FOUND_DETAIL)
    raise Forbidden(_FORBIDDEN_DETAIL.get(action, "You may not do this to this package."))
