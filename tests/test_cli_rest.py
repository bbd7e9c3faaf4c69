"""
The REST commands against the real region API, in memory.

The CLI runs in-process (:func:`powerctl.cli.main.run`) and reaches the
region's own ``/v1`` resource (:func:`powerctl.region.api.api_root` over the
real :class:`~powerctl.region.store.Store` on the test run's throwaway
PostgreSQL) through :class:`InMemoryAgent`, an ``IAgent`` that connects the
CLI's HTTP client and a ``twisted.web`` site with ``iosim`` transports: no
socket, and nothing the CLI is tested against is a re-implementation of the
API, so the two cannot drift apart.

The only stand-in is the pserv side (:class:`PservDouble`), which the API
hands every committed operation to, as the region would: it journals what a
pserv would report, decided by the node's name, so ``--wait`` sees every
outcome a real fleet produces.  Arguments refused before anything is sent
are checked without a database (:class:`RefusedBeforeSendingTests`).
"""

import io
import json
import re

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.test import iosim
from twisted.trial import unittest
from twisted.web import client, server
from twisted.web.iweb import IAgent, IAgentEndpointFactory
from zope.interface import implementer

from powerctl.cli import Context
from powerctl.cli import main as cli_main
from powerctl.drivers.standard import standard_catalogue
from powerctl.power import Action
from powerctl.region.api import api_root
from powerctl.region.store import Store
from tests.test_store import StoreTestCase
from tests import tokens

#: Where the in-memory API "listens", and where its client "comes from":
#: real addresses, since the API names an anonymous requester by its peer.
SERVER_ADDRESS = IPv4Address("TCP", "127.0.0.1", 5240)
CLIENT_ADDRESS = IPv4Address("TCP", "127.0.0.1", 40000)
URL = "http://127.0.0.1:5240"

BMC_REFUSED = "ipmi: BMC refused the credentials"


class RecordingSite(server.Site):
    """
    A site that notes every request it answered as ``(method, path, query,
    body)``: what the CLI sent, checked by the tests.  ``Site.log`` is the
    hook twisted.web calls once per finished request.
    """

    def __init__(self, resource):
        super().__init__(resource, timeout=None)  # no idle timer left behind
        self.requests = []

    def log(self, request):
        raw = b""
        if request.content is not None:
            request.content.seek(0)
            raw = request.content.read()
        self.requests.append((
            request.method.decode(),
            request.path.decode(),
            {k.decode(): v[0].decode() for k, v in request.args.items()},
            json.loads(raw) if raw else None,
        ))


class _Transport(iosim.FakeTransport):
    """An ``iosim`` transport that asks for a pump whenever it has something to move."""

    def __init__(self, protocol, isServer, wake, **addresses):
        super().__init__(protocol, isServer, **addresses)
        self._wake = wake

    def write(self, data):
        super().write(data)
        self._wake()

    def loseConnection(self):
        super().loseConnection()
        self._wake()

    def abortConnection(self):
        super().abortConnection()
        self._wake()


@implementer(IAgent, IAgentEndpointFactory, IStreamClientEndpoint)
class InMemoryAgent:
    """
    An ``IAgent`` whose every connection goes to ``site`` in memory.

    Unlike ``treq.testing.RequestTraversalAgent``, which needs ``flush()``
    after each write of a resource that answers later, the pumps here run
    on the reactor's next turn after anything is written or closed: the API
    answers once PostgreSQL has, and the CLI's treq streams its request
    bodies through a cooperator, so neither side writes on a schedule a
    test could predict.  :meth:`close` (a cleanup) moves what is left.
    """

    def __init__(self, reactor, site):
        self._reactor = reactor
        self._site = site
        self._pumps = []
        self._call = None
        self._agent = client.Agent.usingEndpointFactory(reactor, self)

    def request(self, method, uri, headers=None, bodyProducer=None):
        return self._agent.request(method, uri, headers, bodyProducer)

    def endpointForURI(self, uri):
        return self

    def connect(self, factory):
        client_side = factory.buildProtocol(SERVER_ADDRESS)
        server_side = self._site.buildProtocol(CLIENT_ADDRESS)
        pump = iosim.connect(
            server_side, _Transport(server_side, True, self._wake, hostAddress=SERVER_ADDRESS,
                                    peerAddress=CLIENT_ADDRESS),
            client_side, _Transport(client_side, False, self._wake, hostAddress=CLIENT_ADDRESS,
                                    peerAddress=SERVER_ADDRESS),
            greet=False)
        self._pumps.append(pump)
        return defer.succeed(client_side)

    def _wake(self):
        if self._call is None:
            self._call = self._reactor.callLater(0, self.flush)

    def flush(self):
        """Move every byte and every close between the two sides."""
        self._call = None
        for pump in list(self._pumps):
            pump.flush()
        # Delivering an answer can finish a test (and run close) before the
        # loop ends: keep the list consistent for whoever flushes next.
        self._pumps = [p for p in self._pumps
                       if not (p.clientIO.disconnected and p.serverIO.disconnected)]

    def close(self):
        self.flush()
        if self._call is not None:
            self._call.cancel()
            self._call = None


