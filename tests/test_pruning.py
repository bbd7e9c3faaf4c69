"""Journal pruning: ended operations older than the retention leave it, nothing else."""

from twisted.internet import task
from twisted.trial import unittest

from powerctl.region.errors import InvalidInput
from powerctl.region.pruning import journal_pruner
from tests.test_store import StoreTestCase, ipmi


class PruneTests(StoreTestCase):
    async def age(self, op_id, days):
        await self.pool.runOperation("UPDATE power_ops SET finished_at = now() - %s * interval '1 day',"
                       " requested_at = now() - %s * interval '1 day' WHERE id = %s",
                                     (days, days, op_id))

    async def ended(self, node, action, days):
        op = await self.store.ops.request(node, action)
        await self.store.ops.record_outcome(op["id"], "succeeded", observed_state="on")
        await self.age(op["id"], days)
        return op

    async def ids(self):
        return [r[0] for r in await self.sql("SELECT id FROM power_ops ORDER BY id")]

    async def test_only_ended_operations_past_the_retention_go(self):
        await self.store.nodes.create("n1", "c1", ipmi())
        await self.store.nodes.create("n2", "c1", ipmi())
        old = await self.ended("n1", "on", 40)
        recent = await self.ended("n1", "on", 10)
        joined = await self.store.ops.request("n2", "on")
        await self.store.ops.record_outcome(joined["id"], "succeeded", coalesced_into=old["id"])
        opened = await self.store.ops.request("n1", "off")  # open: never pruned
        await self.pool.runOperation("UPDATE power_ops SET requested_at = now()"
                                     " - interval '400 days' WHERE id = %s", (opened["id"],))
        self.assertEqual(await self.store.ops.prune(30), 1)
        self.assertEqual(await self.ids(), [recent["id"], joined["id"], opened["id"]])
        # a reference to a pruned operation becomes null, the row stays
        self.assertIsNone((await self.store.ops.get(joined["id"]))["coalesced_into"])
        self.assertEqual(await self.store.ops.prune(30), 0)

    async def test_a_batch_is_bounded_and_oldest_first(self):
        await self.store.nodes.create("n1", "c1", ipmi())
        ops = [await self.ended("n1", "on", 100) for _ in range(5)]
        self.assertEqual(await self.store.ops.prune(30, limit=2), 2)
        self.assertEqual(await self.ids(), [o["id"] for o in ops[2:]])

    async def test_a_bad_retention_is_refused(self):
        for bad in (0, -1, "30", None):
            with self.assertRaises(InvalidInput):
                await self.store.ops.prune(bad)

    async def test_the_pruner_repeats_batches_and_only_on_the_leader(self):
        await self.store.nodes.create("n1", "c1", ipmi())
        for _ in range(5):
            await self.ended("n1", "on", 100)
        leader = [False]
        pruner = journal_pruner(self.store.ops, task.Clock(), 30, batch=2, rounds=2,
                               leader=lambda: leader[0])
        self.assertEqual(await pruner.prune_once(), 0)
        leader[0] = True
        self.assertEqual(await pruner.prune_once(), 4)  # two rounds of two
        self.assertEqual(await pruner.prune_once(), 1)
        self.assertEqual(len(await self.ids()), 0)


class PrunerFailureTests(unittest.TestCase):
    def test_a_failed_round_is_logged_and_the_timer_keeps_running(self):
        class Broken:
            async def prune(self, keep_days, limit):
                raise RuntimeError("boom")

        clock = task.Clock()
        pruner = journal_pruner(Broken(), clock, 30, interval=10)
        pruner.startService()
        self.addCleanup(pruner.stopService)
        clock.advance(10)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        self.assertTrue(pruner._loop.running)
