"""
The REST API over a real twisted.web server on 127.0.0.1, a real store on a
fresh PostgreSQL database, and treq as the client: every endpoint, every
error class (with a check that nothing was written), passwords never shown.
"""

import json

import treq
from twisted.internet import defer, reactor
from twisted.logger import Logger, formatEvent
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site

from powerctl.region.api import Api, api_root
from powerctl.region.events import EventHub, EventStream
from powerctl.region.guard import ApiGuard
from powerctl.region.tokens import TokenStore
from powerctl.region.store import NodeStore, PodManagerStore, Store
from tests import tokens
from tests.test_powerconfig import fake_catalogue
from tests.test_store import StoreTestCase, ipmi

NOTHING = object()
#: The name of the admin token every ApiTestCase creates and sends.
ADMIN = "test-admin"
SNAPSHOT = """SELECT
    (SELECT json_agg(n ORDER BY name) FROM nodes n)::text,
    (SELECT json_agg(o ORDER BY id) FROM power_ops o)::text,
    (SELECT json_agg(p ORDER BY name) FROM pod_managers p)::text,
    (SELECT json_agg(c ORDER BY name) FROM clusters c)::text,
    (SELECT json_agg(x ORDER BY node) FROM node_pod_managers x)::text"""


class ApiTestCase(StoreTestCase):
    """A served API (``self.base``), a treq client, the API's log events."""

    def setUp(self):
        d = super().setUp()
        d.addCallback(lambda _: self.start())
        return d

    def start(self):
        self.events = []
        self.dispatched = []
        self.activity = {}
        self.log = Logger(observer=self.events.append)
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        self.client = treq.client.HTTPClient(Agent(reactor, pool=pool))
        self.tokens = TokenStore(self.pool)
        self.guard = ApiGuard(self.tokens, reactor, log=self.log)
        self.api = Api(self.store, fake_catalogue(), activity=lambda: self.activity,
                       on_power_request=self.hook, log=self.log, guard=self.guard,
                       events=EventStream(EventHub(self.store, reactor), self.store, reactor))
        self.base = self.serve(self.api)
        # The hook's reads (one per dispatched operation) end before the
        # pool closes: a test may end as soon as the 202 is in.
        self.addCleanup(lambda: defer.DeferredList([d for _, d in self.dispatched],
                                                   consumeErrors=True))
        d = defer.ensureDeferred(self.tokens.create(ADMIN, "admin", created_by="test"))
        d.addCallback(lambda made: setattr(self, "token", made[1]))
        return d

    def serve(self, api):
        """Serve ``api`` under /v1 on 127.0.0.1; its base URL."""
        root = Resource()
        root.putChild(b"v1", api)
        port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}/v1"

    def hook(self, op):
        """The region's dispatch hook: note the op and whether it is committed."""
        self.dispatched.append((op, self.sql("SELECT state FROM power_ops WHERE id = %s",
                                             op["id"])))

    async def call(self, method, path, body=NOTHING, raw=None, ctype="application/json",
                   base=None, token=NOTHING):
        """(status, decoded JSON or None, response); as the test's admin by default."""
        kwargs = {"headers": {}}
        token = self.token if token is NOTHING else token
        if token is not None:
            kwargs["headers"]["Authorization"] = [f"Bearer {token}"]
        if body is not NOTHING:
            raw = json.dumps(body).encode()
        if raw is not None:
            kwargs["data"] = raw
            if ctype:
                kwargs["headers"]["Content-Type"] = [ctype]
        response = await self.client.request(method, (base or self.base) + path, **kwargs)
        content = await response.content()
        self.assertNotIn(b"Traceback", content)
        return response.code, (json.loads(content) if content else None), response

    async def refused(self, cases):
        """Each case answers its status and error code, and writes nothing."""
        before = await self.sql(SNAPSHOT)
        for method, path, body, raw, ctype, status, code, fragment in cases:
            got, data, _ = await self.call(method, path, body, raw, ctype)
            where = f"{method} {path} {body if body is not NOTHING else raw!r}"
            self.assertEqual((got, data["error"]["code"]), (status, code), where)
            self.assertIn(fragment, data["error"]["message"], where)
        self.assertEqual(await self.sql(SNAPSHOT), before, "a refused request wrote something")

    def assertNoSecret(self, *values):
        text = json.dumps(values, default=str) + "".join(formatEvent(e) for e in self.events)
        for secret in ("hunter2", "s3cret", "pw-ipmi"):
            self.assertNotIn(secret, text)


