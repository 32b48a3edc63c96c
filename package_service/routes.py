"""package_service's HTTP operations (API.md section 3): HTTP in, HTTP out; the logic is in `service`."""

from __future__ import annotations

from typing import Any

from common.access import Subject
from common.api import Call, Operation
from common.app import authenticated
from package_service import schemas, service
from package_service.presigned import PresignedUploads
from package_service.settings import PackageSettings
from package_service.transfers import Transfers


async def subject_of(call: Call[Any, Any]) -> Subject:
    """The authenticated caller, as the access function sees them."""
    return Subject.of(await authenticated(call))


def operations(transfers: Transfers, presigned: PresignedUploads, settings: PackageSettings) -> list[Operation]:
    """Every operation of the service."""

    async def create_package(call: Call[schemas.CreatePackage, None]) -> schemas.Package:
        return await service.create_package(call.db, await subject_of(call), call.body)

    async def list_packages(call: Call[None, schemas.PackageQuery]) -> schemas.PackageList:
        subject = await subject_of(call)
        return await service.list_packages(call.db, subject, call.query, settings.regex_timeout_ms)

    async def get_package(call: Call[None, None]) -> schemas.Package:
        return await service.get_package(call.db, await subject_of(call), call.path("name"))

    async def get_access(call: Call[None, schemas.AccessQuery]) -> schemas.AccessFacts:
        subject = await subject_of(call)
        return await service.access_facts(call.db, subject, call.path("name"), call.query.version)

    async def update_package(call: Call[schemas.UpdatePackage, None]) -> schemas.Package:
        return await service.update_package(call.db, await subject_of(call), call.path("name"), call.body)

    async def delete_package(call: Call[None, None]) -> None:
        keys = await service.delete_package(call.db, await subject_of(call), call.path("name"))
        call.on_commit(lambda: transfers.delete_bytes(keys))

    async def list_versions(call: Call[None, schemas.VersionQuery]) -> schemas.VersionList:
        return await service.list_versions(call.db, await subject_of(call), call.path("name"), call.query)

    async def get_version(call: Call[None, None]) -> schemas.Version:
        subject = await subject_of(call)
        return await service.get_version(call.db, subject, call.path("name"), call.path("version"))

    async def update_version(call: Call[schemas.UpdateVersion, None]) -> schemas.Version:
        subject = await subject_of(call)
        return await service.update_version(call.db, subject, call.path("name"), call.path("version"), call.body)

    async def yank(call: Call[schemas.Yank, None]) -> schemas.Version:
        subject = await subject_of(call)
        return await service.set_yanked(call.db, subject, call.path("name"), call.path("version"), call.body.reason)

    async def unyank(call: Call[None, None]) -> schemas.Version:
        subject = await subject_of(call)
        return await service.set_yanked(call.db, subject, call.path("name"), call.path("version"), None)

    async def delete_version(call: Call[None, None]) -> None:
        subject = await subject_of(call)
        key = await service.delete_version(call.db, subject, call.path("name"), call.path("version"))
        call.on_commit(lambda: transfers.delete_bytes([key]))

    packages, versions = ("packages",), ("versions",)
    version_path = "/{name}/versions/{version}"
    return [
        Operation("POST", "", create_package, "Create a package owned by the caller.",
                  body=schemas.CreatePackage, response=schemas.Package, status_code=201, errors=(401, 409),
                  tags=packages),
        Operation("GET", "", list_packages, "Packages the caller may read, by name; search with q, regex, owner.",
                  query=schemas.PackageQuery, response=schemas.PackageList, errors=(401,), tags=packages),
        Operation("GET", "/{name}", get_package, "One package.",
                  response=schemas.Package, errors=(401, 404), tags=packages),
        Operation("GET", "/{name}/access", get_access,
                  "A package's access list and whether a version exists (service or admin callers).",
                  query=schemas.AccessQuery, response=schemas.AccessFacts, errors=(401, 403, 404), tags=("internal",)),
        Operation("PATCH", "/{name}", update_package, "Change description, visibility or groups (owner or admin).",
                  body=schemas.UpdatePackage, response=schemas.Package, errors=(401, 403, 404), tags=packages),
        Operation("DELETE", "/{name}", delete_package, "Delete a package, its versions and their bytes.",
                  status_code=204, errors=(401, 403, 404), tags=packages),
        Operation("GET", "/{name}/versions", list_versions, "Versions, highest precedence first.",
                  query=schemas.VersionQuery, response=schemas.VersionList, errors=(401, 404), tags=versions),
        Operation("GET", version_path, get_version, "One version (or `latest`).",
                  response=schemas.Version, errors=(401, 404), tags=versions),
        Operation("PATCH", version_path, update_version, "Edit a version's description or metadata.",
                  body=schemas.UpdateVersion, response=schemas.Version, errors=(401, 403, 404, 413), tags=versions),
        Operation("POST", f"{version_path}/yank", yank, "Yank an available version.",
                  body=schemas.Yank, response=schemas.Version, errors=(401, 403, 404, 409), tags=versions),
        Operation("POST", f"{version_path}/unyank", unyank, "Make a yanked version available again.",
                  response=schemas.Version, errors=(401, 403, 404, 409), tags=versions),
        Operation("DELETE", version_path, delete_version, "Delete a version and its bytes; its string stays spent.",
                  status_code=204, errors=(401, 403, 404), tags=versions),
        *transfers.operations(),
        *presigned.operations(),
    ]  # fmt: skip
