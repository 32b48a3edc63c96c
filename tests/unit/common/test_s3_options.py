"""The S3 clients' options, without a server."""

from __future__ import annotations

import pytest

from common.s3 import _client_options
from common.settings import S3Settings


@pytest.mark.parametrize(
    ("endpoint", "verified"),
    [
        (None, True),  # AWS
        ("https://s3.eu-west-1.amazonaws.com", True),
        ("https://minio.internal:9000", True),
        ("HTTPS://minio.internal", True),
        ("http://127.0.0.1:8333", False),  # plain HTTP: nothing to verify
        ("HTTP://seaweedfs:8333", False),
    ],
)
def test_every_tls_endpoint_is_verified(endpoint: str | None, verified: bool) -> None:
    options = _client_options(S3Settings(s3_endpoint_url=endpoint), endpoint)
    assert options.get("verify", True) is verified
