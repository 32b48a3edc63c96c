"""Rules, reports and reruns through the HTTP API, with uploads validated end to end."""

from __future__ import annotations

import hashlib
import pickle

import httpx

from tests.helpers import eventually
from tests.integration.validator.conftest import VERDICT_SECONDS, Depot, checks_of, zip_of
from validator_service.content.checks import CHECK_IDS

DEFAULT_RULES = {
    "max_artifact_bytes": 10 * 1024**3,
    "max_unpacked_bytes": 10 * 1024**3,
    "max_entries": 100_000,
    "max_compression_ratio": 100.0,
    "pickle_policy": "reject",
    "allowed_licenses": [],
}


class Boom:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os  # noqa: PLC0415 - only the pickle's reference matters; nothing here runs it

        return (os.system, ("echo pwned",))


async def test_rules_have_safe_defaults_and_only_admins_change_them(depot: Depot) -> None:
    validator = depot.validator
    assert (await validator.get("/validate/rules")).status_code == 401
    assert (await validator.get("/validate/rules", headers=depot.callers.stranger)).json() == DEFAULT_RULES

    changed = {**DEFAULT_RULES, "pickle_policy": "warn", "allowed_licenses": ["MIT", "Apache-2.0"]}
    refused = await validator.put("/validate/rules", json=changed, headers=depot.callers.owner)
    assert refused.status_code == 403
    assert (await validator.put("/validate/rules", json=changed, headers=depot.callers.service)).status_code == 403
    accepted = await validator.put("/validate/rules", json=changed, headers=depot.callers.admin)
    assert (accepted.status_code, accepted.json()) == (200, changed)
    assert (await validator.get("/validate/rules", headers=depot.callers.reader)).json() == changed

    partial = await validator.put("/validate/rules", json={"max_entries": 10}, headers=depot.callers.admin)
    assert partial.json() == {**DEFAULT_RULES, "max_entries": 10}, "PUT replaces: what is left out is the default"


async def test_invalid_rules_are_400(depot: Depot) -> None:
    for body in (
        {"max_entries": 0},
        {"max_artifact_bytes": -1},
        {"max_compression_ratio": 0.5},
        {"pickle_policy": "sometimes"},
        {"allowed_licenses": "MIT"},
        {"allowed_licenses": [""]},
        {"max_entries": 10, "surprise": True},
    ):
        response = await depot.validator.put("/validate/rules", json=body, headers=depot.callers.admin)
        assert response.status_code == 400, body
        assert response.json()["errors"], body
    assert (await depot.validator.get("/validate/rules", headers=depot.callers.admin)).json() == DEFAULT_RULES


async def test_a_benign_archive_becomes_available_with_a_passing_report(depot: Depot) -> None:
    await depot.create("model", read_groups=["readers"])
    data = zip_of({"depot.json": b'{"name": "Model", "version": "1.0.0"}', "weights/a.txt": b"hello" * 100})
    await depot.upload("model", "1.0.0", data, filename="model.zip")
    version = await depot.decided("model", "1.0.0")
    assert version["status"] == "available"
    assert version["validated_at"] is not None
    assert version["validation"]["status"] == "passed"

    response = await depot.report("model", "1.0.0", depot.callers.reader)
    assert response.status_code == 200
    report = response.json()
    assert [check["id"] for check in report["checks"]] == list(CHECK_IDS)
    checks = checks_of(report)
    assert checks["size"] == checks["sha256"] == checks["archive"] == checks["manifest"] == "pass"
    assert checks["pickle"] == checks["safetensors"] == checks["license"] == "skip"
    assert report["status"] == "passed"
    assert (report["package"], report["version"], report["size"]) == ("model", "1.0.0", len(data))
    assert report["sha256"] == hashlib.sha256(data).hexdigest()
    assert report["started_at"] <= report["finished_at"]
    assert report["error"] is None
    assert all(check["detail"] for check in report["checks"])


