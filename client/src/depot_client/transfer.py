"""Pushes and pulls: the bytes of a version, sent to or fetched from S3 through presigned URLs.

Push: a file under the threshold is streamed to package_service (`PUT .../content`) with its
sha256 in `X-Checksum-Sha256`; a larger one is a presigned multipart upload whose parts go straight
to S3, several in flight, read once from disk (the sha256 is computed in the same pass and
declared at completion). The upload's id and layout are kept in a state file, so that a push run
again after an interruption asks the server which parts it has and sends only the others.

Pull: from the presigned URL of the version (`?redirect=1`), in parallel ranges, into
`<file>.part`. The sha256 of the whole is computed while the download runs, range after range in
file order as they land (each byte hashed once, and nothing left to read when the last range is
in); after each range, the digest of the file so far goes to a sidecar `<file>.part.json`, so that
an interrupted pull keeps the ranges from the start whose bytes on disk still give those digests,
and fetches the rest. The file is renamed into place only when the sha256 of the whole matches the
version's; otherwise it is deleted.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import json
import os
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import urllib3

from depot_client.archive import pack_directory
from depot_client.credentials import state_dir
from depot_client.errors import ConflictError, DepotError, IntegrityError, NotFoundError, UsageError
from depot_client.planning import (
    DEFAULT_CONCURRENCY,
    DEFAULT_PART_SIZE,
    DEFAULT_THRESHOLD,
    MiB,
    Piece,
    part_size_for,
    plan,
)
from depot_client.progress import Reporter, Silent
from depot_client.ratelimit import rate_limit
from depot_client.retry import RetryPolicy, parse_retry_after
from depot_client.session import TIMEOUT, Session, new_http_client, segment, user_agent

CHUNK = 1 * MiB


@dataclass(frozen=True)
class TransferOptions:
    """Sizes and parallelism of transfers."""

    threshold: int = DEFAULT_THRESHOLD  # from this size on: presigned multipart upload, ranged download
    part_size: int = DEFAULT_PART_SIZE  # of upload parts and download ranges
    concurrency: int = DEFAULT_CONCURRENCY  # parts or ranges in flight
    max_bytes_per_second: int | None = None  # `--limit-rate`: for the whole transfer, all parts together


@dataclass
class PushResult:
    """A pushed version, and what this push did to get it there."""

    version: dict[str, Any]
    mode: str  # "stream", "multipart", or "existing" (the same bytes were already published)
    parts_total: int = 0
    parts_sent: int = 0
    resumed: bool = False


@dataclass
class PullResult:
    """A pulled version: where its file is, and what this pull fetched."""

    version: dict[str, Any]
    path: Path
    ranges_total: int = 0
    ranges_fetched: int = 0
    resumed: bool = False


def _atomic_write_json(path: Path, data: dict[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    temporary.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(temporary, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with open(path, "rb") as file:
        while count := file.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


def presigned_call(
    retry: RetryPolicy, call: Callable[[], httpx.Response], refresh: Callable[[], None], what: str
) -> httpx.Response:
    """A PUT or GET of a presigned S3 URL (never with an Authorization header), made until it answers
    2xx: both are safe to repeat; a `403` (an expired URL) refreshes the URLs once."""
    refreshed = False
    attempt = 0
    while True:
        attempt += 1
        try:
            response = call()
        except httpx.TransportError as error:
            if attempt < retry.attempts and retry.should_retry_error(error, safe=True):
                time.sleep(retry.delay(attempt))
                continue
            raise DepotError(f"{what}: {error.__class__.__name__}: {error}") from error
        status = response.status_code
        if status < 300:
            return response
        if status == 403 and not refreshed:
            refreshed = True
            refresh()
            continue
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if attempt < retry.attempts and retry.should_retry_status(status, safe=True, retry_after=retry_after):
            time.sleep(retry.delay(attempt, retry_after))
            continue
        raise DepotError(f"{what}: S3 answered {status}", status=status)


class RangeReader:
    """Ranged GETs of presigned S3 URLs, read into the caller's buffer.

    urllib3 rather than httpx here: it reads a body with `readinto` at about a third of httpx's CPU
    per byte, which a pull that also computes a sha256 needs to keep up with boto3 on a small machine.
    Proxies come from the environment as with httpx (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`); the
    system's CA store or `SSL_CERT_FILE` verify TLS.
    """

    def __init__(self, concurrency: int) -> None:
        self._size = concurrency + 2
        self._pools: dict[str, urllib3.PoolManager] = {}
        self._lock = threading.Lock()
        self._timeout = urllib3.Timeout(connect=TIMEOUT.connect, read=TIMEOUT.read)

    def _pool(self, url: str) -> urllib3.PoolManager:
        parts = urllib3.util.parse_url(url)
        proxy = None
        if not urllib.request.proxy_bypass(parts.netloc or ""):
            proxy = urllib.request.getproxies().get(parts.scheme or "https")
        with self._lock:
            pool = self._pools.get(proxy or "")
            if pool is None:
                options: dict[str, Any] = {"maxsize": self._size, "timeout": self._timeout, "retries": False}
                pool = urllib3.ProxyManager(proxy, **options) if proxy else urllib3.PoolManager(**options)
                self._pools[proxy or ""] = pool
            return pool

    def get(self, url: str, first: int, last: int, into: Callable[[memoryview], None]) -> httpx.Response:
        """Bytes `first` to `last` of `url`, each chunk given to `into`; the answer's status and headers.

        A transport failure is raised as httpx's (`ConnectError` before anything was sent, else
        `ReadError`), so that one retry policy judges every call.
        """
        headers = {"Range": f"bytes={first}-{last}", "User-Agent": user_agent()}
        try:
            response = self._pool(url).request("GET", url, headers=headers, preload_content=False, redirect=False)
        except (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError) as error:
            raise httpx.ConnectError(str(error)) from error
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise httpx.ReadError(str(error)) from error
        try:
            if response.status < 300:
                buffer = bytearray(CHUNK)
                view = memoryview(buffer)
                while count := response.readinto(buffer):
                    into(view[:count])
            else:
                response.read()
        except BaseException as error:
            response.close()  # part of the body unread: the connection is not reused
            if isinstance(error, urllib3.exceptions.HTTPError | OSError):
                raise httpx.ReadError(str(error)) from error
            raise
        response.release_conn()
        return httpx.Response(response.status, headers=list(response.headers.items()))

    def close(self) -> None:
        for pool in self._pools.values():
            pool.clear()


# Push


@dataclass
class _Source:
    path: Path
    filename: str
    size: int
    content_type: str
    identity: dict[str, Any]  # what must be unchanged for an interrupted upload to be resumed
    sha256: str | None = None  # known before reading (a packed directory)
    temporary: bool = False


def _upload_state_dir() -> Path:
    directory = state_dir() / "uploads"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    return directory


def _state_key(url: str, name: str, version: str, path: Path) -> str:
    text = "\n".join([url, name.lower(), version, str(path.absolute())])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _prepare_source(path: Path, key: str) -> _Source:
    if path.is_dir():
        packs = state_dir() / "packs"
        packs.mkdir(parents=True, exist_ok=True, mode=0o700)
        packed = pack_directory(path, packs / f"{key}.tar.gz")
        return _Source(
            packed.path,
            f"{path.absolute().name}.tar.gz",
            packed.size,
            "application/gzip",
            {"sha256": packed.sha256, "size": packed.size},
            sha256=packed.sha256,
            temporary=True,
        )
    if not path.is_file():
        raise UsageError(f"{path}: no such file or directory")
    info = path.stat()
    identity = {"size": info.st_size, "mtime_ns": info.st_mtime_ns, "path": str(path.absolute())}
    return _Source(path, path.name, info.st_size, "application/octet-stream", identity)


class Pusher:
    """One push of one file or directory as one version."""

    def __init__(
        self, session: Session, *, name: str, version: str, path: Path, options: TransferOptions, progress: Reporter
    ) -> None:
        self.session = session
        self.name = name
        self.version = version
        self.path = path
        self.options = options
        self.progress = progress
        self.limit = rate_limit(options.max_bytes_per_second)
        self.key = _state_key(session.url, name, version, path)
        self.state_path = _upload_state_dir() / f"{self.key}.json"
        self.base = f"/packages/{segment(name)}/versions/{segment(version)}"

    def run(self) -> PushResult:
        source = _prepare_source(self.path, self.key)
        try:
            if source.size == 0:
                raise UsageError(f"{self.path} is empty: Depot refuses empty artifacts")
            if source.size < self.options.threshold:
                return self._stream(source)
            return self._multipart(source)
        finally:
            if source.temporary:
                with contextlib.suppress(OSError):
                    source.path.unlink()

    def _existing(self, sha256: str) -> dict[str, Any] | None:
        """The version if it exists with these very bytes; a conflict if it exists with others."""
        try:
            found: dict[str, Any] = self.session.get_json(self.base)
        except NotFoundError:
            return None
        if hmac.compare_digest(str(found.get("sha256") or ""), sha256):
            return found
        raise ConflictError(
            f"{self.name} {found.get('version', self.version)} already exists with other content "
            f"(sha256 {found.get('sha256')}); versions never change: push a new version"
        )

    def _stream(self, source: _Source) -> PushResult:
        sha256 = source.sha256 or sha256_of(source.path)

        def chunks() -> Iterator[bytes]:
            with open(source.path, "rb") as file:
                while data := file.read(CHUNK):
                    self.limit.take(len(data))
                    yield data
                    self.progress.advance(len(data))

        headers = {
            "X-Checksum-Sha256": sha256,
            "X-Filename": source.filename,
            "Content-Type": source.content_type,
            "Content-Length": str(source.size),
        }
        self.progress.start(f"push {self.name} {self.version}", source.size)
        try:
            response = self.session.request("PUT", f"{self.base}/content", body=chunks, headers=headers)
        except ConflictError:
            existing = self._existing(sha256)
            if existing is None:
                raise
            return PushResult(existing, "existing")
        finally:
            self.progress.finish()
        return PushResult(response.json(), "stream", 1, 1)

    # Multipart

    def _load_state(self, source: _Source) -> dict[str, Any] | None:
        state = _read_json(self.state_path)
        if state is None:
            return None
        if state.get("identity") != source.identity or state.get("url") != self.session.url:
            # The file changed since: its parts are worth nothing; the old upload is given up.
            with contextlib.suppress(DepotError):
                self.session.request("DELETE", f"{self.base}/uploads/{segment(str(state.get('upload_id')))}")
            self.state_path.unlink(missing_ok=True)
            return None
        return state

    def _save_state(self, upload: dict[str, Any], source: _Source, etags: dict[int, str]) -> None:
        state = {
            "url": self.session.url,
            "package": self.name,
            "version": self.version,
            "upload_id": upload["upload_id"],
            "part_size": upload["part_size"],
            "identity": source.identity,
            "parts_done": {str(number): etag for number, etag in sorted(etags.items())},
        }
        _atomic_write_json(self.state_path, state)

    def _open_upload(self, source: _Source) -> tuple[dict[str, Any] | None, bool]:
        """The upload to continue (and True) or a new one (and False); None when the version exists already."""
        state = self._load_state(source)
        if state is not None:
            try:
                upload = self.session.get_json(f"{self.base}/uploads/{segment(str(state['upload_id']))}")
            except NotFoundError:
                self.state_path.unlink(missing_ok=True)  # completed, aborted or expired
            else:
                return upload, True
        body: dict[str, Any] = {
            "size": source.size,
            "part_size": part_size_for(source.size, self.options.part_size),
            "content_type": source.content_type,
            "filename": source.filename,
        }
        if source.sha256 is not None:
            body["sha256"] = source.sha256
        try:
            upload = self.session.request("POST", f"{self.base}/uploads", json=body).json()
        except ConflictError:
            return None, False
        return upload, False

    def _multipart(self, source: _Source) -> PushResult:  # noqa: PLR0915 (one upload, step by step)
        upload, resumed = self._open_upload(source)
        if upload is None:
            # The version exists (perhaps from this very push, completed before an interruption).
            existing = self._existing(source.sha256 or sha256_of(source.path))
            if existing is None:
                raise ConflictError(
                    f"An upload of {self.name} {self.version} is open elsewhere (no state of it here); "
                    "it expires, or its owner can abort it"
                )
            return PushResult(existing, "existing")
        upload_path = f"{self.base}/uploads/{segment(str(upload['upload_id']))}"
        pieces = plan(source.size, int(upload["part_size"]))
        done = {int(part["part_number"]): str(part["etag"]) for part in upload.get("completed_parts", [])}
        sizes = {int(part["part_number"]): int(part["size"]) for part in upload.get("completed_parts", [])}
        for piece in pieces:  # a part of the wrong size (another layout) is sent again
            if piece.number in done and sizes.get(piece.number) != piece.size:
                del done[piece.number]
        self._save_state(upload, source, done)
        urls = {int(part["part_number"]): str(part["url"]) for part in upload["parts"]}
        urls_lock = threading.Lock()

        def refresh_urls() -> None:
            fresh = self.session.get_json(upload_path)
            with urls_lock:
                urls.update({int(part["part_number"]): str(part["url"]) for part in fresh["parts"]})

        http = new_http_client(max_connections=self.options.concurrency + 2)
        etags = dict(done)
        state_lock = threading.Lock()
        sent = 0

        def send(piece: Piece, data: bytearray) -> None:
            nonlocal sent
            view = memoryview(data)
            progress_made = 0

            def chunks() -> Iterator[bytes]:
                nonlocal progress_made
                for start in range(0, len(view), CHUNK):
                    chunk = view[start : start + CHUNK]
                    self.limit.take(len(chunk))
                    yield chunk  # type: ignore[misc]  # httpx sends any bytes-like chunk
                    progress_made += len(chunk)
                    self.progress.advance(len(chunk))

            def put() -> httpx.Response:
                nonlocal progress_made
                self.progress.advance(-progress_made)  # a retry sends the part again
                progress_made = 0
                with urls_lock:
                    url = urls[piece.number]
                return http.put(url, content=chunks(), headers={"Content-Length": str(piece.size)})

            what = f"part {piece.number} of {self.name} {self.version}"
            response = presigned_call(self.session.retry, put, refresh_urls, what)
            etag = response.headers.get("ETag")
            if not etag:
                raise DepotError(f"S3 answered part {piece.number} without an ETag")
            with state_lock:
                etags[piece.number] = etag
                sent += 1
                self._save_state(upload, source, etags)

        self.progress.start(f"push {self.name} {self.version}", source.size)
        try:
            digest = self._send_parts(source, pieces, done, send)
        finally:
            http.close()
            self.progress.finish()
        sha256 = digest.hexdigest()
        if source.sha256 is not None and sha256 != source.sha256:
            raise IntegrityError(f"{source.path} changed while it was read")
        parts = [{"part_number": number, "etag": etags[number]} for number in sorted(etags)]
        try:
            response = self.session.request("POST", f"{upload_path}/complete", json={"parts": parts, "sha256": sha256})
        except NotFoundError:
            # Completed by an earlier run whose answer was lost: the version tells.
            existing = self._existing(sha256)
            if existing is None:
                raise
            self.state_path.unlink(missing_ok=True)
            return PushResult(existing, "existing", len(pieces), sent, resumed)
        self.state_path.unlink(missing_ok=True)
        return PushResult(response.json(), "multipart", len(pieces), sent, resumed)

    def _send_parts(
        self, source: _Source, pieces: list[Piece], done: dict[int, str], send: Callable[[Piece, bytearray], None]
    ) -> Any:
        """Read the file once, in order, hashing every byte, and send the parts not `done`, several at once."""
        digest = hashlib.sha256()
        concurrency = max(1, self.options.concurrency)
        # One buffer more than the parts in flight: the next part is read while the others are sent.
        slots = threading.BoundedSemaphore(concurrency + 1)
        futures: list[Future[None]] = []
        failed = threading.Event()

        def release(future: Future[None]) -> None:
            slots.release()
            if future.cancelled() or future.exception() is not None:
                failed.set()

        with ThreadPoolExecutor(concurrency, thread_name_prefix="depot-part") as pool, open(source.path, "rb") as file:
            try:
                for piece in pieces:
                    if failed.is_set():
                        break
                    slots.acquire()
                    data = bytearray(piece.size)
                    if file.readinto(data) != piece.size:
                        slots.release()
                        raise IntegrityError(f"{source.path} changed while it was read (shorter than {source.size})")
                    digest.update(data)
                    if piece.number in done:
                        slots.release()
                        self.progress.advance(piece.size)
                        continue
                    future = pool.submit(send, piece, data)
                    future.add_done_callback(release)
                    futures.append(future)
                    del data
                wait(futures, return_when=FIRST_EXCEPTION)
            finally:
                for future in futures:
                    future.cancel()
        for future in futures:
            if not future.cancelled():
                future.result()  # the first part's error, if any
        if failed.is_set() and any(f.cancelled() for f in futures):
            raise DepotError("the upload stopped after a part failed")
        return digest


# Pull


def split_reference(reference: str) -> tuple[str, str]:
    """`NAME[@VERSION|@latest]` as (name, version); the version defaults to `latest`."""
    name, _, version = reference.partition("@")
    if not name:
        raise UsageError(f"{reference!r}: expected NAME[@VERSION]")
    return name, version or "latest"


def _safe_filename(version: dict[str, Any]) -> str:
    given = os.path.basename(str(version.get("filename") or "").replace("\\", "/")).strip()
    if given in {"", ".", ".."}:
        given = f"{version['package']}-{version['version']}"
    return given


def destination_for(version: dict[str, Any], output: Path | None) -> Path:
    """Where the version's file goes: `output` itself, or the version's file name in `output` (a directory)."""
    if output is None:
        return Path.cwd() / _safe_filename(version)
    if output.is_dir():
        return output / _safe_filename(version)
    return output


def _read_range(descriptor: int, piece: Piece) -> Iterator[bytes]:
    """The bytes of `piece` in a file, a chunk at a time."""
    for offset in range(piece.offset, piece.offset + piece.size, CHUNK):
        yield os.pread(descriptor, min(CHUNK, piece.offset + piece.size - offset), offset)


class _Sidecar:
    """`FILE.part.json`, JSON lines: a header (the version's sha256, its size, the range size), then
    for each range hashed, in file order, its number and the sha256 of the file up to its last byte.
    Lines are only appended (a torn last line is ignored), so its cost stays one line per range."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.header = header
        self._file: IO[str] | None = None

    def verified_prefixes(self) -> dict[int, str]:
        """The prefix digests recorded by an earlier pull of the same bytes (none if it was of others)."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            return {}
        if not lines or _json_line(lines[0]) != self.header:
            return {}
        found: dict[int, str] = {}
        for line in lines[1:]:
            entry = _json_line(line)
            if entry is not None and isinstance(entry.get("range"), int) and isinstance(entry.get("sha256"), str):
                found[entry["range"]] = entry["sha256"]
        return found

    def start(self, kept: dict[int, str]) -> None:
        """Write the header and the prefixes `kept`, then stay open for `append`."""
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        lines = [self.header] + [{"range": number, "sha256": digest} for number, digest in sorted(kept.items())]
        temporary.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
        os.replace(temporary, self.path)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by `close`

    def append(self, number: int, prefix_sha256: str) -> None:
        assert self._file is not None
        self._file.write(json.dumps({"range": number, "sha256": prefix_sha256}) + "\n")
        self._file.flush()  # no fsync: a resume verifies what it reads back anyway

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def _json_line(line: str) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class _InOrderDigest:
    """The sha256 of a file whose ranges are written out of order, computed while they arrive: each
    range is hashed, in file order, as soon as it and all before it are on disk (read back while
    still in the page cache), on a thread of its own. After each range, the digest of the file so
    far goes to the sidecar: that is what an interrupted pull checks what it kept against."""

    def __init__(self, path: Path, pieces: list[Piece], digest: Any, sidecar: _Sidecar) -> None:
        self._path = path
        self._pieces = pieces  # those still to hash, in file order
        self._digest = digest  # the sha256 of every byte before the first of `pieces`
        self._sidecar = sidecar
        self._written: set[int] = set()
        self._stopped = False
        self._ready = threading.Condition()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="depot-sha256", daemon=True)
        self._thread.start()

    def written(self, number: int) -> None:
        with self._ready:
            self._written.add(number)
            self._ready.notify()

    def stop(self) -> None:
        with self._ready:
            self._stopped = True
            self._ready.notify()
        self._thread.join()

    def hexdigest(self) -> str:
        """Once every range is written: the sha256 of the whole file."""
        self._thread.join()
        if self._error is not None:
            raise DepotError(f"could not read back {self._path}: {self._error}") from self._error
        return str(self._digest.hexdigest())

    def _may_go_on(self, number: int) -> bool:
        return number in self._written or self._stopped

    def _run(self) -> None:
        try:
            with open(self._path, "rb") as file:
                for piece in self._pieces:
                    with self._ready:
                        self._ready.wait_for(functools.partial(self._may_go_on, piece.number))
                        if self._stopped:
                            return
                    for chunk in _read_range(file.fileno(), piece):
                        self._digest.update(chunk)
                    self._sidecar.append(piece.number, self._digest.copy().hexdigest())
                    # Written back while the download goes on, not all at once before the rename.
                    os.fdatasync(file.fileno())
        except OSError as error:
            self._error = error


class Puller:
    """One pull of one version into one file."""

    def __init__(
        self,
        session: Session,
        *,
        version: dict[str, Any],
        destination: Path,
        options: TransferOptions,
        progress: Reporter,
    ) -> None:
        self.session = session
        self.version = version
        self.destination = destination
        self.options = options
        self.progress = progress
        self.limit = rate_limit(options.max_bytes_per_second)
        self.part = destination.with_name(destination.name + ".part")
        name, number = str(version["package"]), str(version["version"])
        self.label = f"pull {name} {number}"
        self.content_path = f"/packages/{segment(name)}/versions/{segment(number)}/content"

    def _locate(self) -> str:
        response = self.session.request("GET", self.content_path, params={"redirect": "1"}, allow={307})
        location: str | None = response.headers.get("Location")
        if response.status_code != 307 or not location:
            raise DepotError(f"expected a redirect to the bytes, got {response.status_code}")
        return location

    def _resume(self, pieces: list[Piece], size: int, sidecar: _Sidecar) -> tuple[Any, dict[int, str]]:
        """The ranges from the start of the file that an earlier pull left intact, with their prefix
        digests, and the sha256 state after them; nothing when there is nothing to keep."""
        digest = hashlib.sha256()
        kept: dict[int, str] = {}
        recorded = sidecar.verified_prefixes()
        if recorded and self.part.is_file() and self.part.stat().st_size == size:
            with open(self.part, "rb") as file:
                for piece in pieces:
                    expected = recorded.get(piece.number)
                    if expected is None:
                        break
                    before = digest.copy()
                    for chunk in _read_range(file.fileno(), piece):
                        digest.update(chunk)
                    if digest.copy().hexdigest() != expected:  # damaged since: fetched again, with all after it
                        digest = before
                        break
                    kept[piece.number] = expected
            return digest, kept
        with open(self.part, "wb") as file:
            file.truncate(size)
        return digest, kept

    def run(self) -> PullResult:
        size = int(self.version["size"])
        sha256 = str(self.version["sha256"]).lower()
        range_size = max(size if size < self.options.threshold else self.options.part_size, 1)
        self.destination.parent.mkdir(parents=True, exist_ok=True)
        pieces = plan(size, range_size)
        header = {"sha256": sha256, "size": size, "range_size": range_size}
        sidecar = _Sidecar(self.destination.with_name(self.destination.name + ".part.json"), header)
        state, kept = self._resume(pieces, size, sidecar)
        sidecar.start(kept)
        missing = pieces[len(kept) :]
        self.progress.start(self.label, size)
        self.progress.advance(size - sum(piece.size for piece in missing))
        digest = _InOrderDigest(self.part, missing, state, sidecar)
        try:
            self._fetch(missing, digest)
            actual = digest.hexdigest()
        finally:
            digest.stop()
            sidecar.close()
            self.progress.finish()
        if not hmac.compare_digest(actual, sha256):
            self.part.unlink(missing_ok=True)
            sidecar.remove()
            raise IntegrityError(
                f"{self.label}: the bytes received have sha256 {actual}, not the version's {sha256}; nothing was kept"
            )
        with open(self.part, "rb+") as file:
            os.fsync(file.fileno())  # on disk before it takes the final name
        os.replace(self.part, self.destination)
        sidecar.remove()
        return PullResult(self.version, self.destination, len(pieces), len(missing), bool(kept))

    def _fetch(self, missing: list[Piece], digest: _InOrderDigest) -> None:
        if not missing:
            return
        url = [self._locate()]
        url_lock = threading.Lock()
        reader = RangeReader(self.options.concurrency)

        def refresh() -> None:
            fresh = self._locate()
            with url_lock:
                url[0] = fresh

        def fetch(piece: Piece) -> None:
            descriptor = os.open(self.part, os.O_WRONLY)
            written = 0

            def write(chunk: memoryview) -> None:
                nonlocal written
                if written + len(chunk) > piece.size:
                    raise DepotError(f"range {piece.number}: more bytes than asked for")
                os.pwrite(descriptor, chunk, piece.offset + written)
                written += len(chunk)
                self.progress.advance(len(chunk))
                self.limit.take(len(chunk))

            def get() -> httpx.Response:
                nonlocal written
                self.progress.advance(-written)  # a retry fetches the range again
                written = 0
                with url_lock:
                    current = url[0]
                response = reader.get(current, piece.offset, piece.end, write)
                if response.status_code < 300 and written != piece.size:
                    raise httpx.ReadError(f"range {piece.number}: {written} of {piece.size} bytes")
                return response

            try:
                presigned_call(self.session.retry, get, refresh, f"{self.label}, range {piece.number}")
            finally:
                os.close(descriptor)
            digest.written(piece.number)

        try:
            with ThreadPoolExecutor(max(1, self.options.concurrency), thread_name_prefix="depot-range") as pool:
                futures = [pool.submit(fetch, piece) for piece in missing]
                wait(futures, return_when=FIRST_EXCEPTION)
                for future in futures:
                    future.cancel()
                for future in futures:
                    if not future.cancelled():
                        future.result()
        finally:
            reader.close()


def push(
    session: Session,
    *,
    name: str,
    version: str,
    path: Path,
    options: TransferOptions | None = None,
    progress: Reporter | None = None,
) -> PushResult:
    return Pusher(
        session,
        name=name,
        version=version,
        path=path,
        options=options or TransferOptions(),
        progress=progress or Silent(),
    ).run()


def pull(
    session: Session,
    *,
    version: dict[str, Any],
    destination: Path,
    options: TransferOptions | None = None,
    progress: Reporter | None = None,
) -> PullResult:
    return Puller(
        session,
        version=version,
        destination=destination,
        options=options or TransferOptions(),
        progress=progress or Silent(),
    ).run()
