"""Tables of the `packages` schema."""

from sqlalchemy import MetaData

metadata = MetaData(schema="packages")
