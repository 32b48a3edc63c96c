"""The bypasses of the content checks, through the real upload path: each artifact is streamed to
package_service, validated from S3 by the validator, and decided `available` or `rejected` on
exactly the checks that must fail.
"""

from __future__ import annotations

import asyncio
import gzip
import random
from dataclasses import dataclass

from tests.integration.validator.conftest import Depot
from tests.unit.validator_service.corpus import (
    BENIGN_PICKLE,
    HOSTILE_PICKLE,
    PROTOCOL_0_HOSTILE,
    manifest,
    nest,
    npy,
    object_npy,
    tar_of,
    torch_checkpoint,
    zip_of,
)


@dataclass(frozen=True)
class Case:
    package: str
    data: bytes
    filename: str | None
    failing: frozenset[str]  # the checks that must fail: none means `available`


def _bundle(package: str, *members: tuple[str, bytes]) -> bytes:
    return zip_of(("depot.json", manifest(name=package, version="1.2.0")), *members)


def _cases() -> list[Case]:
    rng = random.Random(11)
    cases = [
        # A PyTorch zip checkpoint with a hostile data.pkl, inside a zip next to a manifest.
        Case(
            "torch-in-zip", zip_of(("model.pt", torch_checkpoint(HOSTILE_PICKLE))), "bundle.zip", frozenset({"pickle"})
        ),
        # A protocol 0 pickle with no name at all.
        Case("protocol-zero", PROTOCOL_0_HOSTILE, None, frozenset({"pickle"})),
        # Raw bytes under the most common names for raw data.
        Case("raw-bin", rng.randbytes(50_000), "m.bin", frozenset()),
        Case("raw-member", zip_of(("w.bin", b"1" * 1000)), "weights.zip", frozenset()),
        Case("text", b"click\ncolorama\nnumpy\n", "requirements.txt", frozenset()),
        # Compressed single files, at the top and inside.
        Case("gz-top", gzip.compress(HOSTILE_PICKLE), "model.pkl.gz", frozenset({"pickle"})),
        Case("gz-member", zip_of(("model.pkl.gz", gzip.compress(HOSTILE_PICKLE))), "b.zip", frozenset({"pickle"})),
        # Object arrays in an .npz.
        Case("npz", zip_of(("a.npz", zip_of(("x.npy", object_npy(HOSTILE_PICKLE))))), "b.zip", frozenset({"pickle"})),
        Case("npz-numbers", zip_of(("a.npz", zip_of(("x.npy", npy(bytes(16)))))), "b.zip", frozenset()),
        # What cannot be opened.
        Case("rar", zip_of(("w.rar", b"Rar!\x1a\x07\x01\x00" + bytes(64))), "b.zip", frozenset({"archive"})),
        # A benign bundle with a real-looking checkpoint and a tar.gz inside.
        Case(
            "benign",
            _bundle(
                "benign",
                ("model.pt", torch_checkpoint(BENIGN_PICKLE)),
                ("data.tgz", tar_of(("x.pkl", BENIGN_PICKLE), compression="gz")),
            ),
            "bundle.zip",
            frozenset(),
        ),
    ]
    for kinds in [("zip", "zip"), ("tar.gz", "zip"), ("zip", "tar"), ("pt", "tar.bz2"), ("zip", "zip", "zip")]:
        name, data = nest(HOSTILE_PICKLE, "w.bin", *kinds)
        cases.append(
            Case("nested-" + "-".join(kinds).replace(".", ""), zip_of((name, data)), "b.zip", frozenset({"pickle"}))
        )
    return cases


async def test_every_bypass_is_decided_on_the_right_check(depot: Depot) -> None:
    cases = _cases()
    await asyncio.gather(*(depot.upload(case.package, "1.2.0", case.data, case.filename) for case in cases))
    decided = await asyncio.gather(*(depot.decided(case.package, "1.2.0", timeout=120) for case in cases))
    for case, version in zip(cases, decided, strict=True):
        failing = {check["id"] for check in version["validation"]["checks"] if check["status"] == "fail"}
        expected = "rejected" if case.failing else "available"
        assert (version["status"], failing) == (expected, set(case.failing)), (case.package, version["validation"])
        report = (await depot.report(case.package, "1.2.0")).json()
        assert report["checks"] == version["validation"]["checks"]
