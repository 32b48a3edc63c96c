"""`run_checks`, end to end: one result per check id, in order, from the artifact's bytes alone."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import struct
import tarfile
import zipfile
from collections import OrderedDict

import pytest

from tests.unit.validator_service.files import CountingFile, FailingFile
from validator_service.content import CheckResult, PicklePolicy, Rules, StorageError
from validator_service.content.checks import CHECK_IDS, run_checks

MANIFEST = json.dumps({"name": "My_Pkg", "version": "1.2.0+build.7", "license": "MIT"}).encode()
BENIGN_PICKLE = pickle.dumps(OrderedDict(weight=[1.0, 2.0]), protocol=2)


class _Hostile:
    """Pickles to a call of os.system (never loaded: the scanner only reads opcodes)."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo owned",))


HOSTILE_PICKLE = pickle.dumps(_Hostile(), protocol=2)


def zip_bytes(*entries: tuple[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def tar_gz(*entries: tuple[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def run(
    data: bytes,
    filename: str | None = "artifact",
    rules: Rules | None = None,
    *,
    declared_size: int | None = None,
    declared_sha256: str | None = None,
    f: io.BytesIO | None = None,
) -> dict[str, CheckResult]:
    results = run_checks(
        f if f is not None else io.BytesIO(data),
        size=len(data),
        filename=filename,
        package="my-pkg",
        version="1.2.0",
        declared_size=len(data) if declared_size is None else declared_size,
        declared_sha256=hashlib.sha256(data).hexdigest() if declared_sha256 is None else declared_sha256,
        rules=rules or Rules(),
    )
    assert [result.id for result in results] == list(CHECK_IDS)  # one per id, in order
    return {result.id: result for result in results}


def statuses(results: dict[str, CheckResult]) -> dict[str, str]:
    return {check_id: result.status for check_id, result in results.items()}


def test_a_benign_zip_passes_everything_that_applies() -> None:
    data = zip_bytes(("depot.json", MANIFEST), ("model/weights.pkl", BENIGN_PICKLE), ("README", b"hi"))
    results = run(data, "my-pkg.zip", Rules(allowed_licenses=("MIT", "Apache-2.0")))
    assert statuses(results) == {
        "size": "pass",
        "sha256": "pass",
        "archive": "pass",
        "pickle": "pass",
        "safetensors": "skip",
        "manifest": "pass",
        "license": "pass",
    }
    assert results["sha256"].detail == hashlib.sha256(data).hexdigest()
    assert results["license"].detail == "'MIT' (from depot.json) is allowed"


def test_a_benign_tar_gz_passes() -> None:
    data = tar_gz(
        ("depot.json", MANIFEST),
        ("LICENSE", b"Permission is hereby granted, free of charge, to any person obtaining a copy"),
    )
    results = run(data, None, Rules(allowed_licenses=("MIT",)))
    assert statuses(results) == {
        "size": "pass",
        "sha256": "pass",
        "archive": "pass",
        "pickle": "skip",
        "safetensors": "skip",
        "manifest": "pass",
        "license": "pass",
    }


def test_a_zip_slip_fails_the_archive_check() -> None:
    results = run(zip_bytes(("../../etc/cron.d/evil", b"* * * * * root sh"), ("depot.json", MANIFEST)))
    assert results["archive"].status == "fail"
    assert results["archive"].detail == "1 problem: '../../etc/cron.d/evil' escapes the root"
    assert results["manifest"].status == "pass"  # the other checks still report


@pytest.mark.parametrize(("policy", "status"), [("reject", "fail"), ("warn", "warn"), ("allow", "pass")])
def test_a_hostile_pickle_file_under_each_policy(policy: PicklePolicy, status: str) -> None:
    results = run(HOSTILE_PICKLE, "model.pkl", Rules(pickle_policy=policy))
    assert results["pickle"].status == status
    assert "system" in results["pickle"].detail
    assert statuses(results) | {"pickle": "-"} == {
        "size": "pass",
        "sha256": "pass",
        "archive": "skip",
        "pickle": "-",
        "safetensors": "skip",
        "manifest": "skip",
        "license": "skip",
    }


def test_a_benign_pickle_file_passes() -> None:
    assert run(BENIGN_PICKLE, "model.pkl")["pickle"].status == "pass"


def test_a_hostile_pytorch_checkpoint_fails_the_pickle_check() -> None:
    data = zip_bytes(("model/data.pkl", HOSTILE_PICKLE), ("model/version", b"3\n"), ("model/data/0", bytes(16)))
    results = run(data, "model.pt")
    assert results["archive"].status == "pass"
    assert results["pickle"].status == "fail"
    assert "model/data.pkl" in results["pickle"].detail


def test_a_hostile_pickle_in_a_tar_fails_the_pickle_check() -> None:
    results = run(tar_gz(("weights/model.ckpt", HOSTILE_PICKLE)), "bundle.tgz")
    assert results["pickle"].status == "fail"
    assert "weights/model.ckpt" in results["pickle"].detail


def test_a_wrong_sha256_fails() -> None:
    data = b"some bytes"
    results = run(data, declared_sha256="0" * 64)
    assert results["sha256"].status == "fail"
    assert results["sha256"].detail == f"{hashlib.sha256(data).hexdigest()}, {'0' * 64} declared"
    assert run(data, declared_sha256="not hex")["sha256"].status == "fail"


def test_a_size_mismatch_fails_and_the_content_is_still_checked() -> None:
    data = zip_bytes(("../evil", b"x"))
    results = run(data, declared_size=len(data) + 1)
    assert results["size"].status == "fail"
    assert results["size"].detail == f"{len(data)} bytes stored, {len(data) + 1} declared"
    assert results["archive"].status == "fail"
    assert results["sha256"].status == "pass"


def test_an_artifact_over_max_artifact_bytes_is_not_read() -> None:
    data = zip_bytes(("../evil", b"x" * 1000))
    counting = CountingFile(data)
    results = run(data, "a.zip", Rules(max_artifact_bytes=100), f=counting)
    assert counting.bytes_read == 0
    assert results["size"] == CheckResult("size", "fail", f"{len(data)} bytes, over max_artifact_bytes (100)")
    for check_id in CHECK_IDS[1:]:
        assert results[check_id] == CheckResult(check_id, "skip", "not inspected: over max_artifact_bytes")


def test_a_plain_text_file_skips_the_content_checks() -> None:
    results = run(b"just a text file\n" * 100, "notes.txt", Rules(allowed_licenses=("MIT",)))
    assert statuses(results) == {
        "size": "pass",
        "sha256": "pass",
        "archive": "skip",
        "pickle": "skip",
        "safetensors": "skip",
        "manifest": "skip",
        "license": "fail",  # a bare file cannot declare a license, and one is required
    }
    assert results["archive"].detail == "not an archive"
    assert results["pickle"].detail == "not a pickle"


def test_a_compressed_single_file_is_opened_and_its_content_checked() -> None:
    text = gzip.compress(b"plain text " * 100)
    results = run(text, "notes.txt.gz")
    assert results["archive"].status == "pass"
    assert (
        results["archive"].detail == f"0 entries, 1100 bytes unpacked from {len(text)}; opened: 'the artifact' (gzip)"
    )
    assert results["pickle"] == CheckResult("pickle", "skip", "no pickle found")
    assert results["manifest"].status == "skip"
    hostile = run(gzip.compress(HOSTILE_PICKLE), "model.bin.gz")
    assert hostile["pickle"].status == "fail"


def test_a_safetensors_file_is_checked() -> None:
    header = json.dumps({"w": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]}}).encode()
    good = struct.pack("<Q", len(header)) + header + bytes(4)
    assert run(good, "model.safetensors")["safetensors"].status == "pass"
    assert run(good[:-2], "model.safetensors")["safetensors"].status == "fail"


def test_a_bomb_stops_the_inspection_and_what_it_did_not_reach_is_not_judged() -> None:
    data = tar_gz(("zeros", bytes(5 * 1024 * 1024)), ("depot.json", MANIFEST))
    results = run(data, "bomb.tgz", Rules(max_compression_ratio=10, allowed_licenses=("MIT",)))
    assert results["archive"].status == "fail"
    for check_id in ("pickle", "manifest", "license"):
        assert results[check_id] == CheckResult(
            check_id, "skip", "not inspected: the archive check stopped before the end"
        )


@pytest.mark.parametrize(
    ("data", "filename"),
    [
        (zip_bytes(("depot.json", MANIFEST), ("a.pkl", BENIGN_PICKLE)), "a.zip"),
        (tar_gz(("depot.json", MANIFEST), ("a.pkl", BENIGN_PICKLE * 50)), "a.tgz"),
        (BENIGN_PICKLE * 50, "a.pkl"),
        (b"plain text" * 100, "a.txt"),
    ],
)
@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.99])
def test_a_storage_error_propagates_out_of_run_checks(data: bytes, filename: str, fraction: float) -> None:
    with pytest.raises(StorageError, match="S3 is down"):
        run(data, filename, f=FailingFile(data, int(len(data) * fraction)))
