"""The job queue against the real PostgreSQL: enqueue semantics, wake-up, leases, retries, dead jobs."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, Row, column, literal, make_url, select, text, values
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from common.queue import (
    Job,
    Worker,
    channel,
    check_queue,
    enqueue,
    job_exists,
    jobs,
    metadata,
    purge_done,
    queue_depth,
)
from tests.conftest import Servers
from tests.helpers import WAIT_SECONDS, eventually

LEASE = timedelta(seconds=1)
# A poll interval longer than any wait here: a job found within a wait was found because a
# notification woke the worker, however slow the machine.
NEVER = 3600.0


def no_backoff(_: int) -> timedelta:
    return timedelta(0)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url, pool_size=10, max_overflow=10)
    try:
        yield engine
    finally:
        await engine.dispose()


async def add(engine: AsyncEngine, queue: str, key: str, **options: Any) -> bool:
    async with AsyncSession(engine) as session, session.begin():
        return await enqueue(session, queue, key, {"key": key}, **options)


async def job_rows(engine: AsyncEngine, queue: str = "work") -> list[Row[Any]]:
    async with engine.connect() as connection:
        result = await connection.execute(select(jobs).where(jobs.c.queue == queue).order_by(jobs.c.id))
        return list(result.all())


async def only_job(engine: AsyncEngine, queue: str = "work") -> Row[Any]:
    (row,) = await job_rows(engine, queue)
    return row


async def all_in(engine: AsyncEngine, status: str, count: int = 1, queue: str = "work") -> bool:
    rows = await job_rows(engine, queue)
    return len(rows) == count and all(row.status == status for row in rows)


async def raw_insert(engine: AsyncEngine, key: str, queue: str = "work") -> None:
    """A job inserted behind the queue's back: no NOTIFY."""
    async with engine.begin() as connection:
        await connection.execute(
            jobs.insert().values(queue=queue, key=key, payload={}, status="queued", max_attempts=5)
        )