async def test_hostile_artifacts_are_rejected_by_the_right_check(depot: Depot) -> None:
    await depot.create("pkg")
    cases = {
        "1.0.0": (zip_of({"../../etc/cron.d/evil": b"x"}), "bundle.zip", "archive"),
        "2.0.0": (pickle.dumps(Boom(), protocol=4), "model.pkl", "pickle"),
        "3.0.0": (zip_of({"depot.json": b'{"name": "other", "version": "3.0.0"}'}), "b.zip", "manifest"),
    }
    for version, (data, filename, _) in cases.items():
        await depot.upload("pkg", version, data, filename=filename)
    for version, (_, _, failing) in cases.items():
        decided = await depot.decided("pkg", version)
        assert decided["status"] == "rejected", version
        assert decided["validation"]["status"] == "failed"
        failed = [check["id"] for check in decided["validation"]["checks"] if check["status"] == "fail"]
        assert failed == [failing], (version, decided["validation"])
        report = (await depot.report("pkg", version)).json()
        assert report["status"] == "failed"
        assert checks_of(report)[failing] == "fail"
    download = await depot.packages.get("/packages/pkg/versions/2.0.0/content", headers=depot.callers.owner)
    assert download.status_code == 409, "a rejected version is not served"


async def test_the_pickle_policy_decides_between_rejected_and_a_warning(depot: Depot) -> None:
    ruled = await depot.validator.put("/validate/rules", json={"pickle_policy": "warn"}, headers=depot.callers.admin)
    assert ruled.status_code == 200
    await depot.create("pkg")
    await depot.upload("pkg", "1.0.0", pickle.dumps(Boom(), protocol=2), filename="model.pkl")
    decided = await depot.decided("pkg", "1.0.0")
    assert decided["status"] == "available"
    assert checks_of(decided["validation"])["pickle"] == "warn"


async def test_a_presigned_upload_with_a_wrong_declared_sha256_is_rejected(depot: Depot) -> None:
    await depot.create("pkg")
    data = b"the real bytes" * 1000
    declared = hashlib.sha256(b"something else").hexdigest()
    started = await depot.packages.post(
        "/packages/pkg/versions/1.0.0/uploads", json={"size": len(data), "sha256": declared},
        headers=depot.callers.owner,
    )  # fmt: skip
    assert started.status_code == 201, started.text
    upload = started.json()
    async with httpx.AsyncClient() as s3:
        sent = await s3.put(upload["parts"][0]["url"], content=data)
    assert sent.status_code == 200
    completed = await depot.packages.post(
        f"/packages/pkg/versions/1.0.0/uploads/{upload['upload_id']}/complete",
        json={"parts": [{"part_number": 1, "etag": sent.headers["etag"]}]}, headers=depot.callers.owner,
    )  # fmt: skip
    assert completed.status_code == 201, completed.text
    decided = await depot.decided("pkg", "1.0.0")
    assert decided["status"] == "rejected"
    failed = {check["id"]: check["detail"] for check in decided["validation"]["checks"] if check["status"] == "fail"}
    assert list(failed) == ["sha256"]


async def test_reports_are_for_readers_and_reruns_for_admins(depot: Depot) -> None:
    await depot.create("pkg", read_groups=["readers"])
    await depot.upload("pkg", "1.0.0", zip_of({"a.txt": b"a"}), filename="a.zip")
    await depot.decided("pkg", "1.0.0")
    assert (await depot.report("pkg", "1.0.0", depot.callers.reader)).status_code == 200
    assert (await depot.report("PKG", "v1.0.0+meta", depot.callers.reader)).status_code == 200, "any spelling"
    for headers in (depot.callers.stranger, depot.callers.service):
        hidden = await depot.report("pkg", "1.0.0", headers)
        assert hidden.status_code == 404, "who may not read the package does not learn that it exists"
        assert hidden.json()["detail"] == (await depot.report("nope", "1.0.0", headers)).json()["detail"]
    assert (await depot.report("pkg", "2.0.0")).status_code == 404
    assert (await depot.validator.get("/validate/reports/pkg/1.0.0")).status_code == 401

    rerun_path = "/validate/reports/pkg/1.0.0/rerun"
    assert (await depot.validator.post(rerun_path, headers=depot.callers.owner)).status_code == 403
    assert (await depot.validator.post(rerun_path, headers=depot.callers.stranger)).status_code == 403
    queued = await depot.validator.post(rerun_path, headers=depot.callers.admin)
    assert queued.status_code == 202
    assert queued.json()["status"] in {"queued", "running", "passed"}

    async def passed() -> bool:
        return bool((await depot.report("pkg", "1.0.0")).json()["status"] == "passed")

    await eventually(passed, within=VERDICT_SECONDS, interval=0.1, message="the rerun's report")
    assert (await depot.version("pkg", "1.0.0"))["status"] == "available"
