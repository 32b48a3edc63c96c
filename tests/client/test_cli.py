"""The `depot` command against the whole registry: login, push, pull, resume, integrity, exit codes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pickle
import pty
import signal
import stat
import tarfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.client.conftest import DEPOT_COMMAND, MiB, Registry
from tests.conftest import S3_SESSION, Servers, s3_client_options
from tests.helpers import eventually
from tests.integration.auth.conftest import ADMIN

pytestmark = pytest.mark.timeout(600)

# Small parts so that a few MiB make a multipart upload (S3's smallest part is 5 MiB).
MULTIPART = {"DEPOT_MULTIPART_THRESHOLD_MIB": "6", "DEPOT_PART_SIZE_MIB": "5"}


def data_file(path: Path, size: int, seed: bytes = b"depot") -> bytes:
    """`size` bytes that are no archive and no pickle (so validation passes), written to `path`."""
    block = hashlib.sha256(seed).digest() * (MiB // 32)
    data = (b"DEPOTDATA" + block * (size // len(block) + 1))[:size]
    path.write_bytes(data)
    return data


async def test_login_with_password_then_api_token_whoami_logout(registry: Registry) -> None:
    wrong = await registry.run("login", "--url", registry.url, "-u", ADMIN[0], DEPOT_PASSWORD="not the password")
    assert wrong.code == 3, wrong.stderr

    await registry.login_admin()
    credentials = registry.config_dir / "credentials.json"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    assert stat.S_IMODE(registry.config_dir.stat().st_mode) == 0o700
    assert ADMIN[1] not in credentials.read_text()
    me = json.loads((await registry.ok("whoami", "--json")).stdout)
    assert me["username"] == ADMIN[0]

    made = json.loads((await registry.ok("token", "create", "ci", "--json")).stdout)
    assert made["token"].startswith("dpt_")
    listed = await registry.ok("token", "list")
    assert made["token"] not in listed.stdout  # secrets are shown once

    assert (await registry.ok("logout")).stdout.startswith("Logged out")
    assert not credentials.exists()
    assert (await registry.run("whoami")).code == 3

    await registry.ok("login", "--url", registry.url, "--token", made["token"])
    assert json.loads((await registry.ok("whoami", "--json")).stdout)["username"] == ADMIN[0]
    for line in (await registry.ok("whoami")).stdout, (await registry.ok("token", "list")).stdout:
        assert made["token"] not in line
    # The environment wins over the file.
    env = await registry.run("whoami", DEPOT_URL=registry.url, DEPOT_TOKEN="dpt_revoked-or-unknown")
    assert env.code == 3, env.stderr
    await registry.ok("token", "revoke", made["id"])
    # The access token already issued lives out its 15 minutes; the next exchange is refused.
    path = registry.config_dir / "credentials.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "access_expires_at": 0}))
    assert (await registry.run("whoami")).code == 3


async def test_an_expired_access_token_is_renewed_and_the_refresh_token_rotated(registry: Registry) -> None:
    await registry.login_admin()
    path = registry.config_dir / "credentials.json"
    before = json.loads(path.read_text())
    before["access_expires_at"] = 0  # as if it had expired
    path.write_text(json.dumps(before))
    assert json.loads((await registry.ok("whoami", "--json")).stdout)["username"] == ADMIN[0]
    after = json.loads(path.read_text())
    assert after["access_token"] != before["access_token"]
    assert after["refresh_token"] != before["refresh_token"]
    assert after["access_expires_at"] > 0
    # An access token refused by the server (here: garbage) is renewed once, transparently.
    after["access_token"] = "not-a-token"
    path.write_text(json.dumps(after))
    assert (await registry.ok("whoami")).code == 0


async def test_push_and_pull_a_small_file_and_a_directory(registry: Registry, tmp_path: Path) -> None:
    await registry.login_admin()
    source = tmp_path / "weights.bin"
    data = data_file(source, 300_000)
    pushed = await registry.ok(
        "push", "tiny", "1.0.0", str(source), "--wait", "--json", "--description", "tiny weights",
        "--metadata", '{"framework": "none"}',
    )  # fmt: skip
    version = json.loads(pushed.stdout)
    assert version["status"] == "available"
    assert version["sha256"] == hashlib.sha256(data).hexdigest()
    assert version["description"] == "tiny weights"
    assert version["metadata"] == {"framework": "none"}
    assert "\r" not in pushed.stderr  # no carriage returns on a non-terminal

    out = tmp_path / "out"
    out.mkdir()
    await registry.ok("pull", "tiny@latest", "-o", str(out))
    assert (out / "weights.bin").read_bytes() == data
    assert not list(out.glob("*.part*"))

    tree = tmp_path / "bundle"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "b.txt").write_text("bee")
    (tree / "a.txt").write_text("ay")
    await registry.ok("push", "bundle", "0.1.0", str(tree), "--wait")
    target = tmp_path / "bundle.tgz"
    await registry.ok("pull", "bundle@0.1.0", "-o", str(target))
    with tarfile.open(target) as archive:
        assert archive.getnames() == ["bundle", "bundle/a.txt", "bundle/sub", "bundle/sub/b.txt"]
        member = archive.extractfile("bundle/sub/b.txt")
        assert member is not None
        assert member.read() == b"bee"
    # Pushing the same tree again is done, not an error: the bytes are the same (deterministic tar).
    again = await registry.ok("push", "bundle", "0.1.0", str(tree))
    assert "already published" in again.stdout


async def test_a_large_file_goes_by_multipart_and_comes_back_by_ranges(registry: Registry, tmp_path: Path) -> None:
    await registry.login_admin()
    source = tmp_path / "large.bin"
    data = data_file(source, 17 * MiB + 123)
    result = await registry.ok("push", "large", "2.0.0", str(source), "--wait", "--json", **MULTIPART)
    version = json.loads(result.stdout)
    assert version["status"] == "available"
    assert version["sha256"] == hashlib.sha256(data).hexdigest()
    target = tmp_path / "copy.bin"
    pulled = await registry.ok("pull", "large@2.0.0", "-o", str(target), **MULTIPART)
    assert target.read_bytes() == data
    assert "verified" in pulled.stdout
    assert not list(registry.state_dir.glob("uploads/*.json"))  # the state of a finished upload is gone


async def _kill_when(process: asyncio.subprocess.Process, ready: Any) -> None:
    try:
        await eventually(ready, interval=0.05, message="the transfer got midway")
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()


async def test_on_a_terminal_a_push_draws_one_bar_in_place(registry: Registry, tmp_path: Path) -> None:
    await registry.login_admin()
    source = tmp_path / "shown.bin"
    data_file(source, 12 * MiB, seed=b"tty")
    controller, terminal = pty.openpty()  # the command's stderr is a terminal, as in a user's shell
    process = await asyncio.create_subprocess_exec(
        *DEPOT_COMMAND, "--limit-rate", "8M", "push", "shown", "1.0.0", str(source),
        env=registry.environment(COLUMNS="120", **MULTIPART),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=terminal,
    )  # fmt: skip
    os.close(terminal)
    drawn = await asyncio.to_thread(_read_until_closed, controller)
    stdout, _ = await process.communicate()
    assert process.returncode == 0, drawn
    text = drawn.decode(errors="replace")
    assert "push shown 1.0.0" in text
    assert "12.0/12.0 MiB" in text  # one bar for the whole file, not one per part
    assert text.count("MiB/s") >= 2  # redrawn while the parts went (about 1.5 s at 8 MiB/s)
    assert "\x1b[" in text  # in place, with the terminal's control sequences
    assert "push shown 1.0.0" not in stdout.decode()  # the bar is on stderr; stdout stays for results


def _read_until_closed(descriptor: int) -> bytes:
    """What a pseudo-terminal's other end wrote, until every writer closed it."""
    received = bytearray()
    try:
        while chunk := os.read(descriptor, 65536):
            received += chunk
    except OSError:  # EIO: no writer is left
        pass
    finally:
        os.close(descriptor)
    return bytes(received)