async def expire_leases(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(text("UPDATE queue.jobs SET lease_expires_at = now() - interval '1 second'"))


@contextlib.asynccontextmanager
async def running(*workers: Worker) -> AsyncIterator[None]:
    for worker in workers:
        await worker.start()
    try:
        yield
    finally:
        for worker in workers:
            await worker.stop(timeout=1)


class Recorder:
    """A handler that records each call, and blocks while `gate` is closed."""

    def __init__(self, *, blocked: bool = False, fail: BaseException | None = None) -> None:
        self.calls: list[Job] = []
        self.times: list[float] = []
        self.cancelled: list[Job] = []
        self.gate = asyncio.Event()
        if not blocked:
            self.gate.set()
        self.fail = fail

    async def __call__(self, job: Job) -> None:
        self.calls.append(job)
        self.times.append(time.monotonic())
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled.append(job)
            raise
        if self.fail is not None:
            raise self.fail

    def called(self, times: int = 1) -> bool:
        return len(self.calls) >= times


async def test_migration_matches_the_table(engine: AsyncEngine) -> None:
    def differences(connection: Connection) -> list[Any]:
        def in_queue_schema(name: str | None, kind: str, _: Any) -> bool:
            return name == "queue" if kind == "schema" else name != "alembic_version"

        options = {"include_schemas": True, "compare_type": True, "include_name": in_queue_schema}
        return list(compare_metadata(MigrationContext.configure(connection, opts=options), metadata))

    async with engine.connect() as connection:
        assert await connection.run_sync(differences) == []


async def test_enqueue_follows_the_callers_transaction(engine: AsyncEngine) -> None:
    listener = await asyncpg.connect(engine.url.set(drivername="postgresql").render_as_string(hide_password=False))
    notifications: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(channel("work"), lambda *args: notifications.put_nowait(args[2]))
    try:
        async with AsyncSession(engine) as session:
            assert await enqueue(session, "work", "rolled-back", {"n": 1})
            await session.rollback()
            assert await job_rows(engine) == []
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(notifications.get(), 0.3)

            async with session.begin():
                assert await enqueue(session, "work", "committed", {"n": 2, "nested": {"ok": True}})
                assert notifications.empty()  # not before the commit
        assert await asyncio.wait_for(notifications.get(), WAIT_SECONDS) == channel("work")
        row = await only_job(engine)
        assert (row.key, row.payload, row.status, row.attempts, row.max_attempts) == (
            "committed",
            {"n": 2, "nested": {"ok": True}},
            "queued",
            0,
            5,
        )
    finally:
        await listener.close()


async def test_same_key_is_a_noop_while_active_and_allowed_after_done(engine: AsyncEngine) -> None:
    assert await add(engine, "work", "v1")
    assert not await add(engine, "work", "v1")
    async with AsyncSession(engine) as session, session.begin():
        assert not await enqueue(session, "work", "v1", {})
        assert await enqueue(session, "work", "v2", {})
    assert await add(engine, "other", "v1")  # keys are per queue
    assert [row.key for row in await job_rows(engine)] == ["v1", "v2"]

    handler = Recorder(blocked=True)
    async with running(Worker(engine, "work", handler, concurrency=2, poll_interval=0.1)):
        await eventually(lambda: handler.called(2))
        assert not await add(engine, "work", "v1")  # running counts as active
        handler.gate.set()
        await eventually(lambda: all_in(engine, "done", 2))
    assert await add(engine, "work", "v1")
    assert [(row.key, row.status) for row in await job_rows(engine)] == [
        ("v1", "done"),
        ("v2", "done"),
        ("v1", "queued"),
    ]


async def test_names_and_limits_are_checked(engine: AsyncEngine) -> None:
    for name in ("Work", "work-queue", "1work", "", "w" * 42):
        with pytest.raises(ValueError, match="invalid queue name"):
            await add(engine, name, "k")
        with pytest.raises(ValueError, match="invalid queue name"):
            Worker(engine, name, Recorder())
    with pytest.raises(ValueError, match="max_attempts"):
        await add(engine, "work", "k", max_attempts=0)
    assert await job_rows(engine) == []


async def test_notify_wakes_an_idle_worker_at_once(engine: AsyncEngine) -> None:
    handler = Recorder()
    worker = Worker(engine, "work", handler, poll_interval=NEVER)
    async with running(worker):
        await eventually(lambda: worker.listening)
        await asyncio.sleep(1)  # let the startup claim find nothing and the worker go idle
        await raw_insert(engine, "silent")
        await asyncio.sleep(0.5)
        assert handler.calls == []  # no busy polling: nothing woke the worker

        assert await add(engine, "work", "loud")
        await eventually(lambda: all_in(engine, "done", 2), message="woken by the notification")
    assert sorted(job.key for job in handler.calls) == ["loud", "silent"]


async def test_polling_finds_a_job_without_notification(engine: AsyncEngine) -> None:
    handler = Recorder()
    worker = Worker(engine, "work", handler, poll_interval=0.2)
    async with running(worker):
        await eventually(lambda: worker.listening)
        await asyncio.sleep(0.3)
        await raw_insert(engine, "silent")
        await eventually(lambda: all_in(engine, "done"), message="found by polling")
    assert [job.key for job in handler.calls] == ["silent"]


async def test_a_delayed_job_waits(engine: AsyncEngine) -> None:
    handler = Recorder()
    async with running(Worker(engine, "work", handler, poll_interval=0.05)):
        await asyncio.sleep(0.2)
        enqueued = time.monotonic()
        assert await add(engine, "work", "later", delay=timedelta(seconds=0.6))
        await eventually(lambda: all_in(engine, "done"))
    assert handler.times[0] - enqueued >= 0.55


async def test_stop_lets_running_handlers_finish_and_claims_no_more(engine: AsyncEngine) -> None:
    finished: list[str] = []

    async def handler(job: Job) -> None:
        await asyncio.sleep(0.3)
        finished.append(job.key)

    async with Worker(engine, "work", handler, concurrency=2, poll_interval=0.05) as worker:
        assert await add(engine, "work", "v1")
        await eventually(lambda: all_in(engine, "running"))
        await worker.stop(timeout=WAIT_SECONDS)
        assert not worker.listening
        assert finished == ["v1"]
        assert await add(engine, "work", "v2")
        await asyncio.sleep(0.3)
    assert [(row.key, row.status) for row in await job_rows(engine)] == [("v1", "done"), ("v2", "queued")]


async def test_concurrent_workers_run_every_job_exactly_once(engine: AsyncEngine) -> None:
    seen: list[str] = []

    async def handler(job: Job) -> None:
        seen.append(job.key)
        await asyncio.sleep(0.01)

    keys = [f"job-{n}" for n in range(200)]
    async with AsyncSession(engine) as session, session.begin():
        for key in keys:
            assert await enqueue(session, "work", key, {"key": key})
    workers = [Worker(engine, "work", handler, concurrency=2, poll_interval=0.2) for _ in range(4)]
    async with running(*workers):
        await eventually(lambda: all_in(engine, "done", 200), within=4 * WAIT_SECONDS)
    assert len(seen) == 200
    assert sorted(seen) == sorted(keys)
    rows = await job_rows(engine)
    assert {row.attempts for row in rows} == {1}
    assert len({row.worker for row in rows}) > 1  # the work was shared


async def test_a_lost_workers_job_is_taken_over_after_its_lease(engine: AsyncEngine) -> None:
    stuck = Recorder(blocked=True)
    lost = Worker(engine, "work", stuck, lease=LEASE, poll_interval=0.1)
    await lost.start()
    assert await add(engine, "work", "v1")
    await eventually(stuck.called)
    await lost.stop(timeout=0.05)  # the handler is cancelled and the job left to its lease
    assert len(stuck.cancelled) == 1
    row = await only_job(engine)
    assert (row.status, row.worker, row.attempts) == ("running", lost.id, 1)

    handler = Recorder()
    rescuer = Worker(engine, "work", handler, lease=LEASE, poll_interval=0.1)
    async with running(rescuer):
        await eventually(lambda: all_in(engine, "done"))
    row = await only_job(engine)
    assert (row.status, row.worker, row.attempts) == ("done", rescuer.id, 2)
    assert [job.attempts for job in handler.calls] == [2]
    assert row.finished_at is not None
    assert row.lease_expires_at is None


async def test_failures_are_retried_then_dead_with_one_alarm(engine: AsyncEngine) -> None:
    handler = Recorder(fail=ValueError("boom\nwith a second line"))
    alarms: list[tuple[Job, str]] = []

    async def on_dead(job: Job, error: str) -> None:
        alarms.append((job, error))
        raise RuntimeError("the alarm itself is broken")

    worker = Worker(engine, "work", handler, poll_interval=0.1, retry_backoff=no_backoff, on_dead=on_dead)
    async with running(worker):
        assert await add(engine, "work", "v1", max_attempts=3)
        await eventually(lambda: all_in(engine, "dead"))
        # The worker survives its broken on_dead and goes on with other jobs.
        handler.fail = None
        assert await add(engine, "work", "v2")
        await eventually(lambda: handler.called(4))
        await eventually(lambda: _key_done(engine, "v2"))

    assert [(job.key, job.attempts) for job in handler.calls] == [("v1", 1), ("v1", 2), ("v1", 3), ("v2", 1)]
    dead = (await job_rows(engine))[0]
    assert (dead.status, dead.attempts, dead.last_error) == ("dead", 3, "ValueError: boom with a second line")
    assert dead.finished_at is not None
    assert len(alarms) == 1
    job, error = alarms[0]
    assert (job.key, job.attempts, job.max_attempts, error) == ("v1", 3, 3, dead.last_error)


async def _key_done(engine: AsyncEngine, key: str) -> bool:
    return any(row.key == key and row.status == "done" for row in await job_rows(engine))


async def test_retries_wait_for_the_backoff(engine: AsyncEngine) -> None:
    handler = Recorder(fail=RuntimeError("first try fails"))
    asked: list[int] = []

    def backoff(attempt: int) -> timedelta:
        asked.append(attempt)
        handler.fail = None
        return timedelta(seconds=0.5)

    async with running(Worker(engine, "work", handler, poll_interval=0.05, retry_backoff=backoff)):
        assert await add(engine, "work", "v1")
        await eventually(lambda: all_in(engine, "done"))
    assert asked == [1]
    assert [job.attempts for job in handler.calls] == [1, 2]
    assert handler.times[1] - handler.times[0] >= 0.45
    row = await only_job(engine)
    assert (row.attempts, row.last_error) == (2, "RuntimeError: first try fails")


async def test_a_job_whose_lease_expired_at_its_last_attempt_is_reaped_dead(engine: AsyncEngine) -> None:
    stuck = Recorder(blocked=True)
    lost = Worker(engine, "work", stuck, lease=LEASE, poll_interval=0.1)
    await lost.start()
    assert await add(engine, "work", "v1", max_attempts=1)
    await eventually(stuck.called)
    await lost.stop(timeout=0.05)

    alarms: list[tuple[Job, str]] = []

    async def on_dead(job: Job, error: str) -> None:
        alarms.append((job, error))

    handler = Recorder()
    async with running(Worker(engine, "work", handler, lease=LEASE, poll_interval=0.1, on_dead=on_dead)):
        await eventually(lambda: all_in(engine, "dead"))
        await asyncio.sleep(0.3)  # long enough for a second, wrong alarm to show
    row = await only_job(engine)
    assert (row.attempts, row.last_error, row.worker) == (1, "lease expired: worker lost", lost.id)
    assert row.finished_at is not None
    assert handler.calls == []
    assert [(job.key, job.attempts, error) for job, error in alarms] == [("v1", 1, "lease expired: worker lost")]


async def test_a_stale_worker_cannot_settle_a_job_taken_over(engine: AsyncEngine) -> None:
    slow = Recorder(blocked=True)
    stale = Worker(engine, "work", slow, lease=timedelta(seconds=30), poll_interval=0.1)
    fresh_handler = Recorder(blocked=True)
    fresh = Worker(engine, "work", fresh_handler, lease=timedelta(seconds=30), poll_interval=0.1)
    async with running(stale):
        assert await add(engine, "work", "v1")
        await eventually(slow.called)
        async with running(fresh):
            await asyncio.sleep(0.3)
            assert fresh_handler.calls == []  # not while the lease holds
            await expire_leases(engine)  # as if the stale worker had stalled past its lease
            await eventually(fresh_handler.called)
            assert fresh_handler.calls[0].attempts == 2

            slow.gate.set()
            await stale.stop(timeout=5)  # its handler returned and its outcome write has run
            assert slow.cancelled == []
            row = await only_job(engine)
            assert (row.status, row.worker, row.attempts) == ("running", fresh.id, 2)

            fresh_handler.gate.set()
            await eventually(lambda: all_in(engine, "done"))
    row = await only_job(engine)
    assert (row.worker, row.attempts) == (fresh.id, 2)


@pytest.mark.slow  # a job three leases long, and leases long enough for a loaded machine's heartbeats
async def test_heartbeat_keeps_a_long_job_from_being_taken_over(engine: AsyncEngine) -> None:
    lease = 3 * LEASE  # a beat every lease / 3: one may come a lease late before the job is lost

    async def long_job(job: Job) -> None:
        await asyncio.sleep(3 * lease.total_seconds())

    rival = Recorder()
    owner = Worker(engine, "work", long_job, lease=lease, poll_interval=0.1)
    async with running(owner):
        assert await add(engine, "work", "v1")
        await eventually(lambda: all_in(engine, "running"))
        async with running(Worker(engine, "work", rival, lease=lease, poll_interval=0.1)):
            await eventually(lambda: all_in(engine, "done"), within=2 * WAIT_SECONDS)
    row = await only_job(engine)
    assert (row.worker, row.attempts) == (owner.id, 1)
    assert rival.calls == []


async def test_a_handler_whose_job_was_taken_over_is_cancelled(engine: AsyncEngine) -> None:
    handler = Recorder(blocked=True)
    worker = Worker(engine, "work", handler, lease=timedelta(seconds=1.5), poll_interval=0.1)
    async with running(worker):
        assert await add(engine, "work", "v1")
        await eventually(handler.called)
        async with engine.begin() as connection:  # what another worker's claim after an expiry does
            await connection.execute(text("UPDATE queue.jobs SET worker = 'someone-else', attempts = attempts + 1"))
        await eventually(lambda: bool(handler.cancelled))
        row = await only_job(engine)
        assert (row.status, row.worker, row.attempts, row.last_error) == ("running", "someone-else", 2, None)

        handler.gate.set()
        assert await add(engine, "work", "v2")
        await eventually(lambda: _key_done(engine, "v2"))
    assert [job.key for job in handler.calls] == ["v1", "v2"]


async def test_worker_survives_losing_its_listen_connection(engine: AsyncEngine, servers: Servers) -> None:
    handler = Recorder()
    worker = Worker(engine, "work", handler, poll_interval=NEVER)
    database = make_url(str(engine.url)).database
    admin = await servers.admin()

    async def listener_pids() -> list[int]:
        rows = await admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
            database,
            "depot queue listener work",
        )
        return [row["pid"] for row in rows]

    try:
        async with running(worker):
            await eventually(lambda: worker.listening)
            (old,) = await listener_pids()
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", old)
            await eventually(lambda: not worker.listening)
            await eventually(lambda: worker.listening)
            (new,) = await listener_pids()
            assert new != old

            await asyncio.sleep(0.3)
            assert await add(engine, "work", "after")
            await eventually(lambda: all_in(engine, "done"), message="woken by the new LISTEN connection")
    finally:
        await admin.close()
    assert [job.key for job in handler.calls] == ["after"]


