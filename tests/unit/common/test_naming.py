"""Package names and SemVer versions: validation, normalization, and the precedence of `sort_key`."""

from __future__ import annotations

import functools
import itertools
import random
import re

import pytest

from common.errors import BadRequest
from common.naming import Version, normalize_name, validate_name

# --- names -------------------------------------------------------------------------------------

VALID_NAMES = [
    "a",
    "A",
    "7",
    "ab",
    "a.b",
    "a_b",
    "a-b",
    "My.Package__Name",
    "resnet50-weights",
    "1.0",
    "a" * 100,
    "x" + "._-" * 32 + "yz9",  # 100 characters, separators inside
]

INVALID_NAMES = [
    "",
    ".",
    "..",
    "../etc",
    "a/../b",
    "a/b",
    "/a",
    "%2F",
    "a%2Fb",
    "a\\b",
    "a\x00b",
    "a\x00",
    "a\tb",
    "a\nb",
    "a\n",
    "a\x7fb",
    "a\x1bb",
    "a b",
    " a",
    "a ",
    "a\u00a0b",  # no-break space
    "a\u200bb",  # zero-width space
    "p\u0430ckage",  # Cyrillic small a (U+0430)
    "\uff50ackage",  # fullwidth small p (U+FF50)
    "\uff11",  # fullwidth digit one
    "\u0661",  # Arabic-Indic digit one
    "caf\u00e9",
    "\u212a",  # Kelvin sign, lowercases to 'k'
    "a" * 101,
    "-a",
    "a-",
    ".a",
    "a.",
    "_a",
    "a_",
    "-",
    "a+b",
    "a:b",
    "a@b",
    "a*",
    "a?b",
    "a#b",
]


def test_the_valid_names_are_100_characters_at_most() -> None:
    assert max(len(name) for name in VALID_NAMES) == 100
    assert len(VALID_NAMES[-1]) == 100


@pytest.mark.parametrize("name", VALID_NAMES)
def test_valid_names_are_returned_unchanged(name: str) -> None:
    assert validate_name(name) is name


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_invalid_names_are_refused(name: str) -> None:
    with pytest.raises(BadRequest) as raised:
        validate_name(name)
    assert raised.value.status == 400
    assert "package name" in raised.value.detail


def test_a_name_too_long_says_so() -> None:
    with pytest.raises(BadRequest, match="longer than 100"):
        validate_name("a" * 101)


@pytest.mark.parametrize(
    ("name", "normalized"),
    [
        ("My.Package__Name", "my-package-name"),
        ("a-_-b", "a-b"),
        ("A..B", "a-b"),
        ("a.b_c-d", "a-b-c-d"),
        ("abc", "abc"),
        ("ResNet50", "resnet50"),
        ("x._-._-y", "x-y"),
    ],
)
def test_normalization(name: str, normalized: str) -> None:
    assert normalize_name(name) == normalized
    assert normalize_name(normalized) == normalized


def test_spellings_of_one_name_normalize_alike() -> None:
    spellings = ["my_package", "My.Package", "MY--PACKAGE", "my-_.package", "mY_-PaCkAgE"]
    assert {normalize_name(spelling) for spelling in spellings} == {"my-package"}


def test_different_names_stay_different() -> None:
    assert normalize_name("mypackage") != normalize_name("my-package")
    assert normalize_name("a1") != normalize_name("a-1-")


def test_normalization_folds_no_non_ascii_onto_a_real_name() -> None:
    # `str.lower()` would turn the Kelvin sign into 'k' and dotted capital I into "i̇".
    assert normalize_name("\u212a") != "k"
    assert normalize_name("\u0130") != "i"
    assert normalize_name("p\u0430ckage") != "package"


# --- versions: parsing -------------------------------------------------------------------------

