"""
The power topology's rules (powerctl.drivers.topology) with fake devices
and a Clock: levels tried in order, every device of a level acts, off and
fence verified on every device, on through some devices degraded, cycle
across devices off-all then on-all, query on-if-any; fence refused when no
level can verify; derived time bounds.  Plus a property test: off and fence
never report success while a device of the acting level may be on.
"""

import random

from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.internet import defer, task
from twisted.trial import unittest

from powerctl.drivers.errors import AuthenticationError, UnreachableError
from powerctl.drivers.interface import Capabilities, Timing
from powerctl.drivers.topology import (
    Agent, AgentsFailed, FenceRefused, Level, NodeTopology, call_bound, derived_bounds,
    device_bound)
from powerctl.power import Action, PowerState
from powerctl.registry import Observed
from powerctl.testing.drivers import FakeDevice

ON, OFF = PowerState.ON, PowerState.OFF
BLIND = Capabilities(queryable=False)


class StuckOn(FakeDevice):
    """A device that answers an off with on (a relay that did not open)."""

    def _apply(self, name):
        if name in ("off", "soft_off"):
            return self.state
        return super()._apply(name)


def device(state=OFF, fail=None, capabilities=None, cls=FakeDevice):
    d = cls(state, capabilities)
    d.failure = fail
    return d


def topology(*levels, trusted=()):
    """``levels``: lists of devices; agents are labelled L<level>d<index>."""
    return NodeTopology([
        Level([Agent(f"L{n}d{i}", d) for i, d in enumerate(devices)], n in trusted)
        for n, devices in enumerate(levels, 1)])


class LevelTests(unittest.TestCase):
    def test_levels_are_tried_in_order_until_one_succeeds(self):
        dead = device(ON, UnreachableError("bmc down"))
        a, b = device(ON), device(ON)
        r = self.successResultOf(topology([dead], [a, b]).run(Action.OFF))
        self.assertEqual((r.state, r.level, r.agent), (OFF, 2, "L2d0,L2d1"))
        self.assertEqual([d.as_json() for d in r.devices],
                         [{"agent": "L2d0", "state": "off"}, {"agent": "L2d1", "state": "off"}])
        self.assertEqual([f["level"] for f in r.failed_levels], [1])
        self.assertEqual(r.failed_levels[0]["devices"][0]["error_kind"], "unreachable")
        self.assertEqual(r.detail()["level"], 2)

    def test_a_later_level_is_not_touched_when_the_first_succeeds(self):
        a, b = device(ON), device(ON)
        self.successResultOf(topology([a], [b]).run(Action.OFF))
        self.assertEqual(b.calls, [])

    def test_every_level_failing_names_every_device(self):
        a = device(ON, UnreachableError("a"))
        b = device(ON, UnreachableError("b"))
        f = self.failureResultOf(topology([a], [b]).run(Action.OFF), AgentsFailed)
        self.assertEqual(sorted(f.value.failures), ["L1d0", "L2d0"])
        self.assertEqual(f.value.kind, "unreachable")
        self.assertIn("level 1", str(f.value))
        self.assertIn("level 2", str(f.value))
        self.assertEqual([lv["level"] for lv in f.value.detail()["failed_levels"]], [1, 2])

    def test_off_needs_every_device_of_the_level(self):
        a, b = device(ON), device(ON, UnreachableError("psu b"))
        f = self.failureResultOf(topology([a, b]).run(Action.OFF), AgentsFailed)
        self.assertEqual(list(f.value.failures), ["L1d1"])
        self.assertEqual(a.calls, ["off"])  # both were driven, at once

    def test_a_device_answering_on_to_an_off_fails_the_level(self):
        a, b = device(ON), device(ON, cls=StuckOn)
        f = self.failureResultOf(topology([a, b]).run(Action.FENCE), AgentsFailed)
        self.assertIn("L1d1: on", str(f.value))

    def test_on_through_some_devices_is_degraded(self):
        a, b = device(OFF), device(OFF, AuthenticationError("bad password"))
        r = self.successResultOf(topology([a, b]).run(Action.ON))
        self.assertEqual((r.state, r.agent, r.level), (ON, "L1d0", 1))
        self.assertIn("degraded: on through L1d0 only", r.warning)
        self.assertIn("bad password", r.warning)
        self.assertEqual(r.detail()["warning"], r.warning)

    def test_on_through_no_device_fails_the_level(self):
        a, b = device(OFF, UnreachableError("a")), device(OFF, UnreachableError("b"))
        c = device(OFF)
        r = self.successResultOf(topology([a, b], [c]).run(Action.ON))
        self.assertEqual((r.state, r.level, r.warning), (ON, 2, None))

    def test_cycle_across_devices_is_off_all_then_on_all(self):
        a, b = device(ON), device(ON)
        r = self.successResultOf(topology([a, b]).run(Action.CYCLE))
        self.assertEqual(r.state, ON)
        self.assertEqual((a.calls, b.calls), (["off", "on"], ["off", "on"]))

    def test_cycle_never_goes_device_by_device(self):
        clock = task.Clock()
        a, b = FakeDevice(ON, hold=True), FakeDevice(ON, hold=True)
        d = topology([a, b]).run(Action.CYCLE)
        self.assertEqual((a.calls, b.calls), (["off"], ["off"]))
        a.release()  # a is off, b not yet: nobody may be switched on
        self.assertEqual((a.calls, b.calls), (["off"], ["off"]))
        b.release()
        self.assertEqual((a.calls, b.calls), (["off", "on"], ["off", "on"]))
        a.release()
        b.release()
        self.assertEqual(self.successResultOf(d).state, ON)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_cycle_stops_when_a_device_cannot_go_off(self):
        a, b = device(ON), device(ON, UnreachableError("x"))
        self.failureResultOf(topology([a, b]).run(Action.CYCLE), AgentsFailed)
        self.assertEqual(a.calls, ["off"])  # never switched on again

    def test_a_single_device_cycles_itself(self):
        a = device(ON)
        self.assertEqual(self.successResultOf(topology([a]).run(Action.CYCLE)).state, ON)
        self.assertEqual(a.calls, ["cycle"])

    def test_query_on_if_any_off_only_if_all(self):
        def query(*devices):
            return topology(list(devices)).run(Action.QUERY)
        self.assertEqual(self.successResultOf(query(device(OFF), device(ON))).state, ON)
        self.assertEqual(self.successResultOf(query(device(OFF), device(OFF))).state, OFF)
        self.assertEqual(self.successResultOf(
            query(device(ON, UnreachableError("x")), device(ON))).state, ON)
        self.failureResultOf(query(device(OFF, UnreachableError("x")), device(OFF)),
                             AgentsFailed)

    def test_a_device_between_states_makes_the_query_unknown_not_an_error(self):
        a, b = device(OFF), device(OFF)
        b.state = PowerState.UNKNOWN  # e.g. a Redfish system PoweringOn
        r = self.successResultOf(topology([a, b]).run(Action.QUERY))
        self.assertEqual((r.state, r.level), (PowerState.UNKNOWN, 1))
        r = self.successResultOf(topology([b]).run(Action.QUERY))
        self.assertEqual(r.state, PowerState.UNKNOWN)

    def test_query_falls_back_to_the_next_level(self):
        r = self.successResultOf(topology(
            [device(ON, UnreachableError("x"))], [device(OFF)]).run(Action.QUERY))
        self.assertEqual((r.state, r.level), (OFF, 2))

    def test_cancel_reaches_every_device_and_does_not_fall_back(self):
        a, b = FakeDevice(ON, hold=True), FakeDevice(ON, hold=True)
        c = FakeDevice(ON)
        d = topology([a, b], [c]).run(Action.OFF)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual((a.cancelled, b.cancelled, c.calls), (["off"], ["off"], []))

    def test_a_bug_in_a_driver_is_not_hidden(self):
        a, b = device(ON, ZeroDivisionError()), device(ON)
        self.failureResultOf(topology([a], [b]).run(Action.OFF), ZeroDivisionError)
        self.assertEqual(b.calls, [])