async def test_a_push_killed_midway_sends_only_the_missing_parts(registry: Registry, tmp_path: Path) -> None:
    await registry.login_admin()
    source = tmp_path / "resume.bin"
    data = data_file(source, 8 * 5 * MiB, seed=b"resume")
    process = await registry.start(
        "--quiet", "--limit-rate", "8M", "push", "resumed", "1.0.0", str(source), DEPOT_CONCURRENCY="1", **MULTIPART,
    )  # fmt: skip

    def state() -> dict[str, Any] | None:
        files = list(registry.state_dir.glob("uploads/*.json"))
        return json.loads(files[0].read_text()) if files else None

    def some_parts_sent() -> bool:
        found = state()
        return found is not None and 2 <= len(found["parts_done"]) < 8

    await _kill_when(process, some_parts_sent)
    left = state()
    assert left is not None
    depot = registry.sdk(threshold=6 * MiB, part_size=5 * MiB)
    upload = await asyncio.to_thread(
        depot.session.get_json, f"/packages/resumed/versions/1.0.0/uploads/{left['upload_id']}"
    )
    on_server = {part["part_number"] for part in upload["completed_parts"]}
    assert 2 <= len(on_server) < 8

    result = await asyncio.to_thread(depot.push, "resumed", "1.0.0", source, wait=True)
    assert result.resumed
    assert result.parts_total == 8
    assert result.parts_sent == 8 - len(on_server)  # only the missing parts went to S3
    assert result.version["status"] == "available"
    assert result.version["sha256"] == hashlib.sha256(data).hexdigest()
    again = await asyncio.to_thread(depot.push, "resumed", "1.0.0", source)
    assert again.mode == "existing"
    depot.close()


