"""
Issue 10, the REST API's door: the pure decisions (:mod:`powerctl.region.auth`)
and, over a served API on a real database, every route of the routing table
without a token, with a bad one and with each role and scope, refusals
writing nothing; revocation, the failure limiter, the audit trail, the
status page's login, the CLI's token and ``powerctl admin token create``.
"""

import io
import json
import os
import tempfile

import psycopg2
import treq
from twisted.internet import reactor, task
from twisted.logger import formatEvent
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool
from twisted.web.server import Site

from powerctl.cli import Context
from powerctl.cli.main import run as run_cli
from powerctl.region import auth, web
from powerctl.region.api import Api, api_root
from powerctl.region.events import EventHub, EventStream
from powerctl.region.guard import protect_web
from tests import tokens as test_tokens
from tests.test_api import ADMIN, NOTHING, SNAPSHOT, ApiTestCase
from tests.test_powerconfig import fake_catalogue
from tests.test_store import ipmi

WHOLE_SNAPSHOT = SNAPSHOT.replace(
    "FROM node_pod_managers x)::text",
    "FROM node_pod_managers x)::text,\n"
    "    (SELECT json_agg(a ORDER BY id) FROM audit a)::text,\n"
    "    (SELECT json_agg(t ORDER BY id) FROM api_tokens t)::text,\n"
    "    (SELECT json_agg(l ORDER BY id) FROM lockouts l)::text")

#: The least role of every route, written out here (not read from
#: auth.RULES), so that a rule loosened by mistake fails this test.
EXPECTED_ROLE = {
    ("GET", "nodes"): "viewer", ("POST", "nodes"): "admin",
    ("GET", "nodes/{name}"): "viewer", ("PUT", "nodes/{name}"): "admin",
    ("DELETE", "nodes/{name}"): "admin",
    ("POST", "nodes/{name}/power"): "operator", ("POST", "power"): "operator",
    ("GET", "power_ops"): "viewer", ("GET", "power_ops/{op_id}"): "viewer",
    ("POST", "power_ops/{op_id}/cancel"): "operator",
    ("POST", "power_ops/{op_id}/confirm"): "operator",
    ("GET", "pod_managers"): "viewer", ("POST", "pod_managers"): "admin",
    ("GET", "pod_manager/{uuid}"): "viewer", ("PUT", "pod_manager/{uuid}"): "admin",
    ("DELETE", "pod_manager/{uuid}"): "admin",
    ("GET", "clusters"): "viewer", ("PUT", "clusters/{name}"): "admin",
    ("GET", "clusters/{name}/circuits"): "viewer",
    ("PUT", "clusters/{name}/circuits/{circuit}"): "admin",
    ("DELETE", "clusters/{name}/circuits/{circuit}"): "admin",
    ("GET", "clusters/{name}/auto-fence"): "viewer",
    ("PUT", "clusters/{name}/auto-fence"): "admin",
    ("DELETE", "clusters/{name}/auto-fence"): "admin",
    ("GET", "activity"): "viewer", ("GET", "openapi.json"): "viewer",
    ("GET", "events"): "viewer",  # a stream: checked with HEAD below (GET never ends)
    ("GET", "tokens"): "admin", ("POST", "tokens"): "admin",
    ("DELETE", "tokens/{token_id}"): "admin", ("GET", "audit"): "admin",
    ("GET", "lockouts"): "viewer", ("DELETE", "lockouts/{name}"): "operator",
}
#: Routes a token confined to other clusters may not use on cluster c1's
#: objects (or at all: they span every cluster).
SCOPED_OUT = {
    ("POST", "nodes"), ("GET", "nodes/{name}"), ("PUT", "nodes/{name}"),
    ("DELETE", "nodes/{name}"), ("POST", "nodes/{name}/power"), ("POST", "power"),
    ("GET", "power_ops/{op_id}"), ("POST", "power_ops/{op_id}/cancel"),
    ("POST", "power_ops/{op_id}/confirm"), ("POST", "pod_managers"),
    ("PUT", "pod_manager/{uuid}"), ("DELETE", "pod_manager/{uuid}"),
    ("PUT", "clusters/{name}"), ("GET", "clusters/{name}/circuits"),
    ("PUT", "clusters/{name}/circuits/{circuit}"),
    ("DELETE", "clusters/{name}/circuits/{circuit}"), ("GET", "clusters/{name}/auto-fence"),
    ("PUT", "clusters/{name}/auto-fence"), ("DELETE", "clusters/{name}/auto-fence"),
    ("GET", "tokens"), ("POST", "tokens"),
    ("DELETE", "tokens/{token_id}"), ("GET", "audit"), ("DELETE", "lockouts/{name}"),
}
RANK = {"viewer": 0, "operator": 1, "admin": 2}


