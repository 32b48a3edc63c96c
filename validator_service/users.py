"""What the validator asks auth_service: a user's current groups and roles.

A subject named by username alone is decided for as that user is now: `GET /auth/users/{username}`
as the `service` account (API.md section 2: an admin, a `service` account or the user itself may
read a user). Only the fields the decision needs are read from auth_service's User
(`common.contracts.UserFacts`); an answer without them is logged (its fields, never its values)
and answered `503`, as when auth_service does not answer at all or refuses the service account:
a dependency failed, not this service.

Answers, "no such user" included, are cached for `access_cache_seconds` at most, like access
facts, so that a changed group shows here within that time.
"""

from __future__ import annotations

from urllib.parse import quote

import httpx
import structlog

from common.contracts import InvalidMessage, UserFacts, parse_user_facts
from common.errors import ServiceUnavailable
from common.naming import is_username
from validator_service.settings import ValidatorSettings
from validator_service.upstream import ServiceAccount, ShortCache

log = structlog.get_logger(__name__)


class UserDirectory:
    """Reads users from auth_service, with a short-lived cache."""

    def __init__(self, settings: ValidatorSettings, account: ServiceAccount) -> None:
        self._settings = settings
        self._account = account
        self._cache: ShortCache[str, UserFacts | None] = ShortCache(settings.access_cache_seconds)

    async def user(self, username: str) -> UserFacts | None:
        """The account named `username` (any case), disabled or not; None if there is no such user."""
        username = username.lower()
        if not is_username(username):
            return None  # nor is it sent where it could make another path (`..`, `a/b`)
        return await self._cache.get(username, lambda: self._fetch(username))

    async def _fetch(self, username: str) -> UserFacts | None:
        if self._settings.auth_url is None:
            raise ServiceUnavailable("auth_service is not configured (DEPOT_AUTH_URL).")
        url = f"{self._settings.auth_url.rstrip('/')}/auth/users/{quote(username, safe='')}"
        response = await self._account.get(url, service="auth_service")
        if response.status_code == httpx.codes.NOT_FOUND:
            return None
        if response.status_code != httpx.codes.OK:
            # A 403 here means auth_service does not let the `service` role read users.
            log.warning("auth_service_refused", status=response.status_code)
            raise ServiceUnavailable("auth_service did not answer the user query.")
        try:
            return parse_user_facts(response.content)
        except InvalidMessage as error:
            log.error("auth_service_answer_invalid", problems=error.problems[:10])  # noqa: TRY400 - no trace needed
            raise ServiceUnavailable("auth_service's answer to the user query was malformed.") from None