# semver.org's list of valid versions (from the discussion of its regular expression).
SEMVER_ORG_VALID = [
    "0.0.4",
    "1.2.3",
    "10.20.30",
    "1.1.2-prerelease+meta",
    "1.1.2+meta",
    "1.1.2+meta-valid",
    "1.0.0-alpha",
    "1.0.0-beta",
    "1.0.0-alpha.beta",
    "1.0.0-alpha.beta.1",
    "1.0.0-alpha.1",
    "1.0.0-alpha0.valid",
    "1.0.0-alpha.0valid",
    "1.0.0-alpha-a.b-c-somethinglong+build.1-aef.1-its-okay",
    "1.0.0-rc.1+build.1",
    "2.0.0-rc.1+build.123",
    "1.2.3-beta",
    "10.2.3-DEV-SNAPSHOT",
    "1.2.3-SNAPSHOT-123",
    "1.0.0",
    "2.0.0",
    "1.1.7",
    "2.0.0+build.1848",
    "2.0.1-alpha.1227",
    "1.0.0-alpha+beta",
    "1.2.3----RC-SNAPSHOT.12.9.1--.12+788",
    "1.2.3----R-S.12.9.1--.12+meta",
    "1.2.3----RC-SNAPSHOT.12.9.1--.12",
    "1.0.0+0.build.1-rc.10000aaa-kk-0.1",
    "99999999999999999999999.999999999999999999.99999999999999999",
    "1.0.0-0A.is.legal",
]

# semver.org's list of invalid versions.
SEMVER_ORG_INVALID = [
    "1",
    "1.2",
    "1.2.3-0123",
    "1.2.3-0123.0123",
    "1.1.2+.123",
    "+invalid",
    "-invalid",
    "-invalid+invalid",
    "-invalid.01",
    "alpha",
    "alpha.beta",
    "alpha.beta.1",
    "alpha.1",
    "alpha+beta",
    "alpha_beta",
    "alpha.",
    "alpha..",
    "beta",
    "1.0.0-alpha_beta",
    "-alpha.",
    "1.0.0-alpha..",
    "1.0.0-alpha..1",
    "1.0.0-alpha...1",
    "1.0.0-alpha....1",
    "1.0.0-alpha.....1",
    "1.0.0-alpha......1",
    "1.0.0-alpha.......1",
    "01.1.1",
    "1.01.1",
    "1.1.01",
    "1.2.3.DEV",
    "1.2-SNAPSHOT",
    "1.2.31.2.3----RC-SNAPSHOT.12.09.1--..12+788",
    "1.2-RC-SNAPSHOT",
    "-1.0.3-gamma+b7718",
    "+justmeta",
    "9.8.7+meta+meta",
    "9.8.7-whatever+meta+meta",
    "99999999999999999999999.999999999999999999.99999999999999999----RC-SNAPSHOT.12.09.1--------------------------------..12",
]

OTHER_INVALID = [
    "",
    "v",
    "1.2.3.4",
    "1.2.3-",
    "1.2.3+",
    "1.2.3-+b",
    "1.2.3-a..b",
    "1.2.3-00",
    "1.2.3-01.a",
    "vv1.2.3",
    "v 1.2.3",
    " 1.2.3",
    "1.2.3 ",
    "1.2.3\n",
    "1.2.3\x00",
    "x1.2.3",
    "=1.2.3",
    "^1.2.3",
    "1.2.3-\u00e9",
    "1.2.3+\u00e9",
    "\u0661.\u0662.\u0663",  # Arabic-Indic digits are digits to `\d`, not to SemVer
    "\uff11.2.3",  # fullwidth digit one
    "1.2.3-a_b",
    "1.2.3-a/b",
    "1.2.3/../4",
    "-1.2.3",
    "1.-2.3",
    "1.0.0-" + "a" * 123,  # 129 characters
]


@pytest.mark.parametrize("text", SEMVER_ORG_VALID)
def test_semver_org_valid_versions_parse_and_keep_their_text(text: str) -> None:
    assert Version.parse(text).text == text


