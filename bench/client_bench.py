"""`depot push` and `depot pull` next to boto3's TransferManager, straight to the same S3, in one run.

`python -m bench.client_bench` (or `make bench`) starts, in a temporary folder, a throwaway embedded
PostgreSQL (migrated) and SeaweedFS, then auth_service, package_service and the validator as real
uvicorn processes behind the front door of `make run`, so the client sees one URL as on AWS. An admin
makes an API token; the client runs with `DEPOT_URL`/`DEPOT_TOKEN` as a user's would. A file of
`--size-mib` random bytes (1 GiB by default) is then moved `--rounds` times each way, the order of the
two sides alternating from round to round:

- push: the SDK's `push` (a presigned multipart upload: parts straight to S3, the sha256 computed in
  the same read pass) next to `upload_file` of boto3 to the same bucket;
- pull: the SDK's `pull` of the version once it is `available` (parallel ranges into a `.part` file,
  renamed once its sha256 matches) next to `download_file` of boto3.

Both sides use the same part size and concurrency (`--part-size-mib`, `--concurrency`: the client's
defaults). Each transfer runs in a process of its own (`bench/client_worker.py`, importing only its
side's library), whose RSS is sampled every 50 ms. Targets: each way at least 0.9x boto3's throughput
(medians), the client's peak RSS under 150 MB, and the time spent in Depot's own calls (token, init,
complete, lookups) under 5% of a push. A table, then one JSON line with every figure.

A benchmark reports; it does not assert: a missed target is printed, the exit status stays 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.package_bench import BUCKET, RssSampler, prepare
from bench.servers import ROOT, served, throwaway_servers
from bench.stats import progress
from bench.validator_bench import sha256_of_file
from bench.web_bench import environment, wait_ready
from devstack.processes import free_port, spawn, stop, wait_for_port
from devstack.s3 import EmbeddedS3

MiB = 1024 * 1024
ADMIN = ("bench-admin", "a bench admin passphrase")
PACKAGE = "bench-model"
RATIO_TARGET = 0.9
RSS_TARGET_MB = 150
CALL_SHARE_TARGET = 0.05


@dataclass(frozen=True)
class Config:
    size_mib: int
    rounds: int
    part_size_mib: int
    concurrency: int


@dataclass(frozen=True)
class Transfer:
    side: str  # "depot" or "boto3"
    direction: str  # "push" or "pull"
    round: int
    seconds: float
    mib_per_second: float
    peak_rss_mb: float
    depot_call_seconds: float | None = None
    depot_calls: int | None = None


def write_random_file(path: Path, size: int) -> None:
    with path.open("wb") as file:
        for offset in range(0, size, 8 * MiB):
            file.write(os.urandom(min(8 * MiB, size - offset)))


def transfer(kind: str, args: Sequence[str], env: dict[str, str], size: int, number: int) -> Transfer:
    """One transfer in a worker process: its figures and the worker's peak RSS."""
    command = [sys.executable, "-m", "bench.client_worker", kind, *args]
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # noqa: S603
    with RssSampler(process.pid) as rss:
        stdout, stderr = process.communicate(timeout=1800)
    if process.returncode != 0:
        raise RuntimeError(f"{kind} failed ({process.returncode}): {stderr.decode()[-2000:]}")
    figures = json.loads(stdout.decode().strip().splitlines()[-1])
    side, direction = ("depot", kind.removeprefix("depot-")) if kind.startswith("depot-") else ("boto3", kind[3:])
    direction = {"upload": "push", "download": "pull"}.get(direction, direction)
    return Transfer(
        side, direction, number, round(figures["seconds"], 3), round(size / MiB / figures["seconds"], 1),
        round(rss.peak / 1e6, 1), figures.get("depot_call_seconds"), figures.get("depot_calls"),
    )  # fmt: skip


async def seed(auth_url: str, packages_url: str) -> str:
    """An API token of the admin, who owns the benchmark's package."""
    await wait_ready(f"{auth_url}/auth/health/ready")
    await wait_ready(f"{packages_url}/packages/health/ready")
    async with httpx.AsyncClient(timeout=60) as api:
        login = await api.post(f"{auth_url}/auth/login", json={"username": ADMIN[0], "password": ADMIN[1]})
        login.raise_for_status()
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        token = await api.post(f"{auth_url}/auth/api-tokens", json={"name": "client-bench"}, headers=headers)
        token.raise_for_status()
        made = await api.post(f"{packages_url}/packages", json={"name": PACKAGE}, headers=headers)
        made.raise_for_status()
        return str(token.json()["token"])


