"""package_service's background work against real PostgreSQL and S3: verdicts, re-queued validations, the janitor."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine
from structlog.testing import capture_logs

from common.contracts import VERDICT_QUEUE
from common.db import create_sessionmaker, transaction
from common.queue import enqueue
from common.resources import Resources
from package_service.settings import PackageSettings
from package_service.workers import Workers, apply_verdict
from tests.helpers import eventually
from tests.integration.packages.conftest import Registry

DATA = b"weights" * 1000
CHECKS = [
    {"id": "sha256", "status": "pass", "detail": "matches the declared digest"},
    {"id": "pickle", "status": "skip", "detail": "no pickle streams"},
]
GRACE_SECONDS = 60


@pytest.fixture(autouse=True)
def _worker_settings(_no_ambient_depot_settings: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # Read by the `registry` fixture's settings: sweeps every half second, a minute of grace, and
    # every open multipart upload under versions/ counted as stale.
    monkeypatch.setenv("DEPOT_SWEEP_INTERVAL_SECONDS", "0.5")
    monkeypatch.setenv("DEPOT_PENDING_REQUEUE_AFTER_SECONDS", str(GRACE_SECONDS))
    monkeypatch.setenv("DEPOT_ORPHAN_GRACE_SECONDS", str(GRACE_SECONDS))
    monkeypatch.setenv("DEPOT_STALE_MULTIPART_UPLOAD_SECONDS", "0")


def workers(registry: Registry) -> Workers:
    found: Workers = registry.app.state.workers
    return found


def resources(registry: Registry) -> Resources:
    found: Resources = registry.app.state.resources
    return found


async def publish(registry: Registry, version: str, name: str = "model") -> str:
    """Upload a version (streamed); its id."""
    response = await registry.upload(name, version, DATA)
    assert response.status_code == 201, response.text
    [(version_id,)] = await registry.sql(
        "SELECT v.id::text FROM packages.versions v JOIN packages.packages p ON p.id = v.package_id "
        "WHERE p.name = $1 AND v.version = $2",
        name,
        version,
    )
    return str(version_id)


def verdict(
    version_id: str, outcome: str = "passed", checks: list[dict[str, str]] | None = None, run: int | None = None
) -> dict[str, Any]:
    """A verdict payload; without `run`, as a validator that did not number its runs sent it."""
    report = {"status": outcome, "checks": CHECKS if checks is None else checks}
    numbered = {} if run is None else {"run": run}
    return {"version_id": version_id, **numbered, "verdict": outcome, "report": report}


async def send(registry: Registry, key: str, payload: dict[str, Any]) -> None:
    """What the validator does: enqueue a verdict in a transaction of its own."""
    async with transaction(resources(registry).sessions) as db:
        assert await enqueue(db, VERDICT_QUEUE, key, payload)


async def verdict_jobs(registry: Registry, key: str) -> list[tuple[str, int, str | None]]:
    rows = await registry.sql(
        "SELECT status, attempts, last_error FROM queue.jobs WHERE queue = 'verdicts' AND key = $1 ORDER BY id", key
    )
    return [tuple(row) for row in rows]


async def settled(registry: Registry, key: str, count: int = 1) -> list[tuple[str, int, str | None]]:
    """The verdict jobs of `key`, once `count` of them are finished."""

    async def finished() -> bool:
        rows = await verdict_jobs(registry, key)
        return len(rows) == count and all(status in {"done", "dead"} for status, _, _ in rows)

    await eventually(finished)
    return await verdict_jobs(registry, key)


async def history(registry: Registry, version_id: str) -> list[tuple[str, str, str, str]]:
    """The version's status changes, oldest first: (from, to, reason, actor)."""
    rows = await registry.sql(
        "SELECT from_status, to_status, reason, actor FROM packages.version_events "
        "WHERE version_id = $1::uuid ORDER BY id",
        version_id,
    )
    return [tuple(row) for row in rows]


async def latest(registry: Registry) -> str | None:
    package = await registry.client.get("/packages/model", headers=registry.callers.owner)
    found: str | None = package.json()["latest_version"]
    return found