class PservDouble:
    """
    The API's dispatch hook standing in for region and pserv: it journals
    each operation's outcome through the store, as a pserv's report would.
    By node name: ``stuck*`` never starts; ``slow*`` runs until
    :meth:`finish` (an identical request meanwhile joins it, as the
    registry coalesces); ``bad*`` fails; anything else succeeds at once,
    leaving the node in the action's target state.
    """

    def __init__(self, store):
        self.store = store
        self.work = []  # every journal write in flight, waited for by cleanup
        self.running = {}  # slow node -> (op, [ops that joined it])
        self.dispatched = {}  # op id -> Deferred fired once it has been handled

    def dispatch(self, op):
        d = defer.ensureDeferred(self._handle(op))
        self.work.append(d)
        d.addCallback(lambda _: self.handled(op["id"]).callback(None))
        return d

    def handled(self, op_id):
        """A Deferred firing once operation ``op_id`` has been dispatched and handled."""
        return self.dispatched.setdefault(op_id, defer.Deferred())

    async def _handle(self, op):
        node = op["node"]
        if node.startswith("stuck"):
            return
        if node.startswith("slow"):
            if node in self.running and self.running[node][0]["action"] == op["action"]:
                self.running[node][1].append(op)
                return
            self.running[node] = (op, [])
        await self.store.ops.mark_running(op["id"], "p1")
        if not node.startswith("slow"):
            await self._end(op)

    async def _end(self, op, coalesced_into=None):
        if op["node"].startswith("bad"):
            await self.store.ops.record_outcome(op["id"], "failed", error=BMC_REFUSED,
                                            agent="0:ipmi", pserv="p1")
            return
        target = Action(op["action"]).target.value
        # The node's state first: once the operation is terminal, a waiting
        # CLI may read the node at once.
        await self.store.nodes.record_power_state(op["node"], target, queried=False)
        await self.store.ops.record_outcome(op["id"], "succeeded", observed_state=target,
                                        agent="0:ipmi", pserv="p1",
                                        coalesced_into=coalesced_into)

    async def finish(self, node):
        """The slow node's operation ends, and every one that joined it."""
        first, joined = self.running.pop(node)
        await self._end(first)
        for op in joined:
            await self._end(op, coalesced_into=first["id"])

    def settled(self):
        return defer.DeferredList(list(self.work), consumeErrors=True)


class TtyStringIO(io.StringIO):
    def isatty(self):
        return True


class CliMixin:
    """Runs ``powerctl`` in-process, its HTTP requests going to ``self.agent``."""

    timeout = 30

    def context(self, stdin="", tty=False, env=None, getpass=None):
        stream = TtyStringIO if tty else io.StringIO
        token = getattr(self, "api_token", None)  # an admin's, once the database is up
        env = dict({"POWERCTL_TOKEN": token} if token else {}, **(env or {}))
        return Context(self.reactor, stdout=io.StringIO(), stderr=stream(),
                       stdin=stream(stdin), env=env, getpass=getpass,
                       agent=self.agent)

    async def run_cli(self, argv, ctx):
        """(status, stdout, stderr) of ``powerctl argv`` in ``ctx``."""
        status = await cli_main.run(list(argv), self.reactor, ctx)
        return status, ctx.stdout.getvalue(), ctx.stderr.getvalue()

    def cli(self, *argv, api=True, secret=None, **kwargs):
        """A Deferred of (status, stdout, stderr) of ``powerctl argv --api URL``."""
        self.prompts = []

        def getpass(prompt):
            self.prompts.append(prompt)
            return secret

        ctx = self.context(getpass=getpass, **kwargs)
        argv = list(argv) + (["--api", URL] if api else [])
        return defer.ensureDeferred(self.run_cli(argv, ctx))


