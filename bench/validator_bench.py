"""validator_service: how fast it validates large artifacts, and how much memory it takes, next to S3 itself.

`python -m bench.validator_bench` (or `make bench`) starts a throwaway embedded PostgreSQL, a
SeaweedFS S3 server and a real validator_service (uvicorn, one worker) in a temporary folder,
stores three artifacts of `--size-mib` in S3, and for each, `--repeat` times, side by side:

1. the raw download: a streamed `get_object` read 1 MiB at a time (aioboto3), as MB/s, and the
   same download hashed with SHA-256 on the way (what any validator must at least do);
2. its validation: a job queued as package_service queues it, taken by the service, every check
   run, the report written. Throughput is the artifact's size over the report's own
   `started_at` to `finished_at`; the end-to-end time (queue included) is shown too;
3. the validator's RSS before and at its peak (psutil, every 50 ms) during the validation.

Artifacts: a zip (a `depot.json`, a LICENSE, a small PyTorch-style `data.pkl` and 16 MiB stored
members: the archive, pickle, manifest and license checks read the central directory and the
members' first bytes by range, the SHA-256 reads everything once), a safetensors file (the header
is read by range, the SHA-256 reads everything), a pickle of large byte strings (scanned opcode
by opcode front to back, hashed on the same pass), and a nested artifact: a zip holding a
PyTorch zip checkpoint (three quarters of the size, opened and its members scanned) and a
`.tar.gz` of float32 weights (a quarter, decompressed whole, its members scanned).

A benchmark reports; it does not assert: a missed target is printed, the exit status stays 0.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import pickle
import random
import struct
import tarfile
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aioboto3
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from bench.package_bench import BUCKET, MB, MIB, RssSampler, prepare, rss_of, s3_options
from bench.servers import served, throwaway_servers
from bench.stats import progress
from common.contracts import ValidationJob, send
from common.db import create_engine
from common.settings import CommonSettings
from devstack.s3 import EmbeddedS3

MEMBER = 16 * MIB
READ_CHUNK = 1 * MIB
RSS_PEAK_TARGET_MB = 250.0
RATIO_TARGETS = {"zip": 0.8, "safetensors": 0.8, "pickle": 0.8, "nested": 0.7}
RSS_GROWTH_TARGET_MB = 64.0
MIT = "MIT License\n\nPermission is hereby granted, free of charge, to any person obtaining a copy..."


@dataclass(frozen=True)
class Stored:
    key: str
    filename: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Run:
    artifact: str
    size_mib: int
    run: int
    download_mb_per_s: float
    hashed_download_mb_per_s: float
    validation_mb_per_s: float
    end_to_end_seconds: float
    rss_before_mb: float
    rss_peak_mb: float
    status: str
    checks: dict[str, str]


# Artifacts, written to disk a block at a time (never whole in memory) and stored in S3


def write_zip(path: Path, size: int, block: bytes) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        archive.writestr("depot.json", json.dumps({"name": "bench", "version": "1.0.0", "license": "MIT"}))
        archive.writestr("LICENSE", MIT)
        archive.writestr("model/data.pkl", pickle.dumps({"layer.weight": [0.0] * 100}, protocol=2))
        for index in range(max(1, size // MEMBER)):
            with archive.open(f"model/data/{index}", "w", force_zip64=True) as member:
                for _ in range(MEMBER // len(block)):
                    member.write(block)


def write_safetensors(path: Path, size: int, block: bytes) -> None:
    count = max(1, size // MEMBER)
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    for index in range(count):
        header[f"layer{index}.weight"] = {
            "dtype": "F32", "shape": [MEMBER // 4], "data_offsets": [index * MEMBER, (index + 1) * MEMBER],
        }  # fmt: skip
    encoded = json.dumps(header).encode()
    with path.open("wb") as out:
        out.write(struct.pack("<Q", len(encoded)) + encoded)
        for _ in range(count * MEMBER // len(block)):
            out.write(block)


def write_pickle(path: Path, size: int, block: bytes) -> None:
    """A protocol 4 pickle of `{"tensorN": <16 MiB bytes>}`, written opcode by opcode."""
    with path.open("wb") as out:
        out.write(b"\x80\x04}\x94(")  # PROTO 4, EMPTY_DICT, MEMOIZE, MARK
        for index in range(max(1, size // MEMBER)):
            name = f"tensor{index}".encode()
            out.write(b"\x8c" + bytes([len(name)]) + name + b"\x94")  # SHORT_BINUNICODE, MEMOIZE
            out.write(b"\x8e" + struct.pack("<Q", MEMBER))  # BINBYTES8
            for _ in range(MEMBER // len(block)):
                out.write(block)
            out.write(b"\x94")  # MEMOIZE
        out.write(b"u.")  # SETITEMS, STOP


def write_nested(path: Path, size: int, block: bytes) -> None:
    """A zip of a PyTorch checkpoint (itself a zip) and a tar.gz of weights, each written to disk first."""
    checkpoint, weights = path.with_suffix(".pt"), path.with_suffix(".tar.gz")
    write_zip(checkpoint, size * 3 // 4, block)
    floats = struct.pack(f"<{MIB // 4}f", *(random.gauss(0, 0.02) for _ in range(MIB // 4)))
    with tarfile.open(weights, "w:gz", compresslevel=1) as archive:
        count = max(1, size // 4 // MEMBER)
        for index in range(count):
            info = tarfile.TarInfo(f"weights/shard{index}.bin")
            info.size = MEMBER
            archive.addfile(info, _Repeated(floats, MEMBER))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        archive.writestr("depot.json", json.dumps({"name": "bench", "version": "1.0.0", "license": "MIT"}))
        archive.write(checkpoint, "model.pt")
        archive.write(weights, "weights.tar.gz")
    checkpoint.unlink()
    weights.unlink()


class _Repeated(io.RawIOBase):
    """`size` bytes of `block` repeated, as a file for tarfile to read."""

    def __init__(self, block: bytes, size: int) -> None:
        super().__init__()
        self._block, self._left, self._offset = block, size, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = self._left if size < 0 else min(size, self._left)
        data = (self._block[self._offset :] + self._block)[:size]
        self._offset = (self._offset + len(data)) % len(self._block)
        self._left -= len(data)
        return data


WRITERS: dict[str, tuple[str, Callable[[Path, int, bytes], None]]] = {
    "zip": ("model.zip", write_zip),
    "safetensors": ("model.safetensors", write_safetensors),
    "pickle": ("model.pkl", write_pickle),
    "nested": ("bundle.zip", write_nested),
}


def sha256_of_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# The validator, as a process of its own


def validator_environment(database_url: str, s3: EmbeddedS3) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("DEPOT_")}
    return env | {
        "DEPOT_DATABASE_URL": database_url,
        "DEPOT_S3_ENDPOINT_URL": s3.endpoint_url,
        "DEPOT_S3_ACCESS_KEY_ID": s3.credentials.access_key,
        "DEPOT_S3_SECRET_ACCESS_KEY": s3.credentials.secret_key,
        "DEPOT_S3_BUCKET": BUCKET,
        "DEPOT_VALIDATION_WORKERS": "1",
        "DEPOT_VALIDATION_POLL_SECONDS": "0.2",
        "DEPOT_LOG_LEVEL": "WARNING",
        "DEPOT_LOG_FORMAT": "json",
    }


# Measurements


async def download(s3_client: Any, key: str, *, hashed: bool = False) -> float:
    """MB/s of a streamed download of `key`, hashing it on the way when `hashed`."""
    started = time.perf_counter()
    body = (await s3_client.get_object(Bucket=BUCKET, Key=key))["Body"]
    hasher = hashlib.sha256()
    received = 0
    try:
        while chunk := await body.read(READ_CHUNK):
            received += len(chunk)
            if hashed:
                hasher.update(chunk)
    finally:
        body.close()
    return received / (time.perf_counter() - started) / MB


async def validate(engine: Any, stored: Stored, pid: int) -> dict[str, Any]:
    """Queue a validation of `key` and wait for its report; the report's row and the RSS figures."""
    job = ValidationJob(
        version_id=uuid.uuid4(), package="bench", version="1.0.0", s3_key=stored.key, sha256=stored.sha256,
        size=stored.size, filename=stored.filename,
    )  # fmt: skip
    before = rss_of(pid)
    started = time.perf_counter()
    with RssSampler(pid) as rss:
        async with AsyncSession(engine) as db, db.begin():
            await send(db, job)
        async with asyncio.timeout(600):
            while True:
                async with engine.connect() as connection:
                    row = (
                        await connection.execute(
                            sa.text(
                                "SELECT status, checks, extract(epoch FROM finished_at - started_at) AS seconds "
                                "FROM validation.reports WHERE version_id = CAST(:id AS uuid)"
                            ),
                            {"id": job.key},
                        )
                    ).first()
                if row is not None and row.status in {"passed", "failed", "error"}:
                    break
                await asyncio.sleep(0.05)
    return {
        "status": row.status, "checks": {c["id"]: c["status"] for c in row.checks}, "seconds": float(row.seconds),
        "end_to_end": time.perf_counter() - started, "rss_before": before, "rss_peak": rss.peak,
    }  # fmt: skip


