"""One transfer of `bench.client_bench`, in a process of its own so that its memory is measured alone.

    python -m bench.client_worker depot-push NAME VERSION FILE
    python -m bench.client_worker depot-pull NAME@VERSION FILE
    python -m bench.client_worker s3-upload KEY FILE
    python -m bench.client_worker s3-download KEY FILE

`depot-*` use the SDK (`depot_client.Depot`) with `DEPOT_URL`/`DEPOT_TOKEN`, as a user's `depot push` and
`depot pull` would; `s3-*` use boto3's TransferManager (s3transfer) straight to the bucket, with the
same part size and concurrency (`BENCH_*` variables). Only the library of the side measured is imported.
One JSON line on stdout: seconds of the transfer, and for `depot-*` the seconds spent in calls to Depot's
own API (token exchange, upload init and completion, version lookups), not in the bytes sent to S3.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _int(name: str) -> int:
    return int(os.environ[name])


# Each side's library is imported only in its own process: the RSS measured is that side's alone.


def _depot(kind: str, args: list[str]) -> dict[str, Any]:
    from depot_client import Depot  # noqa: PLC0415
    from depot_client.transfer import TransferOptions  # noqa: PLC0415

    options = TransferOptions(
        threshold=_int("BENCH_THRESHOLD"), part_size=_int("BENCH_PART_SIZE"), concurrency=_int("BENCH_CONCURRENCY")
    )
    depot = Depot(options=options)
    session = depot.session
    calls = {"count": 0, "seconds": 0.0}
    depth = threading.local()
    inner: Callable[..., Any] = session.request

    def timed(*call_args: Any, **call_kwargs: Any) -> Any:
        # A token renewal is a call inside a call: only the outermost is counted.
        if getattr(depth, "value", 0):
            return inner(*call_args, **call_kwargs)
        depth.value = 1
        started = time.perf_counter()
        try:
            return inner(*call_args, **call_kwargs)
        finally:
            depth.value = 0
            calls["count"] += 1
            calls["seconds"] += time.perf_counter() - started

    session.request = timed  # type: ignore[method-assign]
    started = time.perf_counter()
    if kind == "depot-push":
        name, version, path = args
        result = depot.push(name, version, Path(path))
        mode = result.mode
    else:
        reference, path = args
        depot.pull(reference, Path(path))
        mode = "ranges"
    seconds = time.perf_counter() - started
    depot.close()
    return {"seconds": seconds, "mode": mode, "depot_calls": calls["count"], "depot_call_seconds": calls["seconds"]}


def _s3(kind: str, args: list[str]) -> dict[str, Any]:
    import boto3  # type: ignore[import-untyped]  # noqa: PLC0415
    from boto3.s3.transfer import TransferConfig  # type: ignore[import-untyped]  # noqa: PLC0415
    from botocore.config import Config  # noqa: PLC0415

    client = boto3.client(
        "s3",
        endpoint_url=os.environ["BENCH_S3_ENDPOINT"],
        aws_access_key_id=os.environ["BENCH_S3_ACCESS_KEY"],
        aws_secret_access_key=os.environ["BENCH_S3_SECRET_KEY"],
        region_name="us-east-1",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )
    config = TransferConfig(
        multipart_threshold=_int("BENCH_THRESHOLD"),
        multipart_chunksize=_int("BENCH_PART_SIZE"),
        max_concurrency=_int("BENCH_CONCURRENCY"),
        use_threads=True,
    )
    key, path = args
    bucket = os.environ["BENCH_S3_BUCKET"]
    started = time.perf_counter()
    if kind == "s3-upload":
        client.upload_file(path, bucket, key, Config=config)
    else:
        client.download_file(bucket, key, path, Config=config)
    return {"seconds": time.perf_counter() - started}


def main(argv: list[str]) -> None:
    kind, *args = argv
    if kind.startswith("depot-"):
        figures = _depot(kind, args)
    elif kind.startswith("s3-"):
        figures = _s3(kind, args)
    else:
        raise SystemExit(f"unknown transfer {kind!r}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main(sys.argv[1:])