async def state(registry: Registry, version_id: str) -> tuple[Any, ...]:
    [row] = await registry.sql(
        "SELECT status, validated_at, validation FROM packages.versions WHERE id = $1::uuid", version_id
    )
    return tuple(row)


async def test_a_passed_verdict_makes_the_version_available(registry: Registry) -> None:
    async def listening() -> bool:
        return workers(registry).listening

    await eventually(listening)
    version_id = await publish(registry, "1.0.0")
    assert (await state(registry, version_id))[:2] == ("pending", None)
    await send(registry, version_id, verdict(version_id, "passed"))

    assert await settled(registry, version_id) == [("done", 1, None)]
    status, validated_at, validation = await state(registry, version_id)
    assert status == "available"
    assert validated_at is not None
    assert validation == {"status": "passed", "checks": CHECKS}
    shown = (await registry.client.get("/packages/model/versions/1.0.0", headers=registry.callers.owner)).json()
    assert shown["status"] == "available"
    assert shown["validation"] == {"status": "passed", "checks": CHECKS}
    assert shown["validated_at"] is not None
    package = (await registry.client.get("/packages/model", headers=registry.callers.owner)).json()
    assert package["latest_version"] == "1.0.0"
    download = await registry.client.get("/packages/model/versions/1.0.0/content", headers=registry.callers.owner)
    assert download.status_code == 200
    assert download.content == DATA


async def test_a_failed_verdict_rejects_the_version_and_its_download(registry: Registry) -> None:
    version_id = await publish(registry, "1.0.0")
    failing = [{"id": "pickle", "status": "fail", "detail": "imports os.system"}]
    await send(registry, version_id, verdict(version_id, "failed", failing))

    assert await settled(registry, version_id) == [("done", 1, None)]
    status, validated_at, validation = await state(registry, version_id)
    assert (status, validation) == ("rejected", {"status": "failed", "checks": failing})
    assert validated_at is not None
    content = "/packages/model/versions/1.0.0/content"
    refused = await registry.client.get(content, headers=registry.callers.owner)
    assert refused.status_code == 409
    assert "rejected" in refused.json()["detail"]
    assert (await registry.client.get(content, headers=registry.callers.admin)).status_code == 200


async def test_a_second_verdict_changes_nothing(registry: Registry) -> None:
    version_id = await publish(registry, "1.0.0")
    await send(registry, version_id, verdict(version_id, "passed"))
    await settled(registry, version_id)
    decided = await state(registry, version_id)
    assert decided[0] == "available"

    await send(registry, version_id, verdict(version_id, "passed"))
    await settled(registry, version_id, count=2)
    await send(registry, version_id, verdict(version_id, "failed"))
    assert await settled(registry, version_id, count=3) == [("done", 1, None)] * 3
    assert await state(registry, version_id) == decided, "neither a duplicate nor a contrary verdict changes it"

    yank = await registry.client.post(
        "/packages/model/versions/1.0.0/yank", json={"reason": "broken"}, headers=registry.callers.owner
    )
    assert yank.status_code == 200, yank.text
    await send(registry, version_id, verdict(version_id, "passed"))
    await settled(registry, version_id, count=4)
    assert (await state(registry, version_id))[0] == "yanked"


async def test_a_verdict_for_an_unknown_or_deleted_version_is_done_and_changes_nothing(registry: Registry) -> None:
    kept = await publish(registry, "1.0.0")
    deleted = await publish(registry, "2.0.0")
    response = await registry.client.delete("/packages/model/versions/2.0.0", headers=registry.callers.owner)
    assert response.status_code == 204, response.text
    before = await registry.sql("SELECT id, status, validated_at, validation FROM packages.versions")
    unknown = str(uuid.uuid4())

    await send(registry, unknown, verdict(unknown, "passed"))
    await send(registry, deleted, verdict(deleted, "failed"))

    assert await settled(registry, unknown) == [("done", 1, None)]
    assert await settled(registry, deleted) == [("done", 1, None)]
    assert await registry.sql("SELECT id, status, validated_at, validation FROM packages.versions") == before
    assert (await state(registry, kept))[0] == "pending"


