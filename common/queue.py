"""The job queue: a table in the shared `queue` schema, which is how the services hand work to each other.

A job is enqueued inside the caller's own transaction, so it exists exactly when the row that
causes it does, and its NOTIFY is delivered only on commit. Workers claim jobs with
`FOR UPDATE SKIP LOCKED` under a lease that a heartbeat extends while the handler runs; a worker
that disappears loses its job when the lease expires, and another worker takes it over. LISTEN
wakes idle workers at once; polling every `poll_interval` is the fallback. A job that fails
`max_attempts` times is marked `dead` and reported through `on_dead`.

Ownership: an attempt is identified by (worker id, attempt number). Heartbeats and outcomes are
written only while the row still carries both and is `running`, so a worker whose job was taken
over can no longer change it; its heartbeat notices and cancels the handler.

Cancellation: when `Worker.stop` runs out of time, it cancels the running handlers and leaves
their jobs `running`. They come back when their lease expires, with the interrupted attempt
counted, since the handler may have done part of its work; at the last attempt, that makes the
job dead ("lease expired: worker lost"). Handlers must be idempotent anyway: a job can also run
twice when its outcome could not be written.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg
import sqlalchemy as sa
import structlog
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from common.db import engine_tls
from common.logging import describe_error

log = structlog.get_logger(__name__)

metadata = sa.MetaData(schema="queue")

# The unique index's predicate: ON CONFLICT must repeat it for PostgreSQL to pick that index as arbiter.
ACTIVE = sa.text("status IN ('queued', 'running')")

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("queue", sa.Text, nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("payload", JSONB, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("run_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("lease_expires_at", sa.DateTime(timezone=True)),
    sa.Column("worker", sa.Text),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.CheckConstraint("status IN ('queued', 'running', 'done', 'dead')", name="jobs_status_check"),
    sa.Index("jobs_active_key", "queue", "key", unique=True, postgresql_where=ACTIVE),
    sa.Index("jobs_claimable", "queue", "run_at", postgresql_where=sa.text("status = 'queued'")),
    sa.Index("jobs_leased", "queue", "lease_expires_at", postgresql_where=sa.text("status = 'running'")),
)

_QUEUE_NAME = re.compile(r"[a-z][a-z0-9_]{0,40}")
_LOST = "lease expired: worker lost"
_REAP_EVERY = 1.0  # seconds between a worker's sweeps for jobs whose worker died at their last attempt
_BACKOFF_MIN, _BACKOFF_MAX = 0.5, 30.0  # seconds, after database errors
_LISTENER_CHECK = 15.0  # seconds between pings that reveal a silently dead LISTEN connection

# Statuses are literals, not parameters, so that generic plans can still use the partial indexes.
_CLAIM = sa.text("""
    WITH candidate AS (
        SELECT id FROM queue.jobs
        WHERE queue = :queue
          AND ((status = 'queued' AND run_at <= now())
               OR (status = 'running' AND lease_expires_at < now() AND attempts < max_attempts))
        ORDER BY run_at, id
        LIMIT 1
        FOR UPDATE SKIP LOCKED
    )
    UPDATE queue.jobs AS j
    SET status = 'running', attempts = j.attempts + 1, lease_expires_at = now() + CAST(:lease AS interval),
        worker = :worker, updated_at = now()
    FROM candidate WHERE j.id = candidate.id
    RETURNING j.id, j.queue, j.key, j.payload, j.attempts, j.max_attempts
""").columns(jobs.c.id, jobs.c.queue, jobs.c.key, jobs.c.payload, jobs.c.attempts, jobs.c.max_attempts)

_REAP = sa.text("""
    WITH expired AS (
        SELECT id FROM queue.jobs
        WHERE queue = :queue AND status = 'running' AND lease_expires_at < now() AND attempts >= max_attempts
        FOR UPDATE SKIP LOCKED
    )
    UPDATE queue.jobs AS j
    SET status = 'dead', last_error = :error, lease_expires_at = NULL, finished_at = now(), updated_at = now()
    FROM expired WHERE j.id = expired.id
    RETURNING j.id, j.queue, j.key, j.payload, j.attempts, j.max_attempts