def case(method, path, body=NOTHING, status=400, code="invalid_input", fragment="",
         raw=None, ctype="application/json"):
    return (method, path, body, raw, ctype, status, code, fragment)


class NodeApiTests(ApiTestCase):
    async def test_node_lifecycle_with_redacted_power(self):
        status, node, response = await self.call(
            "POST", "/nodes", {"name": "n1", "cluster": "c1", "power": ipmi(password="pw-ipmi")})
        self.assertEqual(status, 201)
        self.assertEqual(response.headers.getRawHeaders("location"), ["/v1/nodes/n1"])
        self.assertEqual(sorted(node), sorted([
            "name", "cluster", "power", "desired_state", "power_state", "responsive",
            "last_error", "last_queried_at", "last_changed_at", "created_at", "updated_at",
            "drift", "bounds", "circuit"]))  # bounds: issue 13, the derived timeouts
        self.assertIsNone(node["drift"])
        self.assertIsNone(node["circuit"])
        self.assertEqual(node["power"]["agents"][0]["params"],
                         {"host": "10.0.0.5", "password": "(set)"})
        self.assertEqual((node["power_state"], node["responsive"]), ("unknown", True))
        await self.call("POST", "/nodes", {"name": "n2", "cluster": "c2", "power": ipmi()})

        status, nodes, _ = await self.call("GET", "/nodes")
        self.assertEqual((status, [n["name"] for n in nodes]), (200, ["n1", "n2"]))
        _, nodes, _ = await self.call("GET", "/nodes?cluster=c2")
        self.assertEqual([n["name"] for n in nodes], ["n2"])
        self.assertEqual((await self.call("GET", "/nodes/n1"))[:2], (200, node))
        self.assertEqual((await self.call("GET", "/nodes/n1/"))[0], 200)

        # GET, edit, PUT back: the redacted password is kept
        node["power"]["agents"][0]["params"]["host"] = "10.0.0.9"
        status, updated, _ = await self.call(
            "PUT", "/nodes/n1", {"name": "n1", "cluster": "c3", "power": node["power"]})
        self.assertEqual((status, updated["cluster"]), (200, "c3"))
        stored = (await self.store.nodes.get("n1"))["power"]["agents"][0]["params"]
        self.assertEqual(tokens.vault().open_power(
            {"agents": [{"params": stored}]})["agents"][0]["params"],
            {"host": "10.0.0.9", "password": "pw-ipmi"})  # stored sealed (issue 10)

        status, body, _ = await self.call("DELETE", "/nodes/n1")
        self.assertEqual((status, body), (204, None))
        self.assertEqual((await self.call("GET", "/nodes/n1"))[0], 404)
        self.assertNoSecret(nodes, updated)

    async def test_node_errors_write_nothing(self):
        await self.store.nodes.create("n1", "c1", ipmi())
        good = {"name": "n2", "cluster": "c1", "power": ipmi()}
        bad_params = dict(good, power={"agents": [{"driver": "ipmi",
                                                   "params": {"host": "h", "port": "x",
                                                              "password": "p"}}]})
        await self.refused([
            case("POST", "/nodes", raw=b"{nope", code="malformed_json", fragment="not valid JSON"),
            case("POST", "/nodes", raw=b"[]", fragment="must be a JSON object"),
            case("POST", "/nodes", dict(good, colour="red"), code="unknown_field",
                 fragment="'colour'"),
            case("POST", "/nodes", {"name": "n2", "cluster": "c1"}, code="missing_field",
                 fragment="'power'"),
            case("POST", "/nodes", bad_params, code="invalid_power",
                 fragment="power.agents[0]: ipmi parameter 'port': must be an integer"),
            case("POST", "/nodes", dict(good, power={"agents": [{"driver": "ilo"}]}),
                 code="invalid_power", fragment="unknown driver 'ilo'"),
            case("POST", "/nodes", dict(good, power={"mode": "concurrent",
                                                     "agents": ipmi()["agents"]}),
                 code="invalid_power", fragment="mode concurrent takes 2 to 8 agents"),
            case("POST", "/nodes", dict(good, name="a b"), fragment="not a valid name"),
            case("POST", "/nodes", dict(good, name="n1"), status=409, code="conflict",
                 fragment="'n1' already exists"),
            case("POST", "/nodes", raw=json.dumps(good).encode(), ctype="text/plain",
                 status=415, code="unsupported_media_type", fragment="must be JSON"),
            case("POST", "/nodes", raw=json.dumps(good).encode(), ctype=None,
                 status=415, code="unsupported_media_type", fragment="must be JSON"),
            case("PUT", "/nodes/n1", {"power_state": "on"}, code="unknown_field",
                 fragment="'power_state'"),
            case("PUT", "/nodes/n1", {"name": "n9"}, fragment="cannot be renamed"),
            case("PUT", "/nodes/n1", {"cluster": "c9", "power": {"agents": []}},
                 code="invalid_power", fragment="non-empty list"),
            case("PUT", "/nodes/ghost", {"cluster": "c9"}, status=404, code="not_found",
                 fragment="'ghost' does not exist"),
            case("DELETE", "/nodes/ghost", status=404, code="not_found", fragment="'ghost'"),
            case("GET", "/nodes/ghost", status=404, code="not_found", fragment="'ghost'"),
            case("GET", "/nodes?colour=red", code="unknown_parameter", fragment="'colour'"),
            case("PATCH", "/nodes/n1", status=405, code="method_not_allowed",
                 fragment="allowed: DELETE, GET, PUT"),
            case("DELETE", "/nodes", status=405, code="method_not_allowed", fragment="GET, POST"),
            case("GET", "/machines", status=404, code="not_found", fragment="/v1/machines"),
        ])

    async def test_405_names_the_allowed_methods(self):
        _, _, response = await self.call("PATCH", "/nodes/n1")
        self.assertEqual(response.headers.getRawHeaders("allow"), ["DELETE, GET, PUT"])