def wait_available(url: str, token: str, version: str) -> None:
    with httpx.Client(base_url=url, timeout=30) as http:
        access = http.post("/auth/token", json={"grant_type": "api_token", "api_token": token}).json()
        headers = {"Authorization": f"Bearer {access['access_token']}"}
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            status = http.get(f"/packages/{PACKAGE}/versions/{version}", headers=headers).json()["status"]
            if status == "available":
                return
            if status == "rejected":
                raise RuntimeError(f"{PACKAGE} {version} was rejected by validation")
            time.sleep(0.5)
    raise RuntimeError(f"{PACKAGE} {version} was not validated within 600 s")


def frontdoor(routes: dict[str, str], log_path: Path) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    args = [sys.executable, "-m", "devstack.frontdoor", "--host", "127.0.0.1", "--port", str(port)]
    for prefix, upstream in routes.items():
        args += ["--route", f"{prefix}={upstream}"]
    with log_path.open("ab") as log:
        process = spawn(args, output=log, cwd=ROOT)
    wait_for_port(port, process, timeout=60)
    return f"http://127.0.0.1:{port}", process


def worker_environment(url: str, token: str, s3: EmbeddedS3, root: Path, config: Config) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("DEPOT_", "AWS_"))}
    part_size = config.part_size_mib * MiB
    return env | {
        "DEPOT_URL": url,
        "DEPOT_TOKEN": token,
        "XDG_CONFIG_HOME": str(root / "client-config"),
        "XDG_STATE_HOME": str(root / "client-state"),
        "BENCH_THRESHOLD": str(min(64 * MiB, part_size)),
        "BENCH_PART_SIZE": str(part_size),
        "BENCH_CONCURRENCY": str(config.concurrency),
        "BENCH_S3_ENDPOINT": s3.endpoint_url,
        "BENCH_S3_ACCESS_KEY": s3.credentials.access_key,
        "BENCH_S3_SECRET_KEY": s3.credentials.secret_key,
        "BENCH_S3_BUCKET": BUCKET,
    }


def run(config: Config) -> list[Transfer]:
    size = config.size_mib * MiB
    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="depot-bench-", ignore_cleanup_errors=True)))
        postgres, s3 = stack.enter_context(throwaway_servers(root))
        database_url = asyncio.run(prepare(postgres, s3))
        progress("starting auth_service, package_service, the validator and the front door")
        limit = str(2 * size)
        auth_url, _ = stack.enter_context(
            served(
                "auth_service",
                environment(database_url, s3, root, admin_username=ADMIN[0], admin_password=ADMIN[1]),
                root / "auth.log",
            )
        )
        jwks = f"{auth_url}/auth/.well-known/jwks.json"
        package_env = environment(
            database_url, s3, root, auth_jwks_url=jwks, auth_url=auth_url, max_artifact_bytes=limit
        )
        packages_url, _ = stack.enter_context(served("package_service", package_env, root / "packages.log"))
        validator_env = environment(database_url, s3, root, max_artifact_bytes=limit, validation_workers="1")
        stack.enter_context(served("validator_service", validator_env, root / "validator.log"))
        url, door = frontdoor({"/auth": auth_url, "/packages": packages_url}, root / "frontdoor.log")
        stack.callback(stop, door)
        token = asyncio.run(seed(auth_url, packages_url))  # fmt: skip
        env = worker_environment(url, token, s3, root, config)
        source = root / "model.bin"
        progress(f"writing {config.size_mib} MiB of random bytes")
        write_random_file(source, size)
        expected = sha256_of_file(source)
        transfers: list[Transfer] = []
        for number in range(1, config.rounds + 1):
            version = f"1.0.{number}"
            progress(f"round {number} of {config.rounds}: push")
            key = f"boto3/{number}"
            pushes = [("depot-push", [PACKAGE, version, str(source)]), ("s3-upload", [key, str(source)])]
            for kind, args in pushes if number % 2 else reversed(pushes):
                transfers.append(transfer(kind, args, env, size, number))
            wait_available(url, token, version)
            progress(f"round {number} of {config.rounds}: pull")
            copy = root / "copy.bin"
            pulls = [("depot-pull", [f"{PACKAGE}@{version}", str(copy)]), ("s3-download", [key, str(copy)])]
            for kind, args in pulls if number % 2 else reversed(pulls):
                transfers.append(transfer(kind, args, env, size, number))
                if sha256_of_file(copy) != expected:
                    raise RuntimeError(f"{kind} wrote other bytes than were pushed")
                copy.unlink()
    return transfers


