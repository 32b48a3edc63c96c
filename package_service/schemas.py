"""Request and response models of package_service (API.md section 3)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints

from common.api import QueryModel, RequestModel
from common.pagination import PageQuery

GroupName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
Visibility = Literal["private", "public"]
Description = Annotated[str, Field(max_length=4000)]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$")]
VersionStatus = Literal["pending", "available", "rejected", "yanked"]
METADATA_MAX_BYTES = 64 * 1024


class Package(BaseModel):
    name: str
    description: str
    visibility: Visibility
    owner: str
    read_groups: list[str]
    write_groups: list[str]
    latest_version: str | None
    version_count: int
    download_count: int
    created_at: datetime
    updated_at: datetime


class PackageList(BaseModel):
    items: list[Package]
    next_cursor: str | None


class CreatePackage(RequestModel):
    name: Annotated[str, Field(max_length=100)]
    description: Description = ""
    visibility: Visibility = "private"
    read_groups: Annotated[list[GroupName], Field(max_length=100)] = Field(default_factory=list)
    write_groups: Annotated[list[GroupName], Field(max_length=100)] = Field(default_factory=list)


class UpdatePackage(RequestModel):
    description: Description | None = None
    visibility: Visibility | None = None
    read_groups: Annotated[list[GroupName], Field(max_length=100)] | None = None
    write_groups: Annotated[list[GroupName], Field(max_length=100)] | None = None


class PackageQuery(PageQuery):
    q: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    regex: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    owner: Annotated[str, Field(max_length=64)] | None = None


class Validation(BaseModel):
    status: str
    checks: list[dict[str, Any]]


class Version(BaseModel):
    package: str
    version: str
    status: VersionStatus
    size: int
    sha256: str
    content_type: str
    filename: str | None
    description: str
    metadata: dict[str, Any]
    uploaded_by: str
    created_at: datetime
    validated_at: datetime | None
    yank_reason: str | None
    download_count: int
    validation: Validation | None


class VersionList(BaseModel):
    items: list[Version]
    next_cursor: str | None


class VersionQuery(PageQuery):
    status: VersionStatus | None = None
    include_yanked: bool = False


class UpdateVersion(RequestModel):
    description: Description | None = None
    metadata: dict[str, Any] | None = None


class Yank(RequestModel):
    reason: Annotated[str, Field(min_length=1, max_length=1000)]


class DownloadQuery(QueryModel):
    redirect: bool = False
