"""The services' metadata reads next to bare endpoints that answer the same facts (issue 14).

`python -m bench.read_bench` (or `make bench`) starts, in a temporary folder, a throwaway embedded
PostgreSQL and SeaweedFS, auth_service and package_service as uvicorn processes served as the images
serve them (the Dockerfile's `UVICORN_*` settings, `DEPOT_ENVIRONMENT=production`, JSON logs at the
default level: every access line is written), and the anchors of `bench/anchors.py` under the same
uvicorn settings on the same database. It seeds public packages with versions and a reader (a user
with no groups, who logs in for a real access token), then loads each endpoint with a closed loop
of keep-alive connections from a process of its own (`bench/loadgen.py`):

- package_service `GET /packages/{name}` (a random seeded name), `GET /packages/{name}/versions/{v}`
  (a random seeded version), `GET /packages?q=vision`, and auth_service `GET /auth/me`;
- next to each, its anchor: Starlette + asyncpg + PyJWT EdDSA verification, one SQL query; for
  `GET /packages/{name}` also the anchor without any token check.

Runs are interleaved (service, anchor, ..., in alternating order from round to round) and each
figure is the median of its rounds. It prints a table, the ratios to the anchors and the targets,
then one JSON object with every run as the last line. A benchmark reports; it does not assert.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import aioboto3
import asyncpg
import httpx
from cryptography.hazmat.primitives import serialization

from bench.loadgen import Plan, Result, parse_result, request_bytes
from bench.package_bench import s3_options
from bench.servers import ROOT, served, throwaway_servers
from bench.stats import progress
from common import migrations
from devstack.postgres import EmbeddedPostgres, ensure_role_and_database
from devstack.s3 import EmbeddedS3
from devstack.tokens import TokenSigner

APP_ROLE = "depot"
DATABASE = "depot_bench"
BUCKET = "depot-bench"
READER = "bench-reader"
READER_PASSWORD = "bench-" + "reader-password"  # a throwaway database's user
SEARCH_TERM = "vision"  # in one description in four
VERSIONS = ("1.0.0", "1.1.0", "2.0.0-rc.1")  # all available: `latest` is 1.1.0, three versions each
SEED_CONCURRENCY = 8

# Targets (issue 14), stated in the output, never enforced.
RPS_RATIO_TARGET = 0.5
P99_RATIO_TARGET = 2.0
BUSY_MACHINE_PERCENT = 25.0


@dataclass(frozen=True)
class Config:
    connections: int
    duration: float
    warmup: float
    rounds: int
    packages: int
    endpoints: tuple[str, ...]


@dataclass(frozen=True)
class Variant:
    """One thing loaded: a service's endpoint or an anchor."""

    label: str
    kind: str  # "service", "anchor" (token checked: the one the targets compare with), "anchor, no token"
    server: str  # "auth_service", "package_service" or "anchors"
    paths: list[str]
    token: bool = True


@dataclass(frozen=True)
class Endpoint:
    key: str
    title: str
    variants: list[Variant]


@dataclass(frozen=True)
class Run:
    endpoint: str
    variant: str
    kind: str
    round: int
    result: Result


# Servers and seed


async def prepare(postgres: EmbeddedPostgres, s3: EmbeddedS3) -> tuple[str, str]:
    """A migrated database owned by an app role, and the bucket: the SQLAlchemy URL and the asyncpg DSN."""
    password = uuid.uuid4().hex
    await ensure_role_and_database(postgres.dsn(), role=APP_ROLE, password=password, database=DATABASE)
    dsn = postgres.dsn(DATABASE, APP_ROLE, password)
    url = dsn.replace("postgresql://", "postgresql+asyncpg://")
    await migrations.upgrade(url)
    async with aioboto3.Session().client("s3", **s3_options(s3)) as client:
        await client.create_bucket(Bucket=BUCKET)
    return url, dsn


