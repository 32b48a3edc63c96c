"""The package access decision: the whole matrix of subjects, visibility and actions, and `enforce`."""

from __future__ import annotations

import itertools

import pytest

from common.access import Action, Decision, PackageAccess, Subject, decide, decide_download, enforce
from common.auth import Principal
from common.errors import Forbidden, NotFound

OWNER = Subject("olivia", frozenset({"staff"}), frozenset())
WRITER = Subject("walter", frozenset({"ml-writers", "staff"}), frozenset())
READER = Subject("rita", frozenset({"ml-readers"}), frozenset())
STRANGER = Subject("sam", frozenset({"staff", "ML-READERS", "ml-writers-2"}), frozenset())
ADMIN = Subject("ada", frozenset(), frozenset({"admin"}))
SERVICE = Subject("svc-validator", frozenset(), frozenset({"service"}))

SUBJECTS = {
    "owner": OWNER,
    "writer": WRITER,
    "reader": READER,
    "stranger": STRANGER,
    "admin": ADMIN,
    "service": SERVICE,
}
ACTIONS: tuple[Action, ...] = ("read", "write", "admin")


def package(visibility: str = "private", **changes: frozenset[str]) -> PackageAccess:
    fields = {"read_groups": frozenset({"ml-readers"}), "write_groups": frozenset({"ml-writers"})} | changes
    return PackageAccess(
        owner="olivia",
        visibility="public" if visibility == "public" else "private",
        read_groups=fields["read_groups"],
        write_groups=fields["write_groups"],
    )


# (subject, visibility) -> what `enforce` does for read, write, admin: "ok", "403" or "404".
EXPECTED = {
    ("owner", "private"): ("ok", "ok", "ok"),
    ("writer", "private"): ("ok", "ok", "403"),
    ("reader", "private"): ("ok", "403", "403"),
    ("stranger", "private"): ("404", "404", "404"),
    ("admin", "private"): ("ok", "ok", "ok"),
    ("service", "private"): ("404", "404", "404"),
    ("owner", "public"): ("ok", "ok", "ok"),
    ("writer", "public"): ("ok", "ok", "403"),
    ("reader", "public"): ("ok", "403", "403"),
    ("stranger", "public"): ("ok", "403", "403"),
    ("admin", "public"): ("ok", "ok", "ok"),
    ("service", "public"): ("ok", "403", "403"),
}

# The reasons `decide` gives, in the same layout.
EXPECTED_REASONS = {
    ("owner", "private"): ("owner", "owner", "owner"),
    ("writer", "private"): (
        "member of write group 'ml-writers'",
        "member of write group 'ml-writers'",
        "only the owner or an admin",
    ),
    ("reader", "private"): ("member of read group 'ml-readers'", "not allowed to write", "only the owner or an admin"),
    ("stranger", "private"): ("no such package", "no such package", "no such package"),
    ("admin", "private"): ("admin", "admin", "admin"),
    ("service", "private"): ("no such package", "no such package", "no such package"),
    ("owner", "public"): ("owner", "owner", "owner"),
    ("writer", "public"): (
        "member of write group 'ml-writers'",
        "member of write group 'ml-writers'",
        "only the owner or an admin",
    ),
    ("reader", "public"): ("member of read group 'ml-readers'", "not allowed to write", "only the owner or an admin"),
    ("stranger", "public"): ("public package", "not allowed to write", "only the owner or an admin"),
    ("admin", "public"): ("admin", "admin", "admin"),
    ("service", "public"): ("public package", "not allowed to write", "only the owner or an admin"),
}


def test_the_tables_cover_the_whole_matrix() -> None:
    cells = set(itertools.product(SUBJECTS, ("private", "public")))
    assert set(EXPECTED) == cells
    assert set(EXPECTED_REASONS) == cells


def outcome(subject: Subject, package_access: PackageAccess, action: Action) -> str:
    try:
        enforce(subject, package_access, action)
    except NotFound as error:
        return "404" if error.detail == "No such package." else f"404 with {error.detail!r}"
    except Forbidden:
        return "403"
    return "ok"


@pytest.mark.parametrize(("who", "visibility"), list(EXPECTED))
def test_the_matrix(who: str, visibility: str) -> None:
    subject, target = SUBJECTS[who], package(visibility)
    for action, expected, reason in zip(
        ACTIONS, EXPECTED[(who, visibility)], EXPECTED_REASONS[(who, visibility)], strict=True
    ):
        assert outcome(subject, target, action) == expected, action
        assert decide(subject, target, action) == Decision(allowed=expected == "ok", reason=reason), action


def test_enforce_and_decide_agree_everywhere() -> None:
    for subject, visibility, action in itertools.product(SUBJECTS.values(), ("private", "public"), ACTIONS):
        target = package(visibility)
        allowed = decide(subject, target, action).allowed
        assert (outcome(subject, target, action) == "ok") == allowed
        if not allowed:
            expected = "403" if decide(subject, target, "read").allowed else "404"
            assert outcome(subject, target, action) == expected


