"""
The region's batch paths of issue 14 (``PowerMany`` pages, ``ReportOutcomes``
batches, dispatch turns, NOTIFY drains) where mutation testing (``make
mutate``, 2026-12-05) showed no test would notice a small bug.

No database and no sockets: the real :class:`Region` and its AMP responder
over the in-memory store and leases of :mod:`powerctl.testing.region`, and
time is a :class:`twisted.internet.task.Clock`.
"""

import json

from twisted.trial import unittest

from powerctl.region import core


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
