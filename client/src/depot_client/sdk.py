"""`Depot`, the SDK: every operation of the `depot` command as a method.

from depot_client import Depot

depot = Depot()                                   # DEPOT_URL/DEPOT_TOKEN, else the saved login
depot.push("resnet-tiny", "1.0.0", "model.safetensors", wait=True)
depot.pull("resnet-tiny@latest", "models/")
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from depot_client.credentials import Credentials, CredentialStore, from_environment, normalize_url
from depot_client.errors import AuthenticationError, DepotError, NotFoundError, RejectedError
from depot_client.progress import Reporter, Silent
from depot_client.retry import RetryPolicy
from depot_client.session import Session, segment
from depot_client.transfer import PullResult, PushResult, TransferOptions, destination_for, split_reference
from depot_client.transfer import pull as pull_version
from depot_client.transfer import push as push_path

__all__ = ["Depot", "PullResult", "PushResult"]

FINAL_REPORT_STATUSES = frozenset({"passed", "failed"})


class Depot:
    """A client of one Depot registry.

    Credentials come from `credentials` if given, else `DEPOT_URL`/`DEPOT_TOKEN`, else the file
    written by `login` (under `config_dir`, default the user's config directory).
    """

    def __init__(
        self,
        credentials: Credentials | None = None,
        *,
        config_dir: Path | None = None,
        options: TransferOptions | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.store = CredentialStore(config_dir)
        self.options = options or TransferOptions()
        self._retry = retry or RetryPolicy()
        persist = False
        if credentials is None:
            stored = self.store.load()
            credentials = from_environment(stored)
            if credentials is None:
                credentials, persist = stored, stored is not None
        self._session = (
            Session(credentials, store=self.store if persist else None, retry=self._retry) if credentials else None
        )

    def __enter__(self) -> Depot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._session is not None:
            self._session.close()

    @property
    def session(self) -> Session:
        if self._session is None:
            raise AuthenticationError("Not logged in: run `depot login` or set DEPOT_URL and DEPOT_TOKEN.")
        return self._session

    @property
    def url(self) -> str | None:
        return self._session.url if self._session else None

    # Login

    def login(
        self, url: str, *, username: str | None = None, password: str | None = None, token: str | None = None
    ) -> dict[str, Any]:
        """Log in with a password or an API token (`dpt_...`), save the login (mode 0600); the user."""
        if token is not None and not token.startswith("dpt_"):
            raise AuthenticationError("An API token starts with dpt_")
        if token is None and (not username or password is None):
            raise AuthenticationError("A username and a password are needed")
        credentials = Credentials(url=normalize_url(url))
        session = Session(credentials, retry=self._retry)
        try:
            if token is not None:
                credentials.api_token = token
                session.renew()
            else:
                body = {"username": username, "password": password}
                pair = session.request("POST", "/auth/login", json=body, authenticated=False).json()
                credentials.refresh_token = pair["refresh_token"]
                credentials.access_token = pair["access_token"]
                credentials.access_expires_at = time.time() + float(pair.get("expires_in", 900))
            user: dict[str, Any] = session.get_json("/auth/me")
        except BaseException:
            session.close()
            raise
        credentials.username = user.get("username")
        with self.store.lock():
            self.store.save(credentials)
        self.close()
        session.store = self.store
        self._session = session
        return user

    def logout(self) -> bool:
        """Revoke this login's refresh token (best effort) and forget the saved login; whether there was one."""
        stored = self.store.load()
        if stored is None:
            return False
        if stored.refresh_token:
            session = Session(stored, retry=self._retry)
            try:
                body = {"refresh_token": stored.refresh_token}
                with contextlib.suppress(DepotError):
                    session.request("POST", "/auth/logout", json=body, authenticated=False)
            finally:
                session.close()
        return self.store.delete()

    def whoami(self) -> dict[str, Any]:
        result: dict[str, Any] = self.session.get_json("/auth/me")
        return result

    # Packages and versions

    def search(self, query: str | None = None, *, owner: str | None = None, limit: int | None = 50) -> list[Any]:
        return self.session.paginate("/packages", {"q": query, "owner": owner}, limit)

    def info(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.session.get_json(f"/packages/{segment(name)}")
        return result

    def version(self, name: str, version: str = "latest") -> dict[str, Any]:
        result: dict[str, Any] = self.session.get_json(f"/packages/{segment(name)}/versions/{segment(version)}")
        return result

    def versions(
        self, name: str, *, include_yanked: bool = True, limit: int | None = None, fields: Sequence[str] = ()
    ) -> list[Any]:
        """A package's versions, highest first; with `fields`, each has only those (and `version`): a
        lighter list, without the reports and metadata not asked for. A server without `fields` answers all."""
        params = {"include_yanked": str(include_yanked).lower(), "fields": ",".join(fields) or None}
        return self.session.paginate(f"/packages/{segment(name)}/versions", params, limit)

    def report(self, name: str, version: str) -> dict[str, Any]:
        result: dict[str, Any] = self.session.get_json(f"/validate/reports/{segment(name)}/{segment(version)}")
        return result

    def _version_call(self, method: str, name: str, version: str, action: str = "", **kwargs: Any) -> Any:
        path = f"/packages/{segment(name)}/versions/{segment(version)}{action}"
        response = self.session.request(method, path, **kwargs)
        return response.json() if response.content else None

    def yank(self, name: str, version: str, reason: str) -> dict[str, Any]:
        result: dict[str, Any] = self._version_call("POST", name, version, "/yank", json={"reason": reason})
        return result

    def unyank(self, name: str, version: str) -> dict[str, Any]:
        result: dict[str, Any] = self._version_call("POST", name, version, "/unyank")
        return result

    def delete(self, name: str, version: str | None = None) -> None:
        if version is None:
            self.session.request("DELETE", f"/packages/{segment(name)}")
        else:
            self._version_call("DELETE", name, version)

    def edit_version(
        self, name: str, version: str, *, description: str | None = None, metadata: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if description is not None:
            body["description"] = description
        if metadata is not None:
            body["metadata"] = metadata
        result: dict[str, Any] = self._version_call("PATCH", name, version, json=body)
        return result

    def rerun(self, name: str, version: str) -> dict[str, Any]:
        path = f"/validate/reports/{segment(name)}/{segment(version)}/rerun"
        result: dict[str, Any] = self.session.request("POST", path).json()
        return result

    def check(
        self, name: str, action: str, version: str | None = None, subject: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"package": name, "action": action}
        if version is not None:
            body["version"] = version
        if subject is not None:
            body["subject"] = subject
        result: dict[str, Any] = self.session.request("POST", "/validate", json=body).json()
        return result

    # Transfers

    def push(
        self,
        name: str,
        version: str,
        path: str | Path,
        *,
        description: str | None = None,
        metadata: dict[str, Any] | None = None,
        wait: bool = False,
        timeout: float = 600.0,
        progress: Reporter | None = None,
    ) -> PushResult:
        """Publish a file, or a directory as a deterministic tar.gz; with `wait`, until validation decides.

        A push interrupted and run again continues where it stopped; a version that exists with the
        same bytes is returned as it is (`mode == "existing"`). With `wait`, a rejected version
        raises `RejectedError` carrying the report.
        """
        result = push_path(
            self.session,
            name=name,
            version=version,
            path=Path(path),
            options=self.options,
            progress=progress or Silent(),
        )
        if result.mode != "existing" and (description is not None or metadata is not None):
            result.version = self.edit_version(
                name, str(result.version["version"]), description=description, metadata=metadata
            )
        if wait:
            result.version = self.wait(name, str(result.version["version"]), timeout=timeout)
        return result

    def wait(self, name: str, version: str, *, timeout: float = 600.0, interval: float = 0.5) -> dict[str, Any]:
        """The version once validation has decided; `RejectedError` (with the report) if it was rejected."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.version(name, version)
            if found["status"] == "rejected":
                report: dict[str, Any] = {}
                with contextlib.suppress(NotFoundError):
                    report = self.report(name, version)
                failing = [c for c in report.get("checks", []) if c.get("status") == "fail"]
                summary = "; ".join(f"{c.get('id')}: {c.get('detail')}" for c in failing) or "see the report"
                raise RejectedError(f"{name} {version} was rejected by validation: {summary}", report=report)
            if found["status"] != "pending":
                return found
            if time.monotonic() >= deadline:
                raise DepotError(f"{name} {version} is still pending after {timeout:g} s")
            time.sleep(interval)
            interval = min(interval * 1.5, 5.0)

    def pull(self, reference: str, output: str | Path | None = None, *, progress: Reporter | None = None) -> PullResult:
        """Download `NAME[@VERSION|@latest]` to `output` (a file, or an existing directory; default: here).

        The file appears only once its sha256 matches the version's; an interrupted pull continues.
        """
        name, version = split_reference(reference)
        found = self.version(name, version)
        destination = destination_for(found, Path(output) if output is not None else None)
        return pull_version(
            self.session, version=found, destination=destination, options=self.options, progress=progress or Silent()
        )

    # API tokens

    def create_token(self, name: str, expires_in_days: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name}
        if expires_in_days is not None:
            body["expires_in_days"] = expires_in_days
        result: dict[str, Any] = self.session.request("POST", "/auth/api-tokens", json=body).json()
        return result

    def tokens(self) -> list[Any]:
        found = self.session.get_json("/auth/api-tokens")
        return list(found["items"] if isinstance(found, dict) else found)

    def revoke_token(self, token_id: str) -> None:
        self.session.request("DELETE", f"/auth/api-tokens/{segment(token_id)}")

    # Administration

    def groups(self) -> list[Any]:
        found = self.session.get_json("/auth/groups")
        return list(found["items"] if isinstance(found, dict) else found)

    def create_group(self, name: str, description: str | None = None) -> dict[str, Any]:
        body = {"name": name, **({"description": description} if description else {})}
        result: dict[str, Any] = self.session.request("POST", "/auth/groups", json=body).json()
        return result

    def delete_group(self, name: str) -> None:
        self.session.request("DELETE", f"/auth/groups/{segment(name)}")

    def add_member(self, group: str, username: str) -> None:
        self.session.request("PUT", f"/auth/groups/{segment(group)}/members/{segment(username)}")

    def remove_member(self, group: str, username: str) -> None:
        self.session.request("DELETE", f"/auth/groups/{segment(group)}/members/{segment(username)}")

    def users(self, query: str | None = None, limit: int | None = 100) -> list[Any]:
        return self.session.paginate("/auth/users", {"q": query}, limit)

    def user(self, username: str) -> dict[str, Any]:
        result: dict[str, Any] = self.session.get_json(f"/auth/users/{segment(username)}")
        return result

    def create_user(
        self,
        username: str,
        password: str,
        *,
        email: str | None = None,
        roles: list[str] | None = None,
        groups: list[str] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"username": username, "password": password}
        for key, value in (("email", email), ("roles", roles), ("groups", groups)):
            if value is not None:
                body[key] = value
        result: dict[str, Any] = self.session.request("POST", "/auth/users", json=body).json()
        return result

    def update_user(self, username: str, **fields: Any) -> dict[str, Any]:
        body = {key: value for key, value in fields.items() if value is not None}
        result: dict[str, Any] = self.session.request("PATCH", f"/auth/users/{segment(username)}", json=body).json()
        return result

    def delete_user(self, username: str) -> None:
        self.session.request("DELETE", f"/auth/users/{segment(username)}")

    def rules(self) -> dict[str, Any]:
        result: dict[str, Any] = self.session.get_json("/validate/rules")
        return result

    def set_rules(self, rules: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.session.request("PUT", "/validate/rules", json=rules).json()
        return result