@pytest.mark.parametrize("text", SEMVER_ORG_INVALID + OTHER_INVALID)
def test_invalid_versions_are_refused(text: str) -> None:
    with pytest.raises(BadRequest) as raised:
        Version.parse(text)
    assert raised.value.status == 400


def test_the_fields() -> None:
    version = Version.parse("1.2.3----RC-SNAPSHOT.12.9.1--.12+788")
    assert (version.major, version.minor, version.patch) == (1, 2, 3)
    assert version.prerelease == ("---RC-SNAPSHOT", 12, 9, "1--", 12)
    assert version.build == ("788",)
    assert version.identity == "1.2.3----RC-SNAPSHOT.12.9.1--.12"
    assert version.is_prerelease
    assert Version.parse("1.0.0-0A.is.legal").prerelease == ("0A", "is", "legal")
    assert Version.parse("1.0.0+001.0").build == ("001", "0")  # build identifiers keep leading zeros


def test_identity_text_and_prerelease() -> None:
    version = Version.parse("1.2.3-rc.1+build.5")
    assert version.identity == "1.2.3-rc.1"
    assert version.text == str(version) == "1.2.3-rc.1+build.5"
    assert version.is_prerelease
    release = Version.parse("1.2.3+build.5")
    assert release.identity == "1.2.3"
    assert not release.is_prerelease


@pytest.mark.parametrize("text", ["v1.2.3", "V1.2.3"])
def test_a_leading_v_is_dropped(text: str) -> None:
    version = Version.parse(text)
    assert version == Version.parse("1.2.3")
    assert version.text == version.identity == "1.2.3"
    assert version.sort_key == Version.parse("1.2.3").sort_key
    assert Version.parse("v1.0.0-rc.1+b").text == "1.0.0-rc.1+b"


def test_versions_of_128_characters_are_the_longest() -> None:
    longest = "1.0.0-" + "a" * 122
    assert len(longest) == 128
    assert Version.parse(longest).text == longest
    with pytest.raises(BadRequest, match="longer than 128"):
        Version.parse(longest + "a")


def test_build_metadata_does_not_make_another_version() -> None:
    one, other, bare = Version.parse("1.0.0+build.1"), Version.parse("1.0.0+other"), Version.parse("1.0.0")
    assert one.identity == other.identity == bare.identity == "1.0.0"
    assert one.sort_key == other.sort_key == bare.sort_key
    assert one == other == bare
    assert hash(one) == hash(other)
    assert not one < other
    assert not other < one
    assert len({one, other, bare}) == 1
    assert one.text != other.text


def test_direct_construction_is_checked() -> None:
    assert Version(1, 2, 3, ("rc", 1), ("b",)).text == "1.2.3-rc.1+b"


@pytest.mark.parametrize(
    ("numbers", "prerelease", "build"),
    [
        ((-1, 0, 0), (), ()),
        ((1, 0, 0), ("01",), ()),  # an all-digit identifier must be an int
        ((1, 0, 0), ("7",), ()),
        ((1, 0, 0), ("a.b",), ()),
        ((1, 0, 0), ("",), ()),
        ((1, 0, 0), (-1,), ()),
        ((1, 0, 0), (True,), ()),
        ((1, 0, 0), (), ("",)),
        ((1, 0, 0), (), ("a+b",)),
        ((10**130, 0, 0), (), ()),  # longer than 128 characters
    ],
)
def test_invalid_direct_construction_is_refused(
    numbers: tuple[int, int, int], prerelease: tuple[str | int, ...], build: tuple[str, ...]
) -> None:
    with pytest.raises(ValueError, match=r"version|identifier"):
        Version(*numbers, prerelease, build)


# --- versions: precedence ----------------------------------------------------------------------

SEMVER_ORG_CHAIN = [
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0",
    "2.0.0",
    "2.1.0",
    "2.1.1",
]


