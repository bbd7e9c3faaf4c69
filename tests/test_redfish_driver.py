"""The redfish driver against the Redfish simulator, over real loopback sockets."""

import socket

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from powerctl.drivers.errors import (
    AuthenticationError,
    InvalidParameters,
    PowerTimeout,
    ProtocolError,
    UnreachableError,
    UnsupportedError,
)
from powerctl.drivers.interface import Timing
from powerctl.drivers.redfish import RedfishDriverType
from powerctl.power import PowerState
from powerctl.sim.redfish import RedfishSimulator, SimSystem, make_systems

FAST = Timing(timeout=1.0, retries=0, backoff=0.01, verify_timeout=2.0,
              poll_interval=0.02, soft_off_timeout=0.3)


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


class RedfishCase(unittest.TestCase):
    """Starts a simulator and a driver type; cleans both up (sessions first)."""

    use_sessions = False
    timing = FAST

    def start(self, systems=None, **kwargs):
        kwargs.setdefault("username", "admin")
        kwargs.setdefault("password", "secret")
        self.sim = RedfishSimulator(reactor, systems or make_systems(1), **kwargs).start()
        self.addCleanup(self.sim.stop)
        self.type = RedfishDriverType(reactor, timing=self.timing,
                                      use_sessions=self.use_sessions)
        self.addCleanup(self.type.close)
        return self.sim

    def driver(self, **params):
        params.setdefault("url", self.sim.url)
        params.setdefault("username", "admin")
        params.setdefault("password", "secret")
        return self.type.bind(self.type.schema.validate(params))

    def system(self, ident="node-id-1"):
        return self.sim.systems[ident]

    def system_reads(self):
        """How many times the simulator was asked for a system's state."""
        return sum(1 for r in self.sim.requests if r.startswith("GET /redfish/v1/Systems/"))


class SchemaTests(RedfishCase):
    def test_bad_parameters_send_nothing(self):
        self.start()
        schema = self.type.schema
        for params in ({}, {"url": "ftp://x"}, {"url": self.sim.url, "verify_tls": "maybe"},
                       {"url": self.sim.url, "timeout": "-1"},
                       {"url": self.sim.url, "port": 623}):
            self.assertRaises(InvalidParameters, schema.validate, params)
        self.assertEqual(
            [p.name for p in schema.params],
            ["url", "username", "password", "system", "verify_tls", "timeout"])
        self.assertEqual(schema.secrets, frozenset({"password"}))
        self.assertEqual(self.sim.requests, [])

    def test_credentials_in_url_refused_before_io(self):
        self.start()
        url = self.sim.url.replace("://", "://admin:secret@")
        error = self.assertRaises(InvalidParameters, self.driver, url=url)
        self.assertNotIn("secret", str(error))
        self.assertEqual(self.sim.requests, [])


class DiscoveryTests(RedfishCase):
    @defer.inlineCallbacks
    def test_single_system_needs_no_name(self):
        self.start()
        self.assertEqual((yield self.driver().query()), PowerState.OFF)

    @defer.inlineCallbacks
    def test_many_systems_need_a_name(self):
        self.start(make_systems(3))
        error = yield self.assertFailure(self.driver().query(), InvalidParameters)
        self.assertIn("node-id-1, node-id-2, node-id-3", str(error))
        self.assertEqual(error.parameter, "system")

    @defer.inlineCallbacks
    def test_by_id_and_by_uri(self):
        self.start(make_systems(3))
        self.system("node-id-2").power_state = "On"
        self.assertEqual((yield self.driver(system="node-id-2").query()), PowerState.ON)
        uri = "/redfish/v1/Systems/node-id-2"
        self.assertEqual((yield self.driver(system=uri).query()), PowerState.ON)
        self.assertNotIn("GET /redfish/v1/Systems/node-id-1", self.sim.requests)

    @defer.inlineCallbacks
    def test_by_name_follows_307(self):
        self.start(make_systems(50))
        self.system("node-id-42").power_state = "On"
        driver = self.driver(system="node42")
        self.assertEqual((yield driver.query()), PowerState.ON)
        self.assertIn("GET /redfish/v1/Systems/node42", self.sim.requests)
        before = len(self.sim.requests)
        yield driver.query()  # discovery is cached; canonical URI used
        self.assertEqual(self.sim.requests[before:], ["GET /redfish/v1/Systems/node-id-42"])

    @defer.inlineCallbacks
    def test_by_name_without_redirect_scans_members(self):
        systems = [SimSystem(id="1", name="alpha"), SimSystem(id="2", name="beta", power_state="On")]
        self.start(systems, redirect_names=False)
        self.assertEqual((yield self.driver(system="beta").query()), PowerState.ON)
        self.assertIn("GET /redfish/v1/Systems/1", self.sim.requests)

    @defer.inlineCallbacks
    def test_unknown_system(self):
        self.start(make_systems(2))
        error = yield self.assertFailure(self.driver(system="nope").query(), InvalidParameters)
        self.assertIn("no system 'nope'", str(error))

    @defer.inlineCallbacks
    def test_rediscovers_after_404(self):
        self.start(make_systems(2))
        driver = self.driver(system="node2")
        yield driver.query()
        moved = self.sim.systems.pop("node-id-2")
        moved.id = "renumbered"
        self.sim.systems["renumbered"] = moved
        self.assertEqual((yield driver.query()), PowerState.OFF)