@implementer(IAgent)
class RefusingAgent:
    """An ``IAgent`` for commands that must send nothing: notes and fails every request."""

    def __init__(self):
        self.requests = []

    def request(self, method, uri, headers=None, bodyProducer=None):
        self.requests.append((method, uri))
        return defer.fail(AssertionError(f"{method} {uri} was sent"))


class RegionApiMixin(CliMixin):
    """
    The real API over the real store (standard driver catalogue, so the
    CLI and the region judge parameters by the same schemas), served in
    memory: ``self.site.requests`` logs what reached it, ``self.pserv``
    journals outcomes, ``self.agent`` goes in the CLI's Context.
    """

    def make_store(self, **kwargs):
        from twisted.internet import reactor

        self.reactor = reactor
        self.catalogue = standard_catalogue(reactor)
        self.addCleanup(self.catalogue.close)
        kwargs.setdefault("responsive_grace", self.grace)
        kwargs.setdefault("vault", tokens.vault())
        return Store(self.pool, self.catalogue, **kwargs)

    def setUp(self):
        d = super().setUp()
        self.pserv = PservDouble(self.store)
        self.site = RecordingSite(api_root(self.store, self.catalogue,
                                           on_power_request=self.pserv.dispatch,
                                           guard=tokens.make_guard(self.pool),
                                           **self.more_api_arguments()))
        self.agent = InMemoryAgent(self.reactor, self.site)
        self.addCleanup(self.agent.close)
        # Runs before the pool closes (cleanups run last-added first).
        self.addCleanup(self.pserv.settled)
        # The tests' nodes go to cluster c1, which `node add` wants to exist
        # (tests/test_cli_clusters.py tests the refusal itself).
        d.addCallback(lambda _: self.pool.runOperation(
            "INSERT INTO clusters (name) VALUES ('c1') ON CONFLICT DO NOTHING"))
        d.addCallback(lambda _: defer.ensureDeferred(tokens.create(self.pool)))
        d.addCallback(lambda token: setattr(self, "api_token", token))
        return d

    def more_api_arguments(self):
        """Further keyword arguments of the API resource (its live activity, ...)."""
        return {}

    def sent(self, method=None):
        """What reached the API: ``(method, path, query, body)``, oldest first."""
        return [r for r in self.site.requests if method is None or r[0] == method]


class RefusedBeforeSendingTests(CliMixin, unittest.TestCase):
    """Bad arguments are refused (exit 2, one line) before any request is made."""

    def setUp(self):
        from twisted.internet import reactor

        self.reactor = reactor
        self.agent = RefusingAgent()

    async def test_node_add(self):
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
            status, out, err = await self.cli("node", "add", "n4", "-c", "c1", *extra,
                                              stdin="{")
            self.assertEqual((status, out), (2, ""), extra)
            self.assertIn(message, err, extra)
            self.assertEqual(err.count("\n"), 1, err)
        self.assertEqual(self.agent.requests, [])

    async def test_power(self):
        for argv in (["power", "explode", "n1"], ["power", "on", "n1", "--timeout", "-1"]):
            status, out, err = await self.cli(*argv)
            self.assertEqual((status, out), (2, ""), argv)
            self.assertIn("usage:", err)
        for argv, message in ((["power", "on"], "give at least one NODE"),
                              (["power", "on", "n1", "--cluster", "c1"], "not both"),
                              (["power", "on", "--cluster", "c1", "--nodes", "a"],
                               "exactly one of"),
                              (["power", "off", "--dry-run"], "exactly one of"),
                              (["power", "off", "--nodes", ","], "at least one node")):
            status, out, err = await self.cli(*argv)
            self.assertEqual((status, out), (2, ""), argv)
            self.assertIn(message, err, argv)
        self.assertEqual(self.agent.requests, [])

    async def test_bad_api_url(self):
        status, _, err = await self.cli("node", "list", "--api", "ftp://x", api=False)
        self.assertEqual(status, 2)
        self.assertIn("not an http(s) URL", err)

    async def test_usage_errors(self):
        for argv in (["node"], ["node", "add", "n1"], ["podm", "add", "x"],
                     ["ops", "list", "--state", "sleeping"], ["cluster"],
                     ["node", "update", "n1"]):
            status, out, err = await self.cli(*argv)
            self.assertEqual((status, out), (2, ""), argv)
            self.assertTrue("usage:" in err or "nothing to update" in err, err)
        self.assertEqual(self.agent.requests, [])

    async def test_unreachable_api(self):
        """No agent in the context: the CLI's own, to a port nothing listens on."""
        port = self.reactor.listenTCP(0, server.Site(None), interface="127.0.0.1")
        dead = f"http://127.0.0.1:{port.getHost().port}"
        await port.stopListening()
        ctx = Context(self.reactor, stdout=io.StringIO(), stderr=io.StringIO(),
                      stdin=io.StringIO(), env={})
        status, out, err = await self.run_cli(["node", "list", "--api", dead], ctx)
        self.assertEqual((status, out), (4, ""))
        self.assertTrue(err.startswith(f"error (unreachable): cannot reach the API at {dead}"), err)


