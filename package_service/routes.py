"""package_service's HTTP operations (API.md section 3): HTTP in, HTTP out.

Every operation is declared here. Handlers read what HTTP carries (path, headers, body), call a
flow with the request's session, the S3 clients and the caller, and turn what it returns into a
response: `service` (packages and versions), `uploads` (streamed), `presigned`, `downloads`.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import TypeAdapter, ValidationError
from starlette.responses import RedirectResponse, Response, StreamingResponse

from common.access import Subject
from common.api import Call, Header, Operation
from common.auth import bearer_token
from common.errors import BadRequest
from common.naming import Version
from package_service import downloads, presigned, schemas, service, uploads
from package_service.settings import PackageSettings
from package_service.users import UserDirectory

_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_FILE_NAME = TypeAdapter(schemas.FileName)
_CONTENT_TYPE = TypeAdapter(schemas.ContentType)

CHECKSUM_HEADER = Header("X-Checksum-Sha256", "The body's SHA-256 (hex): a mismatch is a 400 and nothing is kept.")
FILENAME_HEADER = Header("X-Filename", "The artifact's file name (no path), given back in downloads.", "model.pt")
CONTENT_TYPE_HEADER = Header("Content-Type", "Stored, and sent back on download when browsers cannot run it.")
RANGE_HEADER = Header("Range", "One byte range (`bytes=a-b`, `bytes=a-`, `bytes=-n`): a 206 answer.", "bytes=0-1023")
IF_NONE_MATCH_HEADER = Header("If-None-Match", "The ETag (quoted sha256) already held: a 304 answer.")


def subject_of(call: Call[Any, Any]) -> Subject:
    """The authenticated caller, as the access function sees them."""
    return Subject.of(call.principal)


def _valid(adapter: TypeAdapter[str], value: str) -> bool:
    # The same rules as the presigned upload's body fields (schemas.FileName, schemas.ContentType).
    try:
        adapter.validate_python(value)
    except ValidationError:
        return False
    return True


def upload_headers(call: Call[Any, Any]) -> uploads.UploadHeaders:
    """What the headers of a streamed upload say, each checked for form (`400` otherwise)."""
    length = call.header("content-length")
    if length is not None and not (length.isascii() and length.isdigit()):
        raise BadRequest("Content-Length must be a number.")
    checksum = call.header("x-checksum-sha256")
    if checksum is not None and not _SHA256.fullmatch(checksum):
        raise BadRequest("X-Checksum-Sha256 must be 64 hexadecimal characters.")
    filename = _utf8_header(call, "x-filename")
    if filename is not None and not _valid(_FILE_NAME, filename):
        raise BadRequest("X-Filename must be a plain file name (no path, no control characters, 255 at most).")
    content_type = call.header("content-type") or "application/octet-stream"
    if not _valid(_CONTENT_TYPE, content_type):
        raise BadRequest("Content-Type is not valid.")
    return uploads.UploadHeaders(
        length=_byte_count(length) if length is not None else None, sha256=checksum, filename=filename,
        content_type=content_type,
    )  # fmt: skip


def _byte_count(digits: str) -> int:
    # Python refuses to convert more than 4,300 digits; more than 20 are more than any artifact anyway.
    significant = digits.lstrip("0") or "0"
    return int(significant) if len(significant) <= 20 else 10**20


def _utf8_header(call: Call[Any, Any], name: str) -> str | None:
    """A header's value read as UTF-8 (HTTP hands over bytes, which Starlette reads as Latin-1): `400` if it is not."""
    value = call.header(name)
    if value is None:
        return None
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise BadRequest(f"{name.title()} must be UTF-8 text.") from None


