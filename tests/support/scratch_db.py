"""A database of one's own: a SQLite file, or a fresh PostgreSQL database next to DATABASE_URL,
dropped afterwards. Used by the migration round trip and by `make fuzz`."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url


@contextmanager
def scratch_database(database_url: str | None, workdir: Path, label: str) -> Iterator[str]:
    """Yield the URI of a new, empty database; PostgreSQL when `database_url` names one."""
    if not database_url or not database_url.startswith("postgresql"):
        yield f"sqlite:///{workdir / f'{label}.sqlite3'}"
        return
    base = make_url(database_url)
    name = f"{base.database}_{label}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
