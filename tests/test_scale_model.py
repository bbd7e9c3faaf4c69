"""
The scale model's simulation (issue 14): the real region and pservs in
memory on a ``Clock``, counting the journal's write transactions.

What is pinned here is the *shape* the scale document (docs/scale.rst)
relies on: a poll round costs one write transaction per 200 polled nodes
(the report batch), a power storm a fixed number per node, and both grow
linearly with the fleet.  ``bench/scale_model.py`` runs the same model at
100,000 nodes over 10 pservs for the document's figures (about three
minutes: too long for every run of the suite).
"""

import math

from twisted.trial import unittest

from powerctl.testing.scalemodel import Fleet

BATCH = 200  # the poller's report batch (powerctl.pserv.poller)


class ScaleModelTests(unittest.TestCase):
    def test_a_poll_round_writes_once_per_report_batch(self):
        fleet = Fleet(pservs=3, nodes_per_pserv=450)
        self.assertEqual(fleet.poll_round(),
                         {"nodes.record_polls": 3 * math.ceil(450 / BATCH)})
        self.assertEqual(sum(1 for n in fleet.store.node_rows.values()
                             if n["power_state"] == "off"), 3 * 450)

    def test_a_power_storm_writes_a_fixed_number_per_node(self):
        fleet = Fleet(pservs=2, nodes_per_pserv=300)
        writes = fleet.storm("on")
        self.assertEqual(fleet.states(), {"succeeded": 600})
        # requested, started, ended with the node state the outcome implies:
        # the outcomes in batches (ReportOutcomes), what piles up while two
        # calls are in flight going in the next
        batches = writes.pop("nodes.record_outcomes")
        self.assertLessEqual(batches, 600 // 50)
        self.assertEqual(writes, {"ops.request": 600, "ops.mark_running": 600})

    def test_writes_grow_linearly_with_the_fleet(self):
        small, large = Fleet(2, 200), Fleet(2, 400)
        self.assertEqual(2 * sum(small.poll_round().values()),
                         sum(large.poll_round().values()))
        storms = [fleet.storm("off") for fleet in (small, large)]
        # the outcomes' batches grow with the load, not with each node
        for storm, nodes in zip(storms, (400, 800)):
            self.assertLessEqual(storm.pop("nodes.record_outcomes"), nodes // 50)
        self.assertEqual(2 * sum(storms[0].values()), sum(storms[1].values()))
