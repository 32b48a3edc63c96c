"""File objects that stand in for the service's S3 file in the content tests."""

from __future__ import annotations

import io

from validator_service.content import StorageError


class CountingFile(io.BytesIO):
    """A BytesIO that counts the bytes read from it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data)
        return data


class FailingFile(io.BytesIO):
    """A BytesIO whose reads fail, as S3 going down would, once `after` bytes have been read."""

    def __init__(self, data: bytes, after: int) -> None:
        super().__init__(data)
        self.left = after

    def read(self, size: int | None = -1, /) -> bytes:
        if self.left <= 0:
            raise StorageError("S3 is down")
        data = super().read(size if size is not None and 0 <= size <= self.left else self.left)
        self.left -= len(data)
        return data
