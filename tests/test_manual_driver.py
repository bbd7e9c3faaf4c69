"""The manual driver: operations complete when an operator confirms."""

from twisted.internet import defer, task
from twisted.trial import unittest

from powerctl.drivers.errors import InvalidParameters, PowerTimeout, UnsupportedError
from powerctl.drivers.manual import ManualDriverType
from powerctl.power import Action, PowerState


class ManualDriverTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.type = ManualDriverType(self.clock)
        self.confirmations = self.type.confirmations

    def bind(self, **params):
        params.setdefault("label", "rack1-u12")
        return self.type.bind(self.type.schema.validate(params))

    def test_schema(self):
        self.assertRaises(InvalidParameters, self.type.schema.validate, {})
        self.assertRaises(InvalidParameters, self.type.schema.validate,
                          {"label": "x", "timeout": "soon"})
        self.assertFalse(self.type.capabilities.queryable)

    def test_on_completes_when_confirmed(self):
        d = self.bind().on()
        self.assertNoResult(d)
        [pending] = self.confirmations.pending()
        self.assertEqual((pending.label, pending.action, pending.target),
                         ("rack1-u12", Action.ON, PowerState.ON))
        self.confirmations.confirm("rack1-u12", "on")
        self.assertEqual(self.successResultOf(d), PowerState.ON)
        self.assertEqual(self.confirmations.pending(), ())

    def test_wrong_state_is_refused_and_keeps_waiting(self):
        d = self.bind().soft_off()
        self.assertRaises(ValueError, self.confirmations.confirm, "rack1-u12", "on")
        self.assertNoResult(d)
        self.confirmations.confirm("rack1-u12", PowerState.OFF)
        self.assertEqual(self.successResultOf(d), PowerState.OFF)

    def test_confirming_nothing(self):
        self.assertRaises(KeyError, self.confirmations.confirm, "nobody", "on")

    def test_timeout(self):
        d = self.bind(timeout=30).off()
        self.clock.advance(29)
        self.assertNoResult(d)
        self.clock.advance(1)
        self.failureResultOf(d, PowerTimeout)
        self.assertEqual(self.confirmations.pending(), ())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel_by_caller_cancels_timer(self):
        d = self.bind(timeout=30).cycle()
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(self.confirmations.pending(), ())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel_by_operator(self):
        d = self.bind().on()
        self.confirmations.cancel("rack1-u12")
        self.failureResultOf(d, defer.CancelledError)

    def test_newer_request_replaces_older(self):
        first = self.bind(timeout=10).on()
        second = self.bind().off()
        self.failureResultOf(first, defer.CancelledError)
        self.assertEqual([p.action for p in self.confirmations.pending()], [Action.OFF])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.confirmations.confirm("rack1-u12", "off")
        self.assertEqual(self.successResultOf(second), PowerState.OFF)

    def test_labels_are_independent(self):
        a, b = self.bind(label="a").on(), self.bind(label="b").off()
        self.confirmations.confirm("b", "off")
        self.assertNoResult(a)
        self.successResultOf(b)

    def test_query_unsupported(self):
        self.failureResultOf(self.bind().query(), UnsupportedError)

    def test_close_cancels_pending(self):
        d = self.bind(timeout=5).on()
        self.successResultOf(self.type.close())
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])
