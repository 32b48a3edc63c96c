"""The client's pieces without a server: the deterministic tar, the retry policy, the planning of
parts and ranges, the session's retries and token renewal (on httpx's mock transport), progress."""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import os
import random
import tarfile
import threading
import time
from pathlib import Path

import httpx
import pytest
from depot_client.archive import pack_directory
from depot_client.credentials import Credentials, CredentialStore
from depot_client.errors import AuthenticationError, ConflictError, DepotError, NotFoundError
from depot_client.planning import MAX_PARTS, MIN_PART_SIZE, MiB, Piece, part_size_for, plan
from depot_client.progress import Bar, PlainLines, Silent, for_terminal
from depot_client.ratelimit import RateLimit, parse_rate
from depot_client.retry import RetryPolicy, parse_retry_after
from depot_client.session import Session
from depot_client.transfer import _InOrderDigest, _Sidecar


def _tree(root: Path, mtime: int) -> Path:
    (root / "b" / "c").mkdir(parents=True)
    (root / "z.txt").write_text("zed")
    (root / "a.txt").write_text("ay")
    (root / "b" / "c" / "deep.bin").write_bytes(b"\x00" * 1000)
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    for path in [*root.rglob("*"), root]:
        os.utime(path, (mtime, mtime))
    return root


def test_a_directory_packs_to_the_same_bytes_whatever_its_times(tmp_path: Path) -> None:
    one = pack_directory(_tree(tmp_path / "x" / "model", 1_000_000), tmp_path / "one.tar.gz")
    two = pack_directory(_tree(tmp_path / "y" / "model", 2_000_000), tmp_path / "two.tar.gz")
    assert one.path.read_bytes() == two.path.read_bytes()
    assert one.sha256 == two.sha256
    assert one.size == one.path.stat().st_size
    raw = one.path.read_bytes()
    assert raw[4:8] == b"\x00\x00\x00\x00"  # gzip header: mtime 0
    with tarfile.open(one.path) as archive:
        members = archive.getmembers()
    assert [m.name for m in members] == [
        "model", "model/a.txt", "model/b", "model/b/c", "model/b/c/deep.bin", "model/run.sh", "model/z.txt",
    ]  # fmt: skip
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}
    assert {m.name: m.mode for m in members}["model/run.sh"] == 0o755
    assert {m.name: m.mode for m in members}["model/a.txt"] == 0o644
    assert gzip.decompress(raw)  # a valid gzip stream


def test_a_link_out_of_the_directory_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    (root / "escape").symlink_to("/etc/passwd")
    with pytest.raises(DepotError, match="links outside"):
        pack_directory(root, tmp_path / "out.tar.gz")


