"""
Issue 14: statements prepared once per connection
(:class:`powerctl.region.store.base.Prepared`, ``run_prepared``): the text
they become, and on a real database that a connection prepares once,
recovers from an execution that failed after its PREPARE, and prepares
again in the new session a re-opened connection has (the region's
re-connecting pool, its sessions ended under it as by a database restart).
"""

import psycopg2
from twisted.internet import defer, reactor
from twisted.trial import unittest
from txpostgres import txpostgres

from powerctl.region.service import _ReconnectingPool
from powerctl.region.store.base import Prepared, run_prepared
from tests.pg import DatabaseMixin, end_sessions_then_answer

HALF = Prepared("t_half", "SELECT %(x)s::int / %(y)s::int, %(x)s::int, '100%%'")


class PreparedTextTests(unittest.TestCase):
    def test_named_parameters_become_positional_in_first_use_order(self):
        self.assertEqual(HALF.params, ("x", "y"))
        self.assertEqual(HALF.prepare,
                         "PREPARE t_half AS SELECT $1::int / $2::int, $1::int, '100%%'")
        self.assertEqual(HALF.execute, "EXECUTE t_half(%(x)s, %(y)s)")

    def test_a_name_must_be_an_identifier(self):
        for bad in ("", "Upper", "a b", "x;DROP", "1x"):
            self.assertRaises(ValueError, Prepared, bad, "SELECT 1")


class RunPreparedTests(DatabaseMixin, unittest.TestCase):
    async def connection(self):
        conn = txpostgres.Connection(reactor=reactor)
        await conn.connect(self.dsn)
        self.addCleanup(conn.close)
        return conn

    async def prepared_here(self, conn):
        return [r[0] for r in await conn.runQuery("SELECT name FROM pg_prepared_statements")]

    async def test_a_connection_prepares_once_then_executes(self):
        conn = await self.connection()
        self.assertEqual(await run_prepared(conn, HALF, {"x": 8, "y": 2}), [(4, 8, "100%")])
        self.assertEqual(await self.prepared_here(conn), ["t_half"])
        self.assertEqual(await run_prepared(conn, HALF, {"x": 9, "y": 3}), [(3, 9, "100%")])

    async def test_an_execution_that_failed_after_its_prepare_does_not_stick(self):
        conn = await self.connection()
        with self.assertRaises(psycopg2.errors.DivisionByZero):
            await run_prepared(conn, HALF, {"x": 1, "y": 0})
        self.assertEqual(await self.prepared_here(conn), ["t_half"])  # PREPARE stayed
        self.assertEqual(await run_prepared(conn, HALF, {"x": 6, "y": 2}), [(3, 6, "100%")])

    async def test_a_new_session_prepares_again(self):
        conn = await self.connection()
        await run_prepared(conn, HALF, {"x": 2, "y": 1})
        conn.close()
        await conn.connect(self.dsn)
        self.assertEqual(await self.prepared_here(conn), [])
        self.assertEqual(await run_prepared(conn, HALF, {"x": 4, "y": 1}), [(4, 4, "100%")])

    async def test_the_region_pool_prepares_again_after_its_sessions_ended(self):
        pool = _ReconnectingPool(None, self.dsn, min=3)
        await pool.start()
        self.addCleanup(pool.close)
        for i in range(1, 7):  # enough calls to reach every connection
            self.assertEqual(await run_prepared(pool, HALF, {"x": i, "y": 1}), [(i, i, "100%")])
        answers = await end_sessions_then_answer(await self.connection(), lambda: run_prepared(pool, HALF, {"x": 5, "y": 1}))
        self.assertEqual(answers, [[(5, 5, "100%")]] * 6)
        # txpostgres logs each idle connection's end as it reads it (not ours)
        self.flushLoggedErrors(psycopg2.OperationalError)

    async def test_concurrent_calls_on_a_pool_each_get_their_rows(self):
        pool = txpostgres.ConnectionPool(None, self.dsn, min=3)
        await pool.start()
        self.addCleanup(pool.close)
        rows = await defer.gatherResults(
            [run_prepared(pool, HALF, {"x": 2 * i, "y": 2}) for i in range(20)])
        self.assertEqual(rows, [[(i, 2 * i, "100%")] for i in range(20)])
