"""Request and response models of validator_service (API.md section 4)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints

from common.api import RequestModel
from validator_service.content import GiB, Rules

Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]
GroupOrRole = Annotated[str, StringConstraints(min_length=1, max_length=64)]
License = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
ReportStatus = Literal["queued", "running", "passed", "failed", "error"]
# `common.access.Action`, and `download`: `read` plus the version's state (`common.access.decide_download`).
ValidateAction = Literal["read", "download", "write", "admin"]
_DEFAULTS = Rules()


class SubjectBody(RequestModel):
    """A subject: by username alone, that user's current groups and roles; else exactly as given."""

    username: Name
    groups: list[GroupOrRole] | None = Field(
        default=None, max_length=200, description="Taken as given; with `roles` left out too, the user's current ones."
    )
    roles: list[GroupOrRole] | None = Field(
        default=None, max_length=20, description="Taken as given; with `groups` left out too, the user's current ones."
    )


class ValidateRequest(RequestModel):
    package: Name
    version: Name | None = Field(default=None, description="A version, or `latest`; `download` without one: `latest`.")
    action: ValidateAction
    subject: SubjectBody | None = Field(default=None, description="Whom to decide for (default: the caller).")


class Decision(BaseModel):
    allowed: bool
    reason: str = Field(
        description="Why: `admin`, `owner`, `member of read|write group '<group>'`, `public package`; or why not: "
        "`no such package` (also when the subject may not read it), `no such version`, `not allowed to write`, "
        "`only the owner or an admin`, `version is pending|rejected`, `no such user`, `user is disabled`."
    )


class Check(BaseModel):
    id: str
    status: Literal["pass", "fail", "warn", "skip"]
    detail: str


class Report(BaseModel):
    package: str
    version: str
    sha256: str
    size: int
    status: ReportStatus
    checks: list[Check]
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None = Field(description="Why the last attempt could not finish (status `error`), else null.")


class RulesBody(RequestModel):
    """The admission rules; a field left out takes its default (PUT replaces the whole set)."""

    max_artifact_bytes: int = Field(default=_DEFAULTS.max_artifact_bytes, ge=1, le=5 * 1024**4)
    max_unpacked_bytes: int = Field(default=_DEFAULTS.max_unpacked_bytes, ge=0, le=1024 * GiB)
    max_entries: int = Field(default=_DEFAULTS.max_entries, ge=1, le=10_000_000)
    max_compression_ratio: float = Field(default=_DEFAULTS.max_compression_ratio, ge=1, le=1_000_000)
    pickle_policy: Literal["reject", "warn", "allow"] = _DEFAULTS.pickle_policy
    allowed_licenses: list[License] = Field(default_factory=list, max_length=200, description="Empty: any.")

    def rules(self) -> Rules:
        """The rules the checks apply (a license listed twice counts once)."""
        return Rules(**self.model_dump() | {"allowed_licenses": tuple(dict.fromkeys(self.allowed_licenses))})


class RulesView(BaseModel):
    max_artifact_bytes: int
    max_unpacked_bytes: int
    max_entries: int
    max_compression_ratio: float
    pickle_policy: Literal["reject", "warn", "allow"]
    allowed_licenses: list[str]

    @classmethod
    def of(cls, rules: Rules) -> RulesView:
        """The response for `rules`."""
        return cls(**asdict(rules) | {"allowed_licenses": list(rules.allowed_licenses)})