class PureDecisionTests(unittest.TestCase):
    def test_roles_are_ordered(self):
        viewer, operator, admin = (auth.Principal("p", r) for r in auth.ROLES)
        rule = auth.Rule("operator", auth.Scope.NODE)
        self.assertIn("needs 'operator'", auth.denial(viewer, rule, ("c1",)))
        self.assertIsNone(auth.denial(operator, rule, ("c1",)))
        self.assertIsNone(auth.denial(admin, rule, ("c1",)))

    def test_cluster_scopes(self):
        scoped = auth.Principal("p", "admin", clusters=frozenset({"c1"}))
        node = auth.Rule("operator", auth.Scope.NODE)
        self.assertIsNone(auth.denial(scoped, node, ("c1",)))
        self.assertIn("'c2'", auth.denial(scoped, node, ("c1", "c2")))
        self.assertIsNotNone(auth.denial(scoped, auth.Rule("admin", auth.Scope.UNSCOPED)))
        self.assertIsNotNone(auth.denial(scoped, auth.Rule("admin", auth.Scope.NEW_NODE), ()))
        self.assertIsNone(auth.denial(scoped, auth.Rule("viewer", auth.Scope.ANY)))
        # an operation whose node is gone has cluster '': not covered
        self.assertIsNotNone(auth.denial(scoped, auth.Rule("viewer", auth.Scope.OPERATION),
                                         ("",)))

    def test_a_route_without_a_rule_is_closed_to_everybody(self):
        admin = auth.Principal("root", "admin")
        self.assertIsNone(auth.rule_for("no_such_handler"))
        self.assertIn("no access rule", auth.denial(admin, None))

    def test_every_route_of_the_api_has_a_rule(self):
        guard = test_tokens.make_guard(pool=None)
        hub = EventHub(None, task.Clock())
        api = Api(None, fake_catalogue(), guard=guard, events=EventStream(hub, None, hub.clock))
        for pattern, methods in api.routes():
            for method, handler in methods.items():
                self.assertIsNotNone(auth.rule_for(handler.__name__), (method, pattern))
                self.assertEqual(auth.RULES[handler.__name__].role,
                                 EXPECTED_ROLE[method, pattern], (method, pattern))
        self.assertEqual(len(EXPECTED_ROLE),
                         sum(len(methods) for _, methods in api.routes()))

    def test_bearer_header(self):
        self.assertEqual(auth.bearer("Bearer abc"), "abc")
        self.assertEqual(auth.bearer("bearer  abc "), "abc")
        for bad in (None, "", "Basic abc", "Bearer", "Bearer a b", "abc"):
            self.assertIsNone(auth.bearer(bad), bad)

    def test_only_a_hash_is_kept(self):
        from powerctl.region.tokens import new_token

        token = new_token()
        self.assertTrue(token.startswith(auth.TOKEN_PREFIX))
        self.assertGreaterEqual(len(token) - len(auth.TOKEN_PREFIX), 43)  # 256 bits
        self.assertNotEqual(new_token(), token)
        self.assertEqual(len(auth.token_hash(token)), 64)
        self.assertNotIn(token, auth.token_hash(token))

    def test_failure_limiter(self):
        limiter = auth.FailureLimiter(limit=3, window=60.0)
        for t in (0.0, 1.0):
            limiter.failed("a", t)
        self.assertEqual(limiter.blocked("a", 2.0), 0)
        limiter.failed("a", 2.0)
        self.assertEqual(limiter.blocked("a", 3.0), 57.0)  # until the first is 60 s old
        self.assertEqual(limiter.blocked("b", 3.0), 0)  # per address
        self.assertEqual(limiter.blocked("a", 60.0), 0)
        small = auth.FailureLimiter(limit=1, window=60.0, max_addresses=2)
        for i, address in enumerate("xyz"):
            small.failed(address, float(i))
        self.assertEqual(small.blocked("x", 3.0), 0)  # the stalest was forgotten
        self.assertGreater(small.blocked("z", 3.0), 0)

    def test_lists_are_filtered_to_the_scope(self):
        scoped = auth.Principal("p", "viewer", clusters=frozenset({"c1"}))
        nodes = [{"name": "a", "cluster": "c1"}, {"name": "b", "cluster": "c2"}]
        self.assertEqual(auth.filter_listing(scoped, "list_nodes", nodes), nodes[:1])
        ops = [{"id": 1, "node": "a"}, {"id": 2, "node": "b"}, {"id": 3, "node": "gone"}]
        self.assertEqual(auth.filter_listing(scoped, "list_ops", ops, {"a": "c1", "b": "c2"}),
                         ops[:1])
        self.assertEqual(auth.filter_listing(scoped, "list_clusters",
                                             [{"name": "c1"}, {"name": "c2"}]),
                         [{"name": "c1"}])
        unscoped = auth.Principal("p", "viewer")
        self.assertIs(auth.filter_listing(unscoped, "list_nodes", nodes), nodes)