class PowerTests(RedfishCase):
    @defer.inlineCallbacks
    def test_on_off_verified(self):
        self.start(delay=0.05)
        driver = self.driver()
        self.assertEqual((yield driver.on()), PowerState.ON)
        self.assertEqual(self.system().power_state, "On")
        self.assertEqual((yield driver.on()), PowerState.ON)  # already on: nothing sent
        self.assertEqual((yield driver.off()), PowerState.OFF)
        self.assertEqual(self.system().resets, ["On", "ForceOff"])

    @defer.inlineCallbacks
    def test_soft_off(self):
        self.start([SimSystem("1", "one", power_state="On")], delay=0.05)
        self.assertEqual((yield self.driver().soft_off()), PowerState.OFF)
        self.assertEqual(self.sim.systems["1"].resets, ["GracefulShutdown"])

    @defer.inlineCallbacks
    def test_soft_off_falls_back_to_hard_off(self):
        self.start([SimSystem("1", "one", power_state="On", ignore_graceful=True)])
        self.assertEqual((yield self.driver().soft_off()), PowerState.OFF)
        self.assertEqual(self.sim.systems["1"].resets, ["GracefulShutdown", "ForceOff"])

    @defer.inlineCallbacks
    def test_cycle(self):
        self.start([SimSystem("1", "one", power_state="On")], delay=0.05)
        self.assertEqual((yield self.driver().cycle()), PowerState.ON)
        self.assertEqual(self.sim.systems["1"].resets, ["ForceOff", "On"])

    @defer.inlineCallbacks
    def test_powering_on_is_not_yet_on(self):
        self.start(delay=0.3)
        self.sim._apply(self.system(), "On")
        self.assertEqual(self.system().power_state, "PoweringOn")
        driver = self.driver()
        self.assertEqual((yield driver.query()), PowerState.UNKNOWN)
        reads = self.system_reads()
        self.assertEqual((yield driver.on()), PowerState.ON)
        # It waited for PoweringOn to end: read the system again, until On.
        self.assertGreater(self.system_reads() - reads, 1)
        self.assertEqual(self.system().resets, [])  # it was already powering on

    @defer.inlineCallbacks
    def test_powering_off_is_unknown_until_off(self):
        self.start([SimSystem("1", "one", power_state="On")], delay=0.3)
        self.sim._apply(self.sim.systems["1"], "ForceOff")
        self.assertEqual((yield self.driver().query()), PowerState.UNKNOWN)
        self.assertEqual((yield self.driver().off()), PowerState.OFF)

    @defer.inlineCallbacks
    def test_off_during_powering_on_is_sent(self):
        # A superseding off must not take a half-done on for "off already".
        self.start(delay=0.3)
        self.sim._apply(self.system(), "On")
        self.assertEqual((yield self.driver().off()), PowerState.OFF)
        self.assertEqual(self.system().resets, ["ForceOff"])
        yield task.deferLater(reactor, 0.5, lambda: None)
        self.assertEqual(self.system().power_state, "Off")

    @defer.inlineCallbacks
    def test_verify_timeout(self):
        self.timing = Timing(timeout=1, retries=0, verify_timeout=0.2, poll_interval=0.02)
        self.start(delay=5)
        yield self.assertFailure(self.driver().on(), PowerTimeout)

    @defer.inlineCallbacks
    def test_reset_types_follow_what_is_advertised(self):
        self.start([SimSystem("1", "one", reset_types=("ForceOn", "ForceOff", "PowerCycle"))])
        driver = self.driver()
        yield driver.on()
        self.assertEqual(self.sim.systems["1"].resets, ["ForceOn"])
        yield self.assertFailure(driver.soft_off(), UnsupportedError)
        yield driver.send(driver_command("CYCLE"))
        self.assertEqual(self.sim.systems["1"].resets, ["ForceOn", "PowerCycle"])

    @defer.inlineCallbacks
    def test_unsupported_reset_type(self):
        self.start([SimSystem("1", "one", reset_types=("GracefulRestart", "Nmi"))])
        error = yield self.assertFailure(self.driver().on(), UnsupportedError)
        self.assertIn("GracefulRestart, Nmi", str(error))
        self.assertEqual(self.sim.systems["1"].resets, [])

    @defer.inlineCallbacks
    def test_action_info(self):
        self.start([SimSystem("1", "one", reset_types=("ForceOn", "ForceOff"), action_info=True)])
        yield self.driver().on()
        self.assertIn("GET /redfish/v1/Systems/1/ResetActionInfo", self.sim.requests)
        self.assertEqual(self.sim.systems["1"].resets, ["ForceOn"])

    @defer.inlineCallbacks
    def test_post_follows_307_with_body(self):
        self.start(make_systems(2), name_targets=True)
        yield self.driver(system="node-id-2").on()
        self.assertIn("POST /redfish/v1/Systems/node2/Actions/ComputerSystem.Reset",
                      self.sim.requests)
        self.assertEqual(self.system("node-id-2").resets, ["On"])