MALFORMED: dict[str, dict[str, Any]] = {
    "empty": {},
    "bad-id": {"version_id": "not-a-uuid", "verdict": "passed", "report": {"status": "passed", "checks": []}},
    "error-is-no-verdict": {"verdict": "error", "report": {"status": "error", "checks": []}},
    "contradiction": {"verdict": "passed", "report": {"status": "failed", "checks": []}},
    "bad-check": {"verdict": "passed", "report": {"status": "passed", "checks": [{"id": "x", "status": "ok"}]}},
    "no-report": {"verdict": "passed"},
}


async def test_malformed_verdicts_are_dropped_not_retried(registry: Registry) -> None:
    version_id = await publish(registry, "1.0.0")
    for name, payload in MALFORMED.items():
        await send(registry, name, {"version_id": version_id, **payload})

    for name in MALFORMED:
        assert await settled(registry, name) == [("done", 1, None)], f"{name}: done at once, no retry, not dead"
    assert await state(registry, version_id) == ("pending", None, None)


async def test_a_dropped_verdict_is_logged_with_its_fields_never_its_values(registry: Registry) -> None:
    secret = "s3cr3t-detail"
    payload = {"version_id": secret, "verdict": "passed", "report": {"status": "passed", "checks": [{"id": secret}]}}
    with capture_logs() as logs:
        assert await apply_verdict(resources(registry), payload) == "invalid"
    [line] = [entry for entry in logs if entry["event"] == "verdict_invalid_dropped"]
    assert line["problems"] == ["version_id: uuid_parsing", "report.checks.0.status: missing"]
    assert secret not in json.dumps(logs, default=str)


async def test_database_errors_are_raised_for_the_queue_to_retry(registry: Registry) -> None:
    version_id = await publish(registry, "1.0.0")
    unreachable = create_async_engine("postgresql+asyncpg://depot@127.0.0.1:9/depot", connect_args={"timeout": 1})
    try:
        down = dataclasses.replace(resources(registry), sessions=create_sessionmaker(unreachable))
        with pytest.raises((OSError, DBAPIError)):
            await apply_verdict(down, verdict(version_id))
        assert await apply_verdict(down, MALFORMED["contradiction"]) == "invalid", "no retry can fix these"
    finally:
        await unreachable.dispose()
    assert await apply_verdict(resources(registry), verdict(version_id)) == "available"
    assert await apply_verdict(resources(registry), verdict(version_id, "failed")) == "unchanged"


FAILING = [
    {"id": "sha256", "status": "pass", "detail": "matches the declared digest"},
    {"id": "size", "status": "fail", "detail": "over max_artifact_bytes"},
    {"id": "pickle", "status": "warn", "detail": "imports os.system"},
]
WARNING = [{"id": "pickle", "status": "warn", "detail": "imports os.system"}]


async def test_a_newer_run_decides_again_and_moves_latest(registry: Registry) -> None:
    lower = await publish(registry, "0.9.0")
    version_id = await publish(registry, "1.0.0")
    assert await apply_verdict(resources(registry), verdict(lower, run=1)) == "available"
    assert await apply_verdict(resources(registry), verdict(version_id, run=1)) == "available"
    assert await latest(registry) == "1.0.0"
    assert await apply_verdict(resources(registry), verdict(version_id, "failed", FAILING, run=2)) == "rejected"
    status, validated_at, validation = await state(registry, version_id)
    assert (status, validation) == ("rejected", {"status": "failed", "checks": FAILING})
    assert validated_at is not None
    assert await latest(registry) == "0.9.0"
    assert await apply_verdict(resources(registry), verdict(version_id, "passed", WARNING, run=3)) == "available"
    assert await latest(registry) == "1.0.0"
    shown = (await registry.client.get("/packages/model/versions/1.0.0", headers=registry.callers.owner)).json()
    assert (shown["status"], shown["validation"]) == ("available", {"status": "passed", "checks": WARNING})

    assert await history(registry, version_id) == [
        ("pending", "available", "validation passed", "validator"),
        ("available", "rejected", "rerun: validation failed (size)", "validator"),
        ("rejected", "available", "rerun: validation passed with warnings (pickle)", "validator"),
    ]
    [(package_id,)] = await registry.sql("SELECT id::text FROM packages.packages WHERE name = 'model'")
    events = await registry.sql("SELECT count(*) FROM packages.version_events WHERE package_id = $1::uuid", package_id)
    assert events == [(4,)], "the package's audit has every version's changes"


