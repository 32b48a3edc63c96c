"""The package page of web_service next to the package API's own `GET /packages/{name}`, in one run.

`python -m bench.web_bench` (or `make bench`) starts, in a temporary folder, a throwaway embedded
PostgreSQL (migrated) and SeaweedFS, then auth_service, package_service and web_service as real
uvicorn processes, wired as in `make run` (package_service trusts auth_service's JWKS; web_service
calls both over HTTP). A user signs in through the pages; a public package gets a description and
`--versions` uploaded versions. Then `--rounds` rounds, each loading both endpoints for `--duration`
seconds with `--concurrency` keep-alive connections, the order alternating from round to round:

- `GET /p/{name}` on web_service with the user's session cookie: a sealed cookie opened, one call
  to package_service (`/packages/{name}/versions?include=package`) with the user's token, a Jinja2
  page;
- `GET /packages/{name}` on package_service with the same user's access token.

The load comes from `wrk` when it is installed (one thread: far less CPU than the services), else
from a minimal keep-alive asyncio client (uvloop) in a process of its own. Requests per second and
p50/p99 of each round, the medians, the ratio of the medians (target: the page at least 0.5x the
API), and the CPU of each process in % of one core. A table, then one JSON line with every figure.

A benchmark reports; it does not assert: a missed target is printed, the exit status stays 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil  # type: ignore[import-untyped]
import uvloop

from bench.package_bench import RAW_CLIENT_ERRORS, RawClient, prepare
from bench.servers import ROOT, served, throwaway_servers
from bench.stats import MS, progress, summarize
from devstack.s3 import WEED, EmbeddedS3

ADMIN = ("bench-admin", "a bench admin passphrase")
READER = ("bench-reader", "a bench reader passphrase")
PACKAGE = "vision-transformer-small"
RATIO_TARGET = 0.5
BUSY_MACHINE_PERCENT = 25.0
ROLES = ("web_service", "package_service", "auth_service", "postgres", "s3", "load client", "bench", "others")


@dataclass(frozen=True)
class Config:
    rounds: int
    duration: float
    concurrency: int
    versions: int
    client: str  # "wrk" or "raw"


@dataclass(frozen=True)
class Target:
    endpoint: str
    url: str
    headers: dict[str, str]


@dataclass(frozen=True)
class Round:
    endpoint: str
    round: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    cpu_percent_of_one_core: dict[str, float]


# The load, from wrk or from the raw client in a process of its own

WRK_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk_load(target: Target, config: Config) -> dict[str, float]:
    args = ["wrk", "-t1", f"-c{config.concurrency}", f"-d{config.duration:g}s", "--latency", "--timeout", "30s"]
    for name, value in target.headers.items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run([*args, target.url], capture_output=True, text=True, check=True).stdout  # noqa: S603

    def latency(percent: str) -> float:
        found = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        if not found:
            raise RuntimeError(f"no {percent}% latency in wrk's output:\n{out}")
        return float(found.group(1)) * WRK_UNITS[found.group(2)]

    requests = re.search(r"(\d+) requests in", out)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not requests or not rate:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(failed.group(1)) if failed else 0
    errors += sum(int(n) for n in socket_errors.groups()) if socket_errors else 0
    return {"requests_per_second": float(rate.group(1)), "p50_ms": latency("50"), "p99_ms": latency("99"),
            "requests": int(requests.group(1)), "errors": errors}  # fmt: skip


async def raw_load(url: str, headers: dict[str, str], concurrency: int, duration: float) -> dict[str, float]:
    """`concurrency` keep-alive connections in a closed loop on one URL for `duration` seconds."""
    parts = urlsplit(url)
    base, path = f"{parts.scheme}://{parts.netloc}", parts.path + (f"?{parts.query}" if parts.query else "")
    latencies: list[int] = []
    errors = 0
    deadline = time.perf_counter_ns() + int(duration * 1e9)

    async def worker() -> None:
        nonlocal errors
        client = RawClient(base, headers)
        try:
            while time.perf_counter_ns() < deadline:
                start = time.perf_counter_ns()
                try:
                    status, _ = await client.get(path)
                except RAW_CLIENT_ERRORS:
                    errors += 1
                    continue
                latencies.append(time.perf_counter_ns() - start)
                errors += status != 200
        finally:
            await client.aclose()

    started = time.perf_counter_ns()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = (time.perf_counter_ns() - started) / 1e9
    summary = summarize(latencies, MS)
    return {"requests_per_second": round(len(latencies) / seconds, 1), "p50_ms": summary.p50, "p99_ms": summary.p99,
            "requests": len(latencies), "errors": errors}  # fmt: skip


def raw_load_in_a_process(target: Target, config: Config) -> dict[str, float]:
    job = {"url": target.url, "headers": target.headers, "concurrency": config.concurrency, "duration": config.duration}
    args = [sys.executable, "-m", "bench.web_bench", "--load-worker", json.dumps(job)]
    out = subprocess.run(args, capture_output=True, text=True, check=True, cwd=ROOT).stdout  # noqa: S603
    return dict(json.loads(out.strip().splitlines()[-1]))


# CPU of every process involved


def cpu_snapshot(roles_by_pid: dict[int, str]) -> tuple[dict[tuple[str, int], float], float]:
    processes: dict[tuple[str, int], float] = {}
    me = psutil.Process()
    for process in [me, *me.children(recursive=True)]:
        try:
            name = process.name()
            if process.pid in roles_by_pid:
                role = roles_by_pid[process.pid]
            elif process.pid == me.pid:
                role = "bench"
            elif name == "postgres":
                role = "postgres"
            elif name == WEED.name:
                role = "s3"
            else:
                continue
            times = process.cpu_times()
        except psutil.Error:
            continue
        processes[role, process.pid] = times.user + times.system
    # The load client has ended (and was waited for) by the second snapshot: its CPU is in ours.
    mine = me.cpu_times()
    processes["load client", 0] = mine.children_user + mine.children_system
    machine = psutil.cpu_times()
    return processes, machine.user + machine.nice + machine.system + machine.irq + machine.softirq + machine.steal


def cpu_percent(before: tuple[dict[tuple[str, int], float], float], after: tuple[dict[tuple[str, int], float], float],
                seconds: float) -> dict[str, float]:  # fmt: skip
    used = dict.fromkeys(ROLES, 0.0)
    for (role, pid), value in after[0].items():
        used[role] += value - before[0].get((role, pid), 0.0)  # a process that started meanwhile: all of it
    used["others"] = max(0.0, after[1] - before[1] - sum(used.values()))
    return {role: round(100 * value / seconds, 1) for role, value in used.items()}


def measure(target: Target, config: Config, number: int, roles_by_pid: dict[int, str]) -> Round:
    progress(f"round {number}: {target.endpoint}, {config.concurrency} connections, {config.duration:g} s")
    before, started = cpu_snapshot(roles_by_pid), time.perf_counter()
    figures = wrk_load(target, config) if config.client == "wrk" else raw_load_in_a_process(target, config)
    cpu = cpu_percent(before, cpu_snapshot(roles_by_pid), time.perf_counter() - started)
    return Round(target.endpoint, number, cpu_percent_of_one_core=cpu, **figures)  # type: ignore[arg-type]


# The stack


def environment(database_url: str, s3: EmbeddedS3, data_dir: Path, **settings: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("DEPOT_")}
    env |= {
        "DEPOT_DATABASE_URL": database_url,
        "DEPOT_S3_ENDPOINT_URL": s3.endpoint_url,
        "DEPOT_S3_ACCESS_KEY_ID": s3.credentials.access_key,
        "DEPOT_S3_SECRET_ACCESS_KEY": s3.credentials.secret_key,
        "DEPOT_S3_BUCKET": "depot-bench",
        "DEPOT_DATA_DIR": str(data_dir),
        "DEPOT_LOG_LEVEL": "WARNING",
        "DEPOT_LOG_FORMAT": "json",
    }
    return env | {f"DEPOT_{name.upper()}": value for name, value in settings.items()}


async def wait_ready(url: str) -> None:
    async with httpx.AsyncClient(timeout=5) as client, asyncio.timeout(60):
        while True:
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)


async def seed(auth_url: str, packages_url: str, web_url: str, versions: int) -> tuple[dict[str, str], str]:
    """The reader's API headers and session cookie, after a package with versions was published."""
    await wait_ready(f"{auth_url}/auth/health/ready")
    await wait_ready(f"{packages_url}/packages/health/ready")
    async with httpx.AsyncClient(timeout=60) as api:

        async def login(username: str, password: str) -> dict[str, str]:
            answer = await api.post(f"{auth_url}/auth/login", json={"username": username, "password": password})
            answer.raise_for_status()
            return {"Authorization": f"Bearer {answer.json()['access_token']}"}

        admin = await login(*ADMIN)
        made = await api.post(f"{auth_url}/auth/users", headers=admin,
                              json={"username": READER[0], "password": READER[1]})  # fmt: skip
        made.raise_for_status()
        description = "A small vision transformer (ViT-S/16) fine-tuned on a subset of ImageNet, in safetensors."
        body = {"name": PACKAGE, "visibility": "public", "description": description}
        created = await api.post(f"{packages_url}/packages", headers=admin, json=body)
        created.raise_for_status()
        for number in range(versions):
            path = f"/packages/{PACKAGE}/versions/1.{number}.0/content"
            headers = {**admin, "X-Filename": f"vit-small-1.{number}.0.zip"}
            uploaded = await api.put(packages_url + path, content=os.urandom(4096), headers=headers)
            uploaded.raise_for_status()
        reader = await login(*READER)
    async with httpx.AsyncClient(base_url=web_url, timeout=60) as browser:
        form = await browser.get("/login")
        found = re.search(r'name="csrf" value="([^"]+)"', form.text)
        if not found:
            raise RuntimeError("no CSRF token on the sign-in page")
        answer = await browser.post("/login", data={"csrf": found.group(1), "username": READER[0],
                                                    "password": READER[1], "next": "/"})  # fmt: skip
        if answer.status_code != 303:
            raise RuntimeError(f"sign-in failed: {answer.status_code} {answer.text[:200]}")
        cookie = "; ".join(f"{name}={value}" for name, value in browser.cookies.items())
        page = await browser.get(f"/p/{PACKAGE}")
        if page.status_code != 200 or f"1.{versions - 1}.0" not in page.text:
            raise RuntimeError(f"the package page is not right: {page.status_code} {page.text[:300]}")
    return reader, cookie


