"""Pushes and pulls: the bytes of a version, sent to or fetched from S3 through presigned URLs.

Push: a file under the threshold is streamed to package_service (`PUT .../content`) with its
sha256 in `X-Checksum-Sha256`; a larger one is a presigned multipart upload whose parts go straight
to S3, several in flight, read once from disk (the sha256 is computed in the same pass and
declared at completion). The upload's id and layout are kept in a state file, so that a push run
again after an interruption asks the server which parts it has and sends only the others.

Pull: from the presigned URL of the version (`?redirect=1`), in parallel ranges, into
`<file>.part`; a sidecar `<file>.part.json` records the sha256 of each range written, so that an
interrupted pull keeps only the ranges whose bytes on disk still match. The file is renamed into
place only when the sha256 of the whole matches the version's; otherwise it is deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

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
from depot_client.retry import RetryPolicy, parse_retry_after
from depot_client.session import Session, new_http_client, segment

CHUNK = 1 * MiB
# Seconds slept after each part or range: lets the tests interrupt a transfer midway. Not for users.
PIECE_DELAY_ENV = "DEPOT_CLIENT_TEST_PIECE_DELAY"


@dataclass(frozen=True)
class TransferOptions:
    """Sizes and parallelism of transfers."""

    threshold: int = DEFAULT_THRESHOLD  # from this size on: presigned multipart upload, ranged download
    part_size: int = DEFAULT_PART_SIZE  # of upload parts and download ranges
    concurrency: int = DEFAULT_CONCURRENCY  # parts or ranges in flight


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


def _piece_delay() -> None:
    delay = os.environ.get(PIECE_DELAY_ENV)
    if delay:
        time.sleep(float(delay))


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


def sha256_of(path: Path, progress: Reporter | None = None) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with open(path, "rb") as file:
        while count := file.readinto(buffer):
            digest.update(view[:count])
            if progress is not None:
                progress.advance(count)
    return digest.hexdigest()


class PresignedHttp:
    """PUTs and GETs of presigned S3 URLs: never an Authorization header, retries with backoff."""

    def __init__(self, retry: RetryPolicy, concurrency: int) -> None:
        self.retry = retry
        self.http = new_http_client(max_connections=concurrency + 2)

    def close(self) -> None:
        self.http.close()

    def attempt(self, call: Callable[[], httpx.Response], refresh: Callable[[], None], what: str) -> httpx.Response:
        """`call` until it answers 2xx; a `403` (an expired URL) refreshes the URLs once."""
        refreshed = False
        attempt = 0
        while True:
            attempt += 1
            try:
                response = call()
            except httpx.TransportError as error:
                if attempt < self.retry.attempts and self.retry.should_retry_error(error, safe=True):
                    time.sleep(self.retry.delay(attempt))
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
            if attempt < self.retry.attempts and self.retry.should_retry_status(
                status, safe=True, retry_after=retry_after
            ):
                time.sleep(self.retry.delay(attempt, retry_after))
                continue
            raise DepotError(f"{what}: S3 answered {status}", status=status)


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

        transport = PresignedHttp(self.session.retry, self.options.concurrency)
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
                    yield chunk  # type: ignore[misc]  # httpx sends any bytes-like chunk
                    progress_made += len(chunk)
                    self.progress.advance(len(chunk))

            def put() -> httpx.Response:
                nonlocal progress_made
                self.progress.advance(-progress_made)  # a retry sends the part again
                progress_made = 0
                with urls_lock:
                    url = urls[piece.number]
                return transport.http.put(url, content=chunks(), headers={"Content-Length": str(piece.size)})

            response = transport.attempt(put, refresh_urls, f"part {piece.number} of {self.name} {self.version}")
            etag = response.headers.get("ETag")
            if not etag:
                raise DepotError(f"S3 answered part {piece.number} without an ETag")
            with state_lock:
                etags[piece.number] = etag
                sent += 1
                self._save_state(upload, source, etags)
            _piece_delay()

        self.progress.start(f"push {self.name} {self.version}", source.size)
        try:
            digest = self._send_parts(source, pieces, done, send)
        finally:
            transport.close()
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


@dataclass
class _PullState:
    sha256: str
    size: int
    range_size: int
    done: dict[int, str] = field(default_factory=dict)  # range number -> sha256 of its bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "size": self.size,
            "range_size": self.range_size,
            "done": {str(k): v for k, v in sorted(self.done.items())},
        }


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
        self.part = destination.with_name(destination.name + ".part")
        self.sidecar = destination.with_name(destination.name + ".part.json")
        name, number = str(version["package"]), str(version["version"])
        self.label = f"pull {name} {number}"
        self.content_path = f"/packages/{segment(name)}/versions/{segment(number)}/content"

    def _locate(self) -> str:
        response = self.session.request("GET", self.content_path, params={"redirect": "1"}, allow={307})
        location: str | None = response.headers.get("Location")
        if response.status_code != 307 or not location:
            raise DepotError(f"expected a redirect to the bytes, got {response.status_code}")
        return location

    def _resume_state(self, expected: _PullState) -> _PullState:
        """The sidecar's ranges whose bytes on disk still match; a fresh state if none can be kept."""
        found = _read_json(self.sidecar)
        if (
            found is not None
            and found.get("sha256") == expected.sha256
            and found.get("size") == expected.size
            and found.get("range_size") == expected.range_size
            and self.part.is_file()
            and self.part.stat().st_size == expected.size
        ):
            pieces = {piece.number: piece for piece in plan(expected.size, expected.range_size)}
            with open(self.part, "rb") as file:
                for key, digest in dict(found.get("done", {})).items():
                    piece = pieces.get(int(key))
                    if piece is None:
                        continue
                    file.seek(piece.offset)
                    if hashlib.sha256(file.read(piece.size)).hexdigest() == digest:
                        expected.done[piece.number] = digest
            return expected
        with open(self.part, "wb") as file:
            file.truncate(expected.size)
        return expected

    def run(self) -> PullResult:
        size = int(self.version["size"])
        sha256 = str(self.version["sha256"]).lower()
        range_size = size if size < self.options.threshold else self.options.part_size
        range_size = max(range_size, 1)
        self.destination.parent.mkdir(parents=True, exist_ok=True)
        state = self._resume_state(_PullState(sha256, size, range_size))
        resumed = bool(state.done)
        _atomic_write_json(self.sidecar, state.to_json())
        pieces = plan(size, range_size)
        missing = [piece for piece in pieces if piece.number not in state.done]
        self.progress.start(self.label, size)
        self.progress.advance(sum(piece.size for piece in pieces if piece.number in state.done))
        try:
            if missing:
                self._fetch(missing, state)
            actual = sha256_of(self.part)
        finally:
            self.progress.finish()
        if not hmac.compare_digest(actual, sha256):
            self.part.unlink(missing_ok=True)
            self.sidecar.unlink(missing_ok=True)
            raise IntegrityError(
                f"{self.label}: the bytes received have sha256 {actual}, not the version's {sha256}; nothing was kept"
            )
        with open(self.part, "rb+") as file:
            os.fsync(file.fileno())  # on disk before it takes the final name
        os.replace(self.part, self.destination)
        self.sidecar.unlink(missing_ok=True)
        return PullResult(self.version, self.destination, len(pieces), len(missing), resumed)

    def _fetch(self, missing: list[Piece], state: _PullState) -> None:  # noqa: PLR0915 (one download, step by step)
        url = [self._locate()]
        url_lock = threading.Lock()
        state_lock = threading.Lock()
        transport = PresignedHttp(self.session.retry, self.options.concurrency)

        def refresh() -> None:
            fresh = self._locate()
            with url_lock:
                url[0] = fresh

        def fetch(piece: Piece) -> None:
            descriptor = os.open(self.part, os.O_WRONLY)
            try:
                written = 0

                def get() -> httpx.Response:
                    nonlocal written
                    self.progress.advance(-written)
                    written = 0
                    with url_lock:
                        current = url[0]
                    request = transport.http.build_request(
                        "GET", current, headers={"Range": f"bytes={piece.offset}-{piece.end}"}
                    )
                    response = transport.http.send(request, stream=True)
                    if response.status_code >= 300:
                        response.read()
                        return response
                    try:
                        digest = hashlib.sha256()
                        for chunk in response.iter_bytes(CHUNK):
                            if written + len(chunk) > piece.size:
                                raise DepotError(f"range {piece.number}: more bytes than asked for")
                            os.pwrite(descriptor, chunk, piece.offset + written)
                            digest.update(chunk)
                            written += len(chunk)
                            self.progress.advance(len(chunk))
                    finally:
                        response.close()
                    if written != piece.size:
                        raise httpx.ReadError(f"range {piece.number}: {written} of {piece.size} bytes")
                    response.extensions["depot_sha256"] = digest.hexdigest()
                    return response

                # No fsync per range: a resume checks each range's bytes against its sha256 anyway.
                response = transport.attempt(get, refresh, f"{self.label}, range {piece.number}")
            finally:
                os.close(descriptor)
            with state_lock:
                state.done[piece.number] = str(response.extensions["depot_sha256"])
                _atomic_write_json(self.sidecar, state.to_json())
            _piece_delay()

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
            transport.close()


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
