"""
The status page and /metrics over a real twisted.web server on 127.0.0.1
(the API root with the web resources added, as the region serves them), a
real store on a fresh PostgreSQL database, and treq as the client.
"""

import json
import re

import treq
from twisted.internet import defer, reactor
from twisted.logger import Logger, formatEvent
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site
from txpostgres import txpostgres

from powerctl.region import web
from powerctl.region import guard as guard_module
from powerctl.region.api import api_root
from powerctl.region.store import Store
from tests import tokens
from tests.pg import DatabaseMixin
from tests.test_powerconfig import fake_catalogue

SECRET = "hunter2-web-secret"
HOSTILE = '<script>alert("x")</script>'


def ipmi(host="10.0.0.5", password=SECRET):
    return {"mode": "single", "agents": [
        {"driver": "ipmi", "params": {"host": host, "password": password}}]}


_SAMPLE = re.compile(
    r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)'
    r'(?:\{(?P<labels>(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*)\})?'
    r' (?P<value>\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')


def parse_metrics(text):
    """
    A strict little parser of the text format 0.0.4: {(name, frozenset of
    labels): value}, plus {name: type}.  Fails on a malformed line, a sample
    before its TYPE, or a repeated series.
    """
    samples, types, helps = {}, {}, set()
    assert text.endswith("\n"), "the exposition must end with a newline"
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            helps.add(line.split(" ", 3)[2])
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("gauge", "counter", "untyped", "summary", "histogram"), line
            assert name not in types, f"TYPE repeated: {line}"
            types[name] = kind
            continue
        match = _SAMPLE.match(line)
        assert match, f"malformed sample line: {line!r}"
        name = match["name"]
        assert name in types and name in helps, f"sample before HELP/TYPE: {line!r}"
        labels = frozenset(
            (k, v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\"))
            for k, v in _LABEL.findall(match["labels"] or ""))
        assert (name, labels) not in samples, f"series repeated: {line!r}"
        samples[name, labels] = float(match["value"])
    return samples, types


def series(samples, name, **labels):
    return samples[name, frozenset(labels.items())]


class WebTestCase(DatabaseMixin, unittest.TestCase):
    """A store on a fresh database, served with the API and the web pages."""

    def setUp(self):
        super().setUp()
        self.pool = txpostgres.ConnectionPool(None, self.dsn, min=3)
        self.addCleanup(self.pool.close)
        # grace 0: three failed polls make a node non-responsive at once
        self.store = Store(self.pool, fake_catalogue(), responsive_grace=0,
                           vault=tokens.vault())
        self.activity = {}
        self.events = []
        self.log = Logger(observer=self.events.append)
        http = HTTPConnectionPool(reactor, persistent=False)
        self.anonymous = treq.client.HTTPClient(Agent(reactor, pool=http))
        d = self.pool.start()
        d.addCallback(lambda _: defer.ensureDeferred(tokens.create(self.pool)))
        d.addCallback(lambda token: setattr(self, "client", tokens.AuthClient(
            self.anonymous, token)))
        return d

    def serve(self, store=None):
        """Serve the API plus the web pages on 127.0.0.1, as a region does; the base URL."""
        store = store or self.store
        guard = tokens.make_guard(self.pool, log=self.log)
        root = api_root(store, fake_catalogue(), activity=lambda: self.activity, guard=guard)
        web.add_to(root, store, activity=lambda: self.activity, log=self.log)
        guard_module.protect_web(root, guard)
        port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}"

    async def get(self, base, path):
        response = await self.client.get(base + path)
        body = (await response.content()).decode("utf-8")
        self.assertNotIn("Traceback", body)
        return response, body

    async def post(self, base, path, body):
        response = await self.client.post(
            base + path, data=json.dumps(body).encode(),
            headers={"Content-Type": ["application/json"]})
        content = await response.content()
        self.assertIn(response.code, (201, 202), content)
        return json.loads(content)

    async def fleet(self, base):
        """
        c1: n1 (asked on, still unknown: mismatch), n2 (asked off, is off);
        c2: n3 (non-responsive, hostile error text, no desired state).
        A pserv in c1; n2's off ran and succeeded.
        """
        await self.post(base, "/v1/nodes", {"name": "n1", "cluster": "c1", "power": ipmi()})
        await self.post(base, "/v1/nodes", {"name": "n2", "cluster": "c1",
                                            "power": ipmi("10.0.0.6")})
        await self.post(base, "/v1/nodes", {"name": "n3", "cluster": "c2",
                                            "power": ipmi("10.0.0.7")})
        op1 = await self.post(base, "/v1/nodes/n1/power", {"action": "on", "requester": HOSTILE})
        op2 = await self.post(base, "/v1/nodes/n2/power", {"action": "off"})
        await self.store.clusters.register_pserv("p1", "c1", "1.0", "r1")
        await self.store.clusters.heartbeat("p1", 2)
        await self.store.ops.mark_running(op2["id"], "p1")
        await self.store.ops.record_outcome(op2["id"], "succeeded", observed_state="off",
                                        pserv="p1")
        await self.store.nodes.record_power_state("n2", "off", queried=False)
        for _ in range(3):
            await self.store.nodes.record_power_state("n3", "error", error=HOSTILE)
        return op1, op2


