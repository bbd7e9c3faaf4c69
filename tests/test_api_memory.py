"""
The REST API resource in memory: ``powerctl.testing.web`` (``StubTreq``)
against the real ``Api`` and an in-memory journal
(``powerctl.testing.region``), no port and no PostgreSQL.
``tests/test_api.py`` keeps the end-to-end pass over the real store.

Held here: what the HTTP layer itself decides -- status codes, the JSON
error shape, the ``Location`` header, that a power request is handed to
the region only once journalled, that secrets never leave, and that a bug
answers a 500 whose id is the one logged.
"""

from twisted.internet import task
from twisted.logger import Logger
from twisted.trial import unittest

from powerctl.drivers.catalogue import DriverCatalogue
from powerctl.region.api import api_root
from powerctl.testing.drivers import FakeDriverType
from powerctl.testing.region import FakeRegionStore
from powerctl.testing.tokens import ADMIN, admin_guard, bearer
from powerctl.testing.web import InMemoryHttp

POWER = {"mode": "single", "agents": [
    {"driver": "fake", "params": {"device": "bmc1", "password": "hunter2"}}]}


class ApiSetup:
    def setUp(self):
        self.store = FakeRegionStore()
        self.store.add_node("n1", "c1", POWER)
        self.dispatched = []
        self.http = InMemoryHttp(
            api_root(self.store, DriverCatalogue([FakeDriverType()]),
                     on_power_request=self.dispatched.append,
                     guard=admin_guard(task.Clock(), self.store)),
            headers=bearer())


class PowerRequestTests(ApiSetup, unittest.TestCase):
    def test_a_power_request_is_journalled_then_dispatched(self):
        answer = self.http.post("/v1/nodes/n1/power", json={"action": "off",
                                                             "requester": "alice"})
        self.assertEqual(answer.code, 202)
        op = answer.json()
        self.assertEqual((op["node"], op["action"], op["state"], op["requester"]),
                         ("n1", "off", "pending", ADMIN))  # the token's, not the client's
        self.assertEqual(answer.header("Location"), f"/v1/power_ops/{op['id']}")
        self.assertEqual([d["id"] for d in self.dispatched], [op["id"]])
        self.assertEqual(self.store.node_rows["n1"]["desired_state"], "off")
        self.assertEqual(self.http.get(f"/v1/power_ops/{op['id']}").json()["state"], "pending")

    def test_a_request_without_a_token_is_401_and_writes_nothing(self):
        answer = self.http.post("/v1/nodes/n1/power", json={"action": "on"},
                                headers={"Authorization": ["Bearer pct_unknown"]})
        self.assertEqual(answer.code, 401)
        self.assertEqual((self.store.op_rows, self.dispatched), ({}, []))

    def test_a_bad_action_writes_nothing(self):
        answer = self.http.post("/v1/nodes/n1/power", json={"action": "explode"})
        self.assertEqual(answer.code, 400)
        self.assertEqual(answer.json()["error"]["code"], "invalid_action")
        self.assertEqual((self.store.op_rows, self.dispatched), ({}, []))

    def test_an_unknown_node_is_a_json_404(self):
        answer = self.http.post("/v1/nodes/ghost/power", json={"action": "on"})
        self.assertEqual(answer.code, 404)
        self.assertEqual(answer.header("Content-Type"), "application/json")
        self.assertEqual(answer.json(), {"error": {
            "code": "not_found", "message": "node 'ghost' does not exist"}})
        self.assertEqual(self.dispatched, [])

    def test_a_body_that_is_not_json_is_refused(self):
        answer = self.http.post("/v1/nodes/n1/power", data=b"action=on",
                                headers={"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(answer.code, 415)
        self.assertEqual(self.store.op_rows, {})

    def test_a_method_not_allowed_names_the_allowed_ones(self):
        answer = self.http.get("/v1/nodes/n1/power")
        self.assertEqual(answer.code, 405)
        self.assertEqual(answer.header("Allow"), "POST")


class ViewTests(ApiSetup, unittest.TestCase):
    def test_a_node_s_secrets_never_leave(self):
        answer = self.http.get("/v1/nodes/n1")
        self.assertEqual(answer.code, 200)
        params = answer.json()["power"]["agents"][0]["params"]
        self.assertEqual(params, {"device": "bmc1", "password": "(set)"})
        self.assertNotIn(b"hunter2", answer.body)
        self.assertNotIn(b"hunter2", self.http.get("/v1/nodes").body)

    def test_paths_outside_the_api_are_json_404s(self):
        answer = self.http.get("/nowhere")
        self.assertEqual(answer.code, 404)
        self.assertEqual(answer.json()["error"]["code"], "not_found")

    def test_a_bug_answers_500_with_the_id_it_logged(self):
        def broken(name):
            raise ZeroDivisionError("store bug")

        self.store.nodes.get = broken
        events = []
        self.http = InMemoryHttp(
            api_root(self.store, DriverCatalogue([FakeDriverType()]),
                     log=Logger(observer=events.append),
                     guard=admin_guard(task.Clock(), self.store)),
            headers=bearer())
        answer = self.http.get("/v1/nodes/n1")
        self.assertEqual(answer.code, 500)
        error = answer.json()["error"]
        self.assertEqual(error["code"], "internal")
        self.assertIn(error["id"], error["message"])
        self.assertNotIn(b"store bug", answer.body)
        [event] = events
        self.assertEqual(event["error_id"], error["id"])
        self.assertEqual(event["log_failure"].getErrorMessage(), "store bug")
