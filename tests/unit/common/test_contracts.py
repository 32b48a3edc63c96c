"""The messages between services: what one side builds, the other parses to the same message, on today's wire format."""

from __future__ import annotations

import json
import uuid
from types import SimpleNamespace
from typing import Any, cast

import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from common.contracts import (
    VALIDATION_QUEUE,
    VERDICT_QUEUE,
    AccessFacts,
    InvalidMessage,
    ValidationJob,
    Verdict,
    VersionState,
    parse_access_facts,
    parse_validation_job,
    parse_verdict,
)
from common.endpoints import render_result
from validator_service.content import CheckResult
from validator_service.service import job_of

VERSION_ID = uuid.UUID("0b5e8f5e-3f0a-4c1e-9d53-5c8f1f4f2a10")
SHA256 = "ab" * 32
SECRET = "s3cr3t-value-never-logged"


def through_the_queue(payload: dict[str, Any]) -> dict[str, Any]:
    """What a worker reads back: the payload went into a JSONB column."""
    loaded: dict[str, Any] = json.loads(json.dumps(payload))
    return loaded


def problems_of(error: pytest.ExceptionInfo[InvalidMessage]) -> list[str]:
    assert SECRET not in str(error.value), "values are never part of the problems"
    return error.value.problems


# The validation job: package_service builds it at publishing and in its sweep, the validator for a rerun.


def published_job() -> ValidationJob:
    """As package_service's `commit_version` builds it (the declared digest may be upper case)."""
    return ValidationJob(
        version_id=VERSION_ID, package="My.Model", version="1.0.0+build.1", s3_key=f"versions/{VERSION_ID}",
        sha256=SHA256.upper(), size=1234, filename="model.zip",
    )  # fmt: skip


def test_the_validation_job_round_trips() -> None:
    job = published_job()
    payload = through_the_queue(job.payload())
    assert payload == {
        "version_id": str(VERSION_ID), "package": "My.Model", "version": "1.0.0+build.1",
        "s3_key": f"versions/{VERSION_ID}", "sha256": SHA256, "size": 1234, "filename": "model.zip",
    }, "the wire format of the jobs already queued"  # fmt: skip
    assert parse_validation_job(payload) == job
    assert (job.queue, job.key) == (VALIDATION_QUEUE, str(VERSION_ID))
    unnamed = job.model_copy(update={"filename": None})
    assert through_the_queue(unnamed.payload())["filename"] is None
    assert parse_validation_job(unnamed.payload()) == unnamed


def test_a_rerun_queues_the_job_package_service_queued() -> None:
    # The validator's report row holds what the first job carried (its digest stored lower case).
    report = SimpleNamespace(
        version_id=VERSION_ID, package="My.Model", version="1.0.0+build.1", s3_key=f"versions/{VERSION_ID}",
        sha256=SHA256, size=1234, filename="model.zip", status="failed",
    )  # fmt: skip
    rerun = job_of(cast(sa.Row[Any], report))
    assert rerun == published_job()
    assert rerun.payload() == published_job().payload()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"version_id": None}, "version_id"),
        ({"version_id": SECRET}, "version_id"),
        ({"sha256": SECRET}, "sha256"),
        ({"size": -1}, "size"),
        ({"size": SECRET}, "size"),
        ({"package": ""}, "package"),
        ({"filename": 7}, "filename"),
    ],
)
def test_a_validation_job_of_the_wrong_shape_is_refused(change: dict[str, Any], field: str) -> None:
    payload = published_job().payload() | change
    with pytest.raises(InvalidMessage) as refused:
        parse_validation_job(payload)
    assert [problem.split(":")[0] for problem in problems_of(refused)] == [field]


@pytest.mark.parametrize("field", ["version_id", "package", "version", "s3_key", "sha256", "size"])
def test_a_validation_job_missing_a_field_is_refused(field: str) -> None:
    payload = published_job().payload()
    del payload[field]
    with pytest.raises(InvalidMessage) as refused:
        parse_validation_job(payload)
    assert problems_of(refused) == [f"{field}: missing"]


def test_a_validation_job_from_a_newer_sender_is_read() -> None:
    payload = published_job().payload() | {"priority": "high"}
    assert parse_validation_job(payload) == published_job()
    older = published_job().payload()
    del older["filename"]
    assert parse_validation_job(older).filename is None, "the file name is optional"


# The verdict: the validator builds it from its checks, package_service parses it.

RESULTS = [
    CheckResult("sha256", "pass", "matches the declared digest"),
    CheckResult("pickle", "fail", "imports os.system"),
    CheckResult("license", "skip", ""),
]


def validator_verdict(run: int = 3) -> Verdict:
    """As the validator's `_finish` builds it: from its check results, stored as the report's checks."""
    checks = [{"id": r.id, "status": r.status, "detail": r.detail} for r in RESULTS]
    return Verdict.of(VERSION_ID, run, "failed", checks)


def test_the_verdict_round_trips() -> None:
    verdict = validator_verdict()
    payload = through_the_queue(verdict.payload())
    assert payload == {
        "version_id": str(VERSION_ID), "run": 3, "verdict": "failed",
        "report": {"status": "failed", "checks": [
            {"id": "sha256", "status": "pass", "detail": "matches the declared digest"},
            {"id": "pickle", "status": "fail", "detail": "imports os.system"},
            {"id": "license", "status": "skip", "detail": ""},
        ]},
    }, "the wire format of the verdicts already queued"  # fmt: skip
    parsed = parse_verdict(payload)
    assert parsed == verdict
    assert (parsed.queue, parsed.key) == (VERDICT_QUEUE, f"{VERSION_ID}:3")


