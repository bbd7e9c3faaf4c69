"""The Redfish simulator, spoken to with plain HTTP (no driver logic)."""

import argparse
import base64

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from powerctl.drivers.errors import UnreachableError
from powerctl.drivers.http import HttpClients
from powerctl.sim import redfish as simredfish
from powerctl.sim.redfish import RedfishSimulator, SimSystem, make_systems
from powerctl.testing.waiting import until

BASIC = {"Authorization": "Basic " + base64.b64encode(b"admin:secret").decode()}


class SimTests(unittest.TestCase):
    def start(self, systems=None, **kwargs):
        kwargs.setdefault("username", "admin")
        kwargs.setdefault("password", "secret")
        self.sim = RedfishSimulator(reactor, systems or make_systems(2), **kwargs).start()
        self.addCleanup(self.sim.stop)
        self.http = HttpClients(reactor, 2.0)
        self.addCleanup(self.http.close)
        return self.sim

    def call(self, method, path, headers=BASIC, body=None, verify=True, follow=True):
        client = self.http.get(verify)
        if not follow:
            client.redirect_limit = 0
        d = client.request(method, self.sim.url + path, headers=headers, json_body=body)
        return d

    @defer.inlineCallbacks
    def test_root_is_public_and_lists_systems(self):
        self.start(make_systems(50))
        root = (yield self.call("GET", "/redfish/v1/", headers={})).json()
        self.assertEqual(root["Systems"]["@odata.id"], "/redfish/v1/Systems")
        collection = (yield self.call("GET", "/redfish/v1/Systems")).json()
        self.assertEqual(collection["Members@odata.count"], 50)
        self.assertEqual(len(self.sim.systems), 50)

    @defer.inlineCallbacks
    def test_authentication_required(self):
        self.start()
        response = yield self.call("GET", "/redfish/v1/Systems", headers={})
        self.assertEqual(response.code, 401)
        self.assertIn("message", response.json()["error"])

    @defer.inlineCallbacks
    def test_name_redirects_with_307(self):
        self.start()
        response = yield self.http.get(True)._one(
            "GET", self.sim.url + "/redfish/v1/Systems/node2", BASIC, None, None)
        self.assertEqual(response.code, 307)
        self.assertEqual(response.header(b"location"), b"/redfish/v1/Systems/node-id-2")
        doc = (yield self.call("GET", "/redfish/v1/Systems/node2")).json()
        self.assertEqual(doc["Id"], "node-id-2")

    @defer.inlineCallbacks
    def test_reset_goes_through_transitional_state(self):
        self.start(delay=0.1)
        path = "/redfish/v1/Systems/node-id-1"
        response = yield self.call("POST", path + "/Actions/ComputerSystem.Reset",
                                   body={"ResetType": "On"})
        self.assertEqual(response.code, 204)
        self.assertEqual((yield self.call("GET", path)).json()["PowerState"], "PoweringOn")
        yield task.deferLater(reactor, 0.15, lambda: None)
        self.assertEqual((yield self.call("GET", path)).json()["PowerState"], "On")

    @defer.inlineCallbacks
    def test_power_cycle_from_on(self):
        self.start([SimSystem("1", "one", power_state="On")], delay=0.05)
        yield self.call("POST", "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset",
                        body={"ResetType": "PowerCycle"})
        self.assertEqual(self.sim.systems["1"].power_state, "PoweringOff")
        yield task.deferLater(reactor, 0.07, lambda: None)
        self.assertEqual(self.sim.systems["1"].power_state, "PoweringOn")
        yield task.deferLater(reactor, 0.07, lambda: None)
        self.assertEqual(self.sim.systems["1"].power_state, "On")

    @defer.inlineCallbacks
    def test_reset_type_not_allowed(self):
        self.start([SimSystem("1", "one", reset_types=("On",))])
        response = yield self.call("POST", "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset",
                                   body={"ResetType": "ForceOff"})
        self.assertEqual(response.code, 400)
        self.assertEqual(response.json()["error"]["code"],
                         "Base.1.0.ActionParameterValueNotInList")

    @defer.inlineCallbacks
    def test_sessions(self):
        self.start()
        bad = yield self.call("POST", "/redfish/v1/SessionService/Sessions", headers={},
                              body={"UserName": "admin", "Password": "nope"})
        self.assertEqual(bad.code, 401)
        response = yield self.call("POST", "/redfish/v1/SessionService/Sessions", headers={},
                                   body={"UserName": "admin", "Password": "secret"})
        self.assertEqual(response.code, 201)
        token = {"X-Auth-Token": response.header(b"x-auth-token").decode()}
        self.assertEqual(self.sim.live_sessions, 1)
        self.assertEqual((yield self.call("GET", "/redfish/v1/Systems", headers=token)).code, 200)
        where = response.header(b"location").decode()
        self.assertEqual((yield self.call("DELETE", where, headers=token)).code, 204)
        self.assertEqual(self.sim.live_sessions, 0)
        self.assertEqual((yield self.call("GET", "/redfish/v1/Systems", headers=token)).code, 401)

    @defer.inlineCallbacks
    def test_faults(self):
        self.start()
        self.sim.fault("error", match="/Systems", times=1)
        self.assertEqual((yield self.call("GET", "/redfish/v1/Systems")).code, 500)
        self.assertEqual((yield self.call("GET", "/redfish/v1/Systems")).code, 200)
        # (a GET on a reused connection is retried once by Twisted, a POST is not)
        self.sim.fault("drop", times=1)
        yield self.assertFailure(self.call("POST", "/redfish/v1/SessionService/Sessions",
                                           body={}), UnreachableError)
        self.sim.fault("hang")
        d = self.call("GET", "/redfish/v1/")
        yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertNoResult(d)
        self.assertEqual(self.sim.open_connections, 1)
        d.cancel()
        yield self.assertFailure(d, defer.CancelledError)

    @defer.inlineCallbacks
    def test_latency(self):
        self.start(latency=0.1)
        self.sim.reactor = clock = task.Clock()  # the simulator's timers: the test's from now on
        d = self.call("GET", "/redfish/v1/")
        yield defer.ensureDeferred(until(clock.getDelayedCalls, what="the request to arrive"))
        clock.advance(0.099)
        self.assertTrue(clock.getDelayedCalls()[0].active())  # not answered a tick early
        clock.advance(0.001)
        self.assertEqual(clock.getDelayedCalls(), [])
        response = yield d
        self.assertEqual(response.code, 200)

    @defer.inlineCallbacks
    def test_https_self_signed(self):
        self.start(tls=True)
        self.assertIn(b"BEGIN CERTIFICATE", self.sim.certificate)
        self.assertEqual((yield self.call("GET", "/redfish/v1/", verify=False)).code, 200)

    @defer.inlineCallbacks
    def test_stop_leaves_nothing(self):
        self.start(delay=10)
        yield self.call("POST", "/redfish/v1/Systems/node-id-1/Actions/ComputerSystem.Reset",
                        body={"ResetType": "On"})
        self.sim.fault("hang")
        hung = self.call("POST", "/redfish/v1/Systems/node-id-1/Actions/ComputerSystem.Reset",
                         body={"ResetType": "On"})
        yield task.deferLater(reactor, 0.05, lambda: None)
        yield self.http.close()
        yield self.sim.stop()
        yield self.assertFailure(hung, UnreachableError)
        left = [c for c in reactor.getDelayedCalls() if "onTimeout" not in repr(c)]
        self.assertEqual(left, [])

    @defer.inlineCallbacks
    def test_cli_entry_points(self):
        parser = simredfish.add_arguments(argparse.ArgumentParser())
        options = parser.parse_args(["--systems", "50", "--delay", "0", "--no-auth"])
        sim = simredfish.start(reactor, options)
        try:
            self.assertGreater(sim.port, 0)
            self.assertEqual(len(sim.systems), 50)
            self.assertIsNone(sim.username)
        finally:
            yield sim.stop()