def driver_command(name):
    from powerctl.drivers.base import Command

    return Command[name]


class ErrorTests(RedfishCase):
    @defer.inlineCallbacks
    def test_wrong_password(self):
        self.start()
        error = yield self.assertFailure(self.driver(password="wrong").query(),
                                         AuthenticationError)
        self.assertNotIn("wrong", str(error))
        self.assertIn("authentication required", str(error))

    @defer.inlineCallbacks
    def test_hang_times_out_and_frees_the_socket(self):
        self.timing = Timing(timeout=0.2, retries=1, backoff=0.01)
        self.start()
        self.sim.fault("hang")
        yield self.assertFailure(self.driver().query(), PowerTimeout)
        self.assertEqual(self.sim.requests, ["GET /redfish/v1", "GET /redfish/v1"])
        yield sleep(0.01)
        self.assertEqual(self.sim.open_connections, 0)

    @defer.inlineCallbacks
    def test_drop(self):
        self.start()
        self.sim.fault("drop")
        yield self.assertFailure(self.driver().query(), UnreachableError)

    @defer.inlineCallbacks
    def test_500_with_redfish_message(self):
        self.start()
        self.sim.fault("error", match="GET /redfish/v1/Systems")
        error = yield self.assertFailure(self.driver().query(), ProtocolError)
        self.assertIn("500", str(error))
        self.assertIn("simulated internal error", str(error))

    @defer.inlineCallbacks
    def test_transient_fault_is_retried(self):
        self.timing = Timing(timeout=1, retries=2, backoff=0.01)
        self.start()
        self.sim.fault("drop", times=2)
        self.assertEqual((yield self.driver().query()), PowerState.OFF)

    @defer.inlineCallbacks
    def test_refused(self):
        self.start()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        error = yield self.assertFailure(
            self.driver(url=f"http://127.0.0.1:{port}").query(), UnreachableError)
        self.assertIn("cannot connect", str(error))

    @defer.inlineCallbacks
    def test_bad_json(self):
        self.start()
        driver = self.driver()
        yield driver.query()
        self.sim.systems["node-id-1"].power_state = "Exploded"
        yield self.assertFailure(driver.query(), ProtocolError)


class TlsTests(RedfishCase):
    @defer.inlineCallbacks
    def test_self_signed_without_verification(self):
        self.start(tls=True)
        self.assertTrue(self.sim.url.startswith("https://"))
        self.assertEqual((yield self.driver(verify_tls=False).on()), PowerState.ON)

    @defer.inlineCallbacks
    def test_self_signed_refused_when_verifying(self):
        self.start(tls=True)
        error = yield self.assertFailure(self.driver().query(), ProtocolError)
        self.assertIn("TLS", str(error))
        self.assertEqual(self.sim.requests, [])