def environments(
    database_url: str, dsn: str, s3: EmbeddedS3, signer: TokenSigner, data_dir: Path
) -> dict[str, dict[str, str]]:
    """Each server's environment: the images' settings (production, JSON logs at the default level) and
    what this stack needs; no `DEPOT_*` variable of the shell leaks in."""
    base = {name: value for name, value in os.environ.items() if not name.startswith(("DEPOT_", "BENCH_"))}
    base |= {"DEPOT_ENVIRONMENT": "production", "DEPOT_LOG_FORMAT": "json", "DEPOT_DATABASE_URL": database_url}
    private_pem = signer.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return {
        "auth_service": base | {
            "DEPOT_SIGNING_KEY": private_pem,
            "DEPOT_DATA_DIR": str(data_dir),
            # A run may outlast the default 15 minutes; the token is verified the same way.
            "DEPOT_ACCESS_TOKEN_TTL_SECONDS": "7200",
        },
        "package_service": base | {
            "DEPOT_S3_ENDPOINT_URL": s3.endpoint_url,
            "DEPOT_S3_ACCESS_KEY_ID": s3.credentials.access_key,
            "DEPOT_S3_SECRET_ACCESS_KEY": s3.credentials.secret_key,
            "DEPOT_S3_BUCKET": BUCKET,
            "DEPOT_AUTH_PUBLIC_KEYS": signer.public_pem,
        },
        "anchors": base | {"BENCH_ANCHOR_DSN": dsn, "BENCH_ANCHOR_PUBLIC_KEY": signer.public_pem},
    }  # fmt: skip


async def wait_ready(client: httpx.AsyncClient, path: str) -> None:
    async with asyncio.timeout(60):
        while True:
            try:
                if (await client.get(path)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)


def description(index: int) -> str:
    words = ["weights", "for", "fast", "inference", "and", "evaluation", "of", "model", str(index)]
    if index % 4 == 0:
        words.insert(index % len(words), SEARCH_TERM)
    return f"Package {index}: " + " ".join(words) + "."


async def gather_bounded(work: Sequence[Callable[[], Awaitable[None]]], limit: int) -> None:
    semaphore = asyncio.Semaphore(limit)

    async def one(step: Callable[[], Awaitable[None]]) -> None:
        async with semaphore:
            await step()

    await asyncio.gather(*(one(step) for step in work))


async def seed(urls: dict[str, str], dsn: str, owner: dict[str, str], count: int) -> tuple[list[str], str]:
    """Public packages with versions (made available, as verdicts would), and the reader's access token."""
    async with (
        httpx.AsyncClient(base_url=urls["package_service"], timeout=60) as packages,
        httpx.AsyncClient(base_url=urls["auth_service"], timeout=60) as auth,
    ):
        await wait_ready(packages, "/packages/health/ready")
        await wait_ready(auth, "/auth/health/ready")
        account = {"username": READER, "password": READER_PASSWORD}
        (await auth.post("/auth/register", json=account)).raise_for_status()
        login = await auth.post("/auth/login", json=account)
        login.raise_for_status()
        token: str = login.json()["access_token"]

        names = [f"bench-pkg-{index:03d}" for index in range(count)]
        progress(f"seeding {count} public packages with {len(VERSIONS)} versions each")

        async def create(index: int) -> None:
            body = {"name": names[index], "visibility": "public", "description": description(index)}
            response = await packages.post("/packages", json=body, headers=owner)
            if response.status_code != 201:
                raise RuntimeError(f"seeding {names[index]}: {response.status_code} {response.text[:300]}")
            for version in VERSIONS:
                path = f"/packages/{names[index]}/versions/{version}/content"
                content = f"{names[index]} {version}".encode()
                response = await packages.put(path, content=content, headers=owner)
                if response.status_code != 201:
                    raise RuntimeError(f"seeding {path}: {response.status_code} {response.text[:300]}")

        await gather_bounded([partial(create, index) for index in range(count)], SEED_CONCURRENCY)
    validation = json.dumps({"status": "passed", "checks": [{"name": "sha256", "status": "passed"}]})
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            "UPDATE packages.versions SET status = 'available', validated_at = now(), validation = $1::jsonb",
            validation,
        )
    finally:
        await connection.close()
    return names, token