""").columns(jobs.c.id, jobs.c.queue, jobs.c.key, jobs.c.payload, jobs.c.attempts, jobs.c.max_attempts)


def _check_name(queue: str) -> None:
    # The name becomes part of a LISTEN channel, which is an identifier, not a parameter.
    if not _QUEUE_NAME.fullmatch(queue):
        raise ValueError(f"invalid queue name {queue!r}: expected {_QUEUE_NAME.pattern}")


def channel(queue: str) -> str:
    """The NOTIFY channel of one queue."""
    _check_name(queue)
    return f"depot_queue_{queue}"


async def enqueue(
    session: AsyncSession,
    queue: str,
    key: str,
    payload: Mapping[str, Any],
    *,
    max_attempts: int = 5,
    delay: timedelta | None = None,
) -> bool:
    """Add a job in the caller's transaction, which this never commits.

    Returns False, doing nothing, when a job with this key is already queued or running.
    """
    wake = channel(queue)  # also validates the name
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    delayed = delay is not None and delay > timedelta(0)
    statement = (
        insert(jobs)
        .values(
            queue=queue,
            key=key,
            payload=dict(payload),
            status="queued",
            max_attempts=max_attempts,
            run_at=sa.func.now() + delay if delayed else sa.func.now(),
        )
        .on_conflict_do_nothing(index_elements=[jobs.c.queue, jobs.c.key], index_where=ACTIVE)
        .returning(jobs.c.id)
    )
    created = (await session.execute(statement)).scalar_one_or_none() is not None
    # A delayed job would wake workers too early; polling finds it once it is due.
    if created and not delayed:
        await session.execute(sa.select(sa.func.pg_notify(wake, "")))
    return created


@dataclass(frozen=True)
class Job:
    """One claimed attempt at a job; `attempts` is this attempt's number, from 1."""

    id: int
    queue: str
    key: str
    payload: dict[str, Any]
    attempts: int
    max_attempts: int


def exponential_backoff(attempt: int) -> timedelta:
    """The default wait before retrying after failed attempt `attempt`: 2**attempt seconds, at most 5 minutes."""
    return timedelta(seconds=min(2**attempt, 300))