async def test_an_older_or_repeated_verdict_never_overwrites_a_newer_one(registry: Registry) -> None:
    version_id = await publish(registry, "1.0.0")
    # Through the queue, keyed as the validator keys them: the newer verdict first, the older one late.
    await send(registry, f"{version_id}:3", verdict(version_id, "failed", FAILING, run=3))
    await settled(registry, f"{version_id}:3")
    newest = await state(registry, version_id)
    assert newest[0] == "rejected"
    await send(registry, f"{version_id}:2", verdict(version_id, "passed", run=2))
    assert await settled(registry, f"{version_id}:2") == [("done", 1, None)]
    assert await state(registry, version_id) == newest, "an older run is ignored"

    for late in (
        verdict(version_id, "failed", FAILING, run=3),  # a duplicate
        verdict(version_id, "passed", run=3),  # the same run, whatever it says
        verdict(version_id, "passed"),  # without a run: decides a pending version only
    ):
        assert await apply_verdict(resources(registry), late) == "unchanged"
    assert await state(registry, version_id) == newest
    assert [event[:2] for event in await history(registry, version_id)] == [("pending", "rejected")]
    [(applied_run,)] = await registry.sql(
        "SELECT validation_run FROM packages.versions WHERE id = $1::uuid", version_id
    )
    assert applied_run == 3


async def test_a_numbered_verdict_decides_a_version_decided_without_one(registry: Registry) -> None:
    version_id = await publish(registry, "1.0.0")
    assert await apply_verdict(resources(registry), verdict(version_id, "passed")) == "available"
    assert await apply_verdict(resources(registry), verdict(version_id, "failed", FAILING, run=0)) == "rejected"
    assert (await state(registry, version_id))[2] == {"status": "failed", "checks": FAILING}


async def test_a_yanked_version_stays_yanked_and_takes_the_new_report(registry: Registry) -> None:
    version_id = await publish(registry, "1.0.0")
    assert await apply_verdict(resources(registry), verdict(version_id, run=1)) == "available"
    yank = await registry.client.post(
        "/packages/model/versions/1.0.0/yank", json={"reason": "broken"}, headers=registry.callers.owner
    )
    assert yank.status_code == 200, yank.text
    assert await apply_verdict(resources(registry), verdict(version_id, "failed", FAILING, run=2)) == "yanked"
    status, validated_at, validation = await state(registry, version_id)
    assert (status, validation) == ("yanked", {"status": "failed", "checks": FAILING})
    assert validated_at is not None
    assert await latest(registry) is None
    unyank = await registry.client.post("/packages/model/versions/1.0.0/unyank", headers=registry.callers.owner)
    assert unyank.status_code == 409, "a version that failed its latest validation is not served again"
    assert await history(registry, version_id) == [
        ("pending", "available", "validation passed", "validator"),
        ("available", "yanked", "yanked: broken", "olivia"),
    ], "the rerun of the yanked version changed no status"


async def test_a_numbered_verdict_for_a_deleted_version_is_ignored(registry: Registry) -> None:
    version_id = await publish(registry, "1.0.0")
    assert await apply_verdict(resources(registry), verdict(version_id, run=1)) == "available"
    response = await registry.client.delete("/packages/model/versions/1.0.0", headers=registry.callers.owner)
    assert response.status_code == 204, response.text
    assert await apply_verdict(resources(registry), verdict(version_id, "failed", FAILING, run=2)) == "missing"
    assert await registry.sql("SELECT count(*) FROM packages.versions") == [(0,)]
    assert len(await history(registry, version_id)) == 1, "the history outlives the version"