def run(config: Config) -> dict[str, Any]:
    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="depot-bench-", ignore_cleanup_errors=True)))
        postgres, s3 = stack.enter_context(throwaway_servers(root))
        database_url = asyncio.run(prepare(postgres, s3))
        progress("starting auth_service, package_service and web_service")
        auth_env = environment(database_url, s3, root, admin_username=ADMIN[0], admin_password=ADMIN[1])
        auth_url, auth = stack.enter_context(served("auth_service", auth_env, root / "auth.log"))
        jwks = f"{auth_url}/auth/.well-known/jwks.json"
        package_env = environment(database_url, s3, root, auth_jwks_url=jwks, auth_url=auth_url)
        packages_url, packages = stack.enter_context(served("package_service", package_env, root / "packages.log"))
        web_env = environment(database_url, s3, root, auth_url=auth_url, packages_url=packages_url,
                              validate_url=packages_url, session_key=uuid.uuid4().hex * 2)  # fmt: skip
        web_url, web = stack.enter_context(served("web_service", web_env, root / "web.log"))
        reader, cookie = asyncio.run(seed(auth_url, packages_url, web_url, config.versions))
        roles = {web.pid: "web_service", packages.pid: "package_service", auth.pid: "auth_service"}
        targets = [
            Target("page GET /p/{name}", f"{web_url}/p/{PACKAGE}", {"Cookie": cookie, "Accept": "text/html"}),
            Target("api GET /packages/{name}", f"{packages_url}/packages/{PACKAGE}",
                   {**reader, "Accept": "application/json"}),
        ]  # fmt: skip
        progress("warming up")
        for target in targets:
            measure(target, Config(1, 1.0, config.concurrency, 0, config.client), 0, roles)
        rounds = []
        for number in range(1, config.rounds + 1):
            for target in targets if number % 2 else reversed(targets):
                rounds.append(measure(target, config, number, roles))
    return summarize_rounds(rounds, config)