def test_the_precedence_chain_of_semver_org() -> None:
    versions = [Version.parse(text) for text in SEMVER_ORG_CHAIN]
    for lower, higher in itertools.pairwise(versions):
        assert lower.sort_key < higher.sort_key, (lower, higher)
        assert lower < higher
        assert lower <= higher
        assert higher > lower
        assert higher >= lower
        assert lower != higher
    shuffled = versions[:]
    random.Random(11).shuffle(shuffled)
    assert [version.text for version in sorted(shuffled)] == SEMVER_ORG_CHAIN
    assert [version.text for version in sorted(shuffled, key=lambda v: v.sort_key)] == SEMVER_ORG_CHAIN


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        ("1.0.0", "1.0.1"),
        ("1.9.0", "1.10.0"),
        ("9.0.0", "10.0.0"),
        ("0.0.0", "0.0.1"),
        ("1.0.0-9", "1.0.0-10"),
        ("1.0.0-999", "1.0.0-a"),  # numeric before alphanumeric
        ("1.0.0-99999999999999999999", "1.0.0-0a"),
        ("1.0.0-A", "1.0.0-a"),  # ASCII order
        ("1.0.0--", "1.0.0-0a"),  # '-' (0x2d) sorts before '0' (0x30)
        ("1.0.0-a", "1.0.0-a-"),
        ("1.0.0-a", "1.0.0-aa"),
        ("1.0.0-a", "1.0.0-a.0"),  # a shorter list with an equal prefix first
        ("1.0.0-a.b", "1.0.0-a.b.c"),
        ("1.0.0-a.1", "1.0.0-a.a"),
        ("1.0.0-rc.99", "1.0.0"),
        ("1.0.0-zzzz.zzzz.99999", "1.0.0"),
        ("0.9.9", "1.0.0-0"),
        ("1.0.0", "1.0.1-0"),
        ("1.0.0-0", "1.0.0-0.0"),
        ("1.0.0-alpha0", "1.0.0-alpha1"),
        ("1.0.0-alpha10", "1.0.0-alpha9"),  # inside an alphanumeric identifier digits compare as text
    ],
)
def test_pairs(lower: str, higher: str) -> None:
    assert Version.parse(lower).sort_key < Version.parse(higher).sort_key
    assert Version.parse(lower) < Version.parse(higher)


def test_numbers_beyond_64_bits_compare_numerically() -> None:
    big = 2**64
    texts = [
        f"{big - 1}.0.0",
        f"{big}.0.0",
        f"{big + 1}.0.0",
        f"{10**20}.0.0",
        f"{10**20}.{big}.0",
        f"{10**20}.{big}.{10**25}-{big}",
        f"{10**20}.{big}.{10**25}-{10**26}",
        f"{10**20}.{big}.{10**25}-a",
        f"{10**20}.{big}.{10**25}",
        "99999999999999999999999.999999999999999999.99999999999999999",
        "100000000000000000000000.0.0",
    ]
    versions = [Version.parse(text) for text in texts]
    for lower, higher in itertools.pairwise(versions):
        assert lower.sort_key < higher.sort_key, (lower, higher)
    assert Version.parse(f"{big}.0.0").major == big


def test_the_sort_key_encoding() -> None:
    assert Version.parse("1.0.0").sort_key == b"\x011\x010\x010\x02"
    assert Version.parse("1.10.0-rc.1").sort_key == b"\x011\x0210\x010\x01\x02rc\x00\x01\x011\x00"
    assert Version.parse("1.0.0+build").sort_key == Version.parse("1.0.0").sort_key


def test_comparing_with_other_types() -> None:
    assert Version.parse("1.0.0") != "1.0.0"
    with pytest.raises(TypeError):
        assert Version.parse("1.0.0") < "2.0.0"