class StatusPageTests(WebTestCase):
    async def test_page_shows_fleet_escaped_without_secrets(self):
        base = self.serve()
        op1, op2 = await self.fleet(base)
        response, page = await self.get(base, "/")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"),
                         ["text/html; charset=utf-8"])
        self.assertTrue(page.startswith("<!DOCTYPE html>"))
        self.assertIn('<meta http-equiv="refresh" content="5" />', page)
        self.assertNotIn("<script", page)  # no JS, and the hostile text is escaped
        self.assertNotIn(" src=", page)
        self.assertIn(web._e(HOSTILE), page)
        self.assertNotIn(SECRET, page)
        self.assertNotIn("10.0.0.5", page)  # power params are not shown at all

        rows = {m[1]: m[0] for m in re.findall(
            r'<tr( class="[^"]*")?(?: data-node="[^"]*")?><td>(n\d)</td>', page)}
        self.assertEqual(set(rows), {"n1", "n2", "n3"})
        self.assertIn("mismatch", rows["n1"])  # desired on, unknown
        self.assertEqual(rows["n2"], "")  # desired off, off
        self.assertIn("nonresponsive", rows["n3"])
        self.assertNotIn("mismatch", rows["n3"])  # nothing was asked of it

        # the summary strip comes first, then the nodes, then the operations
        self.assertLess(page.index('<ul class="summary">'), page.index("<h2>Nodes"))
        self.assertLess(page.index("<h2>Nodes"), page.index("<h2>Operations in flight"))
        summary = dict(re.findall(r'<li id="summary-([\w-]+)"[^>]*><b>(\d+)</b>', page))
        self.assertEqual(
            {k: summary[k] for k in ("nodes", "state-off", "state-unknown", "state-error",
                                     "mismatched", "nonresponsive", "ops-waiting",
                                     "ops-running")},
            {"nodes": "3", "state-off": "1", "state-unknown": "1", "state-error": "1",
             "mismatched": "1", "nonresponsive": "1", "ops-waiting": "1", "ops-running": "0"})
        self.assertIn("<b>1</b> operation waiting", page)  # not "1 operations"
        self.assertIn("<b>0</b> operations running", page)

        in_flight, finished = page.split("<h2>Operations in flight</h2>")[1].split(
            "finished operations</h2>")
        self.assertIn(f"<td>{op1['id']}</td><td>n1</td><td>on</td><td>pending</td>", in_flight)
        self.assertNotIn("<td>n2</td>", in_flight)
        finished = finished.split("<h2>Clusters")[0]
        self.assertIn(f"<td>{op2['id']}</td><td>n2</td><td>off</td><td>succeeded</td>"
                      "<td>p1</td>", finished)
        self.assertIn("<td>c1</td><td>online</td>", page)
        self.assertIn("p1: live", page)

        # filters and a non-GET method
        _, problems = await self.get(base, "/?problems=1&cluster=c1")
        problems = problems.split("<h2>Nodes")[1].split("<h2>Operations")[0]
        self.assertIn("<td>n1</td>", problems)
        self.assertNotIn("<td>n2</td>", problems)
        self.assertNotIn("<td>n3</td>", problems)
        response = await self.client.post(base + "/")
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers.getRawHeaders("allow"), ["GET, HEAD"])
        await response.content()
        response = await self.client.head(base + "/metrics")
        self.assertEqual((response.code, await response.content()), (200, b""))
        # the API is still there beside the page
        response, _ = await self.get(base, "/v1/nodes")
        self.assertEqual(response.code, 200)

    async def test_filter_by_name_and_paging(self):
        """The nodes table pages by name with ``limit``/``after`` and filters by ``name``."""
        base = self.serve()
        for i in range(5):
            await self.post(base, "/v1/nodes", {"name": f"rack{i}", "cluster": "c1",
                                                "power": ipmi(f"10.0.1.{i}")})
        await self.post(base, "/v1/nodes", {"name": "spare", "cluster": "c1",
                                            "power": ipmi("10.0.2.1")})

        def node_rows(page):
            table = page.split('<table class="nodes">')[1].split("</table>")[0]
            return re.findall(r"<tr[^>]*><td>([\w-]+)</td>", table)

        _, page = await self.get(base, "/?limit=2")
        self.assertEqual(node_rows(page), ["rack0", "rack1"])
        self.assertIn("1\N{EN DASH}2 of 6 nodes", page)
        self.assertNotIn('id="page-first"', page)
        next_link = re.search(r'<a href="([^"]+)" id="page-next">', page)[1]
        self.assertEqual(next_link, "/?limit=2&amp;after=rack1")
        _, page = await self.get(base, "/?limit=2&after=rack3")
        self.assertEqual(node_rows(page), ["rack4", "spare"])
        self.assertIn('id="page-first"', page)
        self.assertNotIn('id="page-next"', page)
        _, page = await self.get(base, "/?name=spa")
        self.assertEqual(node_rows(page), ["spare"])
        self.assertIn('value="spa"', page)  # the filter form keeps what was asked
        _, page = await self.get(base, "/?limit=not-a-number")
        self.assertEqual(len(node_rows(page)), 6)  # a bad limit is ignored, not a 500

    def test_the_page_flattens_exactly_as_twisted_web_would(self):
        """
        The page's own flattener (one recursive pass, for speed) writes
        byte for byte what twisted.web's flattener writes for the same tree
        -- hostile values in cells and attributes, void tags, the live
        script, every panel -- and refuses what the page never builds.
        """
        node = {"name": HOSTILE, "cluster": 'c"><b>&x', "desired_state": "on",
                "power_state": "off", "responsive": False, "last_error": "&amp; <i>'\"",
                "last_changed_at": "2026-01-02T03:04:05+00:00", "last_queried_at": "no",
                "drift_since": "2026-01-02T03:00:00+00:00", "drift_observed": "on",
                "drift_polls": 3}
        cluster = {"name": 'c"><b>&x', "status": "offline", "nodes": 1, "actions_in_flight": 0,
                   "pservs": [{"name": "<p>", "connected": True, "live": False,
                               "actions_in_flight": 0, "last_heartbeat": None,
                               "version": "<v>"}]}
        op = {"id": 7, "node": HOSTILE, "action": "on", "state": "failed", "pserv": "<p>",
              "requester": "a&b", "requested_at": "2026-01-02T03:04:05+00:00",
              "started_at": None, "finished_at": "2026-01-02T03:04:06+00:00",
              "observed_state": "off", "error": '"><script>'}
        live = {"totals": {"pservs": 1}, "pservs": [{
            "pserv": "<p>", "cluster": "c", "error": "<x>", "slots": {
                "size": 1, "busy": 1, "waiting": 1, "queue": [{"position": 1, "node": HOSTILE}]},
            "nodes": [{"node": HOSTILE, "running": {"operation_id": 1, "action": "on",
                                                    "stopping": True, "joined": ["<j>"]}}]}]}
        page = web.StatusPage(None)
        for seq, args in ((None, {}), (12, {"name": "<", "cluster": 'c"><b>&x', "limit": "1",
                                            "problems": "1", "after": "&"})):
            tree = page.page_tree(args, [cluster], [node], [op], True, [op], live=live, seq=seq)
            self.assertEqual(web._flat(tree), web._flat_twisted(tree))
        for refused in (web.tags.td(1), web.tags.td(defer.succeed("x")),
                        web.tags.td(id=web.tags.b("x")), web.tags.td(render="x")):
            self.assertRaises(TypeError, web._flat, refused)

    def test_values_that_look_like_markup_stay_text(self):
        """
        Whatever a row holds (even a name the API would refuse, e.g. from an
        older version or a hand edit of the database), the page shows it as
        text: the template escapes every value, in cells and in attributes.
        """
        hostile_node = {"name": '<img src=x onerror="alert(1)">', "cluster": 'c"><b>x',
                        "desired_state": "on", "power_state": "off", "responsive": True,
                        "last_error": "&amp; <i>", "last_changed_at": None,
                        "last_queried_at": "not a time", "drift_since": None}
        cluster = {"name": 'c"><b>x', "status": "online", "nodes": 1, "actions_in_flight": 0,
                   "pservs": [{"name": "<p>", "connected": True, "live": True,
                               "actions_in_flight": 0, "last_heartbeat": None}]}
        page = web.StatusPage(None).render_page(
            {"name": '<img src=x', "cluster": 'c"><b>x'}, [cluster], [hostile_node], [],
            False, [])
        self.assertNotIn("<img", page)
        self.assertNotIn("<script", page)
        self.assertNotIn("<b>x", page)
        self.assertNotIn("<i>", page)
        self.assertIn("<td>&lt;img src=x onerror=\"alert(1)\"&gt;</td>", page)
        self.assertIn("<td>&amp;amp; &lt;i&gt;</td>", page)
        self.assertIn('value="&lt;img src=x"', page)
        self.assertIn('<option value="c&quot;&gt;&lt;b&gt;x" selected="selected">', page)
        self.assertIn("<td>not a time</td>", page)

    def test_ages_are_relative_with_the_exact_time_kept(self):
        """Timestamps show as short ages (no wrapping) with the UTC time as tooltip."""
        now = web.datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=web.datetime.timezone.utc)
        self.assertEqual([web.relative(s) for s in (0, 59.9, 60, 3599, 7200, 200000)],
                         ["0 s", "59 s", "1 min", "59 min", "2 h", "2 d"])
        cell = web._flat(web._when("2026-01-02T03:00:00+00:00", now))
        self.assertEqual(cell, '<time datetime="2026-01-02T03:00:00+00:00" '
                               'title="2026-01-02 03:00:00 UTC">4 min ago</time>')
        self.assertIn(">in 1 h<", web._flat(web._when("2026-01-02T04:04:05+00:00", now)))

    async def test_failure_answers_500_with_a_logged_id(self):
        class Broken:
            def __getattr__(self, name):
                def fail(*args, **kwargs):
                    raise RuntimeError(f"database on fire {SECRET}")
                return fail

        base = self.serve(Broken())
        for path, ctype in (("/", "text/html"), ("/metrics", "text/plain")):
            response, body = await self.get(base, path)
            self.assertEqual(response.code, 500)
            self.assertTrue(response.headers.getRawHeaders("content-type")[0].startswith(ctype))
            self.assertNotIn("on fire", body)
            error_id = re.search(r"error id (?:<code>)?([0-9a-f-]{36})", body)[1]
            logged = [e for e in self.events if e.get("error_id") == error_id]
            self.assertEqual(len(logged), 1, path)
            self.assertIn(error_id, formatEvent(logged[0]))
            self.assertIn("log_failure", logged[0])


