"""Shared test fixtures; the Kafka fixtures come from the streamguard pytest plugin (pytest11)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    """A fresh PostgreSQL database on the test server (tests/support/postgres.sh), dropped afterwards."""
    base = os.environ.get("STREAMGUARD_PG_DSN")
    if not base:
        if os.environ.get("CI"):
            pytest.fail("STREAMGUARD_PG_DSN is not set; `make test` starts PostgreSQL and sets it")
        pytest.skip("no PostgreSQL (run through `make test`)")
    import psycopg

    name = f"sg_it_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield base.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