class FenceTests(unittest.TestCase):
    def test_fence_is_a_verified_off_of_every_device(self):
        a, b = device(ON), device(ON)
        r = self.successResultOf(topology([a, b]).run(Action.FENCE))
        self.assertEqual((r.state, r.level, r.verified), (OFF, 1, True))
        self.assertEqual((a.calls, b.calls), (["off"], ["off"]))

    def test_fence_skips_a_level_that_cannot_verify(self):
        blind, pdu = device(ON, capabilities=BLIND), device(ON)
        r = self.successResultOf(topology([blind], [pdu]).run(Action.FENCE))
        self.assertEqual(r.level, 2)
        self.assertEqual(blind.calls, [])
        self.assertIn("cannot verify", r.failed_levels[0]["reason"])

    def test_fence_refused_when_no_level_can_verify(self):
        blind, other = device(ON, capabilities=BLIND), device(ON, capabilities=BLIND)
        power = topology([blind], [device(ON), other])
        f = self.failureResultOf(power.run(Action.FENCE), FenceRefused)
        self.assertEqual(f.value.agents, ["L1d0", "L2d1"])
        self.assertIn("L1d0, L2d1", str(f.value))
        self.assertEqual(f.value.kind, "unsupported")
        self.assertEqual(blind.calls + other.calls, [])
        self.assertIsInstance(power.fence_refusal(), FenceRefused)

    def test_a_trusted_unverified_level_may_fence(self):
        blind = device(ON, capabilities=BLIND)
        power = topology([blind], trusted=(1,))
        self.assertIsNone(power.fence_refusal())
        r = self.successResultOf(power.run(Action.FENCE))
        self.assertEqual((r.state, r.verified), (OFF, False))
        self.assertFalse(r.detail()["verified"])

    def test_plain_off_still_uses_a_level_that_cannot_verify(self):
        r = self.successResultOf(topology([device(ON, capabilities=BLIND)]).run(Action.OFF))
        self.assertEqual((r.state, r.verified), (OFF, False))