def summarize_rounds(rounds: list[Round], config: Config) -> dict[str, Any]:
    def median(endpoint: str, field: str) -> float:
        values: list[float] = [getattr(r, field) for r in rounds if r.endpoint.startswith(endpoint)]
        return round(statistics.median(values), 1)

    def cpu_ms_per_request(endpoint: str) -> dict[str, float]:
        # CPU of a process per request served, whatever the machine: what each service costs a request.
        served = [r for r in rounds if r.endpoint.startswith(endpoint) and r.requests_per_second]
        return {
            role: round(
                statistics.median(10 * r.cpu_percent_of_one_core[role] / r.requests_per_second for r in served), 3
            )
            for role in ("web_service", "package_service", "postgres")
            if served and any(r.cpu_percent_of_one_core[role] >= 1 for r in served)
        }

    page, api = median("page", "requests_per_second"), median("api", "requests_per_second")
    ratio = round(page / api, 2) if api else float("nan")
    costs = {"page": cpu_ms_per_request("page"), "api": cpu_ms_per_request("api")}
    # Each service a process of one core (as on Fargate, where each is a task of its own): a request
    # can be served no faster than its dearest service allows. A projection, printed as one.
    bounds = {
        name: round(1000 / max(cost[role] for role in cost if role != "postgres"), 1) for name, cost in costs.items()
    }
    others = statistics.mean(r.cpu_percent_of_one_core["others"] for r in rounds)
    return {
        "benchmark": "web_bench",
        "config": asdict(config),
        "rounds": [asdict(r) for r in rounds],
        "page": {"requests_per_second": page, "p50_ms": median("page", "p50_ms"), "p99_ms": median("page", "p99_ms")},
        "api": {"requests_per_second": api, "p50_ms": median("api", "p50_ms"), "p99_ms": median("api", "p99_ms")},
        "ratio": ratio,
        "cpu_ms_per_request": costs,
        "one_core_per_service_bound": {**bounds, "ratio": round(bounds["page"] / bounds["api"], 2)},
        "target": RATIO_TARGET,
        "met": ratio >= RATIO_TARGET,
        "errors": sum(r.errors for r in rounds),
        "noisy": others > BUSY_MACHINE_PERCENT,
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
    }


