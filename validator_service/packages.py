"""What the validator asks package_service: a package's access list, and whether a version exists.

The answer is `common.contracts.AccessFacts`, read with the model package_service answers with.
One that breaks that contract is logged (its fields, never its values) and answered `503`, as
when package_service does not answer at all: a dependency failed, not this service (a `500`).

Calls are made as the `service` account (`upstream.ServiceAccount`). Answers are cached for
`access_cache_seconds` at most (a few seconds), so that a change of visibility or groups in
package_service shows here within that time.
"""

from __future__ import annotations

from urllib.parse import quote

import httpx
import structlog

from common.contracts import AccessFacts, InvalidMessage, parse_access_facts
from common.errors import BadRequest, ServiceUnavailable
from common.naming import normalize_name, validate_name
from validator_service.settings import ValidatorSettings
from validator_service.upstream import ServiceAccount, ShortCache

log = structlog.get_logger(__name__)


class PackageDirectory:
    """Reads access facts from package_service, with a short-lived cache."""

    def __init__(self, settings: ValidatorSettings, account: ServiceAccount) -> None:
        self._settings = settings
        self._account = account
        self._cache: ShortCache[tuple[str, str | None], AccessFacts | None] = ShortCache(settings.access_cache_seconds)

    async def facts(self, name: str, version: str | None) -> AccessFacts | None:
        """The facts of package `name` (any spelling), or None if there is no such package.

        `version` may be `latest`: package_service resolves it (the highest `available`,
        non-prerelease version) and answers with the version it stands for.
        """
        try:
            validate_name(name)
        except BadRequest:
            return None  # no package can have this name
        return await self._cache.get((normalize_name(name), version), lambda: self._fetch(name, version))

    async def _fetch(self, name: str, version: str | None) -> AccessFacts | None:
        if self._settings.packages_url is None:
            raise ServiceUnavailable("package_service is not configured (DEPOT_PACKAGES_URL).")
        url = f"{self._settings.packages_url.rstrip('/')}/packages/{quote(name, safe='')}/access"
        params = {"version": version} if version is not None else {}
        response = await self._account.get(url, params=params, service="package_service")
        if response.status_code == httpx.codes.NOT_FOUND:
            return None
        if response.status_code != httpx.codes.OK:
            log.warning("package_service_refused", status=response.status_code)
            raise ServiceUnavailable("package_service did not answer the access query.")
        try:
            return parse_access_facts(response.content)
        except InvalidMessage as error:
            log.error("package_service_answer_invalid", problems=error.problems[:10])  # noqa: TRY400 - no trace needed
            raise ServiceUnavailable("package_service's answer to the access query was malformed.") from None