async def test_a_pull_killed_midway_resumes_and_refetches_a_damaged_range(registry: Registry, tmp_path: Path) -> None:
    await registry.login_admin()
    source = tmp_path / "big.bin"
    data = data_file(source, 6 * 5 * MiB + 7, seed=b"pull")
    await registry.ok("--quiet", "push", "pulled", "1.0.0", str(source), "--wait", **MULTIPART)
    target = tmp_path / "copy.bin"
    sidecar = tmp_path / "copy.bin.part.json"
    process = await registry.start(
        "--quiet", "pull", "pulled@1.0.0", "-o", str(target), DEPOT_CONCURRENCY="1", DEPOT_LIMIT_RATE="8M",
        **MULTIPART,
    )  # fmt: skip

    def verified() -> list[int]:  # the sidecar: a header line, then one line per range checked, in order
        try:
            return [json.loads(line)["range"] for line in sidecar.read_text().splitlines()[1:]]
        except (OSError, ValueError, KeyError):
            return []

    await _kill_when(process, lambda: len(verified()) >= 3)
    kept = verified()
    assert kept == list(range(1, len(kept) + 1))
    assert not target.exists()
    # A byte flipped in the last range checked: re-validation finds it, keeps the ranges before it
    # and fetches the rest again.
    part = tmp_path / "copy.bin.part"
    damaged = bytearray(part.read_bytes())
    damaged[(kept[-1] - 1) * 5 * MiB + 10] ^= 0xFF
    part.write_bytes(damaged)

    depot = registry.sdk(threshold=6 * MiB, part_size=5 * MiB)
    result = await asyncio.to_thread(depot.pull, "pulled@1.0.0", target)
    depot.close()
    assert result.resumed
    assert result.ranges_total == 7
    assert result.ranges_fetched == 7 - (len(kept) - 1)
    assert target.read_bytes() == data
    assert not sidecar.exists()


@asynccontextmanager
async def forward_proxy() -> AsyncIterator[tuple[str, list[str]]]:
    """A plain-HTTP forward proxy, as a company's would be: its URL, and each request line it forwarded."""
    seen: list[str] = []

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            method, target, _ = head[0].split(" ")
            seen.append(f"{method} {target}")
            url = urlsplit(target)  # a proxy is sent the absolute URL
            fields = [line for line in head[1:] if line and not line.lower().startswith(("proxy-", "connection:"))]
            length = next((int(f.split(":", 1)[1]) for f in fields if f.lower().startswith("content-length:")), 0)
            upstream_reader, upstream = await asyncio.open_connection(url.hostname, url.port)
            path = url.path + (f"?{url.query}" if url.query else "")
            lines = [f"{method} {path} HTTP/1.1", *fields, "Connection: close", "", ""]
            upstream.write("\r\n".join(lines).encode("latin-1"))
            upstream.write(await reader.readexactly(length))
            while chunk := await upstream_reader.read(1 << 16):
                writer.write(chunk)
                await writer.drain()
            upstream.close()
        finally:
            writer.close()

    server = await asyncio.start_server(forward, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}", seen