async def run(database_url: str, s3: EmbeddedS3, folder: Path, pid: int, args: argparse.Namespace) -> list[Run]:
    size_mib, repeat = args.size_mib, args.repeat
    block = os.urandom(MIB)
    engine = create_engine(CommonSettings(database_url=database_url), "depot-bench")
    runs: list[Run] = []
    try:
        async with aioboto3.Session().client("s3", **s3_options(s3)) as s3_client:
            for artifact in args.artifacts:
                filename, writer = WRITERS[artifact]
                path = folder / filename
                progress(f"writing and storing a {size_mib} MiB {artifact}")
                await asyncio.to_thread(writer, path, size_mib * MIB, block)
                digest = await asyncio.to_thread(sha256_of_file, path)
                key = f"versions/bench-{artifact}"
                await s3_client.upload_file(str(path), BUCKET, key)
                size = path.stat().st_size
                path.unlink()
                for attempt in range(repeat):
                    progress(f"{artifact}: download, then validation (run {attempt + 1})")
                    rate = await download(s3_client, key)
                    hashed_rate = await download(s3_client, key, hashed=True)
                    outcome = await validate(engine, Stored(key, filename, size, digest), pid)
                    runs.append(
                        Run(
                            artifact=artifact,
                            size_mib=size // MIB,
                            run=attempt,
                            download_mb_per_s=round(rate, 1),
                            hashed_download_mb_per_s=round(hashed_rate, 1),
                            validation_mb_per_s=round(size / outcome["seconds"] / MB, 1),
                            end_to_end_seconds=round(outcome["end_to_end"], 2),
                            rss_before_mb=round(outcome["rss_before"] / MB, 1),
                            rss_peak_mb=round(outcome["rss_peak"] / MB, 1),
                            status=outcome["status"],
                            checks=outcome["checks"],
                        )
                    )
                    progress(
                        f"  download {rate:.0f} MB/s, with SHA-256 {hashed_rate:.0f} MB/s, "
                        f"validation {runs[-1].validation_mb_per_s:.0f} MB/s"
                    )
    finally:
        await engine.dispose()
    return runs


