"""Tables of the `validation` schema."""

from sqlalchemy import MetaData

metadata = MetaData(schema="validation")