class PowerApiTests(ApiTestCase):
    async def test_power_request_answers_202_and_dispatches_after_commit(self):
        await self.store.nodes.create("n1", "c1", ipmi())
        status, op, response = await self.call("POST", "/nodes/n1/power", {"action": "soft-off"})
        self.assertEqual(status, 202)
        self.assertEqual(sorted(op), sorted([
            "id", "node", "action", "state", "coalesced_into", "superseded_by", "error",
            "requested_at", "started_at", "finished_at", "pserv", "agent", "requester",
            "observed_state", "cancelled_by", "confirmed_by", "detail",  # detail: issue 13
            "live_pserv", "warning"]))
        self.assertEqual((op["node"], op["action"], op["state"]), ("n1", "soft-off", "pending"))
        self.assertEqual(op["requester"], ADMIN)  # the token's name
        self.assertEqual(response.headers.getRawHeaders("location"), [f"/v1/power_ops/{op['id']}"])
        self.assertEqual((await self.store.nodes.get("n1"))["desired_state"], "off")
        [(seen, committed)] = self.dispatched
        self.assertEqual(seen["id"], op["id"])
        self.assertEqual(await committed, [("pending",)])

        _, cycle, _ = await self.call("POST", "/nodes/n1/power",
                                      {"action": "cycle", "requester": "alice"})
        self.assertEqual(cycle["requester"], ADMIN)  # not what the client says
        self.assertEqual((await self.store.nodes.get("n1"))["desired_state"], "on")

    async def test_the_answer_says_when_no_live_pserv_serves_the_cluster(self):
        await self.store.nodes.create("n1", "c1", ipmi())
        await self.store.nodes.create("n2", "c2", ipmi())
        status, op, _ = await self.call("POST", "/nodes/n1/power", {"action": "on"})
        self.assertEqual((status, op["state"], op["live_pserv"]), (202, "pending", False))
        self.assertIn("no live pserv serves cluster c1", op["warning"])
        # a live pserv of another cluster does not count; one of c1 does
        await self.store.clusters.register_pserv("p2", "c2", "0.1", "r")
        _, op, _ = await self.call("POST", "/nodes/n1/power", {"action": "off"})
        self.assertFalse(op["live_pserv"])
        await self.store.clusters.register_pserv("p1", "c1", "0.1", "r")
        _, op, _ = await self.call("POST", "/nodes/n1/power", {"action": "off"})
        self.assertEqual(op["live_pserv"], True)
        self.assertNotIn("warning", op)
        # a pserv that disconnected (or stopped heartbeating) is not live
        await self.store.clusters.pserv_disconnected("p1")
        _, op, _ = await self.call("POST", "/nodes/n1/power", {"action": "on"})
        self.assertEqual((op["live_pserv"], op["state"]), (False, "pending"))
        self.assertEqual(len(self.dispatched), 4)  # journalled and dispatched all the same
        self.assertEqual(await self.store.clusters.serving("ghost"), None)

    async def test_a_failing_dispatch_hook_does_not_fail_the_request(self):
        await self.store.nodes.create("n1", "c1", ipmi())
        self.api.on_power_request = lambda op: defer.fail(RuntimeError("amp down"))
        status, op, _ = await self.call("POST", "/nodes/n1/power", {"action": "on"})
        self.assertEqual(status, 202)
        failures = [e for e in self.events if "log_failure" in e]
        self.assertEqual(len(failures), 1)
        self.assertIn(str(op["id"]), formatEvent(failures[0]))

    async def test_power_request_errors_write_nothing(self):
        await self.store.nodes.create("n1", "c1", ipmi())
        await self.refused([
            case("POST", "/nodes/n1/power", {"action": "reboot"}, code="invalid_action",
                 fragment="unknown power action 'reboot'"),
            case("POST", "/nodes/n1/power", {}, code="missing_field", fragment="'action'"),
            case("POST", "/nodes/n1/power", {"action": "on", "force": True},
                 code="unknown_field", fragment="'force'"),
            case("POST", "/nodes/n1/power", {"action": "on", "requester": 5},
                 fragment="requester: must be a string"),
            case("POST", "/nodes/n1/power", raw=b"action=on",
                 ctype="application/x-www-form-urlencoded", status=415,
                 code="unsupported_media_type", fragment="JSON"),
            case("POST", "/nodes/ghost/power", {"action": "on"}, status=404, code="not_found",
                 fragment="'ghost'"),
            case("GET", "/nodes/n1/power", status=405, code="method_not_allowed",
                 fragment="POST"),
        ])
        self.assertEqual(self.dispatched, [])

    async def test_power_ops_list_filters_and_one(self):
        await self.store.nodes.create("n1", "c1", ipmi())
        await self.store.nodes.create("n2", "c1", ipmi())
        ids = [(await self.call("POST", f"/nodes/{n}/power", {"action": "on"}))[1]["id"]
               for n in ("n1", "n2", "n1")]
        await self.store.ops.record_outcome(ids[0], "failed", error="auth")
        _, ops, _ = await self.call("GET", "/power_ops")
        self.assertEqual([o["id"] for o in ops], ids[::-1])
        _, ops, _ = await self.call("GET", "/power_ops?node=n1&state=pending")
        self.assertEqual([o["id"] for o in ops], [ids[2]])
        _, ops, _ = await self.call("GET", f"/power_ops?limit=1&before={ids[2]}")
        self.assertEqual([o["id"] for o in ops], [ids[1]])
        status, op, _ = await self.call("GET", f"/power_ops/{ids[0]}")
        self.assertEqual((status, op["state"], op["error"]), (200, "failed", "auth"))
        await self.refused([
            case("GET", "/power_ops?state=done", fragment="state: 'done'"),
            case("GET", "/power_ops?limit=lots", fragment="limit: must be an integer"),
            case("GET", "/power_ops?limit=0", fragment="limit: must be an integer from 1"),
            case("GET", "/power_ops?before=0", fragment="before"),
            case("GET", "/power_ops?node=n1&node=n2", fragment="given twice"),
            case("GET", "/power_ops/99999", status=404, code="not_found", fragment="99999"),
            case("GET", "/power_ops/abc", status=404, code="not_found", fragment="'abc'"),
            case("DELETE", f"/power_ops/{ids[0]}", status=405, code="method_not_allowed",
                 fragment="GET"),
        ])


