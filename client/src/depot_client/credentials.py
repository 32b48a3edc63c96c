"""Where the client keeps who it is: the environment first, then a file only its user can read.

`DEPOT_URL` and `DEPOT_TOKEN` (an API token, `dpt_...`, or an access token) win over the file and
are never written anywhere. The file (`credentials.json` under the user's config directory, mode
0600 in a 0700 folder) holds the registry's URL, an API token or a refresh token, and the current
access token with its expiry, so that every command does not exchange the token again. Writes are
atomic and made under a lock, so two commands running at once never spend the same refresh token
twice (which would make the server revoke the whole login).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

APP_NAME = "depot"
URL_ENV = "DEPOT_URL"
TOKEN_ENV = "DEPOT_TOKEN"  # noqa: S105 (the variable's name, not a secret)


@dataclass
class Credentials:
    """What identifies the client to one registry. Never printed: `repr` hides the secrets."""

    url: str
    username: str | None = None
    api_token: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    access_token: str | None = field(default=None, repr=False)
    access_expires_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Credentials:
        url = data.get("url")
        if not isinstance(url, str):
            raise TypeError("no url")
        known = {name: data.get(name) for name in cls.__dataclass_fields__ if name != "url"}
        return cls(url, **known)


def config_dir() -> Path:
    """The user's config directory for Depot (e.g. `~/.config/depot`)."""
    return platformdirs.user_config_path(APP_NAME)


def state_dir() -> Path:
    """Where interrupted transfers keep their state (e.g. `~/.local/state/depot`)."""
    return platformdirs.user_state_path(APP_NAME)


def normalize_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        url = "https://" + url
    return url


class CredentialStore:
    """The credentials file: read, written atomically with mode 0600, locked while a token is renewed."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or config_dir()
        self.path = self.directory / "credentials.json"

    def load(self) -> Credentials | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return Credentials.from_json(data)
        except (OSError, ValueError, TypeError):
            return None

    def save(self, credentials: Credentials) -> None:
        self._ensure_directory()
        descriptor, temporary = tempfile.mkstemp(prefix=".credentials-", dir=self.directory)
        try:
            os.fchmod(descriptor, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                json.dump(credentials.to_json(), file, indent=2)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def delete(self) -> bool:
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the store's lock (between processes) for the block."""
        self._ensure_directory()
        with open(self.directory / "credentials.lock", "a+b") as handle:
            try:
                import fcntl  # noqa: PLC0415 (POSIX only: elsewhere the lock is per process)
            except ImportError:
                yield
                return
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _ensure_directory(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)


def from_environment(stored: Credentials | None) -> Credentials | None:
    """Credentials given by `DEPOT_URL`/`DEPOT_TOKEN`, or None when `DEPOT_TOKEN` is not set.

    `DEPOT_URL` alone points the stored login elsewhere only if no file names a URL.
    """
    token = os.environ.get(TOKEN_ENV, "").strip()
    url = os.environ.get(URL_ENV, "").strip()
    if not token:
        return None
    if not url:
        if stored is None:
            return None
        url = stored.url
    if token.startswith("dpt_"):
        return Credentials(url=normalize_url(url), api_token=token)
    return Credentials(url=normalize_url(url), access_token=token)
