"""
The pserv's ``RegionLink`` outbox over in-memory AMP (``powerctl.testing.amp``):
reports made while no region is connected wait and go out, in the order
they were made, to the next region that is; a report lost with its
connection is kept and sent again, still in order; a report the region
refused is not sent again; a full outbox drops the oldest.
"""

from twisted.internet import defer
from twisted.protocols import amp
from twisted.trial import unittest

from powerctl.pserv.core import Report
from powerctl.pserv.link import RegionLink
from powerctl.rpc import commands
from powerctl.testing.amp import connect


class RecordingRegion(amp.AMP):
    """
    The region's end of ``ReportOutcomes`` only: records the operation ids
    it is given (and each report in ``boxes``, each call's ids in
    ``calls``); ``refuse`` holds ids it refuses (``STALE_EPOCH`` in
    ``refused``); with ``hold``, answers wait in ``pending`` (the reports
    are in flight).
    """

    def __init__(self, refuse=(), hold=False):
        super().__init__()
        self.received = []
        self.boxes = []
        self.calls = []
        self.refuse = set(refuse)
        self.hold = hold
        self.pending = []

    @commands.ReportOutcomes.responder
    def report_outcomes(self, reports, epoch):
        refused = []
        self.calls.append([r["operation_id"] for r in reports])
        for r in reports:
            if r["operation_id"] in self.refuse:
                refused.append({"operation_id": r["operation_id"], "code": "STALE_EPOCH",
                                "why": f"epoch {epoch} does not own it"})
                continue
            self.received.append(r["operation_id"])
            self.boxes.append(dict(r, epoch=epoch))
        answer = {"recorded": len(reports) - len(refused), "refused": refused}
        if self.hold:
            d = defer.Deferred()
            self.pending.append((d, answer))
            return d
        return answer


class OldRegion(amp.AMP):
    """A region from before ``ReportOutcomes``: ``ReportOutcome`` only."""

    def __init__(self):
        super().__init__()
        self.received = []

    @commands.ReportOutcome.responder
    def report_outcome(self, operation_id, outcome, observed_state, agent, error,
                       coalesced_into, superseded_by, epoch, error_kind=None, detail=None):
        self.received.append((operation_id, error_kind, detail))
        return {"recorded": True}


def report(op):
    return Report(op, "succeeded", "on", epoch=3)


class OutboxTests(unittest.TestCase):
    def setUp(self):
        self.link = RegionLink()

    def region(self, **kwargs):
        """A region connected in memory and ready: the link flushes to it."""
        pair = connect(RecordingRegion(**kwargs), amp.AMP())
        self.link.ready(pair.client)
        pair.flush()
        return pair

    def drop(self, pair):
        pair.disconnect()
        self.link.lost(pair.client)

    def test_reports_made_while_disconnected_go_out_in_order_on_connect(self):
        for op in (5, 3, 9, 1):
            self.link.report(report(op))
        self.assertFalse(self.link.connected)
        pair = self.region()
        self.assertEqual(pair.server.received, [5, 3, 9, 1])

    def test_a_connected_link_sends_at_once(self):
        pair = self.region()
        self.link.report(report(1))
        pair.flush()
        self.assertEqual(pair.server.received, [1])

    def test_reports_of_a_closed_connection_wait_for_the_next(self):
        pair = self.region()
        self.drop(pair)
        self.link.report(report(1))
        self.link.report(report(2))
        self.assertEqual(pair.server.received, [])
        self.assertEqual(self.region().server.received, [1, 2])

    def test_a_report_lost_in_flight_is_sent_again_on_the_next_connection(self):
        pair = self.region(hold=True)
        self.link.report(report(1))
        pair.flush()
        self.assertEqual(pair.server.received, [1])  # arrived, never answered
        self.drop(pair)  # its answer is lost with the connection
        self.link.report(report(2))
        self.assertEqual(self.region().server.received, [1, 2])

    def test_reports_lost_in_flight_keep_their_order(self):
        pair = self.region(hold=True)
        for op in (1, 2, 3):
            self.link.report(report(op))
        pair.flush()
        self.drop(pair)
        self.link.report(report(4))
        self.assertEqual(self.region().server.received, [1, 2, 3, 4])

    def test_a_refused_report_is_dropped_not_sent_again(self):
        pair = self.region(refuse={2})
        for op in (1, 2, 3):
            self.link.report(report(op))
        pair.flush()
        self.assertEqual(pair.server.received, [1, 3])
        self.drop(pair)
        self.assertEqual(self.region().server.received, [])
        self.assertEqual(len(self.flushLoggedErrors()), 0)  # logged as a refusal, not a bug

    def test_at_most_two_calls_are_in_flight_and_the_rest_wait_for_an_answer(self):
        pair = self.region(hold=True)
        for op in (1, 2, 3, 4):
            self.link.report(report(op))
            pair.flush()
        self.assertEqual(pair.server.calls, [[1], [2]])  # 3 and 4 wait
        d, answer = pair.server.pending.pop(0)
        d.callback(answer)
        pair.flush()
        self.assertEqual(pair.server.calls, [[1], [2], [3, 4]])

    def test_a_full_outbox_drops_the_oldest_reports(self):
        self.link = RegionLink(outbox_size=3)
        for op in range(1, 6):
            self.link.report(report(op))
        self.assertEqual(self.region().server.received, [3, 4, 5])

    def test_every_field_is_sent_and_a_long_error_cut_to_fit(self):
        pair = self.region()
        detail = {"failed_levels": [{"level": 1, "reason": "down", "devices": []}]}
        self.link.report(Report(7, "failed", "off", "bmc", "x" * 5000, 4, 6, epoch=2,
                                error_kind="unreachable", detail=detail))
        pair.flush()
        self.assertEqual(pair.server.boxes, [{
            "operation_id": 7, "outcome": "failed", "observed_state": "off", "agent": "bmc",
            "error": "x" * 4000, "coalesced_into": 4, "superseded_by": 6, "epoch": 2,
            "error_kind": "unreachable", "detail": detail}])

    def test_a_region_without_batches_gets_the_reports_one_by_one(self):
        pair = connect(OldRegion(), amp.AMP())
        self.link.report(report(1))
        self.link.report(Report(2, "failed", "", "", "down", epoch=3, error_kind="timeout",
                                detail={"level": 0}))
        self.link.ready(pair.client)
        pair.flush()
        self.link.report(report(3))
        pair.flush()
        self.assertEqual(pair.server.received,
                         [(1, None, None), (2, "timeout", {"level": 0}), (3, None, None)])
        self.assertEqual(self.flushLoggedErrors(), [])
        # a new connection (an upgraded region, maybe) is tried with batches again
        self.link.lost(pair.client)
        fresh = self.region()
        self.link.report(report(4))
        fresh.flush()
        self.assertEqual(fresh.server.calls, [[4]])


