"""
Row-lock order against a real PostgreSQL: every transaction that locks
several ``nodes`` rows takes them in name order, so none deadlocks with an
assignment round (which locks its cluster's nodes in name order).

The interleavings are forced, not hoped for: a third connection holds one
row, the transactions under test queue up behind it (each test waits until
PostgreSQL reports them waiting on a lock), and the row is let go.  Nothing
here is random and no duration is asserted; the waits are bounded by a
count of polls so that a broken ordering fails instead of hanging.
"""

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from twisted.internet import defer, reactor, task
from twisted.logger import Logger
from twisted.trial import unittest
from txpostgres import txpostgres

from powerctl.region.leases import Leases
from powerctl.region.store import Store
from tests import tokens
from tests.pg import DatabaseMixin, admin
from tests.test_powerconfig import fake_catalogue
from tests.test_store import ipmi


class LockOrderTestCase(DatabaseMixin, unittest.TestCase):
    """A pool, a Store and Leases over a database whose deadlock checks come quickly."""

    def setUp(self):
        super().setUp()
        # Sessions opened from now on check for deadlocks after 100 ms
        # rather than a second (a speed-up only: nothing is timed).
        name = psycopg2.extensions.parse_dsn(self.dsn)["dbname"]
        admin(f"ALTER DATABASE {name} SET deadlock_timeout = '100ms'")
        self.pool = txpostgres.ConnectionPool(None, self.dsn, min=3)
        self.addCleanup(self.pool.close)
        self.store = Store(self.pool, fake_catalogue(), vault=tokens.vault())
        self.leases = Leases(self.pool, lease=30.0)
        self.logged = []
        self.leases.log = Logger(observer=self.logged.append)
        self.watcher = psycopg2.connect(self.dsn)
        self.watcher.autocommit = True
        self.addCleanup(self.watcher.close)
        return self.pool.start()

    async def connect(self):
        conn = txpostgres.Connection(reactor=reactor)
        await conn.connect(self.dsn)
        self.addCleanup(conn.close)
        return conn

    def sql(self, query, *args):
        return self.pool.runQuery(query, args or None)

    def waiting(self):
        with self.watcher.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND datname = current_database()")
            return cur.fetchone()[0]

    async def until_waiting(self, count, what):
        for _ in range(400):
            if self.waiting() >= count:
                return
            await task.deferLater(reactor, 0.025, lambda: None)
        self.fail(f"{what} never waited for a row lock")

    async def table_scans(self):
        """
        A Store and Leases whose sessions read tables by scanning them, the
        plan PostgreSQL picks when a statement touches most of a big table
        (a whole 10,000-node cluster): rows come in table order, not in
        an index's.  Answers ``(pool, store, leases)``.
        """
        name = psycopg2.extensions.parse_dsn(self.dsn)["dbname"]
        admin(f"ALTER DATABASE {name} SET enable_indexscan = off")
        admin(f"ALTER DATABASE {name} SET enable_bitmapscan = off")
        pool = txpostgres.ConnectionPool(None, self.dsn, min=3)
        self.addCleanup(pool.close)
        await pool.start()
        leases = Leases(pool, lease=30.0)
        leases.log = self.leases.log
        return pool, Store(pool, fake_catalogue(), vault=tokens.vault()), leases

    def deadlocks_logged(self):
        return [e for e in self.logged if "deadlock" in e.get("log_format", "")]

    async def nodes_owned_in_physical_order(self, names):
        """
        Nodes ``names`` of cluster c1 owned by a live lease, their rows laid
        out in the table in the order given (not name order): a statement
        that locks them in scan order takes them in that order.
        """
        for name in sorted(names):
            await self.store.nodes.create(name, "c1", ipmi())
        epoch = (await self.leases.grant("p1", "c1", "p1-instance"))["epoch"]
        for name in names:  # one new row version each, appended in this order
            await self.pool.runOperation("UPDATE nodes SET owner_epoch = %s WHERE name = %s",
                                         (epoch, name))
        laid_out = [r[0] for r in await self.sql("SELECT name FROM nodes ORDER BY ctid")]
        self.assertEqual(laid_out, names)  # the precondition of the interleaving
        return epoch