def test_group_names_are_case_sensitive() -> None:
    target = package(read_groups=frozenset({"Group_106"}), write_groups=frozenset({"Group_107"}))
    for groups in ({"group_106"}, {"GROUP_106"}, {"Group_106 "}, {"group_107"}, {"Group-106"}):
        subject = Subject("sam", frozenset(groups), frozenset())
        assert decide(subject, target, "read") == Decision(allowed=False, reason="no such package")
        assert outcome(subject, target, "read") == "404"
    reader = Subject("sam", frozenset({"Group_106"}), frozenset())
    assert decide(reader, target, "read") == Decision(allowed=True, reason="member of read group 'Group_106'")
    assert outcome(reader, target, "write") == "403"
    writer = Subject("sam", frozenset({"Group_107"}), frozenset())
    assert outcome(writer, target, "write") == "ok"


def test_a_member_of_both_read_and_write_groups_may_write() -> None:
    target = package(read_groups=frozenset({"ml", "readers"}), write_groups=frozenset({"ml"}))
    subject = Subject("bea", frozenset({"ml", "readers"}), frozenset())
    assert decide(subject, target, "read") == Decision(allowed=True, reason="member of write group 'ml'")
    assert decide(subject, target, "write") == Decision(allowed=True, reason="member of write group 'ml'")
    assert decide(subject, target, "admin") == Decision(allowed=False, reason="only the owner or an admin")
    assert outcome(subject, target, "admin") == "403"


def test_the_reason_names_one_group_whatever_the_set_order() -> None:
    target = package(write_groups=frozenset({"zeta", "alpha", "mid"}))
    subject = Subject("bea", frozenset({"zeta", "mid", "alpha"}), frozenset())
    assert decide(subject, target, "write").reason == "member of write group 'alpha'"


def test_the_service_role_gives_nothing_by_itself_but_groups_still_count() -> None:
    target = package()
    assert outcome(SERVICE, target, "read") == "404"
    in_group = Subject("svc-validator", frozenset({"ml-writers"}), frozenset({"service"}))
    assert outcome(in_group, target, "write") == "ok"
    assert outcome(in_group, target, "admin") == "403"


def test_admin_needs_no_group_and_wins_over_everything() -> None:
    target = package(read_groups=frozenset(), write_groups=frozenset())
    admin = Subject("ada", frozenset(), frozenset({"admin", "service"}))
    for action in ACTIONS:
        assert decide(admin, target, action) == Decision(allowed=True, reason="admin")
        enforce(admin, target, action)


def test_the_owner_is_matched_by_username_only() -> None:
    target = package(read_groups=frozenset(), write_groups=frozenset())
    assert outcome(Subject("olivia", frozenset(), frozenset()), target, "admin") == "ok"
    # Usernames are lowercase everywhere; anything else is another name (as in the SQL listing filter).
    assert outcome(Subject("Olivia", frozenset(), frozenset()), target, "read") == "404"
    assert outcome(Subject("olivia2", frozenset(), frozenset()), target, "read") == "404"
    assert (
        outcome(Subject("", frozenset(), frozenset()), PackageAccess("", "private", frozenset(), frozenset()), "read")
        == "404"
    )
    # A group named like the owner is just a group.
    assert outcome(Subject("sam", frozenset({"olivia"}), frozenset()), target, "read") == "404"


def test_forbidden_details_say_what_is_missing() -> None:
    target = package()
    with pytest.raises(Forbidden, match="not publish"):
        enforce(READER, target, "write")
    with pytest.raises(Forbidden, match="owner or an admin"):
        enforce(WRITER, target, "admin")
    with pytest.raises(NotFound, match=r"^No such package\.$"):
        enforce(STRANGER, target, "admin")


def test_subject_of_a_principal() -> None:
    principal = Principal(
        user_id="0b6d", username="walter", groups=frozenset({"Group_106"}), roles=frozenset({"service"})
    )
    subject = Subject.of(principal)
    assert subject == Subject("walter", frozenset({"Group_106"}), frozenset({"service"}))
    assert not subject.is_admin
    assert Subject.of(Principal("1", "ada", frozenset(), frozenset({"admin"}))).is_admin


STATUSES = ("pending", "available", "rejected", "yanked")


@pytest.mark.parametrize(("who", "visibility"), list(EXPECTED))
def test_a_download_is_read_plus_the_version_state(who: str, visibility: str) -> None:
    subject, target = SUBJECTS[who], package(visibility)
    readable = decide(subject, target, "read")
    for status in STATUSES:
        decided = decide_download(subject, target, status)
        if not readable.allowed:
            assert decided == Decision(allowed=False, reason="no such package"), status
        elif status in {"available", "yanked"} or who == "admin":
            assert decided == readable, status
        else:
            assert decided == Decision(allowed=False, reason=f"version is {status}"), status


def test_only_admins_download_pending_and_rejected_versions() -> None:
    target = package()
    assert decide_download(ADMIN, target, "pending") == Decision(allowed=True, reason="admin")
    assert decide_download(ADMIN, target, "rejected") == Decision(allowed=True, reason="admin")
    for subject in (OWNER, WRITER, READER):
        assert decide_download(subject, target, "pending") == Decision(allowed=False, reason="version is pending")
        assert decide_download(subject, target, "rejected") == Decision(allowed=False, reason="version is rejected")
        assert decide_download(subject, target, "yanked").allowed
    # Defined for every input: a state it does not know is not downloadable.
    assert decide_download(READER, target, "quarantined") == Decision(allowed=False, reason="version is quarantined")


def test_an_unreadable_package_is_no_such_package_whatever_the_version_state() -> None:
    for status in STATUSES:
        assert decide_download(STRANGER, package(), status) == Decision(allowed=False, reason="no such package")
