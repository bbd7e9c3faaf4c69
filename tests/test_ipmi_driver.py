"""
The ``ipmi`` driver against the IPMI simulator over real UDP on loopback.

Every test runs a fresh simulated BMC on a free port and a fresh driver
type (its own thread pool), closed in cleanup; trial then checks that no
DelayedCall is left behind.

No test measures wall-clock time.  pyghmi works in threads over real UDP,
which no Clock drives, so tests that are about time (timeouts, the quiet
interval between commands, a bounded close) give the driver type a
``task.Clock`` for its own timers and advance it by hand: a timeout fires
exactly when the test says, and never because the machine is slow.  Tests
wait for *events* (a packet reached the simulated BMC, the worker thread
finished) with :func:`powerctl.testing.waiting.until`.
"""

import attrs
from twisted.internet import defer, reactor, task
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from powerctl.drivers import ipmi
from powerctl.drivers.catalogue import DriverCatalogue
from powerctl.drivers.errors import (
    AuthenticationError,
    InvalidParameters,
    PowerTimeout,
    ProtocolError,
    UnreachableError,
    UnsupportedError,
)
from powerctl.drivers.interface import IDriverType, IPowerDriver, Timing
from powerctl import powerdoc
from powerctl.power import PowerState
from powerctl.sim import ipmi as sim
from powerctl.testing.waiting import until

#: A few milliseconds, like a real BMC: pyghmi has a race in which an answer
#: that arrives before the caller starts waiting is only noticed at the next
#: retry tick (~0.5-1 s), so an instant simulator makes tests jittery.
REALISTIC = sim.Faults(latency=0.002)

FAST = Timing(timeout=2.0, retries=0, backoff=0.05, backoff_max=0.1,
              verify_timeout=2.0, poll_interval=0.02, soft_off_timeout=0.5)
PASSWORD = "s3cret-Pa55"


class IpmiDriverTestCase(unittest.TestCase):
    """Shared set-up: one simulated BMC, one driver type."""

    timing = FAST
    sim_options = {}

    def setUp(self):
        options = {"password": PASSWORD, "latency": REALISTIC.latency,
                   **self.sim_options}
        self.sim = sim.start(reactor, options)
        self.addCleanup(self.sim.stop)
        self.bmc = self.sim.bmc()
        self.driver_type = ipmi.IpmiDriverType(reactor, timing=self.timing)
        self.addCleanup(self.driver_type.close)

    def params(self, **overrides):
        params = {"host": "127.0.0.1", "port": self.sim.port,
                  "username": "admin", "password": PASSWORD, "min_interval": 0}
        params.update(overrides)
        return params

    def driver(self, driver_type=None, **overrides):
        driver_type = driver_type or self.driver_type
        settings = driver_type.schema.validate(self.params(**overrides))
        return driver_type.bind(settings)

    def clocked(self, **kwargs):
        """
        ``(clock, driver type)``: a driver type whose timeouts, retries,
        quiet intervals and close bound run on a Clock the test advances
        (the protocol still runs in threads over real UDP).
        """
        clock = task.Clock()
        driver_type = ipmi.IpmiDriverType(reactor, clock=clock, timing=self.timing, **kwargs)
        self.addCleanup(driver_type.close)
        return clock, driver_type

    def arrivals(self, bmc=None):
        """
        A list that grows by one for every datagram reaching ``bmc`` (the
        test's BMC by default), even one a hanging BMC then ignores.
        """
        bmc = bmc or self.bmc
        seen = []
        receive = bmc.datagramReceived

        def spy(data, address):
            seen.append(data)
            return receive(data, address)

        bmc.datagramReceived = spy
        return seen