class RouteTableTests(ApiTestCase):
    """Every route of the table, refused and admitted as the roles say."""

    async def fixture(self):
        self.guard.limiter = auth.FailureLimiter(limit=10**6)  # many bad tokens here
        for name, cluster in (("n1", "c1"), ("n2", "c2")):
            status, _, _ = await self.call("POST", "/nodes", {"name": name, "cluster": cluster,
                                                              "power": ipmi()})
            self.assertEqual(status, 201)
        _, op, _ = await self.call("POST", "/nodes/n1/power", {"action": "on"})
        _, pm, _ = await self.call("POST", "/pod_managers", {"name": "pm", "url": "https://x",
                                                             "password": "s3cret"})
        _, victim, _ = await self.call("POST", "/tokens", {"name": "victim", "role": "viewer"})
        await self.store.lockouts.record("n1", 0, 3, "test", "p1")  # issue 10
        self.values = {"name": "n1", "op_id": str(op["id"]), "uuid": pm["uuid"],
                       "token_id": str(victim["id"])}
        self.role_tokens = {role: await test_tokens.create(self.pool, f"t-{role}", role)
                            for role in auth.ROLES}
        self.elsewhere = {role: await test_tokens.create(self.pool, f"e-{role}", role, ["c2"])
                          for role in auth.ROLES}

    def concrete(self, pattern):
        path = pattern
        for key, value in self.values.items():
            path = path.replace("{" + key + "}", value)
        if pattern.startswith("clusters/{name}"):
            path = pattern.replace("{name}", "c1").replace("{circuit}", "rack1")
        return "/" + path

    def body(self, method, pattern):
        """A body the handler refuses (400) or ignores: admitted, nothing changes."""
        if method in ("POST", "PUT"):
            if pattern == "nodes":
                return {"cluster": "c1"}  # missing fields: 400
            if pattern == "power":  # touches c1; an unknown field: 400
                return {"action": "off", "cluster": "c1", "no_such_field": 1}
            return {"no_such_field": 1}
        return NOTHING

    def routes(self):
        for pattern, methods in self.api.routes():
            for method in methods:
                yield method, pattern

    async def test_every_route_refuses_without_a_token_and_with_a_bad_one(self):
        await self.fixture()
        before = await self.sql(WHOLE_SNAPSHOT)
        for method, pattern in self.routes():
            path = self.concrete(pattern)
            for token in (None, "pct_" + "A" * 43, self.token + "x", ""):
                status, body, response = await self.call(
                    method, path, self.body(method, pattern), token=token)
                self.assertEqual((status, body["error"]["code"]), (401, "unauthenticated"),
                                 (method, path, token))
                self.assertTrue(response.headers.getRawHeaders("www-authenticate"))
        self.assertEqual(await self.sql(WHOLE_SNAPSHOT), before,
                         "an unauthenticated request wrote something")

    async def test_each_role_gets_exactly_what_it_may(self):
        await self.fixture()
        before = await self.sql(WHOLE_SNAPSHOT)
        admitted = []
        for method, pattern in self.routes():
            path = self.concrete(pattern)
            need = EXPECTED_ROLE[method, pattern]
            for role, token in self.role_tokens.items():
                if RANK[role] >= RANK[need]:
                    if method in ("GET", "HEAD"):
                        status, _, _ = await self.call(
                            "HEAD" if pattern == "events" else method, path, token=token)
                        self.assertNotIn(status, (401, 403), (role, method, path))
                    else:
                        admitted.append((method, pattern, role, token))
                    continue
                status, body, _ = await self.call(method, path, self.body(method, pattern),
                                                  token=token)
                self.assertEqual((status, body["error"]["code"]), (403, "forbidden"),
                                 (role, method, path))
            for role, token in self.elsewhere.items():
                if (method, pattern) in SCOPED_OUT or RANK[role] < RANK[need]:
                    status, body, _ = await self.call(
                        method, path, self.body(method, pattern), token=token)
                    self.assertEqual(status, 403, (role, "scoped to c2", method, path, body))
        self.assertEqual(await self.sql(WHOLE_SNAPSHOT), before,
                         "a refused (403) request wrote something")
        # Admitted changes: the handler runs (a 400 for the bodies above, or
        # the change itself for a DELETE), never a 401/403.
        admitted.sort(key=lambda a: a[0] == "DELETE")
        for method, pattern, role, token in admitted:
            status, body, _ = await self.call(method, self.concrete(pattern),
                                              self.body(method, pattern), token=token)
            self.assertNotIn(status, (401, 403), (role, method, pattern, body))

    async def test_a_scoped_token_gets_full_pages_of_operations(self):
        await self.fixture()  # n1 (c1) has one operation
        for action in ("on", "off", "on"):
            await self.call("POST", "/nodes/n1/power", {"action": action})
        for action in ("on", "off", "on", "off", "on"):  # the newest: all of c2
            await self.call("POST", "/nodes/n2/power", {"action": action})
        viewer = await test_tokens.create(self.pool, "c1-viewer", "viewer", ["c1"])
        status, ops, _ = await self.call("GET", "/power_ops?limit=3", token=viewer)
        self.assertEqual(status, 200)
        self.assertEqual([o["node"] for o in ops], ["n1"] * 3)
        _, rest, _ = await self.call("GET", f"/power_ops?limit=3&before={ops[-1]['id']}",
                                     token=viewer)
        self.assertEqual([o["node"] for o in rest], ["n1"])

    async def test_a_scoped_token_sees_and_drives_only_its_clusters(self):
        await self.fixture()
        operator = await test_tokens.create(self.pool, "rack1-op", "operator", ["c1"])
        status, op, _ = await self.call("POST", "/nodes/n1/power", {"action": "off"},
                                        token=operator)
        self.assertEqual((status, op["requester"]), (202, "rack1-op"))
        status, body, _ = await self.call("POST", "/nodes/n2/power", {"action": "off"},
                                          token=operator)
        self.assertEqual(status, 403)
        self.assertIn("'c2'", body["error"]["message"])
        _, nodes, _ = await self.call("GET", "/nodes", token=operator)
        self.assertEqual([n["name"] for n in nodes], ["n1"])
        _, ops, _ = await self.call("GET", "/power_ops", token=operator)
        self.assertEqual({o["node"] for o in ops}, {"n1"})
        _, clusters, _ = await self.call("GET", "/clusters", token=operator)
        self.assertEqual([c["name"] for c in clusters], ["c1"])
        self.assertEqual((await self.call("GET", "/nodes?cluster=c2", token=operator))[0], 403)
        # an admin of c1 cannot move a node to c2, nor make a node in c2
        admin = await test_tokens.create(self.pool, "rack1-admin", "admin", ["c1"])
        status, _, _ = await self.call("PUT", "/nodes/n1", {"cluster": "c2"}, token=admin)
        self.assertEqual(status, 403)
        status, _, _ = await self.call("POST", "/nodes", {"name": "n3", "cluster": "c2",
                                                          "power": ipmi()}, token=admin)
        self.assertEqual(status, 403)
        status, _, _ = await self.call("POST", "/nodes", {"name": "n3", "cluster": "c1",
                                                          "power": ipmi()}, token=admin)
        self.assertEqual(status, 201)