class RestCommandTests(RegionApiMixin, StoreTestCase):
    """Each command against the region's API and store."""

    async def add_node(self, name, *extra):
        status, out, err = await self.cli(
            "node", "add", name, "--cluster", "c1", "--driver", "ipmi", "-p", "host=10.0.0.1",
            "-p", "password=pw-secret", *extra)
        self.assertEqual(status, 0, err)

    async def add_podm(self, name="pdu1"):
        """A pod manager; its uuid."""
        status, out, err = await self.cli("podm", "add", name, "--url", "https://10.0.0.9",
                                          "--json")
        self.assertEqual(status, 0, err)
        return json.loads(out)["uuid"]

    # -- nodes ------------------------------------------------------------------

    async def test_node_add_single_agent(self):
        status, out, err = await self.cli(
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
        self.assertIn("password=(set)", out)
        self.assertNotIn("hunter2", out + err)
        stored = (await self.store.nodes.get("n1"))["power"]
        self.assertEqual(tokens.vault().open_power(stored)["agents"][0]["params"]["password"],
                         "hunter2")  # stored sealed

    async def test_node_add_several_agents(self):
        pod = await self.add_podm()
        status, out, err = await self.cli(
            "node", "add", "n2", "-c", "c1", "--mode", "concurrent", "--json",
            "--agent", "driver=snmp,host=pdu1,family=apc-rpdu,outlet=3,write_community=rw-secret",
            "--agent", 'driver=webhook,on_url=http://h/on,off_url=http://h/off,'
                       'headers={"X-A":"1","X-B":"2"}',
            "--agent", f"driver=redfish,pod_manager={pod},system=7")
        self.assertEqual(status, 0, err)
        body = self.sent("POST")[-1][3]
        snmp, webhook, redfish = body["power"]["agents"]
        self.assertEqual(body["power"]["mode"], "concurrent")
        self.assertEqual(snmp["params"]["outlet"], 3)
        self.assertEqual(webhook["params"]["headers"], {"X-A": "1", "X-B": "2"})
        self.assertEqual(redfish, {"driver": "redfish", "pod_manager": pod,
                                   "params": {"system": "7"}})
        shown = json.loads(out)
        self.assertEqual(shown["power"]["agents"][0]["params"]["write_community"], "(set)")
        self.assertNotIn("rw-secret", out + err)

    async def test_node_add_levels(self):
        status, out, err = await self.cli(
            "node", "add", "n5", "-c", "c1",
            "--level", "driver=ipmi,host=10.0.0.5,password=bmc-secret",
            "--level", "driver=snmp,host=pdu1,family=apc-rpdu,outlet=3;"
                       "driver=snmp,host=pdu1,family=apc-rpdu,outlet=4",
            "--trusted-unverified", "2")
        self.assertEqual(status, 0, err)
        body = self.sent("POST")[-1][3]
        levels = body["power"]["levels"]
        self.assertEqual([[a["driver"] for a in lv["agents"]] for lv in levels],
                         [["ipmi"], ["snmp", "snmp"]])
        self.assertEqual([lv.get("trusted_unverified") for lv in levels], [None, True])
        self.assertEqual(levels[1]["agents"][1]["params"]["outlet"], 4)
        self.assertIn("level 2", out)
        self.assertIn("(trusted unverified)", out)
        self.assertRegex(out, r"timeout fence:\s+[0-9.]+s \(level 1: [0-9.]+s \[0:ipmi [0-9.]+s\]; "
                              r"level 2: [0-9.]+s \[1:snmp [0-9.]+s, 2:snmp [0-9.]+s\]\)")
        self.assertNotIn("bmc-secret", out + err)
        status, out, err = await self.cli("node", "list")
        self.assertIn("levels: ipmi | snmp+snmp", out)
        status, out, err = await self.cli("node", "show", "n5", "--json")
        self.assertEqual(sorted(json.loads(out)["bounds"]), ["cycle", "fence", "off", "on"])

    async def test_bad_levels_are_refused_naming_the_place(self):
        status, out, err = await self.cli(
            "node", "add", "n6", "-c", "c1", "--level", "driver=ipmi,host=h,password=p",
            "--level", "driver=ipmi,password=p")
        self.assertNotEqual(status, 0)
        self.assertIn("power.levels[1].agents[0]", err)
        for extra, words in ((["--trusted-unverified", "3"], "there are 2 level(s)"),
                             (["--mode", "concurrent"], "--mode does not go with --level")):
            status, out, err = await self.cli(
                "node", "add", "n6", "-c", "c1", "--level", "driver=ipmi,host=h,password=p",
                "--level", "driver=ipmi,host=i,password=p", *extra)
            self.assertNotEqual(status, 0)
            self.assertIn(words, err)

    async def test_node_add_power_json_from_stdin(self):
        power = {"mode": "sequential", "agents": [
            {"driver": "manual", "params": {"label": "rack1"}},
            {"driver": "ipmi", "params": {"host": "10.0.0.2", "password": "x"}}]}
        status, _, err = await self.cli("node", "add", "n3", "-c", "c1", "--power-json", "-",
                                        stdin=json.dumps(power))
        self.assertEqual(status, 0, err)
        self.assertEqual(self.sent("POST")[0][3]["power"], power)
        self.assertEqual((await self.store.nodes.get("n3"))["power"]["mode"], "sequential")

    async def test_node_add_api_errors(self):
        """The API's own refusals, one line each, with its exit statuses."""
        await self.add_node("n1")
        status, out, err = await self.cli("node", "add", "n1", "-c", "c1", "--driver", "ipmi",
                                          "-p", "host=h", "-p", "password=p")
        self.assertEqual((status, out), (1, ""))
        self.assertTrue(re.fullmatch(r"error \(conflict\): .*'n1'.*\n", err), err)
        status, _, err = await self.cli("node", "add", "n9", "-c", "c1", "--driver", "amt")
        self.assertEqual(status, 2)
        self.assertTrue(re.fullmatch(r"error \(\w+\): .*'amt'.*\n", err), err)
        status, _, err = await self.cli("node", "add", "n9", "-c", "c1", "--driver", "ipmi",
                                        "-p", "host=h", "-p", "colour=blue")
        self.assertEqual(status, 2)
        self.assertIn("colour", err)
        self.assertEqual([n["name"] for n in await self.store.nodes.list()], ["n1"])

    async def test_node_list_show_update_delete(self):
        await self.add_node("n1")
        await self.add_node("n2")
        await self.pool.runOperation("UPDATE nodes SET responsive = false, power_state = 'on',"
                       " desired_state = 'on' WHERE name = 'n2'")
        status, out, err = await self.cli("node", "list")
        self.assertEqual(status, 0, err)
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ["NAME", "CLUSTER", "DESIRED", "POWER",
                                            "RESPONSIVE", "DRIFT", "AGENTS", "LAST", "ERROR"])
        self.assertEqual(lines[2].split()[:7],
                         ["n2", "c1", "on", "on", "non-responsive", "-", "ipmi"])
        status, out, _ = await self.cli("node", "list", "--json", "--cluster", "c1")
        self.assertEqual([n["name"] for n in json.loads(out)], ["n1", "n2"])
        self.assertEqual(self.sent("GET")[-1][2], {"cluster": "c1", "limit": "1000"})

        status, out, _ = await self.cli("node", "show", "n1")
        self.assertIn("cluster:", out)
        self.assertIn("password=(set)", out)
        self.assertNotIn("pw-secret", out)

        status, out, err = await self.cli("node", "update", "n1", "--cluster", "c2")
        self.assertEqual(status, 0, err)
        self.assertEqual(self.sent("PUT")[-1][1:], ("/v1/nodes/n1", {}, {"cluster": "c2"}))
        self.assertEqual((await self.store.nodes.get("n1"))["cluster"], "c2")
        status, _, err = await self.cli("node", "update", "n1")
        self.assertEqual(status, 2)
        self.assertIn("nothing to update", err)

        status, out, _ = await self.cli("node", "delete", "n1")
        self.assertEqual((status, out), (0, "deleted node n1\n"))
        self.assertTrue(self.sent("DELETE")[-1][2]["requester"].startswith("cli"))
        status, out, err = await self.cli("node", "show", "n1")
        self.assertEqual((status, out, err),
                         (1, "", "error (not_found): node 'n1' does not exist\n"))

    async def test_names_are_quoted(self):
        status, _, err = await self.cli("node", "show", "a/b c")
        self.assertEqual(status, 1)
        self.assertEqual(self.sent()[-1][1], "/v1/nodes/a%2Fb%20c")
        self.assertIn("a/b c", err)

    # -- power --------------------------------------------------------------------

    async def test_power_without_wait(self):
        await self.add_node("stuck1")
        status, out, err = await self.cli("power", "soft_off", "stuck1")
        self.assertEqual(status, 0, err)
        (_, path, _, body) = self.sent("POST")[-1]
        self.assertEqual(path, "/v1/nodes/stuck1/power")
        self.assertEqual(body["action"], "soft-off")
        self.assertTrue(body["requester"].startswith("cli"))
        self.assertEqual(out.splitlines()[1].split()[:4], ["stuck1", "soft-off", "1", "pending"])
        op = await self.store.ops.get(1)
        # Journalled under the token's name, whatever the client says.
        self.assertEqual((op["action"], op["requester"]), ("soft-off", tokens.ADMIN))

    async def test_power_wait_reports_each_node(self):
        for name in ("n1", "n2", "bad1"):
            await self.add_node(name)
        status, out, err = await self.cli("power", "on", "n1", "n2", "bad1", "--wait",
                                          "--poll-interval", "0.01")
        self.assertEqual(status, 1)
        rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
        [op] = await self.store.ops.list(node="n1")  # requests run at once: ids in any order
        self.assertEqual(rows["n1"][1:5], ["on", str(op["id"]), "succeeded", "on"])
        self.assertEqual(rows["n2"][3:5], ["succeeded", "on"])
        self.assertEqual(rows["bad1"][3], "failed")
        self.assertIn(f"error (failed): bad1: {BMC_REFUSED}", err)
        self.assertNotIn("\r", err)  # stderr is no terminal: no progress bar
        # this API has no event stream: the CLI polls, and says so
        self.assertIn("the event stream is unavailable", err)
        self.assertIn("polling instead, 16 operations at a time", err)

    async def test_power_bulk_dry_run_guard_confirm_and_wait(self):
        for name in ("n1", "n2", "n3"):
            await self.add_node(name)
        status, out, err = await self.cli("power", "off", "--cluster", "c1", "--dry-run")
        self.assertEqual(status, 0, err)
        self.assertEqual([line.split()[:2] for line in out.splitlines()[1:]],
                         [["n1", "c1"], ["n2", "c1"], ["n3", "c1"]])
        self.assertIn("3 would change; nothing was done", err)
        self.assertIn("this needs --confirm", err)
        self.assertEqual(await self.store.ops.list(), [])
        status, _, err = await self.cli("power", "off", "--cluster", "c1")
        self.assertEqual(status, 1)
        self.assertIn("blast-radius guard", err)
        self.assertEqual(await self.store.ops.list(), [])
        status, out, err = await self.cli("power", "off", "--cluster", "c1", "--confirm",
                                          "--wait", "--poll-interval", "0.01")
        self.assertEqual(status, 0, err)
        rows = sorted(line.split()[:5] for line in out.splitlines()[1:])
        self.assertEqual([r[0] for r in rows], ["n1", "n2", "n3"])
        self.assertEqual({(r[1], r[3], r[4]) for r in rows}, {("off", "succeeded", "off")})
        (_, path, _, body) = self.sent("POST")[-1]
        self.assertEqual((path, body["cluster"], body["confirm"]), ("/v1/power", "c1", True))
        status, out, err = await self.cli("power", "on", "--nodes", "n2,n1", "--json")
        self.assertEqual(status, 0, err)
        doc = json.loads(out)
        self.assertEqual([o["node"] for o in doc["operations"]], ["n1", "n2"])

    async def test_power_wait_json_and_progress_bar(self):
        await self.add_node("n1")
        await self.add_node("n2")
        status, out, err = await self.cli("power", "off", "n1", "n2", "-w", "--json",
                                          "--poll-interval", "0.01", tty=True)
        self.assertEqual(status, 0, err)
        results = json.loads(out)
        self.assertEqual([(r["node"], r["op"]["state"], r["power_state"]) for r in results],
                         [("n1", "succeeded", "off"), ("n2", "succeeded", "off")])
        self.assertIn("\r[", err)
        self.assertIn("2/2 off done", err)
        self.assertTrue(err.endswith("\n"))

    async def test_power_coalesced_follows_the_joined_operation(self):
        await self.add_node("slow1")
        status, _, err = await self.cli("power", "cycle", "slow1")
        self.assertEqual(status, 0, err)
        await self.pserv.handled(1)  # running
        waiting = self.cli("power", "cycle", "slow1", "--wait", "--poll-interval", "0.01")
        await self.pserv.handled(2)  # it joined operation 1
        await self.pserv.finish("slow1")
        status, out, err = await waiting
        self.assertEqual(status, 0, err)
        row = out.splitlines()[1].split()
        self.assertEqual(row[:5], ["slow1", "cycle", "2->1", "succeeded", "on"])

    async def test_power_wait_timeout(self):
        await self.add_node("stuck1")
        status, out, err = await self.cli("power", "on", "stuck1", "--wait", "--timeout", "0.2",
                                          "--poll-interval", "0.05")
        self.assertEqual(status, 5)
        self.assertIn("error (timeout): stuck1: operation 1 still pending", err)

    async def test_power_unknown_node_does_not_stop_the_others(self):
        await self.add_node("n1")
        status, out, err = await self.cli("power", "on", "n1", "ghost", "--wait",
                                          "--poll-interval", "0.01")
        self.assertEqual(status, 1)
        self.assertIn("ghost: node 'ghost' does not exist", err)
        self.assertEqual((await self.store.nodes.get("n1"))["power_state"], "on")

    # -- operations ---------------------------------------------------------------

    async def test_ops_list_and_show(self):
        await self.add_node("n1")
        await self.cli("power", "on", "n1", "-w", "--poll-interval", "0.01")
        status, out, err = await self.cli("ops", "list", "--node", "n1", "--state", "succeeded",
                                          "--limit", "5")
        self.assertEqual(status, 0, err)
        self.assertEqual(self.sent("GET")[-1][2], {"node": "n1", "state": "succeeded",
                                                   "limit": "5"})
        self.assertEqual(out.splitlines()[1].split()[:4], ["1", "n1", "on", "succeeded"])
        requested = (await self.store.ops.get(1))["requested_at"]
        self.assertIn(requested.replace("T", " ")[:19], out)
        status, out, _ = await self.cli("ops", "show", "1", "--json")
        self.assertEqual(json.loads(out)["agent"], "0:ipmi")
        status, out, _ = await self.cli("ops", "show", "1")
        self.assertIn("pserv:", out)
        status, _, err = await self.cli("ops", "show", "one")
        self.assertEqual(status, 2)

    async def test_ops_cancel_and_confirm_need_a_region(self):
        """This API has no region to reach pservs through: each op answers 503, exit 1."""
        await self.add_node("stuck1")
        await self.cli("power", "on", "stuck1")
        status, out, err = await self.cli("ops", "cancel", "1", "--force")
        self.assertEqual(status, 1)
        self.assertTrue(out.startswith("operation 1: error: "), out)
        self.assertEqual(self.sent("POST")[-1][1:],
                         ("/v1/power_ops/1/cancel", {}, {"requester": self.sent("POST")[-1][3]
                                                         ["requester"], "force": True}))
        status, _, err = await self.cli("ops", "confirm", "1", "--state", "on")
        self.assertEqual(status, 1)
        self.assertIn("error (unavailable)", err)

    # -- pod managers ---------------------------------------------------------------

    async def test_podm_lifecycle(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("pdu-secret\n")
        status, out, err = await self.cli(
            "podm", "add", "pdu1", "--url", "https://10.0.0.9", "-u", "admin",
            "--password-file", path, "--description", "row 1")
        self.assertEqual(status, 0, err)
        body = self.sent("POST")[-1][3]
        self.assertEqual(body, {"name": "pdu1", "url": "https://10.0.0.9", "username": "admin",
                                "description": "row 1", "password": "pdu-secret"})
        self.assertNotIn("pdu-secret", out + err)
        uuid_ = json.loads((await self.cli("podm", "list", "--json"))[1])[0]["uuid"]

        status, out, _ = await self.cli("podm", "list")
        self.assertIn("pdu1", out)
        header = out.splitlines()[0].split()
        self.assertEqual(out.splitlines()[1].split()[header.index("PASSWORD")], "set")

        status, out, _ = await self.cli("podm", "show", "pdu1")  # by name
        self.assertIn(uuid_, out)
        self.assertEqual(self.sent("GET")[-1][1], f"/v1/pod_manager/{uuid_}")

        status, out, err = await self.cli("podm", "update", uuid_, "--prompt-password",
                                          "--name", "pdu-1", tty=True, secret="new-secret")
        self.assertEqual(status, 0, err)
        self.assertEqual(self.sent("PUT")[-1][3], {"name": "pdu-1", "password": "new-secret"})
        self.assertEqual(self.prompts, ["Password: "])
        self.assertNotIn("new-secret", out + err)
        self.assertEqual((await self.store.pod_managers.get(uuid_))["name"], "pdu-1")

        status, out, _ = await self.cli("podm", "delete", "pdu-1")
        self.assertEqual((status, out), (0, f"deleted pod manager {uuid_}\n"))
        status, _, err = await self.cli("podm", "show", "pdu-1")
        self.assertEqual((status, err), (1, "error (not_found): no pod manager named 'pdu-1'\n"))

    async def test_podm_password_prompt_on_a_terminal_only(self):
        status, _, err = await self.cli("podm", "add", "pdu2", "--url", "http://10.0.0.8",
                                        tty=True, secret="typed")
        self.assertEqual(status, 0, err)
        self.assertEqual(self.sent("POST")[-1][3]["password"], "typed")
        status, _, err = await self.cli("podm", "add", "pdu3", "--url", "http://10.0.0.7")
        self.assertEqual(status, 0, err)  # no terminal, no password file: none sent
        self.assertNotIn("password", self.sent("POST")[-1][3])
        status, _, err = await self.cli("podm", "update", "pdu3", "--prompt-password")
        self.assertEqual(status, 2)
        self.assertIn("--password-file", err)

    # -- clusters, transport and arguments ------------------------------------------

    async def test_cluster_list_and_set(self):
        await self.add_node("n1")
        await self.store.clusters.register_pserv("p1", "c1", "1.0", "r1")
        status, out, err = await self.cli("cluster", "list")
        self.assertEqual(status, 0, err)
        lines = out.splitlines()
        self.assertEqual(lines[0].split()[:3], ["NAME", "STATUS", "NODES"])
        self.assertEqual(lines[1].split()[:3], ["c1", "online", "1"])
        self.assertIn("p1 (connected)", out)
        self.assertRegex(lines[1], r" \d{4}-\d\d-\d\d \d\d:\d\d:\d\d")  # its last heartbeat
        status, out, _ = await self.cli("cluster", "list", "--json")
        [cluster] = json.loads(out)
        self.assertEqual((cluster["name"], [p["name"] for p in cluster["pservs"]]),
                         ("c1", ["p1"]))
        status, out, err = await self.cli("cluster", "set", "c1", "--drift-policy", "enforce")
        self.assertEqual((status, out), (0, "cluster c1: drift policy enforce\n"), err)
        [stored] = await self.store.clusters.list()
        self.assertEqual(stored["drift_policy"], "enforce")

    async def test_api_from_environment(self):
        status, _, err = await self.cli("cluster", "list", api=False,
                                        env={"POWERCTL_API": URL})
        self.assertEqual(status, 0, err)
        self.assertEqual(len(self.sent()), 1)
