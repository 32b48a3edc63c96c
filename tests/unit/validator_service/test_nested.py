"""Validation that cannot be walked around: content nested in content, and pickles found by their bytes.

Each case runs every check on an artifact built here (`run_checks`, as the workers do) and names
the check that must fail, or that nothing fails. The same cases go through the real upload path
in `tests/integration/validator/test_nested_uploads.py`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import os
import random
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from tests.unit.validator_service.corpus import (
    BENIGN_PICKLE,
    HOSTILE_PICKLE,
    PROTOCOL_0_HOSTILE,
    manifest,
    nest,
    npy,
    object_npy,
    safetensors_file,
    tar_of,
    torch_checkpoint,
    zip_of,
)
from tests.unit.validator_service.files import CountingFile
from validator_service.content import CheckResult, PicklePolicy, Rules
from validator_service.content.archives import MAX_DEPTH
from validator_service.content.checks import run_checks

MiB = 1024 * 1024
TORCH_FILES = Path(__file__).parent / "torch_files"


def run(data: bytes | io.BytesIO, filename: str | None = None, rules: Rules | None = None) -> dict[str, CheckResult]:
    f = data if isinstance(data, io.BytesIO) else io.BytesIO(data)
    raw = f.getvalue()
    results = run_checks(
        f, size=len(raw), filename=filename, package="my-pkg", version="1.2.0", declared_size=len(raw),
        declared_sha256=hashlib.sha256(raw).hexdigest(), rules=rules or Rules(),
    )  # fmt: skip
    return {result.id: result for result in results}


def failing(results: dict[str, CheckResult]) -> set[str]:
    return {check_id for check_id, result in results.items() if result.status == "fail"}


# --- the bypasses reported ------------------------------------------------------------------------


def test_a_hostile_pytorch_checkpoint_inside_a_zip_is_rejected() -> None:
    bundle = zip_of(("depot.json", manifest()), ("model.pt", torch_checkpoint(HOSTILE_PICKLE)))
    results = run(bundle, "bundle.zip")
    assert failing(results) == {"pickle"}
    assert "model.pt!/archive/data.pkl has unsafe imports" in results["pickle"].detail
    assert results["archive"].status == "pass"
    assert "'model.pt'" in results["archive"].detail  # it was opened


@pytest.mark.parametrize("filename", [None, "", "notes.txt", "data.bin", "model.safetensors"])
def test_a_protocol_0_pickle_is_found_whatever_its_name(filename: str | None) -> None:
    results = run(PROTOCOL_0_HOSTILE, filename)
    assert failing(results) == {"pickle"}
    assert "os.system" in results["pickle"].detail or "posix.system" in results["pickle"].detail


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("filename", ["m.bin", "pytorch_model.bin", "weights.pkl", None])
def test_random_bytes_are_not_a_pickle_whatever_their_name(seed: int, filename: str | None) -> None:
    data = random.Random(seed).randbytes(random.Random(seed).choice([1, 100, 4096, 70_000]))
    results = run(data, filename)
    assert failing(results) == set()
    assert results["pickle"] == CheckResult("pickle", "skip", "not a pickle")


def test_a_zip_member_of_raw_data_is_not_a_pickle() -> None:
    results = run(zip_of(("w.bin", b"1" * 1000), ("depot.json", manifest())), "weights.zip")
    assert failing(results) == set()
    assert results["pickle"] == CheckResult("pickle", "skip", "no pickle found")


@pytest.mark.parametrize(
    "text",
    [
        b"click\ncolorama\nnumpy\n",  # read as GLOBAL, it would import `lick.colorama`: no such module
        b"import os\nimport sys\n",
        b"idna\njinja2\n",  # INST without a MARK: the unpickler fails before it imports
        b"a,b,c\n1,2,3\n",
        b'{"vocab": ["a", "b"]}',
        b"cat\ndog\nemu\n",
    ],
)
def test_text_files_are_not_pickles(text: bytes) -> None:
    results = run(text * 10, "requirements.txt")
    assert results["pickle"] == CheckResult("pickle", "skip", "not a pickle")


def test_a_stream_that_imports_then_breaks_is_judged_by_its_import() -> None:
    # pickle.load imports os.system before it reaches the garbage: it is a pickle, and unsafe.
    results = run(b"cos\nsystem\n" + b"\xff" * 50, "data.bin")
    assert failing(results) == {"pickle"}
    assert "os.system" in results["pickle"].detail
    assert "could not be fully scanned" in results["pickle"].detail


def test_a_call_before_garbage_is_judged() -> None:
    results = run(PROTOCOL_0_HOSTILE[:-1] + b"\xff\xfe junk", None)
    assert failing(results) == {"pickle"}


@pytest.mark.parametrize(("policy", "status"), [("reject", "fail"), ("warn", "warn"), ("allow", "pass")])
def test_a_benign_pickle_that_cannot_be_read_to_its_end_follows_the_policy(policy: PicklePolicy, status: str) -> None:
    # It imports collections.OrderedDict (a module that exists) and then is cut short.
    results = run(BENIGN_PICKLE[:-3], "model.pkl", Rules(pickle_policy=policy))
    assert results["pickle"].status == status
    if policy != "allow":
        assert "could not be fully scanned" in results["pickle"].detail


def test_several_pickles_in_a_row_are_all_scanned() -> None:
    results = run(BENIGN_PICKLE + BENIGN_PICKLE + PROTOCOL_0_HOSTILE, None)
    assert failing(results) == {"pickle"}


# --- nesting --------------------------------------------------------------------------------------

NESTINGS = [
    ("zip",),
    ("stored zip",),
    ("tar",),
    ("tar.gz",),
    ("tar.bz2",),
    ("tar.xz",),
    ("tar.zst",),
    ("gz",),
    ("bz2",),
    ("xz",),
    ("zst",),
    ("pt",),
    ("zip", "zip"),
    ("zip", "tar"),
    ("tar", "zip"),
    ("tar.gz", "zip"),
    ("zip", "tar.gz"),
    ("gz", "zip"),
    ("pt", "zip"),
    ("pt", "tar.gz"),
    ("gz", "tar"),
    ("zst", "tar.bz2"),
    ("zip", "zip", "zip"),
    ("tar.gz", "zip", "tar.xz"),
    ("pt", "zip", "tar.gz", "zip"),
]


@pytest.mark.parametrize("kinds", NESTINGS, ids=" in ".join)
def test_a_hostile_pickle_is_found_at_any_nesting(kinds: tuple[str, ...]) -> None:
    name, data = nest(HOSTILE_PICKLE, "weights.bin", *kinds)
    bundle = zip_of(("depot.json", manifest()), (name, data))
    results = run(bundle, "bundle.zip")
    assert failing(results) == {"pickle"}, {k: r.detail for k, r in results.items()}
    assert "unsafe imports" in results["pickle"].detail


@pytest.mark.parametrize("kinds", NESTINGS, ids=" in ".join)
def test_benign_content_at_any_nesting_passes(kinds: tuple[str, ...]) -> None:
    name, data = nest(BENIGN_PICKLE, "weights.bin", *kinds)
    results = run(tar_of(("depot.json", manifest()), (name, data), compression="gz"), "bundle.tgz")
    assert failing(results) == set(), {k: r.detail for k, r in results.items()}
    assert results["pickle"].status == "pass"
    assert results["archive"].status == "pass"


@pytest.mark.parametrize("kinds", [("zip",), ("tar.gz",), ("zip", "gz"), ("pt", "tar")], ids=" in ".join)
def test_the_artifact_itself_may_be_any_container(kinds: tuple[str, ...]) -> None:
    _, data = nest(PROTOCOL_0_HOSTILE, "x", *kinds)
    assert failing(run(data, None)) == {"pickle"}


def test_a_zip_slip_inside_a_nested_archive_fails_and_names_the_path() -> None:
    inner = tar_of(("../../etc/cron.d/evil", b"* * * * * root sh"), compression="gz")
    results = run(zip_of(("depot.json", manifest()), ("data.tgz", inner)), "bundle.zip")
    assert failing(results) == {"archive"}
    assert results["archive"].detail == "1 problem: 'data.tgz!/../../etc/cron.d/evil' escapes the root"


def test_archives_nested_to_the_limit_are_opened_and_deeper_ones_fail() -> None:
    name, data = "evil.pkl", HOSTILE_PICKLE
    for level in range(MAX_DEPTH):
        name, data = f"level{level}.zip", zip_of((name, data))
    results = run(data, name)  # MAX_DEPTH archives, the pickle inside the innermost
    assert failing(results) == {"pickle"}
    too_deep = zip_of((name, data))
    results = run(too_deep, "deeper.zip")
    assert failing(results) == {"archive"}
    innermost = "!/".join(f"level{level}.zip" for level in reversed(range(MAX_DEPTH)))
    assert results["archive"].detail == f"not inspected: '{innermost}' (nested more than {MAX_DEPTH} levels deep)"


@pytest.mark.parametrize(("policy", "status"), [("reject", "fail"), ("warn", "warn"), ("allow", "warn")])
@pytest.mark.parametrize(
    ("name", "data", "what"),
    [
        ("weights.7z", b"7z\xbc\xaf\x27\x1c\x00\x04" + os.urandom(100), "a 7z archive"),
        ("weights.rar", b"Rar!\x1a\x07\x01\x00" + os.urandom(100), "a rar archive"),
        ("renamed.bin", b"Rar!\x1a\x07\x00" + os.urandom(100), "a rar archive"),
    ],
)
def test_what_cannot_be_opened_is_never_passed_silently(
    name: str, data: bytes, what: str, policy: PicklePolicy, status: str
) -> None:
    results = run(zip_of(("depot.json", manifest()), (name, data)), "bundle.zip", Rules(pickle_policy=policy))
    assert results["archive"] == CheckResult(
        "archive", status, f"not inspected: '{name}' ({what}, which Depot cannot open)"
    )


def test_a_7z_artifact_fails_under_reject() -> None:
    results = run(b"7z\xbc\xaf\x27\x1c\x00\x04" + bytes(64), "model.7z")
    assert results["archive"] == CheckResult(
        "archive", "fail", "not inspected: 'the artifact' (a 7z archive, which Depot cannot open)"
    )


# --- npy, npz and safetensors inside ---------------------------------------------------------------


def test_an_object_array_holding_a_hostile_pickle_is_rejected() -> None:
    npz = zip_of(("weights.npy", npy(bytes(16))), ("labels.npy", object_npy(HOSTILE_PICKLE)))
    results = run(zip_of(("data.npz", npz)), "bundle.zip")
    assert failing(results) == {"pickle"}
    assert "data.npz!/labels.npy" in results["pickle"].detail
    assert failing(run(object_npy(PROTOCOL_0_HOSTILE), "labels.npy")) == {"pickle"}


def test_a_numeric_array_is_not_a_pickle() -> None:
    results = run(npy(struct_floats(1000), shape=(1000,)), "w.npy")
    assert failing(results) == set()
    assert results["pickle"].status == "skip"


def struct_floats(count: int) -> bytes:
    rng = random.Random(count)
    return b"".join(rng.randbytes(4) for _ in range(count))


def test_safetensors_files_inside_archives_are_checked() -> None:
    good = run(zip_of(("a.safetensors", safetensors_file()), ("b/c.safetensors", safetensors_file())), "x.zip")
    assert good["safetensors"].status == "pass"
    assert good["safetensors"].detail.startswith("2 safetensors files; 'a.safetensors': 1 tensors")
    bad = run(tar_of(("m.safetensors", safetensors_file(broken=True)), compression="gz"), "x.tgz")
    assert failing(bad) == {"safetensors"}
    assert "'m.safetensors'" in bad["safetensors"].detail
    compressed = run(gzip.compress(safetensors_file(broken=True)), "model.safetensors.gz")
    assert failing(compressed) == {"safetensors"}


# --- the root's manifest, and polyglots --------------------------------------------------------------


def test_only_the_root_archive_has_a_manifest() -> None:
    nested = run(zip_of(("inner.zip", zip_of(("depot.json", manifest(name="other"))))), "x.zip")
    assert nested["manifest"].status == "skip"  # a nested depot.json is not the package's manifest
    compressed = run(gzip.compress(zip_of(("depot.json", manifest(name="other")))), "bundle.zip.gz")
    assert compressed["manifest"].status == "fail"  # a compressed root archive is the root


def test_a_pickle_with_a_zip_appended_is_checked_as_both() -> None:
    # pickle.load runs the pickle; zipfile opens the zip at the end: each is checked.
    polyglot = PROTOCOL_0_HOSTILE + zip_of(("../evil", b"x"))
    results = run(polyglot, "model.pkl")
    assert failing(results) == {"pickle", "archive"}
    assert "'../evil' escapes the root" in results["archive"].detail


# --- limits across nesting ------------------------------------------------------------------------


def test_entries_of_nested_archives_count_toward_max_entries() -> None:
    inner = zip_of(*((f"f{index}", b"x") for index in range(30)))
    bundle = zip_of(*((f"inner{index}.zip", inner) for index in range(4)))
    assert run(bundle, "b.zip", Rules(max_entries=200))["archive"].status == "pass"
    results = run(bundle, "b.zip", Rules(max_entries=100))
    assert results["archive"].status == "fail"
    assert "declares 30 entries (94 counted before it), over max_entries (100)" in results["archive"].detail


def test_a_nested_bomb_cannot_multiply_past_the_ratio() -> None:
    # Each level multiplies: a few KiB that would unpack to many GiB if every level got its own ratio.
    level = gzip.compress(bytes(8 * MiB))
    for index in range(3):
        level = zip_of(*((f"layer{index}-{copy}.gz", level) for copy in range(10)))
    counting = CountingFile(level)
    results = run(io.BytesIO(counting.getvalue()), "bomb.zip")
    assert results["archive"].status == "fail"
    assert "over max_compression_ratio (100)" in results["archive"].detail


def test_a_compressed_bomb_is_stopped_while_it_streams() -> None:
    bomb = gzip.compress(bytes(200 * MiB), compresslevel=9)  # 200 KiB that unpack to 200 MiB
    results = run(bomb, "zeros.bin.gz")
    assert results["archive"].status == "fail"
    assert "over max_compression_ratio (100)" in results["archive"].detail


def test_unpacked_sizes_add_up_across_levels() -> None:
    inner = zip_of(("a", os.urandom(3000)))
    results = run(zip_of(("inner.zip", inner), ("b", os.urandom(3000))), "x.zip", Rules(max_unpacked_bytes=8000))
    assert results["archive"].status == "fail"
    assert "over max_unpacked_bytes (8000)" in results["archive"].detail


# --- real files, and memory ------------------------------------------------------------------------


def test_real_pytorch_files_pass_inside_archives() -> None:
    members = [
        (path.name, path.read_bytes()) for path in sorted(TORCH_FILES.iterdir()) if path.name != "full_module.pt"
    ]
    for kinds in [("zip",), ("tar.gz",), ("zip", "tar.xz")]:
        bundle = [nest(data, name, *kinds) for name, data in members]
        results = run(zip_of(("depot.json", manifest()), *bundle), "bundle.zip")
        assert failing(results) == set(), (kinds, {k: r.detail for k, r in results.items()})
        assert results["pickle"].status == "pass"
    full_module = (TORCH_FILES / "full_module.pt").read_bytes()
    assert failing(run(tar_of(("m/full_module.pt", full_module), compression="gz"), "m.tgz")) == {"pickle"}


@pytest.mark.slow  # 80 MiB of nested archives, memory traced all along
def test_memory_stays_bounded_for_big_nested_content() -> None:
    # A 48 MiB checkpoint deflated inside a zip (it is copied to a temporary file to be opened),
    # next to a tar.gz whose 32 MiB pickle is scanned as it streams.
    rng = random.Random(7)
    checkpoint = torch_checkpoint(BENIGN_PICKLE, tensors=6, tensor_bytes=8 * MiB)
    big_pickle = b"\x80\x04" + b"\x8e" + (32 * MiB).to_bytes(8, "little") + rng.randbytes(32 * MiB) + b"."
    bundle = zip_of(("model.pt", checkpoint), ("data.tgz", tar_of(("blob.pkl", big_pickle), compression="gz")))
    tracemalloc.start()
    try:
        results = run(bundle, "bundle.zip")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert failing(results) == set(), {k: r.detail for k, r in results.items()}
    assert "'model.pt'" in results["archive"].detail
    assert "data.tgz!/blob.pkl" in results["pickle"].detail
    assert peak < 16 * MiB, peak  # the artifact itself is 80+ MiB, held by the test's BytesIO


def test_every_pairing_of_two_containers_is_opened() -> None:
    kinds = ["zip", "stored zip", "tar", "tar.gz", "gz", "zst", "pt"]
    for outer, inner in itertools.product(kinds, repeat=2):
        name, data = nest(HOSTILE_PICKLE, "w.bin", inner, outer)
        assert failing(run(data, name)) == {"pickle"}, (outer, inner)


def test_a_deflated_member_is_read_through_a_zip_file_too() -> None:
    # zipfile agrees on what the bundle holds (the inner archive is a real zip).
    bundle = zip_of(("model.pt", torch_checkpoint(BENIGN_PICKLE)))
    with zipfile.ZipFile(io.BytesIO(bundle)) as archive:
        assert archive.namelist() == ["model.pt"]
    assert failing(run(bundle, "b.zip")) == set()
