"""Readiness and errors while PostgreSQL or S3 is down, and recovery when it returns.

These tests stop servers, so they get a PostgreSQL and an S3 server of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import sqlalchemy as sa
from sqlalchemy import text
from starlette.applications import Starlette

from common import migrations
from common.api import Call, Operation
from common.app import create_service_app
from common.health import Readiness
from common.reads import Query
from devstack.postgres import EmbeddedPostgres, ensure_role_and_database
from devstack.processes import free_port
from devstack.s3 import EmbeddedS3, S3Credentials
from devstack.tokens import TokenSigner
from package_service.app import create_app as create_package_app
from package_service.settings import PackageSettings
from tests.conftest import Servers, free_s3_block, server_root
from tests.helpers import WAIT_SECONDS, eventually, in_process, real_server, service_settings

# Servers of their own, stopped and started again: the slow tier.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def own_servers() -> Iterator[Servers]:
    with server_root() as root:
        yield from _own_servers(root)


def _own_servers(root: Path) -> Iterator[Servers]:
    postgres = EmbeddedPostgres(root / "postgres", free_port())
    s3 = EmbeddedS3(root / "s3", free_s3_block(), S3Credentials.load_or_create(root / "s3.json"))
    postgres.start()
    s3.start()
    try:
        password = uuid.uuid4().hex
        asyncio.run(ensure_role_and_database(postgres.dsn(), role="depot", password=password, database="depot"))
        servers = Servers(postgres, s3, password)
        asyncio.run(migrations.upgrade(servers.database_url("depot")))
        yield servers
    finally:
        s3.stop()
        postgres.stop()


async def count_rows(call: Call[None, None]) -> Readiness:
    value = (await call.db.execute(text("SELECT count(*) FROM queue.jobs"))).scalar_one()
    return Readiness(status="ok", checks={"rows": str(value)})


JOBS = sa.table("jobs", schema="queue")
COUNT_JOBS = Query(sa.select(sa.func.count().label("rows")).select_from(JOBS))
SLOW_COUNT = Query(
    sa.select(sa.select(sa.func.count()).select_from(JOBS).scalar_subquery().label("rows")).select_from(
        sa.func.pg_sleep(sa.bindparam("seconds"))
    )
)


async def read_rows(call: Call[None, None]) -> Readiness:
    """The same, as an operation that only reads (`common.reads`: no transaction, no session)."""
    seconds = call.request.query_params.get("sleep")
    row = await (
        call.reads.first(COUNT_JOBS) if seconds is None else call.reads.first(SLOW_COUNT, seconds=float(seconds))
    )
    assert row is not None
    return Readiness(status="ok", checks={"rows": str(row.rows)})


def outage_operations() -> list[Operation]:
    return [
        Operation("GET", "/rows", count_rows, "Read the database.", auth="none", response=Readiness),
        Operation("GET", "/read", read_rows, "Read it outside a transaction.", auth="none", response=Readiness,
                  read_only=True),
    ]  # fmt: skip


@pytest.fixture
async def client(own_servers: Servers) -> AsyncIterator[httpx.AsyncClient]:
    bucket = "outage"
    settings = PackageSettings(
        **service_settings(own_servers, own_servers.database_url("depot"), bucket, ready_check_timeout_seconds=1.0)
    )
    app = create_service_app(
        service="package_service", prefix="/packages", settings=settings, operations=outage_operations(),
        uses_queue=True,
    )  # fmt: skip
    async with in_process(app) as client:
        await app.state.resources.s3.client.create_bucket(Bucket=bucket)
        yield client


async def wait_ready(client: httpx.AsyncClient) -> httpx.Response:
    async def ready() -> httpx.Response | None:
        response = await client.get("/packages/health/ready")
        return response if response.status_code == 200 else None

    return await eventually(ready, within=2 * WAIT_SECONDS, interval=0.2, message="ready")


async def test_database_outage_gives_503_and_recovers(own_servers: Servers, client: httpx.AsyncClient) -> None:
    assert (await wait_ready(client)).json()["checks"] == {"database": "ok", "s3": "ok", "queue": "ok"}
    assert (await client.get("/packages/rows")).status_code == 200

    await asyncio.to_thread(own_servers.postgres.stop)
    ready = await client.get("/packages/health/ready")
    assert ready.status_code == 503
    assert ready.headers["content-type"] == "application/problem+json"
    assert int(ready.headers["retry-after"]) >= 1
    body = ready.json()
    assert body["checks"]["database"] != "ok"
    assert body["checks"]["queue"] != "ok"
    assert body["checks"]["s3"] == "ok"
    assert "database" in body["detail"]
    assert "127.0.0.1" not in ready.text

    for path in ("/packages/rows", "/packages/read"):
        during = await client.get(path)
        assert during.status_code == 503, "a database that went away is a 503, never a 500"
        assert during.headers["retry-after"]
    assert (await client.get("/packages/health")).status_code == 200, "liveness checks no dependency"

    await asyncio.to_thread(own_servers.postgres.start)
    await wait_ready(client)
    assert (await client.get("/packages/rows")).status_code == 200
    assert (await client.get("/packages/read")).status_code == 200


async def rows_at_once(client: httpx.AsyncClient, count: int = 8) -> list[int]:
    """The statuses of `count` reads sent together (so that several pooled connections are used), in a
    transaction and outside one, half each."""
    paths = ["/packages/rows", "/packages/read"] * (count // 2)
    responses = await asyncio.gather(*(client.get(path) for path in paths))
    return [response.status_code for response in responses]


async def test_the_first_requests_after_a_database_restart_succeed(
    own_servers: Servers, client: httpx.AsyncClient
) -> None:
    """No ping per checkout: the connections that the restart closed are replaced as they are taken
    from the pool, so not even the first requests after the restart fail."""
    await wait_ready(client)
    assert await rows_at_once(client) == [200] * 8

    await asyncio.to_thread(own_servers.postgres.stop)
    await asyncio.to_thread(own_servers.postgres.start)
    assert await rows_at_once(client) == [200] * 8


async def test_terminated_connections_are_replaced_without_an_error(
    own_servers: Servers, client: httpx.AsyncClient
) -> None:
    await wait_ready(client)
    assert await rows_at_once(client) == [200] * 8
    admin = await own_servers.admin()
    try:
        backends = "FROM pg_stat_activity WHERE application_name = 'depot-package_service'"
        assert await admin.fetchval(f"SELECT count(*) {backends}") >= 2
        await admin.execute(f"SELECT pg_terminate_backend(pid) {backends}")

        async def gone() -> bool:
            return await admin.fetchval(f"SELECT count(*) {backends}") == 0

        await eventually(gone, message="the service's backends ended")
    finally:
        await admin.close()
    assert await rows_at_once(client) == [200] * 8


async def test_a_read_whose_connection_is_dropped_under_it_is_retried(
    own_servers: Servers, client: httpx.AsyncClient
) -> None:
    """A read has no effect that could happen twice: one whose backend is terminated while its
    statement runs is run again on another connection, and the caller sees only the answer."""
    await wait_ready(client)
    read = asyncio.create_task(client.get("/packages/read", params={"sleep": "1"}))
    admin = await own_servers.admin()
    try:
        sleeping = "FROM pg_stat_activity WHERE application_name = 'depot-package_service' AND query LIKE '%pg_sleep%'"

        async def running() -> int:
            found: int = await admin.fetchval(f"SELECT pid {sleeping} AND state = 'active' LIMIT 1")
            return found

        pid = await eventually(running, message="the read's statement runs")
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()
    response = await read
    assert response.status_code == 200, response.text
    assert response.json()["checks"] == {"rows": "0"}


async def test_s3_outage_gives_503_and_recovers(own_servers: Servers, client: httpx.AsyncClient) -> None:
    await wait_ready(client)
    await asyncio.to_thread(own_servers.s3.stop)
    ready = await client.get("/packages/health/ready")
    assert ready.status_code == 503
    checks = ready.json()["checks"]
    assert checks["s3"] in {"unavailable", "timeout"}
    assert (checks["database"], checks["queue"]) == ("ok", "ok")
    assert ready.json()["detail"] == "Not ready: s3."

    await asyncio.to_thread(own_servers.s3.start)
    assert (await wait_ready(client)).json()["status"] == "ok"


def server_processes(pid: int) -> list[psutil.Process]:
    """A server's process and all its children (PostgreSQL's backends are processes of their own)."""
    process = psutil.Process(pid)
    return [process, *process.children(recursive=True)]


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    """The server stopped dead (SIGSTOP), as a hung host would be: connections open, no answer."""
    processes = server_processes(pid)
    for process in processes:
        process.suspend()
    try:
        yield
    finally:
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.resume()


async def head_bucket(call: Call[None, None]) -> Readiness:
    await call.resources.s3.client.head_bucket(Bucket="outage")
    return Readiness(status="ok", checks={"bucket": "ok"})


@pytest.fixture
async def bounded_client(own_servers: Servers) -> AsyncIterator[httpx.AsyncClient]:
    """The service with short bounds, so that the test is quick: requests 3 s, statements 1 s."""
    settings = PackageSettings(
        **service_settings(
            own_servers, own_servers.database_url("depot"), "outage", ready_check_timeout_seconds=1.0,
            request_timeout_seconds=3.0, db_statement_timeout_ms=1000,
        )
    )  # fmt: skip
    operations = [
        *outage_operations(),
        Operation("GET", "/bucket", head_bucket, "Ask S3.", auth="none", response=Readiness),
    ]
    app = create_service_app(service="package_service", prefix="/packages", settings=settings, operations=operations)
    async with in_process(app) as client:
        await app.state.resources.s3.client.create_bucket(Bucket="outage")
        yield client


async def timed(client: httpx.AsyncClient, path: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await client.get(path)
    return response, time.monotonic() - started


@pytest.mark.parametrize("path", ["/packages/rows", "/packages/read", "/packages/bucket"])
async def test_a_frozen_dependency_is_a_503_within_the_bound_not_a_hang(
    own_servers: Servers, bounded_client: httpx.AsyncClient, path: str
) -> None:
    assert (await bounded_client.get(path)).status_code == 200
    pid = s3_pid(own_servers) if path.endswith("bucket") else postgres_pid(own_servers)
    with frozen(pid):
        response, seconds = await timed(bounded_client, path)
        assert response.status_code == 503, response.text
        assert int(response.headers["retry-after"]) >= 1
        # The bound is the request deadline (3 s here), plus a rollback bounded by the statement timeout.
        assert seconds < 3 + 1 + 2 + 5, f"answered after {seconds:.1f} s"
    async with asyncio.timeout(60):
        while (await bounded_client.get(path)).status_code != 200:
            await asyncio.sleep(0.5)


def postgres_pid(servers: Servers) -> int:
    return int((servers.postgres.data / "postmaster.pid").read_text().split("\n", 1)[0])


def s3_pid(servers: Servers) -> int:
    return servers.s3.pid


async def test_a_download_waiting_on_s3_blocks_no_metadata_write(own_servers: Servers) -> None:
    """With S3 frozen, a download waits on it; edits and a yank of that version go through meanwhile,
    since no row lock is held while S3 answers (counting comes after S3)."""
    signer = TokenSigner()
    settings = PackageSettings(
        **service_settings(own_servers, own_servers.database_url("depot"), "locks", auth_public_keys=signer.public_pem)
    )
    owner, admin = signer.headers("olivia"), signer.headers("ada", roles=["admin"])
    app = create_package_app(settings)
    async with real_server(app) as url, httpx.AsyncClient(base_url=url, timeout=120) as client:
        await app.state.resources.s3.client.create_bucket(Bucket="locks")
        put = await client.put("/packages/held/versions/1.0.0/content", content=b"weights", headers=owner)
        assert put.status_code == 201, put.text
        async with app.state.resources.engine.begin() as connection:
            await connection.exec_driver_sql("UPDATE packages.versions SET status = 'available'")

        with frozen(s3_pid(own_servers)):
            download = asyncio.create_task(client.get("/packages/held/versions/1.0.0/content", headers=admin))
            await asyncio.sleep(1)  # the download is now waiting on S3
            assert not download.done()
            async with asyncio.timeout(8):  # a held lock would keep these until S3's own timeouts (30 s and more)
                edited = await client.patch("/packages/held", json={"description": "edited"}, headers=owner)
                tagged = await client.patch(
                    "/packages/held/versions/1.0.0", json={"metadata": {"k": "v"}}, headers=owner
                )
                yanked = await client.post("/packages/held/versions/1.0.0/yank", json={"reason": "x"}, headers=owner)
            assert (edited.status_code, tagged.status_code, yanked.status_code) == (200, 200, 200)
        assert (await download).status_code in {200, 503}


async def presigned_upload(
    client: httpx.AsyncClient, headers: dict[str, str], path: str, data: bytes
) -> tuple[dict[str, object], str]:
    """A presigned upload started at `path` (`/packages/{name}/versions/{version}`) with all its bytes
    in S3: the upload and the URL that completes it."""
    started = await client.post(
        f"{path}/uploads", json={"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}, headers=headers
    )
    assert started.status_code == 201, started.text
    upload = started.json()
    async with httpx.AsyncClient() as s3:
        sent = await s3.put(upload["parts"][0]["url"], content=data)
    assert sent.status_code == 200, sent.text
    upload["etags"] = [{"part_number": 1, "etag": sent.headers["etag"]}]
    return upload, f"{path}/uploads/{upload['upload_id']}"


@contextlib.asynccontextmanager
async def locks_app(own_servers: Servers) -> AsyncIterator[tuple[httpx.AsyncClient, TokenSigner, Starlette]]:
    """package_service over real HTTP, its bucket made."""
    signer = TokenSigner()
    settings = PackageSettings(
        **service_settings(own_servers, own_servers.database_url("depot"), "locks", auth_public_keys=signer.public_pem)
    )
    app = create_package_app(settings)
    async with real_server(app) as url, httpx.AsyncClient(base_url=url, timeout=120) as client:
        await app.state.resources.s3.client.create_bucket(Bucket="locks")
        yield client, signer, app


async def test_a_presigned_completion_waiting_on_s3_blocks_no_metadata_write(own_servers: Servers) -> None:
    """With S3 frozen, a completion waits on it; edits, a yank, and an abort or another completion of
    the same upload are answered meanwhile: the completion claimed the upload and holds no lock."""
    async with locks_app(own_servers) as (client, signer, app):
        owner = signer.headers("olivia")
        put = await client.put("/packages/held/versions/1.0.0/content", content=b"weights", headers=owner)
        assert put.status_code == 201, put.text
        async with app.state.resources.engine.begin() as connection:
            await connection.exec_driver_sql("UPDATE packages.versions SET status = 'available'")
        upload, path = await presigned_upload(client, owner, "/packages/held/versions/2.0.0", b"new weights")
        body = {"parts": upload["etags"]}

        with frozen(s3_pid(own_servers)):
            completion = asyncio.create_task(client.post(f"{path}/complete", json=body, headers=owner))
            await asyncio.sleep(1)  # the completion is now waiting on S3
            assert not completion.done()
            async with asyncio.timeout(8):  # a held lock would keep these until S3's own timeouts (30 s and more)
                edited = await client.patch("/packages/held", json={"description": "edited"}, headers=owner)
                yanked = await client.post("/packages/held/versions/1.0.0/yank", json={"reason": "x"}, headers=owner)
                aborted = await client.delete(path, headers=owner)
                again = await client.post(f"{path}/complete", json=body, headers=owner)
            assert (edited.status_code, yanked.status_code) == (200, 200)
            assert (aborted.status_code, again.status_code) == (409, 409), "being completed: a clear answer"
        completed = await completion
        assert completed.status_code == 201, completed.text
        async with app.state.resources.engine.begin() as connection:
            rows = await connection.exec_driver_sql("SELECT count(*) FROM packages.uploads")
            assert rows.scalar_one() == 0
        assert (await client.get(path, headers=owner)).status_code == 404


async def test_a_presigned_abort_or_start_waiting_on_s3_blocks_nothing(own_servers: Servers) -> None:
    """With S3 frozen, an abort and a start (of a new package) wait on it; a completion of the upload
    being aborted, an edit and the creation of the package being started are answered meanwhile."""
    async with locks_app(own_servers) as (client, signer, app):
        owner = signer.headers("olivia")
        upload, path = await presigned_upload(client, owner, "/packages/held/versions/1.0.0", b"weights")
        new = {"size": 7, "sha256": hashlib.sha256(b"weights").hexdigest()}

        with frozen(s3_pid(own_servers)):
            abort = asyncio.create_task(client.delete(path, headers=owner))
            start = asyncio.create_task(client.post("/packages/fresh/versions/1.0.0/uploads", json=new, headers=owner))
            await asyncio.sleep(1)  # both are now waiting on S3
            assert not abort.done()
            assert not start.done()
            async with asyncio.timeout(8):
                completed = await client.post(f"{path}/complete", json={"parts": upload["etags"]}, headers=owner)
                edited = await client.patch("/packages/held", json={"description": "edited"}, headers=owner)
                created = await client.post("/packages", json={"name": "fresh"}, headers=owner)
            assert completed.status_code == 404, "aborted already: no such upload"
            assert (edited.status_code, created.status_code) == (200, 201)
        assert (await abort).status_code == 204
        started = await start
        assert started.status_code == 201, started.text
        async with app.state.resources.engine.begin() as connection:
            uploads = await connection.exec_driver_sql("SELECT s3_key FROM packages.uploads")
            assert uploads.scalars().all() == [f"versions/{started.json()['upload_id']}"]
            orphans = await connection.exec_driver_sql("SELECT s3_key FROM packages.orphans")
            assert orphans.scalars().all() == [f"versions/{started.json()['upload_id']}"], "the abort's key forgotten"
        listed = await app.state.resources.s3.client.list_multipart_uploads(Bucket="locks")
        assert [item["Key"] for item in listed.get("Uploads", [])] == [f"versions/{started.json()['upload_id']}"]


async def test_an_orphan_sweep_waiting_on_s3_holds_no_lock(own_servers: Servers) -> None:
    """With S3 frozen, the janitor's deletion of orphaned bytes waits on it without holding their rows:
    they were marked first (and a marked key is never taken over by a version)."""
    async with locks_app(own_servers) as (_client, _signer, app):
        engine = app.state.resources.engine
        async with engine.begin() as connection:
            await connection.exec_driver_sql(
                "INSERT INTO packages.orphans (s3_key, created_at) VALUES ('versions/old', now() - interval '1 day')"
            )
        with frozen(s3_pid(own_servers)):
            sweep = asyncio.create_task(app.state.workers.delete_orphans())
            await asyncio.sleep(1)  # the sweep is now waiting on S3
            assert not sweep.done()
            async with engine.begin() as connection:
                # NOWAIT: a row held by the sweep is an error at once.
                held = "SELECT sweep_started_at IS NOT NULL FROM packages.orphans WHERE s3_key = 'versions/old'"
                marked = await connection.exec_driver_sql(f"{held} FOR UPDATE NOWAIT")
                assert marked.scalar_one() is True
        assert await sweep == (1, 0)
        async with engine.begin() as connection:
            assert (await connection.exec_driver_sql("SELECT count(*) FROM packages.orphans")).scalar_one() == 0
