"""All the checks of one artifact, in the order of a report (API.md, section 4: checks by `id`).

The artifact is inspected once, all the way down (`archives.inspect_artifact`: every stream in it
scanned as a pickle from its first byte, archives and compressed streams opened inside each
other), as sequentially as its formats allow, and the SHA-256 comes last, so that the service's
file can reuse the hashing of the sequential reads it already made. An artifact over
`max_artifact_bytes` is not read at all.

A `StorageError` from the file propagates out of `run_checks`: the bytes could not be read, which
says nothing of the content (the job is retried), so it must never become a check's verdict.
"""

from __future__ import annotations

import hmac
import re
from typing import BinaryIO, Final

from validator_service.content import CheckResult, CheckStatus, Rules
from validator_service.content.archives import Findings, inspect_artifact
from validator_service.content.manifest import declared_license, license_check, manifest_check
from validator_service.content.pickles import pickle_check
from validator_service.content.source import sha256_of
from validator_service.content.streams import FileAccess

CHECK_IDS: Final = ("size", "sha256", "archive", "pickle", "safetensors", "manifest", "license")

_SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")
_NOT_INSPECTED: Final = "not inspected: the archive check stopped before the end"
_MAX_SHOWN: Final = 5


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

    `filename` is the artifact's name (a hint for the few formats without a magic), `package`
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

    access = FileAccess(f, size)
    findings = inspect_artifact(access, filename, rules)
    access.raise_stored()  # a parser that swallowed a storage failure must not turn it into a verdict
    results["archive"] = findings.archive
    results["pickle"] = _pickle_result(findings, rules)
    results["safetensors"] = _safetensors_result(findings)
    results.update(_manifest_checks(findings, package, version, rules))
    results["sha256"] = _sha256_check(f, declared_sha256)
    return [results[check_id] for check_id in CHECK_IDS]


def _pickle_result(findings: Findings, rules: Rules) -> CheckResult:
    if not findings.pickles and not findings.complete:
        return CheckResult("pickle", "skip", _NOT_INSPECTED)
    return pickle_check(findings.pickles, rules.pickle_policy, "no pickle found" if findings.opened else "not a pickle")


def _safetensors_result(findings: Findings) -> CheckResult:
    """The safetensors check: the artifact's own header, or every safetensors file found in it."""
    found = findings.safetensors
    if not found:
        detail = "no safetensors file found" if findings.opened else "not a safetensors file"
        return CheckResult("safetensors", "skip", detail)
    if len(found) == 1 and found[0][0] == "":
        return found[0][1]
    statuses = {result.status for _, result in found}
    status: CheckStatus = "fail" if "fail" in statuses else "warn" if "warn" in statuses else "pass"
    shown = [f"{path!r}: {result.detail}" for path, result in found if result.status == status][:_MAX_SHOWN]
    count = sum(1 for _, result in found if result.status == status)
    more = f"; and {count - len(shown)} more" if count > len(shown) else ""
    noun = "file" if len(found) == 1 else "files"
    return CheckResult("safetensors", status, f"{len(found)} safetensors {noun}; " + "; ".join(shown) + more)


def _manifest_checks(findings: Findings, package: str, version: str, rules: Rules) -> dict[str, CheckResult]:
    """The manifest and license checks, from what the root archive held (if the artifact is one)."""
    if not findings.root_is_archive:
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