class SchemaTests(IpmiDriverTestCase):
    """Bad settings are refused before any packet leaves."""

    def test_interfaces(self):
        self.assertTrue(IDriverType.providedBy(self.driver_type))
        self.assertTrue(IPowerDriver.providedBy(self.driver()))

    def test_declared_parameters(self):
        names = [p.name for p in ipmi.SCHEMA.params]
        self.assertEqual(names, ["host", "port", "username", "password", "privilege",
                                 "cipher_suite", "min_interval", "timeout"])
        self.assertEqual(ipmi.SCHEMA.secrets, frozenset({"password"}))

    def test_defaults(self):
        settings = ipmi.SCHEMA.validate({"host": "bmc1.example", "password": "x"})
        self.assertEqual(settings["port"], 623)
        self.assertEqual(settings["privilege"], "administrator")
        self.assertIsNone(settings["cipher_suite"])
        self.assertEqual(settings["min_interval"], 0.2)

    def test_errors_send_nothing(self):
        catalogue = DriverCatalogue([self.driver_type])
        bad = [
            ({"port": self.sim.port, "password": "x"}, "host"),
            (self.params(host="not a host!"), "host"),
            (self.params(port=70000), "port"),
            (self.params(password=None), "password"),
            (self.params(privilege="root"), "privilege"),
            (self.params(cipher_suite=1), "cipher_suite"),
            (self.params(cipher_suite="x"), "cipher_suite"),
            (self.params(min_interval=-1), "min_interval"),
            (self.params(timeout="soon"), "timeout"),
            (self.params(community="public"), "community"),
        ]
        for params, name in bad:
            e = self.assertRaises(InvalidParameters, catalogue.build, "ipmi", params)
            self.assertEqual(e.parameter, name)
            self.assertNotIn(PASSWORD, str(e))
        self.assertEqual(self.bmc.received, [])
        self.assertEqual(self.bmc.logins, 0)

    def test_redacted(self):
        shown = powerdoc.redact({"agents": [{"driver": "ipmi", "params": self.params()}]},
                                {"ipmi": ipmi.SCHEMA.secrets})
        self.assertEqual(shown["agents"][0]["params"]["password"], "(set)")
        self.assertNotIn(PASSWORD, repr(ipmi.Credentials(b"a", PASSWORD.encode(), 4, None)))


class PowerTests(IpmiDriverTestCase):
    """Verified operations, over real UDP."""

    sim_options = {"switch_delay": 0.05}

    async def test_query(self):
        self.assertEqual(await self.driver().query(), PowerState.OFF)
        self.bmc.power = PowerState.ON
        self.assertEqual(await self.driver().query(), PowerState.ON)

    async def test_on_off(self):
        driver = self.driver()
        self.assertEqual(await driver.on(), PowerState.ON)
        self.assertEqual(self.bmc.power, PowerState.ON)
        self.assertEqual(await driver.off(), PowerState.OFF)
        self.assertEqual(self.bmc.power, PowerState.OFF)
        self.assertEqual([d for _, d in self.bmc.power_commands], [1, 0])

    async def test_on_when_on_sends_no_power_command(self):
        self.bmc.power = PowerState.ON
        self.assertEqual(await self.driver().on(), PowerState.ON)
        self.assertEqual(self.bmc.power_command_count, 0)

    async def test_soft_off(self):
        self.bmc.power = PowerState.ON
        self.assertEqual(await self.driver().soft_off(), PowerState.OFF)
        self.assertEqual([d for _, d in self.bmc.power_commands], [5])

    async def test_soft_off_falls_back_to_hard_off(self):
        self.bmc.power = PowerState.ON
        self.bmc.soft_off_works = False
        self.assertEqual(await self.driver().soft_off(), PowerState.OFF)
        self.assertEqual([d for _, d in self.bmc.power_commands], [5, 0])

    async def test_cycle(self):
        self.bmc.power = PowerState.ON
        self.assertEqual(await self.driver().cycle(), PowerState.ON)
        self.assertEqual([d for _, d in self.bmc.power_commands], [0, 1])

    def test_capabilities(self):
        caps = self.driver().capabilities
        self.assertTrue(caps.queryable and caps.soft_off and caps.native_cycle)


