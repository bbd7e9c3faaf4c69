"""
The pure ownership rules -- rendezvous assignment and the pserv's lease
keeper -- with hypothesis and a Clock; no sockets, no database.
"""

from hypothesis import given, settings, strategies as st
from twisted.internet import task
from twisted.trial import unittest

from powerctl import ownership

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)


class RendezvousTests(unittest.TestCase):
    @settings(max_examples=200, deadline=None)
    @given(pservs=st.sets(names, min_size=2, max_size=8),
           nodes=st.sets(names, min_size=1, max_size=60), data=st.data())
    def test_removing_one_pserv_moves_only_its_nodes(self, pservs, nodes, data):
        gone = data.draw(st.sampled_from(sorted(pservs)))
        before = {n: ownership.choose(n, sorted(pservs)) for n in nodes}
        after = {n: ownership.choose(n, sorted(pservs - {gone})) for n in nodes}
        moved = {n for n in nodes if before[n] != after[n]}
        self.assertEqual(moved, {n for n in nodes if before[n] == gone})
        self.assertNotIn(gone, after.values())

    @settings(max_examples=200, deadline=None)
    @given(pservs=st.sets(names, min_size=1, max_size=8), newcomer=names,
           nodes=st.sets(names, min_size=1, max_size=60))
    def test_a_joining_pserv_takes_nodes_only_for_itself(self, pservs, newcomer, nodes):
        pservs = pservs - {newcomer}
        if not pservs:
            return
        before = {n: ownership.choose(n, sorted(pservs)) for n in nodes}
        after = {n: ownership.choose(n, sorted(pservs | {newcomer})) for n in nodes}
        for n in nodes:
            self.assertIn(after[n], (before[n], newcomer))

    def test_a_joining_pserv_takes_about_its_share(self):
        nodes = [f"node{i}" for i in range(3000)]
        three = ["p1", "p2", "p3"]
        before = {n: ownership.choose(n, three) for n in nodes}
        after = {n: ownership.choose(n, three + ["p4"]) for n in nodes}
        moved = sum(before[n] != after[n] for n in nodes)
        self.assertTrue(600 < moved < 900, moved)  # about 1/4 of 3000

    def test_order_of_pservs_does_not_matter(self):
        for n in ("a", "b", "node-17"):
            self.assertEqual(ownership.choose(n, ["x", "y", "z"]),
                             ownership.choose(n, ["z", "x", "y"]))
        self.assertIsNone(ownership.choose("a", []))


class AssignTests(unittest.TestCase):
    def decide(self, nodes, live):
        return {d.node: (d.kind, d.epoch, d.from_epoch) for d in ownership.assign(nodes, live)}

    def test_nodes_without_a_live_owner_are_assigned(self):
        live = {5: "p1"}
        self.assertEqual(self.decide([("n1", None), ("n2", 3)], live),
                         {"n1": ("assign", 5, None), "n2": ("assign", 5, 3)})

    def test_a_live_owner_hands_over_instead_of_losing_the_node(self):
        live = {5: "p1", 6: "p2"}
        target = ownership.choose("n1", ["p1", "p2"])
        other = 5 if target == "p2" else 6
        mine = 6 if target == "p2" else 5
        self.assertEqual(self.decide([("n1", other)], live), {"n1": ("handoff", mine, other)})
        self.assertEqual(self.decide([("n1", mine)], live), {"n1": ("keep", mine, None)})

    def test_a_restarted_pserv_uses_its_newest_epoch(self):
        # Epoch 5 is the same pserv's old process, still within its lease.
        live = {5: "p1", 9: "p1"}
        self.assertEqual(self.decide([("n1", 5), ("n2", None)], live),
                         {"n1": ("handoff", 9, 5), "n2": ("assign", 9, None)})

    def test_nothing_live_keeps_what_is(self):
        self.assertEqual(self.decide([("n1", 4), ("n2", None)], {}),
                         {"n1": ("keep", 4, None), "n2": ("keep", None, None)})


class LeaseKeeperTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.expired = []
        self.keeper = ownership.LeaseKeeper(self.clock, margin=10,
                                            expiring=lambda: self.expired.append(
                                                self.clock.seconds()))

    def test_goes_quiet_margin_seconds_before_the_lease_ends(self):
        self.clock.advance(100)
        self.keeper.granted(7, sent_at=100, remaining=30)
        self.assertTrue(self.keeper.valid())
        self.clock.advance(19.9)
        self.assertEqual(self.expired, [])
        self.clock.advance(0.1)
        self.assertEqual(self.expired, [120])
        self.assertFalse(self.keeper.valid())

    def test_renewals_push_the_deadline_counted_from_when_they_were_sent(self):
        self.keeper.granted(7, sent_at=0, remaining=30)
        self.clock.advance(15)
        # The answer took 5 s to come back: the lease counts from the send.
        self.keeper.granted(7, sent_at=10, remaining=30)
        self.clock.advance(14.9)  # t = 29.9, deadline - margin = 30
        self.assertEqual(self.expired, [])
        self.clock.advance(0.1)
        self.assertEqual(self.expired, [30])

    def test_a_late_answer_never_shortens_the_deadline(self):
        self.keeper.granted(7, sent_at=10, remaining=30)
        self.keeper.granted(7, sent_at=0, remaining=30)  # an older heartbeat's answer
        self.assertEqual(self.keeper.deadline, 40)

    def test_a_new_epoch_replaces_the_old_one(self):
        self.keeper.granted(7, sent_at=0, remaining=30)
        self.keeper.granted(8, sent_at=1, remaining=5)
        self.assertEqual((self.keeper.epoch, self.keeper.deadline), (8, 6))

    def test_lost_cancels_the_timer(self):
        self.keeper.granted(7, sent_at=0, remaining=30)
        self.keeper.lost()
        self.clock.advance(100)
        self.assertEqual(self.expired, [])
        self.assertFalse(self.keeper.valid())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_closed_keeper_takes_no_new_lease(self):
        self.keeper.granted(7, sent_at=0, remaining=30)
        self.keeper.close()
        self.keeper.granted(7, sent_at=1, remaining=30)  # a late heartbeat answer
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertFalse(self.keeper.valid())