class MetricsTests(WebTestCase):
    async def test_metrics_values(self):
        base = self.serve()
        self.activity = {"c1": 3}  # the region's live view beats the heartbeat's 2
        await self.fleet(base)
        response, text = await self.get(base, "/metrics")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"),
                         ["text/plain; version=0.0.4; charset=utf-8"])
        self.assertNotIn(SECRET, text)
        samples, types = parse_metrics(text)
        self.assertEqual(series(samples, "powerctl_region_up"), 1)
        expected_nodes = {("c1", "unknown"): 1, ("c1", "off"): 1, ("c2", "error"): 1}
        for cluster in ("c1", "c2"):
            for state in ("on", "off", "unknown", "error"):
                self.assertEqual(
                    series(samples, "powerctl_nodes", cluster=cluster, power_state=state),
                    expected_nodes.get((cluster, state), 0), (cluster, state))
        self.assertEqual(series(samples, "powerctl_nodes_mismatched", cluster="c1"), 1)
        self.assertEqual(series(samples, "powerctl_nodes_mismatched", cluster="c2"), 0)
        self.assertEqual(series(samples, "powerctl_nodes_nonresponsive", cluster="c1"), 0)
        self.assertEqual(series(samples, "powerctl_nodes_nonresponsive", cluster="c2"), 1)
        ops = {s: series(samples, "powerctl_power_ops", state=s)
               for s in ("pending", "running", "succeeded", "failed", "superseded",
                         "cancelled")}
        self.assertEqual(ops, {"pending": 1, "running": 0, "succeeded": 1, "failed": 0,
                               "superseded": 0, "cancelled": 0})
        self.assertEqual(series(samples, "powerctl_pservs_connected", cluster="c1"), 1)
        self.assertEqual(series(samples, "powerctl_pservs_connected", cluster="c2"), 0)
        self.assertEqual(series(samples, "powerctl_pservs_live", cluster="c1"), 1)
        self.assertEqual(series(samples, "powerctl_cluster_online", cluster="c2"), 0)
        self.assertEqual(series(samples, "powerctl_actions_in_flight", cluster="c1"), 3)
        self.assertEqual(series(samples, "powerctl_actions_in_flight", cluster="c2"), 0)
        self.assertTrue(all(kind == "gauge" for kind in types.values()))

        # without the region's live view, the pserv's heartbeat count shows
        self.activity = {}
        samples, _ = parse_metrics((await self.get(base, "/metrics"))[1])
        self.assertEqual(series(samples, "powerctl_actions_in_flight", cluster="c1"), 2)

    async def test_op_counts_are_exact(self):
        await self.store.nodes.create("n1", "c1", ipmi())
        await self.pool.runOperation(
            "INSERT INTO power_ops (node, action, requester, state, finished_at)"
            " SELECT 'n1', 'on', 'bulk', 'succeeded', now() FROM generate_series(1, 1001)")
        samples, types = parse_metrics((await self.get(self.serve(), "/metrics"))[1])
        self.assertEqual(series(samples, "powerctl_power_ops", state="succeeded"), 1001)
        self.assertEqual(series(samples, "powerctl_power_ops", state="pending"), 0)