def endpoints(names: list[str]) -> list[Endpoint]:
    packages = [f"/packages/{name}" for name in names]
    versions = [f"/packages/{name}/versions/{version}" for name in names for version in VERSIONS]
    search = [f"/packages?q={SEARCH_TERM}"]
    anchor = "bare Starlette + asyncpg + PyJWT EdDSA verification"
    return [
        Endpoint("package", "GET /packages/{name}", [
            Variant("package_service GET /packages/{name}", "service", "package_service", packages),
            Variant(anchor, "anchor", "anchors", packages),
            Variant("bare Starlette + asyncpg, no token check", "anchor, no token", "anchors",
                    [f"/bare{path}" for path in packages], token=False),
        ]),
        Endpoint("version", "GET /packages/{name}/versions/{version}", [
            Variant("package_service GET /packages/{name}/versions/{version}", "service", "package_service", versions),
            Variant(anchor, "anchor", "anchors", versions),
        ]),
        Endpoint("search", f"GET /packages?q={SEARCH_TERM}", [
            Variant(f"package_service GET /packages?q={SEARCH_TERM}", "service", "package_service", search),
            Variant(anchor, "anchor", "anchors", search),
        ]),
        Endpoint("me", "GET /auth/me", [
            Variant("auth_service GET /auth/me", "service", "auth_service", ["/auth/me"]),
            Variant(anchor, "anchor", "anchors", ["/auth/me"]),
        ]),
    ]  # fmt: skip


# Same facts


def _comparable(value: Any) -> Any:
    """JSON with its times as instants, so that two spellings of one time compare equal."""
    if isinstance(value, dict):
        return {key: _comparable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_comparable(item) for item in value]
    if isinstance(value, str) and len(value) >= 20 and value[4:5] == "-" and value[10:11] == "T":
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return value
    return value


async def same_facts(urls: dict[str, str], token: str, cases: list[Endpoint]) -> dict[str, bool]:
    """Whether each anchor answers what its service answers (the first path of each, read once)."""
    headers = {"Authorization": f"Bearer {token}"}
    found: dict[str, bool] = {}
    async with httpx.AsyncClient(timeout=30) as client:
        for endpoint in cases:
            answers = []
            for variant in endpoint.variants:
                response = await client.get(urls[variant.server] + variant.paths[0], headers=headers)
                answers.append((variant.label, response.status_code, _comparable(response.json())))
            found[endpoint.key] = all(answer[1:] == answers[0][1:] for answer in answers)
            if not found[endpoint.key]:
                progress(f"WARNING: the answers to {endpoint.title} differ: {answers}")
    return found


# Load


def load(config: Config, url: str, variant: Variant, token: str, pids: tuple[int, int]) -> Result:
    """One closed-loop run against `url`, from a process of its own (`bench/loadgen.py`)."""
    host, port = url.removeprefix("http://").split(":")
    headers = {"Authorization": f"Bearer {token}"} if variant.token else {}
    plan = Plan(
        host=host, port=int(port), requests=[request_bytes(host, int(port), path, headers) for path in variant.paths],
        connections=config.connections, warmup=config.warmup, duration=config.duration, server_pid=pids[0],
        postgres_pid=pids[1],
    )  # fmt: skip
    finished = subprocess.run(
        [sys.executable, "-m", "bench.loadgen"], input=json.dumps(asdict(plan)), capture_output=True, text=True,
        cwd=ROOT, timeout=config.warmup + config.duration + 120, check=False,
    )  # fmt: skip
    if finished.returncode != 0:
        raise RuntimeError(f"the load generator failed ({finished.returncode}):\n{finished.stderr[-3000:]}")
    return parse_result(finished.stdout)


def measure(
    config: Config, cases: list[Endpoint], urls: dict[str, str], pids: dict[str, int], *, postgres_pid: int, token: str
) -> list[Run]:
    runs = []
    for endpoint in cases:
        for round_ in range(config.rounds):
            # Service first, then last: a drift of the machine favours neither side.
            order = endpoint.variants if round_ % 2 == 0 else list(reversed(endpoint.variants))
            for variant in order:
                result = load(config, urls[variant.server], variant, token, (pids[variant.server], postgres_pid))
                runs.append(Run(endpoint.key, variant.label, variant.kind, round_, result))
                cpu = result.cpu_percent_of_one_core
                progress(
                    f"{endpoint.title} [{variant.kind}] round {round_ + 1}: {result.requests_per_second:.0f} req/s, "
                    f"p50 {result.latency_ms.p50:.1f} ms, p99 {result.latency_ms.p99:.1f} ms, errors {result.errors}, "
                    f"CPU server {cpu['server']:.0f}% client {cpu['client']:.0f}%"
                )
    return runs


# Figures


