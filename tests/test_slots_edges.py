"""
Edges of the slot prioritisation that the scenario tests do not pin: a
pool must have a slot, and queries stay behind every change whatever the
operator's ranks (found by mutation testing, ``make mutate``).
"""

from twisted.internet import defer
from twisted.trial import unittest

from powerctl.pserv.slots import PrioritySlots, priority_of


class SlotEdgeTests(unittest.TestCase):
    def test_a_pool_without_slots_is_refused(self):
        # Zero slots would queue every action forever: refuse at start-up.
        for size in (0, -1):
            self.assertRaises(ValueError, PrioritySlots, size)
        self.assertEqual(PrioritySlots(1).size, 1)

    def test_queries_wait_behind_changes_even_with_ranks_starting_at_one(self):
        # An operator's policy may number ranks from 1; a query that arrived
        # first must still be served after a waiting ``on``.
        ranks = {"off": 4, "soft-off": 3, "cycle": 2, "on": 1}
        from powerctl.power import Action

        ranks = {Action.parse(k): v for k, v in ranks.items()}
        slots = PrioritySlots(1)
        order = []
        first = defer.Deferred()
        slots.run(priority_of("off", ranks), lambda: first)
        for name in ("query", "on"):
            slots.run(priority_of(name, ranks),
                      lambda name=name: order.append(name) or defer.succeed(None))
        first.callback(None)
        self.assertEqual(order, ["on", "query"])
