"""The messages between services, defined once: both sides build and parse them through these models.

Services never import each other, so each message is a model here that both sides use: the
sender builds it and enqueues it with `send` (a message knows its queue and its key), the receiver
reads it with `parse_validation_job`, `parse_verdict`, `parse_access_facts` or `parse_user_facts`. A receiver ignores
fields it does not know (a newer sender may add some) and refuses a message that breaks the
contract with `InvalidMessage`, whose `problems` name the fields and what is wrong with them
(pydantic's error types), never their values: a payload may carry what must not be logged. A
queue's consumer logs the problems and drops the job (done, not retried: no retry can fix it).

Validation job (package_service → validator_service, queue `validation`)
--------------------------------------------------------------------------
One job per version, keyed by the version id: enqueued with the version's row (`pending`), again by
package_service's sweep for a version pending too long, and by the validator for a rerun::

    {"version_id": "<uuid>", "package": "<name as created>", "version": "<version string>",
     "s3_key": "versions/<uuid>", "sha256": "<64 hex digits>", "size": 1234,
     "filename": "model.zip" | null}

The digest is sent, and read, in lower case. The file name helps the validator tell what the bytes
are when their first bytes do not.

Verdict (validator_service → package_service, queue `verdicts`)
-----------------------------------------------------------------
One job per finished validation, keyed by `<version id>:<run>` (a verdict sent again is the same
job, and a newer validation's verdict never waits behind an older one)::

    {"version_id": "<uuid of the version, as in the validation job>",
     "run": 3,                                        # which validation of the version this is
     "verdict": "passed" | "failed",
     "report": {"status": "passed" | "failed",        # the same as "verdict"
                "checks": [{"id": "sha256", "status": "pass" | "fail" | "warn" | "skip",
                            "detail": "..."}, ...]}}

`run` numbers the validations of one version, from 1, in the order they started (the first, a
retry after an error, a rerun): a higher run is a newer validation. A verdict without `run` (from
a validator older than runs, keyed by the version id alone) is still accepted. A report whose
status is `error` (the validator could not finish) is not a verdict and cannot be sent: that
validation job is retried instead.

Access facts (package_service → validator_service, `GET /packages/{name}/access?version=`)
------------------------------------------------------------------------------------------
The answer to a `service` (or admin) caller: what decides access to a package, and the version
asked about (`null` when there is no such version, or none was asked about)::

    {"package": "<name as created>", "owner": "<username>", "visibility": "private" | "public",
     "read_groups": ["..."], "write_groups": ["..."],
     "version": {"version": "1.0.0", "status": "pending" | "available" | "rejected" | "yanked",
                 "sha256": "<hex>", "size": 1234} | null}

package_service answers with `AccessFacts` (its OpenAPI document describes it from this model);
the validator reads the answer with `parse_access_facts`.

User facts (auth_service → validator_service, `GET /auth/users/{username}`)
---------------------------------------------------------------------------
auth_service's User (API.md section 2), of which a service reads what decides access: the user's
current groups and roles, and whether the account is disabled::

    {"username": "<lowercase>", "groups": ["..."], "roles": ["..."], "disabled": false, ...}

The validator reads the answer with `parse_user_facts`.
"""

from __future__ import annotations

import uuid
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator
from pydantic_core import PydanticCustomError
from sqlalchemy.ext.asyncio import AsyncSession

from common.access import PackageAccess, Subject, Visibility
from common.queue import enqueue

VALIDATION_QUEUE = "validation"
"""Validation jobs, package_service → validator_service."""
VERDICT_QUEUE = "verdicts"
"""Verdicts, validator_service → package_service."""

Outcome = Literal["passed", "failed"]
CheckStatus = Literal["pass", "fail", "warn", "skip"]
VersionStatus = Literal["pending", "available", "rejected", "yanked"]


class InvalidMessage(ValueError):
    """A message that breaks its contract; `problems` says where and how, never with the values."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class _Message(BaseModel):
    # Unknown fields are ignored, not refused: a newer sender may add some.
    model_config = ConfigDict(extra="ignore", frozen=True)


class _QueueMessage(_Message):
    queue: ClassVar[str]

    @property
    @abstractmethod
    def key(self) -> str:
        """The job's key: at most one job per key is queued or running."""

    def payload(self) -> dict[str, Any]:
        """The job's payload: the message as JSON."""
        return self.model_dump(mode="json")


