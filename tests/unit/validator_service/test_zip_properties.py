"""Depot's zip reader against `zipfile`, on every archive hypothesis builds.

Depot reads zips itself (`zips.py`, bounded where `zipfile` is not). On valid archives it must see
exactly what `zipfile` sees (names, sizes, CRCs, and the data, CRC-checked), and it must refuse
every member that an extractor joining names to its target folder would write outside it.
"""

from __future__ import annotations

import io
import posixpath
import zipfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from validator_service.content import Rules
from validator_service.content.archives import inspect_artifact
from validator_service.content.streams import DecoderMemory, FileAccess, read_up_to
from validator_service.content.zips import ZipMember, find_directory, zip_entries

# Fuzzing: hundreds of generated archives per property, the slow tier.
pytestmark = pytest.mark.slow

METHODS = [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]
PROPERTIES = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

safe_segment = st.text(st.characters(codec="utf-8", exclude_characters="/\\\x00"), min_size=1, max_size=12).filter(
    lambda part: part not in {".", ".."} and not part.endswith(":")
)
any_segment = st.one_of(safe_segment, st.sampled_from(["..", ".", "", "C:", "c:..", " ", "...", "~"]))


@st.composite
def members(draw: st.DrawFn, segment: st.SearchStrategy[str]) -> list[tuple[str, bytes, int]]:
    count = draw(st.integers(min_value=0, max_value=6))
    found: list[tuple[str, bytes, int]] = []
    names: set[str] = set()
    for _ in range(count):
        separator = draw(st.sampled_from(["/", "\\"]))
        name = separator.join(draw(st.lists(segment, min_size=1, max_size=4)))
        if draw(st.booleans()):
            name = draw(st.sampled_from(["/", "\\", "C:/", "C:\\"])) + name
        if not name or name in names or "\x00" in name:
            continue
        names.add(name)
        found.append((name, draw(st.binary(max_size=3000)), draw(st.sampled_from(METHODS))))
    return found


def build(entries: list[tuple[str, bytes, int]], *, comment: bytes = b"", zip64: bool = False) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.comment = comment
        for name, data, method in entries:
            info = zipfile.ZipInfo(name)
            info.compress_type = method
            with archive.open(info, "w", force_zip64=zip64) as member:
                member.write(data)
    return buffer.getvalue()


# A comment holding an end record's signature throws zipfile off (it reads the first one it finds
# from the end); Depot takes the one whose record ends the file. Such comments are left out here.
comments = st.binary(max_size=50).filter(lambda comment: b"PK\x05\x06" not in comment)


@PROPERTIES
@given(members(safe_segment), comments, st.booleans())
def test_the_reader_agrees_with_zipfile(entries: list[tuple[str, bytes, int]], comment: bytes, zip64: bool) -> None:
    data = build(entries, comment=comment, zip64=zip64)
    access = FileAccess(io.BytesIO(data), len(data))
    ours = list(zip_entries(access, find_directory(access)))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        theirs = archive.infolist()
        assert [entry.name for entry in ours] == [info.orig_filename for info in theirs]
        assert [entry.size for entry in ours] == [info.file_size for info in theirs]
        assert [entry.compressed for entry in ours] == [info.compress_size for info in theirs]
        assert [entry.crc for entry in ours] == [info.CRC for info in theirs]
        for entry, info in zip(ours, theirs, strict=True):
            member = ZipMember(access, entry, find_directory(access).start, DecoderMemory())
            try:
                assert read_up_to(member.read, entry.size + 1) == archive.read(info)
                assert member.read(1) == b""  # the end, after the CRC check
            finally:
                member.close()


def _outside(name: str) -> bool:
    """Whether an extractor that joins the name to its folder would write outside the folder."""
    path = name.replace("\\", "/")
    if path.startswith("/") or (len(path) >= 2 and path[1] == ":"):
        return True
    return posixpath.normpath(posixpath.join("/target", path)).split("/")[1:2] != ["target"]


@PROPERTIES
@given(members(any_segment))
def test_every_member_that_would_land_outside_the_root_is_refused(entries: list[tuple[str, bytes, int]]) -> None:
    data = build(entries)
    findings = inspect_artifact(FileAccess(io.BytesIO(data), len(data)), "a.zip", Rules())
    escaping = [name for name, _, _ in entries if _outside(name)]
    if escaping:
        assert findings.archive.status == "fail", (escaping, findings.archive.detail)
    if findings.archive.status != "fail":
        assert not escaping


@PROPERTIES
@given(st.binary(max_size=4000), st.integers(min_value=0, max_value=3999), st.binary(min_size=1, max_size=8))
def test_a_damaged_zip_never_breaks_the_inspection(seed: bytes, at: int, patch: bytes) -> None:
    data = bytearray(build([("a/b.pkl", seed, zipfile.ZIP_DEFLATED), ("c", seed[::-1], zipfile.ZIP_STORED)]))
    at %= len(data)
    data[at : at + len(patch)] = patch
    findings = inspect_artifact(FileAccess(io.BytesIO(bytes(data)), len(data)), "a.zip", Rules())
    assert findings.archive.status in {"pass", "fail", "skip"}