def operations(settings: PackageSettings, users: UserDirectory | None = None) -> list[Operation]:
    """Every operation of the service; `users` answers whether a new owner exists (auth_service by default)."""
    users = users or UserDirectory(settings)

    # Packages

    async def create_package(call: Call[schemas.CreatePackage, None]) -> schemas.Package:
        return await service.create_package(call.db, subject_of(call), call.body)

    async def list_packages(call: Call[None, schemas.PackageQuery]) -> schemas.PackageList:
        return await service.list_packages(call.reads, subject_of(call), call.query, settings.regex_timeout_ms)

    async def get_package(call: Call[None, None]) -> schemas.Package:
        return await service.get_package(call.reads, subject_of(call), call.path("name"))

    async def get_access(call: Call[None, schemas.AccessQuery]) -> schemas.AccessFacts:
        return await service.access_facts(call.db, subject_of(call), call.path("name"), call.query.version)

    async def update_package(call: Call[schemas.UpdatePackage, None]) -> schemas.Package:
        # Only admins may name a new owner, so the admin's own token asks auth_service (users.py).
        token = bearer_token(call.header("authorization")) or ""

        async def find_user(username: str) -> str:
            return await users.existing_username(username, token)

        return await service.update_package(
            call.db, subject_of(call), call.path("name"), call.body, find_user=find_user
        )

    async def delete_package(call: Call[None, None]) -> None:
        deleted = await service.delete_package(call.db, subject_of(call), call.path("name"))
        resources = call.resources
        call.on_commit(lambda: service.discard_deleted(resources.s3, resources.sessions, deleted))

    # Versions

    async def list_versions(call: Call[None, schemas.VersionQuery]) -> schemas.VersionList:
        return await service.list_versions(call.reads, subject_of(call), call.path("name"), call.query)

    async def get_version(call: Call[None, None]) -> schemas.Version:
        return await service.get_version(call.reads, subject_of(call), call.path("name"), call.path("version"))

    async def update_version(call: Call[schemas.UpdateVersion, None]) -> schemas.Version:
        name, version = call.path("name"), call.path("version")
        return await service.update_version(call.db, subject_of(call), name, version, call.body)

    async def yank(call: Call[schemas.Yank, None]) -> schemas.Version:
        name, version = call.path("name"), call.path("version")
        return await service.set_yanked(call.db, subject_of(call), name, version, call.body.reason)

    async def unyank(call: Call[None, None]) -> schemas.Version:
        return await service.set_yanked(call.db, subject_of(call), call.path("name"), call.path("version"), None)

    async def delete_version(call: Call[None, None]) -> None:
        key = await service.delete_version(call.db, subject_of(call), call.path("name"), call.path("version"))
        resources = call.resources
        call.on_commit(lambda: service.delete_orphaned_bytes(resources.s3, resources.sessions, [key]))

    # Bytes in

    async def upload_content(call: Call[None, None]) -> schemas.Version:
        return await uploads.upload_version(
            call.db, call.resources.s3, subject_of(call), name=call.path("name"),
            version=Version.parse(call.path("version")), body=call.request.stream(), headers=upload_headers(call),
            max_bytes=settings.max_artifact_bytes, spawn=call.resources.spawn,
        )  # fmt: skip

    async def start_upload(call: Call[schemas.CreateUpload, None]) -> schemas.Upload:
        return await presigned.start_upload(
            call.db, call.resources.s3, subject_of(call), name=call.path("name"),
            version=Version.parse(call.path("version")), body=call.body, max_bytes=settings.max_artifact_bytes,
            expiry_hours=settings.upload_expiry_hours, spawn=call.resources.spawn,
        )  # fmt: skip

    async def get_upload(call: Call[None, None]) -> schemas.Upload:
        return await presigned.get_upload(call.db, call.resources.s3, subject_of(call), **_upload_path(call))

    async def complete_upload(call: Call[schemas.CompleteUpload, None]) -> schemas.Version:
        return await presigned.complete_upload(
            call.db, call.resources.s3, subject_of(call), **_upload_path(call), body=call.body
        )

    async def abort_upload(call: Call[None, None]) -> None:
        await presigned.abort_upload(call.db, call.resources.s3, subject_of(call), **_upload_path(call))

    # Bytes out

    async def download_content(call: Call[None, schemas.DownloadQuery]) -> Response:
        found = await downloads.download(
            call.db, call.resources.s3, subject_of(call), name=call.path("name"), version=call.path("version"),
            range_header=call.header("range"), if_none_match=call.header("if-none-match"),
            redirect=call.query.redirect, head=call.request.method == "HEAD",
        )  # fmt: skip
        if found.location is not None:
            return RedirectResponse(found.location, status_code=found.status, headers=found.headers)
        if found.stream is None:  # a 304, or the answer to a HEAD
            return Response(status_code=found.status, headers=found.headers, media_type=found.media_type)
        resources, audit = call.resources, found.audit

        def record(sent: int, outcome: str) -> None:
            # After the response: a client that went away mid-download is worth knowing about too.
            resources.spawn(downloads.record_relay(resources.sessions, audit, sent, outcome), "download_record")

        return StreamingResponse(
            downloads.relay(found.stream, record), status_code=found.status, headers=found.headers,
            media_type=found.media_type,
        )  # fmt: skip

    packages, versions, transfers = ("packages",), ("versions",), ("transfers",)
    version_path = "/{name}/versions/{version}"
    content = f"{version_path}/content"
    upload_list = f"{version_path}/uploads"
    upload = f"{upload_list}/{{upload_id}}"
    return [
        Operation("POST", "", create_package, "Create a package owned by the caller.",
                  body=schemas.CreatePackage, response=schemas.Package, status_code=201, errors=(409,), tags=packages),
        Operation("GET", "", list_packages, "Packages the caller may read, by name; search with q, regex, owner.",
                  query=schemas.PackageQuery, response=schemas.PackageList, tags=packages, read_only=True),
        Operation("GET", "/{name}", get_package, "One package.", response=schemas.Package, errors=(404,),
                  tags=packages, read_only=True),
        Operation("GET", "/{name}/access", get_access,
                  "A package's access list and whether a version exists (service or admin callers).",
                  auth="service_or_admin", query=schemas.AccessQuery, response=schemas.AccessFacts, errors=(404,),
                  tags=("internal",)),
        Operation("PATCH", "/{name}", update_package,
                  "Change description, visibility or groups (owner or admin), or the owner (admin).",
                  body=schemas.UpdatePackage, response=schemas.Package, errors=(403, 404), tags=packages),
        Operation("DELETE", "/{name}", delete_package, "Delete a package, its versions and their bytes.",
                  status_code=204, errors=(403, 404), tags=packages),
        Operation("GET", "/{name}/versions", list_versions, "Versions, highest precedence first.",
                  query=schemas.VersionQuery, response=schemas.VersionList, errors=(404,), tags=versions,
                  read_only=True),
        Operation("GET", version_path, get_version, "One version (or `latest`).",
                  response=schemas.Version, errors=(404,), tags=versions, read_only=True),
        Operation("PATCH", version_path, update_version, "Edit a version's description or metadata.",
                  body=schemas.UpdateVersion, response=schemas.Version, errors=(403, 404, 413), tags=versions),
        Operation("POST", f"{version_path}/yank", yank, "Yank an available version.",
                  body=schemas.Yank, response=schemas.Version, errors=(403, 404, 409), tags=versions),
        Operation("POST", f"{version_path}/unyank", unyank, "Make a yanked version available again.",
                  response=schemas.Version, errors=(403, 404, 409), tags=versions),
        Operation("DELETE", version_path, delete_version, "Delete a version and its bytes; its string stays spent.",
                  status_code=204, errors=(403, 404), tags=versions),
        Operation("PUT", content, upload_content, "Upload a version's bytes (streamed); it becomes pending.",
                  raw_body_media_type="application/octet-stream", response=schemas.Version, status_code=201,
                  headers=(CHECKSUM_HEADER, FILENAME_HEADER, CONTENT_TYPE_HEADER),
                  errors=(403, 404, 409, 413), tags=transfers, transfer=True),
        Operation("GET", content, download_content, "Download a version's bytes (Range, If-None-Match, redirect).",
                  query=schemas.DownloadQuery, response_media_type="application/octet-stream",
                  headers=(RANGE_HEADER, IF_NONE_MATCH_HEADER),
                  responses={206: "Partial Content: the range asked for", 304: "Not Modified: the ETag matches",
                             307: "Temporary Redirect: to a short-lived presigned S3 URL (`redirect=1`)"},
                  errors=(404, 409, 416), tags=transfers),
        Operation("POST", upload_list, start_upload,
                  "Start a presigned upload of a version: PUT each part to its URL, then complete.",
                  body=schemas.CreateUpload, response=schemas.Upload, status_code=201, errors=(403, 404, 409, 413),
                  tags=transfers),
        Operation("GET", upload, get_upload,
                  "An open upload: fresh part URLs, and the parts already uploaded (to resume).",
                  response=schemas.Upload, errors=(403, 404), tags=transfers),
        Operation("POST", f"{upload}/complete", complete_upload,
                  "Complete an upload with its parts' ETags; the version becomes pending.",
                  body=schemas.CompleteUpload, response=schemas.Version, status_code=201, errors=(403, 404, 409),
                  tags=transfers),
        Operation("DELETE", upload, abort_upload, "Abort an upload; S3 drops its parts.",
                  status_code=204, errors=(403, 404, 409), tags=transfers),
    ]  # fmt: skip


def _upload_path(call: Call[Any, Any]) -> dict[str, str]:
    return {"name": call.path("name"), "version": call.path("version"), "upload_id": call.path("upload_id")}
