"""The part size of streamed uploads."""

from package_service.storage import DEFAULT_PART_SIZE, part_size_for


def test_part_size_always_fits_the_largest_artifact_in_10000_parts() -> None:
    assert part_size_for(10 * 1024**3) == DEFAULT_PART_SIZE
    for max_bytes in (1, 10 * 1024**3, 200 * 1024**3, 5 * 1024**4):
        size = part_size_for(max_bytes)
        assert size % (1024 * 1024) == 0
        assert -(-max_bytes // size) <= 10_000