def report(results: dict[str, Any]) -> None:
    print()
    print(f"{'endpoint':<28} {'round':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}  CPU % of a core")
    for r in results["rounds"]:
        cpu = ", ".join(f"{role} {value:g}" for role, value in r["cpu_percent_of_one_core"].items() if value >= 1)
        print(f"{r['endpoint']:<28} {r['round']:>5} {r['requests_per_second']:>9.1f} {r['p50_ms']:>8.1f} "
              f"{r['p99_ms']:>8.1f} {r['errors']:>6}  {cpu}")  # fmt: skip
    for name in ("page", "api"):
        figures = results[name]
        print(f"{name + ' (median)':<28} {'':>5} {figures['requests_per_second']:>9.1f} {figures['p50_ms']:>8.1f} "
              f"{figures['p99_ms']:>8.1f}")  # fmt: skip
    verdict = "met" if results["met"] else "MISSED"
    print(f"page / api requests per second: {results['ratio']:.2f} (target >= {results['target']}: {verdict})")
    for name, cost in results["cpu_ms_per_request"].items():
        print(f"CPU per {name} request, ms: " + ", ".join(f"{role} {value:g}" for role, value in cost.items()))
    bound = results["one_core_per_service_bound"]
    print(f"projection, each service with a core of its own: page <= {bound['page']:g} rps, api <= {bound['api']:g} "
          f"rps, ratio {bound['ratio']:.2f} (not measured here: the services share this machine's cores)")  # fmt: skip
    if results["errors"]:
        print(f"errors: {results['errors']} (non-2xx answers or socket errors)")
    if results["noisy"]:
        print(f"others used more than {BUSY_MACHINE_PERCENT:g}% of a core on average: the figures are noisy")
    print(json.dumps(results))


def parse_arguments(argv: Sequence[str] | None) -> Config | dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each loads both endpoints (default 3)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per endpoint and round")
    parser.add_argument("--concurrency", type=int, default=50, help="keep-alive connections (default 50)")
    parser.add_argument("--versions", type=int, default=10, help="versions on the package page (default 10)")
    parser.add_argument("--client", choices=["auto", "wrk", "raw"], default="auto", help="the load generator")
    parser.add_argument("--load-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.load_worker:
        return dict(json.loads(args.load_worker))
    if not (1 <= args.rounds <= 20 and 1 <= args.duration <= 120 and 1 <= args.concurrency <= 512):
        parser.error("--rounds 1..20, --duration 1..120, --concurrency 1..512")
    if not 1 <= args.versions <= 100:
        parser.error("--versions 1..100")
    client = args.client if args.client != "auto" else ("wrk" if shutil.which("wrk") else "raw")
    if client == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not installed (apt-get install wrk), use --client raw")
    return Config(args.rounds, args.duration, args.concurrency, args.versions, client)


def _terminate(signum: int, _: FrameType | None) -> None:
    # SIGTERM unwinds like Ctrl-C: every server is stopped and the folder deleted.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> None:
    parsed = parse_arguments(argv)
    if isinstance(parsed, dict):  # the raw load, in this process of its own
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            figures = runner.run(raw_load(parsed["url"], parsed["headers"], parsed["concurrency"], parsed["duration"]))
        print(json.dumps(figures))
        return
    signal.signal(signal.SIGTERM, _terminate)
    started = time.perf_counter()
    results = run(parsed)
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    report(results)


if __name__ == "__main__":
    main()