class CancellationTests(RedfishCase):
    @defer.inlineCallbacks
    def test_cancel_aborts_connection_and_leaves_no_timer(self):
        self.start()
        self.sim.fault("hang")
        d = self.driver().on()
        yield sleep(0.05)
        self.assertEqual(self.sim.open_connections, 1)
        d.cancel()
        yield self.assertFailure(d, defer.CancelledError)
        yield sleep(0.01)
        self.assertEqual(self.sim.open_connections, 0)
        yield self.type.close()
        yield self.sim.stop()
        left = [c for c in reactor.getDelayedCalls() if "onTimeout" not in repr(c)]
        self.assertEqual(left, [])  # trial's own test timeout aside


class SessionTests(RedfishCase):
    use_sessions = True

    @defer.inlineCallbacks
    def test_one_session_reused_then_deleted(self):
        self.start(make_systems(2), delay=0.02)
        yield self.driver(system="node1").on()
        yield self.driver(system="node2").cycle()
        self.assertEqual((self.sim.sessions_created, self.sim.live_sessions), (1, 1))
        yield self.type.close()
        self.assertEqual(self.sim.live_sessions, 0)
        self.assertTrue(any(r.startswith("DELETE /redfish/v1/SessionService/Sessions/")
                            for r in self.sim.requests))

    @defer.inlineCallbacks
    def test_no_basic_auth_with_sessions(self):
        self.start()
        yield self.driver().query()
        self.sim.username = "someone-else"  # basic auth would now fail; the token works
        self.assertEqual((yield self.driver().query()), PowerState.OFF)

    @defer.inlineCallbacks
    def test_expired_session_logs_in_again(self):
        self.start()
        yield self.driver().query()
        self.sim.sessions.clear()
        self.assertEqual((yield self.driver().query()), PowerState.OFF)
        self.assertEqual(self.sim.sessions_created, 2)
        yield self.type.close()
        self.assertEqual(self.sim.live_sessions, 0)

    @defer.inlineCallbacks
    def test_wrong_password_at_login(self):
        self.start()
        yield self.assertFailure(self.driver(password="nope").query(), AuthenticationError)
        self.assertEqual(self.sim.live_sessions, 0)

    @defer.inlineCallbacks
    def test_cancel_during_login_leaks_nothing(self):
        self.start(latency=0.1)
        driver = self.driver()
        d = driver.on()
        yield sleep(0.15)  # the login POST is in flight
        self.assertEqual(self.sim.requests[-1], "POST /redfish/v1/SessionService/Sessions")
        d.cancel()
        yield self.assertFailure(d, defer.CancelledError)
        yield driver.quiesced()  # the login finishes on its own
        self.assertEqual(self.sim.live_sessions, 1)
        yield self.type.close()
        self.assertEqual((self.sim.sessions_created, self.sim.live_sessions), (1, 0))

    @defer.inlineCallbacks
    def test_login_hang_times_out(self):
        self.timing = Timing(timeout=0.2, retries=0)
        self.start()
        self.sim.fault("hang", match="POST /redfish/v1/SessionService/Sessions")
        yield self.assertFailure(self.driver().query(), PowerTimeout)
        yield self.type.close()
        self.assertEqual((self.sim.sessions_created, self.sim.live_sessions), (0, 0))

    @defer.inlineCallbacks
    def test_cancel_mid_operation_then_close(self):
        self.start(delay=5)
        d = self.driver().on()
        yield sleep(0.1)  # now verifying: polling a system that takes 5 s
        d.cancel()
        yield self.assertFailure(d, defer.CancelledError)
        yield self.type.close()
        self.assertEqual(self.sim.live_sessions, 0)