class TokenLifeTests(ApiTestCase):
    async def test_tokens_are_shown_once_stored_hashed_and_revoked_at_once_everywhere(self):
        status, made, response = await self.call("POST", "/tokens",
                                                 {"name": "alice", "role": "operator"})
        self.assertEqual((status, made["role"], made["created_by"]), (201, "operator", ADMIN))
        token = made.pop("token")
        self.assertEqual(response.headers.getRawHeaders("location"),
                         [f"/v1/tokens/{made['id']}"])
        stored = json.dumps(await self.sql("SELECT * FROM api_tokens"), default=str)
        self.assertNotIn(token, stored)
        _, listed, _ = await self.call("GET", "/tokens")
        self.assertNotIn(token, json.dumps(listed))
        self.assertTrue(all("token" not in t and "hash" not in t for t in listed))
        self.assertEqual((await self.call("POST", "/tokens", {"name": "alice",
                                                              "role": "viewer"}))[0], 409)
        # A second region on the same database: its own guard, same answers.
        other = Api(self.store, fake_catalogue(), log=self.log,
                    guard=test_tokens.make_guard(self.pool, log=self.log))
        other_base = self.serve(other)
        status, op, _ = await self.call("POST", "/nodes", {"name": "n1", "cluster": "c1",
                                                           "power": ipmi()})
        for base in (self.base, other_base):
            self.assertEqual((await self.call("GET", "/nodes", token=token, base=base))[0], 200)
        status, revoked, _ = await self.call("DELETE", f"/tokens/{made['id']}")
        self.assertEqual((status, revoked["revoked"], revoked["revoked_by"]),
                         (200, True, ADMIN))
        for base in (self.base, other_base):
            status, body, _ = await self.call("GET", "/nodes", token=token, base=base)
            self.assertEqual(status, 401, base)
        # the name is free again
        self.assertEqual((await self.call("POST", "/tokens", {"name": "alice",
                                                              "role": "viewer"}))[0], 201)
        self.assertNoToken(token)

    def assertNoToken(self, *secrets):
        text = "".join(formatEvent(e) for e in self.events)
        for secret in secrets:
            self.assertNotIn(secret, text)

    async def test_failed_authentications_are_limited_per_address_and_logged_without_token(self):
        self.guard.limiter = auth.FailureLimiter(limit=3, window=3600.0)
        bad = "pct_guessed-" + "x" * 32
        for _ in range(3):
            self.assertEqual((await self.call("GET", "/nodes", token=bad))[0], 401)
        status, body, response = await self.call("GET", "/nodes", token=bad)
        self.assertEqual((status, body["error"]["code"]), (429, "too_many_failures"))
        self.assertTrue(int(response.headers.getRawHeaders("retry-after")[0]) > 0)
        # even a good token from that address waits: the guessing is slowed down
        self.assertEqual((await self.call("GET", "/nodes"))[0], 429)
        logged = [formatEvent(e) for e in self.events]
        self.assertEqual(sum("failed authentication from 127.0.0.1" in line
                             for line in logged), 3)
        self.assertNoToken(bad, self.token)

    async def test_every_change_is_audited_and_the_trail_is_append_only(self):
        await self.call("POST", "/nodes", {"name": "n1", "cluster": "c1",
                                           "power": ipmi(password="pw-ipmi")})
        await self.call("POST", "/nodes/n1/power", {"action": "on"})
        await self.call("POST", "/nodes/nope/power", {"action": "on"})
        await self.call("GET", "/nodes")
        status, trail, _ = await self.call("GET", "/audit")
        self.assertEqual(status, 200)
        self.assertEqual([(a["actor"], a["source"], a["method"], a["path"], a["status"],
                           a["outcome"]) for a in trail], [
            (ADMIN, "127.0.0.1", "POST", "/v1/nodes/nope/power", 404, "refused: not_found"),
            (ADMIN, "127.0.0.1", "POST", "/v1/nodes/n1/power", 202, "ok"),
            (ADMIN, "127.0.0.1", "POST", "/v1/nodes", 201, "ok"),
        ])
        self.assertTrue(all(a["at"] for a in trail))
        self.assertNotIn("pw-ipmi", json.dumps(trail))
        _, page, _ = await self.call("GET", f"/audit?limit=1&before={trail[0]['id']}")
        self.assertEqual([a["id"] for a in page], [trail[1]["id"]])
        for sql in ("UPDATE audit SET actor = 'someone-else'", "DELETE FROM audit"):
            with self.assertRaises(psycopg2.Error):
                await self.pool.runOperation(sql)
        self.assertEqual(len(await self.sql("SELECT id FROM audit")), 3)


