"""
The REST commands against a small fake of the region API.

The fake (:class:`FakeApi`) implements just enough of ``/v1`` -- bare JSON
lists, 201/202/204, ``{"error": {"code", "message"}}`` -- to check what the
CLI sends, what it prints and how it exits.  Power operations advance one
state per GET (pending, running, then succeeded; ``failed`` for nodes
named ``bad*``; never for ``stuck*``), so ``--wait`` is deterministic.
The real API has its own tests.
"""

import io
import json
import uuid

from twisted.internet import defer
from twisted.trial import unittest
from twisted.web import resource, server

from powerctl.cli import Context
from powerctl.cli import main as cli_main


def error(request, status, code, message):
    request.setResponseCode(status)
    request.setHeader("Content-Type", "application/json")
    return json.dumps({"error": {"code": code, "message": message}}).encode()


class FakeApi(resource.Resource):
    """An in-memory ``/v1`` with a request log."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requests = []  # (method, path, query, body)
        self.nodes = {}
        self.ops = {}
        self.pod_managers = {}
        self.clusters = [{"name": "c1", "nodes": 0, "running_ops": 0, "actions_in_flight": 0,
                          "status": "online", "created_at": "2026-01-01T00:00:00+00:00",
                          "pservs": [{"name": "p1", "connected": True,
                                      "last_heartbeat": "2026-01-01T00:00:05.123+00:00"}]}]

    def render(self, request):
        method = request.method.decode()
        parts = [p.decode() for p in request.postpath if p]
        query = {k.decode(): v[0].decode() for k, v in request.args.items()}
        raw = request.content.read()
        body = None
        if raw:
            if (request.getHeader("content-type") or "").split(";")[0] != "application/json":
                return error(request, 415, "unsupported_media_type", "JSON please")
            body = json.loads(raw)
        self.requests.append((method, "/" + "/".join(parts), query, body))
        if parts[:1] != ["v1"]:
            return error(request, 404, "not_found", "no such resource")
        handler = getattr(self, "_".join([method.lower()] + [
            p if i % 2 == 0 else "x" for i, p in enumerate(parts[1:])]), None)
        if handler is None:
            return error(request, 405, "method_not_allowed", f"{method} not allowed")
        args = [p for i, p in enumerate(parts[1:]) if i % 2 == 1]
        result = handler(body, query, *args)
        if isinstance(result, bytes):  # an error already rendered
            return result
        status, doc = result
        if isinstance(doc, tuple):  # (code, message): an error
            return error(request, status, *doc)
        request.setResponseCode(status)
        if doc is None:
            return b""
        request.setHeader("Content-Type", "application/json")
        return json.dumps(doc).encode()

    # -- nodes
    def get_nodes(self, body, query):
        return 200, [n for n in self.nodes.values()
                     if "cluster" not in query or n["cluster"] == query["cluster"]]

    def post_nodes(self, body, query):
        if body["name"] in self.nodes:
            return 409, ("conflict", f"node {body['name']!r} already exists")
        for agent in body["power"]["agents"]:
            if agent["driver"] not in ("ipmi", "snmp", "redfish", "webhook", "manual"):
                return 400, ("invalid_power", f"unknown driver {agent['driver']!r}")
        node = {"name": body["name"], "cluster": body["cluster"], "power": self._redact(body["power"]),
                "desired_state": None, "power_state": "unknown", "responsive": True,
                "last_error": None, "created_at": "2026-01-01T00:00:00.5+00:00"}
        self.nodes[node["name"]] = node
        return 201, node

    def _redact(self, power):
        power = json.loads(json.dumps(power))
        for agent in power["agents"]:
            for key in ("password", "community", "write_community"):
                if key in agent.get("params", {}):
                    agent["params"][key] = "(set)"
        return power

    def _node(self, name):
        if name not in self.nodes:
            return None
        return self.nodes[name]

    def get_nodes_x(self, body, query, name):
        node = self._node(name)
        return (200, node) if node else (404, ("not_found", f"node {name!r} does not exist"))

    def put_nodes_x(self, body, query, name):
        node = self._node(name)
        if not node:
            return 404, ("not_found", f"node {name!r} does not exist")
        if "power" in body:
            body = dict(body, power=self._redact(body["power"]))
        node.update(body)
        return 200, node

    def delete_nodes_x(self, body, query, name):
        if self.nodes.pop(name, None) is None:
            return 404, ("not_found", f"node {name!r} does not exist")
        return 204, None

    def post_nodes_x_power(self, body, query, name):
        if name not in self.nodes:
            return 404, ("not_found", f"node {name!r} does not exist")
        op_id = len(self.ops) + 1
        op = {"id": op_id, "node": name, "action": body["action"], "state": "pending",
              "coalesced_into": None, "superseded_by": None, "error": None,
              "requested_at": "2026-01-01T00:00:01+00:00", "started_at": None,
              "finished_at": None, "pserv": None, "agent": None,
              "requester": body.get("requester"), "observed_state": None}
        for other in self.ops.values():  # coalesce with an identical open op
            if other["node"] == name and other["action"] == op["action"] \
                    and other["state"] in ("pending", "running"):
                op["coalesced_into"] = other["id"]
        self.ops[op_id] = op
        return 202, op

    # -- operations
    def get_power_ops(self, body, query):
        ops = sorted(self.ops.values(), key=lambda o: -o["id"])
        for key in ("node", "state"):
            if key in query:
                ops = [o for o in ops if o[key] == query[key]]
        return 200, ops

    def get_power_ops_x(self, body, query, op_id):
        op = self.ops.get(int(op_id))
        if op is None:
            return 404, ("not_found", f"operation {op_id} does not exist")
        self._advance(op)
        return 200, op

    def _advance(self, op):
        if op["node"].startswith("stuck") or op["coalesced_into"]:
            return
        if op["state"] == "pending":
            op.update(state="running", started_at="2026-01-01T00:00:02+00:00",
                      pserv="p1", agent="0:ipmi")
        elif op["state"] == "running":
            failed = op["node"].startswith("bad")
            target = {"on": "on", "cycle": "on", "off": "off", "soft-off": "off"}.get(
                op["action"], "off")
            op.update(state="failed" if failed else "succeeded",
                      finished_at="2026-01-01T00:00:03+00:00",
                      error="ipmi: BMC refused the credentials" if failed else None,
                      observed_state=None if failed else target)
            if not failed:
                self.nodes[op["node"]]["power_state"] = target
            for other in self.ops.values():
                if other["coalesced_into"] == op["id"]:
                    other.update(state=op["state"], finished_at=op["finished_at"])

    # -- pod managers
    def get_pod_managers(self, body, query):
        return 200, [self._show_podm(pm) for pm in self.pod_managers.values()]

    def _show_podm(self, pm):
        shown = {k: v for k, v in pm.items() if k != "password"}
        shown["password_set"] = bool(pm.get("password"))
        return shown

    def post_pod_managers(self, body, query):
        allowed = {"name", "url", "username", "password", "description", "driver"}
        if set(body) - allowed:
            return 400, ("unknown_field", f"unknown field {sorted(set(body) - allowed)[0]!r}")
        pm = dict({"uuid": str(uuid.UUID(int=len(self.pod_managers) + 1)), "status": "offline",
                   "driver": "redfish", "username": "", "description": ""}, **body)
        self.pod_managers[pm["uuid"]] = pm
        return 201, self._show_podm(pm)

    def get_pod_manager_x(self, body, query, ident):
        pm = self.pod_managers.get(ident)
        return (200, self._show_podm(pm)) if pm else (404, ("not_found", "no such pod manager"))

    def put_pod_manager_x(self, body, query, ident):
        allowed = {"name", "url", "username", "password", "description"}
        if set(body) - allowed:
            return 400, ("unknown_field", f"unknown field {sorted(set(body) - allowed)[0]!r}")
        pm = self.pod_managers.get(ident)
        if pm is None:
            return 404, ("not_found", "no such pod manager")
        pm.update(body)
        return 200, self._show_podm(pm)

    def delete_pod_manager_x(self, body, query, ident):
        if self.pod_managers.pop(ident, None) is None:
            return 404, ("not_found", "no such pod manager")
        return 204, None

    # -- clusters
    def get_clusters(self, body, query):
        return 200, self.clusters


class TtyStringIO(io.StringIO):
    def isatty(self):
        return True


class FakeApiMixin:
    """A :class:`FakeApi` served on loopback: ``self.api``, ``self.url``."""

    timeout = 20

    def setUp(self):
        super().setUp()
        from twisted.internet import reactor

        self.reactor = reactor
        self.api = FakeApi()
        site = server.Site(self.api)
        site.log = lambda request: None
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.url = f"http://127.0.0.1:{self.port.getHost().port}"


class RestCommandTests(FakeApiMixin, unittest.TestCase):

    def ctx(self, stdin="", tty=False, env=None, secret=None):
        stream = TtyStringIO if tty else io.StringIO
        self.prompts = []

        def getpass(prompt):
            self.prompts.append(prompt)
            return secret

        return Context(self.reactor, stdout=io.StringIO(), stderr=stream(),
                       stdin=stream(stdin), env=env or {}, getpass=getpass)

    @defer.inlineCallbacks
    def cli(self, *argv, api=True, **kwargs):
        """(status, stdout, stderr) of ``powerctl argv --api <fake>``."""
        ctx = self.ctx(**kwargs)
        argv = list(argv) + (["--api", self.url] if api else [])
        status = yield cli_main.run(argv, self.reactor, ctx)
        return status, ctx.stdout.getvalue(), ctx.stderr.getvalue()

    def sent(self, method=None):
        return [r for r in self.api.requests if method is None or r[0] == method]

    @defer.inlineCallbacks
    def add_node(self, name, *extra):
        status, out, err = yield self.cli(
            "node", "add", name, "--cluster", "c1", "--driver", "ipmi", "-p", "host=10.0.0.1",
            "-p", "password=pw-secret", *extra)
        self.assertEqual(status, 0, err)

    # -- nodes ------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_node_add_single_agent(self):
        status, out, err = yield self.cli(
            "node", "add", "n1", "--cluster", "c1", "--driver", "ipmi",
            "-p", "host=10.0.0.1", "-p", "port=6230", "-p", "password=hunter2")
        self.assertEqual(status, 0, err)
        [(method, path, _, body)] = self.sent("POST")
        self.assertEqual((method, path), ("POST", "/v1/nodes"))
        self.assertEqual(body, {"name": "n1", "cluster": "c1", "power": {
            "mode": "single", "agents": [{"driver": "ipmi", "params": {
                "host": "10.0.0.1", "port": 6230, "password": "hunter2"}}]}})
        self.assertIn("added node n1", err)
        self.assertIn("agent 0:", out)
        self.assertNotIn("hunter2", out + err)

    @defer.inlineCallbacks
    def test_node_add_several_agents(self):
        status, out, err = yield self.cli(
            "node", "add", "n2", "-c", "c1", "--mode", "concurrent", "--json",
            "--agent", "driver=snmp,host=pdu1,family=apc-rpdu,outlet=3,write_community=rw-secret",
            "--agent", 'driver=webhook,on_url=http://h/on,off_url=http://h/off,'
                       'headers={"X-A":"1","X-B":"2"}',
            "--agent", "driver=redfish,pod_manager=00000000-0000-0000-0000-000000000001,system=7")
        self.assertEqual(status, 0, err)
        body = self.sent("POST")[0][3]
        snmp, webhook, redfish = body["power"]["agents"]
        self.assertEqual(body["power"]["mode"], "concurrent")
        self.assertEqual(snmp["params"]["outlet"], 3)
        self.assertEqual(webhook["params"]["headers"], {"X-A": "1", "X-B": "2"})
        self.assertEqual(redfish, {"driver": "redfish",
                                   "pod_manager": "00000000-0000-0000-0000-000000000001",
                                   "params": {"system": "7"}})
        shown = json.loads(out)
        self.assertEqual(shown["power"]["agents"][0]["params"]["write_community"], "(set)")
        self.assertNotIn("rw-secret", out + err)

    @defer.inlineCallbacks
    def test_node_add_power_json_from_stdin(self):
        power = {"mode": "sequential", "agents": [
            {"driver": "manual", "params": {"label": "rack1"}},
            {"driver": "ipmi", "params": {"host": "10.0.0.2", "password": "x"}}]}
        status, _, err = yield self.cli("node", "add", "n3", "-c", "c1", "--power-json", "-",
                                        stdin=json.dumps(power))
        self.assertEqual(status, 0, err)
        self.assertEqual(self.sent("POST")[0][3]["power"], power)

    @defer.inlineCallbacks
    def test_node_add_refused_before_sending(self):
        cases = [
            (["--driver", "ipmi", "-p", "host=h", "-p", "port=abc"], "'port'"),
            (["--agent", "driver=ipmi,host=a", "--agent", "driver=ipmi,host=b"], "--mode"),
            (["--agent", "host=a"], "driver=NAME"),
            ([], "a node needs power"),
            (["--driver", "ipmi", "--agent", "driver=ipmi"], "one of"),
            (["--power-json", "-"], "not valid JSON"),
            (["--driver", "webhook", "-p", "headers=[1"], "'headers'"),
        ]
        for extra, message in cases:
            status, out, err = yield self.cli("node", "add", "n4", "-c", "c1", *extra,
                                              stdin="{")
            self.assertEqual((status, out), (2, ""), extra)
            self.assertIn(message, err, extra)
            self.assertEqual(err.count("\n"), 1, err)
        self.assertEqual(self.api.requests, [])

    @defer.inlineCallbacks
    def test_node_add_api_errors(self):
        yield self.add_node("n1")
        status, out, err = yield self.cli("node", "add", "n1", "-c", "c1", "--driver", "ipmi",
                                          "-p", "host=h", "-p", "password=p")
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err, "error (conflict): node 'n1' already exists\n")
        status, _, err = yield self.cli("node", "add", "n9", "-c", "c1", "--driver", "amt")
        self.assertEqual(status, 2)
        self.assertEqual(err, "error (invalid_power): unknown driver 'amt'\n")

    @defer.inlineCallbacks
    def test_node_list_show_update_delete(self):
        yield self.add_node("n1")
        yield self.add_node("n2")
        self.api.nodes["n2"].update(responsive=False, power_state="on", desired_state="on")
        status, out, err = yield self.cli("node", "list")
        self.assertEqual(status, 0, err)
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ["NAME", "CLUSTER", "DESIRED", "POWER",
                                            "RESPONSIVE", "DRIFT", "AGENTS", "LAST", "ERROR"])
        self.assertEqual(lines[2].split()[:7],
                         ["n2", "c1", "on", "on", "non-responsive", "-", "ipmi"])
        status, out, _ = yield self.cli("node", "list", "--json", "--cluster", "c1")
        self.assertEqual([n["name"] for n in json.loads(out)], ["n1", "n2"])
        self.assertEqual(self.sent("GET")[-1][2], {"cluster": "c1"})

        status, out, _ = yield self.cli("node", "show", "n1")
        self.assertIn("cluster:", out)
        self.assertIn("password=(set)", out)
        self.assertNotIn("pw-secret", out)

        status, out, err = yield self.cli("node", "update", "n1", "--cluster", "c2")
        self.assertEqual(status, 0, err)
        self.assertEqual(self.sent("PUT")[-1][1:], ("/v1/nodes/n1", {}, {"cluster": "c2"}))
        status, _, err = yield self.cli("node", "update", "n1")
        self.assertEqual(status, 2)
        self.assertIn("nothing to update", err)

        status, out, _ = yield self.cli("node", "delete", "n1")
        self.assertEqual((status, out), (0, "deleted node n1\n"))
        status, out, err = yield self.cli("node", "show", "n1")
        self.assertEqual((status, out, err),
                         (1, "", "error (not_found): node 'n1' does not exist\n"))

    @defer.inlineCallbacks
    def test_names_are_quoted(self):
        status, _, err = yield self.cli("node", "show", "a/b c")
        self.assertEqual(status, 1)
        self.assertEqual(self.sent()[-1][1], "/v1/nodes/a/b c")  # decoded by the server
        self.assertIn("a/b c", err)

    # -- power --------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_power_without_wait(self):
        yield self.add_node("n1")
        status, out, err = yield self.cli("power", "soft_off", "n1")
        self.assertEqual(status, 0, err)
        (_, path, _, body) = self.sent("POST")[-1]
        self.assertEqual(path, "/v1/nodes/n1/power")
        self.assertEqual(body["action"], "soft-off")
        self.assertTrue(body["requester"].startswith("cli"))
        self.assertEqual(out.splitlines()[1].split()[:4], ["n1", "soft-off", "1", "pending"])

    @defer.inlineCallbacks
    def test_power_wait_reports_each_node(self):
        for name in ("n1", "n2", "bad1"):
            yield self.add_node(name)
        status, out, err = yield self.cli("power", "on", "n1", "n2", "bad1", "--wait",
                                          "--poll-interval", "0.01")
        self.assertEqual(status, 1)
        rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
        self.assertEqual(rows["n1"][1:5], ["on", "1", "succeeded", "on"])
        self.assertEqual(rows["n2"][3:5], ["succeeded", "on"])
        self.assertEqual(rows["bad1"][3], "failed")
        self.assertIn("error (failed): bad1: ipmi: BMC refused the credentials", err)
        self.assertNotIn("\r", err)  # stderr is no terminal: no progress bar

    @defer.inlineCallbacks
    def test_power_wait_json_and_progress_bar(self):
        yield self.add_node("n1")
        yield self.add_node("n2")
        status, out, err = yield self.cli("power", "off", "n1", "n2", "-w", "--json",
                                          "--poll-interval", "0.01", tty=True)
        self.assertEqual(status, 0, err)
        results = json.loads(out)
        self.assertEqual([(r["node"], r["op"]["state"], r["power_state"]) for r in results],
                         [("n1", "succeeded", "off"), ("n2", "succeeded", "off")])
        self.assertIn("\r[", err)
        self.assertIn("2/2 off done", err)
        self.assertTrue(err.endswith("\n"))

    @defer.inlineCallbacks
    def test_power_coalesced_follows_the_joined_operation(self):
        yield self.add_node("n1")
        yield self.cli("power", "cycle", "n1")
        status, out, err = yield self.cli("power", "cycle", "n1", "--wait",
                                          "--poll-interval", "0.01")
        self.assertEqual(status, 0, err)
        row = out.splitlines()[1].split()
        self.assertEqual(row[:5], ["n1", "cycle", "2->1", "succeeded", "on"])

    @defer.inlineCallbacks
    def test_power_wait_timeout(self):
        yield self.add_node("stuck1")
        status, out, err = yield self.cli("power", "on", "stuck1", "--wait", "--timeout", "0.2",
                                          "--poll-interval", "0.05")
        self.assertEqual(status, 5)
        self.assertIn("error (timeout): stuck1: operation 1 still pending", err)

    @defer.inlineCallbacks
    def test_power_unknown_node_does_not_stop_the_others(self):
        yield self.add_node("n1")
        status, out, err = yield self.cli("power", "on", "n1", "ghost", "--wait",
                                          "--poll-interval", "0.01")
        self.assertEqual(status, 1)
        self.assertIn("ghost: node 'ghost' does not exist", err)
        self.assertEqual(self.api.nodes["n1"]["power_state"], "on")

    @defer.inlineCallbacks
    def test_power_usage_errors(self):
        for argv in (["power", "on"], ["power", "explode", "n1"],
                     ["power", "on", "n1", "--timeout", "-1"]):
            status, out, err = yield self.cli(*argv)
            self.assertEqual((status, out), (2, ""), argv)
            self.assertIn("usage:", err)
        self.assertEqual(self.api.requests, [])

    # -- operations ---------------------------------------------------------------

    @defer.inlineCallbacks
    def test_ops_list_and_show(self):
        yield self.add_node("n1")
        yield self.cli("power", "on", "n1", "-w", "--poll-interval", "0.01")
        status, out, err = yield self.cli("ops", "list", "--node", "n1", "--state", "succeeded",
                                          "--limit", "5")
        self.assertEqual(status, 0, err)
        self.assertEqual(self.sent("GET")[-1][2], {"node": "n1", "state": "succeeded",
                                                   "limit": "5"})
        self.assertEqual(out.splitlines()[1].split()[:4], ["1", "n1", "on", "succeeded"])
        self.assertIn("2026-01-01 00:00:01+00:00", out)
        status, out, _ = yield self.cli("ops", "show", "1", "--json")
        self.assertEqual(json.loads(out)["agent"], "0:ipmi")
        status, out, _ = yield self.cli("ops", "show", "1")
        self.assertIn("pserv:", out)
        status, _, err = yield self.cli("ops", "show", "one")
        self.assertEqual(status, 2)

    # -- pod managers ---------------------------------------------------------------

    @defer.inlineCallbacks
    def test_podm_lifecycle(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("pdu-secret\n")
        status, out, err = yield self.cli(
            "podm", "add", "pdu1", "--url", "https://10.0.0.9", "-u", "admin",
            "--password-file", path, "--description", "row 1")
        self.assertEqual(status, 0, err)
        body = self.sent("POST")[-1][3]
        self.assertEqual(body, {"name": "pdu1", "url": "https://10.0.0.9", "username": "admin",
                                "description": "row 1", "password": "pdu-secret"})
        self.assertNotIn("pdu-secret", out + err)
        uuid_ = json.loads((yield self.cli("podm", "list", "--json"))[1])[0]["uuid"]

        status, out, _ = yield self.cli("podm", "list")
        self.assertIn("pdu1", out)
        self.assertEqual(out.splitlines()[1].split()[6], "set")

        status, out, _ = yield self.cli("podm", "show", "pdu1")  # by name
        self.assertIn(uuid_, out)
        self.assertEqual(self.sent("GET")[-1][1], f"/v1/pod_manager/{uuid_}")

        status, out, err = yield self.cli("podm", "update", uuid_, "--prompt-password",
                                          "--name", "pdu-1", tty=True, secret="new-secret")
        self.assertEqual(status, 0, err)
        self.assertEqual(self.sent("PUT")[-1][3], {"name": "pdu-1", "password": "new-secret"})
        self.assertEqual(self.prompts, ["Password: "])
        self.assertNotIn("new-secret", out + err)

        status, out, _ = yield self.cli("podm", "delete", "pdu-1")
        self.assertEqual((status, out), (0, f"deleted pod manager {uuid_}\n"))
        status, _, err = yield self.cli("podm", "show", "pdu-1")
        self.assertEqual((status, err), (1, "error (not_found): no pod manager named 'pdu-1'\n"))

    @defer.inlineCallbacks
    def test_podm_password_prompt_on_a_terminal_only(self):
        status, _, err = yield self.cli("podm", "add", "pdu2", "--url", "http://10.0.0.8",
                                        tty=True, secret="typed")
        self.assertEqual(status, 0, err)
        self.assertEqual(self.sent("POST")[-1][3]["password"], "typed")
        status, _, err = yield self.cli("podm", "add", "pdu3", "--url", "http://10.0.0.7")
        self.assertEqual(status, 0, err)  # no terminal, no password file: none sent
        self.assertNotIn("password", self.sent("POST")[-1][3])
        status, _, err = yield self.cli("podm", "update", "pdu3", "--prompt-password")
        self.assertEqual(status, 2)
        self.assertIn("--password-file", err)

    # -- clusters, transport and arguments ------------------------------------------

    @defer.inlineCallbacks
    def test_cluster_list(self):
        status, out, err = yield self.cli("cluster", "list")
        self.assertEqual(status, 0, err)
        self.assertEqual(out.splitlines()[0].split()[:3], ["NAME", "STATUS", "NODES"])
        self.assertIn("p1 (connected)", out)
        self.assertIn("2026-01-01 00:00:05+00:00", out)
        status, out, _ = yield self.cli("cluster", "list", "--json")
        self.assertEqual(json.loads(out), self.api.clusters)

    @defer.inlineCallbacks
    def test_api_from_environment(self):
        status, _, err = yield self.cli("cluster", "list", api=False,
                                        env={"POWERCTL_API": self.url})
        self.assertEqual(status, 0, err)

    @defer.inlineCallbacks
    def test_unreachable_api(self):
        port = self.reactor.listenTCP(0, server.Site(resource.Resource()), interface="127.0.0.1")
        dead = f"http://127.0.0.1:{port.getHost().port}"
        yield port.stopListening()
        status, out, err = yield self.cli("node", "list", "--api", dead, api=False)
        self.assertEqual((status, out), (4, ""))
        self.assertTrue(err.startswith(f"error (unreachable): cannot reach the API at {dead}"), err)

    @defer.inlineCallbacks
    def test_bad_api_url(self):
        status, _, err = yield self.cli("node", "list", "--api", "ftp://x", api=False)
        self.assertEqual(status, 2)
        self.assertIn("not an http(s) URL", err)

    @defer.inlineCallbacks
    def test_usage_errors(self):
        for argv in (["node"], ["node", "add", "n1"], ["podm", "add", "x"],
                     ["ops", "list", "--state", "sleeping"], ["cluster"]):
            status, out, err = yield self.cli(*argv)
            self.assertEqual((status, out), (2, ""), argv)
            self.assertIn("usage:", err)
        self.assertEqual(self.api.requests, [])
