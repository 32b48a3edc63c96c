"""auth_service under realistic cost: token verification, and health latency during a login storm.

`python -m bench.auth_bench` (or `make bench`) starts a throwaway embedded PostgreSQL and a real
auth_service (uvicorn, default production argon2 settings) in a temporary folder, measures, stops
both and prints a table plus, as its last line, one JSON object with every figure.

1. Verification: microseconds per `TokenVerifier.verify()` of a real access token, in process: a
   token seen before (target < 50 µs) and a first verification (target <= 1.5x bare PyJWT with the
   same claim checks), next to raw Ed25519, signature-only `jwt.decode`, and HS256 for scale.
2. Login storm: `GET /auth/health` latency at a steady rate, first idle, then while concurrent
   clients loop on `POST /auth/login` (argon2id runs in a thread pool, so health should barely move).

A benchmark reports; it does not assert: a missed target is printed, the exit status stays 0.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ed25519
from jwt.types import Options

from bench.servers import served
from bench.stats import MS, US, Summary, progress, summarize
from common import migrations
from common.auth import KeySet, TokenVerifier
from devstack.postgres import FAST_UNSAFE_SETTINGS, EmbeddedPostgres, ensure_role_and_database
from devstack.processes import free_port

APP_ROLE = "depot"
DATABASE = "depot_bench"
ISSUER = "depot"
AUDIENCE = "depot"
USER_PASSWORD = "bench-" + "correct-horse"  # the bench users' password (throwaway database)

# Targets, stated in the output (reported, never enforced).
HEALTH_P99_TARGET_MS = 50.0
SEEN = "TokenVerifier.verify, token seen before"
FIRST = "TokenVerifier.verify, first time"
BARE = "jwt.decode, same checks (bare PyJWT)"
SEEN_TARGET_US = 50.0
FIRST_RATIO_TARGET = 1.5

# Every WRONG_EVERY-th login of a worker uses a wrong password. Workers sharing a user are staggered,
# so a user never sees more failures in a row than it has workers (well under the 10-failure throttle).
WRONG_EVERY = 3

# Verification-only decode: every claim check off, so that only the signature is verified.
_SIGNATURE_ONLY: Options = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
}


@dataclass(frozen=True)
class Config:
    verifications: int
    health_rate: float
    duration: float
    concurrency: int
    users: int
    hash_threads: int | None


# Statistics


# Servers


async def prepare_database(postgres: EmbeddedPostgres) -> str:
    """An app role owning a migrated database; the services' URL for it."""
    password = uuid.uuid4().hex
    await ensure_role_and_database(postgres.dsn(), role=APP_ROLE, password=password, database=DATABASE)
    url = postgres.dsn(DATABASE, APP_ROLE, password).replace("postgresql://", "postgresql+asyncpg://")
    await migrations.upgrade(url)
    return url