def test_parts_and_ranges_cover_every_byte_once() -> None:
    for size, piece in [(1, 5), (5, 5), (6, 5), (17 * MiB + 3, 5 * MiB), (10 * MiB, 5 * MiB)]:
        pieces = plan(size, piece)
        assert pieces[0].offset == 0
        assert [p.number for p in pieces] == list(range(1, len(pieces) + 1))
        assert all(a.offset + a.size == b.offset for a, b in itertools.pairwise(pieces))
        assert pieces[-1].end == size - 1
        assert all(p.size == piece for p in pieces[:-1])
        assert 0 < pieces[-1].size <= piece
    assert part_size_for(100 * MiB, 1 * MiB) == MIN_PART_SIZE  # S3's minimum
    huge = 5 * 1024**4  # 5 TiB: parts grow until 10,000 are enough
    assert -(-huge // part_size_for(huge)) <= MAX_PARTS
    assert part_size_for(huge) % MiB == 0


def test_the_retry_policy_repeats_only_what_is_safe() -> None:
    policy = RetryPolicy(rng=random.Random(1))
    assert policy.should_retry_status(503, safe=True, retry_after=None)
    assert policy.should_retry_status(502, safe=True, retry_after=None)
    assert not policy.should_retry_status(500, safe=False, retry_after=None)
    assert not policy.should_retry_status(503, safe=False, retry_after=None)
    assert policy.should_retry_status(503, safe=False, retry_after=2.0)  # the server did nothing
    assert policy.should_retry_status(429, safe=False, retry_after=1.0)
    assert not policy.should_retry_status(404, safe=True, retry_after=None)
    assert not policy.should_retry_status(409, safe=True, retry_after=1.0)
    request = httpx.Request("POST", "http://x")
    assert policy.should_retry_error(httpx.ConnectError("refused", request=request), safe=False)
    assert not policy.should_retry_error(httpx.ReadTimeout("slow", request=request), safe=False)
    assert policy.should_retry_error(httpx.ReadTimeout("slow", request=request), safe=True)
    delays = [policy.delay(attempt) for attempt in range(1, 10) for _ in range(50)]
    assert all(0 <= d <= policy.max_delay for d in delays)
    assert len(set(delays)) > 100  # jittered
    assert max(policy.delay(1) for _ in range(100)) <= policy.base_delay
    assert 3.0 <= policy.delay(1, retry_after=3.0) <= 3.0 + policy.base_delay
    assert policy.delay(1, retry_after=10_000) <= policy.max_retry_after + policy.base_delay


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    later = parse_retry_after(date)
    assert later is not None
    assert 25 <= later <= 31


def _session(handler: httpx.MockTransport, tmp_path: Path, credentials: Credentials | None = None) -> Session:
    credentials = credentials or Credentials(url="http://depot", api_token="dpt_x")
    http = httpx.Client(base_url="http://depot", transport=handler)
    store = CredentialStore(tmp_path / "config")
    return Session(credentials, store=store, http=http, sleep=lambda _: None)


def test_a_get_is_retried_a_post_is_not_and_a_401_renews_the_token_once(tmp_path: Path) -> None:
    calls: list[tuple[str, str, str | None]] = []
    answers: dict[str, list[httpx.Response]] = {
        "/auth/token": [httpx.Response(200, json={"access_token": f"t{n}", "expires_in": 900}) for n in range(3)],
        "/packages": [httpx.Response(503), httpx.Response(502), httpx.Response(200, json={"items": []})],
        "/packages/x/versions/1/uploads": [httpx.Response(500, json={"title": "boom"})],
        "/auth/me": [httpx.Response(401), httpx.Response(200, json={"username": "u"})],
        "/auth/groups": [httpx.Response(429, headers={"Retry-After": "1"}), httpx.Response(201, json={})],
    }

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append((request.method, request.url.path, request.headers.get("Authorization")))
        return answers[request.url.path].pop(0)

    session = _session(httpx.MockTransport(handle), tmp_path)
    assert session.get_json("/packages") == {"items": []}
    assert [c[1] for c in calls] == ["/auth/token", "/packages", "/packages", "/packages"]
    with pytest.raises(DepotError, match="500 boom"):
        session.request("POST", "/packages/x/versions/1/uploads", json={})
    assert calls[-1][1] == "/packages/x/versions/1/uploads"
    assert sum(1 for c in calls if c[1] == "/packages/x/versions/1/uploads") == 1  # never repeated
    assert session.get_json("/auth/me") == {"username": "u"}
    assert [c[2] for c in calls if c[1] == "/auth/me"] == ["Bearer t0", "Bearer t1"]
    session.request("POST", "/auth/groups", json={"name": "g"})  # a 429 with Retry-After: done nothing, retried
    assert sum(1 for c in calls if c[1] == "/auth/groups") == 2


def test_errors_carry_their_exit_codes(tmp_path: Path) -> None:
    statuses = iter([404, 409, 403])

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(next(statuses), json={"title": "t", "detail": "what happened"})

    session = _session(httpx.MockTransport(handle), tmp_path, Credentials(url="http://depot", access_token="raw"))
    with pytest.raises(NotFoundError) as missing:
        session.get_json("/packages/x")
    assert missing.value.exit_code == 4
    assert "what happened" in missing.value.message
    with pytest.raises(ConflictError):
        session.request("POST", "/packages", json={})
    with pytest.raises(AuthenticationError):
        session.request("DELETE", "/packages/x")


def test_a_refresh_token_is_rotated_and_saved(tmp_path: Path) -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/auth/refresh":
            return httpx.Response(200, json={"access_token": "new", "expires_in": 900, "refresh_token": "r2"})
        return httpx.Response(200, json={"username": "u"})

    expired = Credentials(url="http://depot", refresh_token="r1", access_token="old", access_expires_at=0)
    session = _session(httpx.MockTransport(handle), tmp_path, expired)
    session.store.save(expired)  # type: ignore[union-attr]
    session.get_json("/auth/me")
    saved = session.store.load()  # type: ignore[union-attr]
    assert saved is not None
    assert (saved.refresh_token, saved.access_token) == ("r2", "new")
    assert (tmp_path / "config" / "credentials.json").stat().st_mode & 0o777 == 0o600
    assert "r2" not in repr(saved)


def test_plain_progress_writes_lines_without_carriage_returns() -> None:
    out = io.StringIO()
    progress = PlainLines(out, interval=0.0)
    progress.start("push x 1.0.0", 10 * MiB)
    for _ in range(10):
        progress.advance(MiB)
    progress.finish()
    text = out.getvalue()
    assert "\r" not in text
    assert text.count("\n") == 11
    assert "10.0 MiB of 10.0 MiB (100%)" in text.splitlines()[-1]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_one_bar_with_bytes_rate_and_time_left() -> None:
    terminal = _Terminal()
    progress = for_terminal(quiet=False, stream=terminal)
    assert isinstance(progress, Bar)
    assert isinstance(for_terminal(quiet=True, stream=terminal), Silent)
    assert isinstance(for_terminal(quiet=False, stream=io.StringIO()), PlainLines)
    progress.start("pull model 2.0.0", 64 * MiB)
    for _ in range(64):
        progress.advance(MiB)
    progress.finish()
    text = terminal.getvalue()
    assert "pull model 2.0.0" in text
    assert "64.0/64.0 MiB" in text  # bytes done of the total, in binary units
    assert "/s" in text  # the rate
    assert "\x1b[" in text  # drawn in place with the terminal's control sequences


def test_rates_are_read_as_curl_reads_them() -> None:
    assert parse_rate("500K") == 500 * 1024
    assert parse_rate("10M") == 10 * MiB
    assert parse_rate("1.5g") == 3 * 512 * MiB
    assert parse_rate("2MiB/s") == 2 * MiB
    assert parse_rate("4096") == 4096
    for wrong in ["", "fast", "-1M", "0", "10T", "1 M M"]:
        with pytest.raises(ValueError, match="rate"):
            parse_rate(wrong)


def test_a_rate_limit_spaces_out_what_all_threads_send_and_saves_no_credit_while_idle() -> None:
    now = [100.0]
    slept: list[float] = []
    limit = RateLimit(1000, clock=lambda: now[0], sleep=slept.append)
    # Eight callers at the same moment (the clock stands still): each waits for the slots before it.
    threads = [threading.Thread(target=limit.take, args=(250,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(slept) == [0.25 * n for n in range(1, 8)]  # the first goes at once; 2000 bytes take 2 s
    # A long pause earns nothing: after it, the rate holds from the first byte again.
    now[0] += 60.0
    slept.clear()
    limit.take(500)
    limit.take(500)
    assert slept == [0.5]


def test_the_whole_files_sha256_is_computed_as_ranges_land_in_any_order(tmp_path: Path) -> None:
    data = random.Random(7).randbytes(10 * MiB + 123)
    pieces = plan(len(data), MiB)
    part = tmp_path / "f.part"
    part.write_bytes(data[:MiB] + bytes(len(data) - MiB))
    # Range 1 is there already (a resumed pull): the hashing goes on from the digest after it.
    sidecar = _Sidecar(tmp_path / "f.part.json", {"sha256": "x", "size": len(data), "range_size": MiB})
    sidecar.start({})
    digest = _InOrderDigest(part, pieces[1:], hashlib.sha256(data[:MiB]), sidecar)
    order = pieces[1:]
    random.Random(3).shuffle(order)

    def land(piece: Piece) -> None:
        descriptor = os.open(part, os.O_WRONLY)
        os.pwrite(descriptor, data[piece.offset : piece.offset + piece.size], piece.offset)
        os.close(descriptor)
        digest.written(piece.number)

    threads = [threading.Thread(target=land, args=(piece,)) for piece in order]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    sidecar.close()
    # The sidecar holds, for each range hashed, the digest of the file up to its end.
    prefixes = sidecar.verified_prefixes()
    assert sorted(prefixes) == list(range(2, len(pieces) + 1))
    assert all(prefixes[p.number] == hashlib.sha256(data[: p.offset + p.size]).hexdigest() for p in pieces[1:])
    # A range that never lands (a failed pull): stop() ends the hashing instead of waiting for ever.
    waiting = _InOrderDigest(part, pieces, hashlib.sha256(), sidecar)
    waiting.written(2)
    waiting.stop()
