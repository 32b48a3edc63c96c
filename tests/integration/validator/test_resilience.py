"""Validation never loses a job and never turns an outage into a verdict.

A validator process killed mid-job leaves its job to be taken over after the lease; an S3 that
goes away gives `error` reports and retries, then the verdict once it is back; a job that fails
at every attempt is dead and its report says so.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from common.contracts import VALIDATION_QUEUE
from common.queue import Worker, enqueue
from devstack.processes import free_port, spawn, stop, tail, wait_for_port
from tests.conftest import Servers, server_root
from tests.helpers import eventually
from tests.integration.test_outages import _own_servers
from tests.integration.validator.conftest import Depot, checks_of, open_depot, zip_of

# A validator process killed mid-job, S3 stopped and started: the slow tier. Leases, retries and
# server restarts take tens of seconds here, minutes on a loaded machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def slow_pickle(opcodes: int) -> bytes:
    """A benign pickle that takes the scanner a while: `opcodes` pushes and pops of None."""
    return b"\x80\x04" + b"N0" * opcodes + b"N."


async def job_row(depot: Depot, version_id: str) -> Any:
    engine = depot.validator_app.state.resources.engine
    async with engine.connect() as connection:
        result = await connection.exec_driver_sql(
            "SELECT status, attempts, worker FROM queue.jobs WHERE queue = 'validation' AND key = $1 "
            "ORDER BY id DESC LIMIT 1",
            (version_id,),
        )
        return result.one()


async def report_status(depot: Depot, name: str, version: str) -> str:
    response = await depot.report(name, version)
    return str(response.json()["status"]) if response.status_code == 200 else f"http {response.status_code}"


def environment(settings: dict[str, Any]) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DEPOT_")}
    env.update({f"DEPOT_{key.upper()}": str(value) for key, value in settings.items()})
    return env


async def test_a_validator_killed_mid_job_leaves_the_job_to_another(depot: Depot, tmp_path: Path) -> None:
    in_process_worker: Worker = depot.validator_app.state.validation.worker
    await in_process_worker.stop()  # the job must go to the process we kill
    await depot.create("pkg")
    await depot.upload("pkg", "1.0.0", slow_pickle(4_000_000), filename="model.pkl")
    version_id = await version_id_of(depot, "pkg", "1.0.0")

    port = free_port()
    log = tmp_path / "validator.log"
    settings = depot.validator_settings | {"validation_lease_seconds": 2, "validation_workers": 1}
    with log.open("wb") as output:
        process = spawn(
            [sys.executable, "-m", "uvicorn", "--factory", "validator_service.app:create_app", "--port", str(port)],
            env=environment(settings), output=output,
        )  # fmt: skip
    try:
        wait_for_port(port, process, 120)

        async def running() -> bool:
            return await report_status(depot, "pkg", "1.0.0") == "running"

        await eventually(running, within=120, interval=0.1)
        process.send_signal(signal.SIGKILL)
        process.wait(60)
    finally:
        stop(process)
    job = await job_row(depot, version_id)
    assert (job.status, job.attempts) == ("running", 1), tail(log)
    assert await report_status(depot, "pkg", "1.0.0") == "running"

    await in_process_worker.start()  # takes the job over once the dead worker's lease has expired
    decided = await depot.decided("pkg", "1.0.0", timeout=120)
    assert decided["status"] == "available"
    job = await job_row(depot, version_id)
    assert (job.status, job.attempts) == ("done", 2)
    assert job.worker == in_process_worker.id


async def version_id_of(depot: Depot, name: str, version: str) -> str:
    engine = depot.validator_app.state.resources.engine
    async with engine.connect() as connection:
        result = await connection.exec_driver_sql(
            "SELECT v.id::text FROM packages.versions v JOIN packages.packages p ON p.id = v.package_id "
            "WHERE p.name = $1 AND v.version = $2",
            (name, version),
        )
        return str(result.scalar_one())


@pytest.fixture
def own_servers() -> Iterator[Servers]:
    with server_root() as root:
        yield from _own_servers(root)


@pytest.fixture
async def outage_depot(own_servers: Servers, tmp_path: Path) -> AsyncIterator[Depot]:
    bucket = "outage"
    async with open_depot(own_servers, own_servers.database_url("depot"), bucket, tmp_path) as opened:
        s3 = opened.validator_app.state.resources.s3
        await s3.client.create_bucket(Bucket=bucket)
        yield opened


async def test_an_s3_outage_gives_error_reports_then_the_verdict(own_servers: Servers, outage_depot: Depot) -> None:
    depot = outage_depot
    worker: Worker = depot.validator_app.state.validation.worker
    await worker.stop()
    await depot.create("pkg")
    await depot.upload("pkg", "1.0.0", zip_of({"a.txt": b"a" * 1000}), filename="a.zip")
    await depot.upload("pkg", "2.0.0", zip_of({"b.txt": b"b"}), filename="b.zip")
    doomed = await version_id_of(depot, "pkg", "2.0.0")
    engine = depot.validator_app.state.resources.engine
    async with engine.begin() as connection:
        # 2.0.0 gets one attempt only: it goes dead during the outage.
        await connection.exec_driver_sql("DELETE FROM queue.jobs WHERE key = $1", (doomed,))
    payload = await depot.version("pkg", "2.0.0")
    sessions = depot.validator_app.state.resources.sessions
    async with sessions() as db, db.begin():
        await enqueue(
            db, "validation", doomed, {
                "version_id": doomed, "package": "pkg", "version": "2.0.0", "s3_key": f"versions/{doomed}",
                "sha256": payload["sha256"], "size": payload["size"], "filename": "b.zip",
            }, max_attempts=1,
        )  # fmt: skip

    await asyncio.to_thread(own_servers.s3.stop)
    try:
        await worker.start()

        async def both_error() -> bool:
            statuses = {await report_status(depot, "pkg", v) for v in ("1.0.0", "2.0.0")}
            return statuses == {"error"}

        await eventually(both_error, within=120, interval=0.1)
        report = (await depot.report("pkg", "1.0.0")).json()
        assert report["error"], "an error report says why"
        assert report["checks"] == []
        dead = (await depot.report("pkg", "2.0.0")).json()
        assert dead["error"].startswith("gave up after 1 attempts"), dead
        for version in ("1.0.0", "2.0.0"):
            assert (await depot.version("pkg", version))["status"] == "pending", "an outage is never a verdict"
    finally:
        await asyncio.to_thread(own_servers.s3.start)

    decided = await depot.decided("pkg", "1.0.0", timeout=180)
    assert decided["status"] == "available"
    assert checks_of(decided["validation"])["sha256"] == "pass"
    assert (await depot.report("pkg", "1.0.0")).json()["status"] == "passed"
    assert (await depot.version("pkg", "2.0.0"))["status"] == "pending", "dead: waits for the re-queue sweep or a rerun"
    rerun = await depot.validator.post("/validate/reports/pkg/2.0.0/rerun", headers=depot.callers.admin)
    assert rerun.status_code == 202
    assert (await depot.decided("pkg", "2.0.0", timeout=120))["status"] == "available"


async def test_a_job_that_breaks_the_contract_is_dropped_not_retried(depot: Depot) -> None:
    secret = "s3cr3t-key-material"
    sessions = depot.validator_app.state.resources.sessions

    async def done() -> bool:
        return bool((await job_row(depot, "broken")).status == "done")

    with capture_logs() as logs:
        async with sessions() as db, db.begin():
            await enqueue(db, VALIDATION_QUEUE, "broken", {"version_id": secret, "package": "pkg", "size": "big"})
        await eventually(done)
    assert (await job_row(depot, "broken")).attempts == 1, "not retried: no retry can fix it"
    [line] = [entry for entry in logs if entry["event"] == "validation_job_invalid"]
    assert line["problems"] == [
        "version_id: uuid_parsing", "version: missing", "s3_key: missing", "sha256: missing", "size: int_parsing",
    ]  # fmt: skip
    assert secret not in json.dumps(logs, default=str)
    assert await depot.sql("SELECT count(*) FROM validation.reports") == [(0,)]
