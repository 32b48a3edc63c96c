"""Operational commands of auth_service.

    python -m auth_service.cli service-token depot-service

prints an API token of the `service` account (created if missing), for DEPOT_SERVICE_TOKEN of
package_service and validator_service. It reads the same DEPOT_ settings as the service.
With `--file PATH`, the token is kept in that file instead (created with mode 0600; a token already
there that still works is kept), for DEPOT_SERVICE_TOKEN_FILE, as `docker compose` does. With
`--secret-id ID`, it is kept in that AWS Secrets Manager secret the same way (the deployment's
migration task does this; the services get the secret as DEPOT_SERVICE_TOKEN).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import aioboto3
from botocore.exceptions import ClientError

from auth_service import service
from auth_service.keys import load_signing_key
from auth_service.passwords import Passwords
from auth_service.settings import AuthSettings
from common.db import create_engine, create_sessionmaker, transaction
from common.settings import load_settings


async def service_token(settings: AuthSettings, username: str, current: str | None = None) -> str:
    """The token of a service account, as `service.ensure_service_token` gives it."""
    engine = create_engine(settings, "depot-auth-cli")
    passwords = Passwords(settings)
    try:
        auth = service.Auth(settings, passwords, load_signing_key(settings))
        async with transaction(create_sessionmaker(engine)) as db:
            return await service.ensure_service_token(db, auth, username, current)
    finally:
        passwords.close()
        await engine.dispose()


async def _keep_in_secret(settings: AuthSettings, username: str, secret_id: str) -> None:
    async with aioboto3.Session().client("secretsmanager") as secrets:
        try:
            current = (await secrets.get_secret_value(SecretId=secret_id)).get("SecretString")
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                raise
            current = None  # created empty by the stack: no value yet
        token_value = await service_token(settings, username, current or None)
        if token_value != current:
            await secrets.put_secret_value(SecretId=secret_id, SecretString=token_value)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m auth_service.cli", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    token = sub.add_parser("service-token", help="print an API token of a service account")
    token.add_argument("username", nargs="?", default="depot-service")
    kept = token.add_mutually_exclusive_group()
    kept.add_argument("--file", type=Path, help="keep the token in this file (0600) instead of printing it")
    kept.add_argument("--secret-id", help="keep the token in this AWS Secrets Manager secret instead")
    args = parser.parse_args()
    settings = load_settings(AuthSettings)
    if args.secret_id is not None:
        asyncio.run(_keep_in_secret(settings, args.username, args.secret_id))
        sys.stdout.write(f"the token of {args.username} is in secret {args.secret_id}\n")
        return
    if args.file is None:
        sys.stdout.write(asyncio.run(service_token(settings, args.username)) + "\n")
        return
    current = args.file.read_text().strip() if args.file.exists() else None
    token_value = asyncio.run(service_token(settings, args.username, current or None))
    if token_value != current:
        descriptor = os.open(args.file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(token_value + "\n")


if __name__ == "__main__":
    main()
