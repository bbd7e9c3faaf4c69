"""The webhook driver against a tiny twisted.web endpoint on loopback."""

import base64

from twisted.internet import defer, reactor
from twisted.trial import unittest
from twisted.web import resource, server

from powerctl.drivers.base import Command
from powerctl.drivers.errors import (
    AuthenticationError,
    InvalidParameters,
    PowerTimeout,
    ProtocolError,
    UnsupportedError,
)
from powerctl.drivers.interface import Timing
from powerctl.drivers.webhook import StateMatcher, WebhookDriverType
from powerctl.power import PowerState

FAST = Timing(timeout=1.0, retries=0, backoff=0.01, verify_timeout=1.0, poll_interval=0.02)


class Hook(resource.Resource):
    """/on, /off switch; /status answers ``template % state``; /hang never answers."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.state = "off"
        self.template = "power is %s"
        self.calls = []
        self.credentials = None
        self.status = 200

    def render(self, request):
        path = request.path.decode()
        self.calls.append((request.method.decode(), path,
                           request.getHeader("x-api-key"), request.getHeader("authorization")))
        if self.credentials and request.getHeader("authorization") != self.credentials:
            request.setResponseCode(401)
            return b"no"
        if path == "/hang":
            return server.NOT_DONE_YET
        request.setResponseCode(self.status)
        if path in ("/on", "/off"):
            self.state = path[1:]
            return b"ok"
        if path == "/status":
            return (self.template % self.state).encode()
        request.setResponseCode(404)
        return b"?"


class WebhookTests(unittest.TestCase):
    def setUp(self):
        self.hook = Hook()
        site = server.Site(self.hook)
        site.log = lambda request: None
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.type = WebhookDriverType(reactor, timing=FAST)
        self.addCleanup(self.type.close)

    def driver(self, query=True, **params):
        params.setdefault("on_url", self.base + "/on")
        params.setdefault("off_url", self.base + "/off")
        if query:
            params.setdefault("query_url", self.base + "/status")
        return self.type.bind(self.type.schema.validate(params))

    def test_schema(self):
        schema = self.type.schema
        self.assertEqual([p.name for p in schema.params], [
            "on_url", "off_url", "query_url", "method", "headers", "username", "password",
            "query_on_regex", "query_off_regex", "verify_tls", "timeout"])
        for bad in ({"off_url": self.base}, {"on_url": self.base, "off_url": "nope"},
                    {"on_url": self.base, "off_url": self.base, "query_on_regex": "("},
                    {"on_url": self.base, "off_url": self.base, "headers": "x"},
                    {"on_url": self.base, "off_url": self.base, "method": "DELETE"}):
            self.assertRaises(InvalidParameters, schema.validate, bad)
        self.assertEqual(self.hook.calls, [])

    @defer.inlineCallbacks
    def test_on_off_query_verified(self):
        driver = self.driver()
        self.assertTrue(driver.capabilities.queryable)
        self.assertEqual((yield driver.query()), PowerState.OFF)
        self.assertEqual((yield driver.on()), PowerState.ON)
        self.assertEqual((yield driver.off()), PowerState.OFF)
        self.assertEqual((yield driver.cycle()), PowerState.ON)
        methods = [(m, p) for m, p, _, _ in self.hook.calls if p != "/status"]
        # the cycle found it off already: only the verified on was needed
        self.assertEqual(methods, [("POST", "/on"), ("POST", "/off"), ("POST", "/on")])
        self.assertTrue(all(m == "GET" for m, p, _, _ in self.hook.calls if p == "/status"))

    @defer.inlineCallbacks
    def test_regexes(self):
        self.hook.template = '{"PowerState": "%s"}'
        driver = self.driver(query_on_regex='"PowerState": "on"',
                             query_off_regex='"PowerState": "off"')
        self.assertEqual((yield driver.query()), PowerState.OFF)
        self.hook.state = "unknown"
        yield self.assertFailure(driver.query(), ProtocolError)

    def test_matcher_rules(self):
        only_on = StateMatcher.from_settings("RUNNING", None)
        self.assertEqual(only_on.match("state: RUNNING"), PowerState.ON)
        self.assertEqual(only_on.match("state: stopped"), PowerState.OFF)
        only_off = StateMatcher.from_settings(None, "stopped")
        self.assertEqual(only_off.match("stopped"), PowerState.OFF)
        self.assertEqual(only_off.match("anything else"), PowerState.ON)
        default = StateMatcher.from_settings(None, None)
        self.assertEqual(default.match("Power: ON"), PowerState.ON)
        self.assertEqual(default.match("power: off"), PowerState.OFF)
        self.assertIsNone(default.match("on or off?"))

    @defer.inlineCallbacks
    def test_method_headers_and_basic_auth(self):
        self.hook.credentials = "Basic " + base64.b64encode(b"ops:pw").decode()
        driver = self.driver(method="PUT", headers={"X-Api-Key": "k1"},
                             username="ops", password="pw")
        yield driver.on()
        self.assertIn(("PUT", "/on", "k1", self.hook.credentials), self.hook.calls)
        self.assertTrue(all(key == "k1" for _, _, key, _ in self.hook.calls))

    @defer.inlineCallbacks
    def test_wrong_credentials(self):
        self.hook.credentials = "Basic " + base64.b64encode(b"ops:pw").decode()
        error = yield self.assertFailure(
            self.driver(username="ops", password="bad-pw").on(), AuthenticationError)
        self.assertNotIn("bad-pw", str(error))

    @defer.inlineCallbacks
    def test_not_queryable_succeeds_on_2xx_unverified(self):
        driver = self.driver(query=False)
        self.assertFalse(driver.capabilities.queryable)
        self.hook.state = "on"
        self.assertEqual((yield driver.on()), PowerState.ON)  # sent anyway: cannot know
        self.assertEqual((yield driver.cycle()), PowerState.ON)
        self.assertEqual([p for _, p, _, _ in self.hook.calls], ["/on", "/off", "/on"])
        yield self.assertFailure(driver.query(), UnsupportedError)
        yield self.assertFailure(driver.soft_off(), UnsupportedError)

    @defer.inlineCallbacks
    def test_error_status(self):
        driver = self.driver(query=False)
        self.hook.status = 503
        error = yield self.assertFailure(driver.off(), ProtocolError)
        self.assertIn("503", str(error))

    @defer.inlineCallbacks
    def test_timeout_and_no_secret_in_messages(self):
        driver = self.driver(query=False, on_url=self.base + "/hang?token=s3cret", timeout=0.2)
        error = yield self.assertFailure(driver.on(), PowerTimeout)
        self.assertNotIn("s3cret", str(error))

    @defer.inlineCallbacks
    def test_send_unsupported_command(self):
        yield self.assertFailure(self.driver().send(Command.SOFT_OFF), UnsupportedError)


class WebhookLimitTests(unittest.TestCase):
    """Per-BMC slots and circuit budgets on a webhook agent (pacing on a Clock)."""

    driver = WebhookTests.driver

    def setUp(self):
        WebhookTests.setUp(self)
        from twisted.internet import task

        from powerctl.drivers.bmclimit import BmcLimiter, BmcLimits
        from powerctl.pserv.circuits import Circuit, CircuitBudgets

        self.clock = task.Clock()
        self.limiter = BmcLimiter(self.clock, BmcLimits(max_sessions=1, min_interval=5.0))
        self.type = WebhookDriverType(reactor, timing=FAST, limiter=self.limiter)
        self.addCleanup(self.type.close)
        self.budgets = CircuitBudgets(self.clock)
        self.budgets.learn(Circuit("A", 1, 3.0))

    async def test_calls_to_one_device_are_spaced(self):
        a, b = self.driver(query=False), self.driver(query=False)
        self.assertEqual(a.bmc.address, f"127.0.0.1:{self.port.getHost().port}")
        self.assertEqual(await a.on(), PowerState.ON)
        d = b.off()
        self.assertEqual(len(self.hook.calls), 1)  # the 5 s interval holds b back
        self.clock.advance(5.0)
        self.assertEqual(await d, PowerState.OFF)
        self.assertEqual([c[1] for c in self.hook.calls], ["/on", "/off"])

    async def test_an_unverified_power_on_takes_the_circuit_budget(self):
        self.type.limiter = None
        a, b = self.driver(query=False), self.driver(query=False)
        a.circuit = b.circuit = self.budgets.gate("A")
        self.assertEqual(await a.on(), PowerState.ON)
        d = b.on()
        self.assertEqual(len(self.hook.calls), 1)  # 3 s between starts on circuit A
        self.clock.advance(3.0)
        self.assertEqual(await d, PowerState.ON)
        self.assertEqual(self.budgets.pacer("A").in_use, 0)
