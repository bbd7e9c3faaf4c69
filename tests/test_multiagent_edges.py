"""
Multi-agent edges found by mutation testing (``make mutate``): waiting for
every agent to be quiet survives an agent whose wait fails, without an
unhandled error left in the log.
"""

import gc

from twisted.internet import defer
from twisted.trial import unittest

from powerctl.drivers.errors import UnreachableError
from powerctl.drivers.multiagent import Agent, NodePower
from tests.test_multiagent import FakeDriver


class BrokenQuiesce(FakeDriver):
    def quiesced(self):
        return defer.fail(UnreachableError("lost the session"))


class QuiescedTests(unittest.TestCase):
    def test_one_agent_failing_to_quiesce_does_not_spill_an_error(self):
        power = NodePower("concurrent", [Agent("a", BrokenQuiesce()), Agent("b", FakeDriver())])
        self.assertIsNone(self.successResultOf(power.quiesced()))
        gc.collect()  # an unconsumed failure is logged when collected
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_quiesced_waits_for_every_agent(self):
        held = defer.Deferred()

        class Slow(FakeDriver):
            def quiesced(self):
                return held

        power = NodePower("sequential", [Agent("a", FakeDriver()), Agent("b", Slow())])
        d = power.quiesced()
        self.assertNoResult(d)
        held.callback(None)
        self.successResultOf(d)