async def test_worker_survives_losing_all_its_connections(
    engine: AsyncEngine, database_url: str, servers: Servers
) -> None:
    # As in a database restart, but for this worker alone: its pooled connections die as well.
    victim = "queue test victim"
    worker_engine = create_async_engine(database_url, connect_args={"server_settings": {"application_name": victim}})
    handler = Recorder()
    worker = Worker(worker_engine, "work", handler, poll_interval=NEVER)
    admin = await servers.admin()
    try:
        async with running(worker):
            await eventually(lambda: worker.listening)

            async def pooled() -> bool:  # the startup claim has left a connection in the pool
                count = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
                return bool(await admin.fetchval(count, victim) == 1)

            await eventually(pooled)
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name IN ($1, $2)",
                victim,
                "depot queue listener work",
            )
            assert killed == 2
            await eventually(lambda: not worker.listening)
            await eventually(lambda: worker.listening)
            assert await add(engine, "work", "after")
            # The claim on a dead connection failed, and the loop went on, long before its poll.
            await eventually(lambda: all_in(engine, "done"), message="the job, after the connections died")
    finally:
        await admin.close()
        await worker_engine.dispose()
    assert [job.key for job in handler.calls] == ["after"]


async def test_queue_depth_purge_and_readiness(engine: AsyncEngine, database_url: str) -> None:
    for key in ("a1", "a2", "a3", "a4"):
        assert await add(engine, "alpha", key)
    for key in ("b1", "b2"):
        assert await add(engine, "beta", key)
    async with engine.begin() as connection:
        await connection.execute(
            text("""
            UPDATE queue.jobs SET status = CASE key
                WHEN 'a1' THEN 'done' WHEN 'a2' THEN 'done' WHEN 'a3' THEN 'running' WHEN 'b1' THEN 'dead' END,
                finished_at = CASE key WHEN 'a1' THEN now() - interval '2 days' WHEN 'a2' THEN now() END
            WHERE key IN ('a1', 'a2', 'a3', 'b1')
        """)
        )
    assert await queue_depth(engine) == {
        ("alpha", "running"): 1,
        ("alpha", "queued"): 1,
        ("beta", "dead"): 1,
        ("beta", "queued"): 1,
    }
    assert await purge_done(engine, timedelta(days=1)) == 1
    assert sorted(row.key for row in await job_rows(engine, "alpha")) == ["a2", "a3", "a4"]
    assert await purge_done(engine, timedelta(days=1)) == 0

    await check_queue(engine)
    elsewhere = create_async_engine(make_url(database_url).set(database="no_such_database"))
    try:
        with pytest.raises(DBAPIError):
            await check_queue(elsewhere)
    finally:
        await elsewhere.dispose()