class AtomicAuditTests(ApiTestCase):
    """
    Issue 10: an API change and its audit record commit in one transaction.
    With the audit table refusing inserts, no change is made at all (the
    request fails); without the refusal each change has exactly one record.
    """

    async def refuse_audit(self):
        await self.pool.runOperation(
            "CREATE FUNCTION refuse_audit() RETURNS trigger AS $$ BEGIN "
            "RAISE EXCEPTION 'audit refused by the test'; END; $$ LANGUAGE plpgsql")
        await self.pool.runOperation(
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit "
            "FOR EACH ROW EXECUTE FUNCTION refuse_audit()")

    async def test_a_change_whose_record_cannot_be_written_is_not_made(self):
        status, _, _ = await self.call("POST", "/nodes", {"name": "n1", "cluster": "c1",
                                                          "power": ipmi()})
        self.assertEqual(status, 201)
        await self.refuse_audit()
        before = await self.sql(WHOLE_SNAPSHOT)
        changes = [
            ("POST", "/nodes", {"name": "n2", "cluster": "c1", "power": ipmi()}),
            ("PUT", "/nodes/n1", {"power": ipmi(password="other")}),
            ("POST", "/nodes/n1/power", {"action": "on"}),
            ("PUT", "/clusters/c1", {"drift_policy": "enforce"}),
            ("POST", "/pod_managers", {"name": "pm", "url": "https://x"}),
            ("POST", "/tokens", {"name": "t2", "role": "viewer"}),
            ("DELETE", "/nodes/n1", None),
        ]
        for method, path, body in changes:
            status, _, _ = await self.call(method, path, body)
            self.assertEqual(status, 500, (method, path))
        self.assertEqual(await self.sql(WHOLE_SNAPSHOT), before,
                         "a change was committed without its audit record")

    async def test_each_change_is_recorded_once_with_its_answer(self):
        calls = [
            ("POST", "/nodes", {"name": "n1", "cluster": "c1", "power": ipmi()}, 201),
            ("PUT", "/nodes/n1", {"power": ipmi(password="other")}, 200),
            ("POST", "/nodes/n1/power", {"action": "on"}, 202),
            ("PUT", "/clusters/c1", {"drift_policy": "enforce"}, 200),
            ("POST", "/tokens", {"name": "t2", "role": "viewer"}, 201),
            ("DELETE", "/nodes/n1", None, 204),
        ]
        for method, path, body, expected in calls:
            status, answer, _ = await self.call(method, path, body)
            self.assertEqual(status, expected, (method, path, answer))
        rows = await self.sql("SELECT method, path, status, outcome FROM audit ORDER BY id")
        self.assertEqual([tuple(r) for r in rows],
                         [(m, "/v1" + p, s, "ok") for m, p, _, s in calls])