class ReleaseAgainstAssignTests(LockOrderTestCase):
    async def test_a_release_and_an_assignment_round_at_once_do_not_deadlock(self):
        """
        The interleaving of the benchmark's deadlock: a round holds n-a and
        waits (here, for a third party's n-b); the lease's release starts.
        Locking in table order (n-c first, then n-a) it held n-c while the
        round, once n-b came free, wanted n-c: PostgreSQL killed one of the
        two.  In name order the release waits for n-a holding nothing, and
        both finish.
        """
        epoch = await self.nodes_owned_in_physical_order(["n-c", "n-a", "n-b"])
        blocker = await self.connect()
        await blocker.runOperation("BEGIN")
        await blocker.runQuery("SELECT 1 FROM nodes WHERE name = 'n-b' FOR UPDATE")
        round_ = self.leases.assign("c1")  # locks n-a, waits for n-b
        await self.until_waiting(1, "the assignment round")
        release = self.leases.release(epoch)
        await self.until_waiting(2, "the release")
        await blocker.runOperation("COMMIT")
        await round_
        self.assertEqual(await release, ["c1"])
        self.assertEqual(self.deadlocks_logged(), [])  # not even one retried
        owners = await self.sql("SELECT DISTINCT owner_epoch FROM nodes")
        self.assertEqual(owners, [(None,)])

    async def test_release_of_a_handover_and_a_round_at_once_do_not_deadlock(self):
        """As above for ``release_nodes`` (a hand-over's end), the rows being handed over."""
        epoch = await self.nodes_owned_in_physical_order(["n-c", "n-a", "n-b"])
        other = (await self.leases.grant("p2", "c1", "p2-instance"))["epoch"]
        for name in ("n-c", "n-a", "n-b"):  # in table order again
            await self.pool.runOperation("UPDATE nodes SET handoff_epoch = %s WHERE name = %s",
                                         (other, name))
        blocker = await self.connect()
        await blocker.runOperation("BEGIN")
        await blocker.runQuery("SELECT 1 FROM nodes WHERE name = 'n-b' FOR UPDATE")
        round_ = self.leases.assign("c1")
        await self.until_waiting(1, "the assignment round")
        released = self.leases.release_nodes(epoch, ["n-c", "n-a", "n-b"])
        await self.until_waiting(2, "the hand-over's release")
        await blocker.runOperation("COMMIT")
        await round_
        await released
        self.assertEqual(self.deadlocks_logged(), [])