async def test_the_proxy_of_the_environment_carries_every_call_unless_no_proxy_says_otherwise(
    registry: Registry, tmp_path: Path
) -> None:
    await registry.login_admin()
    source = tmp_path / "proxied.bin"
    data = data_file(source, 13 * MiB, seed=b"proxy")
    await registry.ok("--quiet", "push", "proxied", "1.0.0", str(source), "--wait", **MULTIPART)
    async with forward_proxy() as (proxy, seen):
        target = tmp_path / "through-proxy.bin"
        await registry.ok("--quiet", "pull", "proxied@1.0.0", "-o", str(target), HTTP_PROXY=proxy, **MULTIPART)
        assert target.read_bytes() == data
        api_calls = [line for line in seen if line.startswith(f"GET {registry.url}/packages/proxied/")]
        ranges = [line for line in seen if "X-Amz-Signature=" in line]  # the presigned URL, straight to S3
        assert api_calls, seen
        assert len(ranges) == 3, seen  # 13 MiB in ranges of 5 MiB
        seen.clear()
        direct = tmp_path / "direct.bin"
        await registry.ok(
            "--quiet", "pull", "proxied@1.0.0", "-o", str(direct), HTTP_PROXY=proxy, NO_PROXY="127.0.0.1", **MULTIPART
        )
        assert direct.read_bytes() == data
        assert seen == []


async def test_bytes_changed_in_storage_fail_the_pull_and_leave_nothing(
    registry: Registry, servers: Servers, bucket: str, tmp_path: Path
) -> None:
    await registry.login_admin()
    source = tmp_path / "model.bin"
    data = data_file(source, 100_000)
    await registry.ok("push", "tampered", "1.0.0", str(source), "--wait")
    async with S3_SESSION.client(**s3_client_options(servers)) as s3:
        listed = await s3.list_objects_v2(Bucket=bucket)
        keys = [item["Key"] for item in listed.get("Contents", [])]
        assert len(keys) == 1
        await s3.put_object(Bucket=bucket, Key=keys[0], Body=bytes([data[0] ^ 1]) + data[1:])
    out = tmp_path / "out"
    out.mkdir()
    failed = await registry.run("pull", "tampered@1.0.0", "-o", str(out))
    assert failed.code == 1
    assert "sha256" in failed.stderr
    assert list(out.iterdir()) == []


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo owned",))


async def test_exit_codes(registry: Registry, tmp_path: Path) -> None:
    assert (await registry.run("whoami")).code == 3  # not logged in
    await registry.login_admin()
    assert (await registry.run("pull", "nothing-here@1.0.0", "-o", str(tmp_path))).code == 4
    assert (await registry.run("push")).code == 2
    assert (await registry.run("push", "x", "1.0.0", str(tmp_path / "missing"))).code == 2
    first = tmp_path / "one.bin"
    data_file(first, 1000, seed=b"one")
    await registry.ok("push", "codes", "1.0.0", str(first))
    other = tmp_path / "two.bin"
    data_file(other, 1000, seed=b"two")
    conflict = await registry.run("push", "codes", "1.0.0", str(other))
    assert conflict.code == 5, conflict.stderr
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(_Evil()))
    rejected = await registry.run("push", "codes", "2.0.0", str(evil), "--wait")
    assert rejected.code == 6, rejected.stderr
    assert "pickle" in rejected.stderr


async def test_every_read_command_prints_json(registry: Registry, tmp_path: Path) -> None:
    await registry.login_admin()
    source = tmp_path / "r.bin"
    data_file(source, 5000)
    await registry.ok("push", "readme", "1.0.0", str(source), "--wait")
    commands = [
        ("whoami",), ("search", "readme"), ("info", "readme"), ("info", "readme@1.0.0"), ("versions", "readme"),
        ("report", "readme@1.0.0"), ("check", "readme@1.0.0", "download"), ("token", "list"), ("group", "list"),
        ("user", "list"), ("user", "show", ADMIN[0]), ("rules", "get"),
    ]  # fmt: skip
    for command in commands:
        result = await registry.ok(*command, "--json")
        json.loads(result.stdout)
    found = json.loads((await registry.ok("search", "readme", "--json")).stdout)
    assert [package["name"] for package in found] == ["readme"]
    # And the tables for people say the same.
    assert "readme" in (await registry.ok("versions", "readme")).stdout.replace("1.0.0", "readme")
    listed = json.loads((await registry.ok("versions", "readme", "--json")).stdout)
    assert listed[0]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest(), "every field in JSON"
    table = (await registry.ok("versions", "readme")).stdout
    assert "1.0.0" in table
    assert "available" in table
    # The SDK asks for a lighter list when told which fields (the table asks for its columns only).
    light = await asyncio.to_thread(registry.sdk().versions, "readme", fields=["status", "size"])
    assert light == [{"version": "1.0.0", "status": "available", "size": 5000}]