def summary(runs: list[Run], cases: list[Endpoint]) -> list[dict[str, Any]]:
    """Per endpoint and variant: the medians of its rounds (and the best rate); ratios of the service to its anchor."""
    rows = []
    for endpoint in cases:
        by_variant: dict[str, dict[str, Any]] = {}
        for variant in endpoint.variants:
            mine = [run.result for run in runs if run.endpoint == endpoint.key and run.variant == variant.label]
            cpu_keys = mine[0].cpu_percent_of_one_core.keys()
            by_variant[variant.kind] = {
                "label": variant.label,
                "kind": variant.kind,
                "requests_per_second": round(statistics.median(r.requests_per_second for r in mine), 1),
                "best_requests_per_second": max(r.requests_per_second for r in mine),
                "p50_ms": round(statistics.median(r.latency_ms.p50 for r in mine), 2),
                "p99_ms": round(statistics.median(r.latency_ms.p99 for r in mine), 2),
                "errors": sum(r.errors for r in mine),
                "statuses": [r.statuses for r in mine],
                "first_error": next((r.first_error for r in mine if r.first_error), None),
                "cpu_percent_of_one_core": {
                    key: round(statistics.median(r.cpu_percent_of_one_core[key] for r in mine), 1) for key in cpu_keys
                },
                # What a request costs the server, whatever else the machine did meanwhile.
                "server_cpu_ms_per_request": round(
                    statistics.median(10 * r.cpu_percent_of_one_core["server"] / r.requests_per_second for r in mine),
                    3,
                ),
                "runs_requests_per_second": [r.requests_per_second for r in mine],
                "runs_p99_ms": [r.latency_ms.p99 for r in mine],
            }
        service, anchor = by_variant["service"], by_variant["anchor"]
        rps_ratio = round(service["requests_per_second"] / anchor["requests_per_second"], 3)
        p99_ratio = round(service["p99_ms"] / anchor["p99_ms"], 3)
        rows.append(
            {
                "endpoint": endpoint.key,
                "title": endpoint.title,
                "variants": list(by_variant.values()),
                "rps_ratio": rps_ratio,
                "p99_ratio": p99_ratio,
                "cpu_ratio": round(anchor["server_cpu_ms_per_request"] / service["server_cpu_ms_per_request"], 3),
                "rps_met": rps_ratio >= RPS_RATIO_TARGET and service["errors"] == 0,
                "p99_met": p99_ratio <= P99_RATIO_TARGET and service["errors"] == 0,
            }
        )
    return rows


def verdict(met: bool) -> str:
    return "MET" if met else "MISSED"


