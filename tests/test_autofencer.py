"""
Automatic fencing against the real store (issue 13): node health as the
decision reads it, the cluster policy, and the leader's rounds journalling
``fence`` operations with requester ``auto-fence`` -- soft step first when
configured, nothing in a storm, never a second fence of one node.
"""

from twisted.internet import defer, task

from powerctl.region.autofencer import AutoFencer
from powerctl.region.errors import InvalidInput, NotFound
from tests.test_store import StoreTestCase, ipmi

ON = {"enabled": True, "grace": 60, "window": 600, "storm_share": 0.5, "max_per_window": 2}


class AutoFenceTests(StoreTestCase):
    async def nodes(self, count, cluster="c1"):
        for i in range(count):
            await self.store.nodes.create(f"n{i}", cluster, ipmi(host=f"10.0.0.{i + 1}"))
            await self.store.nodes.record_power_state(f"n{i}", "on")

    async def down(self, node, seconds_ago):
        """``node`` non-responsive since ``seconds_ago`` seconds."""
        await self.pool.runOperation(
            "UPDATE nodes SET responsive = false, nonresponsive_since = now()"
            " - %s * interval '1 second' WHERE name = %s", (seconds_ago, node))

    def fencer(self, **kwargs):
        self.dispatched, self.posted = [], []
        self.clock = task.Clock()

        def post(url, body, timeout):
            self.posted.append((url, body, timeout))
            return defer.succeed(b"")

        return AutoFencer(self.store, self.clock, self.dispatched.append, post=post, **kwargs)

    async def fences(self):
        rows = await self.sql("SELECT node, requester, state FROM power_ops"
                              " WHERE action = 'fence' ORDER BY id")
        return [tuple(r) for r in rows]

    async def test_turning_non_responsive_is_timestamped_and_cleared(self):
        store = self.make_store(responsive_grace=0.0)
        await store.nodes.create("n1", "c1", ipmi())
        for _ in range(3):
            await store.nodes.record_power_state("n1", "error", error="timeout")
        [first] = await self.sql("SELECT nonresponsive_since FROM nodes")
        self.assertIsNotNone(first[0])
        await store.nodes.record_power_state("n1", "error", error="timeout")
        [again] = await self.sql("SELECT nonresponsive_since FROM nodes")
        self.assertEqual(again[0], first[0])  # since when, not since the last poll
        await store.nodes.record_power_state("n1", "on")
        [back] = await self.sql("SELECT nonresponsive_since FROM nodes")
        self.assertIsNone(back[0])

    async def test_the_policy_is_validated_and_kept(self):
        await self.nodes(1)
        self.assertFalse((await self.store.auto_fence.policy("c1")).enabled)
        with self.assertRaisesRegex(InvalidInput, "storm_share"):
            await self.store.auto_fence.set_policy("c1", {"enabled": True, "storm_share": 2})
        with self.assertRaisesRegex(InvalidInput, "unknown setting"):
            await self.store.auto_fence.set_policy("c1", {"enable": True})
        with self.assertRaises(NotFound):
            await self.store.auto_fence.set_policy("nope", ON)
        policy = await self.store.auto_fence.set_policy("c1", ON)
        self.assertEqual(await self.store.auto_fence.policy("c1"), policy)
        self.assertEqual([c for c, _ in await self.store.auto_fence.enabled()], ["c1"])
        await self.store.auto_fence.set_policy("c1", None)
        self.assertEqual(await self.store.auto_fence.enabled(), [])

    async def test_a_node_down_past_its_grace_is_fenced_once(self):
        await self.nodes(4)
        await self.store.auto_fence.set_policy("c1", ON)
        await self.down("n1", 61)
        await self.down("n2", 30)  # within its grace
        fencer = self.fencer()
        self.assertEqual(await fencer.fence_once(), ["n1"])
        self.assertEqual(await self.fences(), [("n1", "auto-fence", "pending")])
        self.assertEqual([op["node"] for op in self.dispatched], ["n1"])
        self.assertEqual(await fencer.fence_once(), [])  # its fence is open
        self.assertEqual(fencer.stats()["c1"].fences, 1)

    async def test_a_node_fenced_already_is_not_fenced_again_until_switched_on(self):
        # Fenced through its PDU, its BMC is dark: it stays non-responsive.
        await self.nodes(4)
        await self.store.auto_fence.set_policy("c1", dict(ON, max_per_window=5))
        await self.down("n1", 100)
        fencer = self.fencer()
        self.assertEqual(await fencer.fence_once(), ["n1"])
        await self.pool.runOperation("UPDATE power_ops SET state = 'succeeded'")
        await self.pool.runOperation("UPDATE nodes SET power_state = 'off'")
        await self.down("n1", 100)  # down again, a new outage past its grace
        self.assertEqual(await fencer.fence_once(), [])
        self.assertEqual(await self.fences(), [("n1", "auto-fence", "succeeded")])
        # a failed fence does not count: n2's is tried again
        await self.down("n2", 100)
        self.assertEqual(await fencer.fence_once(), ["n2"])
        await self.pool.runOperation("UPDATE power_ops SET state = 'failed' WHERE node = 'n2'")
        self.assertEqual(await fencer.fence_once(), ["n2"])
        await self.pool.runOperation("UPDATE power_ops SET state = 'failed' WHERE node = 'n2'")
        # switched on since (requested, whatever became of it): fenced again
        await self.store.ops.request("n1", "on", "alice")
        await self.pool.runOperation("UPDATE power_ops SET state = 'failed' WHERE action = 'on'")
        self.assertEqual(sorted(await fencer.fence_once()), ["n1", "n2"])

    async def test_a_node_seen_on_after_its_fence_is_fenced_again(self):
        await self.nodes(4)
        await self.store.auto_fence.set_policy("c1", ON)
        await self.down("n1", 100)
        fencer = self.fencer()
        self.assertEqual(await fencer.fence_once(), ["n1"])
        await self.pool.runOperation("UPDATE power_ops SET state = 'succeeded'")
        # power_state is still "on" (what nodes() recorded): not proven off
        self.assertEqual(await fencer.fence_once(), ["n1"])

    async def test_nothing_is_fenced_in_a_storm(self):
        await self.nodes(4)
        await self.store.auto_fence.set_policy("c1", ON)
        for node in ("n0", "n1", "n2"):
            await self.down(node, 120)
        fencer = self.fencer()
        self.assertEqual(await fencer.fence_once(), [])
        self.assertEqual(await self.fences(), [])
        stats = fencer.stats()["c1"]
        self.assertEqual((stats.storm, stats.storms), (True, 1))
        await self.store.nodes.record_power_state("n1", "on")
        await self.store.nodes.record_power_state("n2", "on")
        self.assertEqual(await fencer.fence_once(), ["n0"])  # the storm is over
        self.assertFalse(fencer.stats()["c1"].storm)

    async def test_at_most_n_per_window_counting_those_already_requested(self):
        await self.nodes(8)
        await self.store.auto_fence.set_policy("c1", ON)
        for node in ("n0", "n1", "n2"):
            await self.down(node, 700)  # long ago: not a storm
        fencer = self.fencer()
        self.assertEqual(await fencer.fence_once(), ["n0", "n1"])
        await self.store.nodes.record_power_state("n0", "on")  # back; its fence stays
        self.assertEqual(await fencer.fence_once(), [])  # two already this window
        self.assertEqual(fencer.stats()["c1"].throttled, 2)

    async def test_the_soft_step_comes_first(self):
        await self.nodes(4)
        await self.store.auto_fence.set_policy(
            "c1", dict(ON, soft_url="http://127.0.0.1:9/restart-agent", soft_timeout=30))
        await self.down("n1", 100)
        fencer = self.fencer()
        self.assertEqual(await fencer.fence_once(), [])
        self.assertEqual(self.posted, [("http://127.0.0.1:9/restart-agent",
                                        {"node": "n1", "cluster": "c1",
                                         "reason": "non-responsive"}, 30.0)])
        self.clock.advance(29)
        self.assertEqual(await fencer.fence_once(), [])
        self.clock.advance(1)
        self.assertEqual(await fencer.fence_once(), ["n1"])
        self.assertEqual(len(self.posted), 1)

    async def test_a_node_back_after_the_soft_step_is_not_fenced(self):
        await self.nodes(4)
        await self.store.auto_fence.set_policy(
            "c1", dict(ON, soft_url="http://127.0.0.1:9/x", soft_timeout=5))
        await self.down("n1", 100)
        fencer = self.fencer()
        await fencer.fence_once()
        await self.store.nodes.record_power_state("n1", "on")
        self.clock.advance(10)
        self.assertEqual(await fencer.fence_once(), [])
        self.assertEqual(await self.fences(), [])

    async def test_only_the_leader_fences(self):
        await self.nodes(4)
        await self.store.auto_fence.set_policy("c1", ON)
        await self.down("n1", 100)
        fencer = self.fencer(leader=lambda: False)
        self.assertEqual(await fencer.fence_once(), [])
        self.assertEqual(await self.fences(), [])

    async def test_a_manual_fence_in_the_meantime_is_not_doubled(self):
        await self.nodes(4)
        await self.store.auto_fence.set_policy("c1", ON)
        await self.down("n1", 100)
        await self.store.ops.request("n1", "fence", "alice")
        self.assertEqual(await self.fencer().fence_once(), [])
        self.assertEqual(await self.fences(), [("n1", "alice", "pending")])

    async def test_the_leaders_figures_are_in_the_metrics(self):
        from twisted.web.test.requesthelper import DummyRequest

        from powerctl.region.web import Metrics

        await self.nodes(4)
        await self.store.auto_fence.set_policy("c1", ON)
        for node in ("n0", "n1", "n2"):
            await self.down(node, 120)
        fencer = self.fencer()
        await fencer.fence_once()
        _, body = await Metrics(self.store, auto_fence=fencer.stats).produce(DummyRequest([]))
        text = body.decode()
        self.assertIn('powerctl_auto_fence_storm{cluster="c1"} 1', text)
        self.assertIn('powerctl_auto_fence_storms_total{cluster="c1"} 1', text)
        self.assertIn('powerctl_auto_fences_total{cluster="c1"} 0', text)
        self.assertIn("# TYPE powerctl_auto_fences_total counter", text)
