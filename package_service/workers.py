"""package_service's work outside requests: applying verdicts, re-queuing lost validations, the janitor.

Verdicts arrive on queue `verdicts` as `common.contracts` defines them. Applying one locks the
version row and applies it only when it is newer than the last one applied
(`versions.validation_run`, NULL before the first): `passed` makes a `pending` or `rejected`
version `available`, `failed` makes a `pending` or `available` one `rejected`, and a `yanked`
version stays `yanked`. Every applied verdict sets `validation_run`, `validated_at` and the
summary of the report (`validation`: status and checks), so that the version and its report
agree. A verdict of the same or an older run (a duplicate, or one delivered late) is ignored, and
so is one for a version that is gone: both are harmless. A verdict without `run` (sent by a
validator older than it) is applied only to a `pending` version, as before. Each change of status
is written to `version_events`, with which checks failed and whether it was a rerun, and logged as
`version_status_changed`. A payload that breaks the contract is logged (its fields and problems,
never its values) and dropped (its job is done, not retried): retrying cannot fix it. Only errors
that a retry can fix (the database's) fail the job, so that the queue tries again.

Sweeps, every `sweep_interval_seconds`, each step on its own (one failing step is logged and
does not stop the others):
- versions `pending` longer than `pending_requeue_after_seconds`, with no validation job queued
  or running, no verdict waiting, and no validation attempt finished within that same time, get
  their validation job again (a lost, dead or unanswered job delays a verdict, never loses it);
- orphaned bytes (`orphans` rows older than `orphan_grace_seconds`; younger ones may be uploads
  in progress, and keys of open presigned uploads are theirs) are deleted, and so are their rows
  (marked first, and no lock held while S3 deletes);
- multipart uploads under `versions/` are aborted when older than any live upload can be, or
  when no open presigned upload (`uploads`) and no upload in progress (a young `orphans` row: a
  streamed upload, or the presigned start that the same checkpoint records) accounts for them and
  they are older than `untracked_multipart_grace_seconds` (such as those of a package deleted
  while an upload was open, whose abort failed): the parts left there are not kept for a day;
- expired presigned uploads are aborted, when the app passes a callable for it;
- `done` queue jobs older than `done_job_retention_days` are purged.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog
from botocore.exceptions import ClientError

from common.contracts import (
    VALIDATION_QUEUE,
    VERDICT_QUEUE,
    InvalidMessage,
    ValidationJob,
    Verdict,
    parse_verdict,
    send,
)
from common.db import transaction
from common.logging import describe_error
from common.queue import Job, Worker, job_exists, purge_done, wait_for_event
from common.resources import Resources, ServiceBound
from common.s3 import MISSING_OBJECT_CODES, error_code
from package_service import models as m
from package_service.service import record_status_change
from package_service.settings import PackageSettings
from package_service.storage import (
    MultipartUpload,
    abort_multipart_uploads,
    delete_object,
    list_multipart_uploads,
)

log = structlog.get_logger(__name__)

VALIDATOR = "validator"
"""The actor of the status changes that verdicts make, in `version_events`."""
VERSIONS_PREFIX = "versions/"
"""Where every version's bytes live (`transfers.object_key`)."""

_STEP_TIMEOUT = 300.0  # seconds: a hung S3 or database call must not stall the sweeps for good
_TRACKED_BATCH = 1000  # keys looked up at once when deciding which multipart uploads are still in use


def _stale_pending(after: timedelta, limit: int) -> sa.Select[Any]:
    """Versions pending longer than `after` with no validation under way, recently tried, or answered."""
    versions, packages = m.versions, m.packages
    version_id = sa.cast(versions.c.id, sa.Text)
    return (
        sa.select(
            versions.c.id, packages.c.name.label("package"), versions.c.version, versions.c.s3_key,
            versions.c.sha256, versions.c.size, versions.c.filename,
        )
        .join(packages, packages.c.id == versions.c.package_id)
        .where(
            # A literal, like the predicate of the partial index `versions_pending` that serves it.
            versions.c.status == sa.literal_column("'pending'"),
            versions.c.created_at < sa.func.now() - after,
            ~job_exists(VALIDATION_QUEUE, version_id, finished_within=after),
            ~job_exists(VERDICT_QUEUE, version_id, subkeys=True),
        )
        .order_by(versions.c.created_at)
        .limit(limit)
    )  # fmt: skip


