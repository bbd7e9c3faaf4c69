"""
The test harness's PostgreSQL, through txpostgres: a connection, a
transaction that commits and one that rolls back, LISTEN/NOTIFY, and the
cluster's teardown even when its owner is killed.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import psycopg2
from twisted.internet import defer, reactor
from twisted.trial import unittest
from txpostgres import txpostgres

from powerctl.devtools.pgcluster import PostgresCluster
from powerctl.region import schema
from tests.pg import DatabaseMixin


class TxpostgresTests(DatabaseMixin, unittest.TestCase):
    async def connect(self):
        conn = txpostgres.Connection(reactor=reactor)
        await conn.connect(self.dsn)
        self.addCleanup(conn.close)
        return conn

    @defer.inlineCallbacks
    def test_query_and_transactions(self):
        conn = yield defer.ensureDeferred(self.connect())
        rows = yield conn.runQuery("SELECT 1 + %s", (41,))
        self.assertEqual(rows, [(42,)])
        yield conn.runOperation("CREATE TABLE t (x int)")

        def commits(cur):
            return cur.execute("INSERT INTO t VALUES (1)")

        def fails(cur):
            d = cur.execute("INSERT INTO t VALUES (2)")
            d.addCallback(lambda _: 1 / 0)
            return d

        yield conn.runInteraction(commits)
        yield self.assertFailure(conn.runInteraction(fails), ZeroDivisionError)
        rows = yield conn.runQuery("SELECT x FROM t ORDER BY x")
        self.assertEqual(rows, [(1,)])

    @defer.inlineCallbacks
    def test_listen_notify(self):
        listener = yield defer.ensureDeferred(self.connect())
        talker = yield defer.ensureDeferred(self.connect())
        heard = defer.Deferred()
        listener.addNotifyObserver(
            lambda n: heard.callback((n.channel, n.payload)) if not heard.called else None)
        yield listener.runOperation("LISTEN power_ops")
        yield talker.runOperation("NOTIFY power_ops, 'op 7'")
        heard.addTimeout(5, reactor)
        got = yield heard
        self.assertEqual(got, ("power_ops", "op 7"))

    @defer.inlineCallbacks
    def test_each_test_gets_a_fresh_migrated_database(self):
        conn = yield defer.ensureDeferred(self.connect())
        rows = yield conn.runQuery("SELECT count(*) FROM nodes")
        self.assertEqual(rows, [(0,)])
        rows = yield conn.runQuery("SELECT max(number) FROM schema_migrations")
        self.assertEqual(rows, [(len(schema.migrations()),)])
        yield conn.runOperation("INSERT INTO clusters (name) VALUES ('leak-check')")

    @defer.inlineCallbacks
    def test_migrations_are_idempotent_over_txpostgres(self):
        conn = yield defer.ensureDeferred(self.connect())
        applied = yield defer.ensureDeferred(schema.migrate(conn))
        self.assertEqual(applied, [])


class MigrationTests(DatabaseMixin, unittest.TestCase):
    def test_migrate_a_blank_database_over_txpostgres(self):
        conn = psycopg2.connect(self.pg.dsn())
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE blank_" + str(os.getpid()))
        conn.close()
        self.addCleanup(_drop, self.pg, "blank_" + str(os.getpid()))

        async def go():
            c = txpostgres.Connection(reactor=reactor)
            await c.connect(self.pg.dsn("blank_" + str(os.getpid())))
            try:
                return await schema.migrate(c)
            finally:
                c.close()

        d = defer.ensureDeferred(go())
        d.addCallback(self.assertEqual, [m.number for m in schema.migrations()])
        return d


def _drop(pg, name):
    conn = psycopg2.connect(pg.dsn())
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    conn.close()


class ClusterLifecycleTests(unittest.TestCase):
    def test_cluster_is_removed_when_its_owner_is_killed(self):
        script = (
            "from powerctl.devtools.pgcluster import PostgresCluster;"
            "import sys, time;"
            "c = PostgresCluster.create(); print(c.directory, flush=True);"
            "time.sleep(60)"
        )
        owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        directory = owner.stdout.readline().strip()
        self.assertTrue(os.path.exists(os.path.join(directory, "data", "postmaster.pid")))
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        owner.stdout.close()
        deadline = time.monotonic() + 20
        while os.path.exists(directory) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertFalse(os.path.exists(directory), "cluster left behind after SIGKILL")

    def test_stop_removes_the_directory_and_keep_keeps_it(self):
        c = PostgresCluster.create()
        conn = psycopg2.connect(c.dsn())
        conn.close()
        c.stop()
        c.stop()  # idempotent
        self.assertFalse(os.path.exists(c.directory))

    def test_kept_cluster_survives_a_restart_with_its_data(self):
        parent = tempfile.mkdtemp(prefix="powerctl-kept-")
        self.addCleanup(shutil.rmtree, parent, True)
        os.chmod(parent, 0o755)  # as root, the postgres user must reach it
        directory = os.path.join(parent, "state")
        c = PostgresCluster.create(directory, keep=True)
        conn = psycopg2.connect(c.dsn())
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE kept")
        conn.close()
        c.stop()
        self.assertFalse(os.path.exists(os.path.join(c.datadir, "postmaster.pid")))
        c = PostgresCluster.create(directory, keep=True)
        self.addCleanup(c.stop)
        psycopg2.connect(c.dsn("kept")).close()


class EventNotifyTests(DatabaseMixin, unittest.TestCase):
    """
    The event journal's NOTIFY: one per committing transaction however many
    events it wrote (a bulk request writes thousands), each event still
    numbered in commit order; nothing for a transaction rolled back.
    """

    async def connect(self):
        conn = txpostgres.Connection(reactor=reactor)
        await conn.connect(self.dsn)
        self.addCleanup(conn.close)
        return conn

    async def test_a_transaction_of_many_events_notifies_once(self):
        listener = await self.connect()
        talker = await self.connect()
        heard = []
        listener.addNotifyObserver(lambda n: heard.append((n.channel, n.payload)))
        await listener.runOperation("LISTEN events")
        await talker.runOperation("INSERT INTO clusters (name) VALUES ('c')")
        heard_first = await self._settle(listener, heard)
        self.assertEqual(heard_first, [])  # a cluster is not an event

        def nodes(cur, names):
            return cur.execute("INSERT INTO nodes (name, cluster, power) SELECT unnest(%s::text[]), 'c', '{}'",
                               (names,))

        await talker.runInteraction(nodes, [f"n{i}" for i in range(20)])
        self.assertEqual(await self._settle(listener, heard), [("events", "")])
        heard.clear()

        def fails(cur):
            d = nodes(cur, ["x1", "x2"])
            d.addCallback(lambda _: 1 / 0)
            return d

        await self.assertFailure(talker.runInteraction(fails), ZeroDivisionError)
        await talker.runInteraction(nodes, ["m1"])
        await talker.runInteraction(nodes, ["m2", "m3"])
        self.assertEqual(await self._settle(listener, heard), [("events", "")] * 2)
        rows = await talker.runQuery("SELECT seq, data->'node'->>'name' FROM events ORDER BY seq")
        self.assertEqual([name for _, name in rows],
                         [f"n{i}" for i in range(20)] + ["m1", "m2", "m3"])
        self.assertEqual([seq for seq, _ in rows], list(range(1, 24)))

    async def _settle(self, listener, heard):
        """What was heard once a round trip on the listener has passed (notifications come first)."""
        await listener.runQuery("SELECT 1")
        from twisted.internet import task
        await task.deferLater(reactor, 0.2, lambda: None)
        await listener.runQuery("SELECT 1")
        return list(heard)
