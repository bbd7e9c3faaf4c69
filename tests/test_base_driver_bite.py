"""
VerifyingDriver's hooks added since its last mutation run (issue 15,
2026-12-05): the per-BMC gate taken for each attempt and given back after
it (success, failure or retry), waiting for it not counted against the
timeout; the circuit budget taken only for a power-on really sent and
held until verified; the ``accepted`` hook called at each answered query
only.  Socketless: a Clock and the scripted device of test_base_driver.
"""

from twisted.internet import defer, task
from twisted.trial import unittest

from powerctl.drivers.base import Command, with_retries
from powerctl.drivers.errors import AuthenticationError, UnreachableError
from powerctl.drivers.interface import Timing
from powerctl.power import PowerState
from tests.test_base_driver import ScriptedDriver

ON, OFF = PowerState.ON, PowerState.OFF


class Gate:
    """A slot with a log: ``acquire()`` fires with a release once ``open``."""

    def __init__(self, open=True):
        self.open = open
        self.log = []
        self.pending = []

    def acquire(self):
        self.log.append("take")
        d = defer.Deferred()
        if self.open:
            d.callback(self._release)
        else:
            self.pending.append(d)
        return d

    def let_in(self):
        self.open = True
        for d in self.pending:
            d.callback(self._release)
        self.pending = []

    def _release(self):
        self.log.append("give")


class GateTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()

    def test_each_attempt_takes_the_gate_and_gives_it_back(self):
        gate = Gate()
        answers = [defer.fail(UnreachableError("x")), defer.succeed("ok")]
        d = defer.ensureDeferred(with_retries(
            self.clock, Timing(timeout=1.0, retries=2, backoff=0.5), lambda: answers.pop(0),
            "probe", gate=gate))
        self.assertEqual(gate.log, ["take", "give"])  # the failed attempt gave it back
        self.clock.advance(0.5)
        self.assertEqual(self.successResultOf(d), "ok")
        self.assertEqual(gate.log, ["take", "give", "take", "give"])

    def test_a_permanent_failure_gives_the_gate_back(self):
        gate = Gate()
        d = defer.ensureDeferred(with_retries(
            self.clock, Timing(timeout=1.0, retries=2),
            lambda: defer.fail(AuthenticationError("no")),
            "probe", gate=gate))
        self.failureResultOf(d, AuthenticationError)
        self.assertEqual(gate.log, ["take", "give"])

    def test_waiting_for_the_gate_is_not_counted_against_the_timeout(self):
        gate = Gate(open=False)
        d = defer.ensureDeferred(with_retries(
            self.clock, Timing(timeout=1.0, retries=0), lambda: defer.succeed("ok"),
            "probe", gate=gate))
        self.clock.advance(10)  # ten timeouts' worth of waiting for a busy BMC
        self.assertNoResult(d)
        gate.let_in()
        self.assertEqual(self.successResultOf(d), "ok")

    def test_the_driver_s_queries_and_commands_go_through_its_bmc_gate(self):
        driver = ScriptedDriver(self.clock, state=OFF)
        driver.bmc = Gate()
        d = driver.on()
        self.clock.pump([0.25] * 4)
        self.assertEqual(self.successResultOf(d), ON)
        # query (off), send on, query (still off), query (on): each attempt
        # through the gate
        self.assertEqual(driver.bmc.log, ["take", "give"] * 4)


class CircuitTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.driver = ScriptedDriver(self.clock, state=OFF, delay=1.0)
        self.driver.circuit = Gate()

    def test_a_power_on_sent_holds_the_budget_until_verified(self):
        d = self.driver.on()
        self.assertEqual(self.driver.circuit.log, ["take"])
        self.clock.pump([0.25] * 8)
        self.assertEqual(self.successResultOf(d), ON)
        self.assertEqual(self.driver.circuit.log, ["take", "give"])

    def test_an_on_found_on_spends_nothing(self):
        self.driver.state = ON
        self.assertEqual(self.successResultOf(self.driver.on()), ON)
        self.assertEqual(self.driver.circuit.log, [])

    def test_an_off_spends_nothing(self):
        self.driver.state = ON
        d = self.driver.off()
        self.clock.pump([0.25] * 8)
        self.assertEqual(self.successResultOf(d), OFF)
        self.assertEqual(self.driver.circuit.log, [])
        self.assertEqual(self.driver.sent, [Command.OFF])

    def test_a_failed_power_on_gives_the_budget_back(self):
        d = self.driver.on()
        self.driver.failures = [AuthenticationError("refused")]
        self.clock.pump([0.25] * 40)
        # the query after the send is refused: the on fails, the budget is back
        self.failureResultOf(d, AuthenticationError)
        self.assertEqual(self.driver.circuit.log, ["take", "give"])


class AcceptedTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.calls = []

    def test_called_at_each_answered_query(self):
        driver = ScriptedDriver(self.clock, state=OFF, delay=0.5)
        driver.accepted = lambda: self.calls.append(driver.state)
        d = driver.on()
        self.clock.pump([0.25] * 8)
        self.assertEqual(self.successResultOf(d), ON)
        # off at first, off right after the send and 0.25 s later, then on
        self.assertEqual(self.calls, [OFF, OFF, OFF, ON])

    def test_not_called_when_the_device_refuses(self):
        driver = ScriptedDriver(self.clock, failures=[AuthenticationError("bad password")])
        driver.accepted = lambda: self.calls.append("accepted")
        self.failureResultOf(driver.query(), AuthenticationError)
        self.assertEqual(self.calls, [])

    def test_without_a_hook_a_query_just_answers(self):
        driver = ScriptedDriver(self.clock, state=ON)
        self.assertIsNone(driver.accepted)
        self.assertEqual(self.successResultOf(driver.query()), ON)
