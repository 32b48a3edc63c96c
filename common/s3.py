"""aioboto3 S3 clients kept for the app's lifetime: one for the services' own calls, one for presigning.

Presigned URLs must be signed for the host that clients reach (`DEPOT_S3_PUBLIC_URL`), which can
differ from the one the services use; signing is local, so the presigning client never connects.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aioboto3
from botocore.config import Config
from botocore.exceptions import ClientError

from common.settings import S3Settings, load_settings

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
else:
    S3Client = Any


@dataclass(frozen=True)
class S3:
    """The bucket and the two clients of one process."""

    client: S3Client
    presigner: S3Client
    bucket: str

    async def check_bucket(self) -> None:
        """Readiness: the bucket exists and our credentials open it."""
        await self.client.head_bucket(Bucket=self.bucket)


def _client_options(settings: S3Settings, endpoint_url: str | None) -> dict[str, Any]:
    options: dict[str, Any] = {
        "region_name": settings.s3_region,
        "endpoint_url": endpoint_url,
        "config": Config(
            signature_version="s3v4",
            s3={"addressing_style": "path" if settings.s3_endpoint_url else "auto"},
            # Bounded: an S3 that stops answering fails a call within about 40 s, retries included.
            connect_timeout=3,
            read_timeout=10,
            retries={"max_attempts": 3, "mode": "standard"},
            max_pool_connections=50,
        ),
    }
    if endpoint_url is not None and endpoint_url.lower().startswith("http://"):
        # Plain HTTP (a local S3 server): no certificate to check, so the CA bundle is not loaded into
        # a TLS context for nothing (20-40 ms of CPU a client). Any https endpoint is verified.
        options["verify"] = False
    if settings.s3_access_key_id and settings.s3_secret_access_key:
        options["aws_access_key_id"] = settings.s3_access_key_id.get_secret_value()
        options["aws_secret_access_key"] = settings.s3_secret_access_key.get_secret_value()
    return options


# One session per process: a session parses botocore's service models once, and every client made
# from it after the first skips that (about 0.1 s of CPU; the tests start hundreds of apps).
_SESSION = aioboto3.Session()


@asynccontextmanager
async def open_s3(settings: S3Settings) -> AsyncIterator[S3]:
    """Open both clients for as long as the block runs (the app's lifespan)."""
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(
            _SESSION.client("s3", **_client_options(settings, settings.s3_endpoint_url))
        )
        presigner = await stack.enter_async_context(
            _SESSION.client("s3", **_client_options(settings, settings.s3_public_url or settings.s3_endpoint_url))
        )
        yield S3(client=client, presigner=presigner, bucket=settings.s3_bucket)


MISSING_OBJECT_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
"""What S3 answers for an object that is not there: `NoSuchKey` to a GET, a bare 404 to a HEAD."""


MIN_PART_SIZE = 5 * 1024 * 1024
"""S3's minimum size of every part of a multipart upload but the last."""
MAX_PARTS = 10_000
"""S3's maximum number of parts in one multipart upload."""


def error_code(error: BaseException) -> str | None:
    """The S3 error code of a botocore `ClientError` (`NoSuchKey`, `NoSuchUpload`, ...), else None."""
    if not isinstance(error, ClientError):
        return None
    code: str | None = error.response.get("Error", {}).get("Code")
    return code


async def ensure_bucket(settings: S3Settings) -> bool:
    """Create the configured bucket if it does not exist; whether it was created."""
    async with open_s3(settings) as s3:
        try:
            await s3.client.head_bucket(Bucket=s3.bucket)
        except ClientError as error:
            if error_code(error) not in {"404", "NoSuchBucket", "NotFound"}:
                raise
            await s3.client.create_bucket(Bucket=s3.bucket)
            return True
    return False


def main() -> None:
    """`python -m common.s3 ensure-bucket`: create DEPOT_S3_BUCKET where it does not exist (local stacks)."""
    parser = argparse.ArgumentParser(prog="python -m common.s3")
    parser.add_argument("command", choices=["ensure-bucket"])
    parser.parse_args()
    settings = load_settings(S3Settings)
    created = asyncio.run(ensure_bucket(settings))
    sys.stdout.write(f"bucket {settings.s3_bucket}: {'created' if created else 'exists'}\n")


if __name__ == "__main__":
    main()