class SessionTests(IpmiDriverTestCase):
    """One login per BMC, serialised calls, quiet intervals, suites."""

    async def test_session_reused(self):
        driver = self.driver()
        for _ in range(5):
            await driver.query()
        await self.driver().on()  # another agent bound to the same BMC
        self.assertEqual(self.bmc.logins, 1)
        self.assertEqual(self.driver_type.sessions, 1)

    async def test_serialised_with_min_interval(self):
        """Each command waits, on the driver's clock, until 0.1 s after the last one ended."""
        clock, driver_type = self.clocked()
        drivers = [self.driver(driver_type, min_interval=0.1) for _ in range(2)]
        await drivers[0].query()  # log in first; only the queries count
        queries = defer.gatherResults([d.query() for d in drivers * 3])
        slot = drivers[0].slot
        self.assertIs(drivers[1].slot, slot)  # one BMC: one queue
        queried = lambda: len(self.bmc.commands(netfn=0, command=1))  # noqa: E731
        for sent in range(1, 7):
            # The previous command ended; the next one holds the BMC, waiting.
            await until(lambda: slot.lock.locked and not slot.running,
                        what="the previous command to end")
            self.assertEqual(queried(), sent)
            clock.advance(0.099)
            self.assertFalse(slot.running)  # too early: nothing was started
            clock.advance(0.001)
            self.assertTrue(slot.running)
        await queries
        self.assertEqual(queried(), 7)
        self.assertEqual(self.bmc.max_in_flight, 1)

    async def test_different_bmcs_run_in_parallel(self):
        """A BMC that does not answer holds up no other BMC."""
        other = sim.start(reactor, {"password": PASSWORD, "latency": 0.002})
        self.addCleanup(other.stop)
        clock, driver_type = self.clocked()
        a, b = self.driver(driver_type), self.driver(driver_type, port=other.port)
        await defer.gatherResults([a.query(), b.query()])  # logins
        bmcs = (self.bmc, other.bmc())
        seen = [self.arrivals(bmc) for bmc in bmcs]
        for bmc in bmcs:
            bmc.faults = attrs.evolve(REALISTIC, hang=True)
        pending = [a.query(), b.query()]
        # Neither BMC answers and no timeout can fire (the clock stands
        # still): both are asked only if the calls run side by side.
        await until(lambda: all(seen), what="both BMCs to be asked")
        for d in pending:
            d.cancel()
            await self.assertFailure(d, defer.CancelledError)
        await defer.gatherResults([a.quiesced(), b.quiesced()])

    async def test_suite_17_negotiated(self):
        await self.driver().query()
        self.assertEqual(self.bmc.suites_used, [17])

    async def test_falls_back_to_suite_3(self):
        self.bmc.suites = (3,)
        await self.driver().query()
        self.assertEqual(self.bmc.suites_used, [3])

    async def test_pinned_suite_3(self):
        await self.driver(cipher_suite=3).query()
        self.assertEqual(self.bmc.suites_used, [3])

    async def test_pinned_suite_17_refused(self):
        self.bmc.suites = (3,)
        await self.assertFailure(self.driver(cipher_suite=17).query(), UnsupportedError)

    async def test_privilege_requested(self):
        await self.driver(privilege="operator").query()
        privilege = self.bmc.commands(netfn=6, command=0x3B)[0].data
        self.assertEqual(privilege[0] & 0x0F, 3)

    async def test_broken_session_recreated(self):
        driver = self.driver(timeout=0.3)
        await driver.query()
        self.bmc.faults = attrs.evolve(REALISTIC, hang=True)
        await self.assertFailure(driver.query(), PowerTimeout)
        await driver.quiesced()
        self.bmc.faults = REALISTIC
        self.assertEqual(await driver.query(), PowerState.OFF)
        self.assertEqual(self.bmc.logins, 2)