class AnswersOfRealBmcsTests(RedfishCase):
    """A 202 with a task monitor, and a 409 for "already in that state"."""

    def monitor_gets(self):
        return [r for r in self.sim.log if r.method == "GET" and "/TaskMonitors/" in r.path]

    async def test_a_202_task_monitor_is_followed_honouring_retry_after(self):
        self.start(delay=0.3, task_monitor=True, retry_after=1)
        state = await self.driver().on()
        self.assertEqual(state, PowerState.ON)
        self.assertEqual(self.system().resets, ["On"])
        gets = self.monitor_gets()
        self.assertEqual(len(gets), 2, [(r.time, r.path) for r in self.sim.log])
        # The second poll came after the Retry-After of the first answer.
        self.assertGreaterEqual(gets[1].time - gets[0].time, 1.0)

    async def test_a_task_that_never_ends_is_bounded(self):
        self.start(delay=30.0, task_monitor=True, retry_after=1)
        with self.assertRaises(PowerTimeout) as caught:
            await self.driver().on()
        self.assertIn("task: still running 2s after the command", str(caught.exception))
        self.assertLessEqual(len(self.monitor_gets()), 4)

    async def test_a_failed_task_is_a_protocol_error(self):
        self.start(delay=0.0, task_monitor=True, retry_after=0)
        self.sim.task_outcome = "Exception"
        with self.assertRaises(ProtocolError) as caught:
            await self.driver().on()
        self.assertIn("the task ended Exception: simulated task failure", str(caught.exception))

    async def test_a_monitor_gone_once_done_is_fine(self):
        self.start(delay=0.2, task_monitor=True, retry_after=0)
        self.system().power_state = "On"
        self.sim.tasks = _Vanishing()  # some BMCs drop a finished task's monitor
        self.assertEqual(await self.driver().off(), PowerState.OFF)
        self.assertEqual(len(self.monitor_gets()), 1)

    async def test_409_for_the_state_it_is_in_is_success_after_a_query(self):
        self.start(delay=0.0, conflict_when_already=True)
        driver = self.driver()
        from powerctl.drivers.base import Command

        await driver.send(Command.OFF)  # the system is off: iDRAC answers 409
        posts = [r for r in self.sim.log if r.method == "POST"]
        self.assertEqual([r.reset_type for r in posts], ["ForceOff"])
        self.assertEqual(self.system().resets, [])  # nothing was applied
        last = self.sim.log[-1]
        self.assertEqual((last.method, last.path), ("GET", self.system().uri))

    async def test_409_in_another_state_stands(self):
        self.start(delay=0.0)
        self.system().power_state = "On"
        self.sim.fault("conflict", "POST")
        with self.assertRaises(ProtocolError) as caught:
            await self.driver().off()
        self.assertIn("HTTP 409", str(caught.exception))
        self.assertEqual(self.system().power_state, "On")

    def test_retry_after_parsing(self):
        from powerctl.drivers.redfish import MAX_RETRY_AFTER, retry_after

        class R:
            def __init__(self, value):
                self.value = value

            def header(self, name):
                return self.value

        self.assertEqual(retry_after(R(b"3"), 0.5), 3.0)
        self.assertEqual(retry_after(R(None), 0.5), 0.5)
        self.assertEqual(retry_after(R(b"Wed, 21 Oct 2015 07:28:00 GMT"), 0.5), 0.5)
        self.assertEqual(retry_after(R(b"-1"), 0.5), 0.5)
        self.assertEqual(retry_after(R(b"86400"), 0.5), MAX_RETRY_AFTER)
        self.assertGreater(retry_after(R(b"0"), 0.5), 0)


class _Vanishing(dict):
    """Task monitors that are gone as soon as they are asked for (404)."""

    def get(self, key, default=None):
        return None

    def __setitem__(self, key, value):
        pass


