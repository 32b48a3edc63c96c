"""`common.reads.Query`: a SELECT compiled once, its parameters given by name when it runs."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from common.reads import Query

ITEMS = sa.table("items", sa.column("name"), sa.column("status"), sa.column("rank"), schema="shop")


def test_a_query_is_compiled_once_to_numbered_parameters_and_binds_its_literals() -> None:
    query = Query(
        sa.select(ITEMS.c.name)
        .where(ITEMS.c.status == "available", ITEMS.c.name == sa.bindparam("name"))
        .limit(sa.bindparam("limit"))
    )
    assert [f"${n}" in query.sql for n in (1, 2, 3, 4)] == [True, True, True, False]
    assert query.arguments({"name": "bolt", "limit": 5}) == ["available", "bolt", 5]


def test_a_parameter_given_twice_in_the_statement_is_one_argument() -> None:
    name = sa.bindparam("name")
    query = Query(sa.select(ITEMS.c.name).where(sa.or_(ITEMS.c.name == name, ITEMS.c.status == name)))
    assert query.sql.count("$1") == 2
    assert query.arguments({"name": "bolt"}) == ["bolt"]


def test_a_missing_value_is_refused_before_anything_runs() -> None:
    query = Query(sa.select(ITEMS.c.name).where(ITEMS.c.name == sa.bindparam("name")))
    with pytest.raises(TypeError, match="name"):
        query.arguments({})


def test_lists_expanded_at_run_time_are_refused() -> None:
    with pytest.raises(ValueError, match="ANY"):
        Query(sa.select(ITEMS.c.name).where(ITEMS.c.status.in_(["available", "yanked"])))
