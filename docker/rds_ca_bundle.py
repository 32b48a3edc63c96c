"""Fetch Amazon RDS's certificate authorities into an image at build time, and check them first.

    python rds_ca_bundle.py <https URL> <destination> [<sha256>]

The services verify the database's certificate against this bundle (`DEPOT_DATABASE_SSL_ROOT_CERT`,
set by the AWS stack). It is fetched over HTTPS, so the build machine's own trust store
authenticates AWS's server; the file must then hold only CA certificates named "Amazon RDS ...".
With a sha256 (the Dockerfile's `RDS_CA_BUNDLE_SHA256` build argument), any other content fails
the build: pin it for reproducible images, and update it when AWS adds authorities to the bundle.
Standard library only: it runs before the image has anything else.
"""

from __future__ import annotations

import hashlib
import ssl
import sys
import urllib.request
from pathlib import Path

RDS_NAME_PREFIX = "Amazon RDS"


def check_bundle(data: bytes, sha256: str | None = None) -> list[str]:
    """The common names of the bundle's authorities; `ValueError` if it is not an RDS bundle (or not the pinned one)."""
    if sha256 and hashlib.sha256(data).hexdigest() != sha256.strip().lower():
        raise ValueError(f"sha256 {hashlib.sha256(data).hexdigest()} is not the pinned {sha256}")
    try:
        context = ssl.create_default_context(cadata=data.decode("ascii"))
    except (UnicodeDecodeError, ssl.SSLError, ValueError) as error:
        raise ValueError(f"not a PEM bundle of certificates ({error})") from None
    names = []
    for authority in context.get_ca_certs():
        subject = dict(pair for rdn in authority["subject"] for pair in rdn)
        names.append(str(subject.get("commonName", "")))
    if not names:
        raise ValueError("no certificate authority in the bundle")
    strangers = [name for name in names if not name.startswith(RDS_NAME_PREFIX)]
    if strangers:
        raise ValueError(f"authorities that are not Amazon RDS's in the bundle: {strangers}")
    return names


def fetch(url: str, timeout: float = 60.0) -> bytes:
    """The body at an https URL, the server checked against the system's trust store."""
    if not url.startswith("https://"):
        raise ValueError(f"the bundle must come over https, not {url}")
    with urllib.request.urlopen(url, timeout=timeout, context=ssl.create_default_context()) as response:  # noqa: S310
        body: bytes = response.read()
    return body


def main(argv: list[str]) -> int:
    if len(argv) not in {2, 3}:
        sys.stderr.write(__doc__ or "")
        return 2
    url, destination, sha256 = argv[0], Path(argv[1]), (argv[2] if len(argv) == 3 else None)
    try:
        data = fetch(url)
        names = check_bundle(data, sha256 or None)
    except (OSError, ValueError) as error:
        sys.stderr.write(f"RDS certificate bundle from {url}: {error}\n")
        return 1
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_bytes(data)
    destination.chmod(0o644)
    print(f"{destination}: {len(names)} authorities, sha256 {hashlib.sha256(data).hexdigest()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