# A reference comparator, straight from section 11 of the specification, on the strings themselves.
def reference_compare(left: str, right: str) -> int:
    def split(text: str) -> tuple[list[int], list[str] | None]:
        text = text.split("+", 1)[0]
        core, _, prerelease = text.partition("-")
        return [int(part) for part in core.split(".")], (prerelease.split(".") if prerelease else None)

    (left_core, left_pre), (right_core, right_pre) = split(left), split(right)
    for left_number, right_number in zip(left_core, right_core, strict=True):  # 11.2: numerically
        if left_number != right_number:
            return -1 if left_number < right_number else 1
    if left_pre is None or right_pre is None:  # 11.3: a prerelease has lower precedence
        return (left_pre is None) - (right_pre is None)
    for a, b in zip(left_pre, right_pre, strict=False):  # 11.4: identifier by identifier
        a_numeric, b_numeric = a.isdigit(), b.isdigit()
        if a_numeric and b_numeric:
            if int(a) != int(b):
                return -1 if int(a) < int(b) else 1
        elif a_numeric != b_numeric:
            return -1 if a_numeric else 1
        elif a != b:
            return -1 if a.encode("ascii") < b.encode("ascii") else 1
    return (len(left_pre) > len(right_pre)) - (len(left_pre) < len(right_pre))


def _random_version(rng: random.Random) -> str:
    def number() -> str:
        roll = rng.random()
        if roll < 0.6:
            return str(rng.randint(0, 3))
        if roll < 0.85:
            return str(rng.randint(0, 20))
        return str(rng.randint(0, 10 ** rng.randint(1, 30)))

    def alphanumeric() -> str:
        alphabet = "aAbZz-0129"
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4)))
        return text if not text.isdigit() else text + rng.choice("a-Z")

    text = f"{number()}.{number()}.{number()}"
    if rng.random() < 0.7:
        text += "-" + ".".join(number() if rng.random() < 0.45 else alphanumeric() for _ in range(rng.randint(1, 4)))
    if rng.random() < 0.3:
        text += "+" + ".".join(rng.choice(["b", "001", "x-y", "7"]) for _ in range(rng.randint(1, 2)))
    if rng.random() < 0.1:
        text = "v" + text
    return text


def test_sort_key_order_equals_the_reference_order_on_random_versions() -> None:
    rng = random.Random(20240601)
    texts = [_random_version(rng) for _ in range(4000)]
    texts = [text for text in texts if len(text) <= 128]
    assert len(texts) > 3900
    versions = {text: Version.parse(text) for text in texts}
    assert len({version.identity for version in versions.values()}) > 2000  # mostly distinct

    def bare(text: str) -> str:
        return text.removeprefix("v")

    def compare(a: str, b: str) -> int:
        return reference_compare(bare(a), bare(b))

    reference = sorted(texts, key=functools.cmp_to_key(compare))
    by_key = sorted(texts, key=lambda text: versions[text].sort_key)
    by_operators = sorted(texts, key=lambda text: versions[text])
    # Ties (the same version with different build metadata) may come in either order: compare identities.
    assert [versions[text].identity for text in by_key] == [versions[text].identity for text in reference]
    assert [versions[text].identity for text in by_operators] == [versions[text].identity for text in reference]

    for _ in range(20000):
        a, b = rng.choice(texts), rng.choice(texts)
        expected = reference_compare(bare(a), bare(b))
        key_a, key_b = versions[a].sort_key, versions[b].sort_key
        assert ((key_a > key_b) - (key_a < key_b)) == expected, (a, b)
        assert (versions[a] == versions[b]) == (expected == 0)
        assert (versions[a] < versions[b]) == (expected < 0)


def test_canonical_text_round_trips_on_random_versions() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        text = _random_version(rng)
        version = Version.parse(text)
        assert version.text == text.removeprefix("v")
        assert Version.parse(version.text).text == version.text
        assert re.fullmatch(r"[0-9A-Za-z.+-]+", version.text)
