"""
The region's batch paths of issue 14 (``PowerMany`` pages, ``ReportOutcomes``
batches, dispatch turns, NOTIFY drains) where mutation testing (``make
mutate``, 2026-12-05) showed no test would notice a small bug.

No database and no sockets: the real :class:`Region` and its AMP responder
over the in-memory store and leases of :mod:`powerctl.testing.region`, and
time is a :class:`twisted.internet.task.Clock`.
"""

import json

from twisted.internet import task
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from powerctl.region import core, rpc
from powerctl.region.core import Region
from powerctl.rpc import commands
from powerctl.testing.region import FakeLeases, FakeRegionStore

SECRET = b"batch-bite"
POWER = {"mode": "single", "agents": [{"driver": "manual", "params": {}}]}


def region_for(store=None, clock=None):
    store = store or FakeRegionStore()
    return Region("r1", store, SECRET, clock or task.Clock(), leases=FakeLeases(store))


def leased(region, epoch=7):
    """A connection that authenticated and registered pserv ``p1`` of ``c1`` under ``epoch``."""
    protocol = rpc.RegionProtocol(region)
    protocol.makeConnection(StringTransport())
    protocol.gate.open = True
    protocol._stop_auth_timer()
    protocol.cluster, protocol.pserv, protocol.epoch = "c1", "p1", epoch
    return protocol


def text(items):
    return json.dumps(items, separators=(",", ":"))


class PageSizeTests(unittest.TestCase):
    def test_a_page_exactly_as_long_as_the_limit_goes_whole(self):
        """``size`` is the JSON list's length: a page of exactly that many bytes fits."""
        items = [{"id": i, "pad": "x" * 40} for i in range(3)]
        size = len(text(items))
        self.assertEqual([len(p) for p in core.pages(items, 100, size=size)], [3])
        # a byte less and the last item goes on a page of its own
        self.assertEqual([len(p) for p in core.pages(items, 100, size=size - 1)], [2, 1])

    def test_every_page_after_the_first_is_measured_the_same_way(self):
        items = [{"id": i, "pad": "x" * 40} for i in range(6)]
        size = len(text(items[:3]))
        pages = list(core.pages(items, 100, size=size))
        self.assertEqual([len(p) for p in pages], [3, 3])
        self.assertEqual([len(text(p)) for p in pages], [size, size])
        self.assertEqual([len(p) for p in core.pages(items, 100, size=size - 1)],
                         [2, 2, 2])


class ReportOutcomeDetailTests(unittest.TestCase):
    """``ReportOutcome``'s ``detail``: a JSON object is journalled, anything else refused."""

    def setUp(self):
        self.store = FakeRegionStore()
        self.store.add_node("n1", "c1", POWER, owner_epoch=7)
        self.op = self.store.add_op("n1", "on", state="running", pserv="p1")
        self.protocol = leased(region_for(self.store))

    def report(self, detail):
        return self.protocol.report_outcome(
            operation_id=self.op["id"], outcome="succeeded", observed_state="on", agent="",
            error="", coalesced_into=0, superseded_by=0, epoch=7, detail=detail)

    async def test_an_object_is_journalled_with_the_outcome(self):
        detail = {"acting": "pdu", "devices": {"pdu1": "on"}}
        self.assertEqual(await self.report(detail), {"recorded": True})
        row = self.store.op_rows[self.op["id"]]
        self.assertEqual((row["state"], row["detail"]), ("succeeded", detail))

    async def test_anything_but_an_object_is_bad_arguments_and_changes_nothing(self):
        for detail in ([1, 2], "text", 3):
            with self.assertRaises(commands.BadArguments):
                await self.report(detail)
        self.assertEqual(self.store.op_rows[self.op["id"]]["state"], "running")