class SharedDiscoveryTests(RedfishCase):
    """
    A service is listed once per account and shared by its agents; the
    system resource discovery fetched answers the query that needed it.
    """

    def count(self, line):
        return self.sim.requests.count(line)

    @defer.inlineCallbacks
    def test_agents_of_one_service_list_it_once(self):
        self.start(make_systems(20))
        drivers = [self.driver(system=f"node-id-{n}") for n in range(1, 21)]
        states = yield defer.gatherResults([d.query() for d in drivers])
        self.assertEqual(states, [PowerState.OFF] * 20)
        self.assertEqual((self.count("GET /redfish/v1"), self.count("GET /redfish/v1/Systems")),
                         (1, 1))
        for n in range(1, 21):  # one GET each: discovery's answers the query
            self.assertEqual(self.count(f"GET /redfish/v1/Systems/node-id-{n}"), 1)
        yield defer.gatherResults([d.query() for d in drivers])
        self.assertEqual(len(self.sim.requests), 2 + 20 + 20)

    @defer.inlineCallbacks
    def test_what_agents_keep_is_shared(self):
        self.start(make_systems(3))
        a, b = self.driver(system="node-id-1"), self.driver(system="node-id-2")
        yield defer.gatherResults([a.query(), b.query()])
        self.assertIs(a._service, b._service)
        info_a = self.type.discovered(a.root, "node-id-1")
        info_b = self.type.discovered(b.root, "node-id-2")
        self.assertIs(info_a.reset_types, info_b.reset_types)
        self.assertIn(info_a.uri, a._service.listing.members)
        self.assertIs(info_a.uri, a._service.listing.members[0])  # the same string
        self.assertEqual(info_a.reset_uri(),
                         "/redfish/v1/Systems/node-id-1/Actions/ComputerSystem.Reset")
        self.assertIs(a.bmc, b.bmc)  # no limiter here: both None

    @defer.inlineCallbacks
    def test_the_service_is_dropped_with_its_last_agent(self):
        import gc

        self.start()
        driver = self.driver()
        yield driver.query()
        self.assertEqual(len(self.type._services), 1)
        del driver
        gc.collect()
        self.assertEqual(len(self.type._services), 0)

    @defer.inlineCallbacks
    def test_each_account_lists_for_itself(self):
        self.start(make_systems(2))
        wrong = self.driver(system="node-id-1", password="nope")
        right = self.driver(system="node-id-2")
        results = yield defer.DeferredList([wrong.query(), right.query()],
                                           consumeErrors=True)
        self.assertFalse(results[0][0])
        self.assertTrue(results[0][1].check(AuthenticationError))
        self.assertEqual(results[1], (True, PowerState.OFF))
        self.assertIsNot(wrong._service, right._service)

    @defer.inlineCallbacks
    def test_a_failed_listing_is_not_kept(self):
        self.start(make_systems(2))
        self.sim.fault("error", match="GET /redfish/v1/Systems", times=1)
        yield self.assertFailure(self.driver(system="node-id-1").query(), ProtocolError)
        self.assertEqual((yield self.driver(system="node-id-1").query()), PowerState.OFF)
        self.assertEqual(self.count("GET /redfish/v1/Systems"), 2)

    @defer.inlineCallbacks
    def test_cancelling_one_waiter_leaves_the_others_their_listing(self):
        self.start(make_systems(2), latency=0.1)
        first = self.driver(system="node-id-1").query()
        second = self.driver(system="node-id-2").query()
        yield sleep(0.05)  # both wait for the one root GET
        first.cancel()
        yield self.assertFailure(first, defer.CancelledError)
        self.assertEqual((yield second), PowerState.OFF)
        self.assertEqual(self.count("GET /redfish/v1"), 1)

    @defer.inlineCallbacks
    def test_a_listing_nobody_waits_for_is_cancelled(self):
        self.start()
        self.sim.fault("hang", match="GET /redfish/v1", times=1)
        driver = self.driver()
        d = driver.query()
        yield sleep(0.05)
        self.assertEqual(self.sim.open_connections, 1)
        self.assertIsNotNone(driver._service.listing_in_flight)
        d.cancel()
        yield self.assertFailure(d, defer.CancelledError)
        yield sleep(0.01)
        self.assertEqual(self.sim.open_connections, 0)
        self.assertIsNone(driver._service.listing_in_flight)
        self.assertEqual((yield driver.query()), PowerState.OFF)  # listed afresh

    @defer.inlineCallbacks
    def test_a_404_lists_the_service_again(self):
        self.start(make_systems(2))
        driver = self.driver(system="node-id-2")
        yield driver.query()
        moved = self.sim.systems.pop("node-id-2")
        moved.id = "renumbered"
        self.sim.systems["renumbered"] = moved
        self.assertEqual((yield self.driver(system="renumbered").query()), PowerState.OFF)
        self.assertEqual(self.count("GET /redfish/v1/Systems"), 2)
        self.assertEqual(self.type.discovered(driver.root, "renumbered").uri,
                         "/redfish/v1/Systems/renumbered")


