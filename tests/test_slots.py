"""Command prioritisation when slots are scarce, with no I/O."""

from twisted.internet import defer
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