class ValidationJob(_QueueMessage):
    """What a validation job carries: enough for the validator to find, check and report on the bytes."""

    queue: ClassVar[str] = VALIDATION_QUEUE

    version_id: uuid.UUID
    package: str = Field(min_length=1)
    version: str = Field(min_length=1)
    s3_key: str = Field(min_length=1)
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$", to_lower=True)]
    size: int = Field(ge=0)
    filename: str | None = None

    @property
    def key(self) -> str:
        """The version id: a version has one validation queued or running at a time."""
        return str(self.version_id)


class Check(_Message):
    """One check's outcome in a verdict's report."""

    id: str = Field(min_length=1)
    status: CheckStatus
    detail: str = ""


class Report(_Message):
    """The report a verdict carries: its status is the verdict."""

    status: Outcome
    checks: list[Check]


class Verdict(_QueueMessage):
    """A finished validation's verdict on a version."""

    queue: ClassVar[str] = VERDICT_QUEUE

    version_id: uuid.UUID
    run: int | None = Field(default=None, ge=0)  # None: from a validator that did not number its runs
    verdict: Outcome
    report: Report

    @model_validator(mode="after")
    def _consistent(self) -> Verdict:
        if self.report.status != self.verdict:
            raise PydanticCustomError("verdict_mismatch", "report.status must equal verdict")
        return self

    @classmethod
    def of(cls, version_id: uuid.UUID, run: int, verdict: Outcome, checks: Sequence[Mapping[str, Any]]) -> Verdict:
        """The verdict of run `run`, with its checks as the validator stores them in its report."""
        return cls.model_validate(
            {"version_id": version_id, "run": run, "verdict": verdict, "report": {"status": verdict, "checks": checks}}
        )

    @property
    def key(self) -> str:
        """`<version id>:<run>`: one job per run, so that a newer verdict never waits behind an older one."""
        return str(self.version_id) if self.run is None else f"{self.version_id}:{self.run}"


class VersionState(_Message):
    version: str
    status: VersionStatus
    sha256: str
    size: int


class AccessFacts(_Message):
    """What decides access to a package (for other services: `POST /validate` decides on it)."""

    package: str
    owner: str
    visibility: Visibility
    read_groups: list[str]
    write_groups: list[str]
    version: VersionState | None = Field(description="The version asked for, or null if it does not exist.")

    @property
    def access(self) -> PackageAccess:
        """The package's access list, as the access function takes it."""
        return PackageAccess(
            owner=self.owner,
            visibility=self.visibility,
            read_groups=frozenset(self.read_groups),
            write_groups=frozenset(self.write_groups),
        )


class UserFacts(_Message):
    """What decides a user's access: the account's current groups and roles, and whether it is disabled."""

    username: str
    groups: list[str]
    roles: list[str]
    disabled: bool

    @property
    def subject(self) -> Subject:
        """The user as the access function sees it."""
        return Subject(username=self.username.lower(), groups=frozenset(self.groups), roles=frozenset(self.roles))


async def send(session: AsyncSession, message: ValidationJob | Verdict) -> bool:
    """Enqueue a message on its queue, under its key, in the caller's transaction (`common.queue.enqueue`).

    Returns False, doing nothing, when a job with that key is already queued or running.
    """
    return await enqueue(session, message.queue, message.key, message.payload())


def parse_validation_job(payload: Mapping[str, Any]) -> ValidationJob:
    """A validation job's payload as the model; `InvalidMessage` if it breaks the contract."""
    return _parse(ValidationJob, payload)


def parse_verdict(payload: Mapping[str, Any]) -> Verdict:
    """A verdict job's payload as the model; `InvalidMessage` if it breaks the contract."""
    return _parse(Verdict, payload)


def parse_access_facts(body: bytes | str) -> AccessFacts:
    """The body of an access-facts answer; `InvalidMessage` if it is not JSON or breaks the contract."""
    return _parse_json(AccessFacts, body)


def parse_user_facts(body: bytes | str) -> UserFacts:
    """The body of a user answer; `InvalidMessage` if it is not JSON or breaks the contract."""
    return _parse_json(UserFacts, body)


_MessageT = TypeVar("_MessageT", bound=_Message)


def _parse_json(model: type[_MessageT], body: bytes | str) -> _MessageT:
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        raise InvalidMessage(_problems(error)) from None  # not chained, as in `_parse`


def _parse(model: type[_MessageT], payload: Mapping[str, Any]) -> _MessageT:
    try:
        return model.model_validate(payload)
    except ValidationError as error:
        # Not chained: the ValidationError holds the input, which a traceback would print.
        raise InvalidMessage(_problems(error)) from None


def _problems(error: ValidationError) -> list[str]:
    # The error's type, not its message: some messages quote part of the input.
    return [f"{'.'.join(map(str, e['loc'])) or '(message)'}: {e['type']}" for e in error.errors(include_input=False)]