class BatchWritersAgainstRoundsTests(LockOrderTestCase):
    async def test_a_round_with_no_live_lease_and_a_poll_batch_do_not_deadlock(self):
        """
        The cluster's lease is over (a pserv late renewing under load) while
        its poll batch is written: the round frees every node it finds
        owned.  It used to do so with one bare UPDATE (table order: n-c,
        then n-a) against the batch's name order -- the benchmark's
        ``DeadlockDetected`` in ``leases.assign``.
        """
        epoch = await self.nodes_owned_in_physical_order(["n-c", "n-a", "n-b"])
        await self.pool.runOperation("UPDATE leases SET released = true WHERE epoch = %s",
                                     (epoch,))
        _, store, leases = await self.table_scans()
        blocker = await self.connect()
        await blocker.runOperation("BEGIN")
        await blocker.runQuery("SELECT 1 FROM nodes WHERE name = 'n-b' FOR UPDATE")
        polls = store.nodes.record_polls(
            [("n-c", "on", None), ("n-a", "on", None), ("n-b", "on", None)])
        await self.until_waiting(1, "the poll batch")  # holds n-a
        round_ = leases.assign("c1")
        await self.until_waiting(2, "the assignment round")
        await blocker.runOperation("COMMIT")
        recorded, missing, refused = await polls
        self.assertEqual((sorted(recorded), missing, refused), (["n-a", "n-b", "n-c"], [], {}))
        self.assertEqual(await round_, {"assigned": {}, "handoffs": {}, "waiting": []})
        self.assertEqual(self.deadlocks_logged(), [])
        self.assertEqual(await self.sql("SELECT DISTINCT owner_epoch FROM nodes"), [(None,)])

    async def test_marking_operations_running_and_their_outcomes_do_not_deadlock(self):
        """
        The region marks a page running while the pserv's outcomes of the
        same operations arrive (fast BMCs).  The outcomes lock operations in
        id order; the marking locked them in the order its plan read the
        table (forced to a table scan here, rows laid out 3, 1, 2).
        """
        pool, store, _ = await self.table_scans()
        for node in ("n1", "n2", "n3"):
            await store.nodes.create(node, "c1", ipmi())
        ids = [(await store.ops.request(node, "on"))["id"] for node in ("n1", "n2", "n3")]
        for op_id in (ids[2], ids[0], ids[1]):  # a new row version each, in this order
            await pool.runOperation("UPDATE power_ops SET requester = 'x' WHERE id = %s",
                                    (op_id,))
        laid_out = [r[0] for r in await pool.runQuery("SELECT id FROM power_ops ORDER BY ctid")]
        self.assertEqual(laid_out, [ids[2], ids[0], ids[1]])
        blocker = await self.connect()
        await blocker.runOperation("BEGIN")
        await blocker.runQuery("SELECT 1 FROM power_ops WHERE id = %s FOR UPDATE", (ids[0],))
        outcomes = store.nodes.record_outcomes(
            [{"op_id": i, "state": "succeeded", "observed_state": "on", "pserv": "p1"}
             for i in ids])
        await self.until_waiting(1, "the outcomes")  # nodes locked, waits for op 1
        marking = store.ops.mark_running_many(ids, "p1", None)
        await self.until_waiting(2, "the marking")
        await blocker.runOperation("COMMIT")
        results = await outcomes
        await marking
        self.assertEqual([r.changed for r in results], [True, True, True])
        states = await pool.runQuery("SELECT DISTINCT state FROM power_ops")
        self.assertEqual(states, [("succeeded",)])


class NodesBeforeOperationsTests(LockOrderTestCase):
    """
    A batch of outcomes takes its nodes' rows before their operations',
    as ``record_outcome`` does one at a time: while it waits for a node,
    it holds none of the operations (which a single report, node first,
    would then wait for in the wrong order).
    """

    async def test_a_batch_waiting_for_a_node_holds_no_operation_yet(self):
        await self.store.nodes.create("n1", "c1", ipmi())
        op = await self.store.ops.request("n1", "on")
        blocker = await self.connect()
        await blocker.runOperation("BEGIN")
        await blocker.runQuery("SELECT 1 FROM nodes WHERE name = 'n1' FOR UPDATE")
        outcomes = self.store.nodes.record_outcomes(
            [{"op_id": op["id"], "state": "succeeded", "observed_state": "on"}])
        await self.until_waiting(1, "the outcomes")
        probe = await self.connect()
        await probe.runOperation("BEGIN")
        held = None
        try:
            # NOWAIT: fails at once (LockNotAvailable) if the batch holds it
            await probe.runQuery("SELECT 1 FROM power_ops WHERE id = %s FOR UPDATE NOWAIT",
                                 (op["id"],))
        except psycopg2.errors.LockNotAvailable as e:
            held = e
        await probe.runOperation("ROLLBACK")
        await blocker.runOperation("COMMIT")
        [result] = await outcomes
        self.assertIsNone(held, "the batch locked the operation before its node")
        self.assertTrue(result.changed)


