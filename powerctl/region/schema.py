"""
Numbered schema migrations, applied at start-up.

Migrations are the files ``migrations/NNNN_name.sql`` shipped in this
package; ``schema_migrations`` records which ran.  Each migration runs in
its own transaction under an advisory lock, so several region processes
starting at once apply each migration exactly once.
"""

import importlib.resources
import re

import attrs
from twisted.internet import defer

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
LOCK_ID = 0x706F7765  # "powe": the advisory lock all regions agree on


@attrs.frozen
class Migration:
    number: int
    name: str
    sql: str


def migrations():
    """Every shipped migration, in order."""
    folder = importlib.resources.files("powerctl.region") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text()))
    found.sort(key=lambda m: m.number)
    numbers = [m.number for m in found]
    if numbers != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations are not numbered 1..n: {numbers}")
    return found


_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    number integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


def _pending(applied):
    return [m for m in migrations() if m.number not in applied]


def migrate_sync(conn):
    """Apply pending migrations over a psycopg2 connection (tests, tools)."""
    conn.autocommit = False
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", (LOCK_ID,))
        try:
            cur.execute(_BOOKKEEPING)
            cur.execute("SELECT number FROM schema_migrations")
            applied = {row[0] for row in cur.fetchall()}
            conn.commit()
            for m in _pending(applied):
                cur.execute(m.sql)
                cur.execute(
                    "INSERT INTO schema_migrations (number, name) VALUES (%s, %s)",
                    (m.number, m.name),
                )
                conn.commit()
        finally:
            conn.rollback()
            cur.execute("SELECT pg_advisory_unlock(%s)", (LOCK_ID,))
            conn.commit()


def _apply_txpostgres(cur, m):
    """One migration inside a txpostgres interaction (its cursor is async)."""

    async def apply():
        await cur.execute(m.sql)
        await cur.execute(
            "INSERT INTO schema_migrations (number, name) VALUES (%s, %s)",
            (m.number, m.name),
        )

    return defer.ensureDeferred(apply())


async def migrate(conn):
    """
    Apply pending migrations over a txpostgres connection (the region at
    start-up).  Returns the numbers applied.
    """
    await conn.runOperation("SELECT pg_advisory_lock(%s)", (LOCK_ID,))
    try:
        await conn.runOperation(_BOOKKEEPING)
        rows = await conn.runQuery("SELECT number FROM schema_migrations")
        done = []
        for m in _pending({r[0] for r in rows}):
            await conn.runInteraction(_apply_txpostgres, m)
            done.append(m.number)
        return done
    finally:
        await conn.runOperation("SELECT pg_advisory_unlock(%s)", (LOCK_ID,))
