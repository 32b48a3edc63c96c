"""argon2id password hashing, off the event loop so that a burst of logins does not stall other requests."""

from __future__ import annotations

import asyncio
import secrets
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from auth_service.settings import AuthSettings


class Passwords:
    """Hash and verify passwords in a small thread pool of their own (argon2 releases the GIL)."""

    def __init__(self, settings: AuthSettings) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
            type=Type.ID,
        )
        self._pool = ThreadPoolExecutor(settings.password_hash_threads, thread_name_prefix="argon2")
        # Verifying against this makes an unknown username cost what a wrong password costs.
        self._decoy = self._hasher.hash(secrets.token_urlsafe(16))

    async def hash(self, password: str) -> str:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Whether `password` matches; `None` (no such user) is checked against a decoy at the same cost."""
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, self._verify, password_hash or self._decoy, password, password_hash is not None
        )

    def _verify(self, password_hash: str, password: str, real: bool) -> bool:
        try:
            matched = self._hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        return matched and real

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
