"""Tables of the `auth` schema."""

from sqlalchemy import MetaData

metadata = MetaData(schema="auth")
