"""All the checks of one artifact, in the order of a report (API.md, section 4: checks by `id`).

The artifact is read as little and as sequentially as possible: its first 512 bytes to tell what
it is, then one inspection (a tar or a pickle front to back, a zip or a safetensors header by
ranged reads), and the SHA-256 last, so that the service's file can reuse the hashing of a
sequential pass it already made. An artifact over `max_artifact_bytes` is not read at all.

A `StorageError` from the file propagates out of `run_checks`: the bytes could not be read, which
says nothing of the content (the job is retried), so it must never become a check's verdict.
"""

from __future__ import annotations

import hmac
import re
from typing import BinaryIO, Final

from validator_service.content import CheckResult, Rules
from validator_service.content.archives import ArchiveFindings, CompressionName, inspect_tar, inspect_zip
from validator_service.content.manifest import declared_license, license_check, manifest_check
from validator_service.content.pickles import pickle_check, scan_pickle
from validator_service.content.safetensors import check_safetensors
from validator_service.content.sniff import HEAD_SIZE, Kind, sniff
from validator_service.content.source import sha256_of

CHECK_IDS: Final = ("size", "sha256", "archive", "pickle", "safetensors", "manifest", "license")

_TAR_COMPRESSIONS: Final[dict[Kind, CompressionName]] = {"tar": "", "gzip": "gz", "bzip2": "bz2", "xz": "xz"}
_SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")
_NOT_INSPECTED: Final = "not inspected: the archive check stopped before the end"


def run_checks(
    f: BinaryIO,
    *,
    size: int,
    filename: str | None,
    package: str,
    version: str,
    declared_size: int,
    declared_sha256: str,
    rules: Rules,
) -> list[CheckResult]:
    """Run every check of `CHECK_IDS` on the artifact `f` (of `size` stored bytes), in that order.

    `filename` is the artifact's name (a hint of its kind when its bytes say nothing), `package`
    and `version` what a manifest must name, `declared_size` and `declared_sha256` (lowercase hex)
    what the uploader declared.
    """
    results: dict[str, CheckResult] = {}
    if size > rules.max_artifact_bytes:
        results["size"] = CheckResult(
            "size", "fail", f"{size} bytes, over max_artifact_bytes ({rules.max_artifact_bytes})"
        )
        # Not a byte is read: inspecting (or even hashing) what the rules refuse is wasted work.
        for check_id in CHECK_IDS[1:]:
            results[check_id] = CheckResult(check_id, "skip", "not inspected: over max_artifact_bytes")
        return [results[check_id] for check_id in CHECK_IDS]

    if size != declared_size:
        results["size"] = CheckResult("size", "fail", f"{size} bytes stored, {declared_size} declared")
    else:
        results["size"] = CheckResult("size", "pass", f"{size} bytes")

    f.seek(0)
    head = f.read(HEAD_SIZE)
    kind = sniff(head, filename)
    findings = _content_checks(f, kind, size, rules, results)
    results.update(_manifest_checks(findings, package, version, rules))
    results["sha256"] = _sha256_check(f, declared_sha256)
    return [results[check_id] for check_id in CHECK_IDS]


def _content_checks(
    f: BinaryIO, kind: Kind, size: int, rules: Rules, results: dict[str, CheckResult]
) -> ArchiveFindings | None:
    """The archive, pickle and safetensors checks, into `results`; an archive's findings, if any."""
    findings: ArchiveFindings | None = None
    if kind == "zip":
        findings = inspect_zip(f, size, rules)
    elif kind in _TAR_COMPRESSIONS:
        findings = inspect_tar(f, size, rules, _TAR_COMPRESSIONS[kind])
        if findings.check.status == "skip":  # a compressed file, but not a tar: not an archive
            findings = None
            results["archive"] = CheckResult("archive", "skip", "compressed file, not a tar archive")
    if findings is not None:
        results["archive"] = findings.check
        if findings.pickles or findings.complete:
            results["pickle"] = pickle_check(findings.pickles, rules.pickle_policy)
        else:
            results["pickle"] = CheckResult("pickle", "skip", _NOT_INSPECTED)
    else:
        results.setdefault("archive", CheckResult("archive", "skip", "not an archive"))
        if kind == "pickle":
            f.seek(0)
            results["pickle"] = pickle_check([("", scan_pickle(f))], rules.pickle_policy)
        else:
            results["pickle"] = CheckResult("pickle", "skip", "not a pickle")
    if kind == "safetensors":
        results["safetensors"] = check_safetensors(f, size)
    else:
        results["safetensors"] = CheckResult("safetensors", "skip", "not a safetensors file")
    return findings


def _manifest_checks(
    findings: ArchiveFindings | None, package: str, version: str, rules: Rules
) -> dict[str, CheckResult]:
    """The manifest and license checks, from what the archive inspection found (if it was one)."""
    if findings is None:
        return {
            "manifest": manifest_check(None, None, package, version, is_archive=False),
            "license": license_check(rules, None, None),
        }
    manifest, license_text = findings.manifest, findings.license_text
    results: dict[str, CheckResult] = {}
    # An inspection that stopped early may not have reached depot.json or LICENSE: their absence
    # then proves nothing (and the archive check has failed anyway).
    if not findings.complete and manifest is None and findings.manifest_error is None:
        results["manifest"] = CheckResult("manifest", "skip", _NOT_INSPECTED)
    else:
        results["manifest"] = manifest_check(manifest, findings.manifest_error, package, version, is_archive=True)
    if rules.allowed_licenses and not findings.complete and license_text is None and declared_license(manifest) is None:
        results["license"] = CheckResult("license", "skip", _NOT_INSPECTED)
    else:
        results["license"] = license_check(rules, manifest, license_text)
    return results


def _sha256_check(f: BinaryIO, declared: str) -> CheckResult:
    """The artifact's SHA-256 against the declared one, compared in constant time."""
    actual = sha256_of(f)
    expected = declared.strip().lower()
    if _SHA256_HEX.fullmatch(expected) is None:
        return CheckResult("sha256", "fail", f"{actual}; the declared sha256 is not 64 hex digits")
    if not hmac.compare_digest(actual.encode("ascii"), expected.encode("ascii")):
        return CheckResult("sha256", "fail", f"{actual}, {expected} declared")
    return CheckResult("sha256", "pass", actual)