# Applying a verdict (the rules are in the module docstring)


def _newer(verdict: Verdict, status: str, applied_run: int | None) -> bool:
    """Whether `verdict` is newer than the last one a version in `status` applied."""
    if verdict.run is None:
        return status == "pending"
    return applied_run is None or verdict.run > applied_run


def _status_after(verdict: Verdict, status: str) -> str:
    """The status a version in `status` gets from `verdict`: a yanked one stays yanked."""
    if status == "yanked":
        return status
    return "available" if verdict.verdict == "passed" else "rejected"


def _reason(verdict: Verdict, status: str) -> str:
    """Why a version in `status` changes, for its history: the failed checks, and whether it was a rerun."""
    failed = [check.id for check in verdict.report.checks if check.status == "fail"]
    warned = [check.id for check in verdict.report.checks if check.status == "warn"]
    if failed:
        why = f"validation failed ({', '.join(failed)})"
    elif warned:
        why = f"validation passed with warnings ({', '.join(warned)})"
    else:
        why = f"validation {verdict.verdict}"
    return why if status == "pending" else f"rerun: {why}"


async def apply_verdict(resources: Resources, payload: Mapping[str, Any]) -> str:
    """Apply one verdict; what happened: the version's status after it, `invalid`, `missing` or `unchanged`.

    `unchanged` is a verdict no newer than the one applied last, ignored. Raises only on database
    errors, which a retry may fix.
    """
    try:
        verdict = parse_verdict(payload)
    except InvalidMessage as error:
        log.error("verdict_invalid_dropped", problems=error.problems[:10])  # noqa: TRY400 - no trace needed
        return "invalid"
    log_ = log.bind(version_id=str(verdict.version_id), run=verdict.run, verdict=verdict.verdict)
    async with transaction(resources.sessions) as db:
        row = (
            await db.execute(sa.select(m.versions).where(m.versions.c.id == verdict.version_id).with_for_update())
        ).one_or_none()
        if row is None:
            log_.info("verdict_for_missing_version")
            return "missing"
        if not _newer(verdict, row.status, row.validation_run):
            log_.info("verdict_not_newer_ignored", status=row.status, applied_run=row.validation_run)
            return "unchanged"
        decided = _status_after(verdict, row.status)
        await db.execute(
            sa.update(m.versions)
            .where(m.versions.c.id == verdict.version_id)
            .values(
                status=decided,
                validated_at=sa.func.now(),
                validation=verdict.report.model_dump(mode="json"),
                validation_run=verdict.run,
            )
        )
        if decided != row.status:
            await record_status_change(db, row, decided, reason=_reason(verdict, row.status), actor=VALIDATOR)
        # `updated_at` tells clients the package changed: its `latest_version` may have moved.
        await db.execute(
            sa.update(m.packages).where(m.packages.c.id == row.package_id).values(updated_at=sa.func.now())
        )
    log_.info("verdict_applied", status=decided, previous=row.status)
    return decided


@dataclass
class SweepReport:
    """What one sweep did; `failed` names the steps that raised (they are logged)."""

    requeued: int = 0
    orphans_deleted: int = 0
    orphans_failed: int = 0
    multipart_aborted: int = 0
    presigned_aborted: int = 0
    jobs_purged: int = 0
    failed: list[str] = field(default_factory=list)