class MetricsFormatTests(unittest.TestCase):
    def test_label_escaping(self):
        out = web.MetricsText()
        out.family("m", "gauge", "help with \\ and\nnewline",
                   [({"l": 'a"b\\c\nd'}, 1), ({"l": "plain"}, 2.5)])
        text = out.text()
        self.assertIn('m{l="a\\"b\\\\c\\nd"} 1\n', text)
        self.assertIn("# HELP m help with \\\\ and\\nnewline\n", text)
        samples, _ = parse_metrics(text)
        self.assertEqual(series(samples, "m", l='a"b\\c\nd'), 1)
        self.assertEqual(series(samples, "m", l="plain"), 2.5)


class GuardedPageTests(unittest.TestCase):
    def test_a_client_gone_during_the_token_check_gets_nothing_rendered(self):
        """
        A page that reloads drops its /events stream while the stream's
        token is being checked; the guard then renders nothing (the stream
        found no connection to register with, and the failure was logged).
        """
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure
        from twisted.web import resource
        from twisted.web.test.requesthelper import DummyRequest

        checking = defer.Deferred()
        logged = []

        class SlowGuard:
            log = Logger(observer=logged.append)

            def identify(self, request, token):
                return checking

        rendered = []

        class Inner(resource.Resource):
            isLeaf = True

            def render(self, request):
                rendered.append(request)
                return b"x"

        def bearer():
            request = DummyRequest([b""])
            request.requestHeaders.setRawHeaders(b"authorization", [b"Bearer pc_test"])
            return request

        page = guard_module._Guarded(Inner(), SlowGuard(), page=False)
        request = bearer()
        page.render(request)
        request.processingFailed(Failure(ConnectionDone()))
        checking.callback(type("Principal", (), {"clusters": None})())
        self.assertEqual((rendered, request.written), ([], []))
        self.assertEqual([e for e in logged if "log_failure" in e], [])
        # and a client that stays is answered
        checking = defer.Deferred()
        request = bearer()
        page.render(request)
        checking.callback(type("Principal", (), {"clusters": None})())
        self.assertEqual((len(rendered), request.written), (1, [b"x"]))
