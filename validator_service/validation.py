"""The validation workers: take a job, check the artifact, store the report, send the verdict.

The validation job and the verdict are the contracts of `common.contracts`. The verdict is sent
in the same transaction as the report, so a report and its verdict exist together or not at all.
Its `run` is the report's count of validations started, one more at each start: package_service
applies a verdict only when its run is newer than the last one applied, so a late or repeated
verdict never overwrites a newer one. A job that breaks the contract is logged (its fields, never
its values) and dropped: retrying cannot fix it, and package_service queues a pending version again.

Outcomes:
- every check ran: `passed` (no check failed) or `failed`, and a verdict;
- the bytes or the database could not be read: the report says `error`, the job fails and the
  queue retries it later; at its last attempt the job is dead and the report keeps `error`. An
  `error` is never a verdict;
- the object is not in S3 at all (the version was deleted meanwhile): `error`, not retried;
- a newer validation of the version started meanwhile (this attempt's job was taken over): this
  one writes nothing and sends nothing; the newer one does.

A job is idempotent by version id: a version whose report already holds a verdict for the same
bytes gets that verdict sent again, with its run, without reading the bytes (a lost verdict is
re-queued by package_service). A rerun (`queued` report) validates again, under the rules in force
when it starts, and its verdict decides again: package_service makes an `available` version that
now fails `rejected` and a `rejected` one that now passes `available`, and keeps a `yanked` one
`yanked` with the new report.

The checks are synchronous and run in a thread pool of `validation_workers` threads; their S3
reads are made on the event loop (`content.source.S3ObjectFile`).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import timedelta
from functools import partial
from typing import Any, BinaryIO, cast

import sqlalchemy as sa
import structlog
from botocore.exceptions import ClientError
from sqlalchemy.dialects.postgresql import insert

from common.contracts import (
    VALIDATION_QUEUE,
    VERDICT_QUEUE,
    InvalidMessage,
    Outcome,
    ValidationJob,
    Verdict,
    parse_validation_job,
    send,
)
from common.db import transaction
from common.logging import describe_error
from common.naming import Version, normalize_name
from common.queue import Job, Worker
from common.queue_metrics import publish_queue_depth
from common.resources import Resources, ServiceBound
from common.s3 import MISSING_OBJECT_CODES, S3, error_code
from validator_service import models as m
from validator_service.content import CheckResult, Rules, StorageError
from validator_service.content.checks import run_checks
from validator_service.content.source import S3ObjectFile
from validator_service.protection import ScaleInProtection
from validator_service.service import current_rules
from validator_service.settings import ValidatorSettings

log = structlog.get_logger(__name__)


class Validation(ServiceBound):
    """The workers of one service process, started for its lifetime by `running`."""

    def __init__(self, settings: ValidatorSettings) -> None:
        self._settings = settings
        self._threads = ThreadPoolExecutor(settings.validation_workers, thread_name_prefix="validation")
        self.worker: Worker | None = None
        self.protection = ScaleInProtection(
            settings.ecs_agent_uri, expires_minutes=settings.scale_in_protection_minutes,
            max_minutes=settings.scale_in_protection_max_minutes,
        )  # fmt: skip

    @asynccontextmanager
    async def running(self, resources: Resources) -> AsyncIterator[Validation]:
        """Take validation jobs while the block runs."""
        self.bind(resources)
        settings = self._settings
        worker = Worker(
            resources.engine, VALIDATION_QUEUE, self._handle_protected, concurrency=settings.validation_workers,
            lease=timedelta(seconds=settings.validation_lease_seconds), poll_interval=settings.validation_poll_seconds,
            on_dead=self.on_dead, name="validator",
        )  # fmt: skip
        self.worker = worker
        publisher = asyncio.create_task(
            publish_queue_depth(resources.engine, (VALIDATION_QUEUE, VERDICT_QUEUE), settings.queue_metrics_seconds),
            name="queue depth metrics",
        )
        try:
            async with self.protection.running(), worker:
                try:
                    yield self
                finally:
                    self.worker = None
        finally:
            publisher.cancel()
            await asyncio.gather(publisher, return_exceptions=True)
            self._threads.shutdown(wait=False, cancel_futures=True)

    async def _handle_protected(self, job: Job) -> None:
        # On ECS, the task is kept from scale-in while it holds a job (`protection`).
        async with self.protection.holding():
            await self.handle(job)

    async def handle(self, job: Job) -> None:
        """Validate one version (a queue handler: raising means "retry later")."""
        try:
            payload = parse_validation_job(job.payload)
        except InvalidMessage as error:
            # Retrying cannot fix a malformed job; package_service re-queues a pending version anyway.
            log.error("validation_job_invalid", job_id=job.id, problems=error.problems[:10])  # noqa: TRY400 - no trace needed
            return
        log_ = log.bind(version_id=str(payload.version_id), package=payload.package, version=payload.version)
        started_run = await self._start(payload, job.attempts)
        if started_run is None:
            log_.info("validation_verdict_resent")
            return
        rules, run = started_run
        log_ = log_.bind(run=run)
        started = time.monotonic()
        try:
            results = await self._check(payload, rules)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            await self._record_error(payload.version_id, describe_error(error), run=run)
            log_.warning("validation_error", error=describe_error(error), attempt=job.attempts)
            raise
        if results is None:
            log_.error("validation_artifact_missing")
            return
        verdict: Outcome = "failed" if any(result.status == "fail" for result in results) else "passed"
        if not await self._finish(payload, run, verdict, results):
            log_.warning("validation_superseded", verdict=verdict)
            return
        log_.info(
            "validation_finished", verdict=verdict, duration_ms=round((time.monotonic() - started) * 1000, 1),
            failed=[r.id for r in results if r.status == "fail"],
        )  # fmt: skip

    async def on_dead(self, job: Job, reason: str) -> None:
        """A job that failed at every attempt: its report keeps `error`, and says it gave up."""
        log.error("validation_dead", job_id=job.id, key=job.key, error=reason)
        try:
            version_id = parse_validation_job(job.payload).version_id
        except InvalidMessage:
            return  # no report to mark: a job that breaks the contract never started one
        await self._record_error(version_id, f"gave up after {job.attempts} attempts: {reason}", finished=True)

    async def _start(self, payload: ValidationJob, attempt: int) -> tuple[Rules, int] | None:
        """Mark the report `running` as a new run; the rules to apply and the run, in one transaction.

        None when the report already holds a verdict for these bytes: that verdict is sent again
        instead (idempotent by version id; a rerun sets the report back to `queued` first).
        """
        async with transaction(self._bound.sessions) as db:
            row = (
                await db.execute(
                    sa.select(m.reports).where(m.reports.c.version_id == payload.version_id).with_for_update()
                )
            ).first()
            if row is not None and row.status in {"passed", "failed"} and row.sha256 == payload.sha256:
                await send(db, Verdict.of(row.version_id, row.run, row.status, row.checks))
                return None
            values: dict[str, Any] = {
                "package": payload.package, "normalized_name": normalize_name(payload.package),
                "version": payload.version, "version_key": Version.parse(payload.version).identity,
                "s3_key": payload.s3_key, "filename": payload.filename, "sha256": payload.sha256,
                "size": payload.size, "status": "running", "checks": [], "error": None, "attempts": attempt,
                "started_at": sa.func.now(), "finished_at": None, "updated_at": sa.func.now(),
            }  # fmt: skip
            upsert = insert(m.reports).values(version_id=payload.version_id, run=1, **values)
            upsert = upsert.on_conflict_do_update(
                index_elements=["version_id"], set_=values | {"run": m.reports.c.run + 1}
            )
            run: int = (await db.execute(upsert.returning(m.reports.c.run))).scalar_one()
            return await current_rules(db), run

    async def _check(self, payload: ValidationJob, rules: Rules) -> list[CheckResult] | None:
        """The results of every check, or None when the object is not in S3."""
        s3 = self._s3
        try:
            head = await s3.client.head_object(Bucket=s3.bucket, Key=payload.s3_key)
        except ClientError as error:
            if error_code(error) in MISSING_OBJECT_CODES:
                await self._record_error(payload.version_id, "the artifact is not in storage", finished=True)
                return None
            raise StorageError(describe_error(error)) from error
        size = int(head["ContentLength"])
        cancelled = threading.Event()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(
            self._threads, partial(_run, s3, payload, size, rules, loop=loop, cancelled=cancelled)
        )
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            cancelled.set()  # the thread stops at its next read
            raise

    async def _finish(self, payload: ValidationJob, run: int, verdict: Outcome, results: list[CheckResult]) -> bool:
        """Store the report and send its verdict; False when a newer run started meanwhile (nothing done)."""
        checks = [{"id": r.id, "status": r.status, "detail": r.detail} for r in results]
        async with transaction(self._bound.sessions) as db:
            finished = await db.execute(
                sa.update(m.reports)
                .where(m.reports.c.version_id == payload.version_id, m.reports.c.run == run)
                .values(status=verdict, checks=checks, error=None, finished_at=sa.func.now(), updated_at=sa.func.now())
                .returning(m.reports.c.run)
            )
            if finished.first() is None:
                return False
            await send(db, Verdict.of(payload.version_id, run, verdict, checks))
            return True

    async def _record_error(
        self, version_id: uuid.UUID, reason: str, *, finished: bool = False, run: int | None = None
    ) -> None:
        """Mark the report `error`; with `run`, only while no newer run has started."""
        values: dict[str, Any] = {"status": "error", "error": reason[:1000], "updated_at": sa.func.now()}
        if finished:
            values["finished_at"] = sa.func.now()
        report = m.reports.c.version_id == version_id
        if run is not None:
            report &= m.reports.c.run == run
        try:
            async with transaction(self._bound.sessions) as db:
                await db.execute(sa.update(m.reports).where(report).values(**values))
        except Exception as error:  # noqa: BLE001 - the database may be what failed; the job is retried anyway
            log.warning("report_error_not_recorded", version_id=str(version_id), error=describe_error(error))


def _run(
    s3: S3,
    payload: ValidationJob,
    size: int,
    rules: Rules,
    *,
    loop: asyncio.AbstractEventLoop,
    cancelled: threading.Event,
) -> list[CheckResult]:
    with S3ObjectFile(s3, payload.s3_key, size, loop, cancelled) as artifact:
        results: list[CheckResult] = run_checks(
            cast(BinaryIO, artifact), size=size, filename=payload.filename, package=payload.package,
            version=payload.version, declared_size=payload.size, declared_sha256=payload.sha256, rules=rules,
        )  # fmt: skip
        return results