async def test_a_version_pending_too_long_is_queued_again(registry: Registry) -> None:
    await workers(registry).stop()  # only this test sweeps, and verdicts stay in their queue
    lost = await publish(registry, "1.0.0")
    died = await publish(registry, "2.0.0")
    queued = await publish(registry, "3.0.0")
    just_finished = await publish(registry, "4.0.0")
    young = await publish(registry, "5.0.0")
    answered = await publish(registry, "6.0.0")
    answered_run = await publish(registry, "7.0.0")
    [(original,)] = await registry.sql("SELECT payload FROM queue.jobs WHERE key = $1", lost)

    await registry.sql(
        "UPDATE packages.versions SET created_at = now() - interval '10 minutes' WHERE id <> $1::uuid", young
    )
    finish = "UPDATE queue.jobs SET status = $2, finished_at = now() - interval '10 minutes' WHERE key = $1"
    await registry.sql(finish, lost, "done")  # the verdict never came
    await registry.sql(finish, died, "dead")
    await registry.sql(finish, young, "done")
    await registry.sql("UPDATE queue.jobs SET status = 'dead', finished_at = now() WHERE key = $1", just_finished)
    await registry.sql(finish, answered, "done")
    await send(registry, answered, verdict(answered))  # not yet applied
    await registry.sql(finish, answered_run, "done")
    await send(registry, f"{answered_run}:1", verdict(answered_run, run=1))  # keyed as the validator keys it

    await workers(registry).sweep_once()

    active = await registry.sql(
        "SELECT key, payload FROM queue.jobs WHERE queue = 'validation' AND status IN ('queued', 'running')"
    )
    assert dict(active) == {
        lost: original,
        died: {**original, "version_id": died, "version": "2.0.0", "s3_key": f"versions/{died}"},
        queued: {**original, "version_id": queued, "version": "3.0.0", "s3_key": f"versions/{queued}"},
    }, "queued again: the lost and the dead; left alone: queued, recently tried, young, answered"
    assert await workers(registry).requeue_stale_pending() == 0, "nothing twice"


async def test_old_orphans_are_deleted_and_young_ones_kept(registry: Registry) -> None:
    s3 = resources(registry).s3
    assert s3 is not None
    for key in ("versions/old", "versions/young", "versions/uploading"):
        await s3.client.put_object(Bucket=s3.bucket, Key=key, Body=b"bytes")
    package = await registry.create("model")
    [(package_id,)] = await registry.sql("SELECT id FROM packages.packages WHERE name = $1", package["name"])
    # An open presigned upload owns its key, whatever the age of its orphan row.
    await registry.sql(
        "INSERT INTO packages.uploads (package_id, version, version_key, s3_key, s3_upload_id, size, sha256, "
        "part_size, content_type, created_by, expires_at) VALUES ($1, '1.0.0', '1.0.0', 'versions/uploading', "
        "'upload', 5, repeat('0', 64), 5242880, 'application/octet-stream', 'olivia', now() + interval '1 hour')",
        package_id,
    )
    old = timedelta(seconds=GRACE_SECONDS * 2)
    await registry.sql(
        "INSERT INTO packages.orphans (s3_key, created_at) VALUES ('versions/old', now() - $1::interval), "
        "('versions/young', now()), ('versions/missing', now() - $1::interval), "
        "('versions/uploading', now() - $1::interval)",
        old,
    )

    report = await workers(registry).sweep_once()

    assert report.failed == []
    assert sorted(await registry.objects()) == ["versions/uploading", "versions/young"]
    remaining = await registry.sql("SELECT s3_key FROM packages.orphans ORDER BY s3_key")
    assert remaining == [("versions/uploading",), ("versions/young",)], "the missing object counts as deleted"


async def test_the_sweeps_run_by_themselves(registry: Registry) -> None:
    await registry.sql(
        "INSERT INTO packages.orphans (s3_key, created_at) VALUES ('versions/gone', now() - interval '1 day')"
    )

    async def swept() -> bool:
        return await registry.sql("SELECT count(*) FROM packages.orphans") == [(0,)]

    await eventually(swept)


