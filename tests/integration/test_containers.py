"""The container files, proven without a Docker engine.

- docker-compose.yml validates against the compose specification, the Dockerfile passes hadolint;
- each image's command, with the image's environment, starts its service, passes the image's
  health check and stops promptly on SIGTERM (run here from the project's virtualenv);
- nginx accepts the front door's configuration, and a real nginx with the same path rules
  routes to the three services run natively, streaming a large upload and download without
  buffering them and with flat memory.
nginx comes from the Debian package that `.ci/run` installs; without it, its tests are skipped.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aioboto3
import httpx
import psutil
import pytest
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from auth_service.app import create_app as create_auth_app
from devstack.processes import free_port, spawn, stop, tail, wait_for_port
from devstack.tokens import TokenSigner
from package_service.app import create_app as create_package_app
from package_service.settings import PackageSettings
from tests.conftest import Servers, s3_client_options
from tests.helpers import WAIT_SECONDS, eventually, real_server, service_settings
from tests.integration.auth.conftest import auth_settings
from validator_service.app import create_app as create_validator_app
from validator_service.settings import ValidatorSettings

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
NGINX_DIR = ROOT / "docker" / "nginx"
MIB = 1024 * 1024
TARGETS = {"auth_service": "/auth", "package_service": "/packages", "validator_service": "/validate"}


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)


needs_nginx = pytest.mark.skipif(
    nginx_binary() is None, reason="nginx is not installed (`.ci/run` installs the Debian package): not tested here"
)

# Whole processes and real servers: the slow tier. Each test stays within a few minutes even on a loaded machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_compose_file_follows_the_compose_specification() -> None:
    checked = subprocess.run(
        [BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", ROOT / "docker-compose.yml"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_compose_file_starts_what_the_registry_needs() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for service in ("postgres", "s3", "migrate", *TARGETS, "frontdoor"):
        assert re.search(rf"^  {service}:$", text, re.MULTILINE), service
    assert re.search(r"image: postgres:\d+\.\d+", text), "PostgreSQL pinned to a version"
    assert re.search(r"image: chrislusf/seaweedfs:\d+\.\d+", text), "SeaweedFS pinned to a version"
    assert "condition: service_completed_successfully" in text, "the services wait for the migrations"
    assert "127.0.0.1:8080:8080" in text
    assert "DEPOT_S3_PUBLIC_URL: http://localhost:8333" in text, "presigned URLs reachable from the host"


def test_dockerfile_passes_hadolint() -> None:
    linted = subprocess.run([BIN / "hadolint", ROOT / "Dockerfile"], capture_output=True, text=True, check=False)
    assert linted.returncode == 0, linted.stdout + linted.stderr


# The Dockerfile, read as the image builder would: ENV per stage, CMD and HEALTHCHECK.


def dockerfile_stages() -> dict[str, list[str]]:
    """The instructions of each stage, continuation lines joined."""
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            name = line.split(" AS ")[-1].strip() if " AS " in line else line
            base = line.split()[1]
            current = list(stages.get(base, []))  # a stage starts with its base stage's instructions
            stages[name] = current
        current.append(line)
    return stages


def image_environment(stage: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in stage:
        if line.startswith("ENV "):
            for pair in re.findall(r"(\w+)=(\S+)", line[4:]):
                env[pair[0]] = pair[1].replace("$PATH", os.environ.get("PATH", ""))
    return env


def last_exec_form(stage: list[str], instruction: str) -> list[str]:
    found = [line for line in stage if line.startswith(instruction + " ")]
    assert found, f"no {instruction}"
    payload = found[-1][len(instruction) + 1 :]
    if instruction == "HEALTHCHECK":
        payload = payload.split(" CMD ", 1)[1]
    command: list[str] = json.loads(payload)
    return command


def test_images_run_as_a_user_with_pinned_bases_and_no_secrets() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"python:3\.11\.\d+-slim", text), "slim Python pinned by version"
    assert re.search(r"uv:\d+\.\d+\.\d+", text), "uv pinned"
    assert "uv sync --frozen --no-default-groups" in text, "dependencies from the lock file, without dev tools"
    stages = dockerfile_stages()
    for target in (*TARGETS, "migrate"):
        assert any(line.startswith("USER 10001") for line in stages[target]), target
        env = image_environment(stages[target])
        assert not [name for name in env if re.search("SECRET|PASSWORD|TOKEN|KEY", name)], env


@pytest.fixture
def service_environment(servers: Servers, database_url: str, bucket: str) -> dict[str, str]:
    signer = TokenSigner()
    settings = service_settings(
        servers, database_url, bucket, auth_public_keys=signer.public_pem, environment="development"
    )
    env = {name: value for name, value in os.environ.items() if not name.startswith(("DEPOT_", "UVICORN_"))}
    return env | {f"DEPOT_{name.upper()}": str(value) for name, value in settings.items()}


@pytest.mark.parametrize("target", list(TARGETS))
def test_each_image_command_serves_passes_its_health_check_and_stops_on_sigterm(
    target: str, service_environment: dict[str, str], tmp_path: Path
) -> None:
    stage = dockerfile_stages()[target]
    port = free_port()
    # The image's environment, then what the deployment sets (as ECS or compose would).
    env = image_environment(stage) | service_environment | {"UVICORN_PORT": str(port), "DEPOT_DATA_DIR": str(tmp_path)}
    env["PATH"] = f"{BIN}:{env['PATH']}"  # the image's /opt/venv/bin: here, the project's virtualenv
    log = tmp_path / "service.log"
    with log.open("wb") as output:
        process = spawn(last_exec_form(stage, "CMD"), env=env, output=output, cwd=ROOT)
    try:
        try:
            wait_for_port(port, process, 120)
        except RuntimeError as error:
            raise AssertionError(tail(log)) from error
        health = [part.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for part in last_exec_form(stage, "HEALTHCHECK")]

        def healthy() -> bool:
            return subprocess.run(health, env=env, capture_output=True, check=False).returncode == 0

        asyncio.run(eventually(healthy, within=60, interval=0.5, message=lambda: f"health check\n{tail(log)}"))
        response = httpx.get(
            f"http://127.0.0.1:{port}{TARGETS[target]}/health", headers={"X-Forwarded-For": "203.0.113.9"}
        )
        assert response.status_code == 200
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        # uvicorn finishes gracefully, then re-raises the signal: the status says SIGTERM.
        assert process.wait(timeout=25) in {0, -signal.SIGTERM}, tail(log)
        assert time.monotonic() - started < 20, "stopped within ECS's stop timeout"
        events = [json.loads(line).get("event") for line in log.read_text().splitlines() if line.startswith("{")]
        assert "service_started" in events, "JSON logs, from the image's settings"
        assert events[-2:] == ["Application shutdown complete.", f"Finished server process [{process.pid}]"]
    finally:
        stop(process)


# nginx


async def web_stand_in(scope: Scope, receive: Receive, send: Send) -> None:
    """web_service's place behind nginx: says which path reached it."""
    if scope["type"] != "http":
        return
    await PlainTextResponse(f"web_service {scope['path']}")(scope, receive, send)


