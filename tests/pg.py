"""
The test run's PostgreSQL: one throwaway cluster per test process, and a
fresh database per test, cloned from a migrated template.

The cluster is created lazily by the first test that needs it (trial and
pytest alike, so no runner-specific fixture is needed) and removed by its
reaper when the process ends -- normally, by an exception, by Ctrl-C or by
SIGKILL.  This module-level handle is the one piece of process state in the
suite, and it exists precisely because there is one cluster per run.
"""

import atexit
import itertools

import psycopg2

from powerctl.devtools.pgcluster import PostgresCluster

TEMPLATE = "powerctl_template"

_run = {}
_names = itertools.count(1)


def cluster():
    """The test run's cluster, started on first use."""
    if "cluster" not in _run:
        c = PostgresCluster.create()
        atexit.register(c.stop)
        _make_template(c)
        _run["cluster"] = c
    return _run["cluster"]


def _make_template(c):
    from powerctl.region import schema

    conn = psycopg2.connect(c.dsn())
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {TEMPLATE}")
    conn.close()
    conn = psycopg2.connect(c.dsn(TEMPLATE))
    try:
        schema.migrate_sync(conn)
    finally:
        conn.close()


def admin(sql, *args):
    conn = psycopg2.connect(cluster().dsn())
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args or None)
    finally:
        conn.close()


class DatabaseMixin:
    """
    For a ``trial`` TestCase: ``self.dsn`` names a fresh, migrated database
    that is dropped after the test.
    """

    def setUp(self):
        super().setUp()
        name = f"t{next(_names)}"
        admin(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
        self.addCleanup(admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        self.dsn = cluster().dsn(name)
        self.pg = cluster()


async def end_sessions_then_answer(killer, call, answers=6, attempts=200):
    """
    End every other session of the test database through ``killer`` (a
    connection), then ``call()`` until it has answered ``answers`` times,
    waiting 0.05 s after each refusal of a connection still re-opening
    (each takes 0.2-2 s), at most ``attempts`` times: the answers.
    """
    from twisted.internet import reactor, task
    from txpostgres import reconnection

    await killer.runQuery(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()")
    got = []
    for _ in range(attempts):
        try:
            got.append(await call())
        except (reconnection.ConnectionDead, psycopg2.OperationalError,
                psycopg2.InterfaceError):
            await task.deferLater(reactor, 0.05, lambda: None)
            continue
        if len(got) == answers:
            break
    return got