class HttpPlumbingTests(RedfishCase):
    """What the HTTP layer does instead of treq (powerctl.drivers.http)."""

    def test_plain_urls_go_as_they_are_others_are_encoded(self):
        from powerctl.drivers.http import wire_url

        plain = "http://10.0.0.5:8000/redfish/v1/Systems/a-1?x=1&y=%20#f"
        self.assertEqual(wire_url(plain), plain.encode("ascii"))
        self.assertEqual(wire_url("http://h/a b"), b"http://h/a%20b")
        self.assertEqual(wire_url("http://bücher.example/x"),
                         b"http://xn--bcher-kva.example/x")

    def test_basic_auth_value(self):
        from powerctl.drivers.http import basic_auth

        self.assertEqual(basic_auth("admin", "sécret"), b"Basic YWRtaW46c8OpY3JldA==")

    def test_endpoints_are_kept_per_host_and_bounded(self):
        from twisted.web.client import URI

        from powerctl.drivers.http import NoVerifyPolicy, _Endpoints

        endpoints = _Endpoints(reactor, NoVerifyPolicy(), 1.0, size=2)
        a = endpoints.endpointForURI(URI.fromBytes(b"http://10.0.0.1/x"))
        self.assertIs(endpoints.endpointForURI(URI.fromBytes(b"http://10.0.0.1/y")), a)
        endpoints.endpointForURI(URI.fromBytes(b"https://10.0.0.2/"))
        endpoints.endpointForURI(URI.fromBytes(b"http://10.0.0.3/"))
        self.assertEqual(len(endpoints._cache), 2)
        self.assertIsNot(endpoints.endpointForURI(URI.fromBytes(b"http://10.0.0.1/")), a)

    @defer.inlineCallbacks
    def test_connections_are_reused(self):
        self.start(make_systems(8))
        drivers = [self.driver(system=f"node-id-{n}") for n in range(1, 9)]
        for _ in range(3):
            yield defer.gatherResults([d.query() for d in drivers])
        # the pool keeps 8 per host: no more connections than queries at once
        self.assertLessEqual(self.sim.open_connections, 8)
        self.assertEqual(self.type.http.per_host, 8)

    @defer.inlineCallbacks
    def test_idle_connections_are_bounded_across_hosts(self):
        from powerctl.drivers.http import IDLE_TIMEOUT

        self.start(make_systems(8))
        other = RedfishSimulator(reactor, make_systems(8), username="admin",
                                 password="secret").start()
        self.addCleanup(other.stop)
        self.type.http.max_idle = 3
        drivers = [self.driver(system=f"node-id-{n}") for n in range(1, 9)]
        drivers += [self.driver(url=other.url, system=f"node-id-{n}") for n in range(1, 9)]
        for _ in range(2):
            yield defer.gatherResults([d.query() for d in drivers])
        yield sleep(0.05)  # the closed ones are seen closed by the simulators
        self.assertLessEqual(self.sim.open_connections + other.open_connections, 3)
        pool = self.type.http._pools[0]
        self.assertEqual(len(pool._timeouts), 3)
        self.assertGreater(pool.cachedConnectionTimeout, 60)  # outlives a poll interval
        self.assertEqual(pool.cachedConnectionTimeout, IDLE_TIMEOUT)
        self.assertEqual((yield defer.gatherResults([d.query() for d in drivers])),
                         [PowerState.OFF] * 16)

    def test_idle_bound_follows_the_open_file_limit(self):
        import resource
        from unittest import mock

        from powerctl.drivers import http

        for soft, expected in ((1024, 256), (20000, 5000), (100, http.MIN_IDLE),
                               (10 ** 7, http.MAX_IDLE), (resource.RLIM_INFINITY, http.MAX_IDLE)):
            with mock.patch.object(resource, "getrlimit", return_value=(soft, soft)):
                self.assertEqual(http.max_idle(), expected, soft)

    @defer.inlineCallbacks
    def test_json_body_headers_and_user_agent(self):
        self.start()
        client = self.type.http.get(True)
        client.user_agent = "pserv-x"
        target = self.sim.url + "/redfish/v1/Systems/node-id-1/Actions/ComputerSystem.Reset"
        response = yield client.request("POST", target, json_body={"ResetType": "On"},
                                        auth=("admin", "secret"))
        self.assertEqual(response.code, 204)
        self.assertEqual(self.sim.log[-1].reset_type, "On")
        self.assertEqual(self.sim.log[-1].user_agent, "pserv-x")
        response = yield client.request("GET", self.sim.url + "/redfish/v1/Systems",
                                        headers={"User-Agent": "mine"},
                                        auth=basic_header("admin", "secret"))
        self.assertEqual(response.code, 200)
        self.assertEqual(self.sim.log[-1].user_agent, "mine")


def basic_header(user, password):
    from powerctl.drivers.http import basic_auth

    return basic_auth(user, password)