class PodManagerApiTests(ApiTestCase):
    async def test_lifecycle_and_the_password_is_write_only(self):
        status, pm, response = await self.call("POST", "/pod_managers", {
            "name": "rack-1", "url": "https://10.1.0.1", "username": "admin",
            "password": "s3cret", "description": "row 1"})
        self.assertEqual(status, 201)
        self.assertEqual(sorted(pm), sorted([
            "uuid", "name", "driver", "username", "password_set", "url", "status",
            "description", "created_at", "updated_at"]))
        self.assertEqual((pm["password_set"], pm["status"]), (True, "offline"))
        path = f"/pod_manager/{pm['uuid']}"
        self.assertEqual(response.headers.getRawHeaders("location"), ["/v1" + path])
        self.assertEqual((await self.call("GET", path))[:2], (200, pm))
        _, listed, _ = await self.call("GET", "/pod_managers")
        self.assertEqual([p["uuid"] for p in listed], [pm["uuid"]])

        status, updated, _ = await self.call("PUT", path, {"password": "hunter2",
                                                           "description": "row 2"})
        self.assertEqual((status, updated["description"], updated["password_set"]),
                         (200, "row 2", True))
        self.assertGreater(updated["updated_at"], pm["updated_at"])

        # a node's agent resolves the new password for the pserv, not for the API
        await self.call("POST", "/nodes", {"name": "n1", "cluster": "c1", "power": {
            "agents": [{"driver": "redfish", "pod_manager": pm["uuid"],
                        "params": {"system": "1"}}]}})
        config = await self.store.nodes.power_config("n1")
        self.assertEqual(config["agents"][0]["params"]["password"], "hunter2")
        _, node, _ = await self.call("GET", "/nodes/n1")
        self.assertNoSecret(pm, listed, updated, node)

        await self.refused([
            case("DELETE", path, status=409, code="conflict", fragment="used by 'n1'"),
        ])
        await self.call("DELETE", "/nodes/n1")
        status, body, _ = await self.call("DELETE", path)
        self.assertEqual((status, body), (204, None))
        self.assertEqual((await self.call("GET", path))[0], 404)

    async def test_errors_write_nothing(self):
        pm = await self.store.pod_managers.create("rack-1", "https://10.1.0.1", "u", "p", "")
        await self.store.pod_managers.create("rack-2", "https://10.1.0.2", "u", "p", "")
        path = f"/pod_manager/{pm['uuid']}"
        ghost = "/pod_manager/7b0c53c6-3bd1-4c57-9c4a-0d7e3c2f3a10"
        await self.refused([
            case("POST", "/pod_managers", {"name": "rack-1", "url": "https://x"}, status=409,
                 code="conflict", fragment="'rack-1' already exists"),
            case("POST", "/pod_managers", {"name": "r3"}, code="missing_field", fragment="'url'"),
            case("POST", "/pod_managers", {"name": "r3", "url": "ftp://x"},
                 fragment="not an http(s) URL"),
            case("POST", "/pod_managers", {"name": "r3", "url": "https://x", "driver": "ilo"},
                 fragment="unknown driver 'ilo'"),
            case("POST", "/pod_managers", {"name": "r3", "url": "https://x", "status": "online"},
                 code="unknown_field", fragment="'status'"),
            case("POST", "/pod_managers", raw=b"{", code="malformed_json", fragment="JSON"),
            case("PUT", path, {"name": "rack-2"}, status=409, code="conflict",
                 fragment="'rack-2' already exists"),
            case("PUT", path, {"password_set": False}, code="unknown_field",
                 fragment="'password_set'"),
            case("PUT", path, {"url": "nowhere"}, fragment="url"),
            case("PUT", ghost, {"name": "x"}, status=404, code="not_found", fragment="does not"),
            case("GET", ghost, status=404, code="not_found", fragment="does not exist"),
            case("GET", "/pod_manager/junk", status=404, code="not_found", fragment="'junk'"),
            case("DELETE", ghost, status=404, code="not_found", fragment="does not exist"),
            case("POST", path, {}, status=405, code="method_not_allowed", fragment="PUT"),
        ])