def report(results: dict[str, Any]) -> None:
    config = results["config"]
    print()
    print(
        f"Reads: {config['connections']} keep-alive connections in a closed loop, {config['duration']:g} s "
        f"(after {config['warmup']:g} s of warm-up) per run, {config['rounds']} rounds interleaved; medians of the "
        f"rounds; latency in ms"
    )
    print()
    print(
        "| endpoint | requests/s | p50 | p99 | errors | server CPU per request | "
        "CPU % server / postgres / client / others |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in results["endpoints"]:
        for variant in row["variants"]:
            cpu = variant["cpu_percent_of_one_core"]
            label = variant["label"] if variant["kind"] == "service" else f"  {variant['label']}"
            print(
                f"| {label} | {variant['requests_per_second']:,.0f} | {variant['p50_ms']:.1f} ms | "
                f"{variant['p99_ms']:.1f} ms | {variant['errors']} | {variant['server_cpu_ms_per_request']:.2f} ms | "
                f"{cpu['server']:.0f} / {cpu['postgres']:.0f} / "
                f"{cpu['client']:.0f} / {cpu['others']:.0f} |"
            )
            if variant["first_error"]:
                print(f"|   first error: {variant['first_error'][:200]!r} | | | | | | |")
    print()
    print(f"Targets: requests/s >= {RPS_RATIO_TARGET:g}x the anchor's, p99 <= {P99_RATIO_TARGET:g}x the anchor's "
          f"(the anchor with the token check; no errors)")  # fmt: skip
    print(f"  {'endpoint':<42} {'rps ratio':>9} {'':<7} {'p99 ratio':>9} {'':<7} {'CPU ratio':>9}")
    for row in results["endpoints"]:
        print(
            f"  {row['title']:<42} {row['rps_ratio']:>8.2f}x {verdict(row['rps_met']):<7} "
            f"{row['p99_ratio']:>8.2f}x {verdict(row['p99_met']):<7} {row['cpu_ratio']:>8.2f}x"
        )
    print(
        "  (CPU ratio: the anchor's server CPU per request over the service's, the requests/s ratio if both were\n"
        "   bound by one core each: on a machine busy with other work, it moves less than the rates do)"
    )
    if not all(results["same_facts"].values()):
        print("  Note: an anchor's answer differed from its service's (see the warnings above).")
    if results["others_cpu_percent_mean"] > BUSY_MACHINE_PERCENT:
        print(
            f"  Note: other processes used {results['others_cpu_percent_mean']:.0f}% of a core on average while "
            f"measuring: the machine was shared, figures are noisy (see the spread of the rounds in the JSON)."
        )
    print(f"  (wall time {results['wall_seconds']:.0f} s)")
    print(json.dumps(results, separators=(",", ":"), ensure_ascii=False))


# The run


def run(config: Config) -> dict[str, Any]:
    signer = TokenSigner()
    owner = signer.headers("bench-owner", lifetime=7200)
    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="depot-bench-", ignore_cleanup_errors=True)))
        postgres, s3 = stack.enter_context(throwaway_servers(root))
        database_url, dsn = asyncio.run(prepare(postgres, s3))
        envs = environments(database_url, dsn, s3, signer, root / "auth")
        urls, pids = {}, {}
        for server, factory in (
            ("auth_service", None), ("package_service", None), ("anchors", "bench.anchors:create_app"),
        ):  # fmt: skip
            progress(f"starting {server}")
            url, process = stack.enter_context(
                served(server, envs[server], root / f"{server}.log", factory=factory, production=True)
            )
            urls[server], pids[server] = url, process.pid
        names, token = asyncio.run(seed(urls, dsn, owner, config.packages))
        cases = [endpoint for endpoint in endpoints(names) if endpoint.key in config.endpoints]
        facts = asyncio.run(same_facts(urls, token, cases))
        postgres_pid = int((postgres.data / "postmaster.pid").read_text().split("\n", 1)[0])
        runs = measure(config, cases, urls, pids, postgres_pid=postgres_pid, token=token)
    rows = summary(runs, cases)
    others = [run.result.cpu_percent_of_one_core["others"] for run in runs]
    return {
        "config": asdict(config),
        "load_client": "bench.loadgen (uvloop, asyncio.Protocol per connection)",
        "same_facts": facts,
        "endpoints": rows,
        "runs": [
            {"endpoint": run.endpoint, "variant": run.variant, "round": run.round, **asdict(run.result)} for run in runs
        ],
        "others_cpu_percent_mean": round(statistics.fmean(others), 1),
    }


ENDPOINT_KEYS = ("package", "version", "search", "me")


def parse_arguments(argv: Sequence[str] | None) -> Config:
    parser = argparse.ArgumentParser(prog="python -m bench.read_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=50, help="keep-alive connections of the load")
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds of each run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each run's window")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each variant, interleaved (medians compared)")
    parser.add_argument("--packages", type=int, default=200, help="public packages seeded")
    parser.add_argument(
        "--endpoints", nargs="+", choices=ENDPOINT_KEYS, default=list(ENDPOINT_KEYS), help="the endpoints to load"
    )
    args = parser.parse_args(argv)
    if not (1 <= args.connections <= 512 and 1 <= args.duration <= 120 and 0 <= args.warmup <= 30):
        parser.error("--connections 1..512, --duration 1..120, --warmup 0..30")
    if not (1 <= args.rounds <= 20 and 1 <= args.packages <= 5000):
        parser.error("--rounds 1..20, --packages 1..5000")
    keys = tuple(key for key in ENDPOINT_KEYS if key in args.endpoints)
    return Config(args.connections, args.duration, args.warmup, args.rounds, args.packages, keys)


def _terminate(signum: int, _: FrameType | None) -> None:
    # SIGTERM unwinds like Ctrl-C: every server is stopped and the folder deleted.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_arguments(argv)
    signal.signal(signal.SIGTERM, _terminate)
    started = time.perf_counter()
    load_average = os.getloadavg()
    results = run(config)
    results["machine"] = {"cpus": os.cpu_count(), "load_average_at_start": [round(x, 2) for x in load_average]}
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    report(results)


if __name__ == "__main__":
    main()