def test_a_verdict_without_a_run_is_still_read() -> None:
    # From a validator older than runs: keyed by the version id alone.
    payload = validator_verdict().payload()
    del payload["run"]
    parsed = parse_verdict(payload)
    assert parsed.run is None
    assert parsed.key == str(VERSION_ID)
    assert parse_verdict(parsed.payload()) == parsed


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"version_id": SECRET}, "version_id: uuid_parsing"),
        ({"run": -1}, "run: greater_than_equal"),
        ({"run": SECRET}, "run: int_parsing"),
        ({"verdict": "error", "report": {"status": "error", "checks": []}}, "verdict: literal_error"),
        ({"verdict": "passed"}, "(message): verdict_mismatch"),
        ({"report": {"status": "failed", "checks": [{"id": "x", "status": SECRET}]}}, "report.checks.0.status"),
        ({"report": {"status": "failed", "checks": SECRET}}, "report.checks: list_type"),
    ],
)
def test_a_verdict_of_the_wrong_shape_is_refused(change: dict[str, Any], problem: str) -> None:
    payload = validator_verdict().payload() | change
    with pytest.raises(InvalidMessage) as refused:
        parse_verdict(payload)
    assert problems_of(refused)[0].startswith(problem)


@pytest.mark.parametrize("field", ["version_id", "verdict", "report"])
def test_a_verdict_missing_a_field_is_refused(field: str) -> None:
    payload = validator_verdict().payload()
    del payload[field]
    with pytest.raises(InvalidMessage) as refused:
        parse_verdict(payload)
    assert f"{field}: missing" in problems_of(refused)


def test_a_verdict_from_a_newer_sender_is_read() -> None:
    payload = validator_verdict().payload()
    payload["duration_ms"] = 12
    payload["report"] = payload["report"] | {"rules": "v2"}
    payload["report"]["checks"][0] = payload["report"]["checks"][0] | {"severity": "low"}
    assert parse_verdict(payload) == validator_verdict()


def test_an_error_is_never_a_verdict() -> None:
    with pytest.raises(ValidationError):
        Verdict.of(VERSION_ID, 1, "error", [])  # type: ignore[arg-type]


# The access facts: package_service answers `GET /packages/{name}/access` with them, the validator reads them.


def answered_facts(version: VersionState | None) -> AccessFacts:
    """As package_service's `access_facts` builds them."""
    return AccessFacts(
        package="My.Model", owner="olivia", visibility="private", read_groups=["readers"], write_groups=["writers"],
        version=version,
    )  # fmt: skip


STATE = VersionState(version="1.0.0+build.1", status="pending", sha256=SHA256, size=5)


@pytest.mark.parametrize("version", [STATE, None])
def test_the_access_facts_round_trip(version: VersionState | None) -> None:
    facts = answered_facts(version)
    body = bytes(render_result(facts, 200).body)  # what package_service's framework answers
    expected_version = None if version is None else {
        "version": "1.0.0+build.1", "status": "pending", "sha256": SHA256, "size": 5,
    }  # fmt: skip
    assert json.loads(body) == {
        "package": "My.Model", "owner": "olivia", "visibility": "private", "read_groups": ["readers"],
        "write_groups": ["writers"], "version": expected_version,
    }, "the answer as today"  # fmt: skip
    parsed = parse_access_facts(body)
    assert parsed == facts
    assert parsed.access.read_groups == frozenset({"readers"})
    assert parsed.access.owner == "olivia"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"<html>" + SECRET.encode(), "(message): json_invalid"),
        (json.dumps([SECRET]).encode(), "(message): model_type"),
        (json.dumps({"package": SECRET}).encode(), "owner: missing"),
    ],
)
def test_an_access_answer_that_is_no_facts_is_refused(body: bytes, problem: str) -> None:
    with pytest.raises(InvalidMessage) as refused:
        parse_access_facts(body)
    assert problems_of(refused)[0] == problem


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"visibility": SECRET}, "visibility: literal_error"),
        ({"read_groups": SECRET}, "read_groups: list_type"),
        ({"version": {"version": "1.0.0", "status": "pending", "sha256": SHA256, "size": SECRET}}, "version.size"),
    ],
)
def test_access_facts_of_the_wrong_shape_are_refused(change: dict[str, Any], problem: str) -> None:
    body = json.dumps(answered_facts(STATE).model_dump(mode="json") | change)
    with pytest.raises(InvalidMessage) as refused:
        parse_access_facts(body)
    assert problems_of(refused)[0].startswith(problem)


@pytest.mark.parametrize("field", ["package", "owner", "visibility", "read_groups", "write_groups", "version"])
def test_access_facts_missing_a_field_are_refused(field: str) -> None:
    answer = answered_facts(STATE).model_dump(mode="json")
    del answer[field]
    with pytest.raises(InvalidMessage) as refused:
        parse_access_facts(json.dumps(answer))
    assert problems_of(refused) == [f"{field}: missing"]


def test_access_facts_from_a_newer_package_service_are_read() -> None:
    answer = answered_facts(STATE).model_dump(mode="json")
    answer["tier"] = "gold"
    answer["version"]["downloads"] = 3
    assert parse_access_facts(json.dumps(answer)) == answered_facts(STATE)