def summarize(transfers: list[Transfer], config: Config) -> dict[str, Any]:
    def median(side: str, direction: str, field: str) -> float:
        values: list[float] = [getattr(t, field) for t in transfers if t.side == side and t.direction == direction]
        return round(statistics.median(values), 3)

    ratios = {
        direction: round(median("depot", direction, "mib_per_second") / median("boto3", direction, "mib_per_second"), 2)
        for direction in ("push", "pull")
    }
    pushes = [t for t in transfers if t.side == "depot" and t.direction == "push"]
    call_share = round(statistics.median((t.depot_call_seconds or 0) / t.seconds for t in pushes), 4)
    peak_rss = max(t.peak_rss_mb for t in transfers if t.side == "depot")
    return {
        "benchmark": "client_bench",
        "config": asdict(config),
        "transfers": [asdict(t) for t in transfers],
        "medians_mib_per_second": {
            f"{side} {direction}": median(side, direction, "mib_per_second")
            for side in ("depot", "boto3")
            for direction in ("push", "pull")
        },
        "ratio": ratios,
        "depot_peak_rss_mb": peak_rss,
        "boto3_peak_rss_mb": max(t.peak_rss_mb for t in transfers if t.side == "boto3"),
        "depot_call_share_of_push": call_share,
        "targets": {"ratio": RATIO_TARGET, "rss_mb": RSS_TARGET_MB, "call_share": CALL_SHARE_TARGET},
        "met": {
            "push": ratios["push"] >= RATIO_TARGET,
            "pull": ratios["pull"] >= RATIO_TARGET,
            "rss": peak_rss < RSS_TARGET_MB,
            "call_share": call_share < CALL_SHARE_TARGET,
        },
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
    }


def report(results: dict[str, Any]) -> None:
    print()
    print(f"{'round':>5}  {'side':<6} {'way':<5} {'seconds':>8} {'MiB/s':>8} {'peak RSS MB':>12} {'Depot calls s':>14}")
    for t in results["transfers"]:
        calls = "" if t["depot_call_seconds"] is None else f"{t['depot_call_seconds']:.3f} ({t['depot_calls']})"
        print(f"{t['round']:>5}  {t['side']:<6} {t['direction']:<5} {t['seconds']:>8.2f} {t['mib_per_second']:>8.1f} "
              f"{t['peak_rss_mb']:>12.1f} {calls:>14}")  # fmt: skip
    met = results["met"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    medians = results["medians_mib_per_second"]
    print()
    for direction in ("push", "pull"):
        print(f"{direction}: depot {medians[f'depot {direction}']} MiB/s, boto3 {medians[f'boto3 {direction}']} MiB/s, "
              f"ratio {results['ratio'][direction]} (target >= {RATIO_TARGET}: {verdict(met[direction])})")  # fmt: skip
    print(f"client peak RSS {results['depot_peak_rss_mb']} MB (boto3 {results['boto3_peak_rss_mb']} MB; "
          f"target < {RSS_TARGET_MB}: {verdict(met['rss'])})")  # fmt: skip
    print(f"Depot's own calls: {100 * results['depot_call_share_of_push']:.2f}% of a push "
          f"(target < {100 * CALL_SHARE_TARGET:.0f}%: {verdict(met['call_share'])})")  # fmt: skip
    print(json.dumps(results))


def parse_arguments(argv: Sequence[str] | None) -> Config:
    parser = argparse.ArgumentParser(prog="python -m bench.client_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the file moved (default 1024)")
    parser.add_argument("--rounds", type=int, default=3, help="transfers each way per side (default 3)")
    parser.add_argument("--part-size-mib", type=int, default=16, help="part and range size (default 16)")
    parser.add_argument("--concurrency", type=int, default=4, help="parts or ranges in flight (default 4)")
    args = parser.parse_args(argv)
    if args.size_mib < 1 or args.rounds < 1 or args.part_size_mib < 5 or args.concurrency < 1:
        parser.error("--size-mib, --rounds and --concurrency must be positive, --part-size-mib at least 5")
    return Config(args.size_mib, args.rounds, args.part_size_mib, args.concurrency)


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_arguments(argv)
    report(summarize(run(config), config))


if __name__ == "__main__":
    main()