class WebDoorTests(ApiTestCase):
    async def serve_web(self, metrics_public=False):
        root = api_root(self.store, fake_catalogue(), guard=self.guard)
        web.add_to(root, self.store, log=self.log)
        protect_web(root, self.guard, metrics_public=metrics_public)
        port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}"

    async def fetch(self, url, **kwargs):
        pool = HTTPConnectionPool(reactor, persistent=False)
        response = await treq.request(kwargs.pop("method", "GET"), url, pool=pool,
                                      allow_redirects=False, **kwargs)
        return response, (await treq.content(response)).decode()

    async def test_status_page_needs_a_login_and_metrics_a_token(self):
        origin = await self.serve_web()
        response, page = await self.fetch(origin + "/")
        self.assertEqual(response.code, 401)
        self.assertIn('<form method="post" action="/login">', page)
        self.assertNotIn("Nodes", page)
        response, text = await self.fetch(origin + "/metrics")
        self.assertEqual(response.code, 401)
        self.assertNotIn("powerctl_", text)
        # a bad login is refused, a good one sets an HttpOnly cookie
        response, _ = await self.fetch(origin + "/login", method="POST",
                                       data={"token": "pct_wrong"})
        self.assertEqual(response.code, 401)
        self.assertIsNone(response.headers.getRawHeaders("set-cookie"))
        viewer = await test_tokens.create(self.pool, "screen", "viewer")
        response, _ = await self.fetch(origin + "/login", method="POST",
                                       data={"token": viewer})
        self.assertEqual(response.code, 302)
        [cookie] = response.headers.getRawHeaders("set-cookie")
        self.assertIn("HttpOnly", cookie)
        self.assertIn("SameSite=strict", cookie)
        response, page = await self.fetch(origin + "/", headers={
            "Cookie": [cookie.split(";")[0]]})
        self.assertEqual(response.code, 200)
        self.assertIn("<h2>Nodes", page)
        response, text = await self.fetch(origin + "/metrics", headers={
            "Authorization": [f"Bearer {viewer}"]})
        self.assertEqual(response.code, 200)
        self.assertIn("powerctl_", text)
        # a token confined to clusters cannot see the whole fleet's page
        scoped = await test_tokens.create(self.pool, "rack1", "viewer", ["c1"])
        response, _ = await self.fetch(origin + "/", headers={
            "Authorization": [f"Bearer {scoped}"]})
        self.assertEqual(response.code, 403)

    async def test_metrics_can_be_opened_to_scrapers_explicitly(self):
        origin = await self.serve_web(metrics_public=True)
        response, text = await self.fetch(origin + "/metrics")
        self.assertEqual(response.code, 200)
        self.assertIn("powerctl_", text)
        response, _ = await self.fetch(origin + "/")
        self.assertEqual(response.code, 401)  # the page stays closed


