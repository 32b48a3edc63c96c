"""Password hashing: argon2id, and the same work for an unknown user as for a wrong password."""

from __future__ import annotations

from typing import Any

from argon2 import PasswordHasher

from auth_service.passwords import Passwords
from auth_service.settings import AuthSettings

CHEAP = AuthSettings(argon2_time_cost=1, argon2_memory_kib=1024, argon2_parallelism=1)


class CountingHasher(PasswordHasher):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.verified = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self.verified += 1
        return super().verify(hash, password)


async def test_hashes_are_argon2id_and_verify() -> None:
    passwords = Passwords(CHEAP)
    try:
        digest = await passwords.hash("correct horse")
        assert digest.startswith("$argon2id$")
        assert await passwords.verify(digest, "correct horse")
        assert not await passwords.verify(digest, "wrong horse")
        assert not await passwords.verify("not a hash", "correct horse")
    finally:
        passwords.close()


async def test_unknown_user_costs_one_real_verification_and_never_matches() -> None:
    passwords = Passwords(CHEAP)
    counting = CountingHasher(time_cost=1, memory_cost=1024, parallelism=1)
    passwords._hasher = counting
    try:
        digest = await passwords.hash("whatever you like")
        assert not await passwords.verify(None, "whatever you like")
        assert counting.verified == 1
        assert await passwords.verify(digest, "whatever you like")
        assert counting.verified == 2
    finally:
        passwords.close()