async def test_job_exists_finds_live_recent_and_suffixed_jobs(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            text("""
            INSERT INTO queue.jobs (queue, key, payload, status, max_attempts, finished_at) VALUES
                ('work', 'queued', '{}', 'queued', 5, NULL), ('work', 'running', '{}', 'running', 5, NULL),
                ('work', 'done-now', '{}', 'done', 5, now()), ('work', 'dead-now', '{}', 'dead', 5, now()),
                ('work', 'done-long-ago', '{}', 'done', 5, now() - interval '1 day'),
                ('work', 'run:1', '{}', 'queued', 5, NULL), ('work', 'old-run:1', '{}', 'done', 5, now()),
                ('other', 'elsewhere', '{}', 'queued', 5, NULL)
        """)
        )
    asked = ["queued", "running", "done-now", "dead-now", "done-long-ago", "run", "old-run", "elsewhere", "never"]
    keys = values(column("key"), name="asked").data([(key,) for key in asked])

    async def found(**options: Any) -> set[str]:
        async with engine.connect() as connection:
            rows = await connection.execute(select(keys.c.key).where(job_exists("work", keys.c.key, **options)))
            return {key for (key,) in rows}

    assert await found() == {"queued", "running"}
    assert await found(finished_within=timedelta(minutes=5)) == {"queued", "running", "done-now", "dead-now"}
    assert await found(subkeys=True) == {"queued", "running", "run"}
    assert await found(subkeys=True, finished_within=timedelta(minutes=5)) == {
        "queued", "running", "done-now", "dead-now", "run", "old-run",
    }  # fmt: skip


@pytest.mark.parametrize("options", [{}, {"finished_within": timedelta(minutes=5)}, {"subkeys": True}])
async def test_job_exists_lets_even_a_generic_plan_use_the_partial_index(
    engine: AsyncEngine, options: dict[str, Any]
) -> None:
    # A generic plan knows no parameter's value: only literals in the SQL prove a partial index's predicate.
    compiled = select(literal(1)).where(job_exists("work", literal("key"), **options)).compile(engine)
    arguments = ", ".join(f"'{compiled.params[name]}'" for name in compiled.positiontup or ())
    async with engine.connect() as connection:
        await connection.exec_driver_sql("SET enable_seqscan = off")
        await connection.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        await connection.exec_driver_sql(f"PREPARE asked AS {compiled}")
        plan = "\n".join(row[0] for row in await connection.exec_driver_sql(f"EXPLAIN EXECUTE asked({arguments})"))
    assert "jobs_active_key" in plan, plan
