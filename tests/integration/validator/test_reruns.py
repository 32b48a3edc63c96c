"""Reruns decide again: a rules change followed by a rerun moves a version between `available` and
`rejected`, a yanked version keeps its status and takes the new report, and every change is in
the package's audit."""

from __future__ import annotations

import pickle
from typing import Any

from tests.integration.validator.conftest import Depot, checks_of, summary_of, zip_of
from tests.integration.validator.test_rules_and_reports import Boom

BENIGN = zip_of({"depot.json": b'{"name": "model", "version": "1.0.0"}', "weights/a.txt": b"hello" * 1000})
SMALL = zip_of({"weights/a.txt": b"hi"})


async def history(depot: Depot, name: str, version: str) -> list[tuple[str, str, str, str]]:
    """The version's status changes, oldest first: (from, to, reason, actor)."""
    rows = await depot.sql(
        "SELECT e.from_status, e.to_status, e.reason, e.actor FROM packages.version_events AS e "
        "JOIN packages.packages AS p ON p.id = e.package_id WHERE p.name = $1 AND e.version = $2 ORDER BY e.id",
        name,
        version,
    )
    return [tuple(row) for row in rows]


async def latest(depot: Depot, name: str) -> Any:
    package = await depot.packages.get(f"/packages/{name}", headers=depot.callers.owner)
    return package.json()["latest_version"]


async def set_rules(depot: Depot, **rules: Any) -> None:
    response = await depot.validator.put("/validate/rules", json=rules, headers=depot.callers.admin)
    assert response.status_code == 200, response.text


async def test_a_rerun_under_stricter_rules_rejects_and_one_under_the_old_rules_restores(depot: Depot) -> None:
    await depot.create("model")
    await depot.upload("model", "0.9.0", SMALL, filename="small.zip")
    await depot.upload("model", "1.0.0", BENIGN, filename="model.zip")
    assert (await depot.decided("model", "0.9.0"))["status"] == "available"
    assert (await depot.decided("model", "1.0.0"))["status"] == "available"
    assert await latest(depot, "model") == "1.0.0"

    await set_rules(depot, max_artifact_bytes=len(BENIGN) - 1)
    version, report = await depot.rerun("model", "1.0.0")
    assert (version["status"], report["status"]) == ("rejected", "failed")
    assert version["validation"] == summary_of(report), "the version keeps what the report says"
    assert checks_of(report)["size"] == "fail"
    assert await latest(depot, "model") == "0.9.0"
    download = await depot.packages.get("/packages/model/versions/1.0.0/content", headers=depot.callers.owner)
    assert download.status_code == 409, "a rejected version is not served"

    await set_rules(depot)  # the defaults again
    version, report = await depot.rerun("model", "1.0.0")
    assert (version["status"], report["status"]) == ("available", "passed")
    assert version["validation"] == summary_of(report)
    assert await latest(depot, "model") == "1.0.0"

    changes = await history(depot, "model", "1.0.0")
    assert [change[:2] for change in changes] == [
        ("pending", "available"), ("available", "rejected"), ("rejected", "available"),
    ]  # fmt: skip
    first, rejected, restored = changes
    assert first[2].startswith("validation passed")
    assert rejected[2].startswith("rerun: validation failed"), rejected
    assert "size" in rejected[2], "the reason names the failed check"
    assert restored[2].startswith("rerun: validation passed"), restored
    assert {change[3] for change in changes} == {"validator"}

    [(version_id,)] = await depot.sql(
        "SELECT v.id::text FROM packages.versions AS v JOIN packages.packages AS p ON p.id = v.package_id "
        "WHERE p.name = 'model' AND v.version = '1.0.0'"
    )
    keys = await depot.sql(
        "SELECT key FROM queue.jobs WHERE queue = 'verdicts' AND key LIKE $1 ORDER BY id", f"{version_id}%"
    )
    assert keys == [(f"{version_id}:{run}",) for run in (1, 2, 3)], "one verdict per validation, numbered"


async def test_a_rejected_pickle_becomes_available_when_the_policy_warns(depot: Depot) -> None:
    await depot.create("pkg")
    await depot.upload("pkg", "1.0.0", pickle.dumps(Boom(), protocol=4), filename="model.pkl")
    decided = await depot.decided("pkg", "1.0.0")
    assert decided["status"] == "rejected"
    assert checks_of(decided["validation"])["pickle"] == "fail"

    await set_rules(depot, pickle_policy="warn")
    version, report = await depot.rerun("pkg", "1.0.0")
    assert version["status"] == "available"
    assert version["validation"] == summary_of(report)
    assert checks_of(report)["pickle"] == "warn"
    assert await latest(depot, "pkg") == "1.0.0"
    assert (await history(depot, "pkg", "1.0.0"))[1:] == [
        ("rejected", "available", "rerun: validation passed with warnings (pickle)", "validator")
    ]


async def test_a_yanked_version_stays_yanked_with_the_new_report(depot: Depot) -> None:
    await depot.create("model")
    await depot.upload("model", "1.0.0", BENIGN, filename="model.zip")
    assert (await depot.decided("model", "1.0.0"))["status"] == "available"
    yank = await depot.packages.post(
        "/packages/model/versions/1.0.0/yank", json={"reason": "superseded"}, headers=depot.callers.owner
    )
    assert yank.status_code == 200, yank.text

    await set_rules(depot, max_artifact_bytes=len(BENIGN) - 1)
    version, report = await depot.rerun("model", "1.0.0")
    assert report["status"] == "failed"
    assert (version["status"], version["yank_reason"]) == ("yanked", "superseded")
    assert version["validation"] == summary_of(report)
    assert version["validated_at"] is not None
    assert await latest(depot, "model") is None
    assert [change[:2] for change in await history(depot, "model", "1.0.0")] == [
        ("pending", "available"), ("available", "yanked"),
    ], "the rerun changed no status"  # fmt: skip

    # Unyanking would serve what validation now refuses: 409 until a rerun passes again.
    unyank = await depot.packages.post("/packages/model/versions/1.0.0/unyank", headers=depot.callers.owner)
    assert unyank.status_code == 409, unyank.text
    assert "failed its latest validation" in unyank.json()["detail"]
    await set_rules(depot)
    version, report = await depot.rerun("model", "1.0.0")
    assert (report["status"], version["status"]) == ("passed", "yanked")
    unyank = await depot.packages.post("/packages/model/versions/1.0.0/unyank", headers=depot.callers.owner)
    assert unyank.status_code == 200, unyank.text
    assert unyank.json()["status"] == "available"