class DeadlockVictimTests(LockOrderTestCase):
    async def test_a_round_chosen_as_a_deadlock_victim_is_retried_once_and_logged(self):
        """
        Another transaction (not powerctl's: it locks n-b, then n-a) makes a
        real deadlock with a round; the round's session checks first, so it
        is the victim.  It is logged with PostgreSQL's reason and retried,
        and the retry, once the other has committed, succeeds.
        """
        await self.nodes_owned_in_physical_order(["n-a", "n-b"])
        other = await self.connect()
        await other.runOperation("SET deadlock_timeout = '30s'")  # the round checks first
        await other.runOperation("BEGIN")
        await other.runQuery("SELECT 1 FROM nodes WHERE name = 'n-b' FOR UPDATE")
        round_ = self.leases.assign("c1")  # locks n-a, waits for n-b
        await self.until_waiting(1, "the assignment round")
        theirs = other.runQuery("SELECT 1 FROM nodes WHERE name = 'n-a' FOR UPDATE")
        await theirs  # the round was the victim: its rollback let n-a go
        await other.runOperation("COMMIT")
        answer = await round_
        self.assertEqual(answer["waiting"], [])
        [event] = self.deadlocks_logged()
        self.assertEqual(event["what"], "Leases.assign")
        self.assertIn("deadlock detected", event["why"])

    async def test_a_second_deadlock_is_not_swallowed(self):
        """A retry that fails too raises to the caller (who logs it once)."""

        class Pool:
            calls = 0

            def runInteraction(self, interaction):
                Pool.calls += 1
                return defer.fail(psycopg2.errors.DeadlockDetected("deadlock detected"))

        leases = Leases(Pool())
        leases.log = Logger(observer=self.logged.append)
        with self.assertRaises(psycopg2.errors.DeadlockDetected):
            await leases.assign("c1")
        self.assertEqual((Pool.calls, len(self.deadlocks_logged())), (2, 1))

    def test_the_retry_waits_for_the_survivor_first(self):
        """
        Retried at once, the victim can take its first row back before the
        survivor (woken by the rollback) does: the same cycle again (seen
        under load in CI).  The retry waits RETRY_PAUSE on the store's clock.
        """
        from twisted.internet import task

        from powerctl.region.store import deadlocks

        class Pool:
            calls = 0

            def runInteraction(self, interaction):
                Pool.calls += 1
                if Pool.calls == 1:
                    return defer.fail(psycopg2.errors.DeadlockDetected("deadlock detected"))
                return defer.succeed({"assigned": {}, "handoffs": {}, "waiting": []})

        leases = Leases(Pool())
        leases.log = Logger(observer=self.logged.append)
        leases.clock = task.Clock()
        d = leases.assign("c1")
        self.assertEqual(Pool.calls, 1)
        leases.clock.advance(deadlocks.RETRY_PAUSE - 0.01)
        self.assertEqual(Pool.calls, 1)  # not yet
        leases.clock.advance(0.01)
        self.assertEqual(Pool.calls, 2)
        self.successResultOf(d)

    async def test_the_batch_writers_retry_a_deadlock_victim_once(self):
        """Poll and outcome batches and mark_running_many: one retry, then the caller's."""

        class Pool:
            def __init__(self, failures):
                self.failures, self.calls = failures, 0

            def runInteraction(self, interaction):
                self.calls += 1
                if self.calls <= self.failures:
                    return defer.fail(psycopg2.errors.DeadlockDetected("deadlock detected"))
                return defer.succeed("done")

        for name, call in (
                ("record_polls", lambda store: store.nodes.record_polls([])),
                ("record_outcomes", lambda store: store.nodes.record_outcomes([])),
                ("mark_running_many", lambda store: store.ops.mark_running_many([1], "p", 1))):
            once, twice = Pool(1), Pool(2)
            self.assertEqual(
                await call(Store(once, fake_catalogue(), vault=tokens.vault())), "done", name)
            with self.assertRaises(psycopg2.errors.DeadlockDetected, msg=name):
                await call(Store(twice, fake_catalogue(), vault=tokens.vault()))
            self.assertEqual((once.calls, twice.calls), (2, 2), name)