class Workers(ServiceBound):
    """The verdict worker and the periodic sweeps of one package_service process."""

    def __init__(
        self, settings: PackageSettings, *, abort_expired_uploads: Callable[[], Awaitable[int]] | None = None
    ) -> None:
        self.settings = settings
        self._abort_expired_uploads = abort_expired_uploads
        self._worker: Worker | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def listening(self) -> bool:
        """Whether the verdict worker's LISTEN connection is up (for readiness checks)."""
        return self._worker is not None and self._worker.listening

    @property
    def stale_multipart_after(self) -> timedelta:
        """Age after which nothing can still be using an open multipart upload."""
        seconds = self.settings.stale_multipart_upload_seconds
        if seconds is None:
            return timedelta(hours=self.settings.upload_expiry_hours + 1)
        return timedelta(seconds=seconds)

    async def start(self, resources: Resources) -> None:
        """Start the verdict worker and the sweeps."""
        if self._worker is not None:
            raise RuntimeError("workers already started")
        self._resources = resources
        self._stopping.clear()
        self._worker = Worker(
            resources.engine,
            VERDICT_QUEUE,
            self._handle_verdict,
            concurrency=self.settings.verdict_worker_concurrency,
            on_dead=self._verdict_dead,
            name="package_service-verdicts",
        )
        await self._worker.start()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="package_service sweeps")

    async def stop(self) -> None:
        """Stop sweeping (a sweep under way is cancelled: every step is idempotent) and stop the worker."""
        self._stopping.set()
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            await asyncio.wait([sweeper])
        worker, self._worker = self._worker, None
        if worker is not None:
            await worker.stop()

    @contextlib.asynccontextmanager
    async def running(self, resources: Resources) -> AsyncIterator[Workers]:
        """Run the background work for the block (the app's lifespan)."""
        await self.start(resources)
        try:
            yield self
        finally:
            await self.stop()

    async def _handle_verdict(self, job: Job) -> None:
        await apply_verdict(self._bound, job.payload)

    async def _verdict_dead(self, job: Job, reason: str) -> None:
        # Dead jobs are counted in /metrics (depot_queue_jobs), where the alarm looks.
        log.error("verdict_job_dead", job_id=job.id, key=job.key, reason=reason)

    async def _sweep_forever(self) -> None:
        interval = self.settings.sweep_interval_seconds
        # The first sweep waits one interval: start-up is busy enough, and replicas started together spread out.
        while not await wait_for_event(self._stopping, interval):
            try:
                await self.sweep_once()
            except Exception:  # each step catches its own errors: this is the last line of defence
                log.exception("sweep_failed")

    async def sweep_once(self) -> SweepReport:
        """Run every sweep step once, each on its own."""
        started = time.monotonic()
        report = SweepReport()

        async def requeue() -> None:
            report.requeued = await self.requeue_stale_pending()

        async def orphans() -> None:
            report.orphans_deleted, report.orphans_failed = await self.delete_orphans()

        async def multipart() -> None:
            report.multipart_aborted = await self.abort_stale_multipart_uploads()

        async def presigned() -> None:
            if self._abort_expired_uploads is not None:
                report.presigned_aborted = await self._abort_expired_uploads()

        async def purge() -> None:
            retention = timedelta(days=self.settings.done_job_retention_days)
            report.jobs_purged = await purge_done(self._bound.engine, retention)

        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("requeue_pending", requeue), ("delete_orphans", orphans), ("abort_multipart", multipart),
            ("abort_presigned", presigned), ("purge_done_jobs", purge),
        ]  # fmt: skip
        for name, step in steps:
            try:
                async with asyncio.timeout(_STEP_TIMEOUT):
                    await step()
            except Exception as error:  # one failing step must not stop the others
                report.failed.append(name)
                log.exception("sweep_step_failed", step=name, error=describe_error(error))
        # Quiet when there was nothing to do: a sweep runs every minute in every process.
        quiet = report == SweepReport()
        emit = log.debug if quiet else log.info
        emit("sweep_done", duration_ms=round((time.monotonic() - started) * 1000), **asdict(report))
        return report

    async def requeue_stale_pending(self) -> int:
        """Queue validation again for versions pending too long with nothing under way; how many."""
        after = timedelta(seconds=self.settings.pending_requeue_after_seconds)
        queued = 0
        async with transaction(self._bound.sessions) as db:
            rows = (await db.execute(_stale_pending(after, self.settings.sweep_batch_size))).all()
            for row in rows:
                job = ValidationJob(
                    version_id=row.id, package=row.package, version=row.version, s3_key=row.s3_key,
                    sha256=row.sha256, size=row.size, filename=row.filename,
                )  # fmt: skip
                # A no-op if another process queued it meanwhile: the key is the version id.
                if await send(db, job):
                    queued += 1
                    log.warning("validation_requeued", version_id=str(job.version_id))
        return queued

    async def abort_stale_multipart_uploads(self) -> int:
        """Abort the multipart uploads under `versions/` that nothing can still be using; how many."""
        now = datetime.now(UTC)
        stale_before = now - self.stale_multipart_after
        untracked_before = now - timedelta(seconds=self.settings.untracked_multipart_grace_seconds)
        listed = await list_multipart_uploads(self._s3, VERSIONS_PREFIX)
        stale = [upload for upload in listed if upload.initiated < stale_before]
        candidates = [upload for upload in listed if stale_before <= upload.initiated < untracked_before]
        tracked = await self._tracked(candidates)
        due = stale + [upload for upload in candidates if (upload.key, upload.upload_id) not in tracked]
        return await abort_multipart_uploads(self._s3, due)

    async def _tracked(self, uploads: list[MultipartUpload]) -> set[tuple[str, str]]:
        """Which of these multipart uploads an open presigned upload or an upload in progress accounts for."""
        grace = timedelta(seconds=self.settings.orphan_grace_seconds)
        tracked: set[tuple[str, str]] = set()
        for start in range(0, len(uploads), _TRACKED_BATCH):
            batch = uploads[start : start + _TRACKED_BATCH]
            keys = sorted({upload.key for upload in batch})
            async with transaction(self._bound.sessions) as db:
                opened = await db.execute(
                    sa.select(m.uploads.c.s3_key, m.uploads.c.s3_upload_id).where(m.uploads.c.s3_key.in_(keys))
                )
                # A streamed upload's key has a young orphan row from before its first byte until its commit.
                in_progress = await db.execute(
                    sa.select(m.orphans.c.s3_key).where(
                        m.orphans.c.s3_key.in_(keys), m.orphans.c.created_at > sa.func.now() - grace
                    )
                )
            tracked |= {(row.s3_key, row.s3_upload_id) for row in opened}
            young = set(in_progress.scalars())
            tracked |= {(upload.key, upload.upload_id) for upload in batch if upload.key in young}
        return tracked

    async def delete_orphans(self) -> tuple[int, int]:
        """Delete the bytes of old orphans, and the rows of those deleted; (deleted, failed).

        No lock is held while S3 deletes: the rows are marked first (`sweep_started_at`, committed),
        and a publish never takes over a marked key (`publishing.commit_version`), so bytes that a
        sweep may have deleted never become a version's. A mark older than a sweep step may last was
        left by a sweep that stopped: such rows are taken again.
        """
        grace = timedelta(seconds=self.settings.orphan_grace_seconds)
        old = m.orphans.c.created_at < sa.func.now() - grace
        open_upload = sa.exists().where(m.uploads.c.s3_key == m.orphans.c.s3_key)
        started = m.orphans.c.sweep_started_at
        free = sa.or_(started.is_(None), started < sa.func.now() - timedelta(seconds=_STEP_TIMEOUT))
        deleted: list[str] = []
        failures: list[str] = []
        async with transaction(self._bound.sessions) as db:
            keys = list(
                (
                    await db.execute(
                        sa.select(m.orphans.c.s3_key)
                        .where(old, ~open_upload, free)
                        .order_by(m.orphans.c.created_at)
                        .limit(self.settings.sweep_batch_size)
                        .with_for_update(skip_locked=True)
                    )
                ).scalars()
            )
            if keys:
                await db.execute(
                    sa.update(m.orphans).where(m.orphans.c.s3_key.in_(keys)).values(sweep_started_at=sa.func.now())
                )
        await self._delete_keys(keys, deleted, failures)
        if deleted:
            async with transaction(self._bound.sessions) as db:
                await db.execute(sa.delete(m.orphans).where(m.orphans.c.s3_key.in_(deleted)))
        if failures:
            # One line, not one per key: when S3 is down, every key fails the same way.
            log.warning("orphan_delete_failed", count=len(failures), first_error=failures[0])
        return len(deleted), len(failures)

    async def _delete_keys(self, keys: list[str], deleted: list[str], failures: list[str]) -> None:
        for key in keys:
            try:
                await delete_object(self._s3, key)
            except ClientError as error:
                if error_code(error) in MISSING_OBJECT_CODES:
                    deleted.append(key)  # already gone: that is what we wanted
                else:
                    failures.append(describe_error(error))
            except Exception as error:  # noqa: BLE001 - the key stays an orphan, tried again next sweep
                failures.append(describe_error(error))
            else:
                deleted.append(key)
