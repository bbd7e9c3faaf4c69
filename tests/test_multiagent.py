"""
Multi-agent power rules with fake drivers and a Clock: concurrent (off
needs all, on needs all -- on through one only is a degraded success -- on
if any) and sequential (fallback).  The flat modes are now power
topologies (powerctl.drivers.topology); results carry the level and
devices too, so these tests compare the state and the acting agents.
"""

from twisted.internet import defer, task
from twisted.trial import unittest
from zope.interface import implementer

from powerctl.drivers.errors import AuthenticationError, UnreachableError
from powerctl.drivers.interface import IPowerDriver
from powerctl.drivers.multiagent import Agent, AgentsFailed, NodePower
from powerctl.power import Action, PowerState

ON, OFF = PowerState.ON, PowerState.OFF


@implementer(IPowerDriver)
class FakeDriver:
    """A device whose answers the test scripts; calls can be held open."""

    def __init__(self, state=OFF, fail=None, clock=None, delay=0):
        self.state = state
        self.fail = fail
        self.clock = clock
        self.delay = delay
        self.calls = []

    def _do(self, name, result):
        self.calls.append(name)
        if self.fail is not None:
            return defer.fail(self.fail)
        if not self.delay:
            self.state = result or self.state
            return defer.succeed(self.state)

        def done():
            self.state = result or self.state
            return self.state

        return task.deferLater(self.clock, self.delay, done)

    def on(self):
        return self._do("on", ON)

    def off(self):
        return self._do("off", OFF)

    def soft_off(self):
        return self._do("soft_off", OFF)

    def cycle(self):
        return self._do("cycle", ON)

    def query(self):
        return self._do("query", None)

    def quiesced(self):
        return defer.succeed(None)


def brief(observed):
    """The state and the acting agents of a result (what these tests are about)."""
    return (observed.state, observed.agent)


def power(mode, *drivers):
    return NodePower(mode, [Agent(f"a{i}", d) for i, d in enumerate(drivers)])


class ConcurrentTests(unittest.TestCase):
    def result(self, d):
        return self.successResultOf(d)

    def test_off_needs_every_agent(self):
        a, b = FakeDriver(ON), FakeDriver(ON, fail=UnreachableError("psu b"))
        f = self.failureResultOf(power("concurrent", a, b).run(Action.OFF), AgentsFailed)
        self.assertEqual(list(f.value.failures), ["a1"])
        self.assertEqual(f.value.kind, "unreachable")
        self.assertEqual(a.calls, ["off"])  # both were driven

    def test_off_succeeds_when_all_off(self):
        a, b = FakeDriver(ON), FakeDriver(ON)
        self.assertEqual(brief(self.result(power("concurrent", a, b).run("off"))),
                         (OFF, "a0,a1"))

    def test_on_through_one_is_degraded(self):
        # Changed with the topology (issue 13): on needs every device; on
        # through one only still succeeds, but degraded, with a warning.
        a, b = FakeDriver(fail=UnreachableError("x")), FakeDriver(OFF)
        r = self.result(power("concurrent", a, b).run("on"))
        self.assertEqual(brief(r), (ON, "a1"))
        self.assertIn("degraded", r.warning)
        self.assertIn("a0", r.warning)
        self.assertEqual(a.calls, ["on"])

    def test_on_through_all_is_plain(self):
        r = self.result(power("concurrent", FakeDriver(OFF), FakeDriver(OFF)).run("on"))
        self.assertEqual(brief(r), (ON, "a0,a1"))
        self.assertIsNone(r.warning)

    def test_on_fails_when_none(self):
        a = FakeDriver(fail=UnreachableError("x"))
        b = FakeDriver(fail=AuthenticationError("y"))
        f = self.failureResultOf(power("concurrent", a, b).run("on"), AgentsFailed)
        self.assertEqual(f.value.kind, "multiple")

    def test_query_on_if_any(self):
        self.assertEqual(
            self.result(power("concurrent", FakeDriver(OFF), FakeDriver(ON)).run("query")).state, ON)
        self.assertEqual(
            self.result(power("concurrent", FakeDriver(OFF), FakeDriver(OFF)).run("query")).state, OFF)
        # one says on, the other is unreachable: still on
        self.assertEqual(self.result(power(
            "concurrent", FakeDriver(fail=UnreachableError("x")), FakeDriver(ON)).run("query")).state, ON)
        # one says off, the other is unreachable: cannot claim off
        self.failureResultOf(power(
            "concurrent", FakeDriver(fail=UnreachableError("x")), FakeDriver(OFF)).run("query"),
            AgentsFailed)

    def test_cycle_is_all_off_then_on(self):
        a, b = FakeDriver(ON), FakeDriver(ON)
        self.assertEqual(self.result(power("concurrent", a, b).run("cycle")).state, ON)
        self.assertEqual(a.calls, ["off", "on"])
        self.assertEqual(b.calls, ["off", "on"])

    def test_cycle_stops_when_an_agent_cannot_go_off(self):
        a, b = FakeDriver(ON), FakeDriver(ON, fail=UnreachableError("x"))
        self.failureResultOf(power("concurrent", a, b).run("cycle"), AgentsFailed)
        self.assertEqual(a.calls, ["off"])

    def test_cancel_reaches_every_agent(self):
        clock = task.Clock()
        a, b = FakeDriver(clock=clock, delay=5), FakeDriver(clock=clock, delay=5)
        d = power("concurrent", a, b).run("on")
        self.assertEqual(len(clock.getDelayedCalls()), 2)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_bug_in_a_driver_is_not_hidden(self):
        a, b = FakeDriver(ON, fail=ZeroDivisionError()), FakeDriver(ON)
        self.failureResultOf(power("concurrent", a, b).run("on"), ZeroDivisionError)


class SequentialTests(unittest.TestCase):
    def test_primary_used_when_it_works(self):
        a, b = FakeDriver(OFF), FakeDriver(OFF)
        r = self.successResultOf(power("sequential", a, b).run("on"))
        self.assertEqual(brief(r), (ON, "a0"))
        self.assertEqual(b.calls, [])

    def test_secondary_only_after_primary_failed(self):
        a, b = FakeDriver(fail=UnreachableError("down")), FakeDriver(OFF)
        r = self.successResultOf(power("sequential", a, b).run("on"))
        self.assertEqual(brief(r), (ON, "a1"))
        self.assertEqual(r.level, 2)
        self.assertEqual(a.calls, ["on"])

    def test_all_failed(self):
        a = FakeDriver(fail=UnreachableError("down"))
        b = FakeDriver(fail=UnreachableError("down too"))
        f = self.failureResultOf(power("sequential", a, b).run("off"), AgentsFailed)
        self.assertEqual(sorted(f.value.failures), ["a0", "a1"])
        self.assertTrue(f.value.transient)

    def test_cancel_does_not_fall_back(self):
        clock = task.Clock()
        a, b = FakeDriver(clock=clock, delay=5), FakeDriver(OFF)
        d = power("sequential", a, b).run("on")
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(b.calls, [])


class SingleTests(unittest.TestCase):
    def test_single(self):
        r = self.successResultOf(power("single", FakeDriver(ON)).run("query"))
        self.assertEqual(brief(r), (ON, "a0"))

    def test_shape_errors(self):
        self.assertRaises(ValueError, power, "single", FakeDriver(), FakeDriver())
        self.assertRaises(ValueError, NodePower, "concurrent", [])
        self.assertRaises(ValueError, NodePower, "parallel", [Agent("a", FakeDriver())])