#: What a device of the property test does: fine, fails, answers on to an
#: off, or cannot query.
BEHAVIOURS = ("fine", "fails", "stuck_on", "blind")


def build(levels, trusted):
    built = []
    for n, spec in enumerate(levels, 1):
        devices = []
        for state, behaviour in spec:
            d = device(state, UnreachableError("down") if behaviour == "fails" else None,
                       BLIND if behaviour == "blind" else None,
                       StuckOn if behaviour == "stuck_on" else FakeDevice)
            devices.append(d)
        built.append(devices)
    return built, topology(*built, trusted=trusted)


LEVELS = st.lists(st.lists(st.tuples(st.sampled_from([ON, OFF]), st.sampled_from(BEHAVIOURS)),
                           min_size=1, max_size=3), min_size=1, max_size=3)


class OffNeverLiesProperty(unittest.TestCase):
    """
    Whatever the devices do, a successful off or fence means every device of
    the acting level is off; a fence also means it was verified unless the
    level is trusted.  A failed device (its state unknown), or one still on,
    is never part of a success.
    """

    @settings(max_examples=300, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(levels=LEVELS, trusted=st.sets(st.integers(1, 3)),
           action=st.sampled_from([Action.OFF, Action.FENCE, Action.SOFT_OFF]))
    def test_off_and_fence_never_succeed_while_a_device_may_be_on(self, levels, trusted, action):
        devices, power = build(levels, trusted)
        d = power.run(action)
        results = []
        d.addBoth(results.append)
        self.assertEqual(len(results), 1)  # fake devices answer at once
        result = results[0]
        if not isinstance(result, Observed):
            return  # failing is always allowed
        self.assertEqual(result.state, OFF)
        acting = devices[result.level - 1]
        spec = levels[result.level - 1]
        for dev, (_, behaviour) in zip(acting, spec):
            self.assertNotEqual(behaviour, "fails")  # its state is unknown: it may be on
            self.assertEqual(dev.state, OFF)  # a stuck relay that was on stays on
        self.assertTrue(all(r.state == OFF and r.error is None for r in result.devices))
        self.assertEqual(len(result.devices), len(acting))
        if action is Action.FENCE and result.level not in trusted:
            self.assertTrue(all(b != "blind" for _, b in spec))
            self.assertTrue(result.verified)


class SeededRandomTopologies(unittest.TestCase):
    """The same property over random topologies, seeded (the seed is printed)."""

    def test_random_topologies(self):
        seed = random.randrange(2**32)
        print(f"seed={seed}")
        rng = random.Random(seed)
        for _ in range(200):
            levels = [[(rng.choice([ON, OFF]), rng.choice(BEHAVIOURS))
                       for _ in range(rng.randint(1, 3))] for _ in range(rng.randint(1, 3))]
            devices, power = build(levels, set())
            results = []
            power.run(Action.FENCE).addBoth(results.append)
            if isinstance(results[0], Observed):
                acting = devices[results[0].level - 1]
                self.assertTrue(all(dev.state == OFF for dev in acting), (seed, levels))


class BoundsTests(unittest.TestCase):
    TIMING = Timing(timeout=2.0, retries=1, backoff=1.0, backoff_max=10.0,
                    verify_timeout=10.0, poll_interval=1.0)

    def test_one_call_with_retries(self):
        self.assertEqual(call_bound(self.TIMING), 2.0 + 1.0 + 2.0)

    def test_a_change_is_query_command_and_verification(self):
        self.assertEqual(device_bound(self.TIMING, Action.OFF), 3 * 5.0 + 10.0 + 1.0)
        self.assertEqual(device_bound(self.TIMING, Action.FENCE),
                         device_bound(self.TIMING, Action.OFF))
        self.assertEqual(device_bound(self.TIMING, Action.QUERY), 5.0)
        self.assertIsNone(device_bound(None, Action.OFF))

    def test_levels_take_their_slowest_device_and_add_up(self):
        slow = Timing(timeout=4.0, retries=0, verify_timeout=20.0, poll_interval=1.0)
        b = derived_bounds([[("a", self.TIMING), ("b", slow)], [("c", self.TIMING)]],
                           Action.OFF)
        self.assertEqual(b["levels"][0]["bound"], 3 * 4.0 + 20.0 + 1.0)
        self.assertEqual(b["levels"][1]["bound"], 26.0)
        self.assertEqual(b["total"], 33.0 + 26.0)
        self.assertEqual([d["agent"] for d in b["levels"][0]["devices"]], ["a", "b"])

    def test_a_cycle_over_devices_is_off_then_on(self):
        b = derived_bounds([[("a", self.TIMING), ("b", self.TIMING)]], Action.CYCLE)
        self.assertEqual(b["total"], 2 * 26.0)

    def test_an_unbounded_device_makes_everything_unbounded(self):
        b = derived_bounds([[("a", self.TIMING), ("m", None)]], Action.OFF)
        self.assertIsNone(b["levels"][0]["bound"])
        self.assertIsNone(b["total"])