def nginx_config(folder: Path, upstreams: str, port: int) -> Path:
    """A top-level nginx configuration: the front door's routes.conf with these upstreams, files in `folder`."""
    (folder / "upstreams.conf").write_text(upstreams)
    shutil.copy(NGINX_DIR / "routes.conf", folder / "routes.conf")
    config = folder / "nginx.conf"
    config.write_text(
        f"""
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {folder}/access.log;
    client_body_temp_path {folder}/client-body;
    proxy_temp_path {folder}/proxy;
    include {folder}/upstreams.conf;
    server {{
        listen 127.0.0.1:{port};
        include {folder}/routes.conf;
    }}
}}
"""
    )
    return config


@needs_nginx
def test_the_compose_nginx_configuration_passes_nginx_t(tmp_path: Path) -> None:
    # The compose network's host names do not resolve here: the same files with local addresses.
    for name in ("nginx.conf", "routes.conf"):
        shutil.copy(NGINX_DIR / name, tmp_path / name)
    upstreams = (NGINX_DIR / "upstreams.conf").read_text()
    local = re.sub(r"server \w+:8000;", "server 127.0.0.1:8000;", upstreams)
    assert local != upstreams
    (tmp_path / "upstreams.conf").write_text(local)
    checked = subprocess.run(
        [str(nginx_binary()), "-t", "-c", str(tmp_path / "nginx.conf"), "-e", "stderr"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    assert "test is successful" in checked.stderr


@dataclass
class FrontDoor:
    url: str
    nginx: psutil.Process
    signer: TokenSigner
    servers: Servers
    bucket: str


@pytest.fixture
async def front_door(servers: Servers, database_url: str, bucket: str, tmp_path: Path) -> AsyncIterator[FrontDoor]:
    signer = TokenSigner()
    auth = create_auth_app(auth_settings(database_url, tmp_path))
    common = service_settings(servers, database_url, bucket, auth_public_keys=signer.public_pem)
    packages = create_package_app(PackageSettings(**common, max_artifact_bytes=1024 * MIB))
    validator = create_validator_app(ValidatorSettings(**common))
    async with (
        real_server(auth) as auth_url,
        real_server(packages) as packages_url,
        real_server(validator) as validator_url,
        real_server(web_stand_in) as web_url,
    ):
        upstreams = "".join(
            f"upstream {name} {{ server {url.removeprefix('http://')}; keepalive 8; }}\n"
            for name, url in (
                ("auth_service", auth_url),
                ("package_service", packages_url),
                ("validator_service", validator_url),
                ("web_service", web_url),
            )
        )
        port = free_port()
        folder = tmp_path / "nginx"
        folder.mkdir()
        folder.chmod(0o777)  # the workers run as an unprivileged user when nginx starts as root
        config = nginx_config(folder, upstreams, port)
        process = spawn([str(nginx_binary()), "-c", str(config), "-g", "daemon off;"], output=subprocess.DEVNULL)
        try:
            await asyncio.to_thread(wait_for_port, port, process, WAIT_SECONDS)
            yield FrontDoor(f"http://127.0.0.1:{port}", psutil.Process(process.pid), signer, servers, bucket)
        finally:
            stop(process)


def nginx_rss(master: psutil.Process) -> int:
    return sum(p.memory_info().rss for p in [master, *master.children(recursive=True)])


async def open_multipart_uploads(door: FrontDoor) -> int:
    async with aioboto3.Session().client(**s3_client_options(door.servers)) as s3:
        return len((await s3.list_multipart_uploads(Bucket=door.bucket)).get("Uploads", []))


@needs_nginx
@pytest.mark.timeout(600)  # 300 MiB each way through nginx, the services and S3
async def test_nginx_routes_like_the_load_balancer_and_streams_large_bodies(front_door: FrontDoor) -> None:
    base_url, master, signer = front_door.url, front_door.nginx, front_door.signer
    owner = signer.headers("olivia")
    admin = signer.headers("ada", roles=["admin"])
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
        for prefix, service in (
            ("/auth", "auth_service"),
            ("/packages", "package_service"),
            ("/validate", "validator_service"),
        ):
            health = await client.get(f"{prefix}/health", headers={"X-Request-ID": "front-door-test"})
            assert (health.status_code, health.json()["service"]) == (200, service)
            assert health.headers["x-request-id"] == "front-door-test"
        page = await client.get("/nowhere")
        assert (page.status_code, page.text) == (200, "web_service /nowhere"), "the default goes to the pages"
        for path in ("/metrics", "/auth/metrics", "/packages/metrics", "/validate/metrics"):
            elsewhere = await client.get(path)
            assert elsewhere.status_code == 404, path  # metrics are for scrapers inside the network
            assert elsewhere.headers["content-type"] == "application/problem+json"
            assert elsewhere.json()["status"] == 404
        created = await client.post("/packages", json={"name": "big"}, headers=owner)
        assert created.status_code == 201, "a POST to the bare prefix is routed too"

        size = 300 * MIB
        block = os.urandom(MIB)
        digest = hashlib.sha256()
        for _ in range(size // MIB):
            digest.update(block)
        samples: list[int] = []
        stop_sampling = asyncio.Event()

        async def sample() -> None:
            while not stop_sampling.is_set():
                samples.append(nginx_rss(master))
                await asyncio.sleep(0.05)

        async def body() -> AsyncIterator[bytes]:
            for sent in range(size // MIB):
                if sent == 32:
                    # Unbuffered, the service has its first parts by now and is uploading them to S3;
                    # a buffering proxy would hold them until the whole body had arrived.
                    await eventually(lambda: open_multipart_uploads(front_door), message="a multipart upload")
                yield block

        before = nginx_rss(master)
        sampler = asyncio.create_task(sample())
        try:
            uploaded = await client.put(
                "/packages/big/versions/1.0.0/content", content=body(),
                headers={**owner, "X-Checksum-Sha256": digest.hexdigest()},
            )  # fmt: skip
            assert uploaded.status_code == 201, uploaded.text
            assert uploaded.json()["size"] == size
            received = hashlib.sha256()
            async with client.stream("GET", "/packages/big/versions/1.0.0/content", headers=admin) as download:
                assert download.status_code == 200
                async for chunk in download.aiter_raw():
                    received.update(chunk)
            assert received.hexdigest() == digest.hexdigest()
        finally:
            stop_sampling.set()
            await sampler
    growth = max(samples) - before
    assert growth < 32 * MIB, f"nginx grew by {growth / MIB:.1f} MiB while streaming {size // MIB} MiB each way"