def report(runs: Sequence[Run], size_mib: int, wall: float) -> None:
    print()
    print(f"Validation of {size_mib} MiB artifacts next to the raw S3 download (best of each; MB = 10^6 bytes)")
    print(f"  {'artifact':<12} {'download':>9} {'+ SHA-256':>10} {'validation':>11} {'ratio':>6}   RSS before->peak MB")
    targets = []
    for artifact in dict.fromkeys(r.artifact for r in runs):
        found = [r for r in runs if r.artifact == artifact]
        raw = max(r.download_mb_per_s for r in found)
        hashed = max(r.hashed_download_mb_per_s for r in found)
        best = max(found, key=lambda r: r.validation_mb_per_s)
        ratio = best.validation_mb_per_s / hashed
        peak = max(r.rss_peak_mb for r in found)
        print(
            f"  {artifact:<12} {raw:>9.1f} {hashed:>10.1f} {best.validation_mb_per_s:>11.1f} {ratio:>6.2f}   "
            f"{best.rss_before_mb:>6.1f} -> {peak:.1f}"
        )
        statuses = " ".join(f"{k}={v}" for k, v in best.checks.items())
        print(f"  {'':<12} {best.status}: {statuses}")
        print(
            f"  {'':<12} runs (MB/s): validation {[r.validation_mb_per_s for r in found]}, download "
            f"{[r.download_mb_per_s for r in found]}, with SHA-256 {[r.hashed_download_mb_per_s for r in found]}"
        )
        target = RATIO_TARGETS[artifact]
        targets.append((f"{artifact}: validation >= {target:g} x download with SHA-256 ({ratio:.2f})", ratio >= target))
        targets.append(
            (f"{artifact}: validator RSS peak < {RSS_PEAK_TARGET_MB:g} MB ({peak:.1f})", peak < RSS_PEAK_TARGET_MB)
        )
    growth = max(r.rss_peak_mb - r.rss_before_mb for r in runs)
    targets.append(
        (
            f"validator RSS flat: a validation adds <= {RSS_GROWTH_TARGET_MB:g} MB (+{growth:.1f})",
            growth <= RSS_GROWTH_TARGET_MB,
        )
    )
    print()
    print("  ratio: validation over the download hashed with SHA-256 in the same process, the floor of any")
    print("  validator that must hash every byte (on 2 cores shared with the S3 server, the hash is CPU).")
    print()
    print("Targets")
    for label, met in targets:
        print(f"  {label}: {'MET' if met else 'MISSED (reported, not enforced)'}")
    print(f"  (wall time {wall:.0f} s)")
    print(json.dumps({"size_mib": size_mib, "runs": [asdict(r) for r in runs], "targets": dict(targets)}))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.validator_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="each artifact's size (MiB)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each measurement (the best is compared)")
    parser.add_argument("--artifacts", nargs="+", choices=list(WRITERS), default=list(WRITERS), help="which to run")
    args = parser.parse_args(argv)
    if not (16 <= args.size_mib <= 16 * 1024 and 1 <= args.repeat <= 10):
        parser.error("--size-mib 16..16384, --repeat 1..10")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="depot-validator-bench-", ignore_cleanup_errors=True) as name:
        root = Path(name)
        with throwaway_servers(root) as (postgres, s3):
            database_url = asyncio.run(prepare(postgres, s3))
            progress("starting validator_service")
            env = validator_environment(database_url, s3)
            with served("validator_service", env, root / "validator.log") as (_, process):
                runs = asyncio.run(run(database_url, s3, root, process.pid, args))
    report(runs, args.size_mib, time.perf_counter() - started)


if __name__ == "__main__":
    main()