class ClusterAndDocumentTests(ApiTestCase):
    async def test_clusters_with_pservs_and_live_activity(self):
        await self.store.nodes.create("n1", "c1", ipmi())
        await self.store.clusters.register_pserv("p1", "c1", "0.1", "r1")
        await self.store.clusters.heartbeat("p1", 2)
        await self.store.clusters.register_pserv("p2", "c2", "0.1", "r1")
        await self.store.clusters.pserv_disconnected("p2")
        _, clusters, _ = await self.call("GET", "/clusters")
        self.assertEqual([(c["name"], c["status"], c["actions_in_flight"], c["nodes"])
                          for c in clusters], [("c1", "online", 2, 1), ("c2", "offline", 0, 0)])
        self.assertEqual([(p["name"], p["connected"]) for p in clusters[1]["pservs"]],
                         [("p2", False)])
        self.activity = {"c1": 5}
        _, clusters, _ = await self.call("GET", "/clusters")
        self.assertEqual(clusters[0]["actions_in_flight"], 5)

    async def test_openapi_document_describes_every_route(self):
        status, doc, _ = await self.call("GET", "/openapi.json")
        self.assertEqual(status, 200)
        self.assertTrue(doc["openapi"].startswith("3."))
        described = {path: {m.upper() for m in item if m != "parameters"}
                     for path, item in doc["paths"].items()}
        routed = {"/v1/" + pattern: set(methods) for pattern, methods in self.api.routes()}
        self.assertEqual(described, routed)
        # what the HTTP server itself answers (powerctl.region.http), on every operation
        for path, item in doc["paths"].items():
            for method, operation in item.items():
                if method == "parameters":
                    continue
                for status in ("408", "413", "414", "431"):
                    schema = operation["responses"][status]["content"]["application/json"]
                    self.assertEqual(schema["schema"], {"$ref": "#/components/schemas/Error"},
                                     (path, method, status))
        requested = doc["components"]["schemas"]["PowerRequested"]["properties"]
        self.assertEqual(requested["live_pserv"]["type"], "boolean")
        self.assertLessEqual(set(doc["components"]["schemas"]["PowerOp"]["properties"]),
                             set(requested))
        text = json.dumps(doc)
        for ref in set(part.split('"')[0] for part in text.split("#/components/schemas/")[1:]):
            self.assertIn(ref, doc["components"]["schemas"])


