"""Durable idempotency stores: SQLite (embedded default, one host) and PostgreSQL (shared across hosts).

Both import cheaply: psycopg is only imported when a PostgresStore is opened.
"""

from streamguard.stores.postgres import PostgresStore
from streamguard.stores.sqlite import SqliteStore

__all__ = ["PostgresStore", "SqliteStore"]