class FailureTests(IpmiDriverTestCase):
    """The error taxonomy, each in bounded time."""

    async def test_wrong_password(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        # On a clock that stands still no timeout or retry can end the call:
        # it ends because the refusal is final, not after waiting it out.
        clock, driver_type = self.clocked()
        driver = self.driver(driver_type, password="wrong-" + PASSWORD)
        e = await self.assertFailure(driver.query(), AuthenticationError)
        self.assertEqual(clock.seconds(), 0)
        self.assertNotIn(PASSWORD, str(e))
        self.assertFalse(any(PASSWORD in repr(ev) for ev in events))
        self.assertEqual(self.bmc.logins, 0)

    async def test_wrong_user(self):
        e = await self.assertFailure(self.driver(username="nobody").query(),
                                     AuthenticationError)
        self.assertIn("nobody", str(e))
        self.assertGreaterEqual(self.bmc.refused_logins, 1)

    async def test_hang_bounded(self):
        clock, driver_type = self.clocked()
        await self.driver(driver_type).query()
        self.bmc.faults = attrs.evolve(REALISTIC, hang=True)
        driver = self.driver(driver_type, timeout=0.3)
        d = driver.query()
        clock.advance(0.299)
        self.assertNoResult(d)
        clock.advance(0.001)  # the timeout, to the tick: the call fails there and then
        self.failureResultOf(d, PowerTimeout)
        await driver.quiesced()  # the thread was hurried: no clock could end it
        self.assertFalse(driver.slot.running)

    async def test_hang_at_login_bounded(self):
        clock, driver_type = self.clocked()
        self.bmc.faults = attrs.evolve(REALISTIC, hang=True)
        driver = self.driver(driver_type, timeout=0.3)
        d = driver.on()
        clock.advance(0.299)
        self.assertNoResult(d)
        clock.advance(0.001)
        self.failureResultOf(d, PowerTimeout)
        await driver.quiesced()
        self.assertEqual(self.bmc.power_command_count, 0)

    def test_classify(self):
        """pyghmi reports by text only; silence at login is unreachable."""
        from pyghmi.exceptions import IpmiException

        where = "ipmi admin@bmc:623"
        cases = [
            (IpmiException(None), False, UnreachableError),
            (IpmiException("timeout"), True, PowerTimeout),
            (IpmiException("Session no longer connected"), True, PowerTimeout),
            (IpmiException("Incorrect password provided"), False, AuthenticationError),
            (IpmiException("Unauthorized name in RAKP2"), False, AuthenticationError),
            (IpmiException("Node Busy"), True, ProtocolError),
            (IpmiException("Invalid command"), True, UnsupportedError),
            (KeyError("x"), True, ProtocolError),
        ]
        for exc, logged_in, kind in cases:
            self.assertIsInstance(ipmi.classify(exc, logged_in, where), kind, exc)

    async def test_completion_code_is_protocol_error(self):
        self.bmc.faults = attrs.evolve(REALISTIC, error=0xC0)
        e = await self.assertFailure(self.driver().query(), ProtocolError)
        self.assertIn("Node Busy", str(e))

    async def test_invalid_command_is_unsupported(self):
        self.bmc.faults = attrs.evolve(REALISTIC, error=0xC1)
        await self.assertFailure(self.driver().off(), UnsupportedError)


class CancellationTests(IpmiDriverTestCase):
    """Cancellation is prompt; the thread is awaited; nothing leaks."""

    async def cancel_mid_call(self, driver, operation):
        seen = self.arrivals()
        d = operation()
        await until(lambda: seen, what="the call to reach the BMC")  # now it is mid-call
        d.cancel()
        self.assertTrue(d.called)  # at once, while the thread still works
        await self.assertFailure(d, defer.CancelledError)
        self.assertTrue(self.driver_type._bmcs[driver.slot.key].running)
        await driver.quiesced()
        self.assertFalse(driver.slot.running)

    async def test_cancel_mid_command(self):
        driver = self.driver()
        await driver.query()
        self.bmc.faults = attrs.evolve(REALISTIC, hang=True)
        await self.cancel_mid_call(driver, driver.off)
        self.bmc.faults = REALISTIC
        self.assertEqual(await driver.query(), PowerState.OFF)

    async def test_cancel_mid_login(self):
        self.bmc.faults = attrs.evolve(REALISTIC, hang=True)
        driver = self.driver()
        await self.cancel_mid_call(driver, driver.query)

    async def test_cancel_while_waiting_for_the_bmc(self):
        driver = self.driver(min_interval=0.5)
        await driver.query()
        waiting = driver.query()
        waiting.cancel()
        await self.assertFailure(waiting, defer.CancelledError)
        self.assertFalse(driver.slot.running)
        self.assertEqual(len(self.bmc.commands(netfn=0, command=1)), 1)

    async def test_close_prompt_with_hung_bmc(self):
        # close() gives up on its threads only when its clock says so, and
        # this clock stands still: it fires because the threads ended.
        clock, driver_type = self.clocked()
        driver = self.driver(driver_type, timeout=30)
        await driver.query()
        seen = self.arrivals()
        self.bmc.faults = attrs.evolve(REALISTIC, hang=True)
        pending = driver.query()
        await until(lambda: seen, what="the call to reach the BMC")
        await driver_type.close()
        await self.assertFailure(pending, UnreachableError)
        self.assertFalse(any(t.is_alive() for t in driver_type.pool.threads))
        await self.assertFailure(driver.query(), UnreachableError)

    async def test_close_bounded_even_if_threads_stay(self):
        clock, driver_type = self.clocked(close_timeout=0.2)
        driver = self.driver(driver_type, timeout=30)
        await driver.query()
        seen = self.arrivals()
        self.bmc.faults = attrs.evolve(REALISTIC, hang=True)
        pending = driver.query()
        await until(lambda: seen, what="the call to reach the BMC")
        # A thread that ignores the abort: pretend it by hiding the session.
        session = driver.slot.command.ipmi_session
        driver.slot.command = None
        closing = driver_type.close()
        self.assertNoResult(closing)  # the thread is still there...
        clock.advance(0.2)  # ...and close gives up on it at its bound, there and then
        self.successResultOf(closing)
        ipmi.abort_session(session)
        pending.cancel()
        await self.assertFailure(pending, defer.CancelledError, PowerTimeout,
                                 UnreachableError)
        await driver.quiesced()



class KeepingTests(IpmiDriverTestCase):
    """
    Idle sessions are kept at most ``max_idle`` seconds (on the driver's
    clock) and at most ``max_sessions`` of them, then logged out (issue 14).
    Times are binary fractions so that the clock's sums are exact.
    """

    def logouts(self, bmc=None):
        return len((bmc or self.bmc).commands(netfn=6, command=0x3C))

    async def test_logged_out_once_idle_max_idle(self):
        clock, driver_type = self.clocked(max_idle=5)
        driver = self.driver(driver_type)
        await driver.query()
        self.assertEqual(driver_type.sessions, 1)
        clock.advance(4.75)
        self.assertFalse(driver.slot.running)
        self.assertEqual(driver_type.sessions, 1)
        clock.advance(0.25)  # idle max_idle, to the tick: the logout starts
        self.assertTrue(driver.slot.running)
        self.assertEqual(driver_type.sessions, 0)
        await driver.quiesced()
        self.assertEqual(self.logouts(), 1)
        self.assertEqual(await driver.query(), PowerState.OFF)
        self.assertEqual(self.bmc.logins, 2)  # logged in anew
        self.assertEqual([c.getTime() for c in clock.getDelayedCalls()], [10])

    async def test_reused_while_younger_than_max_idle(self):
        clock, driver_type = self.clocked(max_idle=4)
        driver = self.driver(driver_type)
        await driver.query()
        clock.advance(3.5)
        await driver.query()  # reused: its idle time starts again at 3.5
        clock.advance(3.5)
        self.assertEqual(driver_type.sessions, 1)
        self.assertEqual((self.bmc.logins, self.logouts()), (1, 0))
        clock.advance(0.5)
        await driver.quiesced()
        self.assertEqual((self.bmc.logins, self.logouts()), (1, 1))
        self.assertEqual(driver_type.sessions, 0)
        self.assertEqual(clock.getDelayedCalls(), [])  # nothing idle: no timer

    async def test_least_recently_used_logged_out_over_max_sessions(self):
        others = [sim.start(reactor, {"password": PASSWORD, "latency": 0.002})
                  for _ in range(2)]
        for other in others:
            self.addCleanup(other.stop)
        bmcs = [self.bmc] + [o.bmc() for o in others]
        clock, driver_type = self.clocked(max_sessions=2)
        a, b, c = (self.driver(driver_type, port=bmc.port) for bmc in bmcs)
        await a.query()
        await b.query()
        await a.query()  # b is now the least recently used
        await c.query()  # one idle session too many
        await b.quiesced()
        self.assertEqual([self.logouts(bmc) for bmc in bmcs], [0, 1, 0])
        self.assertEqual(driver_type.sessions, 2)
        await a.query()
        await c.query()
        self.assertEqual([bmc.logins for bmc in bmcs], [1, 1, 1])  # a and c reused

    async def test_no_bound_on_number(self):
        other = sim.start(reactor, {"password": PASSWORD, "latency": 0.002})
        self.addCleanup(other.stop)
        clock, driver_type = self.clocked(max_sessions=None)
        await self.driver(driver_type).query()
        await self.driver(driver_type, port=other.port).query()
        self.assertEqual(driver_type.sessions, 2)

    async def test_bound_zero_logs_out_after_every_call(self):
        clock, driver_type = self.clocked(max_sessions=0)
        driver = self.driver(driver_type)
        for n in range(1, 3):
            self.assertEqual(await driver.query(), PowerState.OFF)
            await driver.quiesced()
            self.assertEqual((self.bmc.logins, self.logouts()), (n, n))
        self.assertEqual(driver_type.sessions, 0)
        self.assertEqual(clock.getDelayedCalls(), [])

    async def test_a_call_waiting_for_the_bmc_keeps_its_session(self):
        """A call holds the BMC (waiting out ``min_interval``): no logout under it."""
        clock, driver_type = self.clocked(max_idle=5)
        driver = self.driver(driver_type)
        await driver.query()
        clock.advance(4)
        await driver.query()  # idle from 4: due at 9
        clock.advance(4)
        pending = self.driver(driver_type, min_interval=6, timeout=30).query()  # waits until 10
        clock.advance(1)  # 9: the timer fires while the call holds the BMC
        self.assertFalse(driver.slot.running)
        self.assertEqual(self.logouts(), 0)
        self.assertIsNotNone(driver.slot.command)
        clock.advance(1)
        self.assertEqual(await pending, PowerState.OFF)
        await driver.quiesced()
        # idle 6 s by then, too long to reuse: the call itself logged out and in
        self.assertEqual((self.bmc.logins, self.logouts()), (2, 1))
        self.assertEqual(driver_type.sessions, 1)

    async def test_close_cancels_the_timer(self):
        clock, driver_type = self.clocked(max_idle=5)
        await self.driver(driver_type).query()
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        await driver_type.close()
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(self.logouts(), 1)  # close logs out what was kept

    async def test_retired_session_refers_not_to_itself(self):
        """Logged out, a session is no cycle: it is freed when dropped, not by the GC."""
        import gc

        clock, driver_type = self.clocked(max_idle=5)
        driver = self.driver(driver_type)
        await driver.query()
        session = driver.slot.command.ipmi_session
        clock.advance(5)
        await driver.quiesced()
        self.assertEqual(self.logouts(), 1)
        reachable = set()
        todo = [session.__dict__]
        while todo:  # everything the session's attributes lead to, two levels down
            for o in gc.get_referents(todo.pop()):
                if id(o) not in reachable and not isinstance(o, type):
                    reachable.add(id(o))
                    if len(reachable) < 500:
                        todo.extend(gc.get_referents(o))
        self.assertNotIn(id(session), reachable)

    def test_equal_credentials_shared(self):
        """Drivers logging in alike share one Credentials (memory, issue 14); not others."""
        import gc

        a = self.driver(port=1001)
        b = self.driver(port=1002)
        c = self.driver(port=1003, password="other")
        self.assertIs(a.credentials, b.credentials)
        self.assertIsNot(a.credentials, c.credentials)
        self.assertEqual(c.credentials.password, b"other")
        self.assertEqual(len(self.driver_type._logins), 2)
        del a, b, c
        gc.collect()
        self.assertEqual(len(self.driver_type._logins), 0)  # kept only while used