def service_environment(database_url: str, data_dir: Path, hash_threads: int | None) -> dict[str, str]:
    # No ambient DEPOT_* setting may leak in: argon2 runs at its default (production) cost.
    env = {name: value for name, value in os.environ.items() if not name.startswith("DEPOT_")}
    env |= {
        "DEPOT_DATABASE_URL": database_url,
        "DEPOT_DATA_DIR": str(data_dir),
        "DEPOT_LOG_LEVEL": "WARNING",
    }
    if hash_threads is not None:
        env["DEPOT_PASSWORD_HASH_THREADS"] = str(hash_threads)
    return env


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_count(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


# 1. Token verification


ROUND = 200
"""Calls of one variant in a row: variants alternate every ROUND calls, so that a machine busy for a
moment slows them all alike."""


async def time_interleaved(variants: dict[str, Callable[[], Awaitable[object]]], iterations: int) -> dict[str, Summary]:
    """Nanoseconds per call of each variant, measured in alternating rounds after a warm-up."""
    for call in variants.values():
        for _ in range(min(1_000, iterations)):
            await call()
    samples: dict[str, list[int]] = {name: [] for name in variants}
    for _ in range(-(-iterations // ROUND)):
        for name, call in variants.items():
            for _ in range(ROUND):
                start = time.perf_counter_ns()
                await call()
                samples[name].append(time.perf_counter_ns() - start)
    return {name: summarize(values, US) for name, values in samples.items()}


async def bench_verification(token: str, jwks: dict[str, Any], iterations: int) -> dict[str, Summary]:
    keys = KeySet.from_jwks(jwks)
    entry = keys[jwt.get_unverified_header(token)["kid"]]
    remembering = TokenVerifier(issuer=ISSUER, keys=keys)  # the same token again: remembered after one call
    forgetting = TokenVerifier(issuer=ISSUER, keys=keys, cache_size=0)  # each call as for a token never seen
    variants: dict[str, Callable[[], Awaitable[object]]] = {
        SEEN: partial(remembering.verify, token),
        FIRST: partial(forgetting.verify, token),
    }

    async def bare() -> object:  # what a bare endpoint does: PyJWT with the same claim checks
        return jwt.decode(
            token, entry.key, algorithms=[entry.algorithm], audience=AUDIENCE, issuer=ISSUER,
            options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
        )  # fmt: skip

    async def signature_only() -> object:
        return jwt.decode(token, entry.key, algorithms=[entry.algorithm], options=_SIGNATURE_ONLY)

    variants[BARE] = bare
    variants[f"jwt.decode {entry.algorithm}, signature only"] = signature_only
    if isinstance(entry.key, ed25519.Ed25519PublicKey):
        public_key = entry.key
        signing_input, _, encoded = token.rpartition(".")
        signature = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        message = signing_input.encode()

        async def raw() -> object:
            public_key.verify(signature, message)
            return None

        variants["Ed25519 verify (cryptography), raw"] = raw

    # HS256 for scale: the same claims, signed with a 256-bit shared secret.
    claims = jwt.decode(token, options={"verify_signature": False})
    secret = secrets.token_bytes(32)
    hs_token = jwt.encode(claims, secret, algorithm="HS256")

    async def hs256() -> object:
        return jwt.decode(hs_token, secret, algorithms=["HS256"], options=_SIGNATURE_ONLY)

    variants["jwt.decode HS256, signature only"] = hs256
    return await time_interleaved(variants, iterations)


# 2. Health latency, idle and during a login storm


@dataclass
class HealthRun:
    latencies_ns: list[int] = field(default_factory=list)
    errors: int = 0
    max_send_lag_ns: int = 0  # how late the sampler itself sent a request (client-side noise)


async def _health_once(client: httpx.AsyncClient, run: HealthRun) -> None:
    start = time.perf_counter_ns()
    try:
        response = await client.get("/auth/health")
    except httpx.HTTPError:
        run.errors += 1
        return
    elapsed = time.perf_counter_ns() - start
    if response.status_code == 200:
        run.latencies_ns.append(elapsed)
    else:
        run.errors += 1


async def sample_health(client: httpx.AsyncClient, rate: float, duration: float) -> HealthRun:
    """GET /auth/health at a fixed rate, open loop: a slow answer does not delay the next request."""
    run = HealthRun()
    interval_ns = int(1e9 / rate)
    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter_ns()
    for index in range(int(rate * duration)):
        due = start + index * interval_ns
        delay = due - time.perf_counter_ns()
        if delay > 0:
            await asyncio.sleep(delay / 1e9)
        run.max_send_lag_ns = max(run.max_send_lag_ns, time.perf_counter_ns() - due)
        tasks.append(asyncio.create_task(_health_once(client, run)))
    await asyncio.gather(*tasks)
    return run


@dataclass
class Login:
    ended_ns: int
    latency_ns: int
    outcome: str  # "ok", "rejected" (401 for a wrong password), "throttled" (429), "status NNN", "transport error"
    detail: str = ""  # the start of an unexpected answer, or the transport error


async def login_worker(
    client: httpx.AsyncClient, worker: int, usernames: Sequence[str], deadline_ns: int, logins: list[Login]
) -> None:
    username = usernames[worker % len(usernames)]
    attempt = worker // len(usernames)  # staggers the wrong passwords of workers sharing a user
    while time.perf_counter_ns() < deadline_ns:
        wrong = attempt % WRONG_EVERY == 0
        attempt += 1
        body = {"username": username, "password": USER_PASSWORD + ("-wrong" if wrong else "")}
        start = time.perf_counter_ns()
        try:
            response = await client.post("/auth/login", json=body)
        except httpx.HTTPError as error:
            failed = time.perf_counter_ns()
            logins.append(Login(failed, failed - start, "transport error", repr(error)[:200]))
            await asyncio.sleep(0.05)
            continue
        end = time.perf_counter_ns()
        expected = 401 if wrong else 200
        detail = ""
        if response.status_code == expected:
            outcome = "rejected" if wrong else "ok"
        elif response.status_code == 429:
            outcome = "throttled"
        else:
            outcome, detail = f"status {response.status_code}", response.text[:200]
        logins.append(Login(end, end - start, outcome, detail))


@dataclass(frozen=True)
class StormResult:
    health: HealthRun
    logins: list[Login]
    window: tuple[int, int]  # the health sampling window, perf_counter_ns
    service_cpu_seconds: float
    bench_cpu_seconds: float
    service_threads: int


async def login_storm(
    base_url: str, health: httpx.AsyncClient, usernames: Sequence[str], config: Config, pid: int
) -> StormResult:
    """Start the storm, let it fill up for a second, sample health while it runs, then let it drain."""
    ramp_seconds = 1.0
    logins: list[Login] = []
    limits = httpx.Limits(max_connections=config.concurrency * 2, max_keepalive_connections=config.concurrency * 2)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:
        deadline = time.perf_counter_ns() + int((ramp_seconds + config.duration) * 1e9)
        workers = [
            asyncio.create_task(login_worker(client, worker, usernames, deadline, logins))
            for worker in range(config.concurrency)
        ]
        try:
            await asyncio.sleep(ramp_seconds)
            service_cpu, bench_cpu = cpu_seconds(pid), time.process_time()
            start = time.perf_counter_ns()
            sampled = await sample_health(health, config.health_rate, config.duration)
            end = time.perf_counter_ns()
            service_cpu, bench_cpu = cpu_seconds(pid) - service_cpu, time.process_time() - bench_cpu
            threads = thread_count(pid)
            async with asyncio.timeout(120):  # the last logins in flight finish; bounded all the same
                await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
    return StormResult(sampled, logins, (start, end), service_cpu, bench_cpu, threads)


# The run


async def register_users(client: httpx.AsyncClient, count: int) -> list[str]:
    suffix = uuid.uuid4().hex[:8]
    names = [f"bench{index}-{suffix}" for index in range(count)]
    responses = await asyncio.gather(
        *(client.post("/auth/register", json={"username": name, "password": USER_PASSWORD}) for name in names)
    )
    for name, response in zip(names, responses, strict=True):
        if response.status_code != 201:
            raise RuntimeError(f"registering {name}: {response.status_code} {response.text}")
    return names


async def wait_until_healthy(client: httpx.AsyncClient) -> None:
    async with asyncio.timeout(30):
        while True:
            try:
                if (await client.get("/auth/health")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)


async def run_benchmarks(base_url: str, pid: int, config: Config) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:
        await wait_until_healthy(client)
        progress(f"registering {config.users} users (argon2id at its default cost)")
        usernames = await register_users(client, config.users)
        login = await client.post("/auth/login", json={"username": usernames[0], "password": USER_PASSWORD})
        login.raise_for_status()
        token: str = login.json()["access_token"]
        jwks = (await client.get("/auth/.well-known/jwks.json")).raise_for_status().json()

        progress(f"verification: {config.verifications:,} calls per variant, in process")
        verification = await bench_verification(token, jwks, config.verifications)

        for _ in range(20):  # warm the health path and its connection
            await client.get("/auth/health")
        progress(f"health baseline: {config.health_rate:g}/s for {config.duration:g} s, no load")
        service_cpu, bench_cpu = cpu_seconds(pid), time.process_time()
        baseline = await sample_health(client, config.health_rate, config.duration)
        idle_service_cpu, idle_bench_cpu = cpu_seconds(pid) - service_cpu, time.process_time() - bench_cpu
        idle_threads = thread_count(pid)

        progress(f"login storm: {config.concurrency} concurrent clients for {config.duration:g} s, health sampled")
        storm = await login_storm(base_url, client, usernames, config, pid)

    window_logins = [entry for entry in storm.logins if storm.window[0] <= entry.ended_ns <= storm.window[1]]
    window_seconds = (storm.window[1] - storm.window[0]) / 1e9
    answered = [entry for entry in window_logins if entry.outcome in ("ok", "rejected")]
    outcomes = {"ok": 0, "rejected": 0, "throttled": 0} | Counter(entry.outcome for entry in storm.logins)
    health_idle = summarize(baseline.latencies_ns, MS)
    health_storm = summarize(storm.health.latencies_ns, MS)
    return {
        "config": asdict(config),
        "argon2": "service defaults (time_cost=3, memory=64 MiB, parallelism=2)",
        "verification_us": {name: asdict(summary) for name, summary in verification.items()},
        "health_ms": {
            "baseline": asdict(health_idle) | {"errors": baseline.errors},
            "storm": asdict(health_storm) | {"errors": storm.health.errors},
            "p99_ratio": round(health_storm.p99 / health_idle.p99, 2),
            "p99_delta_ms": round(health_storm.p99 - health_idle.p99, 3),
            "max_sampler_lag_ms": {
                "baseline": round(baseline.max_send_lag_ns / MS, 3),
                "storm": round(storm.health.max_send_lag_ns / MS, 3),
            },
        },
        "storm": {
            "logins_per_second": round(len(answered) / window_seconds, 2),
            "latency_ms": asdict(summarize([entry.latency_ns for entry in answered], MS)),
            "outcomes": outcomes,
            "first_unexpected": next((f"{e.outcome}: {e.detail}" for e in storm.logins if e.detail), None),
        },
        "cpu_percent_of_one_core": {
            "service_idle": round(100 * idle_service_cpu / config.duration, 1),
            "service_storm": round(100 * storm.service_cpu_seconds / window_seconds, 1),
            "bench_client_idle": round(100 * idle_bench_cpu / config.duration, 1),
            "bench_client_storm": round(100 * storm.bench_cpu_seconds / window_seconds, 1),
        },
        "service_threads": {"idle": idle_threads, "storm": storm.service_threads},
        "target": {
            "health_p99_storm_ms_max": HEALTH_P99_TARGET_MS,
            "met": health_storm.p99 <= HEALTH_P99_TARGET_MS,
        },
    }


def report(results: dict[str, Any]) -> None:
    print()
    print("Token verification, in process (µs per call)")
    print(f"  {'':<40} {'mean':>9} {'p50':>9} {'p99':>9} {'max':>9}")
    for name, row in results["verification_us"].items():
        print(f"  {name:<40} {row['mean']:>9.2f} {row['p50']:>9.2f} {row['p99']:>9.2f} {row['max']:>9.1f}")
    rows = results["verification_us"]
    seen, first, bare = rows[SEEN]["p50"], rows[FIRST]["p50"], rows[BARE]["p50"]
    print(
        f"  Target: a token seen before < {SEEN_TARGET_US:g} µs: {seen:.2f} µs, "
        f"{'MET' if seen < SEEN_TARGET_US else 'MISSED'}"
    )
    ratio = first / bare
    print(
        f"  Target: a first verification <= {FIRST_RATIO_TARGET:g}x bare PyJWT: {ratio:.2f}x, "
        f"{'MET' if ratio <= FIRST_RATIO_TARGET else 'MISSED'}"
    )

    health = results["health_ms"]
    storm = results["storm"]
    config = results["config"]
    print()
    print(f"GET /auth/health at {config['health_rate']:g}/s for {config['duration']:g} s (ms)")
    print(f"  {'':<22} {'n':>6} {'p50':>9} {'p99':>9} {'max':>9} {'errors':>7}")
    for phase in ("baseline", "storm"):
        row = health[phase]
        label = "no load" if phase == "baseline" else f"{config['concurrency']} logins in flight"
        print(
            f"  {label:<22} {row['count']:>6} {row['p50']:>9.2f} {row['p99']:>9.2f} {row['max']:>9.2f} "
            f"{row['errors']:>7}"
        )
    print(f"  p99 storm / baseline: {health['p99_ratio']:.2f}x (+{health['p99_delta_ms']:.2f} ms)")
    print()
    latency = storm["latency_ms"]
    print(f"Login storm ({config['users']} users, 1 in {WRONG_EVERY} passwords wrong)")
    print(f"  throughput: {storm['logins_per_second']:.2f} logins/s")
    print(f"  latency (ms): p50 {latency['p50']:.0f}  p99 {latency['p99']:.0f}  max {latency['max']:.0f}")
    print(f"  outcomes: {storm['outcomes']}")
    if storm["first_unexpected"]:
        print(f"  first unexpected answer: {storm['first_unexpected']}")
    cpu = results["cpu_percent_of_one_core"]
    print(
        f"  CPU (% of one core): service {cpu['service_idle']} idle, {cpu['service_storm']} storm; "
        f"bench client {cpu['bench_client_idle']} idle, {cpu['bench_client_storm']} storm"
    )
    print(f"  service threads: {results['service_threads']['idle']} idle, {results['service_threads']['storm']} storm")
    print()
    target = results["target"]
    verdict = "MET" if target["met"] else "MISSED (reported, not enforced)"
    print(
        f"Target: health p99 during the storm <= {target['health_p99_storm_ms_max']:g} ms "
        f"(argon2 runs off the event loop): {verdict}"
    )
    print(json.dumps(results, separators=(",", ":"), ensure_ascii=False))


def parse_arguments(argv: Sequence[str] | None) -> Config:
    parser = argparse.ArgumentParser(prog="python -m bench.auth_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--verifications", type=int, default=20_000, help="calls per verification variant")
    parser.add_argument("--health-rate", type=float, default=50.0, help="health requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per health phase (and of the storm)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent login clients in the storm")
    parser.add_argument("--users", type=int, default=8, help="pre-registered users the storm logs in as")
    parser.add_argument(
        "--hash-threads", type=int, default=None, help="DEPOT_PASSWORD_HASH_THREADS for the service (default: its own)"
    )
    args = parser.parse_args(argv)
    if not (1 <= args.verifications <= 1_000_000 and 0 < args.health_rate <= 1_000 and 1 <= args.duration <= 120):
        parser.error("--verifications 1..1e6, --health-rate 0..1000, --duration 1..120")
    if not (1 <= args.concurrency <= 256 and 1 <= args.users <= 64 and 1 <= (args.hash_threads or 1) <= 64):
        parser.error("--concurrency 1..256, --users 1..64, --hash-threads 1..64")
    return Config(args.verifications, args.health_rate, args.duration, args.concurrency, args.users, args.hash_threads)


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_arguments(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="depot-bench-", ignore_cleanup_errors=True) as folder:
        root = Path(folder)
        postgres = EmbeddedPostgres(root / "postgres", free_port(), FAST_UNSAFE_SETTINGS)
        try:
            progress("starting PostgreSQL and migrating")
            postgres.start()
            database_url = asyncio.run(prepare_database(postgres))
            env = service_environment(database_url, root / "data", config.hash_threads)
            progress("starting auth_service")
            with served("auth_service", env, root / "auth_service.log", access_log=True) as (base_url, process):
                results = asyncio.run(run_benchmarks(base_url, process.pid, config))
        finally:
            postgres.stop()
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    report(results)


if __name__ == "__main__":
    main()