class BrokenNodes(NodeStore):
    """Nodes whose reads fail unexpectedly (a bug)."""

    def list(self, **kwargs):
        return defer.fail(RuntimeError("boom"))

    def page(self, secrets, **kwargs):
        return defer.fail(RuntimeError("boom"))


class BrokenPodManagers(PodManagerStore):
    """Pod managers whose reads fail in SQL."""

    def list(self, after_name="", limit=None):
        # a CHECK violation: PostgreSQL's DETAIL quotes the row, password included
        return self._pool.runOperation(
            "INSERT INTO pod_managers (uuid, name, password, url, status)"
            " VALUES (gen_random_uuid(), 'x', 'hunter2', 'https://x', 'broken')")


class BrokenStore(Store):
    """A store whose reads fail unexpectedly (a bug), once plainly, once in SQL."""

    def __init__(self, pool, catalogue, vault):
        super().__init__(pool, catalogue, vault=vault)
        self.nodes = BrokenNodes(pool, catalogue, vault)
        self.pod_managers = BrokenPodManagers(pool, catalogue, vault)


class InternalErrorTests(ApiTestCase):
    async def test_unexpected_errors_answer_500_with_the_logged_id(self):
        broken = Api(BrokenStore(self.pool, fake_catalogue(), vault=tokens.vault()),
                     fake_catalogue(), log=self.log,
                     guard=self.guard)
        base = self.serve(broken)
        for path, what in (("/nodes", "RuntimeError: boom"),
                           ("/pod_managers", "CheckViolation")):
            self.events.clear()
            status, body, _ = await self.call("GET", path, base=base)
            self.assertEqual((status, body["error"]["code"]), (500, "internal"))
            error_id = body["error"]["id"]
            self.assertIn(error_id, body["error"]["message"])
            self.assertNotIn(what.split(":")[0], json.dumps(body))
            [event] = [e for e in self.events if "log_failure" in e]
            self.assertEqual(event["error_id"], error_id)
            self.assertIn(error_id, formatEvent(event))
            traceback = event["log_failure"].getTraceback()
            self.assertIn(what, traceback)
            self.assertIn("Traceback", traceback)
            self.assertNotIn("hunter2", traceback + formatEvent(event))


class RootTests(ApiTestCase):
    async def test_api_root_serves_v1_only(self):
        port = reactor.listenTCP(0, Site(api_root(self.store, fake_catalogue(),
                                                  guard=self.guard)),
                                 interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        origin = f"http://127.0.0.1:{port.getHost().port}"
        status, nodes, _ = await self.call("GET", "/v1/nodes/", base=origin)
        self.assertEqual((status, nodes), (200, []))
        response = await self.client.request(
            "HEAD", origin + "/v1/clusters",
            headers={"Authorization": [f"Bearer {self.token}"]})
        self.assertEqual(response.code, 200)
        await response.content()
        status, body, _ = await self.call("GET", "/v2/nodes", base=origin)
        self.assertEqual((status, body["error"]["code"]), (404, "not_found"))