async def wait_for_event(event: asyncio.Event, seconds: float) -> bool:
    """Whether `event` is set within `seconds` (a wake-up or stop signal, or a timeout)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
        return True
    return False


class Worker:
    """Runs `handler` for the jobs of one queue, `concurrency` at a time, until stopped."""

    def __init__(
        self,
        engine: AsyncEngine,
        queue: str,
        handler: Callable[[Job], Awaitable[None]],
        *,
        concurrency: int = 1,
        lease: timedelta = timedelta(seconds=60),
        poll_interval: float = 5.0,
        retry_backoff: Callable[[int], timedelta] | None = None,
        on_dead: Callable[[Job, str], Awaitable[None]] | None = None,
        name: str | None = None,
    ) -> None:
        _check_name(queue)
        if concurrency < 1 or lease <= timedelta(0) or poll_interval <= 0:
            raise ValueError("concurrency, lease and poll_interval must be positive")
        self.engine = engine
        self.queue = queue
        self.concurrency = concurrency
        self.lease = lease
        self.poll_interval = poll_interval
        self._handler = handler
        self._backoff = retry_backoff or exponential_backoff
        self._on_dead = on_dead
        # Unique even when two processes pass the same name: ownership checks compare it.
        self.id = f"{name or queue}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._log = log.bind(queue=queue, worker=self.id)
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._slots: list[asyncio.Task[None]] = []
        self._listener: asyncio.Task[None] | None = None
        self._listening = False
        self._next_reap = 0.0

    @property
    def listening(self) -> bool:
        """Whether the LISTEN connection is up (for readiness checks)."""
        return self._listening

    async def start(self) -> None:
        """Start the listener and `concurrency` claim loops."""
        if self._slots:
            raise RuntimeError("worker already started")
        self._stopping.clear()
        self._listener = asyncio.create_task(self._listen(), name=f"{self.id} listener")
        self._slots = [asyncio.create_task(self._run(), name=f"{self.id} #{n}") for n in range(self.concurrency)]
        self._log.info("queue_worker_started", concurrency=self.concurrency)

    async def stop(self, timeout: float = 10) -> None:  # noqa: ASYNC109 - a grace period, not a deadline on stop itself
        """Stop claiming; let running handlers finish within `timeout` seconds, then cancel them."""
        self._stopping.set()
        self._wake.set()
        slots, self._slots = self._slots, []
        if slots:
            _, pending = await asyncio.wait(slots, timeout=timeout)
            if pending:
                self._log.warning("queue_worker_cancelling_jobs", count=len(pending))
                for task in pending:
                    task.cancel()
                _, stuck = await asyncio.wait(pending, timeout=timeout)
                if stuck:
                    self._log.error("queue_handlers_abandoned", count=len(stuck))
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.wait([self._listener])
            self._listener = None
        self._log.info("queue_worker_stopped")

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                await self._reap_if_due()
                job = await self._claim()
                if job is not None:
                    # More jobs may be waiting: let an idle sibling look instead of waiting for its poll.
                    self._wake.set()
                    await self._process(job)
                failures = 0
            except Exception:  # noqa: BLE001 - whatever breaks (the database, mostly), the loop must go on
                failures += 1
                delay = min(_BACKOFF_MIN * 2**failures, _BACKOFF_MAX)
                self._log.exception("queue_worker_error", retry_in_s=delay)
                await wait_for_event(self._stopping, delay)
                continue
            if job is None:
                await wait_for_event(self._wake, self.poll_interval)

    async def _claim(self) -> Job | None:
        async with self.engine.begin() as connection:
            row = (
                await connection.execute(_CLAIM, {"queue": self.queue, "lease": self.lease, "worker": self.id})
            ).one_or_none()
        if row is None:
            return None
        job = Job(row.id, row.queue, row.key, row.payload, row.attempts, row.max_attempts)
        self._log.info("job_claimed", **_fields(job))
        return job

    async def _reap_if_due(self) -> None:
        if time.monotonic() < self._next_reap:
            return
        self._next_reap = time.monotonic() + _REAP_EVERY
        async with self.engine.begin() as connection:
            rows = (await connection.execute(_REAP, {"queue": self.queue, "error": _LOST})).all()
        for row in rows:
            job = Job(row.id, row.queue, row.key, row.payload, row.attempts, row.max_attempts)
            self._log.error("job_dead", error=_LOST, **_fields(job))
            await self._report_dead(job, _LOST)

    async def _process(self, job: Job) -> None:
        started = time.monotonic()
        handler = asyncio.create_task(self._call(job), name=f"{self.id} job {job.id}")
        finished, lost = asyncio.Event(), asyncio.Event()
        heartbeat = asyncio.create_task(self._heartbeat(job, handler, finished, lost))
        error: BaseException | None = None
        try:
            await handler
        except asyncio.CancelledError as cancelled:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                self._log.warning("job_interrupted_by_stop", **_fields(job, started))
                raise
            error = cancelled  # the heartbeat's doing, or else the handler cancelled itself: a failure
        except Exception as failure:  # noqa: BLE001 - a handler's failure is recorded on its job, not raised
            error = failure
        finally:
            # Let an in-flight heartbeat finish rather than cancel it inside a database call.
            finished.set()
            await asyncio.wait([heartbeat])
        # Outcomes are written outside the except blocks, so that their own errors are not chained to the handler's.
        if lost.is_set():
            return  # another worker owns the job now; the heartbeat has said so
        if error is not None:
            await self._fail(job, error, started)
        elif await self._settle(job, "done", finished_at=sa.func.now()):
            self._log.info("job_done", **_fields(job, started))

    async def _call(self, job: Job) -> None:
        # A task of its own, so that the heartbeat can cancel the handler alone.
        await self._handler(job)

    async def _heartbeat(
        self, job: Job, handler: asyncio.Task[None], finished: asyncio.Event, lost: asyncio.Event
    ) -> None:
        now = sa.func.now()
        extend = sa.update(jobs).where(self._owned(job)).values(lease_expires_at=now + self.lease, updated_at=now)
        while not await wait_for_event(finished, self.lease.total_seconds() / 3):
            try:
                async with self.engine.begin() as connection:
                    still_ours = (await connection.execute(extend)).rowcount == 1
            except Exception:  # noqa: BLE001 - the lease has slack for the next beat
                self._log.warning("job_heartbeat_failed", exc_info=True, **_fields(job))
                continue
            if not still_ours:
                self._log.warning("job_taken_over", **_fields(job))
                lost.set()
                handler.cancel()
                return

    async def _fail(self, job: Job, error: BaseException, started: float) -> None:
        reason = describe_error(error)
        if job.attempts < job.max_attempts:
            retry_in = self._backoff(job.attempts)
            if await self._settle(job, "queued", run_at=sa.func.now() + retry_in, last_error=reason):
                retry_in_s = retry_in.total_seconds()
                self._log.warning("job_retry", error=reason, retry_in_s=retry_in_s, **_fields(job, started))
        elif await self._settle(job, "dead", last_error=reason, finished_at=sa.func.now()):
            self._log.error("job_dead", error=reason, **_fields(job, started))
            await self._report_dead(job, reason)

    async def _settle(self, job: Job, status: str, **values: Any) -> bool:
        """Write an outcome if the attempt is still ours; whether it was."""
        values.update(status=status, lease_expires_at=None, updated_at=sa.func.now())
        statement = sa.update(jobs).where(self._owned(job)).values(**values)
        async with self.engine.begin() as connection:
            ours: bool = (await connection.execute(statement)).rowcount == 1
        if not ours:
            self._log.warning("job_taken_over_before_outcome", status=status, **_fields(job))
        return ours

    async def _report_dead(self, job: Job, reason: str) -> None:
        if self._on_dead is None:
            return
        try:
            await self._on_dead(job, reason)
        except Exception:  # noqa: BLE001 - a broken alarm must not break the worker
            self._log.exception("job_on_dead_failed", **_fields(job))

    def _owned(self, job: Job) -> sa.ColumnElement[bool]:
        return sa.and_(
            jobs.c.id == job.id,
            jobs.c.worker == self.id,
            jobs.c.attempts == job.attempts,
            jobs.c.status == "running",
        )

    async def _listen(self) -> None:
        dsn = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        delay = _BACKOFF_MIN
        while True:
            try:
                connection = await asyncpg.connect(
                    dsn, timeout=10, ssl=engine_tls(self.engine),
                    server_settings={"application_name": f"depot queue listener {self.queue}"},
                )  # fmt: skip
            except Exception as error:  # noqa: BLE001 - polling covers for the listener meanwhile
                self._log.warning("queue_listener_unreachable", error=describe_error(error), retry_in_s=delay)
            else:
                if await self._listen_on(connection):
                    delay = _BACKOFF_MIN
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX)

    async def _listen_on(self, connection: Any) -> bool:
        """Listen until the connection fails; whether it was listening at all."""
        closed = asyncio.Event()
        connection.add_termination_listener(lambda _: closed.set())
        try:
            await connection.add_listener(channel(self.queue), lambda *_: self._wake.set())
            self._listening = True
            # Notifications sent while we were not listening are lost: look for work now.
            self._wake.set()
            self._log.info("queue_listener_connected")
            while not await wait_for_event(closed, _LISTENER_CHECK):
                await connection.fetchval("SELECT 1", timeout=_LISTENER_CHECK)
            self._log.warning("queue_listener_lost")
        except Exception as error:  # noqa: BLE001 - polling covers for the listener meanwhile
            self._log.warning("queue_listener_failed", error=describe_error(error))
        finally:
            listened, self._listening = self._listening, False
            with contextlib.suppress(Exception):
                await connection.close(timeout=2)
        return listened


def _fields(job: Job, started: float | None = None) -> dict[str, Any]:
    # Never the payload: it may hold secrets.
    fields: dict[str, Any] = {"job_id": job.id, "key": job.key, "attempt": job.attempts}
    if started is not None:
        fields["duration_ms"] = round((time.monotonic() - started) * 1000)
    return fields


def job_exists(
    queue: str, key: sa.ColumnElement[str], *, finished_within: timedelta | None = None, subkeys: bool = False
) -> sa.ColumnElement[bool]:
    """Whether a job of `queue` for `key` is queued or running, or finished (done or dead) within `finished_within`.

    The question other schemas ask of the queue, so that they never spell its columns themselves:
    `key` is an SQL expression, asked of every row of the caller's query (`~job_exists(...)` keeps
    the rows with no such job). With `subkeys`, keys `<key>:<anything>` count too: a queue may key
    one job per attempt at a thing (the verdicts, `<version id>:<run>`).

    The statuses are literals in the SQL, as in the predicate of the partial index `jobs_active_key`
    (queue, key), so that a plan, even a generic one, can use that index to find the queued and
    running jobs (by queue alone with `subkeys`). Finished jobs are a separate EXISTS, so that
    asking about them does not take the index away from the first; no index covers them.
    """
    job_key = sa.func.split_part(jobs.c.key, ":", 1) if subkeys else jobs.c.key
    live = sa.exists().where(jobs.c.queue == queue, job_key == key, _status_in("queued", "running"))
    if finished_within is None:
        return live
    recent = sa.exists().where(
        jobs.c.queue == queue, job_key == key, jobs.c.finished_at >= sa.func.now() - finished_within
    )
    return sa.or_(live, recent)


def _status_in(*statuses: str) -> sa.ColumnElement[bool]:
    # Literals, not parameters: a plan can use a partial index only when its predicate is in the SQL text.
    return jobs.c.status.in_([sa.literal_column(f"'{status}'") for status in statuses])


async def queue_depth(engine: AsyncEngine) -> dict[tuple[str, str], int]:
    """Jobs not done, counted by (queue, status): for metrics, and for alarms on dead jobs."""
    statement = (
        sa.select(jobs.c.queue, jobs.c.status, sa.func.count())
        .where(jobs.c.status != "done")
        .group_by(jobs.c.queue, jobs.c.status)
    )
    async with engine.connect() as connection:
        rows = (await connection.execute(statement)).all()
    return {(queue, status): count for queue, status, count in rows}


async def check_queue(engine: AsyncEngine) -> None:
    """Raise unless the queue table can be read (for readiness checks)."""
    async with engine.connect() as connection:
        await connection.execute(sa.select(jobs.c.id).limit(1))


async def purge_done(engine: AsyncEngine, older_than: timedelta) -> int:
    """Delete `done` jobs that finished more than `older_than` ago; how many were deleted."""
    statement = sa.delete(jobs).where(jobs.c.status == "done", jobs.c.finished_at < sa.func.now() - older_than)
    async with engine.begin() as connection:
        return (await connection.execute(statement)).rowcount
