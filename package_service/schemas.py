"""Request and response models of package_service (API.md section 3)."""

from __future__ import annotations

import functools
import unicodedata
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, StringConstraints, create_model

from common.api import QueryModel, RequestModel

# What `GET /packages/{name}/access` answers is a contract with validator_service, defined in
# `common.contracts`; re-exported (hence the aliases), so that this module names every model of the API.
from common.contracts import AccessFacts as AccessFacts  # noqa: PLC0414
from common.contracts import VersionState as VersionState  # noqa: PLC0414
from common.contracts import VersionStatus
from common.pagination import PageQuery
from common.s3 import MAX_PARTS, MIN_PART_SIZE


def _storable_text(value: str) -> str:
    # PostgreSQL's text and jsonb hold no NUL character.
    if "\x00" in value:
        raise ValueError("must not contain a NUL character")
    return value


def _storable_json(value: dict[str, Any]) -> dict[str, Any]:
    """JSON that jsonb stores as given: no NUL in any string, keys included (the body's parser
    already refused NaN, infinities and lone surrogates)."""
    pending: list[Any] = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str):
            _storable_text(item)
    return value


GroupName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
Username = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{2,63}$")]
Visibility = Literal["private", "public"]
Description = Annotated[str, Field(max_length=4000), AfterValidator(_storable_text)]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$")]
METADATA_MAX_BYTES = 64 * 1024
Metadata = Annotated[dict[str, Any], AfterValidator(_storable_json)]


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
    owner: Annotated[Username | None, Field(description="The new owner, an existing user (admins only).")] = None


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
    # Present only when asked for (`include=package`): the documented list shape stays as it is.
    package: Annotated[
        Package | None,
        Field(exclude_if=lambda value: value is None, description="The package itself, with `include=package`."),
    ] = None


@functools.lru_cache(maxsize=64)
def version_list_of(fields: frozenset[str]) -> type[VersionList]:
    """A `VersionList` whose versions have only `fields` (`?fields=`), in `Version`'s order.

    A model of its own, made once per set of fields (0.6 ms), rather than the whole list filtered
    as it is written: pydantic's `include` made that twice as slow as the whole list.
    """
    chosen: dict[str, Any] = {
        name: (info.annotation, info) for name, info in Version.model_fields.items() if name in fields
    }
    item = create_model("Version", **chosen)
    return create_model("VersionList", __base__=VersionList, items=(list[item], ...))


def _version_field_names(value: str) -> str:
    unknown = sorted(set(value.split(",")) - set(Version.model_fields))
    if unknown:
        raise ValueError(f"not a field of a version: {', '.join(unknown)}")
    return value


class VersionQuery(PageQuery):
    status: VersionStatus | None = None
    include_yanked: bool = False
    include: Annotated[
        Literal["package"] | None,
        Field(description="`package`: the package itself too, in the same answer (a package's page in one call)."),
    ] = None
    fields: Annotated[
        Annotated[str, Field(max_length=300), AfterValidator(_version_field_names)] | None,
        Field(
            description="Only these fields of each version, comma-separated (`version` is always there), e.g. "
            "`status,size,created_at`: a lighter list, without the reports and metadata that are not asked for."
        ),
    ] = None

    @property
    def version_fields(self) -> frozenset[str] | None:
        """The fields asked for, `version` included; None for all of them."""
        return None if self.fields is None else frozenset(self.fields.split(",")) | {"version"}


class UpdateVersion(RequestModel):
    description: Description | None = None
    metadata: Metadata | None = None


class Yank(RequestModel):
    reason: Annotated[str, Field(min_length=1, max_length=1000), AfterValidator(_storable_text)]


class DownloadQuery(QueryModel):
    redirect: bool = False


# Presigned uploads (the client sends the parts straight to S3)

MAX_PART_SIZE = 5 * 1024**3
"""S3's largest part."""


# Control characters (C0, DEL, C1), format characters (bidirectional overrides that make
# `evil\u202etxt.exe` read as `evilexe.txt`, zero-width ones) and line or paragraph separators.
_UNSHOWN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def _plain_file_name(value: str) -> str:
    if value in {".", ".."}:
        raise ValueError("must be a plain file name")
    if any(unicodedata.category(char) in _UNSHOWN_CATEGORIES for char in value):
        raise ValueError("must not contain control, format or line separator characters")
    return value


# Also the rules of the streamed upload's X-Filename and Content-Type headers (routes.py).
FileName = Annotated[str, StringConstraints(pattern=r"^[^\x00-\x1f\x7f/\\]{1,255}$"), AfterValidator(_plain_file_name)]
ContentType = Annotated[str, StringConstraints(pattern=r"^[\x21-\x7e][\x20-\x7e]{0,254}$")]


class CreateUpload(RequestModel):
    size: Annotated[int, Field(strict=True, ge=1, description="Bytes of the whole artifact.")]
    sha256: Annotated[
        Sha256 | None,
        Field(description="Hex SHA-256 of the whole artifact, if known now; else given at completion."),
    ] = None
    part_size: (
        Annotated[
            int,
            Field(
                strict=True,
                ge=MIN_PART_SIZE,
                le=MAX_PART_SIZE,
                description=f"Bytes of every part but the last (at most {MAX_PARTS} parts); chosen when left out.",
            ),
        ]
        | None
    ) = None
    content_type: ContentType = "application/octet-stream"
    filename: FileName | None = None


class UploadPart(BaseModel):
    part_number: int
    url: Annotated[str, Field(description="Presigned S3 URL: PUT exactly this part's bytes to it.")]
    size: int


class CompletedPart(BaseModel):
    part_number: int
    etag: str
    size: int


class Upload(BaseModel):
    upload_id: str
    package: str
    version: str
    size: int
    sha256: Annotated[str | None, Field(description="Declared when the upload started; null until completion if not.")]
    part_size: int
    expires_at: datetime
    parts: list[UploadPart]
    completed_parts: list[CompletedPart]


class PartETag(RequestModel):
    part_number: Annotated[int, Field(strict=True, ge=1, le=MAX_PARTS)]
    etag: Annotated[
        str,
        StringConstraints(pattern=r"^[\x21-\x7e]{1,200}$"),
        Field(description="The ETag S3 answered the part's PUT with."),
    ]


class CompleteUpload(RequestModel):
    parts: Annotated[list[PartETag], Field(min_length=1, max_length=MAX_PARTS)]
    sha256: Annotated[
        Sha256 | None,
        Field(
            description="Hex SHA-256 of the whole artifact, unless declared when the upload started "
            "(if both are given, they must be equal); validation checks it."
        ),
    ] = None


class AccessQuery(QueryModel):
    version: str | None = Field(default=None, max_length=200, description="Also say whether this version exists.")
