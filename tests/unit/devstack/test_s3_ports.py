"""SeaweedFS port blocks chosen by processes at the same time (`free_s3_port`'s `share`)."""

from __future__ import annotations

from devstack.s3 import free_s3_port


def test_each_share_of_the_blocks_is_its_own() -> None:
    chosen = {index: {free_s3_port(share=(index, 3)) for _ in range(30)} for index in range(3)}
    for index, ports in chosen.items():
        assert {port // 10 % 3 for port in ports} == {index}
        assert all(port % 10 == 0 for port in ports)
