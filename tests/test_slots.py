"""Command prioritisation when slots are scarce, with no I/O."""

from twisted.internet import defer, task
from twisted.trial import unittest

from powerctl.power import Action
from powerctl.pserv.slots import PrioritySlots, priority_of


class SlotTests(unittest.TestCase):
    def test_most_urgent_first_then_arrival_order(self):
        slots = PrioritySlots(1)
        order, running = [], {}

        def work(name):
            def go():
                order.append(name)
                running[name] = defer.Deferred()
                return running[name]
            return go

        slots.run(priority_of("on"), work("first-on"))
        for name, action in [("query", "query"), ("on", "on"), ("cycle", "cycle"),
                             ("off", "off"), ("off-2", "off"), ("soft", "soft-off")]:
            slots.run(priority_of(action), work(name))
        for _ in range(7):
            running[order[-1]].callback(None)
        self.assertEqual(order, ["first-on", "off", "off-2", "soft", "cycle", "on", "query"])
        self.assertEqual(slots.busy, 0)

    def test_changes_outrank_queries(self):
        self.assertLess(priority_of(Action.QUERY), priority_of(Action.ON))

    def test_a_cancelled_waiter_gives_up_its_place(self):
        slots = PrioritySlots(1)
        first = slots.run(1, lambda: defer.Deferred())
        waiting = slots.run(5, lambda: defer.succeed("ran"))
        after = slots.run(1, lambda: defer.succeed("after"))
        waiting.cancel()
        self.failureResultOf(waiting, defer.CancelledError)
        first.cancel()
        self.failureResultOf(first, defer.CancelledError)
        self.assertEqual(self.successResultOf(after), "after")
        self.assertEqual(slots.busy, 0)

    def test_cancelling_running_work_frees_its_slot(self):
        slots = PrioritySlots(2)
        a = slots.run(1, lambda: defer.Deferred())
        slots.run(1, lambda: defer.Deferred())
        c = slots.run(1, lambda: defer.succeed("c"))
        self.assertNoResult(c)
        a.cancel()
        self.failureResultOf(a, defer.CancelledError)
        self.assertEqual(self.successResultOf(c), "c")


class SnapshotTests(unittest.TestCase):
    """``snapshot()``: who holds the slots and who waits, in serve order, since when."""

    def test_holders_and_queue_in_serve_order_with_labels_and_times(self):
        clock = task.Clock()
        slots = PrioritySlots(1, clock)
        slots.run(priority_of("on"), lambda: defer.Deferred(),
                  info={"node": "n1", "operation_id": "1", "action": "on"})
        clock.advance(3)
        slots.run(priority_of("query"), lambda: defer.Deferred(),
                  info={"node": "n2", "operation_id": "2", "action": "query"})
        clock.advance(2)
        slots.run(priority_of("off"), lambda: defer.Deferred(),
                  info={"node": "n3", "operation_id": "3", "action": "off"})
        slots.acquire(priority_of("cycle"))  # no label: still listed, unnamed
        snap = slots.snapshot()
        self.assertEqual((snap["size"], snap["busy"]), (1, 1))
        self.assertEqual(snap["holding"], [{"node": "n1", "operation_id": "1", "action": "on",
                                            "priority": priority_of("on"), "since": 0.0}])
        queue = snap["queue"]
        self.assertEqual([w.get("node") for w in queue], ["n3", None, "n2"])
        self.assertEqual([w["position"] for w in queue], [1, 2, 3])
        self.assertEqual(queue[0], {"node": "n3", "operation_id": "3", "action": "off",
                                    "priority": priority_of("off"), "since": 5.0,
                                    "seq": queue[0]["seq"], "position": 1})
        self.assertEqual(queue[2]["since"], 3.0)
        self.assertEqual(slots.waiting, 3)

    def test_cancelled_waiters_are_left_out(self):
        slots = PrioritySlots(1, task.Clock())
        slots.run(1, lambda: defer.Deferred(), info={"node": "a"})
        gone = slots.run(5, lambda: defer.Deferred(), info={"node": "b"})
        slots.run(1, lambda: defer.Deferred(), info={"node": "c"})
        gone.cancel()
        self.failureResultOf(gone, defer.CancelledError)
        snap = slots.snapshot()
        self.assertEqual([w["node"] for w in snap["queue"]], ["c"])
        self.assertEqual(snap["queue"][0]["position"], 1)
        self.assertEqual(slots.waiting, 1)

    def test_holders_leave_when_their_work_ends(self):
        slots = PrioritySlots(2, task.Clock())
        work = defer.Deferred()
        d = slots.run(1, lambda: work, info={"node": "a"})
        slots.run(1, lambda: defer.Deferred(), info={"node": "b"})
        self.assertEqual([h["node"] for h in slots.snapshot()["holding"]], ["a", "b"])
        work.callback("done")
        self.assertEqual(self.successResultOf(d), "done")
        snap = slots.snapshot()
        self.assertEqual([h["node"] for h in snap["holding"]], ["b"])
        self.assertEqual(snap["busy"], 1)

    def test_a_waiter_served_moves_from_the_queue_to_the_holders(self):
        slots = PrioritySlots(1, task.Clock())
        first = defer.Deferred()
        slots.run(1, lambda: first, info={"node": "a"})
        slots.run(1, lambda: defer.Deferred(), info={"node": "b"})
        self.assertEqual([w["node"] for w in slots.snapshot()["queue"]], ["b"])
        first.callback(None)
        snap = slots.snapshot()
        self.assertEqual(snap["queue"], [])
        self.assertEqual([h["node"] for h in snap["holding"]], ["b"])

    def test_without_a_clock_times_are_wall_clock(self):
        import time

        self.patch(time, "time", lambda: 1_700_000_000.25)  # the wall clock, pinned
        slots = PrioritySlots(1)
        slots.run(1, lambda: defer.Deferred(), info={"node": "a"})
        self.assertEqual(slots.snapshot()["holding"][0]["since"], 1_700_000_000.25)
