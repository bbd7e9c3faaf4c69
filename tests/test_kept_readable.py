"""
Issue 14: the region's pool connections stay registered as the socket's one
reader (:mod:`powerctl.region.store.connection`) instead of handing the
socket to each query's cursor and back: queries, transactions and NOTIFYs
work as with txpostgres's own connection, no cursor is ever a reader, and
the region's re-connecting pool comes back after its sessions end (see
also tests/test_prepared.py).
"""

import psycopg2
from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from txpostgres import reconnection

from powerctl.region.service import _ReconnectingPool, _reconnecting_connection
from powerctl.region.store.connection import KeptReadableConnection, ReadableCursor
from tests.pg import DatabaseMixin, end_sessions_then_answer


class KeptReadableTests(DatabaseMixin, unittest.TestCase):
    async def connection(self):
        conn = KeptReadableConnection(reactor=reactor)
        await conn.connect(self.dsn)
        self.addCleanup(conn.close)
        return conn

    def readers(self):
        return set(reactor.getReaders())

    async def test_the_connection_stays_the_one_reader_through_queries(self):
        conn = await self.connection()
        self.assertIn(conn, self.readers())
        for i in range(3):
            running = conn.runQuery("SELECT pg_sleep(0.01), %s", (i,))
            self.assertIn(conn, self.readers())
            self.assertFalse([r for r in self.readers() if isinstance(r, ReadableCursor)])
            self.assertEqual([r[1] for r in await running], [i])
            self.assertIn(conn, self.readers())

    async def test_queries_and_transactions_answer_as_before(self):
        conn = await self.connection()
        await conn.runOperation("CREATE TABLE t (x int)")
        await conn.runInteraction(lambda cur: cur.execute("INSERT INTO t VALUES (1)"))

        def fails(cur):
            return cur.execute("INSERT INTO t VALUES (2)").addCallback(lambda _: 1 / 0)

        with self.assertRaises(ZeroDivisionError):
            await conn.runInteraction(fails)
        with self.assertRaises(psycopg2.errors.UndefinedTable):
            await conn.runQuery("SELECT * FROM nowhere")
        self.assertEqual(await conn.runQuery("SELECT x FROM t ORDER BY x"), [(1,)])
        rows = await defer.gatherResults([conn.runQuery("SELECT %s", (i,)) for i in range(20)])
        self.assertEqual(rows, [[(i,)] for i in range(20)])

    async def test_notifications_are_heard_idle_and_around_queries(self):
        listener = await self.connection()
        talker = await self.connection()
        heard = []
        listener.addNotifyObserver(lambda n: heard.append(n.payload))
        await listener.runOperation("LISTEN chan")
        await talker.runOperation("NOTIFY chan, 'idle'")
        # while the listener runs a query of its own
        busy = listener.runQuery("SELECT pg_sleep(0.05)")
        await talker.runOperation("NOTIFY chan, 'busy'")
        await busy
        for _ in range(200):  # a bound, not a measurement
            if len(heard) == 2:
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(sorted(heard), ["busy", "idle"])

    async def test_the_region_pool_connection_is_kept_readable(self):
        conn = _reconnecting_connection(reactor)
        self.assertIsInstance(conn, KeptReadableConnection)
        self.assertIsInstance(conn.detector, reconnection.DeadConnectionDetector)

    async def test_the_region_pool_comes_back_after_its_sessions_end(self):
        pool = _ReconnectingPool(None, self.dsn, min=3)
        await pool.start()
        self.addCleanup(pool.close)
        answers = await end_sessions_then_answer(await self.connection(), lambda: pool.runQuery("SELECT 7"))
        self.assertEqual(answers, [[(7,)]] * 6)
        self.assertFalse([r for r in self.readers() if isinstance(r, ReadableCursor)])
        self.flushLoggedErrors(psycopg2.OperationalError)