class CliTokenTests(ApiTestCase):
    async def cli(self, *argv, env=None):
        out, err = io.StringIO(), io.StringIO()
        ctx = Context(reactor, stdout=out, stderr=err, env=env or {})
        code = await run_cli(list(argv), reactor, ctx)
        return code, out.getvalue(), err.getvalue()

    async def test_admin_token_create_bootstraps_without_an_api(self):
        code, out, err = await self.cli("admin", "token", "create", "--name", "alice",
                                        "--role", "operator", "--cluster", "c1",
                                        "--database", self.dsn)
        self.assertEqual(code, 0, err)
        token = out.splitlines()[-1]
        self.assertTrue(token.startswith("pct_"), out)
        origin = self.base[:-len("/v1")]
        await self.call("POST", "/nodes", {"name": "n1", "cluster": "c1", "power": ipmi()})
        code, out, err = await self.cli("power", "on", "n1", "--api", origin,
                                        env={"POWERCTL_TOKEN": token})
        self.assertEqual(code, 0, err)
        [(requester,)] = await self.sql("SELECT requester FROM power_ops")
        self.assertEqual(requester, "alice")
        code, out, err = await self.cli("node", "list", "--api", origin)  # no token
        self.assertEqual(code, 3, err)  # exit status of an auth failure
        # through a config file too
        config = self.mktemp()
        with open(config, "w") as f:
            f.write(f'[region]\ndatabase = "{self.dsn}"\n')
        code, out, err = await self.cli("admin", "token", "create", "--name", "bob",
                                        "--role", "viewer", "--config", config)
        self.assertEqual(code, 0, err)
        code, out, err = await self.cli("admin", "token", "create", "--name", "bob",
                                        "--role", "viewer", "--database", self.dsn)
        self.assertEqual(code, 1, out)  # a live token has that name
        code, out, err = await self.cli("admin", "token", "list", "--database", self.dsn)
        self.assertIn("alice", out)
        self.assertNotIn(token, out)

    async def test_a_token_file_others_can_read_is_refused(self):
        origin = self.base[:-len("/v1")]
        directory = tempfile.mkdtemp()
        self.addCleanup(lambda: __import__("shutil").rmtree(directory))
        path = os.path.join(directory, "token")
        with open(path, "w") as f:
            f.write(self.token + "\n")
        os.chmod(path, 0o644)
        code, out, err = await self.cli("node", "list", "--api", origin,
                                        env={"POWERCTL_TOKEN_FILE": path})
        self.assertEqual(code, 2)
        self.assertIn("accessible by other users", err)
        self.assertNotIn(self.token, err)
        os.chmod(path, 0o600)
        code, out, err = await self.cli("node", "list", "--api", origin,
                                        env={"POWERCTL_TOKEN_FILE": path})
        self.assertEqual(code, 0, err)
        # the default place: $XDG_CONFIG_HOME/powerctl/token
        os.mkdir(os.path.join(directory, "powerctl"))
        os.rename(path, os.path.join(directory, "powerctl", "token"))
        code, out, err = await self.cli("audit", "--api", origin,
                                        env={"XDG_CONFIG_HOME": directory})
        self.assertEqual(code, 0, err)

    async def test_tokens_through_the_api(self):
        origin = self.base[:-len("/v1")]
        env = {"POWERCTL_TOKEN": self.token}
        code, out, err = await self.cli("token", "create", "--name", "carol", "--role",
                                        "viewer", "--api", origin, env=env)
        self.assertEqual(code, 0, err)
        carol = out.splitlines()[-1]
        code, out, err = await self.cli("token", "list", "--api", origin, env=env)
        self.assertIn("carol", out)
        self.assertNotIn(carol, out)
        code, out, err = await self.cli("token", "create", "--name", "dave", "--role",
                                        "viewer", "--api", origin,
                                        env={"POWERCTL_TOKEN": carol})
        self.assertEqual(code, 3, err)  # a viewer may not
        [row] = [t for t in (await self.call("GET", "/tokens"))[1] if t["name"] == "carol"]
        code, out, err = await self.cli("token", "revoke", str(row["id"]), "--api", origin,
                                        env=env)
        self.assertEqual(code, 0, err)
        code, out, err = await self.cli("node", "list", "--api", origin,
                                        env={"POWERCTL_TOKEN": carol})
        self.assertEqual(code, 3, err)