class PacedOutboxTests(unittest.TestCase):
    """
    With a clock, ``ReportOutcomes`` calls start at most one per
    ``pace`` while reports keep coming, so a busy pserv's outcomes go
    several to a call (issue 14); a lone report and a full batch go at once.
    """

    def setUp(self):
        from twisted.internet.task import Clock

        self.clock = Clock()
        self.link = RegionLink(clock=self.clock)
        self.pair = connect(RecordingRegion(), amp.AMP())
        self.link.ready(self.pair.client)

    def send(self, *ops):
        for op in ops:
            self.link.report(report(op))
        self.pair.flush()

    def test_reports_coming_quickly_wait_for_the_pace_and_go_together(self):
        self.send(1)
        self.clock.advance(0.01)
        self.send(2)
        self.clock.advance(0.01)
        self.send(3, 4)
        self.assertEqual(self.pair.server.calls, [[1]])
        self.clock.advance(self.link.pace - 0.02 - 0.001)
        self.pair.flush()
        self.assertEqual(self.pair.server.calls, [[1]])  # not before the pace
        self.clock.advance(0.001)
        self.pair.flush()
        self.assertEqual(self.pair.server.calls, [[1], [2, 3, 4]])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_report_after_a_quiet_pace_goes_at_once(self):
        self.send(1)
        self.clock.advance(self.link.pace)
        self.send(2)
        self.assertEqual(self.pair.server.calls, [[1], [2]])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_full_batch_does_not_wait(self):
        self.link.batch_size = 3
        self.send(1)
        self.send(2, 3)
        self.assertEqual(self.pair.server.calls, [[1]])
        self.send(4)  # three wait: a full batch
        self.assertEqual(self.pair.server.calls, [[1], [2, 3, 4]])

    def test_send_now_skips_the_pace_and_close_cancels_the_wait(self):
        self.send(1)
        self.send(2, 3)
        self.assertEqual(self.pair.server.calls, [[1]])
        self.link.send_now()
        self.pair.flush()
        self.assertEqual(self.pair.server.calls, [[1], [2, 3]])
        self.send(4)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.link.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_an_older_region_gets_its_reports_unpaced(self):
        old = connect(OldRegion(), amp.AMP())
        self.link.lost(self.pair.client)
        self.link.ready(old.client)
        self.link.report(report(1))
        old.flush()  # refused as unknown: this connection goes one by one
        self.link.report(report(2))
        self.link.report(report(3))
        old.flush()
        self.assertEqual([r[0] for r in old.server.received], [1, 2, 3])