async def test_stale_multipart_uploads_under_versions_are_aborted(registry: Registry) -> None:
    s3 = resources(registry).s3
    assert s3 is not None
    await s3.client.create_multipart_upload(Bucket=s3.bucket, Key="versions/abandoned")
    elsewhere = await s3.client.create_multipart_upload(Bucket=s3.bucket, Key="other/kept")
    try:
        await workers(registry).sweep_once()
        assert await registry.open_multipart_uploads() == ["other/kept"]
    finally:
        await s3.client.abort_multipart_upload(Bucket=s3.bucket, Key="other/kept", UploadId=elsewhere["UploadId"])


def test_by_default_multipart_uploads_outlive_presigned_uploads() -> None:
    settings = PackageSettings(stale_multipart_upload_seconds=None)
    assert Workers(settings).stale_multipart_after == timedelta(hours=settings.upload_expiry_hours + 1)


def test_by_default_untracked_multipart_uploads_go_within_an_hour() -> None:
    settings = PackageSettings()
    assert settings.untracked_multipart_grace_seconds <= 15 * 60
    # One still tracked by a leftover orphan row is untracked once the janitor deletes that row.
    assert settings.orphan_grace_seconds <= 3600


async def test_multipart_uploads_that_nothing_accounts_for_are_aborted_after_a_short_grace(
    registry: Registry,
) -> None:
    await workers(registry).stop()  # only the instance under test sweeps
    s3 = resources(registry).s3
    assert s3 is not None
    presigned = await registry.client.post(
        "/packages/model/versions/1.0.0/uploads",
        json={"size": len(DATA), "sha256": "0" * 64},
        headers=registry.callers.owner,
    )
    assert presigned.status_code == 201, presigned.text
    tracked_key = f"versions/{presigned.json()['upload_id']}"
    for key in ("versions/streaming", "versions/stuck", "versions/untracked"):
        await s3.client.create_multipart_upload(Bucket=s3.bucket, Key=key)
    await registry.sql(
        "INSERT INTO packages.orphans (s3_key, created_at) VALUES ('versions/streaming', now()), "
        "('versions/stuck', now() - interval '2 hours')"
    )
    await asyncio.sleep(0.01)
    day = workers(registry).settings.model_copy(update={"stale_multipart_upload_seconds": None})

    patient = Workers(day.model_copy(update={"untracked_multipart_grace_seconds": 3600.0}))
    patient.bind(resources(registry))
    assert await patient.abort_stale_multipart_uploads() == 0, "all younger than the grace"

    prompt = Workers(day.model_copy(update={"untracked_multipart_grace_seconds": 0.0}))
    prompt.bind(resources(registry))
    assert await prompt.abort_stale_multipart_uploads() == 2
    assert sorted(await registry.open_multipart_uploads()) == sorted([tracked_key, "versions/streaming"]), (
        "kept: an open presigned upload, and a streamed upload in progress (its orphan row is young)"
    )


async def test_a_failing_step_stops_neither_the_others_nor_the_sweeps(registry: Registry) -> None:
    calls = 0

    async def broken() -> int:
        nonlocal calls
        calls += 1
        raise RuntimeError("S3 is down")

    await workers(registry).stop()  # only the instances under test sweep
    await registry.sql(
        "INSERT INTO packages.orphans (s3_key, created_at) VALUES ('versions/a', now() - interval '1 day')"
    )
    await registry.sql(
        "INSERT INTO queue.jobs (queue, key, payload, status, max_attempts, finished_at) "
        "VALUES ('verdicts', 'old', '{}', 'done', 5, now() - interval '8 days')"
    )
    # One sweep, on its own: a sweep of the loop running at the same time could take the work first.
    idle = workers(registry).settings.model_copy(update={"sweep_interval_seconds": 3600})
    async with Workers(idle, abort_expired_uploads=broken).running(resources(registry)) as once:
        report = await once.sweep_once()
    assert report.failed == ["abort_presigned"]
    assert report.orphans_deleted == 1, "the steps before it ran"
    assert report.jobs_purged == 1, "and so did the ones after it"

    fast = workers(registry).settings.model_copy(update={"sweep_interval_seconds": 0.05})
    under_test = Workers(fast, abort_expired_uploads=broken)
    async with under_test.running(resources(registry)):

        async def kept_sweeping() -> bool:
            return calls >= 4

        await eventually(kept_sweeping)
    assert under_test.listening is False
