"""Settings that are composed: the database password kept apart from the URL (as on AWS)."""

from __future__ import annotations

from sqlalchemy.engine import make_url

from common.settings import CommonSettings


def test_a_separate_password_goes_into_the_url_whatever_its_characters() -> None:
    settings = CommonSettings(database_url="postgresql://depot@db.internal:5432/depot", database_password="p@ss/w:rd%")
    url = make_url(settings.database_url.get_secret_value())
    assert (url.drivername, url.username, url.password, url.host, url.database) == (
        "postgresql+asyncpg", "depot", "p@ss/w:rd%", "db.internal", "depot",
    )  # fmt: skip
    assert "p@ss" not in repr(settings), "secrets stay hidden in reprs"


def test_without_a_separate_password_the_url_is_kept() -> None:
    settings = CommonSettings(database_url="postgres://depot:inline@db/depot")
    assert make_url(settings.database_url.get_secret_value()).password == "inline"
